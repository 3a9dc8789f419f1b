// The other half of a cross-host trace (issue 16): a flow from a sandbox here to one on another host
// of an overlay network is judged by both hosts' tables, and only the destination host can see its
// own. Hosts share nothing but etcd (ctnetd's HTTP API listens on loopback only), so the tracing
// host asks through etcd:
//
//   tracer                                          destination host's ctnetd (services/trace.ts)
//   lease grant (short TTL)
//   put /ctnet/traces/DST/ID  {the flow}   ───────► parse, check (a flow into its own lease of a network
//                                                   it is a member of, from the tracer's lease), monitor,
//                                                   its own trace table for exactly that flow
//                                          ◄─────── put ID/reply {"state":"ready"} (or "refused")
//   probe
//   put ID/done                            ───────► drain the monitor, table gone, its steps
//                                          ◄─────── put ID/reply {"state":"done", the host's half}
//   lease revoke (every key of the trace goes)
//
// Every key is bound to the tracer's lease, so a tracer that dies leaves nothing in etcd for long,
// and the asked host, seeing the request go, ends its monitor and removes its table at once. Its
// table is named after ctnetd's process token, so gc removes it if ctnetd itself dies mid-trace.
import { randomBytes } from 'node:crypto';
import type { EtcdClient, Watch } from '../cluster/etcd.ts';
import { traceKey } from '../cluster/keys.ts';
import { invalid } from '../errors.ts';
import { contains, formatAddr, parseAddr, parseSubnet } from '../model/cidr.ts';
import { parseName } from '../model/names.ts';
import { step } from '../plan/plan.ts';
import type { Store } from '../store/store.ts';
import type { Ctx } from './context.ts';
import { checkPolicy } from './policy.ts';
import { firstPackets, matchLines, newMarker, parseTraceLine, traceTableDrop, traceTableLines, traceTableName, type TraceStep } from './trace.ts';

/** What the tracing host asks of the destination host: one flow, and who asks. */
export interface TraceRequest {
  /** The tracing host (a member; the source address must be in its lease). */
  readonly from: string;
  readonly network: string;
  readonly src: string;
  readonly dst: string;
  readonly sport: number;
  readonly proto: 'tcp' | 'udp' | 'icmp';
  readonly port: number | undefined;
  /** How long the probe waits; the asked host gives up this long (plus a margin) after it is ready. */
  readonly timeoutMs: number;
}

/** The destination host's half: its chains and rules, what its policy decided, and what became of the packet there. */
export interface RemoteHalf {
  readonly host: string;
  /** The sandbox of that host that holds the destination address (none: its gateway, say). */
  readonly sandbox?: string | undefined;
  /**
   * answered: an answer left the sandbox; refused: that answer was a refusal (the tracer's probe
   * says which: nothing listens there, or a reject); delivered: the request passed every table and
   * no answer came; dropped: a rule dropped it (droppedBy); not seen: no packet of the flow reached it.
   */
  readonly outcome: 'answered' | 'refused' | 'delivered' | 'dropped' | 'not seen';
  readonly request: readonly TraceStep[];
  readonly reply: readonly TraceStep[];
  readonly droppedBy?: TraceStep | undefined;
  /** That host's policy for the flow, as its `ctnet policy check` names it. */
  readonly policy?: { readonly allowed: boolean; readonly by: string } | undefined;
  readonly seenByServer?: { readonly server: string; readonly client: string } | undefined;
}

export type TraceReply =
  | { readonly state: 'ready' }
  | { readonly state: 'refused'; readonly reason: string }
  | { readonly state: 'done'; readonly half: RemoteHalf };

/** What trace reports of the other host: its half, or why there is none (the trace itself does not fail). */
export type RemoteReport = RemoteHalf | { readonly host: string; readonly error: string };

export const TRACE_TIMEOUT_MAX_MS = 30_000;

type Json = Record<string, unknown>;

function object(what: string, text: string): Json {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch {
    throw invalid(`${what} is not JSON`);
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw invalid(`${what} is not a JSON object`);
  return v as Json;
}

const ADDR = (field: string, v: unknown): string => {
  if (typeof v !== 'string') throw invalid(`trace request: "${field}" is not a string`);
  const a = parseAddr(`trace request "${field}"`, v);
  return formatAddr(a.family, a.n);
};
const INT = (field: string, v: unknown, min: number, max: number): number => {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) throw invalid(`trace request: "${field}" is not an integer in ${min}..${max}`);
  return v;
};
const KEYS = new Set(['from', 'network', 'src', 'dst', 'sport', 'proto', 'port', 'timeoutMs']);

export const encodeTraceRequest = (r: TraceRequest) => JSON.stringify({
  from: r.from, network: r.network, src: r.src, dst: r.dst, sport: r.sport, proto: r.proto, ...(r.port === undefined ? {} : { port: r.port }), timeoutMs: r.timeoutMs,
});

/** A request's value, parsed: every field checked, unknown ones refused (errors name the field). */
export function parseTraceRequest(text: string): TraceRequest {
  const o = object('trace request', text);
  for (const k of Object.keys(o)) if (!KEYS.has(k)) throw invalid(`trace request: unknown field "${k}"`);
  const proto = o.proto;
  if (proto !== 'tcp' && proto !== 'udp' && proto !== 'icmp') throw invalid('trace request: "proto" is not tcp, udp or icmp');
  const port = o.port === undefined ? undefined : INT('port', o.port, 1, 65535);
  if (proto === 'icmp' && port !== undefined) throw invalid('trace request: "port" given for icmp');
  if (proto !== 'icmp' && port === undefined) throw invalid(`trace request: "port" missing for ${proto}`);
  const src = ADDR('src', o.src);
  const dst = ADDR('dst', o.dst);
  if (src.includes(':') !== dst.includes(':')) throw invalid('trace request: "src" and "dst" are of different families');
  if (typeof o.from !== 'string') throw invalid('trace request: "from" is not a string');
  if (typeof o.network !== 'string') throw invalid('trace request: "network" is not a string');
  return {
    from: parseName('trace request "from"', o.from), network: parseName('trace request "network"', o.network), src, dst,
    sport: INT('sport', o.sport, 1024, 65535), proto, port, timeoutMs: INT('timeoutMs', o.timeoutMs, 1, TRACE_TIMEOUT_MAX_MS),
  };
}

/**
 * Whether this host (SELF) traces the flow: only one from the asking host's overlay lease into this
 * host's own lease of the same network, a network this host is a member of. Anything else (another
 * network, an address of the host's own, a flow to a third host, this host asking itself) is
 * refused: a request in etcd must not make a host watch traffic that is not a cross-host flow to it.
 * Returns the sandbox that holds the destination address, if one does.
 */
export function checkTraceRequest(store: Store, self: string, r: TraceRequest): { sandbox: string | undefined } {
  if (r.from === self) throw invalid(`trace request from ${self} to itself`, 'a host traces its own flows itself');
  const net = store.network(r.network);
  if (!net || !store.overlay(r.network)) throw invalid(`trace request: network ${r.network} is not an overlay network of host ${self}`);
  const family = r.dst.includes(':') ? 6 : 4;
  const d = parseAddr('dst', r.dst);
  const s = parseAddr('src', r.src);
  const mine = store.subnets(r.network).find((x) => x.family === family && contains(parseSubnet('subnet', x.cidr), d.family, d.n));
  if (!mine) throw invalid(`trace request: ${r.dst} is not in host ${self}'s subnet of network ${r.network}`);
  const theirs = store.peers(r.network).find((p) => p.host === r.from && contains(parseSubnet('subnet', p.subnet), s.family, s.n));
  if (!theirs) throw invalid(`trace request: ${r.src} is not in host ${r.from}'s subnet of network ${r.network} (as this host knows its peers)`);
  const holder = store.addresses({ network: r.network }).find((a) => a.ip === r.dst);
  return { sandbox: holder?.sandbox };
}

function steps(what: string, v: unknown): TraceStep[] {
  if (!Array.isArray(v)) throw invalid(`${what} is not a list`);
  return v.map((x: unknown, i) => {
    const o = x as Json;
    if (typeof o !== 'object' || o === null || ['table', 'chain', 'rule', 'verdict'].some((k) => typeof o[k] !== 'string')) throw invalid(`${what}[${i}] is not a step`);
    const owner = o.owner === 'ctnet' || o.owner === 'ctnetd' ? o.owner : 'foreign';
    return { table: o.table as string, chain: o.chain as string, rule: o.rule as string, verdict: o.verdict as string, owner, ...(o.nat === true ? { nat: true } : {}) };
  });
}

/** The asked host's answer, parsed (what another host wrote is input like any other). */
export function parseTraceReply(text: string, host: string): TraceReply {
  const o = object(`host ${host}'s trace reply`, text);
  if (o.state === 'ready') return { state: 'ready' };
  if (o.state === 'refused') return { state: 'refused', reason: typeof o.reason === 'string' ? o.reason : '(no reason given)' };
  if (o.state !== 'done') throw invalid(`host ${host}'s trace reply: "state" is not ready, refused or done`);
  const h = o.half as Json;
  if (typeof h !== 'object' || h === null) throw invalid(`host ${host}'s trace reply: "half" is not an object`);
  const outcome = h.outcome;
  if (outcome !== 'answered' && outcome !== 'refused' && outcome !== 'delivered' && outcome !== 'dropped' && outcome !== 'not seen') throw invalid(`host ${host}'s trace reply: "outcome" is not known`);
  const request = steps('"request"', h.request);
  const reply = steps('"reply"', h.reply);
  const droppedBy = h.droppedBy === undefined ? undefined : steps('"droppedBy"', [h.droppedBy])[0];
  const p = h.policy as Json | undefined;
  const policy = p && typeof p.allowed === 'boolean' && typeof p.by === 'string' ? { allowed: p.allowed, by: p.by } : undefined;
  const sb = h.seenByServer as Json | undefined;
  const seenByServer = sb && typeof sb.server === 'string' && typeof sb.client === 'string' ? { server: sb.server, client: sb.client } : undefined;
  return { state: 'done', half: {
    host, ...(typeof h.sandbox === 'string' ? { sandbox: h.sandbox } : {}), outcome, request, reply,
    ...(droppedBy ? { droppedBy } : {}), ...(policy ? { policy } : {}), ...(seenByServer ? { seenByServer } : {}),
  } };
}

/** The destination host's outcome from its steps: a drop, an answer, a pass, or nothing seen. */
export function remoteOutcome(request: readonly TraceStep[], reply: readonly TraceStep[]): { outcome: RemoteHalf['outcome']; droppedBy: TraceStep | undefined } {
  const droppedBy = [...request, ...reply].find((x) => x.verdict === 'drop');
  return { outcome: droppedBy ? 'dropped' : reply.length ? 'answered' : request.length ? 'delivered' : 'not seen', droppedBy };
}

/** A request in etcd, from the tracing host's side. */
export interface PeerTrace {
  /** Resolves when the asked host is ready (its monitor and table in), refused, or did not say within ms. */
  ready(ms: number): Promise<TraceReply | undefined>;
  /** Says the probe is done, waits (at most ms) for the asked host's half, and removes every key of the trace. */
  finish(ms: number): Promise<RemoteReport>;
  /** Removes every key of the trace (the lease), without waiting for anything. */
  cancel(): Promise<void>;
}

/**
 * Asks HOST, through etcd, to trace the flow REQ on its side. The keys are bound to a lease of their
 * own (TTL: the probe's timeout plus the waits, so the asked host's table cannot outlive a tracer
 * that died by more than that).
 */
export async function askPeer(etcd: EtcdClient, host: string, req: TraceRequest, waitMs: number): Promise<PeerTrace> {
  const ttl = Math.ceil((req.timeoutMs + 2 * waitMs) / 1000) + 5;
  const lease = await etcd.leaseGrant(ttl);
  const id = randomBytes(8).toString('hex');
  const replyKey = traceKey(host, id, 'reply');
  let latest: TraceReply | undefined;
  let bad: string | undefined;
  let wake: (() => void) | undefined;
  const take = (value: string) => {
    try {
      latest = parseTraceReply(value, host);
    } catch (e) {
      bad = (e as Error).message;
    }
    wake?.();
  };
  let watch: Watch | undefined;
  try {
    const rev = await etcd.put(traceKey(host, id), encodeTraceRequest(req), { lease: lease.id });
    watch = etcd.watch(replyKey, { startRevision: String(BigInt(rev) + 1n) }, (evs) => {
      for (const ev of evs) if (ev.type === 'put') take(ev.kv.value);
    });
  } catch (e) {
    await etcd.leaseRevoke(lease.id).catch(() => undefined);
    throw e;
  }
  /** Waits until the reply satisfies pred or ms pass; then reads the key once (a watch that broke says nothing). */
  const until = async (pred: (r: TraceReply) => boolean, ms: number): Promise<TraceReply | undefined> => {
    const end = performance.now() + ms;
    while (!(latest && pred(latest)) && !bad && performance.now() < end) {
      await new Promise<void>((r) => {
        const t = setTimeout(r, Math.max(1, end - performance.now()));
        wake = () => { clearTimeout(t); r(); };
      });
      wake = undefined;
    }
    if (!(latest && pred(latest)) && !bad) {
      const kv = await etcd.get(replyKey).catch(() => undefined);
      if (kv) take(kv.value);
    }
    return latest && pred(latest) ? latest : undefined;
  };
  let cancelled: Promise<void> | undefined;
  const cancel = () => (cancelled ??= (async () => {
    watch?.stop();
    await etcd.leaseRevoke(lease.id).catch(() => undefined); // its TTL ends it anyway
  })());
  return {
    async ready(ms) {
      return until(() => true, ms); // ready or refused: either ends the wait
    },
    async finish(ms) {
      try {
        if (latest?.state === 'refused') return { host, error: `refused: ${latest.reason}` };
        if (bad) return { host, error: bad };
        await etcd.put(traceKey(host, id, 'done'), '{}', { lease: lease.id });
        const r = await until((x) => x.state !== 'ready', ms);
        if (bad) return { host, error: bad };
        if (!r) return { host, error: latest?.state === 'ready' ? `its half did not come within ${ms} ms` : `no answer within ${ms} ms (is its ctnetd running, and a member?)` };
        return r.state === 'refused' ? { host, error: `refused: ${r.reason}` } : r.state === 'done' ? r.half : { host, error: 'no half' };
      } catch (e) {
        return { host, error: (e as Error).message };
      } finally {
        await cancel();
      }
    },
    cancel,
  };
}

let served = 0;

/**
 * The asked host's side of one request (already checked): its monitor and its own trace table for
 * exactly that flow (through the applier, named after this process so gc knows it), ready() once
 * both are in, then, when `until` settles (the tracer's done, the request gone, or the deadline),
 * the monitor drained and the table removed. RUN gives an engine context in ctnetd's request queue.
 */
export async function servePeerTrace(
  run: <T>(fn: (ctx: Ctx) => Promise<T>) => Promise<T>, self: string, req: TraceRequest, sandbox: string | undefined,
  signals: { readonly ready: () => Promise<void>; readonly until: Promise<unknown> },
): Promise<RemoteHalf> {
  const ctx = await run(async (c) => c);
  const marker = newMarker();
  const monitorP = ctx.kernel.traceMonitor(marker);
  const name = `${traceTableName()}_r${++served}`;
  const family = req.dst.includes(':') ? 'ip6' : 'ip';
  const target = { dst: req.dst, port: req.port, proto: req.proto };
  const drop = traceTableDrop(name);
  let cleaning: Promise<void> | undefined;
  const cleanup = () => (cleaning ??= run((c) => c.applier.teardown([step([{ kind: 'nft.delete', lines: drop }])])).then(() => undefined));
  let lines: string[] = [];
  let stopped = false;
  try {
    await run((c) => c.applier.apply([step([{ kind: 'nft', lines: traceTableLines(name, matchLines(family, req.src, req.dst, target, req.sport), marker), undo: drop }],
      `trace for host ${req.from}: mark the flow ${req.src}:${req.sport} -> ${req.dst}${req.port ? `:${req.port}` : ''}/${req.proto} for nftables' tracing`)]));
    const mon = await monitorP;
    await signals.ready();
    await signals.until;
    stopped = true;
    lines = await mon.stop({ marker: true, onMarked: () => void cleanup() });
  } finally {
    if (!stopped) await monitorP.then((m) => m.stop(), () => undefined);
    await cleanup();
  }
  const events = lines.flatMap((l) => parseTraceLine(l) ?? []);
  const { request, reply, seenByServer } = firstPackets(events, req.src, req.sport, req.proto, `0x${marker.token}`);
  const { outcome, droppedBy } = remoteOutcome(request, reply);
  // This host's policy for the flow, named as `policy check` here names it: from the tracer's
  // sandbox by name when the directory knows it, else by address.
  let policy: RemoteHalf['policy'];
  await run(async (c) => {
    const from = c.store.remoteSandboxes().find((s) => s.host === req.from && s.addresses.includes(req.src))?.name ?? req.src;
    try {
      const r = checkPolicy(c, from, sandbox ?? req.dst, req.proto === 'icmp' ? 'icmp' : `${req.port}/${req.proto}`)[0];
      if (r) policy = { allowed: r.allowed, by: r.by };
    } catch {
      policy = undefined; // policy check cannot judge it (the gateway, say)
    }
  });
  return { host: self, ...(sandbox ? { sandbox } : {}), outcome, request, reply, ...(droppedBy ? { droppedBy } : {}), ...(policy ? { policy } : {}), ...(seenByServer ? { seenByServer } : {}) };
}
