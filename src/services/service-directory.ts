// ctnetd's service directory: services on overlay networks, known on every member host.
// - This host's own services on overlay networks are published to etcd (/ctnet/services/NAME),
//   bound to the host's etcd lease, as the change feed says they change: the VIP is from this
//   host's lease of the network, so the service lives exactly as long as that lease does.
// - Every other host's entries are followed (list, then watch; after a break, list again) and
//   installed here (engine/services.ts mirrorServices): the same chain and elements as a local
//   service, balanced over the selected sandboxes of every host (the sandbox directory's mirror).
//
// The owner's store is the truth (as for sandboxes): an entry of this host that its store does not
// have is withdrawn, one that differs is written again; `service rm` of another host's service is
// refused. An etcd error never removes a mirrored service: only a delete event or a fresh listing
// that lacks it does.
import type { Kv } from '../cluster/etcd.ts';
import { decodeEntry, encodeService, parseKey, serviceKey, SERVICES, type ServiceValue } from '../cluster/keys.ts';
import { mirrorServices, ownServiceEntries } from '../engine/services.ts';
import type { ClusterAgentHooks } from './cluster.ts';
import { followCluster, RETRY_MS, type Following } from './cluster-follow.ts';
import type { Service, ServiceContext } from './service.ts';

/** The change feed's kinds after which this host's entries or its copies may differ from etcd. */
const KINDS = new Set(['service', 'network']);

/** One services/NAME key as the watch last saw it. */
interface Seen {
  readonly text: string;
  readonly lease: string;
  /** Undefined: the value does not read (reported, left alone). */
  readonly value: ServiceValue | undefined;
}

export interface ServiceDirectory {
  readonly service: Service;
  readonly hooks: ClusterAgentHooks;
}

export function serviceDirectory(): ServiceDirectory {
  let ctx: ServiceContext | undefined;
  const entries = new Map<string, Seen>();
  let listed = false;
  /** What the mirror last refused (logged once until it changes). */
  let refusedSaid = '';

  const log = (m: string) => ctx?.log(m);

  const note = (kv: Pick<Kv, 'key' | 'value' | 'lease'>, name: string) => {
    const e = decodeEntry(kv.key, kv.value);
    if (e.kind === 'bad') log(`ignoring ${e.key}: ${e.reason}`);
    entries.set(name, { text: kv.value, lease: kv.lease, value: e.kind === 'service' ? e.value : undefined });
  };

  /** One round: this host's entries in etcd as its store says, then its copies of the others' as etcd says. */
  async function round(f: Following | undefined): Promise<boolean> {
    if (!listed || !f || !ctx) return false; // never withdraw or remove from a partial view
    const { want, leaseId, host } = await ctx.exclusive(async (e) => {
      const m = e.store.member();
      return { want: ownServiceEntries(e.store, f.self), leaseId: m?.state === 'ready' ? m.leaseId : null, host: m?.host };
    });
    if (!leaseId || host !== f.self || !f.current()) return false;
    const wrote: string[] = [];
    const withdrew: string[] = [];
    for (const [name, value] of want) {
      const text = encodeService(value);
      const have = entries.get(name);
      if (have?.text === text && have.lease === leaseId) continue;
      if (have?.value && have.value.host !== host) {
        // Two hosts made the same name at once (each checked etcd before): the first written keeps it.
        log(`cannot publish service ${name}: host ${have.value.host} has a service of that name; remove one of them`);
        continue;
      }
      // Created only if absent or still this host's (a host that took the name meanwhile keeps it).
      const r = await f.etcd.txn({
        compare: have ? [{ key: serviceKey(name), target: 'value', op: '=', value: have.text }] : [{ key: serviceKey(name), target: 'version', op: '=', value: 0 }],
        success: [{ put: serviceKey(name), value: text, lease: leaseId }],
      });
      if (r.succeeded) {
        entries.set(name, { text, lease: leaseId, value });
        wrote.push(name);
      }
    }
    for (const [name, seen] of [...entries]) {
      if (seen.value?.host !== host || want.has(name)) continue;
      await f.etcd.txn({ compare: [{ key: serviceKey(name), target: 'value', op: '=', value: seen.text }], success: [{ delete: serviceKey(name) }] });
      entries.delete(name);
      withdrew.push(name);
    }
    if (wrote.length || withdrew.length) log(`services: published ${wrote.join(', ') || 'nothing'}${withdrew.length ? `; withdrew ${withdrew.join(', ')}` : ''} (lease ${leaseId})`);
    const others = new Map([...entries].flatMap(([name, s]) => (s.value && s.value.host !== host ? [[name, s.value] as const] : [])));
    const { said, refused } = await ctx.exclusive((e) => mirrorServices(e, others));
    if (said.length) log(`services of other hosts: ${said.join(', ')}`);
    const r = refused.join('; ');
    if (r && r !== refusedSaid) log(`services of other hosts not installed: ${r}`);
    refusedSaid = r;
    return true;
  }

  const cluster = followCluster({
    ctx: () => ctx,
    prefix: () => SERVICES,
    reset() {
      entries.clear();
      listed = false;
    },
    async left(c) {
      // Not in a cluster (any more): other hosts' services are nobody's to balance here.
      const { said } = await c.exclusive((e) => mirrorServices(e, new Map()));
      if (said.length) log(`no longer in a cluster: services of other hosts removed (${said.join(', ')})`);
    },
    handlers: (mine) => ({
      snapshot(kvs) {
        if (!mine.current()) return;
        entries.clear();
        for (const kv of kvs) {
          const k = parseKey(kv.key);
          if (k?.kind === 'service') note(kv, k.name);
        }
        listed = true;
        kick();
      },
      events(events) {
        if (!mine.current()) return;
        for (const ev of events) {
          const k = parseKey(ev.kv.key);
          if (k?.kind !== 'service') continue;
          if (ev.type === 'put') note(ev.kv, k.name);
          else entries.delete(k.name);
        }
        kick();
      },
      broken(reason, retryMs) {
        log(`the services watch on etcd broke (${reason}); listing again in ${retryMs} ms, services stay as they are`);
      },
    }),
    rounds: {
      run: round,
      why: (e) => e.message,
      failed: (why) => `cannot bring services in step with etcd: ${why}; trying again every ${RETRY_MS / 1000} s (an error removes nothing)`,
      recovered: 'the service directory works again',
    },
  });
  const kick = () => cluster.kick();
  const membership = () => cluster.membership();

  return {
    hooks: {
      registered() {
        kick(); // the entries were bound to the old lease (or went with it): write them again
      },
      recovered() {
        cluster.restart();
      },
    },
    service: {
      name: 'service-directory',
      start(c: ServiceContext) {
        ctx = c;
        void membership().catch((e: Error) => log(`cannot follow the service directory: ${e.message}`));
      },
      changes(events) {
        if (events.some((e) => e.kind === 'member')) void membership().then(kick, (e: Error) => log(`cannot follow the service directory: ${e.message}`));
        else if (events.some((e) => KINDS.has(e.kind))) kick();
      },
      resync() {
        void membership().then(kick, (e: Error) => log(`cannot follow the service directory: ${e.message}`));
      },
      async stop() {
        await cluster.stop();
      },
    },
  };
}
