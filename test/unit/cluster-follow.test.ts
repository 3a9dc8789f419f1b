// followCluster, the part the sandbox directory, the service directory and the trace responder
// share: it follows the prefix of the cluster the store says this host is in (and a change of
// membership, or leaving), runs rounds one at a time, tries a failed one again (its error logged once)
// and stops cleanly. etcd is a fake follow() here: what is checked is the machinery, not etcd.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { EtcdClient, Follower, FollowHandlers } from '../../src/cluster/etcd.ts';
import type { Ctx } from '../../src/engine/context.ts';
import { followCluster, RETRY_MS, type ClusterFollowDeps, type Following, type Rounds } from '../../src/services/cluster-follow.ts';
import type { ServiceContext } from '../../src/services/service.ts';
import type { MemberRow } from '../../src/store/store.ts';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
/** Polls until cond holds (a bound that only ends a hung test, never a measure). */
async function until(what: string, cond: () => boolean): Promise<void> {
  for (let i = 0; i < 600 && !cond(); i++) await sleep(10);
  assert.ok(cond(), `never: ${what}`);
}

const member = (host: string, endpoint: string, state: MemberRow['state'] = 'ready'): MemberRow =>
  ({ host, endpoints: [endpoint], underlay: '192.0.2.1', vtepMac: '02:00:00:00:00:01', leaseTtl: 8, leaseId: '7', state, joined: 'now' });

/** A fake world: the store's membership, ctnetd's log, and every follower made (by prefix and endpoint). */
function world() {
  const state = { member: undefined as MemberRow | undefined };
  const log: string[] = [];
  const followers: { prefix: string; endpoint: string; h: FollowHandlers; restarts: number; stopped: boolean }[] = [];
  const ctx: ServiceContext = {
    stateDir: '/nonexistent',
    feed: undefined as never,
    log: (m) => log.push(m),
    exclusive: async (fn) => fn({ store: { member: () => state.member } } as unknown as Ctx),
  };
  const deps: ClusterFollowDeps = {
    etcdOf: (m) => ({ endpoint: m.endpoints[0] }) as unknown as EtcdClient,
    follow(etcd, prefix, h): Follower {
      const rec = { prefix, endpoint: (etcd as unknown as { endpoint: string }).endpoint, h, restarts: 0, stopped: false };
      followers.push(rec);
      return { restart: () => void rec.restarts++, stop: async () => void (rec.stopped = true) };
    },
  };
  return { state, log, followers, ctx, deps };
}

describe('followCluster', () => {
  it('follows the prefix of the cluster the store names, a change of membership, and leaving', async () => {
    const w = world();
    const events: string[] = [];
    const seen: Following[] = [];
    const c = followCluster({
      ctx: () => w.ctx,
      prefix: (self) => `/p/${self}/`,
      handlers: (f) => {
        seen.push(f);
        return { snapshot: () => {}, events: () => {} };
      },
      reset: () => events.push('reset'),
      left: async () => void events.push('left'),
    }, w.deps);

    await c.membership();
    assert.deepEqual(events, [], 'not a member, and nothing followed before: nothing to do');
    assert.equal(w.followers.length, 0);

    w.state.member = member('h1', 'http://192.0.2.9:2379');
    await c.membership();
    await c.membership(); // the same membership: nothing to do
    assert.deepEqual(w.followers.map((f) => `${f.prefix} ${f.endpoint}`), ['/p/h1/ http://192.0.2.9:2379']);
    assert.equal(c.current?.self, 'h1');
    assert.ok(seen[0]!.current());
    c.restart();
    assert.equal(w.followers[0]!.restarts, 1);

    // Joined another cluster: the old follower stops before the new one starts, and its view is forgotten.
    w.state.member = member('h1', 'http://192.0.2.10:2379');
    await Promise.all([c.membership(), c.membership()]); // asked together: one check after the other
    assert.deepEqual(w.followers.map((f) => `${f.endpoint} ${f.stopped}`), ['http://192.0.2.9:2379 true', 'http://192.0.2.10:2379 false']);
    assert.equal(seen[0]!.current(), false, 'a late callback of the old follower can tell');
    assert.ok(seen[1]!.current());
    assert.deepEqual(events, ['reset', 'reset']);

    // Leaving (state leaving counts as out): stopped, reset, left.
    w.state.member = member('h1', 'http://192.0.2.10:2379', 'leaving');
    await c.membership();
    assert.equal(w.followers[1]!.stopped, true);
    assert.equal(c.current, undefined);
    assert.deepEqual(events, ['reset', 'reset', 'reset', 'left']);
    await c.stop();
  });

  it('a failed round is tried again, its error logged once; success after failures says so; a kick during a round runs one more', async () => {
    const w = world();
    w.state.member = member('h1', 'http://192.0.2.9:2379');
    const results: (Error | boolean)[] = [new Error('no etcd'), new Error('no etcd'), new Error('lease gone'), true];
    const ran: (string | undefined)[] = [];
    /** While set, a round waits for it before it ends. */
    let gate: Promise<void> | undefined;
    const rounds: Rounds = {
      async run(f) {
        ran.push(f?.self);
        await gate;
        const next = results.shift() ?? true;
        if (next instanceof Error) throw next;
        return next;
      },
      why: (e) => e.message,
      failed: (why) => `failed: ${why}`,
      recovered: 'works again',
    };
    const c = followCluster({ ctx: () => w.ctx, prefix: () => '/p/', handlers: () => ({ snapshot: () => {}, events: () => {} }), reset: () => {}, rounds }, w.deps);
    await c.membership();
    c.kick();
    await until('the retries succeed', () => w.log.includes('works again'));
    assert.deepEqual(w.log, ['failed: no etcd', 'failed: lease gone', 'works again'], 'each reason once, then the recovery');
    assert.deepEqual(ran, ['h1', 'h1', 'h1', 'h1'], 'each round is handed the membership followed');
    assert.ok(RETRY_MS > 0);

    // Kicks during a round: exactly one more round after it.
    let open!: () => void;
    gate = new Promise<void>((r) => { open = r; });
    const before = ran.length;
    c.kick();
    await until('the round is under way', () => ran.length === before + 1);
    c.kick();
    c.kick();
    open();
    await until('one more round ran', () => ran.length === before + 2);
    await c.stop(); // waits for the round under way
    assert.equal(ran.length, before + 2, 'two kicks during a round make one round after it');
  });

  it('stop: the follower stops, a pending retry never runs, a kick does nothing', async () => {
    const w = world();
    w.state.member = member('h1', 'http://192.0.2.9:2379');
    let runs = 0;
    const c = followCluster({
      ctx: () => w.ctx, prefix: () => '/p/', handlers: () => ({ snapshot: () => {}, events: () => {} }), reset: () => {},
      rounds: { run: async () => { runs++; throw new Error('down'); }, why: (e) => e.message, failed: (why) => `failed: ${why}`, recovered: 'works again' },
    }, w.deps);
    await c.membership();
    c.kick();
    await until('the first round failed', () => w.log.length === 1);
    await c.stop();
    assert.equal(w.followers[0]!.stopped, true);
    c.kick();
    await sleep(RETRY_MS * 2); // past when the retry was due: it must not come
    assert.equal(runs, 1);
    assert.deepEqual(w.log, ['failed: down']);
  });

  it('stop during a membership check: no follower is left running', async () => {
    const w = world();
    w.state.member = member('h1', 'http://192.0.2.9:2379');
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    // The store read waits, as under ctnetd's queue: stop comes meanwhile.
    const ctx: ServiceContext = { ...w.ctx, exclusive: async (fn) => { await gate; return fn({ store: { member: () => w.state.member } } as unknown as Ctx); } };
    const c = followCluster({ ctx: () => ctx, prefix: () => '/p/', handlers: () => ({ snapshot: () => {}, events: () => {} }), reset: () => {} }, w.deps);
    const checking = c.membership();
    const stopping = c.stop();
    release();
    await checking;
    await stopping;
    assert.deepEqual(w.followers.filter((f) => !f.stopped), [], 'every follower made is stopped');
    await c.membership(); // a late member event after stop
    assert.deepEqual(w.followers.filter((f) => !f.stopped), []);
  });
});
