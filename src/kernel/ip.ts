// iproute2, as data. Builders are pure (unit-tested, and what --explain prints); runIp() executes
// a list of them, one `ip -batch` process per run of commands in the same namespace.
import type { Runner } from './runner.ts';
import { shellLine } from './shell.ts';

/** Where a command runs: a named netns (/run/netns/NAME), any netns file, or (undefined) ctnet's own. */
export type Netns = { readonly name: string } | { readonly path: string };

export interface IpCommand {
  readonly netns?: Netns | undefined;
  readonly args: readonly string[];
}

/** A netns file as a Netns: one directly in /run/netns by name (`ip -n`, one exec fewer than nsenter). */
export function netnsOf(path: string): Netns {
  const m = /^\/run\/netns\/([^/]+)$/.exec(path);
  return m ? { name: m[1]! } : { path };
}

export function netnsPath(ns: Netns): string {
  return 'name' in ns ? `/run/netns/${ns.name}` : ns.path;
}

function sameNetns(a: Netns | undefined, b: Netns | undefined): boolean {
  if (!a || !b) return a === b;
  return netnsPath(a) === netnsPath(b);
}

/** argv that runs `ip ARGS...` in ns. `ip -n` takes only names, so other paths go through nsenter. */
export function ipArgv(ns: Netns | undefined, args: readonly string[]): string[] {
  if (!ns) return ['ip', ...args];
  if ('name' in ns) return ['ip', '-n', ns.name, ...args];
  return ['nsenter', `--net=${ns.path}`, 'ip', ...args];
}

/** The shell line equivalent to one command. */
export function ipLine(cmd: IpCommand): string {
  return shellLine(ipArgv(cmd.netns, cmd.args));
}

const at = (netns: Netns | undefined, args: string[]): IpCommand => ({ netns, args });

/** Equivalent to: ip netns add NAME */
export const netnsAdd = (name: string): IpCommand => at(undefined, ['netns', 'add', name]);
/** Equivalent to: ip netns del NAME */
export const netnsDel = (name: string): IpCommand => at(undefined, ['netns', 'del', name]);

/** Equivalent to: ip link add NAME [address MAC] [mtu N] type bridge */
export function linkAddBridge(name: string, opts: { address?: string; mtu?: number | undefined } = {}): IpCommand {
  return at(undefined, [
    'link', 'add', name, ...(opts.address ? ['address', opts.address] : []),
    ...(opts.mtu ? ['mtu', String(opts.mtu)] : []), 'type', 'bridge',
  ]);
}

export interface VethSpec {
  readonly name: string;
  readonly peer: string;
  /** The namespace the peer is created in, with its final name. */
  readonly peerNetns: Netns;
  readonly peerAddress?: string | undefined;
  readonly mtu?: number | undefined;
}

/** Equivalent to: ip link add NAME [mtu N] type veth peer name PEER [address MAC] netns NS */
export function linkAddVeth(v: VethSpec): IpCommand {
  const mtu = v.mtu ? ['mtu', String(v.mtu)] : [];
  return at(undefined, [
    'link', 'add', v.name, ...mtu, 'type', 'veth', 'peer', 'name', v.peer, ...mtu,
    ...(v.peerAddress ? ['address', v.peerAddress] : []),
    'netns', 'name' in v.peerNetns ? v.peerNetns.name : v.peerNetns.path,
  ]);
}

/** Equivalent to: ip link set NAME master MASTER */
export const linkSetMaster = (name: string, master: string): IpCommand =>
  at(undefined, ['link', 'set', name, 'master', master]);
/**
 * Equivalent to: ip link set NAME type bridge_slave hairpin on. Lets the bridge send a frame back
 * out of the port it came in on: with br_netfilter, a sandbox reaching its own published port
 * through the host's address is DNATed inside the bridge and needs exactly that.
 */
export const linkSetHairpin = (name: string): IpCommand =>
  at(undefined, ['link', 'set', name, 'type', 'bridge_slave', 'hairpin', 'on']);
/** Equivalent to: ip [-n NS] link set NAME up */
export const linkSetUp = (name: string, ns?: Netns): IpCommand => at(ns, ['link', 'set', name, 'up']);
/** Equivalent to: ip [-n NS] link del NAME */
export const linkDel = (name: string, ns?: Netns): IpCommand => at(ns, ['link', 'del', name]);

/** Equivalent to: ip [-n NS] addr add ADDR/PREFIX dev DEV [nodad] (nodad for IPv6: usable at once) */
export function addrAdd(cidr: string, dev: string, ns?: Netns): IpCommand {
  return at(ns, ['addr', 'add', cidr, 'dev', dev, ...(cidr.includes(':') ? ['nodad'] : [])]);
}

/** Equivalent to: ip [-n NS] [-6] route replace default via GW dev DEV */
export function routeSetDefault(gateway: string, dev: string, ns?: Netns): IpCommand {
  // replace: a network with a way out takes the default over from an --internal one.
  return at(ns, [...(gateway.includes(':') ? ['-6'] : []), 'route', 'replace', 'default', 'via', gateway, 'dev', dev]);
}

/** Runs commands in order, batching neighbours that share a namespace into one `ip -batch -`. */
export async function runIp(runner: Runner, cmds: readonly IpCommand[]): Promise<void> {
  let i = 0;
  while (i < cmds.length) {
    const first = cmds[i]!;
    let j = i + 1;
    // `-6` is a global option, not allowed inside a batch: such commands run alone.
    const batchable = (c: IpCommand) => c.args[0] !== '-6';
    while (j < cmds.length && batchable(first) && batchable(cmds[j]!) && sameNetns(cmds[j]!.netns, first.netns)) j++;
    const group = cmds.slice(i, j);
    if (group.length === 1) {
      await runner.run(ipArgv(first.netns, first.args), { mutates: true });
    } else {
      await runner.run(ipArgv(first.netns, ['-batch', '-']), {
        mutates: true,
        input: group.map((c) => shellLine(c.args)).join('\n') + '\n',
        explain: group.map(ipLine),
      });
    }
    i = j;
  }
}

// ---- reads (never printed by --explain) ----

export interface LinkInfo {
  readonly ifindex: number;
  readonly ifname: string;
  readonly link_index?: number;
  readonly link_netnsid?: number;
  readonly master?: string;
  readonly operstate?: string;
  readonly address?: string;
  readonly mtu?: number;
  readonly flags?: string[];
  readonly linkinfo?: { info_kind?: string };
}

async function ipJson<T>(runner: Runner, ns: Netns | undefined, args: string[]): Promise<T[]> {
  const { stdout } = await runner.run(ipArgv(ns, ['-j', ...args]));
  return stdout.trim() ? (JSON.parse(stdout) as T[]) : [];
}

/** Equivalent to: ip -j [-n NS] -d link show; all links of a namespace. */
export const linkList = (runner: Runner, ns?: Netns) => ipJson<LinkInfo>(runner, ns, ['-d', 'link', 'show']);
/** Equivalent to: ip -j link show dev NAME; empty when there is no such link. */
export async function linkShow(runner: Runner, name: string): Promise<LinkInfo[]> {
  try {
    return await ipJson<LinkInfo>(runner, undefined, ['link', 'show', 'dev', name]);
  } catch {
    return [];
  }
}
/** Equivalent to: ip -j link show master BRIDGE */
export const linkListMaster = (runner: Runner, bridge: string) =>
  ipJson<LinkInfo>(runner, undefined, ['link', 'show', 'master', bridge]);

export interface AddrInfo {
  readonly ifname: string;
  readonly addr_info: { family: string; local: string; prefixlen: number; scope: string }[];
}
export const addrList = (runner: Runner, ns?: Netns) => ipJson<AddrInfo>(runner, ns, ['addr', 'show']);

export interface RouteInfo {
  readonly dst: string;
  readonly gateway?: string;
  readonly dev?: string;
  readonly protocol?: string;
  readonly scope?: string;
  readonly prefsrc?: string;
}
export async function routeList(runner: Runner, ns?: Netns): Promise<RouteInfo[]> {
  const v4 = await ipJson<RouteInfo>(runner, ns, ['-4', 'route', 'show']);
  const v6 = await ipJson<RouteInfo>(runner, ns, ['-6', 'route', 'show']);
  return [...v4, ...v6];
}

export interface NeighInfo {
  readonly dst: string;
  readonly dev: string;
  readonly lladdr?: string;
  readonly state?: string[];
}
export const neighList = (runner: Runner, ns?: Netns) => ipJson<NeighInfo>(runner, ns, ['neigh', 'show']);

export interface FdbInfo {
  readonly mac: string;
  readonly ifname?: string;
  readonly master?: string;
  readonly state?: string;
  readonly flags?: string[];
  readonly vlan?: number;
}
/** Equivalent to: bridge -j fdb show br BRIDGE */
export async function fdbList(runner: Runner, bridge: string): Promise<FdbInfo[]> {
  const { stdout } = await runner.run(['bridge', '-j', 'fdb', 'show', 'br', bridge]);
  return stdout.trim() ? (JSON.parse(stdout) as FdbInfo[]) : [];
}
