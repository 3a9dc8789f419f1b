// Reading the change feed: the events after a cursor, a snapshot of every recorded table, and a
// tail that notices new events within milliseconds. A reader that fell behind a prune is told so
// and gets a snapshot instead of silently missing changes.
//
// Noticing: in WAL mode a commit writes its pages to ctnet.db-wal (at COMMIT, not before), so an
// inotify watch on that file wakes the reader, which looks at the newest id SETTLE_MS later and
// once more RECHECK_MS later (a commit becomes visible just after its last write: a writer paused
// in between is caught by the second look). A poll of the newest id (one indexed lookup) every
// SAFETY_POLL_MS covers a watch lost; without a watch (inotify unavailable, or watch: false) the
// poll runs every POLL_MS instead. Polling alone every 25 ms cost an idle process ~1.5-2% of a
// core here, nearly all of it in timer wake-ups; the watch, a tenth of that (bench/feed.ts).
import { watch, type FSWatcher } from 'node:fs';
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

export interface WatchOptions {
  /** The poll while there is no inotify watch (default POLL_MS). */
  readonly intervalMs?: number;
  /** false: poll every intervalMs, no inotify watch (tests of the fallback). */
  readonly watch?: boolean;
  /** The poll while the watch is up (default SAFETY_POLL_MS). */
  readonly safetyPollMs?: number;
  /** A failed check (default: a line on stderr); the next wake-up checks again. */
  readonly onError?: (e: Error) => void;
}
export type TailOptions = WatchOptions;

export interface Watch {
  /** Stops; resolves once a check under way is done. */
  stop(): Promise<void>;
}

export interface Tail {
  /** Stops polling; resolves once a batch being delivered is done. */
  stop(): Promise<void>;
  /** The id of the last event delivered (or the snapshot's cursor). */
  readonly cursor: number;
}

type Row = Record<string, unknown>;

/** Without an inotify watch: a commit waits half of this on average before it is noticed. */
export const POLL_MS = 25;
/** With the watch: the poll that covers a watch lost. */
export const SAFETY_POLL_MS = 500;
/** After a wake-up, look this long after it, and once more RECHECK_MS after it. */
export const SETTLE_MS = 3;
export const RECHECK_MS = 30;

export class ChangeFeed {
  readonly #db: DatabaseSync;
  readonly #wal: string;
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
    this.#wal = join(stateDir, 'ctnet.db-wal');
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
   * Calls check soon after every commit to the store (by any process), and on a poll (see the top
   * of this file). Calls never overlap: a wake-up during a check runs one more check after it.
   */
  watch(check: () => void | Promise<void>, options: WatchOptions = {}): Watch {
    const poll = options.intervalMs ?? POLL_MS;
    const safety = options.safetyPollMs ?? SAFETY_POLL_MS;
    const onError = options.onError ?? ((e: Error) => process.stderr.write(`ctnet: change feed: ${e.message}\n`));
    let stopped = false;
    let timer: NodeJS.Timeout | undefined;
    let recheck: NodeJS.Timeout | undefined;
    let due = Infinity; // when the pending timer fires
    let running: Promise<void> | undefined;
    let again = false;
    let watcher: FSWatcher | undefined;

    /** Makes the next check happen within ms (never later than already planned). */
    const soon = (ms: number) => {
      if (stopped || performance.now() + ms >= due) return;
      clearTimeout(timer);
      due = performance.now() + ms;
      timer = setTimeout(fire, ms);
    };
    const fire = () => {
      due = Infinity;
      if (running) {
        again = true;
        return;
      }
      if (options.watch !== false && !watcher) watcher = watchWal();
      let failed = false;
      running = (async () => {
        try {
          await check();
        } catch (e) {
          failed = true;
          onError(e as Error);
        }
      })().finally(() => {
        running = undefined;
        if (again) {
          again = false;
          soon(0);
        }
        soon(watcher && !failed ? safety : poll);
      });
    };
    // The WAL exists while any connection is open (this one is). Lost (renamed, deleted) or not
    // there: the poll goes on, and the next check watches again.
    const watchWal = (): FSWatcher | undefined => {
      try {
        const w = watch(this.#wal, { persistent: false }, (type) => {
          if (type === 'rename') {
            w.close();
            watcher = undefined;
          }
          soon(SETTLE_MS);
          clearTimeout(recheck);
          recheck = setTimeout(() => soon(0), RECHECK_MS);
        });
        w.on('error', () => {
          w.close();
          watcher = undefined;
        });
        return w;
      } catch {
        return undefined;
      }
    };
    soon(0);
    return {
      async stop() {
        stopped = true;
        clearTimeout(timer);
        clearTimeout(recheck);
        watcher?.close();
        await running;
      },
    };
  }

  /**
   * Delivers every event after `after` to onBatch, in order, each once, then what later commits
   * append, soon after each (see watch()). A batch is delivered (and awaited) before the next
   * read; a failed one is delivered again. When `after` is below the pruned mark (or beyond the
   * head: another store), onBatch gets a snapshot instead and tailing goes on from its cursor.
   */
  tail(after: number, onBatch: (b: Batch) => void | Promise<void>, options: TailOptions = {}): Tail {
    let cursor = after;
    let stopping = false;
    const resync = async (reason: string) => {
      const snapshot = this.snapshot();
      await onBatch({ kind: 'resync', snapshot, reason, cursor: snapshot.cursor });
      cursor = snapshot.cursor;
    };
    const w = this.watch(async () => {
      const head = this.head();
      if (head < cursor) await resync(`cursor ${cursor} is past the newest event ${head}: the store was replaced`);
      while (!stopping && this.head() > cursor) {
        const r = this.read(cursor);
        if (!r.ok) {
          await resync(`events ${r.after + 1}..${r.pruned} were pruned before they were read`);
          continue;
        }
        await onBatch({ kind: 'events', events: r.events, cursor: r.cursor });
        cursor = r.cursor;
      }
    }, options);
    return {
      get cursor() {
        return cursor;
      },
      async stop() {
        stopping = true;
        await w.stop();
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
