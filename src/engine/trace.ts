// `ctnet trace SRC DST[:PORT][/tcp|/udp|/icmp]`: why can (or can't) SRC reach DST? A real probe, one
// new flow with a source port of its own, sent from SRC's namespace while nftables traces exactly
// that flow (`meta nftrace set 1` in a temporary table of ours, read with `nft monitor trace`).
// The answer: the route SRC takes, every chain and rule of every table that saw the packet (ctnet's,
// ctnetd's, and anyone else's: a foreign drop is the cause users cannot find), the NAT it got, and
// the outcome; where ctnet's policy decided, the rule (or default) by name, as `policy check` says.
// The temporary tables carry this process's token in their name, so gc removes them after a crash.
import { CtnetError, invalid } from '../errors.ts';
import { isAlive, processToken } from '../kernel/proc.ts';
import { parseAddr } from '../model/cidr.ts';
import { step } from '../plan/plan.ts';
import type { Ctx } from './context.ts';
import { checkPolicy } from './policy.ts';
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
}

export interface TraceResult {
  readonly src: { readonly sandbox: string; readonly address: string };
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
}

const ownerOf = (table: string): TraceStep['owner'] => (table === 'ctnet' ? 'ctnet' : table === 'ctnetd' ? 'ctnetd' : 'foreign');

function steps(events: readonly TraceEvent[]): TraceStep[] {
  return events.filter((e) => e.kind !== 'packet' && e.verdict !== undefined && !e.table.startsWith('ctnet_trace_')).map((e) => ({
    table: `${e.family} ${e.table}`,
    chain: e.chain,
    rule: e.kind === 'rule' ? (/comment "([^"]*)"/.exec(e.text)?.[1] ?? e.text) : '(chain policy)',
    verdict: e.verdict!,
    owner: ownerOf(e.table),
    ...(e.kind === 'rule' && /\b(dnat|snat|masquerade)\b/.test(e.text) && e.verdict === 'accept' ? { nat: true } : {}),
  }));
}

/**
 * The first request packet's way and the first answer's. A packet's trace id changes on the way
 * (the routed part gets a new one), so events are told apart by their headers: the request comes
 * from SRC's address and source port, the answer goes back to them. A second packet of a direction
 * (a retransmission) starts at that direction's first chain again; it is left out.
 */
export function firstPackets(events: readonly TraceEvent[], src: string, sport: number, proto: TraceTarget['proto']): { request: TraceStep[]; reply: TraceStep[] } {
  const esc = src.replace(/[.:]/g, (c) => `\\${c}`);
  const isRequest = proto === 'icmp'
    ? (t: string) => new RegExp(`saddr ${esc} `).test(t) && /echo-request/.test(t)
    : (t: string) => new RegExp(`saddr ${esc} `).test(t) && new RegExp(`${proto} sport ${sport} `).test(t);
  const isReply = proto === 'icmp'
    ? (t: string) => new RegExp(`daddr ${esc} `).test(t) && /echo-reply/.test(t)
    : (t: string) => new RegExp(`daddr ${esc} `).test(t) && new RegExp(`${proto} dport ${sport} `).test(t);
  const dirOf = new Map<string, 'request' | 'reply'>();
  const entry: Record<'request' | 'reply', string | undefined> = { request: undefined, reply: undefined };
  const done: Record<'request' | 'reply', boolean> = { request: false, reply: false };
  const kept: Record<'request' | 'reply', TraceEvent[]> = { request: [], reply: [] };
  for (const e of events) {
    if (e.kind === 'packet') {
      const dir = isRequest(e.text + ' ') ? 'request' : isReply(e.text + ' ') ? 'reply' : undefined;
      if (!dir) continue;
      const where = `${e.family} ${e.table} ${e.chain}`;
      if (entry[dir] === undefined) entry[dir] = where;
      else if (entry[dir] === where && kept[dir].length > 0 && !dirOf.has(e.id)) done[dir] = true; // the next packet
      dirOf.set(e.id, dir);
      continue;
    }
    const dir = dirOf.get(e.id);
    if (dir && !done[dir]) kept[dir].push(e);
  }
  return { request: steps(kept.request), reply: steps(kept.reply) };
}

/** The temporary tables' name: this process's token, so gc can tell a live trace from a dead one. */
export const traceTableName = (token = processToken()) => `ctnet_trace_${token.replace(':', '_')}`;
const TRACE_TABLE = /^ctnet_trace_(\d+)_(\S+)$/;

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

function matchLines(family: 'ip' | 'ip6', src: string, dst: string, t: TraceTarget, sport: number): { request: string; reply: string } {
  const l4 = t.proto === 'icmp'
    ? { request: `${family === 'ip' ? 'icmp' : 'icmpv6'} type echo-request`, reply: `${family === 'ip' ? 'icmp' : 'icmpv6'} type echo-reply` }
    : { request: `meta l4proto ${t.proto} th sport ${sport}`, reply: `meta l4proto ${t.proto} th dport ${sport}` };
  // The request by both addresses; the answer by where it goes back to (DNAT may change who sends it).
  return { request: `${family} saddr ${src} ${family} daddr ${dst} ${l4.request}`, reply: `${family} daddr ${src} ${l4.reply}` };
}

/** Runs one trace. SRC: a sandbox of this host; DST: a sandbox (this host's or another's), an address, or host. */
export async function trace(ctx: Ctx, srcName: string, target: TraceTarget, options: { timeoutMs?: number } = {}): Promise<TraceResult> {
  const { store, kernel, applier } = ctx;
  const s = readySandbox(store, srcName);
  const ns = sandboxNetns(s);
  const srcAddrs = store.addresses({ sandbox: s.name });
  // The destination's address: a sandbox's on a network SRC shares, else its first (IPv4 first).
  let dstAddr: string;
  if (target.dst === 'host') {
    const gw = srcAddrs.map((a) => store.subnets(a.network).find((x) => x.family === a.family)?.gateway).find(Boolean);
    if (!gw) throw new CtnetError('INVALID_ARGUMENT', `sandbox ${s.name} is on no network`, 'connect it first');
    dstAddr = gw;
  } else if (store.sandbox(target.dst)) {
    const theirs = store.addresses({ sandbox: target.dst });
    const shared = theirs.find((a) => srcAddrs.some((x) => x.network === a.network && x.family === a.family));
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
  const route: { dev?: string; gateway?: string; prefsrc?: string; type?: string } = (await kernel.routeGet(ns, dstAddr))[0] ?? {};
  const srcAddr = route.prefsrc ?? srcAddrs.find((a) => (a.family === 6) === (family === 'ip6'))?.ip;
  if (!srcAddr) throw new CtnetError('INVALID_ARGUMENT', `sandbox ${s.name} has no IPv${family === 'ip' ? 4 : 6} address to reach ${dstAddr} from`, 'trace to an address of the family it has');
  const sport = 40000 + Math.floor(Math.random() * 20000);
  const m = matchLines(family, srcAddr, dstAddr, target, sport);
  const name = traceTableName();
  const lines = [
    ...['inet', 'bridge'].flatMap((f) => [
      `add table ${f} ${name}`,
      `add chain ${f} ${name} pre { type filter hook prerouting priority -400; policy accept; }`,
      `add rule ${f} ${name} pre ${m.request} meta nftrace set 1`,
      `add rule ${f} ${name} pre ${m.reply} meta nftrace set 1`,
    ]),
    // The host's own answers (a probe to host:PORT) start in its output path.
    `add chain inet ${name} out { type filter hook output priority -400; policy accept; }`,
    `add rule inet ${name} out ${m.reply} meta nftrace set 1`,
  ];
  const drop = [`delete table inet ${name}`, `delete table bridge ${name}`];
  const cleanup = async () => { await applier.teardown([step([{ kind: 'nft.delete', lines: drop }])]); };
  const onSignal = () => { void cleanup().finally(() => process.exit(130)); };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  let events: TraceEvent[] = [];
  let probe;
  try {
    const monitor = await kernel.traceMonitor(); // first: it subscribes while the table goes in
    try {
      await applier.apply([step([{ kind: 'nft', lines, undo: drop }], `trace: mark the flow ${srcAddr}:${sport} -> ${dstAddr}${target.port ? `:${target.port}` : ''}/${target.proto} for nftables' tracing`)]);
      probe = await kernel.probe(ns, { proto: target.proto, dst: dstAddr, port: target.port ?? 0, sport, timeoutMs: options.timeoutMs ?? 2000 });
    } finally {
      events = (await monitor.stop()).flatMap((l) => parseTraceLine(l) ?? []);
    }
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    await cleanup();
  }
  const { request, reply } = firstPackets(events, srcAddr, sport, target.proto);
  const droppedBy = [...request, ...reply].find((x) => x.verdict === 'drop');
  const nat = [...request, ...reply].filter((x) => x.nat).map((x) => `${x.table} ${x.chain}: ${x.rule}`);
  const outcome: TraceResult['outcome'] = probe?.ok && probe.answered ? 'answered' : probe?.refused ? 'refused' : droppedBy ? 'dropped' : 'no answer';
  // ctnet's policy, as policy check decides it (for what ctnet's rules decide: sandboxes and addresses).
  let policy: TraceResult['policy'];
  try {
    const port = target.proto === 'icmp' ? 'icmp' : `${target.port}/${target.proto}`;
    const r = checkPolicy(ctx, s.name, target.dst === 'host' ? 'host' : store.sandbox(target.dst) ? target.dst : dstAddr, port)[0];
    if (r) policy = { allowed: r.allowed, by: r.by };
  } catch {
    policy = undefined; // an address policy check does not know (another host's, say)
  }
  return {
    src: { sandbox: s.name, address: srcAddr },
    dst: { name: target.dst, address: dstAddr, port: target.port, proto: target.proto },
    sport, route: { dev: route.dev, gateway: route.gateway, prefsrc: route.prefsrc, type: route.type },
    request, reply, nat, outcome, droppedBy, policy, probe: probe?.detail ?? '',
  };
}
