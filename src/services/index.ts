// The services ctnetd runs, in start order (they stop in reverse).
import { clusterAgent } from './cluster.ts';
import { sandboxDirectory } from './directory.ts';
import { dnsService } from './dns/service.ts';
import { healthChecks } from './health.ts';
import { logService } from './log.ts';
import { overlayWatch } from './overlay.ts';
import { tableGuard } from './tableguard.ts';
import { webService } from './api/service.ts';
import type { Service } from './service.ts';

export const builtinServices = (): Service[] => {
  // The cluster agent tells the directory when the host has a new etcd lease (republish under it)
  // and when etcd answers again (list again).
  const directory = sandboxDirectory();
  return [logService(), tableGuard(), clusterAgent(directory.hooks), overlayWatch(), directory.service, dnsService(), healthChecks(), webService()];
};
