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
    // HOST: the owner of a service on an overlay network (it is removed there); '-' on a bridge network.
    io.out(table(['NAME', 'NETWORK', 'HOST', 'VIP', 'PORT', 'PUBLISHED', 'TO', 'AFFINITY', 'BACKENDS', 'NOT READY', 'CONNECTIONS'],
      rows.map((s) => [s.name, s.network, s.host ?? '-', s.vip6 ? `${s.vip},${s.vip6}` : s.vip, `${s.port}/${s.proto}`, s.publish ? formatPublish(s.publish) : '-', s.to, s.affinity,
        s.backends.join(' ') || 'none', s.notReady.join(' ') || '-', String(s.connections)])));
  },
});
