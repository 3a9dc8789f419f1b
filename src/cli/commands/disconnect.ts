import { disconnect } from '../../engine/sandbox.ts';
import { parseName } from '../../model/names.ts';
import { defineCommand } from '../command.ts';

export default defineCommand({
  name: 'disconnect',
  summary: 'disconnect a sandbox from a network',
  args: ['<network>', '<name>'],
  async run({ ctx, args }) {
    await disconnect(ctx, parseName('network', args.network), parseName('sandbox', args.name));
  },
});
