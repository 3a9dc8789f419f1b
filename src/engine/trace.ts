// `ctnet trace SRC DST[:PORT][/tcp|/udp|/icmp]`: why can (or can't) SRC reach DST? A real probe, one
// new flow with a source port of its own, sent from SRC's namespace while nftables traces exactly
// that flow (`meta nftrace set 1` in a temporary table of ours, read with `nft monitor trace`).
// The answer: the route SRC takes, every chain and rule of every table that saw the packet (ctnet's,
// ctnetd's, and anyone else's: a foreign drop is the cause users cannot find), the NAT it got, and
// the outcome; where ctnet's policy decided, the rule (or default) by name, as `policy check` says.
// The temporary tables carry this process's token in their name, so gc removes them after a crash.
import { randomBytes } from 'node:crypto';
import { CtnetError, invalid } from '../errors.ts';
import { isAlive, processToken } from '../kernel/proc.ts';
import { contains, parseAddr, parseSubnet } from '../model/cidr.ts';
import { isWildcard } from '../model/ports.ts';
import type { Netns } from '../model/netns.ts';
import { step } from '../plan/plan.ts';
import type { Ctx } from './context.ts';
import { etcdOf } from './cluster.ts';
import { checkPolicy } from './policy.ts';
import { askPeer, type PeerTrace, type RemoteReport, type TraceRequest } from './trace-remote.ts';
import { readySandbox, sandboxNetns } from './records.ts';

export interface TraceTarget {
  readonly dst: string;
  readonly port: number | undefined;
  readonly proto: 'tcp' | 'udp' | 'icmp';
}

/** DST[:PORT][/tcp|/udp|/icmp]: a port means TCP unless told; no port means ICMP. */
export function parseTraceTarget(text: string): TraceTarget {
  const m = /^(.+?)(?::(\d+))?(?:\/(tcp|udp|icmp))?$/.exec(text);
  if (!m || !m[1]) throw invalid(`trace target ${JSON.stringify(text)} is not DST[:PORT][/tcp|/udp|/icmp]`, 'e.g. api:8080, 10.0.0.5:53/udp, db (ICMP), host:8080 (a published port)');
  const port = m[2] === undefined ? undefined : Number(m[2]);
  if (port !== undefined && (port < 1 || port > 65535)) throw invalid(`port ${m[2]} is not 1-65535`);
  const proto = (m[3] as TraceTarget['proto'] | undefined) ?? (port === undefined ? 'icmp' : 'tcp');
  if (proto !== 'icmp' && port === undefined) throw invalid(`/${proto} needs a port`, `e.g. ${m[1]}:80/${proto}`);
  if (proto === 'icmp' && port !== undefined) throw invalid('ICMP has no port', `leave :${port} out, or add /tcp or /udp`);
  return { dst: m[1], port, proto };
}

/** One line of `nft monitor trace`, parsed. */
export interface TraceEvent {
  readonly id: string;
  readonly family: string;
  readonly table: string;
  readonly chain: string;
  readonly kind: 'packet' | 'rule' | 'policy' | 'verdict';
  /** The rule's text (a rule), or the packet's headers (a packet). */
  readonly text: string;
  /** accept, drop, continue, jump X, goto X, return (rules and policies). */
  readonly verdict: string | undefined;
}

const LINE = /^trace id (\S+) (\S+) (\S+) (\S+) (packet|rule|policy|verdict):? ?(.*?)\s*$/;

export function parseTraceLine(line: string): TraceEvent | undefined {
  const m = LINE.exec(line);
  if (!m) return undefined;
  const [, id, family, table, chain, kind, rest] = m as unknown as [string, string, string, string, string, TraceEvent['kind'], string];
  if (kind === 'rule') {
    const v = /^(.*) \(verdict ([^)]+)\)$/.exec(rest);
    return { id, family, table, chain, kind, text: v ? v[1]! : rest, verdict: v ? v[2] : undefined };
  }
  if (kind === 'policy' || kind === 'verdict') return { id, family, table, chain, kind, text: '', verdict: rest.trim() };
  return { id, family, table, chain, kind, text: rest, verdict: undefined };
}

export interface TraceStep {
  readonly table: string;
  readonly chain: string;
  /** The rule's comment, else its text; "(chain policy)" for the chain's own verdict. */
  readonly rule: string;
  readonly verdict: string;
  /** Whose table: ctnet's, ctnetd's fail-closed one, or someone else's. */
  readonly owner: 'ctnet' | 'ctnetd' | 'foreign';
  /** A NAT rule that translated it. */
  readonly nat?: boolean;
  /** Another host's step (droppedBy of a cross-host trace whose drop was on the destination host). */
  readonly host?: string;
}

export interface TraceResult {
  /** sandbox: the sandbox's name, or `world` / `host`; netns: the namespace a world probe left from. */
  readonly src: { readonly sandbox: string; readonly address: string; readonly kind?: Source['kind']; readonly netns?: string | undefined };
  readonly dst: { readonly name: string; readonly address: string; readonly port: number | undefined; readonly proto: string };
  readonly sport: number;
  readonly route: { readonly dev?: string | undefined; readonly gateway?: string | undefined; readonly prefsrc?: string | undefined; readonly type?: string | undefined };
  /** The first packet's way through this host's tables, and the first answer's (if one came). */
  readonly request: TraceStep[];
  readonly reply: TraceStep[];
  readonly nat: string[];
  readonly outcome: 'answered' | 'refused' | 'dropped' | 'no answer';
  /** Where it was dropped, by which rule (and whose table). */
  readonly droppedBy?: TraceStep | undefined;
  /** ctnet's policy decision for this flow (policy check), with the rule or default that decided. */
  readonly policy?: { readonly allowed: boolean; readonly by: string } | undefined;
  readonly probe: string;
  /**
   * The first answer's addresses as it left the server, before NAT was undone: the server's own
   * address and the client's as the server saw it (the real client's, or a masquerade's).
   */
  readonly seenByServer?: { readonly server: string; readonly client: string } | undefined;
  /** What ctnet does with this flow by design, and why (127.0.0.1 on the host, ::1, no route...). */
  readonly notes?: string[];
  /**
   * DST is another host's (on an overlay network): the packet left this host for it, through the
   * network's VXLAN device. Its tables judge the packet too; trace shows this host's half.
   */
  readonly leftFor?: { readonly host: string; readonly underlay: string; readonly network: string; readonly device: string } | undefined;
  /**
   * Where trace's time went, in ms from its start (not the process's): when the route was known,
   * the trace table in, the monitor subscribed, the probe done, the monitor drained, the table
   * gone, and the end (bench/trace.ts reports them).
   */
  readonly timings?: { readonly route: number; readonly table: number; readonly monitor: number; readonly peer?: number; readonly probe: number; readonly drained: number; readonly cleaned: number; readonly remote?: number; readonly end: number };
  /**
   * Cross-host (leftFor): the other host's half, traced by its ctnetd on request through etcd
   * (engine/trace-remote.ts): its chains and rules, its policy and what became of the packet there;
   * or why it is missing (no answer in time, refused, not a member).
   */
  readonly remote?: RemoteReport | undefined;
}

/**
 * How long a cross-host trace waits for the other host's ctnetd: to be ready before the probe, and
 * for its half after. It answers as soon as it can; this only bounds a host that does not (down,
 * or busy): then the report says so and carries this host's half alone.
 */
const PEER_WAIT_MS = 5_000;

/** Asks leftFor's host for its half; an error (not a member, etcd unreachable) becomes the report's. */
async function askLeftFor(ctx: Ctx, leftFor: NonNullable<TraceResult['leftFor']>, req: TraceRequest, waitMs: number): Promise<PeerTrace | RemoteReport> {
  const m = ctx.store.member();
  if (!m || m.state !== 'ready') return { host: leftFor.host, error: 'this host is not a ready member of a cluster' };
  try {
    return await askPeer(etcdOf(m), leftFor.host, { ...req, from: m.host }, waitMs);
  } catch (e) {
    return { host: leftFor.host, error: `cannot ask it through etcd: ${(e as Error).message}` };
  }
}

/** The other host whose overlay lease holds ADDR (the peer a packet to it leaves for). */
function peerOf(ctx: Ctx, addr: string): TraceResult['leftFor'] {
  const a = parseAddr('address', addr);
  for (const p of ctx.store.peers()) {
    const o = ctx.store.overlay(p.network);
    if (o && contains(parseSubnet('subnet', p.subnet), a.family, a.n)) return { host: p.host, underlay: p.underlay, network: p.network, device: o.device };
  }
  return undefined;
}

const ownerOf = (table: string): TraceStep['owner'] => (table === 'ctnet' ? 'ctnet' : table === 'ctnetd' ? 'ctnetd' : 'foreign');

function steps(events: readonly TraceEvent[]): TraceStep[] {
  return events.filter((e) => e.kind !== 'packet' && e.verdict !== undefined && !e.table.startsWith('ctnet_trace_')).map((e) => ({
    table: `${e.family} ${e.table}`,
    chain: e.chain,
    rule: e.kind === 'rule' ? (/comment "([^"]*)"/.exec(e.text)?.[1] ?? e.text) : '(chain policy)',
    verdict: e.verdict!,
    owner: ownerOf(e.table),
    // A translation (dnat/snat ... to, masquerade), not a match on one (ct status dnat).
    ...(e.kind === 'rule' && /\b(dnat|snat)( ip6?)? to\b|\bmasquerade\b/.test(e.text) && e.verdict === 'accept' ? { nat: true } : {}),
  }));
}

/**
 * The first request packet's way and the first answer's. A packet's trace id changes on the way
 * (the routed part gets a new one), so events are told apart by their headers: the request comes
 * from SRC's address and source port, the answer goes back to them. A second packet of a direction
 * (a retransmission) starts at that direction's first chain again; it is left out.
 */
export function firstPackets(events: readonly TraceEvent[], src: string, sport: number, proto: TraceTarget['proto'], ignore?: string): { request: TraceStep[]; reply: TraceStep[]; seenByServer?: { server: string; client: string } } {
  const esc = src.replace(/[.:]/g, (c) => `\\${c}`);
  const isRequest = proto === 'icmp'
    ? (t: string) => new RegExp(`saddr ${esc} `).test(t) && /echo-request/.test(t)
    : (t: string) => new RegExp(`saddr ${esc} `).test(t) && new RegExp(`${proto} sport ${sport} `).test(t);
  // An answer by its port only: a masquerade (hairpin, 127.0.0.1) changes where it goes back to, and
  // only this trace's rules mark packets.
  const isReply = proto === 'icmp'
    ? (t: string) => /echo-reply/.test(t)
    : (t: string) => new RegExp(`${proto} dport ${sport} `).test(t);
  const dirOf = new Map<string, 'request' | 'reply'>();
  const entry: Record<'request' | 'reply', string | undefined> = { request: undefined, reply: undefined };
  const done: Record<'request' | 'reply', boolean> = { request: false, reply: false };
  const kept: Record<'request' | 'reply', TraceEvent[]> = { request: [], reply: [] };
  let seenByServer: { server: string; client: string } | undefined;
  for (const e of events) {
    if (e.kind === 'packet') {
      const dir = ignore !== undefined && e.text.includes(ignore) ? undefined : isRequest(e.text + ' ') ? 'request' : isReply(e.text + ' ') ? 'reply' : undefined;
      if (!dir) {
        dirOf.delete(e.id); // a reused id now stands for another packet (the marker, say)
        continue;
      }
      if (dir === 'reply' && !seenByServer) {
        const a = /\bip6? saddr (\S+) ip6? daddr (\S+)/.exec(e.text);
        if (a) seenByServer = { server: a[1]!, client: a[2]! };
      }
      const where = `${e.family} ${e.table} ${e.chain}`;
      if (entry[dir] === undefined) entry[dir] = where;
      // Back at its entry: the next packet (a packet enters a direction's first chain once; trace
      // ids are reused, so a known id says nothing).
      else if (entry[dir] === where && kept[dir].length > 0) done[dir] = true;
      dirOf.set(e.id, dir);
      continue;
    }
    const dir = dirOf.get(e.id);
    if (dir && !done[dir]) kept[dir].push(e);
  }
  return { request: steps(kept.request), reply: steps(kept.reply), ...(seenByServer ? { seenByServer } : {}) };
}

/** The temporary tables' name: this process's token, so gc can tell a live trace from a dead one. */
export const traceTableName = (token = processToken()) => `ctnet_trace_${token.replace(':', '_')}`;
// ctnetd's tables for other hosts' traces (engine/trace-remote.ts) add _rN: still ctnetd's token.
const TRACE_TABLE = /^ctnet_trace_(\d+)_([^_\s]+)(?:_r\d+)?$/;

/** Temporary trace tables whose process is gone (a trace killed before it cleaned up). */
export function deadTraceTables(tables: readonly { family: string; table: string }[]): { family: string; table: string }[] {
  const seen = new Set<string>();
  return tables.filter((t) => {
    const m = TRACE_TABLE.exec(t.table);
    const key = `${t.family} ${t.table}`;
    if (!m || seen.has(key) || isAlive(`${m[1]}:${m[2]}`)) return false;
    seen.add(key);
    return true;
  });
}

/**
 * The temporary table pair NAME (inet and bridge) that marks exactly one flow for tracing (M, from
 * matchLines) and the marker datagram; the tracing host and the host a cross-host flow goes to
 * (engine/trace-remote.ts) put the same in place.
 */
export function traceTableLines(name: string, m: { request: string; reply: string; replyNat: string }, marker: { port: number; token: string }): string[] {
  return [
    ...['inet', 'bridge'].flatMap((f) => [
      `add table ${f} ${name}`,
      `add chain ${f} ${name} pre { type filter hook prerouting priority -400; policy accept; }`,
      `add rule ${f} ${name} pre ${m.request} meta nftrace set 1`,
      `add rule ${f} ${name} pre ${m.reply} meta nftrace set 1`,
    ]),
    // The host's own packets (a probe from the host; its answers to host:PORT) start in its output path.
    `add chain inet ${name} out { type filter hook output priority -400; policy accept; }`,
    `add rule inet ${name} out ${m.request} meta nftrace set 1`,
    `add rule inet ${name} out ${m.reply} meta nftrace set 1`,
    `add rule inet ${name} out ip daddr 127.0.0.1 udp dport ${marker.port} @th,64,64 0x${marker.token} meta nftrace set 1`,
    // Answers a masquerade readdressed (hairpin, 127.0.0.1), known by conntrack's original source.
    `add chain inet ${name} pre_ct { type filter hook prerouting priority -150; policy accept; }`,
    `add rule inet ${name} pre_ct ${m.replyNat} meta nftrace set 1`,
    `add chain inet ${name} out_ct { type filter hook output priority -150; policy accept; }`,
    `add rule inet ${name} out_ct ${m.replyNat} meta nftrace set 1`,
  ];
}
export const traceTableDrop = (name: string) => [`delete table inet ${name}`, `delete table bridge ${name}`];

/** A marker for one monitor (kernel/backend.ts TraceMarker): a port below the probes', a token whose first digit is not 0. */
export function newMarker(): { port: number; token: string } {
  const token = randomBytes(8);
  token[0] = token[0]! | 0x10;
  return { port: 20000 + Math.floor(Math.random() * 20000), token: token.toString('hex') };
}

export function matchLines(family: 'ip' | 'ip6', src: string, dst: string, t: TraceTarget, sport: number): { request: string; reply: string; replyNat: string } {
  const l4 = t.proto === 'icmp'
    ? { request: `${family === 'ip' ? 'icmp' : 'icmpv6'} type echo-request`, reply: `${family === 'ip' ? 'icmp' : 'icmpv6'} type echo-reply` }
    : { request: `meta l4proto ${t.proto} th sport ${sport}`, reply: `meta l4proto ${t.proto} th dport ${sport}` };
  // The request by both addresses; the answer by where it goes back to (DNAT may change who sends it).
  // After conntrack (priority -200), an answer whose addresses NAT changed (a masqueraded hairpin,
  // 127.0.0.1 on the host) is still known by its flow's original source.
  const replyNat = t.proto === 'icmp'
    ? `ct direction reply ct original ${family} saddr ${src} ${l4.reply}`
    : `meta l4proto ${t.proto} ct direction reply ct original ${family} saddr ${src} ct original proto-src ${sport}`;
  return { request: `${family} saddr ${src} ${family} daddr ${dst} ${l4.request}`, reply: `${family} daddr ${src} ${l4.reply}`, replyNat };
}

/** Where a probe starts: a sandbox of this host, the host itself, or the world (a namespace outside). */
export interface Source {
  readonly kind: 'sandbox' | 'world' | 'host';
  readonly name: string;
  /** undefined: ctnet's own namespace (the host). */
  readonly ns: Netns | undefined;
  readonly netnsName?: string;
  readonly addrs: readonly { readonly family: 4 | 6; readonly ip: string; readonly network?: string }[];
}

export interface TraceOptions {
  /** Cross-host: how long to wait for the other host to be ready, and then for its half (ms). */
  readonly peerWaitMs?: number;
  readonly timeoutMs?: number;
  /** SRC world: the namespace the probe leaves from (its packets reach this host as the outside's do). */
  readonly fromNetns?: string;
  /**
   * The trace runs in a process of its own (the CLI): on SIGINT or SIGTERM it removes its table and
   * exits 130. Not in ctnetd (the page's trace form): its own stop must run, and gc removes a table
   * a stopped ctnetd left.
   */
  readonly exitOnSignal?: boolean;
}

const NETNS_NAME = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,254}$/;

/** SRC: `host` (ctnet's namespace), `world` (with --from-netns), or a sandbox of this host. */
async function resolveSource(ctx: Ctx, srcName: string, fromNetns: string | undefined): Promise<Source> {
  const { store, kernel } = ctx;
  if (fromNetns !== undefined && srcName !== 'world') {
    throw invalid(`--from-netns is for SRC world, not ${srcName}`, 'a sandbox and the host are probed from their own namespaces');
  }
  const global = async (ns: Netns | undefined) => (await kernel.addrs(ns)).flatMap((l) => (l.addr_info ?? [])
    .filter((a) => a.scope === 'global')
    .map((a) => ({ family: (a.family === 'inet6' ? 6 : 4) as 4 | 6, ip: a.local })));
  if (srcName === 'host') return { kind: 'host', name: 'host', ns: undefined, addrs: await global(undefined) };
  if (srcName === 'world') {
    if (fromNetns === undefined) {
      throw invalid('trace from world needs --from-netns NAME',
        'name a network namespace (ip netns list) whose packets reach this host the way the outside\'s do, e.g. one behind the uplink; ctnet cannot send a packet from the internet');
    }
    if (!NETNS_NAME.test(fromNetns)) throw invalid(`--from-netns ${JSON.stringify(fromNetns)} is not a namespace name`, 'a name from "ip netns list"');
    if (!kernel.isNetns(`/run/netns/${fromNetns}`)) throw new CtnetError('NOT_FOUND', `no network namespace named ${fromNetns}`, 'see "ip netns list"');
    const ns = { name: fromNetns };
    return { kind: 'world', name: 'world', ns, netnsName: fromNetns, addrs: await global(ns) };
  }
  const s = readySandbox(store, srcName);
  return { kind: 'sandbox', name: s.name, ns: sandboxNetns(s), addrs: store.addresses({ sandbox: s.name }) };
}

/** DST `host`: a sandbox's gateway; from the host, its loopback; from the world, a host address the world routes to. */
async function hostAddress(ctx: Ctx, src: Source): Promise<string> {
  const { store, kernel } = ctx;
  if (src.kind === 'host') return '127.0.0.1';
  if (src.kind === 'sandbox') {
    const gw = src.addrs.map((a) => a.network && store.subnets(a.network).find((x) => x.family === a.family)?.gateway).find(Boolean);
    if (!gw) throw new CtnetError('INVALID_ARGUMENT', `sandbox ${src.name} is on no network`, 'connect it first');
    return gw;
  }
  const mine = (await kernel.addrs()).flatMap((l) => (l.addr_info ?? []).filter((a) => a.scope === 'global').map((a) => a.local))
    .sort((a, b) => Number(a.includes(':')) - Number(b.includes(':')));
  for (const ip of mine) {
    const r = (await kernel.routeGet(src.ns, ip))[0];
    if (r && (r.type === undefined || r.type === 'unicast')) return ip;
  }
  throw new CtnetError('INVALID_ARGUMENT', `namespace ${src.netnsName} has no route to any of this host's addresses`, 'give the address to trace to, e.g. world 198.51.100.2:8080');
}

/** The sandbox and port behind ADDR:PORT when it is a published port of this host's (ADDR one of its addresses). */
async function publishedAt(ctx: Ctx, addr: string, proto: 'tcp' | 'udp', port: number): Promise<{ sandbox: string; port: number } | undefined> {
  const p = ctx.store.ports({ proto }).find((x) => x.hostPort <= port && port < x.hostPort + x.count && (isWildcard(x.hostIp) || x.hostIp === addr));
  if (!p) return undefined; // the store first: most traces need no read of the host's addresses
  const local = /^127\./.test(addr) || (await ctx.kernel.addrs()).some((l) => (l.addr_info ?? []).some((a) => a.local === addr));
  return local ? { sandbox: p.sandbox, port: p.containerPort + (port - p.hostPort) } : undefined;
}

/** What ctnet does with this flow by design, where the rules alone do not say it. */
function notes(ctx: Ctx, src: Source, dstAddr: string, target: TraceTarget, route: { type?: string | undefined; dev?: string | undefined }): string[] {
  const out: string[] = [];
  if (!route.dev && !route.type) out.push(`${src.kind === 'sandbox' ? `sandbox ${src.name}` : src.kind === 'world' ? `namespace ${src.netnsName}` : 'the host'} has no route to ${dstAddr}: the probe never left`);
  const port = target.port;
  if (src.kind === 'host' && dstAddr === '::1' && port !== undefined) {
    out.push('::1 is never DNATed to a sandbox (IPv6 has no route_localnet): published ports answer on 127.0.0.1 and the host\'s addresses; a port on ::1 is the host\'s own');
  }
  if (src.kind === 'host' && /^127\./.test(dstAddr) && port !== undefined && target.proto !== 'icmp') {
    const hit = (p: { proto: string; hostPort: number; count: number }) => p.proto === target.proto && p.hostPort <= port && port < p.hostPort + p.count;
    const published = ctx.store.ports().filter(hit);
    const here = published.find((p) => isWildcard(p.hostIp) || p.hostIp === dstAddr);
    if (here) {
      out.push(`${dstAddr}:${port}/${target.proto} is published by sandbox ${here.sandbox}, and reached at ${dstAddr} by design: ctnet's output chain DNATs it, route_localnet on the bridge lets a loopback-addressed packet leave the host, and postrouting masquerades the loopback source to the bridge's address (the sandbox sees the gateway as the client)`);
    } else if (published.length) {
      out.push(`${port}/${target.proto} is published on ${[...new Set(published.map((p) => p.hostIp))].join(', ')} only, not on ${dstAddr}: there the host itself answers (or refuses), no sandbox`);
    } else {
      out.push(`no sandbox publishes ${port}/${target.proto}: ${dstAddr} is the host's own loopback`);
    }
  }
  if (src.kind === 'host' && ctx.store.sandbox(target.dst)) {
    out.push('the host reaches its sandboxes directly (its packets do not cross the forward chain, so ctnet\'s policy does not judge them)');
  }
  return out;
}

/**
 * Runs one trace. SRC: a sandbox of this host, `host` (ctnet's namespace) or `world` (a probe from
 * options.fromNetns); DST: a sandbox (this host's or another's), an address, or host.
 */
export async function trace(ctx: Ctx, srcName: string, target: TraceTarget, options: TraceOptions = {}): Promise<TraceResult> {
  const { store, kernel, applier } = ctx;
  const t0 = performance.now();
  const at: Record<string, number> = {};
  const mark = (what: string) => { at[what] = Math.round(performance.now() - t0); };
  const src = await resolveSource(ctx, srcName, options.fromNetns);
  const srcAddrs = src.addrs;
  // The destination's address: a sandbox's on a network SRC shares, else its first (IPv4 first).
  let dstAddr: string;
  if (target.dst === 'host') {
    dstAddr = await hostAddress(ctx, src);
  } else if (store.sandbox(target.dst)) {
    const theirs = store.addresses({ sandbox: target.dst });
    const shared = theirs.find((a) => srcAddrs.some((x) => x.network !== undefined && x.network === a.network && x.family === a.family));
    const pick = shared ?? theirs.find((a) => a.family === 4) ?? theirs[0];
    if (!pick) throw new CtnetError('INVALID_ARGUMENT', `sandbox ${target.dst} has no address`, 'connect it to a network');
    dstAddr = pick.ip;
  } else {
    const remote = store.remoteSandboxes({ name: target.dst })[0];
    if (remote?.addresses[0]) dstAddr = remote.addresses[0];
    else {
      try {
        dstAddr = parseAddr('destination', target.dst) && target.dst;
      } catch {
        throw new CtnetError('NOT_FOUND', `${target.dst} is not a sandbox, an address or host`, 'list sandboxes with "ctnet ls --all"');
      }
    }
  }
  const family = dstAddr.includes(':') ? 'ip6' : 'ip';
  const sport = 40000 + Math.floor(Math.random() * 20000);
  const marker = newMarker();
  // nft monitor's start (a process, and its subscription to the trace group) overlaps the route
  // lookup and the trace table's nft run; the probe waits for all three.
  const monitorP = kernel.traceMonitor(marker);
  let stopped = false;
  let events: TraceEvent[] = [];
  let probe;
  const leftFor = peerOf(ctx, dstAddr);
  const peerWaitMs = options.peerWaitMs ?? PEER_WAIT_MS;
  let peerP: Promise<PeerTrace | RemoteReport> | undefined;
  let remoteP: Promise<RemoteReport> | undefined;
  let remote: RemoteReport | undefined;
  let route: { dev?: string; gateway?: string; prefsrc?: string; type?: string } = {};
  let srcAddr = '';
  const ask = (from: string) => askLeftFor(ctx, leftFor!, { from: '', network: leftFor!.network, src: from, dst: dstAddr, sport, proto: target.proto, port: target.port, timeoutMs: options.timeoutMs ?? 2000 }, peerWaitMs);
  // A sandbox on the overlay network leaves from its address there: the other host is asked at
  // once, while the route is looked up (its readiness is most of what a cross-host trace adds).
  const early = leftFor && src.kind === 'sandbox' ? src.addrs.find((a) => a.network === leftFor.network && (a.family === 6) === (family === 'ip6'))?.ip : undefined;
  if (early) peerP = ask(early);
  try {
    route = (await kernel.routeGet(src.ns, dstAddr))[0] ?? {};
    mark('route');
    const picked = route.prefsrc ?? srcAddrs.find((a) => (a.family === 6) === (family === 'ip6'))?.ip;
    if (!picked) throw new CtnetError('INVALID_ARGUMENT', `${src.kind === 'sandbox' ? `sandbox ${src.name}` : src.name} has no IPv${family === 'ip' ? 4 : 6} address to reach ${dstAddr} from`, 'trace to an address of the family it has');
    srcAddr = picked;
    // A flow to another host's sandbox: ask that host to trace its half (engine/trace-remote.ts),
    // while this host's monitor and table go in; the probe waits until it is ready or did not say.
    if (leftFor && srcAddr !== early) {
      // Asked for another source address than the route picked (or not yet): ask for this one.
      const old = peerP;
      peerP = ask(srcAddr);
      await old?.then((p) => ('cancel' in p ? p.cancel() : undefined));
    }
    const m = matchLines(family, srcAddr, dstAddr, target, sport);
    const name = traceTableName();
    const lines = traceTableLines(name, m, marker);
    const drop = traceTableDrop(name);
    let cleaning: Promise<void> | undefined;
    const cleanup = () => (cleaning ??= applier.teardown([step([{ kind: 'nft.delete', lines: drop }])]).then(() => undefined));
    const onSignal = () => { void Promise.all([cleanup(), peerP?.then((p) => ('cancel' in p ? p.cancel() : undefined))]).finally(() => process.exit(130)); };
    if (options.exitOnSignal) process.once('SIGINT', onSignal).once('SIGTERM', onSignal);
    let tableIn = false;
    try {
      await applier.apply([step([{ kind: 'nft', lines, undo: drop }], `trace: mark the flow ${srcAddr}:${sport} -> ${dstAddr}${target.port ? `:${target.port}` : ''}/${target.proto} for nftables' tracing`)]);
      tableIn = true;
      mark('table');
      await monitorP;
      mark('monitor');
      if (peerP) {
        const p = await peerP;
        if ('cancel' in p) await p.ready(peerWaitMs);
        mark('peer');
      }
      probe = await kernel.probe(src.ns, { proto: target.proto, dst: dstAddr, port: target.port ?? 0, sport, timeoutMs: options.timeoutMs ?? 2000 });
      mark('probe');
      // The other host drains its monitor while this one does.
      if (peerP) remoteP = peerP.then((p) => ('cancel' in p ? p.finish(peerWaitMs) : p));
    } finally {
      try {
        stopped = true;
        // The table goes while the monitor drains (the marker is out by then).
        events = (await (await monitorP).stop({ marker: tableIn, onMarked: () => void cleanup() })).flatMap((l) => parseTraceLine(l) ?? []);
        mark('drained');
      } finally {
        process.off('SIGINT', onSignal).off('SIGTERM', onSignal);
        await cleanup();
        mark('cleaned');
      }
    }
    if (remoteP) {
      remote = await remoteP;
      mark('remote');
    }
  } finally {
    if (!stopped) await monitorP.then((mon) => mon.stop(), () => undefined);
    if (!remoteP) await peerP?.then((p) => ('cancel' in p ? p.cancel() : undefined));
  }
  const { request, reply, seenByServer } = firstPackets(events, srcAddr, sport, target.proto, `0x${marker.token}`);
  // The other host sees an answer leave; whether it was a refusal (a reset, ICMP unreachable) the probe says.
  if (remote && !('error' in remote) && remote.outcome === 'answered' && probe?.refused) remote = { ...remote, outcome: 'refused' };
  const half = remote && !('error' in remote) ? remote : undefined;
  // A drop here, else the other host's (its half names the host, the rule and its policy).
  const droppedBy = [...request, ...reply].find((x) => x.verdict === 'drop') ?? (half?.droppedBy ? { ...half.droppedBy, host: half.host } : undefined);
  const nat = [...request, ...reply].filter((x) => x.nat).map((x) => `${x.table} ${x.chain}: ${x.rule}`);
  const outcome: TraceResult['outcome'] = probe?.ok && probe.answered ? 'answered' : probe?.refused ? 'refused' : droppedBy ? 'dropped' : 'no answer';
  // ctnet's policy, as policy check decides it (for what ctnet's rules decide: sandboxes and
  // addresses). The host's own packets cross no forward chain: policy does not judge them.
  let policy: TraceResult['policy'];
  if (src.kind !== 'host') {
    try {
      const from = src.kind === 'sandbox' ? src.name : srcAddr;
      // A published port: the forward chain judges the flow to the sandbox behind it, after DNAT.
      const pub = target.proto === 'icmp' || target.port === undefined ? undefined : await publishedAt(ctx, dstAddr, target.proto, target.port);
      const r = pub
        ? checkPolicy(ctx, from, pub.sandbox, `${pub.port}/${target.proto}`, { published: true })[0]
        : checkPolicy(ctx, from, target.dst === 'host' ? 'host' : store.sandbox(target.dst) ? target.dst : dstAddr, target.proto === 'icmp' ? 'icmp' : `${target.port}/${target.proto}`)[0];
      if (r) policy = { allowed: r.allowed, by: r.by };
    } catch {
      policy = undefined; // an address policy check does not know (another host's, say)
    }
  }
  const said = notes(ctx, src, dstAddr, target, route);
  if (leftFor && half) {
    said.push(`${dstAddr} is on host ${leftFor.host}: the packet left through ${leftFor.device} (network ${leftFor.network}) for ${leftFor.underlay}; ${leftFor.host} traced its half (the lines "on host ${leftFor.host}"; remote in --json)`);
  } else if (leftFor) {
    if (remote && 'error' in remote) said.push(`host ${leftFor.host} did not trace its half: ${remote.error}`);
    said.push(outcome === 'answered' || outcome === 'refused'
      ? `${dstAddr} is on host ${leftFor.host}: the packet left through ${leftFor.device} (network ${leftFor.network}) for ${leftFor.underlay}; ${leftFor.host}'s own tables passed it too (run ctnet trace there to see them)`
      : `${dstAddr} is on host ${leftFor.host}: ${request.length && !droppedBy ? `this host passed the packet to ${leftFor.device} (network ${leftFor.network}) for ${leftFor.underlay}, and no answer came back: ${leftFor.host}'s tables (its own policy) or the sandbox dropped it; run ctnet trace there` : `the packet was meant to leave through ${leftFor.device} (network ${leftFor.network}) for ${leftFor.underlay}`}`);
  }
  return {
    src: { sandbox: src.name, address: srcAddr, kind: src.kind, ...(src.netnsName ? { netns: src.netnsName } : {}) },
    dst: { name: target.dst, address: dstAddr, port: target.port, proto: target.proto },
    sport, route: { dev: route.dev, gateway: route.gateway, prefsrc: route.prefsrc, type: route.type },
    request, reply, nat, outcome, droppedBy, policy, probe: probe?.detail ?? '',
    ...(seenByServer ? { seenByServer } : {}),
    notes: said,
    ...(leftFor ? { leftFor } : {}),
    ...(remote ? { remote } : {}),
    timings: { route: at.route ?? 0, table: at.table ?? 0, monitor: at.monitor ?? 0, ...(at.peer !== undefined ? { peer: at.peer } : {}), ...(at.remote !== undefined ? { remote: at.remote } : {}), probe: at.probe ?? 0, drained: at.drained ?? 0, cleaned: at.cleaned ?? 0, end: Math.round(performance.now() - t0) },
  };
}
