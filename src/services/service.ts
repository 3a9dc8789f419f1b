// A resident part of ctnetd (the node agent): something that must follow the store's state as it
// changes (the overlay watch, DNS, the live page), whoever changed it: the CLI, the CNI plugin, a
// file. ctnetd starts each service with itself and hands it every committed change, in order.
import type { Ctx } from '../engine/context.ts';
import type { ChangeEvent } from '../store/events.ts';
import type { ChangeFeed, Snapshot } from '../store/feed.ts';

export interface ServiceContext {
  readonly stateDir: string;
  /** For reads: a service that keeps state in memory starts from feed.snapshot() (see changes()). */
  readonly feed: ChangeFeed;
  /** One line in ctnetd's log. */
  readonly log: (message: string) => void;
  /**
   * Runs fn with an engine context in ctnetd's request queue: one at a time with the CNI requests,
   * so a service that changes the kernel never interleaves with them.
   */
  readonly exclusive: <T>(fn: (ctx: Ctx) => Promise<T>) => Promise<T>;
  /**
   * How many requests (CNI, the front end's commands) ctnetd holds now, queued or running: work that
   * can wait (a cache to render) waits for 0, so it does not queue ahead of what a request's change
   * set off (the page's update). Undefined: nothing says (tests).
   */
  readonly requests?: () => number;
}

export interface Service {
  readonly name: string;
  start(ctx: ServiceContext): void | Promise<void>;
  /**
   * Committed changes, in commit order, each delivered once; at start, also those made while
   * ctnetd was down (from its saved cursor). Never one that the last resync()'s snapshot already
   * holds. A service that builds its state from feed.snapshot() itself (in start) skips the
   * events with id <= that snapshot's cursor: applying them again is harmless (they carry whole
   * rows) but useless.
   */
  changes(events: readonly ChangeEvent[]): void | Promise<void>;
  /**
   * The feed cannot say what changed (events pruned before ctnetd read them, a first start, another
   * store; or this service failed on a batch): here is everything, current at snapshot.cursor.
   */
  resync(snapshot: Snapshot, reason: string): void | Promise<void>;
  stop(): void | Promise<void>;
}
