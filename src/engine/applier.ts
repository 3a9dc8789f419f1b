// The one place where plans meet the kernel and the store. --explain and --dry-run, undo on failure
// (newest first, past errors), crash points and tracing live here and nowhere else.
//
// An operation is a transaction (DESIGN.md, principle 4):
//   applier.transaction(async (tx) => {
//     const p = tx.decide((rec) => ...);   // read the store, decide, record intent: one store transaction
//     await tx.run(p.plan);                // kernel steps, each inverse logged before the step runs
//     tx.commit([...]);                    // the final store changes, in one store transaction
//   });
// A failure anywhere undoes, newest first, every kernel step and every store change it logged,
// store and kernel alike. A crash (kill -9) at any point leaves states ("creating", "removing") with
// a dead owner, which gc finishes or undoes.
import { KernelError } from '../errors.ts';
import type { KernelBackend } from '../kernel/backend.ts';
import { inverse, removes, type Op } from '../plan/ops.ts';
import type { Plan, Step } from '../plan/plan.ts';
import { renderOp } from '../plan/render.ts';
import { applyChange, type StoreChange } from '../store/changes.ts';
import type { PolicyRow, Store } from '../store/store.ts';

/**
 * Test hook for crash safety: with CTNET_CRASH_AT=N the process SIGKILLs itself at its N-th crash
 * point (after a step that changed state), exactly as a kill -9 from outside would. One counter per
 * process (the CLI's command, or the daemon's life), handed to every applier it makes.
 */
export class CrashPoints {
  #count = 0;
  #at: string | undefined;
  constructor(at: string | undefined = process.env.CTNET_CRASH_AT) {
    this.#at = at;
  }
  /** No crash points, whatever this process's environment says (ctnetd running a command for the front end). */
  static none(): CrashPoints {
    const c = new CrashPoints();
    c.#at = undefined;
    return c;
  }
  reached(): void {
    if (this.#at !== undefined && String(this.#count++) === this.#at) process.kill(process.pid, 'SIGKILL');
  }
}

export interface ApplierOptions {
  readonly backend: KernelBackend;
  readonly store: Store;
  /** Receives each kernel change as a shell line, in order (--explain, --dry-run). */
  readonly explain?: ((line: string) => void) | undefined;
  /** Print, change nothing: store transactions are rolled back, kernel steps skipped. */
  readonly dryRun?: boolean | undefined;
  readonly warn: (message: string) => void;
  readonly crash?: CrashPoints | undefined;
  /**
   * Where work that may follow the answer goes (the daemon runs it after replying, before the next
   * request): ending conntrack flows. Absent: it runs in its step.
   */
  readonly defer?: ((fn: () => Promise<void>) => void) | undefined;
}

/** One entry of the undo log: a kernel operation or a store change that undoes a step. */
type Undo = { readonly op: Op } | { readonly change: StoreChange };

/** Store changes made while deciding: applied at once, their inverses logged. */
export class Recorder {
  readonly store: Store;
  readonly #log: Undo[];
  constructor(store: Store, log: Undo[]) {
    this.store = store;
    this.#log = log;
  }
  record(...changes: readonly StoreChange[]): void {
    for (const c of changes) {
      const undo = applyChange(this.store, c);
      if (undo) this.#log.push({ change: undo });
    }
  }
  /** Inserts a policy rule (its ID is the database's) and logs its removal. */
  insertPolicy(p: Parameters<Store['insertPolicy']>[0]): PolicyRow {
    const row = this.store.insertPolicy(p);
    this.#log.push({ change: { kind: 'policy.delete', id: row.id } });
    return row;
  }
}

export class Applier {
  readonly backend: KernelBackend;
  readonly store: Store;
  readonly dryRun: boolean;
  readonly warn: (message: string) => void;
  readonly #explain: ((line: string) => void) | undefined;
  readonly #crash: CrashPoints;
  readonly #defer: ((fn: () => Promise<void>) => void) | undefined;
  /** conntrack.forget operations waiting for the deferred run (one flow listing for all). */
  #deferred: Op[] | undefined;

  constructor(o: ApplierOptions) {
    this.backend = o.backend;
    this.store = o.store;
    this.dryRun = o.dryRun ?? false;
    this.warn = o.warn;
    this.#explain = o.explain;
    this.#crash = o.crash ?? new CrashPoints(undefined);
    this.#defer = o.defer;
  }

  /** A comment line in --explain output. */
  note(text: string): void {
    this.#explain?.(`# ${text}`);
  }

  /** A line in --explain output for something done outside a plan (a user's command in a sandbox). */
  explainLine(line: string): void {
    this.#explain?.(line);
  }

  /** A crash point outside a transaction (between two transactions of one use case). */
  crashPoint(): void {
    this.#crash.reached();
  }

  /**
   * Runs body as one transaction: if it throws, everything it logged is undone, newest first and
   * past errors (each failure is reported, with "run ctnet gc"), and the error is rethrown.
   */
  async transaction<T>(body: (tx: Transaction) => Promise<T>): Promise<T> {
    const tx = new Transaction(this);
    try {
      return await body(tx);
    } catch (e) {
      for (const f of await this.rollback(tx.log)) this.warn(`rollback could not undo ${f}; run "ctnet gc"`);
      for (const again of tx.recompute.splice(0)) {
        try {
          await again();
        } catch (err) {
          this.warn(`after the rollback: ${(err as Error).message}; run "ctnet gc"`);
        }
      }
      throw e;
    }
  }

  /** Runs a plan on its own (a transaction of kernel steps only). */
  async apply(plan: Plan): Promise<void> {
    await this.transaction((tx) => tx.run(plan));
  }

  /**
   * Store changes that stand on their own (a state that says an operation has started, a record
   * removed after its teardown): one store transaction, never undone. Skipped under --dry-run.
   */
  record(...changes: readonly StoreChange[]): void {
    if (this.dryRun || changes.length === 0) return;
    this.store.write(() => changes.forEach((c) => applyChange(this.store, c)));
    this.#crash.reached();
  }

  /**
   * Runs a plan that only removes (teardown): not-found is success, and a failure does not stop
   * the rest; the first failure is thrown at the end, every one is reported.
   */
  async teardown(plan: Plan): Promise<void> {
    const failures: unknown[] = [];
    for (const s of plan) {
      this.#print(s);
      if (!this.dryRun) {
        await Promise.all(s.lanes.map(async (lane) => {
          // Removals are tried as one batch first (one spawn per tool); if it fails, each again
          // alone, where "already gone" is success: removing twice is harmless.
          if (lane.length > 1 && lane.every(removes)) {
            try {
              await this.#apply(lane);
              return;
            } catch {
              // each alone, below
            }
          }
          for (const op of lane) {
            try {
              await this.#apply([op]);
            } catch (e) {
              if (!(e instanceof KernelError && e.isNotFound && removes(op))) failures.push(e);
            }
          }
        }));
      }
      this.#crash.reached();
    }
    if (failures.length > 1) for (const f of failures.slice(1)) this.warn(`teardown: ${(f as Error).message}`);
    if (failures.length > 0) throw failures[0];
  }

  /** Undoes a log, newest first, past errors; returns what could not be undone. */
  async rollback(log: Undo[]): Promise<string[]> {
    const failed: string[] = [];
    const entries = log.splice(0).reverse();
    // Store inverses are made in one transaction each run of consecutive ones.
    for (let i = 0; i < entries.length;) {
      const e = entries[i]!;
      if ('op' in e) {
        if (!this.dryRun) {
          try {
            await this.backend.apply([e.op]);
          } catch (err) {
            if (!(err instanceof KernelError && err.isNotFound)) failed.push(`${renderOp(e.op).join('; ')}: ${(err as Error).message}`);
          }
        }
        i++;
        continue;
      }
      const changes: StoreChange[] = [];
      for (; i < entries.length && 'change' in entries[i]!; i++) changes.push((entries[i] as { change: StoreChange }).change);
      if (this.dryRun) continue; // a dry run's store transaction was rolled back already
      try {
        this.store.write(() => changes.forEach((c) => applyChange(this.store, c)));
      } catch (err) {
        failed.push(`the store's record (${changes.map((c) => c.kind).join(', ')}): ${(err as Error).message}`);
      }
    }
    return failed;
  }

  #print(s: Step): void {
    if (!this.#explain) return;
    if (s.note) this.#explain(`# ${s.note}`);
    for (const op of s.lanes.flat()) for (const line of renderOp(op)) this.#explain(line);
  }

  /** Applies operations, sending ending flows to the deferred run where there is one. */
  async #apply(ops: readonly Op[]): Promise<void> {
    const now = this.#defer ? ops.filter((o) => o.kind !== 'conntrack.forget') : ops;
    if (now.length < ops.length) this.#later(ops.filter((o) => o.kind === 'conntrack.forget'));
    if (now.length > 0) await this.backend.apply(now);
  }

  #later(ops: readonly Op[]): void {
    if (this.#deferred) {
      this.#deferred.push(...ops);
      return;
    }
    const waiting = [...ops];
    this.#deferred = waiting;
    this.#defer!(async () => {
      this.#deferred = undefined;
      await this.backend.apply(waiting);
    });
  }

  /** Runs one step: inverses logged first (a failed batch may have half happened), then the lanes. */
  async runStep(s: Step, log: Undo[]): Promise<void> {
    this.#print(s);
    if (this.dryRun) return;
    for (const op of s.lanes.flat()) {
      const inv = inverse(op);
      if (inv) log.push({ op: inv });
    }
    // Like Promise.all, but waits for every lane before throwing the first failure: nothing runs
    // on after a rollback starts.
    const results = await Promise.allSettled(s.lanes.map((lane) => this.#apply(lane)));
    const failed = results.find((r) => r.status === 'rejected');
    if (failed) throw (failed as PromiseRejectedResult).reason;
    this.#crash.reached();
  }
}

/** One operation's undo log, store and kernel together. */
export class Transaction {
  readonly log: Undo[] = [];
  /**
   * State derived from the whole store (the policy sets), brought up to date inside the
   * transaction: after a rollback it is derived again from the store as the rollback left it,
   * rather than undone step by step.
   */
  readonly recompute: (() => Promise<void>)[] = [];
  readonly #a: Applier;
  constructor(a: Applier) {
    this.#a = a;
  }

  /**
   * Reads the store and records intent in one store transaction (BEGIN IMMEDIATE: read-then-write
   * decisions, such as an address, cannot race). Under --dry-run it is rolled back at once.
   */
  decide<T>(fn: (rec: Recorder) => T): T {
    const a = this.#a;
    const mark = this.log.length;
    try {
      const value = a.store.write(() => fn(new Recorder(a.store, this.log)), { rollback: a.dryRun });
      a.crashPoint();
      return value;
    } catch (e) {
      this.log.length = mark; // its changes were rolled back with the store transaction
      throw e;
    }
  }

  /** Runs the plan's steps in order. */
  async run(plan: Plan): Promise<void> {
    for (const s of plan) await this.#a.runStep(s, this.log);
  }

  /** The final store changes, in one store transaction. Nothing is undone after this. */
  commit(...changes: readonly StoreChange[]): void {
    this.#a.record(...changes);
    this.log.length = 0;
    this.recompute.length = 0;
  }
}
