import { networkSummary } from '../../engine/inspect.ts';
import { defineCommand } from '../command.ts';
import { table } from '../table.ts';

export default defineCommand({
  name: 'network ls',
  aliases: ['list'],
  summary: 'list networks',
  json: true,
  async run({ ctx, io }) {
    const rows = ctx.store.networks().map((n) => networkSummary(ctx, n.name));
    if (io.json) return io.out(JSON.stringify(rows, null, 2));
    io.out(table(['NAME', 'BRIDGE', 'SUBNETS', 'INTERNAL', 'SANDBOXES', 'STATE'],
      rows.map((r) => [r.name, r.bridge, r.subnets.join(','), r.internal ? 'yes' : 'no', String(r.sandboxes), r.state])));
  },
});
