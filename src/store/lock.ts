// A named lock between the processes of one state directory (the CLI, ctnetd), for work that spans
// etcd and the store and so cannot live in one store transaction: an exclusive SQLite lock on a file
// of its own. SQLite's locks are POSIX file locks, so a killed holder releases it at once.
import { DatabaseSync } from 'node:sqlite';
import { join } from 'node:path';
import { CtnetError } from '../errors.ts';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * Runs fn holding STATE_DIR/NAME.lock. Waits without blocking the event loop (ctnetd serves while
 * it waits): SQLite's own busy timeout would sleep synchronously.
 */
export async function withLock<T>(dir: string, name: string, fn: () => Promise<T>, waitMs = 60_000): Promise<T> {
  const db = new DatabaseSync(join(dir, `${name}.lock`), { timeout: 0 });
  try {
    const start = performance.now();
    for (;;) {
      try {
        db.exec('PRAGMA locking_mode = EXCLUSIVE; BEGIN EXCLUSIVE');
        break;
      } catch {
        if (performance.now() - start > waitMs) {
          throw new CtnetError('UNAVAILABLE', `another ctnet process has held the ${name} lock in ${dir} for ${waitMs / 1000} s`, 'wait for it to finish, or run ctnet gc if it was killed');
        }
        await sleep(10 + Math.random() * 20);
      }
    }
    return await fn();
  } finally {
    db.close();
  }
}
