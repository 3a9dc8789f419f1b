import { moveDefaultRoute } from '../../engine/sandbox.ts';
import { parseName } from '../../model/names.ts';
import { defineCommand } from '../command.ts';

export default defineCommand({
  name: 'route',
  summary: 'choose the network that carries a sandbox\'s default routes, live',
  args: ['<name>'],
  options: [
    { flags: '--via <network>', description: 'a network the sandbox is on (not --internal)', required: true },
  ],
  async run({ ctx, args, opts, io }) {
    const name = parseName('sandbox', args.name);
    await moveDefaultRoute(ctx, name, parseName('network', opts.via));
    if (!io.quiet) io.out(`${name}: default route via network ${opts.via}`);
  },
});
