import { listPolicies } from '../../engine/policy.ts';
import { defineCommand } from '../command.ts';
import { table } from '../table.ts';

export default defineCommand({
  name: 'policy ls',
  aliases: ['list'],
  summary: 'list rules with their hit counters (new connections each decided)',
  json: true,
  async run({ ctx, io }) {
    const rows = await listPolicies(ctx);
    if (io.json) return io.out(JSON.stringify(rows, null, 2));
    io.out(table(['ID', 'NAME', 'ACTION', 'FROM', 'TO', 'PORT', 'HITS'],
      rows.map((r) => [String(r.id), r.name, r.action, r.from, r.to, r.port ?? 'any', String(r.hits.packets)])));
  },
});
