// The cluster use cases: join, leave, status. Membership lives in two places, each the truth for
// its part: etcd (src/cluster/registry.ts) says who is in the cluster, the local store records that
// this host joined (so ctnetd keeps its etcd lease alive: services/cluster.ts). Every input is
// checked and etcd is read before anything is written, so bad input changes nothing in either.
import { CtnetError, invalid } from '../errors.ts';
import { EtcdClient, parseEndpoints } from '../cluster/etcd.ts';
import { clusterView, deregisterHost, registerHost, type ClusterView, type Member } from '../cluster/registry.ts';
import { chooseUnderlay } from '../cluster/underlay.ts';
import { randomMac } from '../model/mac.ts';
import { parseName } from '../model/names.ts';
import type { MemberRow } from '../store/store.ts';
import type { Ctx } from './context.ts';
import { syncPolicy } from './policy.ts';

/** The TTL of a host's etcd lease, in seconds: what a host that stops renewing lingers for. */
export const DEFAULT_LEASE_TTL = 60;
export const LEASE_TTL_MIN = 3;
export const LEASE_TTL_MAX = 3600;

/** Drivers whose networks span hosts: a host with sandboxes on one may not leave without --force. */
export const OVERLAY_DRIVERS: readonly string[] = ['vxlan'];

export interface JoinSpec {
  readonly endpoints: readonly string[];
  /** IP or interface name; undefined: the default route's interface. */
  readonly underlay: string | undefined;
  readonly host: string;
  readonly leaseTtl: number;
}

/** Parses `cluster join`'s options (the host name defaults to this machine's hostname). */
export function parseJoinSpec(raw: { etcd: string; underlay?: string | undefined; hostName?: string | undefined; leaseTtl?: string | undefined }, hostname: string): JoinSpec {
  const endpoints = parseEndpoints(raw.etcd);
  const host = parseName('host', raw.hostName ?? hostname.split('.')[0]!);
  let leaseTtl = DEFAULT_LEASE_TTL;
  if (raw.leaseTtl !== undefined) {
    if (!/^\d+$/.test(raw.leaseTtl) || Number(raw.leaseTtl) < LEASE_TTL_MIN || Number(raw.leaseTtl) > LEASE_TTL_MAX) {
      throw invalid(`--lease-ttl ${JSON.stringify(raw.leaseTtl)} is not a number of seconds from ${LEASE_TTL_MIN} to ${LEASE_TTL_MAX}`);
    }
    leaseTtl = Number(raw.leaseTtl);
  }
  return { endpoints, underlay: raw.underlay, host, leaseTtl };
}

export const memberOf = (m: MemberRow): Member => ({ host: m.host, underlay: m.underlay, vtepMac: m.vtepMac });

/** The etcd client of this host's cluster (timeouts from CTNET_ETCD_TIMEOUT_MS, else 2 s). */
export const etcdOf = (m: Pick<MemberRow, 'endpoints'>) => new EtcdClient(m.endpoints);

/** The membership, or NOT_FOUND saying how to join. */
export function requireMember(ctx: Ctx): MemberRow {
  const m = ctx.store.member();
  if (!m) throw new CtnetError('NOT_FOUND', 'this host is not a member of a cluster', 'join one with ctnet cluster join --etcd URL');
  return m;
}

function refuseDryRun(ctx: Ctx, what: string): void {
  if (ctx.applier.dryRun) throw invalid(`${what} changes etcd and the store, no kernel state: --dry-run has nothing to show`, `run it without --dry-run`);
}

/**
 * Makes this host a member: checks it is not one already, works out its underlay address, reads
 * etcd (the host name and underlay must be free), takes an etcd lease and registers under it
 * (compare-and-swap), then records the membership locally. A failure after the lease was granted
 * revokes it, so nothing is left in etcd either.
 */
export async function joinCluster(ctx: Ctx, spec: JoinSpec): Promise<MemberRow> {
  refuseDryRun(ctx, 'cluster join');
  const was = ctx.store.member();
  if (was) {
    throw new CtnetError('CONFLICT', `this host is already a member of the cluster at ${was.endpoints.join(',')} as ${was.host}`,
      'leave it first (ctnet cluster leave) to join another, or under another name');
  }
  const [addrs, routes] = await Promise.all([ctx.kernel.addrs(), ctx.kernel.routes()]);
  const underlay = chooseUnderlay(spec.underlay, addrs, routes);
  const etcd = new EtcdClient(spec.endpoints);
  const row: MemberRow = {
    host: spec.host, endpoints: spec.endpoints, underlay: underlay.ip, vtepMac: randomMac(), leaseTtl: spec.leaseTtl,
    leaseId: null, state: 'ready', joined: new Date().toISOString(),
  };
  const lease = await etcd.leaseGrant(spec.leaseTtl);
  try {
    await registerHost(etcd, memberOf(row), lease.id, { joined: row.joined, takeover: false });
    const joined = { ...row, leaseId: lease.id };
    ctx.store.write(() => {
      // Checked again in the write lock: two joins at once, one wins.
      if (ctx.store.member()) throw new CtnetError('CONFLICT', 'this host joined a cluster meanwhile (another ctnet cluster join)', 'see ctnet cluster ls');
      ctx.store.insertMember(joined);
    });
    return joined;
  } catch (e) {
    await etcd.leaseRevoke(lease.id).catch((r: Error) => ctx.warn(`could not revoke etcd lease ${lease.id} (${r.message}): it expires in ${spec.leaseTtl} s`));
    throw e;
  }
}

/** Local sandboxes attached to overlay networks: what `leave` refuses to cut off. */
export function overlayUsers(ctx: Ctx): string[] {
  const overlay = new Set(ctx.store.networks().filter((n) => OVERLAY_DRIVERS.includes(n.driver)).map((n) => n.name));
  return ctx.store.attachments().filter((a) => overlay.has(a.network)).map((a) => `${a.sandbox} (on ${a.network})`);
}

/**
 * Takes this host out of the cluster: refused while local sandboxes use overlay networks, unless
 * force. Marks the membership `leaving` first (ctnetd then stops registering it), removes its
 * records from etcd, then the membership. When etcd cannot be reached, nothing changes, unless
 * force: then only the local membership goes, and the records in etcd expire with the lease.
 */
export async function leaveCluster(ctx: Ctx, options: { force: boolean }): Promise<{ member: MemberRow; etcdReached: boolean }> {
  refuseDryRun(ctx, 'cluster leave');
  const m = requireMember(ctx);
  const users = overlayUsers(ctx);
  if (users.length && !options.force) {
    throw new CtnetError('IN_USE', `sandboxes on this host use overlay networks: ${users.join(', ')}`,
      'remove or disconnect them first, or leave with --force (they lose every other host)');
  }
  const etcd = etcdOf(m);
  ctx.store.write(() => ctx.store.setMemberState('leaving'));
  let reached = true;
  try {
    await deregisterHost(etcd, memberOf(m), m.leaseId);
  } catch (e) {
    if (!options.force) {
      ctx.store.write(() => ctx.store.setMemberState(m.state));
      throw e;
    }
    reached = false;
    ctx.warn(`${(e as Error).message}; leaving anyway (--force): this host's records in etcd expire with its lease, within ${m.leaseTtl} s`);
  }
  // Other hosts' sandboxes (the directory's mirror) go with the membership: policy selects them no more.
  const mirrored = ctx.store.remoteSandboxes();
  ctx.store.write(() => {
    ctx.store.deleteMember();
    for (const r of mirrored) ctx.store.deleteRemoteSandbox(r.host, r.name);
  });
  if (mirrored.length) await syncPolicy(ctx, { cut: true });
  return { member: m, etcdReached: reached };
}

/** The cluster as etcd holds it, and which host this is. */
export async function clusterStatus(ctx: Ctx): Promise<{ member: MemberRow; view: ClusterView }> {
  const m = requireMember(ctx);
  return { member: m, view: await clusterView(etcdOf(m)) };
}
