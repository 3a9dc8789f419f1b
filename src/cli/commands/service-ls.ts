import { listServices } from '../../engine/services.ts';
import { formatPublish } from '../../model/service.ts';
import { defineCommand } from '../command.ts';
import { table } from '../table.ts';

export default defineCommand({
  name: 'service ls',
  aliases: ['list'],
  summary: 'list services: VIP, port, selector, backends (ready and not), new connections balanced',
  json: true,
  async run({ ctx, io }) {
    const rows = await listServices(ctx);
    if (io.json) return io.out(JSON.stringify(rows, null, 2));
    io.out(table(['NAME', 'NETWORK', 'VIP', 'PORT', 'PUBLISHED', 'TO', 'AFFINITY', 'BACKENDS', 'NOT READY', 'CONNECTIONS'],
      rows.map((s) => [s.name, s.network, s.vip, `${s.port}/${s.proto}`, s.publish ? formatPublish(s.publish) : '-', s.to, s.affinity,
        s.backends.join(' ') || 'none', s.notReady.join(' ') || '-', String(s.connections)])));
  },
});
