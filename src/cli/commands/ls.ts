import { clusterSandboxes } from '../../engine/directory.ts';
import { sandboxSummary } from '../../engine/inspect.ts';
import { defineCommand } from '../command.ts';
import { table } from '../table.ts';

const labelText = (labels: Readonly<Record<string, string>>) => Object.entries(labels).map(([k, v]) => `${k}=${v}`).join(',') || '-';

export default defineCommand({
  name: 'ls',
  aliases: ['list'],
  summary: 'list sandboxes (--all: on every host of the cluster, read from etcd)',
  options: [{ flags: '-a, --all', description: 'sandboxes of every host of the cluster: this host\'s, and the others\' on overlay networks (from etcd)' }],
  json: true,
  async run({ ctx, opts, io }) {
    if (opts.all) {
      const { self, sandboxes, bad } = await clusterSandboxes(ctx);
      for (const b of bad) io.warn(`unreadable directory entry ${b}`);
      if (io.json) return io.out(JSON.stringify(sandboxes, null, 2));
      io.out(table(['HOST', 'NAME', 'NETWORKS', 'ADDRESSES', 'LABELS'],
        sandboxes.map((s) => [s.host + (s.host === self ? ' *' : ''), s.name, s.networks.join(',') || '-', s.addresses.join(',') || '-', labelText(s.labels)])));
      return;
    }
    const rows = ctx.store.sandboxes().map((s) => sandboxSummary(ctx, s));
    if (io.json) return io.out(JSON.stringify(rows, null, 2));
    io.out(table(['NAME', 'NETWORKS', 'ADDRESSES', 'PORTS', 'STATE', 'NETNS'],
      rows.map((r) => [r.name, r.networks.join(','), r.addresses.join(','), r.ports.join(',') || '-', r.state, r.netns])));
  },
});
