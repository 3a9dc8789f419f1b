import { parseEgress } from '../../engine/egress.ts';
import { createNetwork } from '../../engine/network.ts';
import { createOverlayNetwork } from '../../engine/overlay-network.ts';
import { invalid } from '../../errors.ts';
import { parseNetworkSpec } from '../../model/spec.ts';
import { defineCommand } from '../command.ts';

const DRIVERS = ['bridge', 'vxlan', 'macvlan', 'ipvlan'];

export default defineCommand({
  name: 'network create',
  summary: 'create a network: a bridge on this host, (--driver vxlan) an overlay across the cluster\'s hosts, or (macvlan, ipvlan) a host interface\'s segment',
  args: ['<name>'],
  options: [
    { flags: '--driver <name>', description: 'bridge (default); vxlan: an overlay network across the hosts of the cluster (ctnet cluster join); macvlan, ipvlan: sandboxes straight on --parent\'s segment' },
    { flags: '--parent <ifname>', description: 'macvlan/ipvlan: the host interface whose segment the sandboxes join' },
    { flags: '--mode <mode>', description: 'macvlan: bridge (default), private, vepa; ipvlan: l2 (default), l3' },
    { flags: '--host-shim', description: 'macvlan/ipvlan: give the host an interface of its own on the segment (the subnet\'s last address), so host and sandboxes reach each other' },
    { flags: '--subnet <cidr>', description: 'a subnet (repeat for IPv4 + IPv6); vxlan: the overlay\'s, of which each host leases a share', repeatable: true },
    { flags: '--gateway <ip>', description: 'gateway address (default: first address of the subnet)', repeatable: true },
    { flags: '--bridge <ifname>', description: 'bridge interface name (default: ctbr-NAME)' },
    { flags: '--internal', description: 'no egress: sandboxes reach only their own network' },
    { flags: '--isolate', description: 'sandboxes on this network may not talk to each other unless a policy allows it (vxlan: on every host)' },
    { flags: '--host-access', description: 'sandboxes may reach every service of the host (by default only ping and published ports)' },
    { flags: '--egress-ip <ip>', description: 'a host address the network\'s egress leaves from instead of the masqueraded one (one per family)', repeatable: true },
    { flags: '--mtu <n>', description: 'MTU of the bridge and the sandboxes\' interfaces (vxlan: at most the underlay\'s less 50, the default)' },
    { flags: '--dns <on|off>', description: 'ctnetd answers DNS for the network\'s sandboxes on its gateways (default on)' },
    { flags: '--dns-forward <ip[,ip]>', description: 'where ctnetd forwards the names that are not the network\'s own (default: the host\'s resolvers; --internal: nowhere)' },
    { flags: '--host-prefix <n>', description: 'vxlan: the prefix of each host\'s share of --subnet (default 24)' },
    { flags: '--vni <n>', description: 'vxlan: the VXLAN network identifier (default: the lowest free)' },
    { flags: '--port <n>', description: 'vxlan: the UDP port of VXLAN (default 4789)' },
  ],
  async run({ ctx, args, opts, io }) {
    const driver = opts.driver ?? 'bridge';
    if (!DRIVERS.includes(driver)) throw invalid(`--driver ${JSON.stringify(driver)} is not a network driver`, `use ${DRIVERS.join(' or ')}`);
    if (driver === 'vxlan') {
      if ((opts.subnet ?? []).length > 1) throw invalid('an overlay network has one --subnet', 'give one IPv4 subnet, e.g. --subnet 10.50.0.0/16');
      if (opts.egressIp?.length) throw invalid('--egress-ip is not for overlay networks yet: their egress leaves each host masqueraded', 'leave it out, or set it per sandbox (ctnet create --egress-ip)');
      if (opts.gateway?.length || opts.bridge) throw invalid('--gateway and --bridge are chosen per host for an overlay network', 'leave them out');
      const n = await createOverlayNetwork(ctx, {
        name: args.name, subnet: opts.subnet?.[0], hostPrefix: opts.hostPrefix, vni: opts.vni, port: opts.port, internal: opts.internal,
        isolate: opts.isolate, hostAccess: opts.hostAccess, mtu: opts.mtu, dns: opts.dns, dnsForward: opts.dnsForward,
      });
      if (!io.quiet) io.out(n.name);
      return;
    }
    for (const [flag, v] of [['--host-prefix', opts.hostPrefix], ['--vni', opts.vni], ['--port', opts.port]] as const) {
      if (v !== undefined) throw invalid(`${flag} is for overlay networks`, 'add --driver vxlan, or leave it out');
    }
    const spec = parseNetworkSpec({
      name: args.name, subnet: opts.subnet, gateway: opts.gateway, bridge: opts.bridge, internal: opts.internal, isolate: opts.isolate, hostAccess: opts.hostAccess, mtu: opts.mtu,
      driver, parent: opts.parent, mode: opts.mode, hostShim: opts.hostShim, dns: opts.dns, dnsForward: opts.dnsForward,
    });
    const n = await createNetwork(ctx, { ...spec, egress: parseEgress('--egress-ip', opts.egressIp) });
    if (!io.quiet) io.out(n.name);
  },
});
