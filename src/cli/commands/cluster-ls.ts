import { clusterStatus } from '../../engine/cluster.ts';
import { defineCommand } from '../command.ts';
import { table } from '../table.ts';

export default defineCommand({
  name: 'cluster ls',
  aliases: ['list'],
  summary: 'list the cluster\'s hosts: underlay, VTEP MAC, subnet leases with the TTL left, health',
  json: true,
  async run({ ctx, io }) {
    const { member, view } = await clusterStatus(ctx);
    if (io.json) return io.out(JSON.stringify({ self: member.host, endpoints: member.endpoints, ...view }, null, 2));
    const ttl = (t: number, g?: number) => (t < 0 ? 'gone' : g ? `${t}/${g} s` : `${t} s`);
    io.out(table(['HOST', 'UNDERLAY', 'VTEP MAC', 'LEASE TTL', 'HEALTH', 'SUBNETS', 'JOINED'],
      view.hosts.map((h) => [
        h.name + (h.name === member.host ? ' *' : ''), h.underlay, h.vtepMac, ttl(h.ttl, h.grantedTtl), h.health,
        h.leases.map((l) => `${l.network} ${l.subnet} (${ttl(l.ttl)})`).join(', ') || '-', h.joined,
      ])));
    if (!view.hosts.some((h) => h.name === member.host)) {
      io.warn(`this host (${member.host}) is not listed in etcd: ctnetd registers it again while it runs (ctnet daemon status)`);
    }
    for (const l of view.orphanLeases) io.warn(`subnet ${l.subnet} of ${l.network} is leased by ${l.value.host}, which is not a member`);
    for (const b of view.bad) io.warn(`unreadable record ${b.key}: ${b.reason}`);
  },
});
