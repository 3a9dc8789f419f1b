// Network namespace files and the processes inside them.
import { spawn, type ChildProcess } from 'node:child_process';
import { readdirSync, readlinkSync, statfsSync, statSync } from 'node:fs';
import { netnsPath, type Netns } from '../model/netns.ts';
import { nsenterArgv } from '../plan/render.ts';

export const NETNS_DIR = '/run/netns';

/** Names of the netns files in /run/netns (what `ip netns list` shows). */
export function netnsNames(): string[] {
  try {
    return readdirSync(NETNS_DIR);
  } catch {
    return [];
  }
}

/** The inode that identifies a namespace, or undefined when its file is gone or not a netns. */
export function netnsInode(ns: Netns): number | undefined {
  try {
    return statSync(netnsPath(ns)).ino;
  } catch {
    return undefined;
  }
}

const NSFS_MAGIC = 0x6e736673;

/** True when PATH is a namespace file (a bind mount of nsfs, or /proc/PID/ns/net). */
export function isNetnsFile(path: string): boolean {
  try {
    return statfsSync(path).type === NSFS_MAGIC && (!path.startsWith('/proc/') || /^net:/.test(readlinkSync(path)));
  } catch {
    return false;
  }
}

/** PIDs of the processes whose network namespace is ns. */
export function netnsPids(ns: Netns): number[] {
  const ino = netnsInode(ns);
  if (ino === undefined) return [];
  const want = `net:[${ino}]`;
  const pids: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      if (readlinkSync(`/proc/${entry}/ns/net`) === want) pids.push(Number(entry));
    } catch {
      // the process exited while we looked
    }
  }
  return pids;
}

/** Equivalent to: ip netns pids NS | xargs kill -KILL. Returns the pids it signalled. */
export function netnsKillAll(ns: Netns): number[] {
  const pids = netnsPids(ns).filter((p) => p !== process.pid);
  for (const pid of pids) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }
  return pids;
}

/**
 * Equivalent to: nsenter --net=NS CMD ARGS. Only the network namespace is entered (unlike
 * `ip netns exec`, no private mount namespace). The child is returned running.
 */
export function spawnInNetns(
  ns: Netns,
  cmd: readonly string[],
  options: { stdio: 'inherit' | readonly ['ignore', number, number]; detached: boolean },
): ChildProcess {
  const [file, ...args] = nsenterArgv(ns, cmd);
  return spawn(file!, args, {
    stdio: options.stdio === 'inherit' ? 'inherit' : [...options.stdio],
    detached: options.detached,
  });
}
