// The vxlan driver: an overlay network across hosts, in flannel's L3 model. On each host the network
// is a bridge whose gateway is the first address of the host's lease (as a bridge network's, so
// sandboxes attach exactly as there), plus one VXLAN device that is NOT a port of the bridge: the
// host routes between them. Each remote host's lease is one route via its VTEP's address on the
// VXLAN device, with one neighbour and one fdb entry (peers.ts): three entries per host, never per
// sandbox, and no broadcast, ARP or MAC learning crosses hosts. Routing (rather than one stretched
// L2 segment) also keeps every cross-host packet in the host's forward chain (isolation, policy,
// spoofing checks) and lets each host's bridge table keep checking its own ports.
// MTU: the bridge, the VXLAN device and every sandbox interface get the underlay's MTU less 50.
// Pure but for observe().
import { CtnetError } from '../../errors.ts';
import type { KernelBackend } from '../../kernel/backend.ts';
import { insideOverlay, vtepAddress } from '../../model/overlay.ts';
import { networkElements, type NetworkFacts } from '../../nft/ruleset.ts';
import type { Op } from '../../plan/ops.ts';
import { step, type Step } from '../../plan/plan.ts';
import { bridgeDriver, bridgeFacts, bridgeOps, refuseRouterAdvertisements, routeLocalnet, unrouted } from '../bridge/bridge.ts';
import type { DriverNetwork, Drift, HostView, NetworkDriver } from '../driver.ts';
import { entriesOf, entryText, leaseOf, localVtep, observePeers, overlayOf, planPeers } from './peers.ts';

/** The nft facts of an overlay network: its bridge's, and its VXLAN device, overlay subnets, VNI, port and peers. */
export function overlayFacts(n: DriverNetwork): NetworkFacts {
  const o = overlayOf(n);
  return { ...bridgeFacts(n), overlay: { device: o.device, cidrs: o.cidrs, vni: o.vni, port: o.port, vteps: [...new Set(o.peers.map((p) => p.underlay))] } };
}

/**
 * Equivalent to:
 *   ip link add VXLAN address MAC mtu MTU type vxlan id VNI local UNDERLAY_IP dev UNDERLAY_IF dstport PORT nolearning
 *   ip addr add VTEP_ADDR/32 dev VXLAN; ip link set VXLAN up
 * The /32 (the lease's network address) is the source of what the host itself sends into the
 * overlay, so replies find their way back; and what peers route this host's lease via.
 */
function vtepOps(n: DriverNetwork): Op[] {
  const o = overlayOf(n);
  return [
    { kind: 'link.add.vxlan', name: o.device, mac: o.vtepMac, vni: o.vni, local: o.underlay.ip, dev: o.underlay.dev, port: o.port, mtu: n.mtu ?? undefined },
    { kind: 'addr.add', cidr: `${vtepAddress(leaseOf(n).cidr)}/32`, dev: o.device },
    { kind: 'link.set.up', name: o.device },
  ];
}

const vtepNote = (n: DriverNetwork) => {
  const o = overlayOf(n);
  return `network ${n.name}: VXLAN ${o.device} (VNI ${o.vni}, UDP ${o.port}) on ${o.underlay.dev} ${o.underlay.ip}, VTEP ${vtepAddress(leaseOf(n).cidr)} ${o.vtepMac}`;
};

export const vxlanDriver: NetworkDriver = {
  name: 'vxlan',

  validate(n: DriverNetwork, host: HostView): void {
    const o = overlayOf(n);
    if (n.subnets.some((s) => s.family !== 4)) {
      throw new CtnetError('INVALID_ARGUMENT', `overlay network ${n.name} has an IPv6 subnet`, 'overlay networks carry IPv4 only');
    }
    const lease = leaseOf(n);
    if (!insideOverlay(o.cidrs, lease.cidr)) {
      throw new CtnetError('INVALID_ARGUMENT', `lease ${lease.cidr} is outside overlay network ${n.name}'s ${o.cidrs.join(', ')}`, 'the lease must be a subnet of the overlay');
    }
    for (const dev of [n.device, o.device]) {
      if (host.interfaces.has(dev)) throw new CtnetError('CONFLICT', `an interface named ${dev} exists already`, 'choose another network name');
    }
    if (!host.interfaces.has(o.underlay.dev)) {
      throw new CtnetError('NOT_FOUND', `underlay interface ${o.underlay.dev} does not exist on this host`, 'name the interface that has the underlay address');
    }
    // The whole overlay, not only this host's lease: every other host's lease is routed here too.
    unrouted(o.cidrs, host);
  },

  planCreate(n: DriverNetwork): Step[] {
    const f = overlayFacts(n);
    return [
      step([...bridgeOps(n), refuseRouterAdvertisements(n), ...routeLocalnet(n)], `network ${n.name}: bridge ${n.device} with ${n.subnets.map((s) => `${s.cidr} (gateway ${s.gateway})`).join(', ')}`),
      step(vtepOps(n), vtepNote(n)),
      step([{ kind: 'nft', lines: networkElements('add', f), undo: networkElements('delete', f) }]),
    ];
  },

  // A sandbox joins the overlay as it joins a bridge network: a veth on the bridge (at the overlay MTU).
  planAttach: (n, a, extraNft) => bridgeDriver.planAttach(n, a, extraNft),
  planDetach: (n, a, extraDel) => bridgeDriver.planDetach(n, a, extraDel),
  planShape: (n, a, want, have) => bridgeDriver.planShape!(n, a, want, have),

  planRemove(n): Step[] {
    const o = overlayOf(n);
    return [
      step([{ kind: 'nft.delete', lines: networkElements('delete', overlayFacts(n)) }], `remove network ${n.name}`),
      // The peers' neigh, fdb and route entries go with the device.
      step([{ kind: 'link.del', name: o.device }]),
      step([{ kind: 'link.del', name: n.device }]),
    ];
  },

  planRepair(n, drift): Step[] {
    const o = overlayOf(n);
    switch (drift.kind) {
      case 'device-missing':
      case 'port-detached':
      case 'port-missing':
      case 'setting':
        return bridgeDriver.planRepair(n, drift);
      case 'vtep-missing':
        return [step(vtepOps(n), `recreate ${vtepNote(n)}`), ...planPeers(n, localVtep(n), o.peers, [])];
      case 'peer-missing':
        // Replace verbs: entries that are right stay as they are, the others are written.
        return planPeers(n, localVtep(n), [drift.peer], []);
    }
  },

  async observe(kernel: KernelBackend, n: DriverNetwork, attachments): Promise<Drift[]> {
    const o = overlayOf(n);
    const drift = await bridgeDriver.observe(kernel, n, attachments);
    if (!(await kernel.link(o.device))) return [...drift, { kind: 'vtep-missing' }];
    const { entries } = await observePeers(kernel, n);
    const held = new Set(entries.map(entryText));
    for (const p of o.peers) {
      // The nft element is the tables' (gc rewrites them from the store); the kernel's three entries are checked here.
      const kernelEntries = entriesOf(p).filter((e) => e.kind !== 'vtep');
      if (!kernelEntries.every((e) => held.has(entryText(e)))) drift.push({ kind: 'peer-missing', peer: p });
    }
    return drift;
  },
};
