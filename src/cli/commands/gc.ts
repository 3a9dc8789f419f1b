import { gc } from '../../engine/gc.ts';
import { daemonPid } from '../../daemon/server.ts';
import { startDaemon } from '../../daemon/spawn.ts';
import { defineCommand } from '../command.ts';

export default defineCommand({
  name: 'gc',
  summary: 'reconcile the store and the kernel after a crash',
  async run({ ctx, io }) {
    const done = await gc(ctx);
    // A cluster member without ctnetd (killed with the rest of a crash) loses its etcd lease, and with
    // it its peers and its directory entries: gc starts it again, and the daemon re-registers and
    // republishes from the store at start (docs/overlay.md).
    if (ctx.store.member() && !ctx.applier.dryRun && daemonPid(io.stateDir) === undefined) {
      const pid = startDaemon(io.stateDir);
      done.push(`started ctnetd (pid ${pid}), which was not running: it keeps this host's etcd lease and directory entries`);
    }
    if (!io.quiet) io.out(done.length ? done.join('\n') : 'gc: store and kernel agree');
  },
});
