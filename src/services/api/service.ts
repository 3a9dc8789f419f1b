// ctnetd's web service: the live page and its API (`ctnet ui`, docs/ui.md). It listens where
// STATE_DIR/ui.json says (read at start and on SIGHUP, which `ctnet ui` sends), and nowhere until
// `ctnet ui` has asked. The graph is built whole once (the first page's request) and then kept up
// to date from the change feed while a page listens: each batch of changes rebuilds only the
// sandboxes it touches (updateGraph) and goes out as one "changed" server-sent event carrying the
// difference (graphDelta), which the page patches into its picture; a change costs what it
// changes, not a new graph of 500 sandboxes. With no page listening the graph is dropped, and
// built whole again when one asks. The graph only reads, from its own connection to the store
// (WAL: it sees committed changes only), so it does not wait in ctnetd's request queue behind a
// command that holds it after its commit (an update in the queue took 22 s at 300 sandboxes);
// batches that arrive while an update runs are applied together by the next. The trace and the
// counters run in the request queue (ServiceContext.exclusive), one at a time with CNI requests.
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import type { Server } from 'node:http';
import { http } from '../../http.ts';
import { join } from 'node:path';
import { readCounters } from '../../engine/counters.ts';
import { explainObject, parseObjectRef } from '../../engine/explain.ts';
import { createCtx, type Ctx } from '../../engine/context.ts';
import { buildGraph, graphDelta, touchedSandboxes, updateGraph, type Graph } from '../../engine/graph.ts';
import type { ChangeEvent } from '../../store/events.ts';
import { Store } from '../../store/store.ts';
import { parseTraceTarget, trace } from '../../engine/trace.ts';
import { parseName } from '../../model/names.ts';
import { ROOT } from '../../root.ts';
import type { Service, ServiceContext } from '../service.ts';
import { formatListen, parseListen, readUiConfig, writeUiState, type UiConfig } from './config.ts';
import { handle, type ApiDeps, type ApiServerInfo } from './http.ts';

export const PAGE_PATH = join(ROOT, 'src', 'services', 'web', 'page.html');

export function webService(): Service {
  let sctx: ServiceContext | undefined;
  let server: Server | undefined;
  let info: ApiServerInfo | undefined;
  let current: Pick<UiConfig, 'listen' | 'tokenHash'> | undefined;
  let page: string | undefined;
  // The graph as of the change feed's cursor `at`. Builds and updates run one after another on
  // `work`, in the order the feed delivered the changes, so a delta always starts from the graph
  // the previous one ended with.
  let kept: { graph: Graph; at: number } | undefined;
  let pending: ChangeEvent[] = [];
  let reader: { store: Store; ctx: Ctx } | undefined;
  /** The graph's reads: a store connection of its own, opened on first use. */
  const read = <T>(fn: (ctx: Ctx) => Promise<T>): Promise<T> => {
    if (!reader) {
      const store = new Store(sctx!.stateDir);
      reader = { store, ctx: createCtx({ store, warn: (m) => sctx!.log(m) }) };
    }
    return fn(reader.ctx);
  };
  let work: Promise<unknown> = Promise.resolve();
  let cursor = 0;
  const subscribers = new Set<(event: string, data: unknown) => void>();

  const broadcast = (data: unknown) => {
    for (const send of subscribers) send('changed', data);
  };
  const serially = <T>(fn: () => Promise<T>): Promise<T> => {
    const p = work.then(fn);
    work = p.catch(() => {});
    return p;
  };

  const deps: ApiDeps = {
    graph() {
      return serially(async () => {
        if (!kept) {
          // Changes delivered while it builds are applied after it (serially): the build may
          // already show some of them, and applying them again rebuilds the same nodes.
          const at = cursor;
          kept = { graph: await read((ctx) => buildGraph(ctx)), at };
        }
        return { graph: kept.graph, cursor: kept.at };
      });
    },
    counters: () => sctx!.exclusive((ctx) => readCounters(ctx)),
    async trace(src, dst) {
      const name = parseName('sandbox', src);
      const target = parseTraceTarget(dst);
      return sctx!.exclusive((ctx) => trace(ctx, name, target));
    },
    async explain(object) {
      const ref = parseObjectRef(object);
      return sctx!.exclusive(async (ctx) => explainObject(ctx, ref));
    },
    page(nonce) {
      page ??= readFileSync(PAGE_PATH, 'utf8');
      return page.replaceAll('__NONCE__', nonce);
    },
    subscribe(send) {
      subscribers.add(send);
      send('hello', { cursor });
      return () => subscribers.delete(send);
    },
  };

  const close = async () => {
    const s = server;
    server = undefined;
    info = undefined;
    current = undefined;
    if (!s) return;
    s.closeAllConnections(); // the page's event streams never end on their own
    await new Promise<void>((r) => s.close(() => r()));
  };

  /** Listens as ui.json says (or stops listening when it is gone); answers in ui.state. */
  async function configure(): Promise<void> {
    const c = readUiConfig(sctx!.stateDir);
    if (!c) {
      if (server) sctx!.log('ui.json is gone: the page is no longer served');
      return close();
    }
    let listen;
    try {
      listen = parseListen(c.listen);
    } catch (e) {
      return writeUiState(sctx!.stateDir, { generation: c.generation, error: (e as Error).message });
    }
    const same = current && server && current.listen === c.listen && current.tokenHash === c.tokenHash;
    if (!same) {
      await close();
      const s = http.createServer((req, res) => {
        // The token or address may change under a running server only through a new server.
        void handle(req, res, deps, info!, () => randomBytes(16).toString('base64'));
      });
      try {
        await new Promise<void>((resolve, reject) => {
          s.once('error', reject);
          s.listen(listen.port, listen.host, () => resolve());
        });
      } catch (e) {
        sctx!.log(`cannot listen on ${c.listen}: ${(e as Error).message}`);
        return writeUiState(sctx!.stateDir, { generation: c.generation, error: `cannot listen on ${c.listen}: ${(e as Error).message}` });
      }
      const port = (s.address() as { port: number }).port;
      server = s;
      info = { host: listen.host, port, tokenHash: c.tokenHash };
      current = { listen: c.listen, tokenHash: c.tokenHash };
      sctx!.log(`the page is served at http://${formatListen({ host: listen.host, port })}/${c.tokenHash ? ' (token required)' : ''}`);
    }
    writeUiState(sctx!.stateDir, { generation: c.generation, url: `http://${formatListen({ host: info!.host, port: info!.port })}/` });
  }

  // SIGHUP: `ctnet ui` changed ui.json. Reconfigurations run one after another.
  let chain: Promise<void> = Promise.resolve();
  const onHup = () => {
    chain = chain.then(configure).catch((e: Error) => sctx?.log(`reconfiguring failed: ${e.message}`));
  };

  return {
    name: 'web',
    async start(ctx) {
      sctx = ctx;
      cursor = ctx.feed.head();
      process.on('SIGHUP', onHup);
      onHup();
      await chain;
    },
    changes(batch) {
      if (!batch.length) return;
      cursor = batch[batch.length - 1]!.id;
      pending.push(...batch);
      void serially(async () => {
        // Every batch that came while the previous update ran, as one.
        const events = pending;
        pending = [];
        if (!events.length) return;
        const last = events[events.length - 1]!;
        const event = { cursor: last.id, at: last.at, kinds: [...new Set(events.map((e) => e.kind))] };
        const before = kept;
        if (!before || subscribers.size === 0) {
          // Nobody has the graph to patch: drop it (built whole when a page asks again).
          kept = undefined;
          return broadcast(event);
        }
        const touched = touchedSandboxes(events);
        const started = performance.now();
        try {
          const graph = touched === 'all'
            ? await read((ctx) => buildGraph(ctx))
            : await read((ctx) => updateGraph(ctx, before.graph, touched));
          kept = { graph, at: last.id };
          const delta = graphDelta(before.graph, graph);
          broadcast({ ...event, since: before.at, delta });
          // One line per batch, next to the log service's line per change: how long the page waited on ctnetd.
          sctx!.log(`changes #${events[0]!.id}..#${last.id} sent to ${subscribers.size} page(s) ${Math.round(performance.now() - started)} ms after they arrived, ${Math.round(Date.now() - Date.parse(last.at))} ms after the commit (${touched === 'all' ? 'every sandbox' : `${touched.size} sandbox(es)`} read again; ${delta.sandboxes.length} sandbox(es), ${delta.policy.length} rule(s) whole, ${(delta.policyEdges ?? []).reduce((n, e) => n + e.added.length + e.removed.length, 0)} pair(s) of ${delta.policyEdges?.length ?? 0} rule(s) sent)`);
        } catch (e) {
          // Without a delta the page fetches the graph whole, built again on its request.
          sctx!.log(`the page's graph could not be updated: ${(e as Error).message}`);
          kept = undefined;
          broadcast(event);
        }
      });
    },
    resync(snapshot) {
      cursor = snapshot.cursor;
      void serially(async () => {
        pending = [];
        kept = undefined;
        broadcast({ cursor: snapshot.cursor, resync: true });
      });
    },
    async stop() {
      process.off('SIGHUP', onHup);
      await chain;
      await close();
      await work;
      reader?.store.close();
      reader = undefined;
    },
  };
}
