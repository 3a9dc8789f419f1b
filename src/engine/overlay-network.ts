// Overlay networks as the user sees them: `network create --driver vxlan` defines the network in
// the cluster (etcd) and makes this host's side of it; any other member makes its side the first
// time one of its sandboxes (or a CNI ADD) asks for the network; `network rm` removes this host's
// side and gives its lease back, and the definition goes with the last lease. The datapath is the
// vxlan driver's (createNetwork with an OverlaySpec); the peers are ctnetd's (services/overlay.ts).
import { claimLease, defineOverlay, networkLeases, reclaimLease, releaseLease, undefineOverlay } from '../cluster/registry.ts';
import { parseOverlaySpec, type OverlaySpec, type RawOverlay } from '../cluster/pool.ts';
import { decodeEntry, LEASES, networkKey, type OverlayDef } from '../cluster/keys.ts';
import { EtcdError, GRPC_NOT_FOUND } from '../cluster/etcd.ts';
import { CtnetError } from '../errors.ts';
import { overlaps, parseSubnet } from '../model/cidr.ts';
import { parseName } from '../model/names.ts';
import { parseDnsOptions, parseNetworkSpec } from '../model/spec.ts';
import { withLock } from '../store/lock.ts';
import type { MemberRow, NetworkRow } from '../store/store.ts';
import { etcdOf, memberOf } from './cluster.ts';
import type { Ctx } from './context.ts';
import { createNetwork, removeNetwork } from './network.ts';

export interface OverlayRequest extends RawOverlay {
  readonly name: string;
  readonly hostAccess?: boolean | undefined;
  readonly mtu?: string | undefined;
  readonly dns?: string | undefined;
  readonly dnsForward?: string | undefined;
}

/** The options of this host's side that are not the cluster's (host access, MTU; isolation is the definition's). */
interface LocalOptions {
  readonly hostAccess?: boolean | undefined;
  readonly mtu?: string | undefined;
  /** DNS (services/dns/): this host's answers and upstreams (another host's side has DNS on, forwarding to its resolvers). */
  readonly dns?: string | undefined;
  readonly dnsForward?: string | undefined;
}

/** This host's membership, ready to lease; else a clear error naming WHAT needed it. */
export function requireMember(ctx: Ctx, what: string): MemberRow {
  return member(ctx, what);
}

function member(ctx: Ctx, what: string): MemberRow {
  const m = ctx.store.member();
  if (!m || m.state !== 'ready') {
    throw new CtnetError('INVALID_ARGUMENT', `${what} needs this host in a cluster: it is not a member of one`,
      'join one first: ctnet cluster join --etcd http://ETCD:2379');
  }
  if (!m.leaseId) {
    throw new CtnetError('UNAVAILABLE', `${what}: ctnetd has not registered this host in etcd yet`, 'check that ctnetd runs (ctnet daemon status) and can reach etcd; then try again');
  }
  return m;
}

/** etcd errors as the user's: unreachable is UNAVAILABLE with etcd's own message and hint. */
async function withEtcd<T>(fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (e) {
    if (e instanceof EtcdError) throw new CtnetError(e.unreachable ? 'UNAVAILABLE' : 'STATE', e.message, e.hint);
    throw e;
  }
}

/** Defines an overlay network in the cluster and makes this host's side of it; all or nothing. */
export async function createOverlayNetwork(ctx: Ctx, req: OverlayRequest): Promise<NetworkRow> {
  const { store } = ctx;
  const name = parseName('network', req.name);
  const spec = parseOverlaySpec(req);
  parseDnsOptions({ dns: req.dns, dnsForward: req.dnsForward, internal: spec.internal }); // before anything is written to etcd
  if (parseSubnet('--subnet', spec.subnet).family !== 4) {
    throw new CtnetError('INVALID_ARGUMENT', `--subnet ${spec.subnet}: overlay networks carry IPv4 only`, 'give an IPv4 --subnet, e.g. 10.50.0.0/16');
  }
  if (ctx.applier.dryRun) {
    throw new CtnetError('INVALID_ARGUMENT', '--dry-run cannot show an overlay network: its subnet lease comes from etcd when it is made',
      'use --explain to see the kernel commands as they run');
  }
  if (store.network(name)) throw new CtnetError('CONFLICT', `a network named ${name} exists already`, 'choose another name');
  // Local subnets first: nothing is written to etcd for a network this host could not carry.
  for (const s of store.subnets()) {
    if (overlaps(parseSubnet('subnet', spec.subnet), parseSubnet('subnet', s.cidr))) {
      throw new CtnetError('CONFLICT', `subnet ${spec.subnet} overlaps ${s.cidr} of network ${s.network} on this host`, 'choose a subnet that no network uses');
    }
  }
  const m = member(ctx, 'network create --driver vxlan');
  const etcd = etcdOf(m);
  const def = await withEtcd(() => defineOverlay(etcd, name, spec));
  try {
    return await withLock(store.dir, 'overlay-side', () => makeLocalSide(ctx, m, name, def, req));
  } catch (e) {
    await undefineOverlay(etcd, name).catch(() => {}); // nothing else leases it yet
    throw e;
  }
}

/** The cluster's definition of overlay network NAME, or undefined when the cluster has none. */
export async function overlayDefinition(ctx: Ctx, name: string): Promise<OverlayDef | undefined> {
  const m = member(ctx, `overlay network ${name}`);
  const kv = await withEtcd(() => etcdOf(m).get(networkKey(name)));
  if (!kv) return undefined;
  const entry = decodeEntry(kv.key, kv.value);
  return entry.kind === 'network' ? entry.def : undefined;
}

/** How the cluster's definition differs from a wanted spec, as "field have -> want" (vni undefined: any). */
export function overlayDefDiff(def: OverlayDef, want: OverlaySpec): string[] {
  const why: string[] = [];
  if (def.subnet !== want.subnet) why.push(`overlay subnet ${def.subnet} -> ${want.subnet}`);
  if (def.hostPrefix !== want.hostPrefix) why.push(`host_prefix ${def.hostPrefix} -> ${want.hostPrefix}`);
  if (want.vni !== undefined && def.vni !== want.vni) why.push(`vni ${def.vni} -> ${want.vni}`);
  if (def.port !== want.port) why.push(`port ${def.port} -> ${want.port}`);
  if (def.internal !== want.internal) why.push(`internal ${def.internal} -> ${want.internal}`);
  if (def.isolate !== want.isolate) why.push(`isolate ${def.isolate} -> ${want.isolate}`);
  return why;
}

/**
 * A topology file's overlay network on this host: defined in the cluster unless another host
 * defined it already (then its definition must be the file's), and this host's side made with the
 * file's local options. Applying one file on every host thus gives one network across them.
 */
export async function ensureOverlayNetwork(ctx: Ctx, req: OverlayRequest): Promise<NetworkRow> {
  const name = parseName('network', req.name);
  const spec = parseOverlaySpec(req);
  if (ctx.store.network(name)) throw new CtnetError('CONFLICT', `a network named ${name} exists already`, 'choose another name');
  const def = await overlayDefinition(ctx, name);
  if (!def) return createOverlayNetwork(ctx, req);
  const why = overlayDefDiff(def, spec);
  if (why.length) {
    throw new CtnetError('CONFLICT', `overlay network ${name} is defined in the cluster otherwise: ${why.join('; ')}`,
      'make the file say what the cluster has, or remove the network on every host that has it (ctnet down) first');
  }
  const m = member(ctx, `overlay network ${name}`);
  return withLock(ctx.store.dir, 'overlay-side', () => makeLocalSide(ctx, m, name, def, req));
}

/** The hosts other than this one that hold a lease in overlay network NAME. */
export async function otherLeaseHolders(ctx: Ctx, name: string): Promise<string[]> {
  const m = member(ctx, `overlay network ${name}`);
  const { leases } = await withEtcd(() => networkLeases(etcdOf(m), name));
  return leases.map((l) => l.value.host).filter((h) => h !== m.host);
}

/** Claims this host's lease (the one it held before, if free) and makes the bridge and VXLAN device. */
async function makeLocalSide(ctx: Ctx, m: MemberRow, name: string, def: OverlayDef, local: LocalOptions): Promise<NetworkRow> {
  const { store, kernel } = ctx;
  const etcd = etcdOf(m);
  const previous = store.clusterLeases().find((l) => l.network === name)?.subnet;
  const cidr = await withEtcd(() => claimLease(etcd, { network: name, member: memberOf(m), leaseId: m.leaseId!, previous }));
  try {
    store.write(() => store.setClusterLease(name, cidr));
    const addrs = await kernel.addrs();
    const dev = addrs.find((a) => a.addr_info.some((x) => x.local === m.underlay))?.ifname;
    if (!dev) {
      throw new CtnetError('STATE', `this host no longer has its underlay address ${m.underlay}`, 'leave the cluster and join again with --underlay set to an address it has');
    }
    const mtu = (await kernel.link(dev))?.mtu ?? 1500;
    const spec = parseNetworkSpec({ name, subnet: [cidr], internal: def.internal, isolate: def.isolate, hostAccess: local.hostAccess, mtu: local.mtu, dns: local.dns, dnsForward: local.dnsForward });
    return await createNetwork(ctx, spec, { vni: def.vni, port: def.port, cidr: def.subnet, underlay: { ip: m.underlay, dev, mtu }, vtepMac: m.vtepMac });
  } catch (e) {
    await releaseLease(etcd, name, m.host).catch(() => {});
    throw e;
  }
}

/**
 * Makes this host's side of an overlay network defined in the cluster, when a sandbox here is
 * the first to ask for it. A network this host has, or a host in no cluster: nothing to do.
 */
export async function ensureOverlaySide(ctx: Ctx, name: string): Promise<void> {
  const { store } = ctx;
  // A side another process is making (state creating) is waited for under the lock below: a
  // sandbox must not see it half-made and fail with "network is creating".
  const existing = store.network(name);
  if (existing && existing.state !== 'creating') return;
  const m = store.member();
  if (!m || m.state !== 'ready' || !m.leaseId) return;
  // Several first sandboxes at once (parallel creates, CNI ADDs) must make one side: unserialized,
  // the loser's rollback gave back the lease the winner's side was using.
  await withLock(store.dir, 'overlay-side', async () => {
    if (store.network(name)) return; // made while this one waited
    const etcd = etcdOf(m);
    const kv = await withEtcd(() => etcd.get(networkKey(name)));
    if (!kv) return;
    const entry = decodeEntry(kv.key, kv.value);
    if (entry.kind !== 'network') return;
    await makeLocalSide(ctx, m, name, entry.def, {});
  });
}

/**
 * Removes this host's side of an overlay network and gives its lease back; the definition goes
 * with the last lease (other hosts keep theirs until they remove their side).
 */
export async function removeOverlaySide(ctx: Ctx, name: string, options: { force: boolean }): Promise<'removed' | 'undefined'> {
  return withLock(ctx.store.dir, 'overlay-side', () => removeSide(ctx, name, options));
}

async function removeSide(ctx: Ctx, name: string, options: { force: boolean }): Promise<'removed' | 'undefined'> {
  const { store } = ctx;
  const m = store.member();
  await removeNetwork(ctx, name, options);
  if (!m) return 'removed';
  const etcd = etcdOf(m);
  await withEtcd(() => releaseLease(etcd, name, m.host));
  store.write(() => store.deleteClusterLease(name));
  const { leases } = await withEtcd(() => networkLeases(etcd, name));
  if (leases.length > 0) return 'removed';
  await withEtcd(() => undefineOverlay(etcd, name));
  return 'undefined';
}

/** The networks of a request that may be overlay networks this host has no side of yet. */
export async function ensureOverlaySides(ctx: Ctx, names: readonly string[]): Promise<void> {
  for (const n of names) await ensureOverlaySide(ctx, n);
}

/**
 * gc's part for a member of a cluster: this host's leases in etcd and its overlay sides agree.
 * A lease without a side here (a `network create` or a first sandbox killed between the claim and
 * the side, or a side removed while etcd was down) is given back; a side whose lease is gone is
 * leased again, with exactly its subnet (never another: its sandboxes keep their addresses). With
 * etcd unreachable it changes nothing and says so.
 */
export async function reconcileOverlays(ctx: Ctx): Promise<string[]> {
  const { store } = ctx;
  const m = store.member();
  if (!m || m.state !== 'ready' || !m.leaseId) return [];
  const etcd = etcdOf(m);
  const done: string[] = [];
  try {
    const list = await etcd.range(LEASES, { prefix: true });
    const mine = list.kvs.flatMap((kv) => {
      const e = decodeEntry(kv.key, kv.value);
      return e.kind === 'lease' && e.value.host === m.host ? [e] : [];
    });
    for (const l of mine) {
      const n = store.network(l.network);
      if (n && n.driver === 'vxlan') continue;
      if (n) continue; // a bridge network of that name: not ours to judge
      if (ctx.applier.dryRun) {
        done.push(`would give back lease ${l.subnet} of overlay network ${l.network}: this host has no side of it`);
        continue;
      }
      await releaseLease(etcd, l.network, m.host);
      done.push(`gave back lease ${l.subnet} of overlay network ${l.network}: this host has no side of it (an interrupted create)`);
    }
    for (const o of store.overlays()) {
      const lease = store.subnets(o.network).find((s) => s.family === 4)?.cidr;
      if (!lease || mine.some((l) => l.network === o.network && l.subnet === lease)) continue;
      if (ctx.applier.dryRun) {
        done.push(`would lease ${lease} of overlay network ${o.network} again: etcd has no lease of this host for it`);
        continue;
      }
      const r = await reclaimLease(etcd, { network: o.network, subnet: lease, member: memberOf(m), leaseId: m.leaseId });
      done.push(r === 'claimed' ? `leased ${lease} of overlay network ${o.network} again: etcd had lost it`
        : r === 'no-network' ? `overlay network ${o.network} is no longer defined in the cluster: its side here stays until "ctnet network rm ${o.network}"`
        : `CONFLICT: ${lease} of overlay network ${o.network} is leased by ${r.heldBy} now; this host's sandboxes on it collide with that host's until one side is removed`);
    }
  } catch (e) {
    if (e instanceof EtcdError && e.unreachable) return [`did not compare this host's overlay leases with etcd: ${e.message}`];
    if (e instanceof EtcdError && e.grpcCode === GRPC_NOT_FOUND) {
      // The host's etcd lease expired with no ctnetd to renew it; ctnetd's start registers the host
      // with a new one and takes back exactly these subnets (services/cluster.ts).
      return [...done, `this host's etcd lease has expired (no ctnetd renewed it): ctnetd registers the host again, with the same subnets, when it starts`];
    }
    throw e;
  }
  return done;
}

