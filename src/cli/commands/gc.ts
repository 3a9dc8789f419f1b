import { gc } from '../../engine/gc.ts';
import { defineCommand } from '../command.ts';

export default defineCommand({
  name: 'gc',
  summary: 'reconcile the store and the kernel after a crash',
  async run({ ctx, io }) {
    const done = await gc(ctx);
    if (!io.quiet) io.out(done.length ? done.join('\n') : 'gc: store and kernel agree');
  },
});
