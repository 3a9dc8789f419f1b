import { inspectNetwork } from '../../engine/inspect.ts';
import { defineCommand } from '../command.ts';
import { renderNetwork } from '../render.ts';

export default defineCommand({
  name: 'network inspect',
  summary: 'show a network: bridge, ports, learned FDB entries, sandboxes',
  args: ['<name>'],
  json: true,
  async run({ ctx, args, io }) {
    const v = await inspectNetwork(ctx, args.name);
    io.out(io.json ? JSON.stringify(v, null, 2) : renderNetwork(v));
  },
});
