// ctnetd's overlay watch: while this host is a member of a cluster, follow every subnet lease in
// etcd (list, then watch from that revision; after a break or a compaction, list again) and keep
// each local overlay network's peers equal to the other hosts holding a lease in it. The kernel
// work is syncPeers (engine/overlay.ts): replace verbs, only the difference, so a restart of ctnetd
// or a re-listing changes no entry that is right. An etcd error never removes a peer: only a lease
// that etcd says is gone (deleted, or expired with its host) does, and only when it stays gone for
// GRACE_MS: after an etcd outage longer than the lease TTL, etcd expires every lease at once and the
// hosts register again with the same subnets within a second or two; their peers' entries must not
// be removed and written again meanwhile (traffic between them never stopped).
import { follow, type Follower, type Kv } from '../cluster/etcd.ts';
import { decodeEntry, LEASES, type LeaseValue } from '../cluster/keys.ts';
import { etcdOf } from '../engine/cluster.ts';
import { syncPeers } from '../engine/overlay.ts';
import { parsePeer, type Peer } from '../model/overlay.ts';
import type { Service, ServiceContext } from './service.ts';

/** Lease keys and what they hold, as etcd has them now. */
type Leases = Map<string, { network: string; subnet: string; value: LeaseValue }>;

/** How long a lease may be gone before its host's entries are removed. */
const GRACE_MS = Number(process.env.CTNET_PEER_GRACE_MS) || 3_000;

export function overlayWatch(): Service {
  let ctx: ServiceContext;
  let follower: { key: string; f: Follower } | undefined;
  const leases: Leases = new Map();
  /** Leases etcd deleted lately, kept as peers until GRACE_MS has passed (unless they come back). */
  const gone = new Map<string, { lease: Leases extends Map<string, infer V> ? V : never; at: number }>();
  let graceTimer: NodeJS.Timeout | undefined;
  let listed = false;
  let syncing: Promise<void> | undefined;
  let again = false;
  let stopped = false;
  /** What each network's last sync said, so the log tells changes only. */
  const said = new Map<string, string>();

  const put = (kv: Kv) => {
    const e = decodeEntry(kv.key, kv.value);
    gone.delete(kv.key);
    if (e.kind === 'lease') leases.set(kv.key, { network: e.network, subnet: e.subnet, value: e.value });
    else if (e.kind === 'bad') ctx.log(`overlay: ignoring ${kv.key}: ${e.reason}`);
  };

  async function syncAll(): Promise<void> {
    if (!listed) return; // never program from a partial view
    await ctx.exclusive(async (c) => {
      const m = c.store.member();
      if (!m || m.state !== 'ready') return;
      for (const o of c.store.overlays()) {
        if (c.store.network(o.network)?.state !== 'ready') continue;
        const peers: Peer[] = [];
        const now = performance.now();
        for (const [k, g] of gone) if (now - g.at >= GRACE_MS) gone.delete(k);
        for (const l of [...leases.values(), ...[...gone.values()].map((g) => g.lease)]) {
          if (l.network !== o.network || l.value.host === m.host) continue;
          try {
            peers.push(parsePeer({ host: l.value.host, subnet: l.subnet, underlay: l.value.underlay, vtepMac: l.value.vtepMac }));
          } catch (e) {
            ctx.log(`overlay ${o.network}: ignoring the lease of ${l.value.host}: ${(e as Error).message}`);
          }
        }
        try {
          const r = await syncPeers(c, o.network, peers);
          const text = `${r.programmed.length ? `programmed ${r.programmed.join(', ')}; ` : ''}${r.removed.length ? `removed ${r.removed.join(', ')}; ` : ''}` +
            `${r.refused.map((x) => `refused ${x.host}: ${x.reason}`).join('; ')}`;
          if (r.operations > 0 || said.get(o.network) !== text) ctx.log(`overlay ${o.network}: ${text || 'peers in place'} (${r.operations} kernel operations; ${peers.length} peers)`);
          said.set(o.network, text);
        } catch (e) {
          ctx.log(`overlay ${o.network}: programming its peers failed, trying again at the next change: ${(e as Error).message}`);
        }
      }
    });
  }

  /** A lease etcd no longer has: its peer stays for GRACE_MS, then a sync removes it. */
  function forget(key: string, lease: { network: string; subnet: string; value: LeaseValue }): void {
    gone.set(key, { lease, at: performance.now() });
    clearTimeout(graceTimer);
    graceTimer = setTimeout(kick, GRACE_MS + 50);
  }

  /** One sync now, or right after the one under way. */
  function kick(): void {
    if (stopped) return;
    if (syncing) {
      again = true;
      return;
    }
    syncing = syncAll().catch((e: Error) => ctx.log(`overlay: ${e.message}`)).finally(() => {
      syncing = undefined;
      if (again) {
        again = false;
        kick();
      }
    });
  }

  /** Follows the leases of the cluster this host is in (none: stop following). */
  async function membership(): Promise<void> {
    const m = await ctx.exclusive(async (c) => c.store.member());
    const key = m && m.state === 'ready' ? m.endpoints.join(',') : undefined;
    if (follower?.key === key) return;
    await follower?.f.stop();
    follower = undefined;
    leases.clear();
    gone.clear();
    listed = false;
    if (!key || !m) return;
    follower = {
      key,
      f: follow(etcdOf(m), LEASES, {
        snapshot(kvs) {
          const before = new Map(leases);
          leases.clear();
          for (const kv of kvs) put(kv);
          for (const [k, l] of before) if (!leases.has(k)) forget(k, l);
          listed = true;
          kick();
        },
        events(events) {
          for (const e of events) {
            if (e.type === 'put') put(e.kv);
            else {
              const l = leases.get(e.kv.key);
              leases.delete(e.kv.key);
              if (l) forget(e.kv.key, l);
            }
          }
          kick();
        },
        broken(reason, retryMs) {
          ctx.log(`overlay: the watch on etcd broke (${reason}); listing again in ${retryMs} ms, peers stay as they are`);
        },
      }),
    };
  }

  return {
    name: 'overlay',
    start(c: ServiceContext) {
      ctx = c;
      void membership();
    },
    changes(events) {
      if (events.some((e) => e.kind === 'member')) void membership();
      // A local overlay network made or removed: its peers (the device is new, or gone).
      if (events.some((e) => e.kind === 'network')) kick();
    },
    resync() {
      void membership().then(kick);
    },
    async stop() {
      stopped = true;
      clearTimeout(graceTimer);
      await follower?.f.stop();
      await syncing;
    },
  };
}
