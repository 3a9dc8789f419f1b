// ctnetd's side of a cross-host trace (engine/trace-remote.ts has the protocol): while this host is
// a member of a cluster, follow the trace requests other hosts put under /ctnet/traces/SELF/, and
// for each one that names a flow into this host's lease of an overlay network it is a member of,
// trace that flow here and write this host's half back under the request's key. A request that
// does not parse or names anything else is refused (a reply saying why), never traced.
//
// A request's keys are bound to the tracer's etcd lease: when the request goes (the tracer finished,
// died, or its lease ran out), its trace here ends and its table goes with it.
import type { EtcdClient, Kv } from '../cluster/etcd.ts';
import { parseKey, traceKey, tracePrefix } from '../cluster/keys.ts';
import { checkTraceRequest, parseTraceRequest, servePeerTrace, type TraceReply } from '../engine/trace-remote.ts';
import { followCluster } from './cluster-follow.ts';
import type { Service, ServiceContext } from './service.ts';

/** At most this many other hosts' traces at once (each is a monitor process and a table). */
const MAX_SESSIONS = 4;
/** After it is ready, a trace here waits for the tracer's done at most its probe's timeout plus this. */
const GRACE_MS = 10_000;

interface Session {
  /** Settles the wait: the tracer's done, the request deleted, or the service stopping. */
  readonly end: () => void;
}

export function traceResponder(): Service {
  let ctx: ServiceContext | undefined;
  const sessions = new Map<string, Session>();
  /** Request ids seen (handled or refused), so a listing again does not start them twice. */
  const seen = new Set<string>();
  const log = (m: string) => ctx?.log(m);

  const reply = async (etcd: EtcdClient, self: string, id: string, lease: string, r: TraceReply) => {
    // Under the request's lease: the reply goes when the request does.
    await etcd.put(traceKey(self, id, 'reply'), JSON.stringify(r), lease === '0' ? {} : { lease });
  };

  async function handle(etcd: EtcdClient, self: string, id: string, kv: Kv): Promise<void> {
    const c = ctx!;
    let req;
    let sandbox: string | undefined;
    try {
      req = parseTraceRequest(kv.value);
      const checked = await c.exclusive(async (e) => checkTraceRequest(e.store, self, req!));
      sandbox = checked.sandbox;
      if (sessions.size >= MAX_SESSIONS) throw new Error(`host ${self} is already tracing ${sessions.size} flows for other hosts; try again`);
    } catch (e) {
      log(`refused trace request ${id}: ${(e as Error).message}`);
      await reply(etcd, self, id, kv.lease, { state: 'refused', reason: (e as Error).message }).catch(() => undefined);
      return;
    }
    let end!: () => void;
    const ended = new Promise<void>((r) => { end = r; });
    sessions.set(id, { end });
    const deadline = setTimeout(end, req.timeoutMs + GRACE_MS);
    try {
      const half = await servePeerTrace(c.exclusive, self, req, sandbox, {
        ready: () => reply(etcd, self, id, kv.lease, { state: 'ready' }),
        until: ended,
      });
      await reply(etcd, self, id, kv.lease, { state: 'done', half });
      log(`traced ${req.src}:${req.sport} -> ${req.dst}${req.port ? `:${req.port}` : ''}/${req.proto} for host ${req.from}: ${half.outcome}`);
    } catch (e) {
      log(`trace request ${id} from ${req.from} failed: ${(e as Error).message}`);
      await reply(etcd, self, id, kv.lease, { state: 'refused', reason: `it failed on host ${self}: ${(e as Error).message}` }).catch(() => undefined);
    } finally {
      clearTimeout(deadline);
      sessions.delete(id);
    }
  }

  function onKv(etcd: EtcdClient, self: string, kv: Kv, type: 'put' | 'delete'): void {
    const k = parseKey(kv.key);
    if (k?.kind !== 'trace' || k.host !== self) return;
    if (k.part === 'request' && type === 'put' && !seen.has(k.id)) {
      seen.add(k.id);
      void handle(etcd, self, k.id, kv).catch((e: Error) => log(`trace request ${k.id}: ${e.message}`));
    } else if ((k.part === 'done' && type === 'put') || (k.part === 'request' && type === 'delete')) {
      sessions.get(k.id)?.end();
      if (k.part === 'request') seen.delete(k.id);
    }
  }

  const cluster = followCluster({
    ctx: () => ctx,
    prefix: tracePrefix,
    reset() {
      for (const s of sessions.values()) s.end();
    },
    handlers: ({ self, etcd }) => ({
      snapshot(kvs) {
        const ids = new Set<string>();
        for (const kv of kvs) {
          const k = parseKey(kv.key);
          if (k?.kind === 'trace') ids.add(k.id);
        }
        // A request gone while the watch was broken: its trace here ends.
        for (const [id, s] of sessions) if (!ids.has(id)) s.end();
        // Only requests nobody answered yet: one with a reply was ours before a restart of the watch.
        const replied = new Set(kvs.flatMap((kv) => { const k = parseKey(kv.key); return k?.kind === 'trace' && k.part === 'reply' ? [k.id] : []; }));
        for (const kv of kvs) {
          const k = parseKey(kv.key);
          if (k?.kind === 'trace' && k.part === 'request' && !replied.has(k.id)) onKv(etcd, self, kv, 'put');
          else if (k?.kind === 'trace' && k.part === 'done') onKv(etcd, self, kv, 'put');
        }
      },
      events(evs) {
        for (const ev of evs) onKv(etcd, self, ev.kv, ev.type);
      },
      broken(reason, retryMs) {
        log(`the watch on trace requests broke (${reason}); listing again in ${retryMs} ms`);
      },
    }),
  });
  const membership = () => cluster.membership();

  return {
    name: 'trace',
    start(c) {
      ctx = c;
      void membership().catch((e: Error) => log(`cannot follow trace requests: ${e.message}`));
    },
    changes(events) {
      if (events.some((e) => e.kind === 'member')) void membership().catch((e: Error) => log(`cannot follow trace requests: ${e.message}`));
    },
    resync() {
      void membership().catch((e: Error) => log(`cannot follow trace requests: ${e.message}`));
    },
    async stop() {
      for (const s of sessions.values()) s.end();
      await cluster.stop();
    },
  };
}
