// Human-readable forms of the inspect views (the --json forms are the views themselves).
import type { NetworkView, SandboxView } from '../engine/inspect.ts';
import { table } from './table.ts';

export function renderSandbox(v: SandboxView): string {
  const lines = [
    `sandbox ${v.name}  (${v.state}${v.present ? '' : ', NETNS MISSING: run ctnet gc'})`,
    `  netns      ${v.netns}${v.owned ? '' : '  (not ctnet\'s: attached by --netns/--pid)'}`,
    `  created    ${v.created}`,
    `  processes  ${v.pids.length ? v.pids.join(' ') : 'none'}`,
    `  labels     ${Object.entries(v.labels).map(([k, x]) => `${k}=${x}`).join(' ') || 'none'}`,
    ...(v.egress.length ? [`  egress     from ${v.egress.join(', ')} (--egress-ip)`] : []),
    ...(v.defaultRoute ? [`  default    routes via network ${v.defaultRoute} (chosen)`] : []),
    ...v.cni.map((c) => `  cni        container ${c.containerId}, ${c.ifname} on CNI network ${c.cniNetwork}`),
    '',
    'interfaces:',
    indent(table(['IFNAME', 'IFINDEX', 'NETWORK', 'MAC', 'STATE', 'ADDRESSES', 'HOST PEER (IFINDEX) @ BRIDGE', 'ALIASES'],
      v.interfaces.map((i) => [i.ifname, String(i.ifindex ?? '-'), i.network, i.mac, i.state, i.addresses.join(' '),
        `${i.hostPeer.ifname} (${i.hostPeer.ifindex ?? 'missing'}) @ ${i.hostPeer.bridge ?? '-'}`, i.aliases.join(',') || '-']))),
    ...v.interfaces.filter((i) => i.shaping).map((i) => `  ${i.ifname} shaped: ${Object.entries(i.shaping!).map(([k, x]) => `${k} ${x}`).join(', ')}`),
    '',
    'published ports:',
    v.ports.length
      ? indent(table(['MAPPING', 'HOST', 'TO'], v.ports.map((p) => [p.spec, p.bindings.join(', ') || '-', p.to.join(' ') || 'inactive: no network with a way out'])))
      : '  none',
    '',
    'routes:',
    indent(table(['DESTINATION', 'GATEWAY', 'DEV', 'SCOPE'], v.routes.map((r) => [r.dst, r.gateway ?? '-', r.dev ?? '-', r.scope ?? '-']))),
    '',
    'neighbours:',
    v.neighbours.length
      ? indent(table(['ADDRESS', 'DEV', 'MAC', 'STATE'], v.neighbours.map((n) => [n.dst, n.dev, n.lladdr ?? '-', (n.state ?? []).join(',')])))
      : '  none yet',
  ];
  return lines.join('\n');
}

export function renderNetwork(v: NetworkView): string {
  const b = v.bridge;
  return [
    `network ${v.name}  (${v.state}${v.internal ? ', internal: no egress' : ''})`,
    `  bridge     ${b.ifname} (ifindex ${b.ifindex ?? 'MISSING'}, ${b.mac ?? '-'}, mtu ${b.mtu ?? '-'}, ${b.state})`,
    ...v.subnets.map((s) => `  subnet     ${s.cidr}  gateway ${s.gateway}`),
    `  egress     ${v.internal ? 'none' : v.egress.length ? `from ${v.egress.join(', ')} (--egress-ip)` : 'masqueraded'}`,
    `  dns        ${v.dns.enabled ? `on the gateways; other names to ${v.internal ? 'nowhere (internal)' : v.dns.forward.join(', ') || 'the host\'s resolvers'}` : 'off'}`,
    '',
    'ports:',
    v.ports.length ? indent(table(['IFNAME', 'IFINDEX', 'STATE', 'SANDBOX'], v.ports.map((p) => [p.ifname, String(p.ifindex), p.state, p.sandbox ?? '-']))) : '  none',
    '',
    'learned FDB entries (MAC -> port):',
    v.fdb.length ? indent(table(['MAC', 'PORT', 'SANDBOX'], v.fdb.map((f) => [f.mac, f.port, f.sandbox ?? '-']))) : '  none yet',
    '',
    'sandboxes:',
    v.sandboxes.length ? indent(table(['NAME', 'IFNAME', 'MAC', 'ADDRESSES', 'ALIASES'], v.sandboxes.map((s) => [s.name, s.ifname, s.mac, s.addresses.join(' '), s.aliases.join(',') || '-']))) : '  none',
    ...(v.overlay ? renderOverlay(v.overlay) : []),
  ].join('\n');
}

function renderOverlay(o: NonNullable<NetworkView['overlay']>): string[] {
  const yes = (b: boolean) => (b ? 'yes' : 'MISSING');
  return [
    '',
    `overlay    VNI ${o.vni}, UDP ${o.port}, ${o.subnet}; this host's lease ${o.lease}`,
    `  vxlan    ${o.device} (${o.deviceState}), VTEP MAC ${o.vtepMac}, underlay ${o.underlay}`,
    'peers (three kernel entries each: neigh, fdb, route):',
    o.peers.length
      ? indent(table(['HOST', 'SUBNET', 'UNDERLAY', 'VTEP MAC', 'NEIGH', 'FDB', 'ROUTE'], o.peers.map((p) => [p.host, p.subnet, p.underlay, p.vtepMac, yes(p.neigh), yes(p.fdb), yes(p.route)])))
      : '  none yet (no other host has a lease)',
  ];
}

const indent = (s: string) => s.split('\n').map((l) => `  ${l}`).join('\n');
