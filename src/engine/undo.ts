// Operations apply kernel steps in order, pushing each step's inverse; on failure the inverses run
// in reverse order, past their own errors (containernetworking/plugins' deferred undo, in data).
import { KernelError } from '../errors.ts';

export class UndoStack {
  readonly #undos: { label: string; fn: () => Promise<void> }[] = [];

  push(label: string, fn: () => Promise<void>): void {
    this.#undos.push({ label, fn });
  }

  /** Runs every inverse, newest first; returns the ones that failed. */
  async rollback(): Promise<string[]> {
    const failed: string[] = [];
    for (const { label, fn } of this.#undos.reverse()) {
      try {
        await fn();
      } catch (e) {
        failed.push(`${label}: ${(e as Error).message}`);
      }
    }
    this.#undos.length = 0;
    return failed;
  }
}

/** Runs the steps of an operation; if one fails, undoes the finished ones and rethrows. */
export async function transaction<T>(body: (undo: UndoStack) => Promise<T>, warn: (m: string) => void): Promise<T> {
  const undo = new UndoStack();
  try {
    return await body(undo);
  } catch (e) {
    for (const f of await undo.rollback()) warn(`rollback could not undo ${f}; run "ctnet gc"`);
    throw e;
  }
}

/** Runs fn and treats "it is already gone" as success (idempotent teardown). */
export async function ignoreMissing(fn: () => Promise<void>): Promise<void> {
  try {
    await fn();
  } catch (e) {
    if (e instanceof KernelError && e.isNotFound) return;
    throw e;
  }
}

let crashCounter = 0;
/**
 * Test hook for crash safety: with CTNET_CRASH_AT=N the process SIGKILLs itself at its N-th crash
 * point (a point between two state-changing steps), exactly as a kill -9 from outside would.
 */
export function crashPoint(): void {
  const at = process.env.CTNET_CRASH_AT;
  if (at !== undefined && String(crashCounter++) === at) process.kill(process.pid, 'SIGKILL');
}
