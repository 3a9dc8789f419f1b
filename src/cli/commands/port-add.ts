import { publish } from '../../engine/publish.ts';
import { parsePortSpec } from '../../model/ports.ts';
import { parseName } from '../../model/names.ts';
import { defineCommand } from '../command.ts';

export default defineCommand({
  name: 'port add',
  summary: 'publish more ports of a live sandbox',
  args: ['<name>', '<spec...>'],
  options: [{ flags: '--force', description: 'publish even when a host process listens on the host port' }],
  async run({ ctx, args, opts }) {
    const req = { mappings: args.spec.map(parsePortSpec), force: opts.force ?? false };
    await publish(ctx, parseName('sandbox', args.name), req);
  },
});
