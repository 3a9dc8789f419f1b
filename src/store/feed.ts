// Reading the change feed: the events after a cursor, a snapshot of every recorded table, and a
// tail that notices new events by polling the newest id (one indexed lookup on a read-only
// connection: see bench/feed.ts for what it costs). A reader that fell behind a prune is told so
// and gets a snapshot instead of silently missing changes.
import { join } from 'node:path';
import { DatabaseSync, type StatementSync } from 'node:sqlite';
import { KINDS, META_PRUNED, snapshotQuery, type ChangeEvent, type FeedData, type Kind } from './events.ts';

/** Every recorded row, as one consistent read, and the cursor it is current at. */
export interface Snapshot {
  /** The id of the newest event the snapshot includes: tail from here. */
  readonly cursor: number;
  readonly rows: { readonly [K in Kind]: readonly FeedData[K][] };
}

export type ReadResult =
  | { readonly ok: true; readonly events: readonly ChangeEvent[]; readonly cursor: number }
  /** Events after `after` up to `pruned` are gone: resynchronise from a snapshot. */
  | { readonly ok: false; readonly after: number; readonly pruned: number };

/** What a tail delivers: new events in order, or, after a gap, a snapshot to start again from. */
export type Batch =
  | { readonly kind: 'events'; readonly events: readonly ChangeEvent[]; readonly cursor: number }
  /** reason: why the events could not be delivered (for a log line). */
  | { readonly kind: 'resync'; readonly snapshot: Snapshot; readonly reason: string; readonly cursor: number };

export interface TailOptions {
  /** How often to look for new events (default TAIL_INTERVAL_MS). */
  readonly intervalMs?: number;
  /** A failed read or onBatch (default: a line on stderr); the batch is delivered again next poll. */
  readonly onError?: (e: Error) => void;
}

export interface Tail {
  /** Stops polling; resolves once a batch being delivered is done. */
  stop(): Promise<void>;
  /** The id of the last event delivered (or the snapshot's cursor). */
  readonly cursor: number;
}

type Row = Record<string, unknown>;

/** Polling interval of tail(): half of it is the mean delay before a commit is noticed. */
export const TAIL_INTERVAL_MS = 25;

export class ChangeFeed {
  readonly #db: DatabaseSync;
  readonly #head: StatementSync;
  readonly #pruned: StatementSync;
  readonly #events: StatementSync;

  /**
   * Opens the feed of a state directory on its own read-only connection (never inside a writer's
   * open transaction, whose uncommitted events it would otherwise see). The store must have been
   * opened (and so migrated) once before.
   */
  constructor(stateDir: string) {
    this.#db = new DatabaseSync(join(stateDir, 'ctnet.db'), { readOnly: true, timeout: 5_000 });
    this.#head = this.#db.prepare('SELECT coalesce(max(id), 0) AS id FROM events');
    this.#pruned = this.#db.prepare(`SELECT value FROM meta WHERE key = '${META_PRUNED}'`);
    this.#events = this.#db.prepare('SELECT id, at, kind, action, key, data FROM events WHERE id > ? ORDER BY id LIMIT ?');
  }

  close(): void {
    if (this.#db.isOpen) this.#db.close();
  }

  /** The id of the newest event (0: none yet). */
  head(): number {
    return (this.#head.get() as Row).id as number;
  }

  /** The highest id pruned so far (0: none). */
  pruned(): number {
    const r = this.#pruned.get() as Row | undefined;
    return r ? Number(r.value) : 0;
  }

  /** Up to limit events after the cursor, in order, or the gap when some were pruned unread. */
  read(after: number, limit = 1_000): ReadResult {
    return this.#read(() => {
      const pruned = this.pruned();
      if (after < pruned) return { ok: false, after, pruned };
      const events = (this.#events.all(after, limit) as Row[]).map(toEvent);
      return { ok: true, events, cursor: events.at(-1)?.id ?? after };
    });
  }

  /** Every recorded row and the cursor they are current at, in one read transaction. */
  snapshot(): Snapshot {
    return this.#read(() => {
      const cursor = this.head();
      const rows = Object.fromEntries(KINDS.map((k) =>
        [k, (this.#db.prepare(snapshotQuery(k)).all() as Row[]).map((r) => JSON.parse(r.data as string) as unknown)]));
      return { cursor, rows: rows as unknown as Snapshot['rows'] };
    });
  }

  /**
   * Delivers every event after `after` to onBatch, in order, each once; then keeps polling the head
   * every intervalMs and delivers what new commits appended. A batch is delivered (and awaited)
   * before the next read. When `after` is below the pruned mark (or beyond the head: another
   * store), onBatch gets a snapshot instead and tailing goes on from its cursor.
   */
  tail(after: number, onBatch: (b: Batch) => void | Promise<void>, options: TailOptions = {}): Tail {
    const interval = options.intervalMs ?? TAIL_INTERVAL_MS;
    const onError = options.onError ?? ((e: Error) => process.stderr.write(`ctnet: change feed: ${e.message}\n`));
    let cursor = after;
    let stopped = false;
    let timer: NodeJS.Timeout | undefined;
    let current: Promise<void> = Promise.resolve();
    const poll = async () => {
      try {
        const head = this.head();
        if (head < cursor) await resync(`cursor ${cursor} is past the newest event ${head}: the store was replaced`);
        while (!stopped && this.head() > cursor) {
          const r = this.read(cursor);
          if (!r.ok) {
            await resync(`events ${r.after + 1}..${r.pruned} were pruned before they were read`);
            continue;
          }
          await onBatch({ kind: 'events', events: r.events, cursor: r.cursor });
          cursor = r.cursor;
        }
      } catch (e) {
        onError(e as Error); // the cursor stays: the same events are read again at the next poll
      } finally {
        if (!stopped) timer = setTimeout(() => (current = poll()), interval);
      }
    };
    const resync = async (reason: string) => {
      const snapshot = this.snapshot();
      await onBatch({ kind: 'resync', snapshot, reason, cursor: snapshot.cursor });
      cursor = snapshot.cursor;
    };
    current = poll();
    return {
      get cursor() {
        return cursor;
      },
      async stop() {
        stopped = true;
        clearTimeout(timer);
        await current.catch(() => {});
      },
    };
  }

  /** Runs fn in one read transaction: its statements see one state of the database. */
  #read<T>(fn: () => T): T {
    this.#db.exec('BEGIN');
    try {
      return fn();
    } finally {
      this.#db.exec('COMMIT');
    }
  }
}

const toEvent = (r: Row): ChangeEvent => ({
  id: r.id as number, at: r.at as string, kind: r.kind as Kind, action: r.action as ChangeEvent['action'],
  key: r.key as string, data: JSON.parse(r.data as string) as never,
});
