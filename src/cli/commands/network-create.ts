import { createNetwork } from '../../engine/network.ts';
import { parseNetworkSpec } from '../../model/spec.ts';
import { defineCommand } from '../command.ts';

export default defineCommand({
  name: 'network create',
  summary: 'create a bridge network',
  args: ['<name>'],
  options: [
    { flags: '--subnet <cidr>', description: 'a subnet (repeat for IPv4 + IPv6)', repeatable: true },
    { flags: '--gateway <ip>', description: 'gateway address (default: first address of the subnet)', repeatable: true },
    { flags: '--bridge <ifname>', description: 'bridge interface name (default: ctbr-NAME)' },
    { flags: '--internal', description: 'no egress: sandboxes reach only their own network' },
    { flags: '--isolate', description: 'sandboxes on this network may not talk to each other unless a policy allows it' },
    { flags: '--host-access', description: 'sandboxes may reach every service of the host (by default only ping and published ports)' },
    { flags: '--mtu <n>', description: 'MTU of the bridge and the sandboxes\' interfaces' },
  ],
  async run({ ctx, args, opts, io }) {
    const spec = parseNetworkSpec({ name: args.name, subnet: opts.subnet, gateway: opts.gateway, bridge: opts.bridge, internal: opts.internal, isolate: opts.isolate, hostAccess: opts.hostAccess, mtu: opts.mtu });
    const n = await createNetwork(ctx, spec);
    if (!io.quiet) io.out(n.name);
  },
});
