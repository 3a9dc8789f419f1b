// The store under contention and failure: a write waits its turn and says so, a lock held too long
// and a damaged file end in one clear error (a CtnetError with a hint), never a stack trace.
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { CtnetError } from '../../src/errors.ts';
import { Store } from '../../src/store/store.ts';

const withDir = async (fn: (dir: string) => Promise<void> | void) => {
  const dir = mkdtempSync(join(tmpdir(), 'ctnet-store-'));
  try {
    await fn(dir);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
};

/** Another process holds the state's write lock for ms, as a ctnet in the middle of an operation would. */
async function lockFor(dir: string, ms: number): Promise<ChildProcess> {
  const child = spawn(process.execPath, ['-e', `
    const { DatabaseSync } = require('node:sqlite');
    const db = new DatabaseSync(${JSON.stringify(join(dir, 'ctnet.db'))});
    db.exec('BEGIN IMMEDIATE'); process.stdout.write('locked\\n');
    setTimeout(() => { db.exec('ROLLBACK'); db.close(); }, ${ms});`], { stdio: ['ignore', 'pipe', 'inherit'] });
  await new Promise<void>((resolve) => child.stdout!.once('data', () => resolve()));
  return child;
}

describe('store', () => {
  it('a write behind another process\'s transaction says it is waiting, then gets its turn', () => withDir(async (dir) => {
    new Store(dir).close();
    const waits: string[] = [];
    const waiter = new Store(dir, { busyTimeoutMs: 5000, onWait: (m) => waits.push(m) });
    try {
      // SQLite's busy wait blocks this thread, so the lock is held by another process, as it would be.
      const child = await lockFor(dir, 1500);
      waiter.write(() => waiter.networks(), { rollback: true });
      await new Promise((r) => child.once('exit', r));
      assert.deepEqual(waits, [`waiting for another ctnet operation on ${dir} to finish`]);
    } finally {
      waiter.close();
    }
  }));

  it('a lock held past the busy timeout is a clear error that changed nothing', () => withDir(async (dir) => {
    const waits: string[] = [];
    const store = new Store(dir, { busyTimeoutMs: 1500, onWait: (m) => waits.push(m) });
    const child = await lockFor(dir, 4000);
    try {
      assert.throws(() => store.write(() => store.networks()), (e: unknown) =>
        e instanceof CtnetError && e.code === 'STATE' && /stayed locked by another ctnet operation: nothing was changed/.test(e.message) && /try again/.test(e.hint ?? ''));
      assert.equal(waits.length, 1);
    } finally {
      store.close();
      child.kill();
    }
  }));

  it('a damaged state file is a clear error, not a stack trace', () => withDir((dir) => {
    writeFileSync(join(dir, 'ctnet.db'), 'this is not a database '.repeat(200));
    assert.throws(() => new Store(dir), (e: unknown) =>
      e instanceof CtnetError && /state database .*ctnet\.db is damaged/.test(e.message) && /restore/.test(e.hint ?? ''));
  }));
});
