// Starts ctnetd for a state directory in the background, as the CNI plugin does (src/cni/client.c):
// its own session, stderr appended to STATE_DIR/ctnetd.log, in the caller's network namespace.
// Several starters may race: the daemon takes a lock and the losers exit at once.
import { spawn } from 'node:child_process';
import { closeSync, openSync } from 'node:fs';
import { join } from 'node:path';
import { ROOT } from '../root.ts';

export function startDaemon(stateDir: string): number | undefined {
  const log = openSync(join(stateDir, 'ctnetd.log'), 'a');
  try {
    const child = spawn(join(ROOT, 'bin', 'ctnet'), ['daemon', '--state-dir', stateDir], { detached: true, stdio: ['ignore', 'ignore', log] });
    child.unref();
    return child.pid;
  } finally {
    closeSync(log);
  }
}
