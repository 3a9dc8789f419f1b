// The bridge driver: a Linux bridge per network, its gateway addresses on the bridge, a veth pair per
// sandbox with the host end on the bridge (seed 001 and 002, as plans). Pure but for observe().
import { CtnetError } from '../../errors.ts';
import type { KernelBackend } from '../../kernel/backend.ts';
import { overlaps, parseSubnet } from '../../model/cidr.ts';
import type { Op } from '../../plan/ops.ts';
import { sideBySide, step, type Step } from '../../plan/plan.ts';
import { endpointElements, networkElements, type NetworkFacts } from '../../nft/ruleset.ts';
import type { DriverNetwork, Drift, HostView, NetworkDriver } from '../driver.ts';
import { hostShapeSteps } from '../shape.ts';

const prefixOf = (cidr: string) => cidr.split('/')[1];

/** The nft facts of a bridge network (the vxlan driver adds its overlay's). */
export function bridgeFacts(n: DriverNetwork): NetworkFacts {
  return { bridge: n.device, internal: n.internal, isolate: n.isolate, hostAccess: n.hostAccess, dns: n.dns, subnets: n.subnets, egress: n.egress };
}

type Setting = Extract<Op, { kind: 'sysctl.set' }>;

/** Equivalent to: sysctl -w net.ipv4.conf.BRIDGE.route_localnet=1 */
export function routeLocalnet(n: DriverNetwork): Setting[] {
  // Published ports reached at 127.0.0.1 are DNATed to a sandbox behind this bridge: the kernel only
  // routes a loopback source out of an interface with route_localnet (the guard chain keeps
  // sandboxes themselves off the host's loopback).
  return n.subnets.some((s) => s.family === 4) ? [{ kind: 'sysctl.set', key: `net/ipv4/conf/${n.device}/route_localnet`, value: '1' }] : [];
}

/** Equivalent to: sysctl -e -w net.ipv6.conf.BRIDGE.accept_ra=0 */
export function refuseRouterAdvertisements(n: { readonly device: string }): Setting {
  // The bridge is the host's side of its sandboxes' link: a sandbox's router advertisement must not
  // give the host a prefix or a default route (the kernel accepts them on a link that does not
  // forward, and always with accept_ra=2). This holds even while ctnet's nft tables, which drop
  // sandboxes' RAs, are gone. Where IPv6 is off there is nothing to refuse.
  return { kind: 'sysctl.set', key: `net/ipv6/conf/${n.device}/accept_ra`, value: '0', ifExists: true };
}

/** The bridge with its gateway addresses, up. */
export function bridgeOps(n: DriverNetwork): Op[] {
  if (!n.mac) throw new Error(`network ${n.name} has no recorded bridge MAC`);
  return [
    // A fixed MAC: otherwise the bridge takes its lowest port's and changes as sandboxes come and go.
    { kind: 'link.add.bridge', name: n.device, mac: n.mac, mtu: n.mtu ?? undefined },
    ...n.subnets.map((s): Op => ({ kind: 'addr.add', cidr: `${s.gateway}/${prefixOf(s.cidr)}`, dev: n.device })),
    { kind: 'link.set.up', name: n.device },
  ];
}

/** Routes print host routes without a prefix and IPv4 networks unpadded (10/8); make a CIDR. */
export function normalise(dst: string): string {
  const withLen = dst.includes('/') ? dst : `${dst}/${dst.includes(':') ? 128 : 32}`;
  const [addr, len] = withLen.split('/');
  if (!addr!.includes(':') && addr!.split('.').length < 4) return `${[...addr!.split('.'), '0', '0', '0'].slice(0, 4).join('.')}/${len}`;
  return withLen;
}

/** Throws when a subnet overlaps a route the host has already (another network, a LAN). */
export function unrouted(cidrs: readonly string[], host: HostView): void {
  for (const cidr of cidrs) {
    const mine = parseSubnet('subnet', cidr);
    for (const r of host.routes) {
      let routed;
      try {
        routed = parseSubnet('route', normalise(r.dst));
      } catch {
        continue; // multicast, link-local and such: not something a subnet competes with
      }
      if (overlaps(mine, routed)) {
        throw new CtnetError('CONFLICT', `subnet ${cidr} overlaps ${r.dst}, routed via ${r.via} on this host`, 'choose a subnet this host does not already reach');
      }
    }
  }
}

export const bridgeDriver: NetworkDriver = {
  name: 'bridge',

  validate(n: DriverNetwork, host: HostView): void {
    if (host.interfaces.has(n.device)) {
      throw new CtnetError('CONFLICT', `an interface named ${n.device} exists already`, 'choose another --bridge (or network name)');
    }
    unrouted(n.subnets.map((s) => s.cidr), host);
  },

  planCreate(n: DriverNetwork): Step[] {
    const elements = networkElements('add', bridgeFacts(n));
    return [
      step([...bridgeOps(n), refuseRouterAdvertisements(n), ...routeLocalnet(n)], `network ${n.name}: bridge ${n.device} with ${n.subnets.map((s) => `${s.cidr} (gateway ${s.gateway})`).join(', ')}`),
      step([{ kind: 'nft', lines: elements, undo: networkElements('delete', bridgeFacts(n)) }]),
    ];
  },

  planAttach(n, a, extraNft = { add: [], del: [] }): Step[] {
    const ns = a.netns;
    const endpoint = { bridge: n.device, addresses: a.addresses, port: { name: a.hostVeth, mac: a.mac } };
    return [
      // The nft elements name the bridge and addresses, not the veth: they go in side by side with
      // the host's half of the link (both undone, whichever failed).
      sideBySide([
        [
          { kind: 'link.add.veth', name: a.hostVeth, peer: a.ifname, peerNetns: ns, peerMac: a.mac, mtu: n.mtu ?? undefined },
          { kind: 'link.set.master', name: a.hostVeth, master: n.device },
          { kind: 'link.set.hairpin', name: a.hostVeth },
          { kind: 'link.set.up', name: a.hostVeth },
        ],
        [{ kind: 'nft', lines: [...endpointElements('add', endpoint), ...extraNft.add], undo: [...endpointElements('delete', endpoint), ...extraNft.del] }],
      ], `${a.sandbox}: ${a.ifname} on network ${n.name} (${a.addresses.map((x) => x.ip).join(', ')}), host side ${a.hostVeth}`),
      step([
        ...a.addresses.map((x): Op => ({ kind: 'addr.add', cidr: `${x.ip}/${prefixOf(x.cidr)}`, dev: a.ifname, netns: ns })),
        { kind: 'link.set.up', name: a.ifname, netns: ns },
        ...a.defaults.map((d): Op => ({ kind: 'route.replace.default', via: d.via, dev: a.ifname, netns: ns, previous: d.previous })),
      ]),
    ];
  },

  planDetach(n, a, extraDel = []): Step[] {
    // Independent, and each idempotent: the veth deletion (the kernel's slowest step) and the nft
    // transaction run side by side. Deleting the host end removes the sandbox's end too.
    return [
      sideBySide([
        [{ kind: 'link.del', name: a.hostVeth }],
        [{ kind: 'nft.delete', lines: [...endpointElements('delete', { bridge: n.device, addresses: a.addresses, port: { name: a.hostVeth, mac: a.mac } }), ...extraDel] }],
      ], `${a.sandbox}: remove ${a.ifname} from network ${n.name}`),
      step(a.addresses.length ? [{ kind: 'conntrack.forget', filter: { kind: 'addresses', ips: a.addresses.map((x) => x.ip) } }] : []),
    ];
  },

  planShape: (_n, a, want, have) => hostShapeSteps(a, want, have),

  planRemove(n): Step[] {
    return [
      step([{ kind: 'nft.delete', lines: networkElements('delete', bridgeFacts(n)) }], `remove network ${n.name}`),
      step([{ kind: 'link.del', name: n.device }]),
    ];
  },

  planRepair(n, drift): Step[] {
    switch (drift.kind) {
      case 'device-missing': return [step([...bridgeOps(n), refuseRouterAdvertisements(n), ...routeLocalnet(n)], `recreate bridge ${n.device} of network ${n.name}`)];
      case 'port-detached':
        return [step([{ kind: 'link.set.master', name: drift.hostVeth, master: n.device }, { kind: 'link.set.up', name: drift.hostVeth }],
          `put ${drift.hostVeth} of ${drift.sandbox} back on bridge ${n.device}`)];
      case 'port-missing': return []; // the use case plugs the sandbox in again with planAttach
      case 'vtep-missing':
      case 'peer-missing':
        return []; // an overlay's: never observed on a bridge network
      case 'setting': return [step([{ kind: 'sysctl.set', key: drift.key, value: drift.want }], `${drift.key}=${drift.want} again (${drift.why})`)];
    }
  },

  async observe(kernel: KernelBackend, n: DriverNetwork, attachments): Promise<Drift[]> {
    const ports = new Map((await kernel.linksOf(n.device).catch(() => [])).map((l) => [l.ifname, l]));
    const bridge = await kernel.link(n.device);
    if (!bridge) return [{ kind: 'device-missing' }];
    const drift: Drift[] = [];
    // Settings someone changed (or an older ctnet did not make) are set again.
    const ra = refuseRouterAdvertisements(n);
    const acceptRa = kernel.sysctl(ra.key);
    if (acceptRa !== undefined && acceptRa !== ra.value) drift.push({ kind: 'setting', key: ra.key, have: acceptRa, want: ra.value, why: 'the host takes no router advertisement from its sandboxes' });
    for (const op of routeLocalnet(n)) {
      const have = kernel.sysctl(op.key);
      if (have !== undefined && have !== op.value) drift.push({ kind: 'setting', key: op.key, have, want: op.value, why: 'published ports reached at 127.0.0.1' });
    }
    for (const a of attachments) {
      if (ports.has(a.hostVeth)) continue;
      const link = await kernel.link(a.hostVeth);
      drift.push({ kind: link ? 'port-detached' : 'port-missing', sandbox: a.sandbox, hostVeth: a.hostVeth });
    }
    return drift;
  },
};
