// The services ctnetd runs, in start order (they stop in reverse).
import { clusterAgent } from './cluster.ts';
import { logService } from './log.ts';
import { overlayWatch } from './overlay.ts';
import { tableGuard } from './tableguard.ts';
import type { Service } from './service.ts';

export const builtinServices = (): Service[] => [logService(), tableGuard(), clusterAgent(), overlayWatch()];
