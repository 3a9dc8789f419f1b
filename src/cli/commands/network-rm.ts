import { removeNetwork } from '../../engine/network.ts';
import { parseName } from '../../model/names.ts';
import { defineCommand } from '../command.ts';

export default defineCommand({
  name: 'network rm',
  aliases: ['remove'],
  summary: 'remove networks (refused while sandboxes are attached, unless --force)',
  args: ['<name...>'],
  options: [{ flags: '-f, --force', description: 'disconnect attached sandboxes first' }],
  async run({ ctx, args, opts }) {
    const force = opts.force ?? false;
    for (const name of args.name) {
      parseName('network', name);
      if (!ctx.store.network(name)) ctx.warn(`no network named ${name}: nothing to remove`);
      await removeNetwork(ctx, name, { force });
    }
  },
});
