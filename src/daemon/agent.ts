// ctnetd as the node agent: it owns the resident services of a state directory, and feeds them
// the store's change feed from where it left off. Its cursor is saved after every batch in
// STATE_DIR/ctnetd.cursor (with the store's instance, so another store is never mistaken for this
// one): changes the CLI made while ctnetd was down reach the services when it starts again.
// A crash between a batch and its save delivers that batch again: services see each change at
// least once, and exactly once across clean stops and starts.
import { readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ChangeFeed, type Batch, type Tail } from '../store/feed.ts';
import type { Service, ServiceContext } from '../services/service.ts';

const CURSOR_NAME = 'ctnetd.cursor';
/** The first back-off before a failed service gets a snapshot, when no batch comes sooner. */
const RETRY_MS = 1_000;

interface SavedCursor {
  readonly instance: string;
  readonly cursor: number;
}

function loadCursor(stateDir: string, instance: string): number | string {
  let saved: SavedCursor;
  try {
    saved = JSON.parse(readFileSync(join(stateDir, CURSOR_NAME), 'utf8')) as SavedCursor;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'ENOENT' ? 'first start: ctnetd has no saved cursor' : `the saved cursor is unreadable (${(e as Error).message})`;
  }
  if (saved.instance !== instance) return `the saved cursor belongs to store ${saved.instance}, not ${instance}`;
  if (!Number.isInteger(saved.cursor) || saved.cursor < 0) return 'the saved cursor is unreadable';
  return saved.cursor;
}

function saveCursor(stateDir: string, instance: string, cursor: number): void {
  const path = join(stateDir, CURSOR_NAME);
  writeFileSync(`${path}.tmp`, JSON.stringify({ instance, cursor } satisfies SavedCursor) + '\n');
  renameSync(`${path}.tmp`, path);
}

export interface Agent {
  /** The id of the last change every service was given. */
  readonly cursor: number;
  stop(): Promise<void>;
}

export interface AgentOptions {
  readonly stateDir: string;
  /** The store's instance (meta 'instance'). */
  readonly instance: string;
  readonly services: readonly Service[];
  readonly log: (message: string) => void;
  /** Runs work in ctnetd's request queue with an engine context (see ServiceContext.exclusive). */
  readonly exclusive?: ServiceContext['exclusive'];
  /** Requests held now (see ServiceContext.requests). */
  readonly requests?: () => number;
  /** After each batch (ctnetd bounds its log here). */
  readonly afterBatch?: () => void;
  readonly intervalMs?: number;
}

/** Starts the services, catches them up on what changed since the saved cursor, and follows the feed. */
export async function startAgent(opts: AgentOptions): Promise<Agent> {
  const feed = new ChangeFeed(opts.stateDir);
  const exclusive: ServiceContext['exclusive'] = opts.exclusive ?? (() => Promise.reject(new Error('this agent runs no engine work')));
  const ctx = (s: Service): ServiceContext => ({
    stateDir: opts.stateDir, feed, log: (m) => opts.log(`${s.name}: ${m}`), exclusive, ...(opts.requests ? { requests: opts.requests } : {}),
  });
  const started: Service[] = [];
  const guarded = async (s: Service, what: string, fn: () => void | Promise<void>) => {
    try {
      await fn();
      return true;
    } catch (e) {
      opts.log(`service ${s.name}: ${what} failed: ${(e as Error).stack ?? (e as Error).message}`);
      return false;
    }
  };
  for (const s of opts.services) {
    if (await guarded(s, 'start', () => s.start(ctx(s)))) started.push(s);
  }

  // Deliveries and recoveries run one at a time, in order.
  let chain: Promise<unknown> = Promise.resolve();
  const serial = <T>(fn: () => Promise<T>): Promise<T> => {
    const p = chain.then(fn);
    chain = p.catch(() => {});
    return p;
  };

  // A service that failed on a batch may have half applied it: it gets a snapshot instead, at the
  // next batch or after a back-off (1 s, doubling to a minute), whichever comes first; the others
  // go on. Events up to a service's last snapshot are not given to it again.
  const stale = new Set<Service>();
  const floor = new Map<Service, number>();
  let retry: NodeJS.Timeout | undefined;
  let retryMs = RETRY_MS;
  const markStale = (s: Service) => {
    stale.add(s);
    if (retry) return;
    retry = setTimeout(() => {
      retry = undefined;
      void serial(async () => {
        for (const x of [...stale]) await recover(x);
      });
    }, retryMs);
    retryMs = Math.min(retryMs * 2, 60_000);
  };
  const resynced = (s: Service, cursor: number) => {
    stale.delete(s);
    floor.set(s, cursor);
    if (stale.size === 0) retryMs = RETRY_MS;
  };
  const recover = async (s: Service) => {
    const snapshot = feed.snapshot();
    if (await guarded(s, 'resync', () => s.resync(snapshot, 'it failed on an earlier batch'))) resynced(s, snapshot.cursor);
    else markStale(s);
  };

  const deliver = (b: Batch) => serial(async () => {
    for (const s of started) {
      if (b.kind === 'resync') {
        if (await guarded(s, 'resync', () => s.resync(b.snapshot, b.reason))) resynced(s, b.cursor);
        else markStale(s);
      } else if (stale.has(s)) {
        await recover(s);
      } else {
        const events = b.events.filter((e) => e.id > (floor.get(s) ?? 0));
        if (events.length && !(await guarded(s, `changes #${events[0]!.id}..#${b.cursor}`, () => s.changes(events)))) markStale(s);
      }
    }
    saveCursor(opts.stateDir, opts.instance, b.cursor);
    opts.afterBatch?.();
  });

  opts.log(`services: ${started.map((s) => s.name).join(', ') || 'none'}`);
  let from = loadCursor(opts.stateDir, opts.instance);
  if (typeof from === 'number') {
    const head = feed.head();
    if (head > from) opts.log(`catching up on changes #${from + 1}..#${head}, made while ctnetd was not running`);
  } else {
    const snapshot = feed.snapshot();
    await deliver({ kind: 'resync', snapshot, reason: from, cursor: snapshot.cursor });
    from = snapshot.cursor;
  }
  const tail: Tail = feed.tail(from, deliver, { intervalMs: opts.intervalMs, onError: (e) => opts.log(`change feed: ${e.message}`) });

  return {
    get cursor() {
      return tail.cursor;
    },
    async stop() {
      await tail.stop();
      clearTimeout(retry);
      await chain;
      for (const s of [...started].reverse()) await guarded(s, 'stop', () => s.stop());
      feed.close();
    },
  };
}
