// ctnetd's part of cluster membership: while this host is a member (cluster_member in the store),
// keep its etcd lease alive, renewing every third of its TTL. When the lease is gone (etcd was
// unreachable longer than the TTL, or ctnetd was down that long), register again under a new
// lease: the same host record, and the same subnets (cluster_leases), never others, so live
// sandboxes keep their addresses. While etcd is unreachable it changes nothing anywhere (etcd,
// store, kernel) and tries again every second; it never deletes on an error.
import { EtcdError, type EtcdClient } from '../cluster/etcd.ts';
import { reclaimLease, registerHost } from '../cluster/registry.ts';
import { etcdOf, memberOf } from '../engine/cluster.ts';
import type { ClusterLeaseRow, MemberRow } from '../store/store.ts';
import type { Service, ServiceContext } from './service.ts';

/** While etcd does not answer, look again this often (and never less often than renewals are due). */
const RETRY_MS = 1_000;

/** What the agent tells whoever wires to it (the overlay watch: list again after an outage). */
export interface ClusterAgentHooks {
  /** The host is registered under this etcd lease (at start, and after each re-registration). */
  registered?(member: MemberRow, leaseId: string): void;
  /** etcd answered again after failing. */
  recovered?(downMs: number): void;
}

export function clusterAgent(hooks: ClusterAgentHooks = {}): Service {
  let ctx: ServiceContext;
  let timer: NodeJS.Timeout | undefined;
  let running: Promise<void> | undefined;
  let stopped = false;
  let again = false;
  let client: { key: string; etcd: EtcdClient } | undefined;
  /** Since when etcd has not answered (undefined: it answers). */
  let downSince: number | undefined;
  let lastMember: string | undefined;
  /** hooks.registered was told about the lease found alive at start. */
  let registeredOnce = false;

  const read = () => ctx.exclusive(async (e) => ({ member: e.store.member(), leases: e.store.clusterLeases() }));
  const etcdFor = (m: MemberRow) => {
    const key = m.endpoints.join(',');
    if (client?.key !== key) client = { key, etcd: etcdOf(m) };
    return client.etcd;
  };
  const intervalMs = (m: MemberRow) => Math.max(1_000, (m.leaseTtl * 1000) / 3);

  /** Registers the host again under a new lease, with the subnets it held. */
  async function register(etcd: EtcdClient, m: MemberRow, leases: readonly ClusterLeaseRow[]): Promise<void> {
    const lease = await etcd.leaseGrant(m.leaseTtl);
    try {
      await registerHost(etcd, memberOf(m), lease.id, { joined: m.joined, takeover: true });
      for (const l of leases) {
        const r = await reclaimLease(etcd, { network: l.network, subnet: l.subnet, member: memberOf(m), leaseId: lease.id });
        if (r === 'no-network') ctx.log(`overlay network ${l.network} is no longer defined in the cluster: ${l.subnet} not taken back`);
        else if (r !== 'claimed') ctx.log(`CONFLICT: ${l.subnet} of ${l.network}, this host's subnet, is now leased by ${r.heldBy}; sandboxes here keep it, but the two hosts collide until one leaves`);
      }
      // The membership may have changed while etcd was asked (a leave): record only if it did not.
      const kept = await ctx.exclusive(async (e) => {
        const now = e.store.member();
        if (!now || now.state !== 'ready' || now.host !== m.host || now.joined !== m.joined) return false;
        e.store.write(() => e.store.setMemberLease(lease.id));
        return true;
      });
      if (!kept) {
        await etcd.leaseRevoke(lease.id);
        return;
      }
      ctx.log(`registered ${m.host} (underlay ${m.underlay}) under etcd lease ${lease.id}, TTL ${lease.ttl} s${leases.length ? `; subnets ${leases.map((l) => `${l.network} ${l.subnet}`).join(', ')}` : ''}`);
      hooks.registered?.({ ...m, leaseId: lease.id }, lease.id);
    } catch (e) {
      await etcd.leaseRevoke(lease.id).catch(() => {}); // unreachable: it expires by itself
      throw e;
    }
  }

  /** One round: renew (or register); returns when to look again. */
  async function round(): Promise<number | undefined> {
    const { member: m, leases } = await read();
    const who = m && `${m.host}@${m.endpoints.join(',')}`;
    if (who !== lastMember) {
      if (m) ctx.log(`member of the cluster at ${m.endpoints.join(',')} as ${m.host}: renewing its etcd lease every ${(intervalMs(m) / 1000).toFixed(1)} s`);
      else if (lastMember) ctx.log('no longer a member of a cluster');
      lastMember = who;
    }
    if (!m || m.state !== 'ready') return undefined; // not a member, or leaving: nothing to keep alive
    const etcd = etcdFor(m);
    try {
      const ttl = m.leaseId ? await etcd.leaseKeepAlive(m.leaseId) : 0;
      if (ttl <= 0) {
        ctx.log(m.leaseId ? `etcd lease ${m.leaseId} of ${m.host} is gone (expired while it could not be renewed): registering again` : `registering ${m.host}`);
        await register(etcd, m, leases);
      } else if (downSince === undefined && m.leaseId && !registeredOnce) {
        registeredOnce = true;
        hooks.registered?.(m, m.leaseId);
      }
      if (downSince !== undefined) {
        const down = performance.now() - downSince;
        ctx.log(`etcd answers again after ${(down / 1000).toFixed(1)} s`);
        downSince = undefined;
        hooks.recovered?.(down);
      }
      return intervalMs(m);
    } catch (e) {
      if (e instanceof EtcdError && e.unreachable) {
        if (downSince === undefined) {
          downSince = performance.now();
          ctx.log(`${e.message}: changing nothing, trying again every ${RETRY_MS / 1000} s`);
        }
        return Math.min(RETRY_MS, intervalMs(m));
      }
      ctx.log(`cannot keep ${m.host} registered: ${(e as Error).message}${(e as EtcdError).hint ? ` (${(e as EtcdError).hint})` : ''}; trying again in ${(intervalMs(m) / 1000).toFixed(1)} s`);
      return intervalMs(m);
    }
  }

  const schedule = (ms: number | undefined) => {
    clearTimeout(timer);
    timer = undefined;
    if (!stopped && ms !== undefined) timer = setTimeout(kick, ms);
  };
  /** Runs a round now (or right after the one under way). */
  function kick(): void {
    if (stopped) return;
    if (running) {
      again = true;
      return;
    }
    clearTimeout(timer);
    running = round()
      .catch((e: Error) => {
        ctx.log(`round failed: ${e.stack ?? e.message}`);
        return RETRY_MS;
      })
      .then((ms) => {
        running = undefined;
        if (again) {
          again = false;
          kick();
        } else {
          schedule(ms);
        }
      });
  }

  return {
    name: 'cluster',
    start(c: ServiceContext) {
      ctx = c;
      kick();
    },
    changes(events) {
      // A join or leave (or anything about the membership): look now.
      if (events.some((e) => e.kind === 'member')) kick();
    },
    resync() {
      kick();
    },
    async stop() {
      stopped = true;
      clearTimeout(timer);
      await running;
    },
  };
}
