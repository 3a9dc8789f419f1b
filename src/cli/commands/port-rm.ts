import { unpublish } from '../../engine/publish.ts';
import { parsePortSpec } from '../../model/ports.ts';
import { parseName } from '../../model/names.ts';
import { defineCommand } from '../command.ts';

export default defineCommand({
  name: 'port rm',
  aliases: ['remove'],
  summary: 'unpublish ports of a live sandbox (and end the flows still using them)',
  args: ['<name>', '<spec...>'],
  async run({ ctx, args }) {
    await unpublish(ctx, parseName('sandbox', args.name), args.spec.map(parsePortSpec));
  },
});
