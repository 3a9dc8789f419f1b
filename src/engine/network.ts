// Use cases for networks: create and remove one. What its device is, the driver decides.
import { CtnetError } from '../errors.ts';
import type { DriverNetwork, HostView } from '../drivers/driver.ts';
import { driverFor } from '../drivers/index.ts';
import { overlaps, parseSubnet } from '../model/cidr.ts';
import { randomMac } from '../model/mac.ts';
import type { NetworkSpec } from '../model/spec.ts';
import { baseScript, dropTableScript } from '../nft/ruleset.ts';
import type { Op } from '../plan/ops.ts';
import { step, type Step } from '../plan/plan.ts';
import { overlayMtu } from '../model/overlay.ts';
import type { NetworkRow, OverlayRow } from '../store/store.ts';
import type { Ctx } from './context.ts';
import { bridgeName, shimName, vxlanName } from './naming.ts';
import { formatAddr, hostRange } from '../model/cidr.ts';
import { driverNetwork, driverOf, sandboxNetns } from './records.ts';
import { disconnect } from './sandbox.ts';
import { forwardSteps } from './forward.ts';
import { syncPolicy } from './policy.ts';
import { removeService } from './services.ts';
import { checkHostAddresses, checkNetworkEgress } from './egress.ts';
import { resolvedRevertSteps, resolvedSteps } from './resolved.ts';

/**
 * Set in a state directory once it has made a network: only then may gc take ctnet-marked kernel
 * objects it has no record of for its own leftovers. A fresh (or lost and recreated) store must not
 * remove what another state directory, or the store it replaced, made.
 */
export const MADE_NETWORKS = 'made_networks';

/** What every network needs of the host: forwarding, and ctnet's table with its rules. */
export function hostSteps(v6: boolean): Step[] {
  const forwarding: Op[] = [
    { kind: 'sysctl.set', key: 'net.ipv4.ip_forward', value: '1' },
    ...(v6 ? [{ kind: 'sysctl.set', key: 'net.ipv6.conf.all.forwarding', value: '1' } as const] : []),
  ];
  return [step([...forwarding, { kind: 'nft', lines: baseScript().trimEnd().split('\n') }])];
}

/**
 * What the control plane decided for an overlay (vxlan) network on this host. The network's spec
 * then holds this host's lease as its one subnet (gateway: the lease's first address).
 */
export interface OverlaySpec {
  readonly vni: number;
  readonly port: number;
  /** The overlay's whole subnet. */
  readonly cidr: string;
  /** This host's underlay address, the interface that has it, and that interface's MTU. */
  readonly underlay: { readonly ip: string; readonly dev: string; readonly mtu: number };
  /** The VXLAN device's MAC: the one the host published in its lease (default: a new one). */
  readonly vtepMac?: string | undefined;
}

/**
 * Makes a network: a bridge network, or with `overlay` this host's side of an overlay network
 * (whose peers syncPeers in engine/overlay.ts programs).
 */
export async function createNetwork(ctx: Ctx, spec: NetworkSpec, overlay?: OverlaySpec): Promise<NetworkRow> {
  const { store, kernel, applier } = ctx;
  const driver = driverFor(overlay ? 'vxlan' : spec.lower?.kind ?? 'bridge');
  // A macvlan/ipvlan network's device is its host shim (made only with --host-shim).
  const device = spec.lower ? shimName(spec.name) : spec.bridge ?? bridgeName(spec.name);
  const vxlan = vxlanName(spec.name);
  // Every sandbox interface must fit into the VXLAN device: the overlay's MTU, never more.
  const mtu = overlay ? (spec.mtu ?? overlayMtu(overlay.underlay.mtu)) : spec.mtu;
  if (overlay && spec.mtu !== undefined && spec.mtu > overlayMtu(overlay.underlay.mtu)) {
    throw new CtnetError('INVALID_ARGUMENT', `--mtu ${spec.mtu} is more than overlay network ${spec.name} carries (${overlayMtu(overlay.underlay.mtu)}: the underlay's ${overlay.underlay.mtu} less 50)`,
      'leave --mtu out');
  }
  // Read the kernel before deciding: an interface or route already there is a conflict.
  const [links, routes, resolved] = await Promise.all([kernel.links(), kernel.routes(), kernel.resolvedHere()]);
  // Routes through ctnet's own devices are its networks' (peers' leases lie in their overlays, checked below).
  const ours = new Set([...store.networks().map((n) => n.bridge), ...store.overlays().map((o) => o.device)]);
  const host: HostView = {
    interfaces: new Set(links.map((l) => l.ifname)),
    bridges: new Set([...store.networks().map((n) => n.bridge), ...links.filter((l) => l.linkinfo?.info_kind === 'bridge' && l.ifname.startsWith('ctbr-')).map((l) => l.ifname)]),
    routes: routes.filter((r) => r.dst && r.dst !== 'default' && !(r.dev && ours.has(r.dev))).map((r) => ({ dst: r.dst, via: r.dev ?? r.gateway ?? '?' })),
  };
  const egress = spec.egress ?? [];
  if (spec.lower && egress.length > 0) {
    throw new CtnetError('INVALID_ARGUMENT', `--egress-ip does not apply to a ${spec.lower.kind} network`, `its sandboxes leave through ${spec.lower.parent} with their own addresses: the host does not NAT them`);
  }
  checkNetworkEgress({ name: spec.name, internal: spec.internal, subnets: spec.subnets.map((s) => s.subnet) }, egress);
  await checkHostAddresses(ctx, '--egress-ip', egress);
  let row!: NetworkRow;
  await applier.transaction(async (tx) => {
    const n = tx.decide((rec): DriverNetwork => {
      if (store.network(spec.name)) {
        throw new CtnetError('CONFLICT', `network ${spec.name} exists already`, `choose another name, or remove it with "ctnet network rm ${spec.name}"`);
      }
      const holder = store.networkByBridge(device);
      if (holder) throw new CtnetError('CONFLICT', `bridge ${device} belongs to network ${holder.name}`, 'choose another --bridge');
      // An overlay takes its whole subnet on every host: other hosts' leases are routed here.
      const taken = [
        ...store.subnets().map((o) => ({ cidr: o.cidr, what: `network ${o.network}` })),
        ...store.overlays().map((o) => ({ cidr: o.cidr, what: `overlay network ${o.network}` })),
      ];
      const mine = overlay ? [overlay.cidr] : spec.subnets.map((s) => s.cidr);
      for (const cidr of mine) {
        for (const other of taken) {
          if (overlaps(parseSubnet('subnet', cidr), parseSubnet('subnet', other.cidr))) {
            throw new CtnetError('CONFLICT', `subnet ${cidr} overlaps ${other.cidr} of ${other.what}`, 'choose a subnet that no other network uses');
          }
        }
      }
      const vniHolder = overlay && store.overlays().find((o) => o.vni === overlay.vni);
      if (vniHolder) throw new CtnetError('CONFLICT', `VNI ${overlay!.vni} is used by overlay network ${vniHolder.network}`, 'choose another --vni');
      const o: OverlayRow | undefined = overlay && {
        network: spec.name, vni: overlay.vni, port: overlay.port, device: vxlan, vtepMac: overlay.vtepMac ?? randomMac(), cidr: overlay.cidr,
        underlayIp: overlay.underlay.ip, underlayDev: overlay.underlay.dev,
      };
      const lower = spec.lower && {
        kind: spec.lower.kind, parent: spec.lower.parent, mode: spec.lower.mode,
        // The shim takes the subnet's last host address (the gateway, the segment's router, is the first by default).
        shimIp: spec.lower.hostShim ? formatAddr(4, hostRange(spec.subnets[0]!.subnet).last) : null,
      };
      if (lower?.shimIp === spec.subnets[0]!.gateway) {
        throw new CtnetError('CONFLICT', `--gateway ${lower.shimIp} is the address the host shim takes (the subnet's last)`, 'give the segment\'s router as --gateway');
      }
      const dn: DriverNetwork = {
        name: spec.name, device, mac: randomMac(), internal: spec.internal, isolate: spec.isolate, hostAccess: spec.hostAccess, dns: spec.dns, mtu: mtu ?? null,
        subnets: spec.subnets.map((s) => ({ family: s.subnet.family, cidr: s.cidr, gateway: s.gateway })), lower,
        overlay: o && { vni: o.vni, port: o.port, device: o.device, vtepMac: o.vtepMac, cidrs: [o.cidr], underlay: { ip: o.underlayIp, dev: o.underlayDev }, peers: [] },
        egress,
      };
      driver.validate(dn, host);
      const r = { name: dn.name, bridge: device, internal: dn.internal, isolate: dn.isolate, hostAccess: dn.hostAccess, mtu: dn.mtu, driver: driver.name, mac: dn.mac,
        dns: spec.dns, dnsForward: spec.dnsForward, state: 'creating' as const, ...(lower ? { lower } : {}) };
      rec.record({ kind: 'network.insert', row: r, subnets: dn.subnets.map((s) => ({ cidr: s.cidr, family: s.family, gateway: s.gateway })), overlay: o },
        { kind: 'meta.set', key: MADE_NETWORKS, value: '1' },
        ...egress.map((e) => ({ kind: 'egress.set' as const, scope: 'network' as const, name: spec.name, family: e.family, ip: e.ip })));
      row = { ...r, owner: null, created: new Date().toISOString() };
      return dn;
    });
    await tx.run([
      ...hostSteps(n.subnets.some((s) => s.family === 6)), ...driver.planCreate(n), ...(n.lower ? [] : forwardSteps(store, device, 'add')),
      ...resolvedSteps({ name: n.name, bridge: device, dns: spec.dns, lower: spec.lower }, n.subnets, resolved),
    ]);
    await syncPolicy(ctx, { tx }); // "world" and net: selectors depend on the networks
    tx.commit({ kind: 'network.state', name: spec.name, state: 'ready' });
  });
  return { ...row, state: 'ready' };
}

/** The MTU links get when a network gives none (the kernel's default for a bridge and a veth). */
export const DEFAULT_MTU = 1500;

/**
 * Changes a bridge network's MTU in place: every attachment's two veth ends, then the bridge (a
 * bridge cannot be set above its ports' MTU, so ports go first whether it grows or shrinks).
 * Sandboxes stay; their open connections see the new MTU on their next packets.
 */
export async function setNetworkMtu(ctx: Ctx, name: string, mtu: number | undefined): Promise<void> {
  const { store, applier } = ctx;
  const n = store.network(name);
  if (!n) throw new CtnetError('NOT_FOUND', `no network named ${name}`, 'list networks with "ctnet network ls"');
  if (n.driver !== 'bridge') throw new CtnetError('UNSUPPORTED', `network ${name} is an overlay: its MTU follows its underlay`, 'remove and create it again');
  const want = mtu ?? DEFAULT_MTU;
  const had = n.mtu ?? DEFAULT_MTU;
  await applier.transaction(async (tx) => {
    tx.decide((rec) => rec.record({ kind: 'network.mtu', name, mtu: mtu ?? null }));
    const ports = store.attachments({ network: name }).flatMap((a): Op[] => {
      const s = store.sandbox(a.sandbox);
      const ns = s ? sandboxNetns(s) : undefined;
      return [
        { kind: 'link.set.mtu', name: a.hostVeth, mtu: want, previous: had },
        ...(ns && ctx.kernel.isNetns(s!.netns) ? [{ kind: 'link.set.mtu', name: a.ifname, mtu: want, netns: ns, previous: had } as const] : []),
      ];
    });
    await tx.run([
      ...(ports.length ? [step(ports, `network ${name}: MTU ${had} -> ${want} on its sandboxes' interfaces`)] : []),
      step([{ kind: 'link.set.mtu', name: n.bridge, mtu: want, previous: had }], `network ${name}: MTU ${want} on bridge ${n.bridge}`),
    ]);
    tx.commit();
  });
}

export async function removeNetwork(ctx: Ctx, name: string, options: { force: boolean }): Promise<void> {
  const { store, applier } = ctx;
  const n = store.network(name);
  if (!n) return; // already gone: removing it again succeeds
  const services = store.services({ network: name }).filter((s) => !s.ownerHost);
  if (services.length > 0) {
    throw new CtnetError('IN_USE', `network ${name} carries services ${services.map((s) => s.name).join(', ')}`,
      `remove them first: ctnet service rm ${services.map((s) => s.name).join(' ')}`);
  }
  const attached = store.attachments({ network: name });
  if (attached.length > 0 && !options.force) {
    throw new CtnetError('IN_USE', `network ${name} is in use by ${attached.map((a) => a.sandbox).join(', ')}`,
      `disconnect or remove them first, or use "ctnet network rm --force ${name}"`);
  }
  for (const a of attached) await disconnect(ctx, name, a.sandbox);
  // Other hosts' services on this overlay network leave with this host's side of it; the mirror
  // (services/service-directory.ts) puts them back if the side is made again.
  for (const s of store.services({ network: name }).filter((x) => x.ownerHost)) await removeService(ctx, s.name, { mirror: true });
  applier.record({ kind: 'network.state', name, state: 'removing' });
  await teardownNetwork(ctx, n);
  applier.record({ kind: 'network.delete', name });
  if (store.networks().length > 0) await syncPolicy(ctx);
}

/** Removes a network's kernel objects; idempotent. Also drops ctnet's table with the last network. */
export async function teardownNetwork(ctx: Ctx, n: NetworkRow): Promise<void> {
  const { store, applier } = ctx;
  const last = store.networks().every((o) => o.name === n.name);
  await applier.teardown([
    ...resolvedRevertSteps(n, await ctx.kernel.resolvedHere()),
    ...forwardSteps(store, n.bridge, 'remove'),
    ...driverOf(n).planRemove(driverNetwork(store, n)),
    ...(last ? [step([{ kind: 'nft', lines: dropTableScript().trimEnd().split('\n') }], 'the last network: remove ctnet\'s table')] : []),
  ]);
  if (last) applier.record({ kind: 'policy.mirror', sets: new Map() });
}
