// The in-process kernel backend ctnetd uses: the ops of the CNI ADD/DEL and create/rm paths go to
// the kernel over rtnetlink (links, addresses, default routes) and libnftables (nft transactions)
// from ctnetd's own process, through a small N-API addon (addon.c, build/ctnet-netlink.node); no
// `ip` or `nft` process is started for them. In ctnetd a spawn costs tens of ms (the fork copies
// the daemon's page tables), several times the kernel work it carries.
//
// Every other op and read goes to the exec backend it wraps, which stays the fallback (no addon,
// or CTNET_KERNEL=exec) and what --explain renders: the ops are the same data either way, and each
// netlink request here is one `ip` command's equivalent (rtnetlink.ts names it).
import { closeSync, existsSync, openSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { getSystemErrorMessage, getSystemErrorName } from 'node:util';
import { KernelError, type KernelErrorKind } from '../../errors.ts';
import { netnsPath, type Netns } from '../../model/netns.ts';
import type { Op } from '../../plan/ops.ts';
import { ipArgv, ipCommand, shellLine } from '../../plan/render.ts';
import { ROOT } from '../../root.ts';
import type { AddrInfo, FdbInfo, KernelBackend, LinkInfo, LinkStats, Listener, NeighInfo, NftChain, ProbeResult, ProbeSpec, RouteInfo, TraceMarker, TraceMonitor } from '../backend.ts';
import type { ExecBackend } from '../exec/backend.ts';
import { classify } from '../exec/run.ts';
import { deleteTolerant } from '../nft-delete.ts';
import type { NftCounts } from '../nftcounts.ts';
import * as rt from './rtnetlink.ts';

/** scripts/build.sh compiles addon.c here (with libnftables-dev and Node's headers). */
export const ADDON = join(ROOT, 'build', 'ctnet-netlink.node');

/** What addon.c exports. */
export interface NetlinkAddon {
  /** One rtnetlink request on a socket made in namespace nsFd (-1: this one); every reply message. */
  request(nsFd: number, buf: Buffer): Buffer;
  /** libnftables: these commands as one transaction; [rc, output, error text]. */
  nft(cmd: string): [number, string, string];
}

/** The addon, or why it cannot be used. */
export function loadAddon(path = ADDON): NetlinkAddon | { readonly error: string } {
  if (!existsSync(path)) return { error: `${path} is not built (scripts/build.sh builds it with gcc and libnftables-dev)` };
  try {
    return createRequire(import.meta.url)(path) as NetlinkAddon;
  } catch (e) {
    return { error: `cannot load ${path}: ${(e as Error).message}` };
  }
}

/** Time spent in the addon's kernel calls (the daemon logs it apart from spawns and the engine). */
export class CallStats {
  calls = 0;
  ms = 0;
}

// errno (positive) → the kinds the applier and the engine know. EADDRNOTAVAIL is `ip addr del` of an address
// that is not there; ESRCH `ip route del` of a route that is not.
function kindOf(errno: number): KernelErrorKind {
  switch (getSystemErrorName(-errno)) {
    case 'EEXIST': return 'exists';
    case 'ENOENT': case 'ENODEV': case 'ESRCH': case 'EADDRNOTAVAIL': return 'not-found';
    case 'EBUSY': return 'busy';
    case 'EPERM': case 'EACCES': return 'permission';
    default: return 'failed';
  }
}

/** The ops this backend applies itself; the rest go to the exec backend. */
const NETLINK_OPS = new Set<Op['kind']>(['link.add.veth', 'link.set.master', 'link.set.hairpin', 'link.set.up', 'link.set.mtu', 'link.del',
  'addr.add', 'addr.del', 'route.replace.default', 'route.del.default', 'nft', 'nft.delete']);

export class NetlinkBackend implements KernelBackend {
  readonly #addon: NetlinkAddon;
  readonly #exec: ExecBackend;
  #seq = 1;
  /** In-process kernel calls: netlink requests and nft transactions. */
  readonly calls = new CallStats();

  constructor(addon: NetlinkAddon, exec: ExecBackend) {
    this.#addon = addon;
    this.#exec = exec;
  }

  /** The exec backend's spawns (what this backend delegates still starts processes). */
  get stats() {
    return this.#exec.stats;
  }

  async apply(ops: readonly Op[]): Promise<void> {
    let i = 0;
    while (i < ops.length) {
      const op = ops[i]!;
      if (op.kind === 'nft.delete') {
        await this.#nftDelete(op.lines);
        i++;
        continue;
      }
      if (NETLINK_OPS.has(op.kind)) {
        this.#one(op);
        i++;
        continue;
      }
      // Consecutive others go together, so the exec backend batches them as it would.
      let j = i;
      while (j < ops.length && !NETLINK_OPS.has(ops[j]!.kind)) j++;
      await this.#exec.apply(ops.slice(i, j));
      i = j;
    }
  }

  #one(op: Op): void {
    switch (op.kind) {
      case 'link.add.veth': {
        const peerFd = this.#openNs(op, op.peerNetns);
        try {
          this.#request(op, op.netns, (seq) => rt.linkAddVeth(seq, { name: op.name, mtu: op.mtu, peer: op.peer, peerMac: op.peerMac, peerNsFd: peerFd }));
        } finally {
          closeSync(peerFd);
        }
        return;
      }
      case 'link.set.master': {
        const master = this.#index(op, undefined, op.master);
        this.#request(op, undefined, (seq) => rt.linkSetMaster(seq, op.name, master));
        return;
      }
      case 'link.set.hairpin': return void this.#request(op, undefined, (seq) => rt.linkSetHairpin(seq, op.name));
      case 'link.set.up': return void this.#request(op, op.netns, (seq) => rt.linkSetUp(seq, op.name));
      case 'link.set.mtu': return void this.#request(op, op.netns, (seq) => rt.linkSetMtu(seq, op.name, op.mtu));
      case 'link.del': return void this.#request(op, op.netns, (seq) => rt.linkDel(seq, op.name));
      case 'addr.add': {
        const index = this.#index(op, op.netns, op.dev);
        return void this.#request(op, op.netns, (seq) => rt.addrAdd(seq, op.cidr, index));
      }
      case 'addr.del': {
        const index = this.#index(op, op.netns, op.dev);
        return void this.#request(op, op.netns, (seq) => rt.addrDel(seq, op.cidr, index));
      }
      case 'route.replace.default': {
        const index = this.#index(op, op.netns, op.dev);
        return void this.#request(op, op.netns, (seq) => rt.routeReplaceDefault(seq, op.via, index));
      }
      case 'route.del.default': {
        const index = this.#index(op, op.netns, op.dev);
        return void this.#request(op, op.netns, (seq) => rt.routeDelDefault(seq, op.via, index));
      }
      case 'nft': return this.#nft(op.kind, op.lines);
      default:
        throw new Error(`the netlink backend cannot apply ${op.kind}`);
    }
  }

  /** An open descriptor of a namespace file; a missing one is not-found, as `ip -n` says. */
  #openNs(op: Op | string, ns: Netns): number {
    try {
      return openSync(netnsPath(ns), 'r');
    } catch (e) {
      const err = e as NodeJS.ErrnoException;
      throw new KernelError({ kind: err.code === 'ENOENT' ? 'not-found' : 'failed', op: typeof op === 'string' ? op : op.kind, command: commandOf(op, ns), stderr: err.message, errno: err.code });
    }
  }

  /**
   * Sends one request in namespace ns (ctnet's own when undefined) and returns its reply
   * messages; a kernel errno becomes a KernelError naming the `ip` command it stands for.
   */
  #request(op: Op | string, ns: Netns | undefined, build: (seq: number) => Buffer): rt.Reply[] {
    const seq = this.#seq++;
    const buf = build(seq);
    const fd = ns ? this.#openNs(op, ns) : -1;
    const t = performance.now();
    let out: Buffer;
    try {
      out = this.#addon.request(fd, buf);
    } catch (e) {
      const errno = (e as { errno?: number }).errno;
      throw new KernelError({ kind: errno ? kindOf(errno) : 'failed', op: typeof op === 'string' ? op : op.kind, command: commandOf(op, ns), stderr: (e as Error).message, errno: errno ? getSystemErrorName(-errno) : undefined });
    } finally {
      this.calls.calls++;
      this.calls.ms += performance.now() - t;
      if (fd >= 0) closeSync(fd);
    }
    const msgs = rt.replies(out).filter((m) => m.seq === seq);
    for (const m of msgs) {
      if (m.type !== rt.NLMSG_ERROR) continue;
      const errno = rt.errnoOf(m);
      if (errno === 0) continue;
      throw new KernelError({
        kind: kindOf(errno), op: typeof op === 'string' ? op : op.kind, command: commandOf(op, ns),
        stderr: `RTNETLINK answers: ${getSystemErrorMessage(-errno)}`, errno: getSystemErrorName(-errno),
      });
    }
    return msgs;
  }

  /** The ifindex of NAME in ns (`ip` does this lookup too before an address or route). */
  #index(op: Op, ns: Netns | undefined, name: string): number {
    const link = this.#request(op, ns, (seq) => rt.linkGet(seq, name)).find((m) => m.type === rt.RTM_NEWLINK);
    if (!link) throw new KernelError({ kind: 'not-found', op: op.kind, command: commandOf(op, ns), stderr: `Cannot find device "${name}"` });
    return rt.parseLink(link.body).ifindex;
  }

  #dump(op: string, ns: Netns | undefined, build: (seq: number) => Buffer): rt.Reply[] {
    return this.#request(op, ns, build).filter((m) => m.type !== rt.NLMSG_DONE && m.type !== rt.NLMSG_ERROR);
  }

  /** Equivalent to: nft -f FILE with these lines: one transaction, all or nothing. */
  #nft(op: string, lines: readonly string[]): void {
    const t = performance.now();
    let rc: number, err: string;
    try {
      [rc, , err] = this.#addon.nft(lines.join('\n') + '\n');
    } finally {
      this.calls.calls++;
      this.calls.ms += performance.now() - t;
    }
    if (rc !== 0) {
      const stderr = err.trim() || `nft exited ${rc}`;
      throw new KernelError({ kind: classify(stderr), op, command: `nft -f - (${lines.length} lines, libnftables)`, stderr, exitCode: rc });
    }
  }

  /** An element already gone counts as deleted, as the exec backend does. */
  #nftDelete(lines: readonly string[]): Promise<void> {
    return deleteTolerant(lines, (l) => this.#nft('nft.delete', l));
  }

  // ---- reads: the ones the CNI and create paths make on every request; the rest delegate ----

  /** Equivalent to: ip -j -4 route show; ip -j -6 route show (the main table, as ip shows it). */
  async routes(ns?: Netns): Promise<RouteInfo[]> {
    const names = this.#names(ns);
    const raw = [4, 6].flatMap((f) => this.#dump('route.list', ns, (seq) => rt.routeDump(seq, f as 4 | 6)).flatMap((m) => {
      const r = rt.parseRoute(m.body);
      return r ? [r] : [];
    }));
    // Every type (a blackhole or unreachable route also covers a subnet), as ip shows the main table.
    return raw.filter((r) => r.table === rt.RT_TABLE_MAIN).map((r): RouteInfo => ({
      dst: r.dst,
      ...(r.gateway ? { gateway: r.gateway } : {}),
      ...(r.oif !== undefined && names.has(r.oif) ? { dev: names.get(r.oif)! } : {}),
      // ip leaves out what is the default: protocol boot, scope global.
      ...(r.protocol !== 'boot' ? { protocol: r.protocol } : {}),
      ...(r.scope !== 'global' ? { scope: r.scope } : {}),
      ...(r.prefsrc ? { prefsrc: r.prefsrc } : {}),
      flags: r.flags,
    }));
  }

  /**
   * Equivalent to: ip -j -d -n NS link show, for a sandbox's namespace (names, kinds, addresses).
   * ctnet's own namespace is read by the exec backend: its readers (observe, gc, the graph) use
   * `ip -d`'s details (a VXLAN device's info_data), which this decoder does not produce.
   */
  async links(ns?: Netns): Promise<LinkInfo[]> {
    if (!ns) return this.#exec.links();
    const raw = this.#dump('link.list', ns, (seq) => rt.linkDump(seq)).filter((m) => m.type === rt.RTM_NEWLINK).map((m) => rt.parseLink(m.body));
    const names = new Map(raw.map((l) => [l.ifindex, l.ifname]));
    return raw.map((l): LinkInfo => ({
      ifindex: l.ifindex, ifname: l.ifname, flags: l.flags,
      ...(l.link_index !== undefined ? { link_index: l.link_index } : {}),
      ...(l.link_netnsid !== undefined ? { link_netnsid: l.link_netnsid } : {}),
      ...(l.masterIndex !== undefined && names.has(l.masterIndex) ? { master: names.get(l.masterIndex)! } : {}),
      ...(l.mtu !== undefined ? { mtu: l.mtu } : {}),
      ...(l.operstate ? { operstate: l.operstate } : {}),
      ...(l.address ? { address: l.address } : {}),
      ...(l.kind ? { linkinfo: { info_kind: l.kind } } : {}),
    }));
  }

  /** Equivalent to: ip -j [-n NS] addr show (every link, with its addresses in the kernel's order). */
  async addrs(ns?: Netns): Promise<AddrInfo[]> {
    const names = this.#names(ns);
    const byIndex = new Map<number, AddrInfo['addr_info']>([...names.keys()].sort((a, b) => a - b).map((i) => [i, []]));
    for (const m of this.#dump('addr.list', ns, (seq) => rt.addrDump(seq))) {
      const a = m.type === rt.RTM_NEWADDR ? rt.parseAddr(m.body) : undefined;
      if (a) byIndex.get(a.index)?.push({ family: a.family === 4 ? 'inet' : 'inet6', local: a.local, prefixlen: a.prefixlen, scope: a.scope });
    }
    return [...byIndex].map(([index, addr_info]) => ({ ifname: names.get(index)!, addr_info }));
  }

  #names(ns: Netns | undefined): Map<number, string> {
    return new Map(this.#dump('link.list', ns, (seq) => rt.linkDump(seq)).filter((m) => m.type === rt.RTM_NEWLINK).map((m) => {
      const l = rt.parseLink(m.body);
      return [l.ifindex, l.ifname];
    }));
  }

  link(name: string, ns?: Netns): Promise<LinkInfo | undefined> { return this.#exec.link(name, ns); }
  linkStats(ns?: Netns): Promise<LinkStats[]> { return this.#exec.linkStats(ns); }
  linksOf(bridge: string): Promise<LinkInfo[]> { return this.#exec.linksOf(bridge); }
  neighbours(ns?: Netns): Promise<NeighInfo[]> { return this.#exec.neighbours(ns); }
  fdb(bridge: string): Promise<FdbInfo[]> { return this.#exec.fdb(bridge); }
  fdbOf(dev: string): Promise<FdbInfo[]> { return this.#exec.fdbOf(dev); }
  nftTable(family?: 'inet' | 'bridge', options?: { readonly terse?: boolean }): Promise<unknown[] | undefined> { return this.#exec.nftTable(family, options); }
  nftCounts(): Promise<NftCounts> { return this.#exec.nftCounts(); }
  nftTableText(): Promise<string | undefined> { return this.#exec.nftTableText(); }
  nftChains(): Promise<NftChain[]> { return this.#exec.nftChains(); }
  nftTables(): Promise<{ family: string; table: string }[]> { return this.#exec.nftTables(); }
  flows() { return this.#exec.flows(); }
  listeners(sctp: boolean, only?: (proto: 'tcp' | 'udp', port: number) => boolean): Promise<Listener[]> { return this.#exec.listeners(sctp, only); }
  sysctl(key: string): string | undefined { return this.#exec.sysctl(key); }
  netnsNames(): string[] { return this.#exec.netnsNames(); }
  resolvNames(): string[] { return this.#exec.resolvNames(); }
  resolvedHere(): Promise<boolean> { return this.#exec.resolvedHere(); }
  resolvedLink(dev: string) { return this.#exec.resolvedLink(dev); }
  isNetns(path: string): boolean { return this.#exec.isNetns(path); }
  netnsIds() { return this.#exec.netnsIds(); }
  netnsPids(ns: Netns): number[] { return this.#exec.netnsPids(ns); }
  toolVersion(tool: 'ip' | 'nft' | 'conntrack'): Promise<string | undefined> { return this.#exec.toolVersion(tool); }
  legacyForward(): Promise<string | undefined> { return this.#exec.legacyForward(); }
  traceMonitor(marker?: TraceMarker): Promise<TraceMonitor> { return this.#exec.traceMonitor(marker); }
  probe(ns: Netns | undefined, p: ProbeSpec): Promise<ProbeResult> { return this.#exec.probe(ns, p); }
  routeGet(ns: Netns | undefined, dst: string) { return this.#exec.routeGet(ns, dst); }
}

/** The `ip` command an op stands for (its error names it as the exec backend's would). */
function commandOf(op: Op | string, ns: Netns | undefined): string {
  if (typeof op === 'string') return `${op}${ns ? ` in ${netnsPath(ns)}` : ''} (rtnetlink)`;
  const ip = ipCommand(op);
  return ip ? `${shellLine(ipArgv(ip.netns, ip.args))} (rtnetlink)` : `${op.kind} (rtnetlink)`;
}

/** A backend with the counters ctnetd logs per request. */
export type DaemonBackend = KernelBackend & { readonly stats: ExecBackend['stats']; readonly calls?: CallStats };

/** The backend of one ctnetd request: in-process when ctnetd chose the addon, else exec. */
export function daemonBackend(addon: NetlinkAddon | undefined, makeExec: () => ExecBackend): DaemonBackend {
  return addon ? new NetlinkBackend(addon, makeExec()) : makeExec();
}

/**
 * ctnetd's choice, made once when it starts: the addon unless CTNET_KERNEL=exec or it cannot be
 * loaded (then exec, and the log says why).
 */
export function chooseAddon(log: (m: string) => void, env: NodeJS.ProcessEnv = process.env): NetlinkAddon | undefined {
  const want = env.CTNET_KERNEL ?? 'netlink';
  if (want === 'exec') {
    log('kernel backend: exec (CTNET_KERNEL=exec)');
    return undefined;
  }
  // Anything else is a mistake: the fallback that always works is the safe reading of it.
  const a: NetlinkAddon | { error: string } = want === 'netlink' ? loadAddon() : { error: `CTNET_KERNEL=${want} is neither netlink nor exec` };
  log('error' in a ? `kernel backend: exec (the in-process one is unavailable: ${a.error})` : `kernel backend: netlink, in process (${ADDON})`);
  return 'error' in a ? undefined : a;
}
