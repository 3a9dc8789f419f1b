// What hosts agree on, written to etcd: membership, overlay network definitions and subnet leases.
// Each write is a compare-and-swap transaction decided from a read (flannel's pattern in
// pkg/subnet/etcd: list, choose, create-if-absent, try again when another host won the race), so
// concurrent hosts never hold one subnet, one host name or one VNI twice. Nothing here deletes on
// an error: deletions happen only when a person asks (leave, network rm).
import { CtnetError } from '../errors.ts';
import { EtcdError, type EtcdClient, type Kv } from './etcd.ts';
import {
  decodeEntry, encodeHost, encodeLease, encodeOverlayDef, encodeSandbox, hostKey, HOSTS, leaseKey, leasePrefix, LEASES,
  networkKey, NETWORKS, PREFIX, sandboxKey, sandboxPrefix,
  type Entry, type HostValue, type LeaseValue, type OverlayDef, type SandboxValue,
} from './keys.ts';
import { chooseHostSubnet, inPool, validateOverlay, type OverlaySpec } from './pool.ts';

/** How often a lost compare-and-swap race is tried again before giving up (flannel: 10). */
export const RACE_RETRIES = 10;

/** This host as the cluster knows it. */
export interface Member {
  readonly host: string;
  readonly underlay: string;
  readonly vtepMac: string;
}

const next = (revision: string) => String(BigInt(revision) + 1n);

function lostRaces(what: string): CtnetError {
  return new CtnetError('STATE', `${what}: other hosts changed the same keys ${RACE_RETRIES} times in a row`, 'try again');
}

// ---- membership ----

/**
 * Registers a host under its etcd lease: hosts/NAME, created only if the name is free and no other
 * host has its underlay address. With takeover, a record of the same host (same underlay and VTEP
 * MAC, e.g. bound to a lease of its own that is expiring) is rebound to the new lease.
 */
export async function registerHost(etcd: EtcdClient, m: Member, leaseId: string, options: { joined: string; takeover: boolean }): Promise<void> {
  for (let i = 0; i < RACE_RETRIES; i++) {
    const list = await etcd.range(HOSTS, { prefix: true });
    let mine: Kv | undefined;
    for (const kv of list.kvs) {
      const e = decodeEntry(kv.key, kv.value);
      if (e.kind !== 'host') continue;
      const same = e.value.underlay === m.underlay && e.value.vtepMac === m.vtepMac;
      if (e.name === m.host) {
        if (!(options.takeover && same)) {
          throw new CtnetError('CONFLICT', `host name ${m.host} is taken in the cluster by a live member (underlay ${e.value.underlay}, joined ${e.value.joined})`,
            'give this host another name with --host-name; a member that is gone disappears when its lease expires');
        }
        mine = kv;
      } else if (e.value.underlay === m.underlay) {
        throw new CtnetError('CONFLICT', `underlay address ${m.underlay} is in use by member ${e.name}`,
          'each host needs its own underlay address: choose another with --underlay IP|IFNAME');
      }
    }
    const value: HostValue = { underlay: m.underlay, vtepMac: m.vtepMac, joined: mine ? (decodeEntry(mine.key, mine.value) as { value: HostValue }).value.joined : options.joined };
    const t = await etcd.txn({
      // No member appeared or changed since the read (underlay uniqueness), and ours is as read.
      compare: [
        { key: HOSTS, prefix: true, target: 'mod', op: '<', value: next(list.revision) },
        mine ? { key: hostKey(m.host), target: 'mod', op: '=', value: mine.modRevision } : { key: hostKey(m.host), target: 'version', op: '=', value: 0 },
      ],
      success: [{ put: hostKey(m.host), value: encodeHost(value), lease: leaseId }],
    });
    if (t.succeeded) return;
  }
  throw lostRaces(`registering host ${m.host}`);
}

// ---- overlay network definitions ----

/** Every overlay network definition (bad values are left out, and listed in `bad`). */
export async function overlayNetworks(etcd: EtcdClient): Promise<{ defs: Map<string, OverlayDef>; revision: string; bad: Entry[] }> {
  const list = await etcd.range(NETWORKS, { prefix: true });
  const defs = new Map<string, OverlayDef>();
  const bad: Entry[] = [];
  for (const kv of list.kvs) {
    const e = decodeEntry(kv.key, kv.value);
    if (e.kind === 'network') defs.set(e.name, e.def);
    else bad.push(e);
  }
  return { defs, revision: list.revision, bad };
}

/**
 * Defines an overlay network for the whole cluster: checked against every other definition (name,
 * overlapping subnet, VNI), written only if none was added or changed since they were read.
 */
export async function defineOverlay(etcd: EtcdClient, name: string, spec: OverlaySpec): Promise<OverlayDef> {
  for (let i = 0; i < RACE_RETRIES; i++) {
    const { defs, revision } = await overlayNetworks(etcd);
    const def = validateOverlay(name, spec, defs);
    const t = await etcd.txn({
      compare: [{ key: NETWORKS, prefix: true, target: 'mod', op: '<', value: next(revision) }, { key: networkKey(name), target: 'version', op: '=', value: 0 }],
      success: [{ put: networkKey(name), value: encodeOverlayDef(def) }],
    });
    if (t.succeeded) return def;
  }
  throw lostRaces(`defining overlay network ${name}`);
}

/** Removes an overlay network's definition; refused (IN_USE) while any host holds a lease in it. */
export async function undefineOverlay(etcd: EtcdClient, name: string): Promise<boolean> {
  const t = await etcd.txn({
    compare: [{ key: leasePrefix(name), prefix: true, target: 'version', op: '=', value: 0 }],
    success: [{ delete: networkKey(name) }],
    failure: [{ range: leasePrefix(name), prefix: true }],
  });
  if (t.succeeded) return true;
  const holders = (t.ranges[0] ?? []).map((kv) => decodeEntry(kv.key, kv.value)).flatMap((e) => (e.kind === 'lease' ? [`${e.value.host} (${e.subnet})`] : []));
  throw new CtnetError('IN_USE', `overlay network ${name} is in use by ${holders.join(', ') || 'hosts'}`, 'remove it on those hosts first (their leases go with it)');
}

// ---- subnet leases ----

export interface LeaseHeld {
  readonly network: string;
  readonly subnet: string;
  readonly value: LeaseValue;
  readonly lease: string;
}

/** Every subnet lease of a network. */
export async function networkLeases(etcd: EtcdClient, network: string): Promise<{ leases: LeaseHeld[]; revision: string }> {
  const list = await etcd.range(leasePrefix(network), { prefix: true });
  const leases = list.kvs.flatMap((kv): LeaseHeld[] => {
    const e = decodeEntry(kv.key, kv.value);
    return e.kind === 'lease' ? [{ network: e.network, subnet: e.subnet, value: e.value, lease: kv.lease }] : [];
  });
  return { leases, revision: list.revision };
}

/**
 * Leases this host a subnet of an overlay network, bound to its etcd lease: the one it holds
 * already (rebound to leaseId if need be), else `previous` (recorded locally) if free, else the
 * first free one. Throws NOT_FOUND without a definition, CONFLICT naming the pool when it is full.
 */
export async function claimLease(etcd: EtcdClient, o: { network: string; member: Member; leaseId: string; previous?: string | undefined }): Promise<string> {
  const value: LeaseValue = { host: o.member.host, underlay: o.member.underlay, vtepMac: o.member.vtepMac };
  for (let i = 0; i < RACE_RETRIES; i++) {
    const defKv = await etcd.get(networkKey(o.network));
    const def = defKv && decodeEntry(defKv.key, defKv.value);
    if (!def || def.kind !== 'network') {
      throw new CtnetError('NOT_FOUND', `overlay network ${o.network} is not defined in the cluster${def?.kind === 'bad' ? ` (its definition is unreadable: ${def.reason})` : ''}`);
    }
    const list = await etcd.range(leasePrefix(o.network), { prefix: true });
    const held = list.kvs.map((kv) => ({ kv, e: decodeEntry(kv.key, kv.value) }));
    const mine = held.find((h) => h.e.kind === 'lease' && h.e.value.host === o.member.host && inPool(def.def, h.e.subnet));
    let t;
    if (mine && mine.e.kind === 'lease') {
      if (mine.kv.lease === o.leaseId && mine.kv.value === encodeLease(value)) return mine.e.subnet;
      t = await etcd.txn({
        compare: [{ key: mine.kv.key, target: 'mod', op: '=', value: mine.kv.modRevision }],
        success: [{ put: mine.kv.key, value: encodeLease(value), lease: o.leaseId }],
      });
      if (t.succeeded) return mine.e.subnet;
      continue;
    }
    const taken = held.flatMap((h) => (h.e.kind === 'lease' ? [h.e.subnet] : []));
    const subnet = chooseHostSubnet(o.network, def.def, taken, o.previous);
    t = await etcd.txn({
      compare: [{ key: leaseKey(o.network, subnet), target: 'version', op: '=', value: 0 }],
      success: [{ put: leaseKey(o.network, subnet), value: encodeLease(value), lease: o.leaseId }],
    });
    if (t.succeeded) return subnet;
  }
  throw lostRaces(`leasing a subnet of ${o.network}`);
}

/**
 * Takes back exactly this subnet (after an etcd outage or a restart: live sandboxes must keep
 * their addresses): 'claimed', or the host holding it now, or 'no-network'. Never another subnet.
 */
export async function reclaimLease(etcd: EtcdClient, o: { network: string; subnet: string; member: Member; leaseId: string }): Promise<'claimed' | 'no-network' | { readonly heldBy: string }> {
  const value = encodeLease({ host: o.member.host, underlay: o.member.underlay, vtepMac: o.member.vtepMac });
  const key = leaseKey(o.network, o.subnet);
  for (let i = 0; i < RACE_RETRIES; i++) {
    const t = await etcd.txn({
      compare: [{ key: networkKey(o.network), target: 'version', op: '>', value: 0 }, { key, target: 'version', op: '=', value: 0 }],
      success: [{ put: key, value, lease: o.leaseId }],
      failure: [{ range: networkKey(o.network) }, { range: key }],
    });
    if (t.succeeded) return 'claimed';
    if ((t.ranges[0] ?? []).length === 0) return 'no-network';
    const cur = (t.ranges[1] ?? [])[0];
    if (!cur) continue; // freed meanwhile
    const e = decodeEntry(cur.key, cur.value);
    if (e.kind !== 'lease' || e.value.host !== o.member.host) return { heldBy: e.kind === 'lease' ? e.value.host : `an unreadable value (${e.kind === 'bad' ? e.reason : ''})` };
    if (cur.lease === o.leaseId && cur.value === value) return 'claimed';
    const r = await etcd.txn({ compare: [{ key, target: 'mod', op: '=', value: cur.modRevision }], success: [{ put: key, value, lease: o.leaseId }] });
    if (r.succeeded) return 'claimed';
  }
  throw lostRaces(`taking back ${o.subnet} of ${o.network}`);
}

/** Gives up this host's subnet of a network (only if it is still this host's). */
export async function releaseLease(etcd: EtcdClient, network: string, host: string): Promise<string | undefined> {
  const { leases } = await networkLeases(etcd, network);
  const mine = leases.find((l) => l.value.host === host);
  if (!mine) return undefined;
  const key = leaseKey(network, mine.subnet);
  await etcd.txn({ compare: [{ key, target: 'value', op: '=', value: encodeLease(mine.value) }], success: [{ delete: key }] });
  return mine.subnet;
}

// ---- the sandbox directory ----

/** Writes one of this host's sandboxes to the directory, bound to its etcd lease; returns the revision. */
export async function publishSandbox(etcd: EtcdClient, host: string, name: string, value: SandboxValue, leaseId: string): Promise<string> {
  return await etcd.put(sandboxKey(host, name), encodeSandbox(value), { lease: leaseId });
}
export async function withdrawSandbox(etcd: EtcdClient, host: string, name: string): Promise<void> {
  await etcd.delete(sandboxKey(host, name));
}

// ---- leaving ----

/**
 * Takes this host out of the cluster: revokes its etcd lease (etcd deletes every key bound to it),
 * then deletes what is still recorded under its name (a key rebound meanwhile, a sandbox entry).
 * Only keys whose value names this host (its underlay and VTEP MAC) are touched.
 */
export async function deregisterHost(etcd: EtcdClient, m: Member, leaseId: string | null): Promise<void> {
  if (leaseId) await etcd.leaseRevoke(leaseId);
  const host = await etcd.get(hostKey(m.host));
  if (host) {
    const e = decodeEntry(host.key, host.value);
    if (e.kind === 'host' && e.value.underlay === m.underlay && e.value.vtepMac === m.vtepMac) {
      await etcd.txn({ compare: [{ key: host.key, target: 'mod', op: '=', value: host.modRevision }], success: [{ delete: host.key }] });
    }
  }
  const leases = await etcd.range(LEASES, { prefix: true });
  for (const kv of leases.kvs) {
    const e = decodeEntry(kv.key, kv.value);
    if (e.kind === 'lease' && e.value.host === m.host && e.value.vtepMac === m.vtepMac) {
      await etcd.txn({ compare: [{ key: kv.key, target: 'mod', op: '=', value: kv.modRevision }], success: [{ delete: kv.key }] });
    }
  }
  await etcd.delete(sandboxPrefix(m.host), { prefix: true });
}

// ---- the view of `cluster ls` ----

export type Health = 'ok' | 'late' | 'expired';

/**
 * A member's health from its etcd lease: ok while renewals come (ctnetd renews every third of the
 * TTL, so more than a third is left), late when at least one renewal was missed, expired at 0.
 */
export function leaseHealth(ttlLeft: number, granted: number): Health {
  if (ttlLeft <= 0) return 'expired';
  return ttlLeft * 3 > granted ? 'ok' : 'late';
}

export interface HostView {
  readonly name: string;
  readonly underlay: string;
  readonly vtepMac: string;
  readonly joined: string;
  /** Seconds left on its etcd lease (-1: the lease is gone), and the TTL it renews to. */
  readonly ttl: number;
  readonly grantedTtl: number;
  readonly health: Health;
  readonly leases: readonly { readonly network: string; readonly subnet: string; readonly ttl: number }[];
}

export interface ClusterView {
  readonly revision: string;
  readonly hosts: readonly HostView[];
  readonly networks: readonly (OverlayDef & { readonly name: string })[];
  /** Subnet leases whose host has no member record (it is leaving, or a record is damaged). */
  readonly orphanLeases: readonly LeaseHeld[];
  readonly bad: readonly { readonly key: string; readonly reason: string }[];
}

/** Everything under /ctnet/ with each etcd lease's time left: one read, one TTL query per lease. */
export async function clusterView(etcd: EtcdClient): Promise<ClusterView> {
  const all = await etcd.range(PREFIX, { prefix: true });
  const hosts: { name: string; value: HostValue; lease: string }[] = [];
  const leases: LeaseHeld[] = [];
  const networks: (OverlayDef & { name: string })[] = [];
  const bad: { key: string; reason: string }[] = [];
  for (const kv of all.kvs) {
    const e = decodeEntry(kv.key, kv.value);
    if (e.kind === 'host') hosts.push({ name: e.name, value: e.value, lease: kv.lease });
    else if (e.kind === 'lease') leases.push({ network: e.network, subnet: e.subnet, value: e.value, lease: kv.lease });
    else if (e.kind === 'network') networks.push({ name: e.name, ...e.def });
    else if (e.kind === 'bad') bad.push({ key: e.key, reason: e.reason });
  }
  const ttls = new Map<string, { ttl: number; granted: number }>();
  for (const id of new Set([...hosts, ...leases].map((x) => x.lease).filter((id) => id !== '0'))) {
    try {
      ttls.set(id, await etcd.leaseTimeToLive(id));
    } catch (e) {
      if (!(e instanceof EtcdError) || e.unreachable) throw e;
      ttls.set(id, { ttl: -1, granted: 0 });
    }
  }
  const ttlOf = (id: string) => (id === '0' ? { ttl: -1, granted: 0 } : ttls.get(id) ?? { ttl: -1, granted: 0 });
  const names = new Set(hosts.map((h) => h.name));
  return {
    revision: all.revision,
    hosts: hosts.map((h) => {
      const t = ttlOf(h.lease);
      return {
        name: h.name, underlay: h.value.underlay, vtepMac: h.value.vtepMac, joined: h.value.joined, ttl: t.ttl, grantedTtl: t.granted,
        health: leaseHealth(t.ttl, t.granted),
        leases: leases.filter((l) => l.value.host === h.name).map((l) => ({ network: l.network, subnet: l.subnet, ttl: ttlOf(l.lease).ttl })),
      };
    }),
    networks,
    orphanLeases: leases.filter((l) => !names.has(l.value.host)),
    bad,
  };
}
