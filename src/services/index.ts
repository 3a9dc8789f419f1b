// The services ctnetd runs, in start order (they stop in reverse).
import { clusterAgent } from './cluster.ts';
import { sandboxDirectory } from './directory.ts';
import { dnsService } from './dns/service.ts';
import { healthChecks } from './health.ts';
import { logService } from './log.ts';
import { overlayWatch } from './overlay.ts';
import { tableGuard } from './tableguard.ts';
import { traceResponder } from './trace.ts';
import { webService } from './api/service.ts';
import type { Service } from './service.ts';

export const builtinServices = (): Service[] => {
  // The cluster agent tells the directory when the host has a new etcd lease (republish under it)
  // and when etcd answers again (list again).
  const directory = sandboxDirectory();
  // The page first: it only listens and answers `ctnet ui` (ui.state); the others' starts read the
  // kernel and etcd and take seconds with hundreds of sandboxes, which `ctnet ui` would wait out.
  return [logService(), webService(), tableGuard(), clusterAgent(directory.hooks), overlayWatch(), directory.service, traceResponder(), dnsService(), healthChecks()];
};
