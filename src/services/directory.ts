// ctnetd's sandbox directory: while this host is a member of a cluster,
// - publish its sandboxes on overlay networks to etcd (/ctnet/sandboxes/HOST/NAME: addresses,
//   labels, networks), bound to the host's etcd lease, as the change feed says they change; and
// - follow every host's entries (list, then watch; after a break, list again) and mirror the OTHER
//   hosts' into the store (remote_sandboxes), then bring the policy sets up to date, so labels,
//   sandbox names and net:NAME select sandboxes wherever they run.
//
// What this host has published is known from the same watch (its own keys), so one comparison
// does every kind of repair: an entry missing (its lease expired, etcd lost it, a restart of
// ctnetd), stale (a sandbox gone while ctnetd was down) or bound to an old lease (re-registration)
// is written or withdrawn. An etcd error never deletes a mirrored row: only a delete event or a
// fresh listing that lacks it does.
import { EtcdError } from '../cluster/etcd.ts';
import { parseKey, SANDBOXES } from '../cluster/keys.ts';
import { publishSandbox, withdrawSandbox } from '../cluster/registry.ts';
import { applyMirror, clearMirror, directoryEntries, entryText, remoteRow, type MirrorChange } from '../engine/directory.ts';
import { syncPolicy } from '../engine/policy.ts';
import type { RemoteSandboxRow } from '../store/store.ts';
import type { ClusterAgentHooks } from './cluster.ts';
import { followCluster, RETRY_MS, type Following } from './cluster-follow.ts';
import type { Service, ServiceContext } from './service.ts';

/** The change feed's kinds that change what this host publishes. */
const PUBLISHED_KINDS = new Set(['sandbox', 'attachment', 'address', 'label', 'network', 'alias']);

/** One of this host's entries as etcd holds it (as far as the watch and our own writes tell). */
interface Own {
  readonly text: string;
  readonly lease: string;
}

export interface SandboxDirectory {
  readonly service: Service;
  /** For the cluster agent: republish at once under a new lease; list again when etcd is back. */
  readonly hooks: ClusterAgentHooks;
}

export function sandboxDirectory(): SandboxDirectory {
  let ctx: ServiceContext | undefined;
  /** This host's entries in etcd, and the highest revision seen of each key (late events lose). */
  const own = new Map<string, Own>();
  const seen = new Map<string, bigint>();
  let listed = false;

  const log = (m: string) => ctx?.log(m);

  /** Writes the mirror and, if it changed, the policy sets (cutting flows they now deny). */
  async function mirror(change: MirrorChange): Promise<void> {
    const c = ctx!;
    const said = await c.exclusive(async (e) => {
      const said = applyMirror(e.store, change);
      if (said.length) await syncPolicy(e, { cut: true });
      return said;
    });
    if (said.length) log(`mirrored ${said.join(', ')}; policy sets up to date`);
  }

  /** Notes one of this host's keys as etcd holds it at a revision (undefined: deleted). */
  function noteOwn(name: string, value: Own | undefined, revision: bigint): void {
    if (revision <= (seen.get(name) ?? -1n)) return; // older than what we wrote or saw since
    seen.set(name, revision);
    if (value) own.set(name, value);
    else own.delete(name);
  }

  /** One round: make this host's entries in etcd what its store says; false when it could not compare yet. */
  async function publish(f: Following | undefined): Promise<boolean> {
    if (!listed || !f || !ctx) return false; // never withdraw from a partial view
    const { want, leaseId, host } = await ctx.exclusive(async (e) => {
      const m = e.store.member();
      return { want: directoryEntries(e.store), leaseId: m?.state === 'ready' ? m.leaseId : null, host: m?.host };
    });
    if (!leaseId || host !== f.self || !f.current()) return false; // not registered yet, or the membership changed
    const wrote: string[] = [];
    const withdrew: string[] = [];
    for (const [name, value] of want) {
      const text = entryText(value);
      const have = own.get(name);
      if (have?.text === text && have.lease === leaseId) continue;
      const revision = await publishSandbox(f.etcd, host, name, value, leaseId);
      noteOwn(name, { text, lease: leaseId }, BigInt(revision));
      wrote.push(name);
    }
    for (const name of [...own.keys()]) {
      if (want.has(name)) continue;
      await withdrawSandbox(f.etcd, host, name);
      own.delete(name);
      withdrew.push(name);
    }
    if (wrote.length || withdrew.length) {
      log(`published ${wrote.join(', ') || 'nothing'}${withdrew.length ? `; withdrew ${withdrew.join(', ')}` : ''} (lease ${leaseId})`);
    }
    return true;
  }

  const cluster = followCluster({
    ctx: () => ctx,
    prefix: () => SANDBOXES,
    reset() {
      own.clear();
      seen.clear();
      listed = false;
    },
    async left(c) {
      // Not in a cluster (any more): other hosts' sandboxes are nobody's to select.
      const cleared = await c.exclusive(async (e) => {
        if (!clearMirror(e.store)) return false;
        await syncPolicy(e, { cut: true });
        return true;
      });
      if (cleared) log('no longer in a cluster: mirror of other hosts\' sandboxes emptied');
    },
    handlers: (mine) => {
      const self = mine.self;
      return {
        async snapshot(kvs, revision) {
          if (!mine.current()) return;
          const put: RemoteSandboxRow[] = [];
          own.clear();
          for (const kv of kvs) {
            const k = parseKey(kv.key);
            if (k?.kind === 'sandbox' && k.host === self) {
              // Ours, whatever it holds: compared by its text, so a bad one is written again.
              own.set(k.name, { text: kv.value, lease: kv.lease });
              seen.set(k.name, BigInt(kv.modRevision));
              continue;
            }
            const r = remoteRow(kv, self);
            if (r && 'bad' in r) log(`ignoring ${r.bad}`);
            else if (r) put.push(r);
          }
          // A key of ours absent from the listing: nothing older than it may bring it back.
          for (const name of seen.keys()) if (!own.has(name)) seen.set(name, BigInt(revision));
          await mirror({ put, removed: [], snapshot: true });
          listed = true;
          kick();
        },
        async events(events) {
          if (!mine.current()) return;
          const put: RemoteSandboxRow[] = [];
          const removed: { host: string; name: string }[] = [];
          let mineChanged = false;
          for (const ev of events) {
            const k = parseKey(ev.kv.key);
            if (k?.kind !== 'sandbox') continue;
            if (k.host === self) {
              noteOwn(k.name, ev.type === 'put' ? { text: ev.kv.value, lease: ev.kv.lease } : undefined, BigInt(ev.kv.modRevision));
              mineChanged = true;
              continue;
            }
            const r = ev.type === 'put' ? remoteRow(ev.kv, self) : undefined;
            if (r && !('bad' in r)) {
              put.push(r);
              continue;
            }
            // Deleted, or replaced by a value that does not read: either way no longer a sandbox there.
            if (r) log(`ignoring ${r.bad}`);
            removed.push({ host: k.host, name: k.name });
          }
          if (put.length || removed.length) await mirror({ put, removed, snapshot: false });
          if (mineChanged) kick();
        },
        broken(reason, retryMs) {
          log(`the watch on etcd broke (${reason}); listing again in ${retryMs} ms, the mirror stays as it is`);
        },
      };
    },
    rounds: {
      run: publish,
      why: (e) => e instanceof EtcdError && e.unreachable ? e.message
        : `${e.message}${e instanceof EtcdError && e.grpcCode === 5 ? ' (the host\'s etcd lease is gone: waiting for the cluster service to register again)' : ''}`,
      failed: (why) => `cannot publish this host's sandboxes: ${why}; trying again every ${RETRY_MS / 1000} s (an error withdraws nothing)`,
      recovered: 'publishing works again',
    },
  });
  const kick = () => cluster.kick();
  const membership = () => cluster.membership();

  return {
    hooks: {
      registered() {
        kick(); // every entry is bound to the old lease (or gone with it): write them again
      },
      recovered() {
        cluster.restart(); // list again now: what changed while etcd did not answer
      },
    },
    service: {
      name: 'directory',
      start(c: ServiceContext) {
        ctx = c;
        void membership().catch((e: Error) => log(`cannot follow the directory: ${e.message}`));
      },
      changes(events) {
        if (events.some((e) => e.kind === 'member')) void membership().then(kick, (e: Error) => log(`cannot follow the directory: ${e.message}`));
        else if (events.some((e) => PUBLISHED_KINDS.has(e.kind))) kick();
      },
      resync() {
        void membership().then(kick, (e: Error) => log(`cannot follow the directory: ${e.message}`));
      },
      async stop() {
        await cluster.stop();
      },
    },
  };
}
