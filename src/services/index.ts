// The services ctnetd runs, in start order (they stop in reverse).
import { clusterAgent } from './cluster.ts';
import { sandboxDirectory } from './directory.ts';
import { serviceDirectory } from './service-directory.ts';
import { dnsService } from './dns/service.ts';
import { healthChecks } from './health.ts';
import { logService } from './log.ts';
import { overlayWatch } from './overlay.ts';
import { tableGuard } from './tableguard.ts';
import { traceResponder } from './trace.ts';
import { webService } from './api/service.ts';
import type { Service } from './service.ts';

export const builtinServices = (): Service[] => {
  // The cluster agent tells the directories (sandboxes', services') when the host has a new etcd lease (republish under it)
  // and when etcd answers again (list again).
  const directory = sandboxDirectory();
  const services = serviceDirectory();
  const hooks = {
    registered: (m: Parameters<NonNullable<typeof directory.hooks.registered>>[0], lease: string) => {
      directory.hooks.registered?.(m, lease);
      services.hooks.registered?.(m, lease);
    },
    recovered: (ms: number) => {
      directory.hooks.recovered?.(ms);
      services.hooks.recovered?.(ms);
    },
  };
  // The page first: it only listens and answers `ctnet ui` (ui.state); the others' starts read the
  // kernel and etcd and take seconds with hundreds of sandboxes, which `ctnet ui` would wait out.
  return [logService(), webService(), tableGuard(), clusterAgent(hooks), overlayWatch(), directory.service, services.service, traceResponder(), dnsService(), healthChecks()];
};
