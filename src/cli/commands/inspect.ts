import { inspectSandbox } from '../../engine/inspect.ts';
import { parseName } from '../../model/names.ts';
import { defineCommand } from '../command.ts';
import { renderSandbox } from '../render.ts';

export default defineCommand({
  name: 'inspect',
  summary: 'show a sandbox: interfaces with their host peers, addresses, routes, neighbours',
  args: ['<name>'],
  json: true,
  async run({ ctx, args, io }) {
    const v = await inspectSandbox(ctx, parseName('sandbox', args.name));
    io.out(io.json ? JSON.stringify(v, null, 2) : renderSandbox(v));
  },
});
