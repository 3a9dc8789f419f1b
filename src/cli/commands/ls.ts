import { sandboxSummary } from '../../engine/inspect.ts';
import { defineCommand } from '../command.ts';
import { table } from '../table.ts';

export default defineCommand({
  name: 'ls',
  aliases: ['list'],
  summary: 'list sandboxes',
  json: true,
  async run({ ctx, io }) {
    const rows = ctx.store.sandboxes().map((s) => sandboxSummary(ctx, s));
    if (io.json) return io.out(JSON.stringify(rows, null, 2));
    io.out(table(['NAME', 'NETWORKS', 'ADDRESSES', 'PORTS', 'STATE', 'NETNS'],
      rows.map((r) => [r.name, r.networks.join(','), r.addresses.join(','), r.ports.join(',') || '-', r.state, r.netns])));
  },
});
