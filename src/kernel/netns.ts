// Network namespace files and the processes inside them.
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readlinkSync, renameSync, rmdirSync, rmSync, statfsSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
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
  const [file, ...args] = execArgv(ns, cmd);
  return spawn(file!, args, {
    stdio: options.stdio === 'inherit' ? 'inherit' : [...options.stdio],
    detached: options.detached,
  });
}

/** Where `ip netns exec NAME` finds the files it binds over /etc (resolv.conf, hosts). */
export const ETC_NETNS = '/etc/netns';

/** Equivalent to: mkdir -p /etc/netns/NAME && write /etc/netns/NAME/resolv.conf (atomically: a reader never sees half). */
export function writeResolv(name: string, text: string): void {
  const dir = join(ETC_NETNS, name);
  mkdirSync(dir, { recursive: true, mode: 0o755 });
  writeFileSync(join(dir, 'resolv.conf.tmp'), text, { mode: 0o644 });
  renameSync(join(dir, 'resolv.conf.tmp'), join(dir, 'resolv.conf'));
}

/** Equivalent to: rm -f /etc/netns/NAME/resolv.conf; rmdir /etc/netns/NAME when empty. Missing is success. */
export function removeResolv(name: string): void {
  const dir = join(ETC_NETNS, name);
  rmSync(join(dir, 'resolv.conf'), { force: true });
  try {
    rmdirSync(dir);
  } catch {
    // gone, or someone else's files are in it: leave them
  }
}

/** The names under /etc/netns with a resolv.conf. */
export function resolvNames(): string[] {
  try {
    return readdirSync(ETC_NETNS).filter(hasResolv);
  } catch {
    return [];
  }
}

/** True when ctnet wrote a resolv.conf for netns NAME (exec then binds it: see execArgv). */
export function hasResolv(name: string): boolean {
  return existsSync(join(ETC_NETNS, name, 'resolv.conf'));
}

/**
 * How a command runs in a sandbox: nsenter into its network namespace, or, when ctnet wrote the
 * sandbox a resolv.conf, `ip netns exec NAME`, which also binds /etc/netns/NAME/resolv.conf over
 * /etc/resolv.conf in a private mount namespace of the command's own.
 */
export function execArgv(ns: Netns, cmd: readonly string[]): string[] {
  return 'name' in ns && hasResolv(ns.name) ? ['ip', 'netns', 'exec', ns.name, ...cmd] : nsenterArgv(ns, cmd);
}
