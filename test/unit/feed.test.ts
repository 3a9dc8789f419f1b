// The change feed at the store level (issue 11, point 6): triggers record committed changes, a
// rolled-back transaction records nothing, the table stays bounded, a reader that fell behind a
// prune is told so and resynchronises, a tail sees another process's commit. No kernel, no root.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DatabaseSync } from 'node:sqlite';
import { after, afterEach, beforeEach, describe, it } from 'node:test';
import { FEED_KEEP, FEED_PRUNE_EVERY, KINDS, META_TRIGGERS, type ChangeEvent } from '../../src/store/events.ts';
import { ChangeFeed, type Batch } from '../../src/store/feed.ts';
import { CNI, MIGRATIONS, POLICY, PORTS, SCHEMA, SCHEMA_VERSION } from '../../src/store/schema.ts';
import { Store } from '../../src/store/store.ts';

const until = async (cond: () => boolean) => {
  while (!cond()) await new Promise((r) => setTimeout(r, 5));
};
const brief = (e: ChangeEvent) => `${e.kind} ${e.key} ${e.action}${'state' in e.data ? ` ${e.data.state}` : ''}`;

describe('change feed', () => {
  let dir: string;
  let store: Store;
  let feed: ChangeFeed;
  const dirs: string[] = [];
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'ctnet-feed-'));
    dirs.push(dir);
    store = new Store(dir);
    feed = new ChangeFeed(dir);
  });
  afterEach(() => {
    feed.close();
    store.close();
  });
  after(() => {
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  });
  const all = () => {
    const r = feed.read(0, 1_000_000);
    assert.ok(r.ok);
    return r.events;
  };
  const sandboxWithEverything = () => {
    store.write(() => {
      store.insertNetwork({ name: 'web', bridge: 'ctbr-web', internal: false, isolate: false, hostAccess: false, mtu: null, driver: 'bridge', mac: null, dns: false, dnsForward: [], state: 'creating' }, [{ cidr: '10.1.0.0/24', family: 4, gateway: '10.1.0.1' }]);
      store.setNetworkState('web', 'ready');
    });
    store.write(() => {
      store.insertSandbox({ name: 'a', netns: '/run/netns/x', owned: true, state: 'creating' });
      store.setLabel('a', 'tier', 'web');
      store.insertAttachment({ sandbox: 'a', network: 'web', ifname: 'eth0', hostVeth: 'ctv1', mac: '02:00:00:00:00:01', state: 'creating' });
      store.insertAddress({ ip: '10.1.0.2', family: 4, cidr: '10.1.0.0/24', network: 'web', sandbox: 'a' });
      store.setCursor('web', '10.1.0.0/24', '10.1.0.2');
      store.insertPort({ sandbox: 'a', proto: 'tcp', hostIp: '', hostPort: 8080, containerPort: 80, count: 1 });
      store.insertCniAttachment({ containerId: 'c1', ifname: 'eth0', cniNetwork: 'n', sandbox: 'a', network: 'web' });
    });
    store.write(() => {
      store.setAttachmentState('a', 'web', 'ready');
      store.setSandboxState('a', 'ready');
    });
  };

  it('records each committed change of a recorded row, in order, with its data', () => {
    sandboxWithEverything();
    const events = all();
    assert.deepEqual(events.map(brief), [
      'network web created creating', 'subnet 10.1.0.0/24 created', 'network web changed ready',
      'sandbox a created creating', 'label a/tier created', 'attachment a/web created creating', 'address 10.1.0.2 created',
      'port a/tcp//8080 created', 'cni c1/eth0/n created',
      'attachment a/web changed ready', 'sandbox a changed ready',
    ]);
    assert.deepEqual(events.map((e) => e.id), events.map((_, i) => i + 1), 'ids are contiguous from 1');
    const net = events[2]!;
    assert.equal(net.kind, 'network');
    // The store's row shape (booleans, camelCase), without the owner token.
    assert.deepEqual({ ...net.data, created: '' }, { name: 'web', bridge: 'ctbr-web', internal: false, isolate: false, hostAccess: false, mtu: null, driver: 'bridge', mac: null, dns: false, dnsForward: null, state: 'ready', created: '' });
    const att = events.find((e) => e.kind === 'attachment')!;
    assert.deepEqual(att.data, { sandbox: 'a', network: 'web', ifname: 'eth0', hostVeth: 'ctv1', mac: '02:00:00:00:00:01', state: 'creating' });
    assert.match(net.at, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
    assert.ok(Math.abs(Date.parse(net.at) - Date.now()) < 60_000, 'at is the time of the write');
  });

  it('an update of unrecorded columns only (owner, IPAM cursor) or to the same values records nothing', () => {
    sandboxWithEverything();
    const head = feed.head();
    store.write(() => {
      store.db.prepare("UPDATE sandboxes SET owner = '1:2' WHERE name = 'a'").run();
      store.setCursor('web', '10.1.0.0/24', '10.1.0.9');
      store.setLabel('a', 'tier', 'web'); // an upsert to the same value
      store.setPolicyMirror(new Map([['s', ['1.2.3.4']]]));
      store.insertProcess({ sandbox: 'a', pid: 1, command: 'x' });
    });
    assert.equal(feed.head(), head);
    store.write(() => store.setLabel('a', 'tier', 'db'));
    const r = feed.read(head);
    assert.ok(r.ok);
    assert.deepEqual(r.events.map((e) => [brief(e), e.data]), [['label a/tier changed', { sandbox: 'a', key: 'tier', value: 'db' }]]);
  });

  it('a rolled-back transaction (a dry run, a failed operation) records nothing, and leaves no gap', () => {
    store.write(() => store.insertSandbox({ name: 'a', netns: '/n', owned: true, state: 'ready' }), { rollback: true });
    assert.throws(() => store.write(() => {
      store.insertSandbox({ name: 'b', netns: '/n', owned: true, state: 'ready' });
      throw new Error('boom');
    }), /boom/);
    assert.equal(feed.head(), 0);
    store.write(() => store.insertSandbox({ name: 'c', netns: '/n', owned: true, state: 'ready' }));
    assert.deepEqual(all().map((e) => [e.id, brief(e)]), [[1, 'sandbox c created ready']]);
  });

  it('a rolled-back writeAsync records nothing; a reader never sees a transaction before its commit', async () => {
    let seenInside = -1;
    await store.writeAsync(async () => {
      store.insertSandbox({ name: 'a', netns: '/n', owned: true, state: 'ready' });
      await new Promise((r) => setTimeout(r, 5));
      seenInside = feed.head();
    }, { rollback: true });
    assert.equal(seenInside, 0, 'the feed reads committed state only');
    assert.equal(feed.head(), 0);
  });

  it('an event\'s time is its commit\'s, also when the transaction held the lock across awaits', async () => {
    let beforeCommit = 0;
    await store.writeAsync(async () => {
      store.insertSandbox({ name: 'a', netns: '/n', owned: true, state: 'ready' });
      await new Promise((r) => setTimeout(r, 50));
      beforeCommit = Date.now();
    });
    const [e] = all();
    assert.ok(Date.parse(e!.at) >= beforeCommit - 1, `${e!.at} is not before ${new Date(beforeCommit).toISOString()}`);
  });

  it('removing a sandbox records the removal of everything that cascades, with the rows as they were', () => {
    sandboxWithEverything();
    const head = feed.head();
    store.write(() => store.deleteSandbox('a'));
    const r = feed.read(head);
    assert.ok(r.ok);
    assert.deepEqual(r.events.map(brief).sort(), [
      'address 10.1.0.2 removed', 'attachment a/web removed ready', 'cni c1/eth0/n removed', 'label a/tier removed',
      'port a/tcp//8080 removed', 'sandbox a removed ready',
    ]);
    const addr = r.events.find((e) => e.kind === 'address')!;
    assert.deepEqual(addr.data, { ip: '10.1.0.2', family: 4, cidr: '10.1.0.0/24', network: 'web', sandbox: 'a' });
    // A snapshot now holds the network and its subnet only.
    const snap = feed.snapshot();
    assert.equal(snap.cursor, feed.head());
    assert.deepEqual(Object.entries(snap.rows).filter(([, v]) => v.length).map(([k, v]) => `${k}:${v.length}`), ['network:1', 'subnet:1']);
  });

  it('policies are keyed by id: an unnamed rule is created with its name rule-ID, in one event', () => {
    store.write(() => store.insertPolicy({ name: undefined, action: 'allow', from: 'a', to: 'b', port: null }));
    store.write(() => store.insertPolicy({ name: 'named', action: 'deny', from: 'a', to: 'b', port: null }));
    store.write(() => store.insertPolicy({ name: undefined, action: 'allow', from: 'b', to: 'a', port: null }));
    const events = all();
    assert.deepEqual(events.map((e) => `${brief(e)} ${(e.data as { name: string }).name}`),
      ['policy 1 created rule-1', 'policy 2 created named', 'policy 3 created rule-3']);
    assert.deepEqual(events[0]!.data, { ...(events[0]!.data as object), from: 'a', to: 'b', action: 'allow', port: null });
  });

  it('stays bounded: every writer prunes to the newest FEED_KEEP, and a reader below the mark is told', () => {
    store.write(() => store.insertSandbox({ name: 'a', netns: '/n', owned: true, state: 'ready' }));
    const total = FEED_KEEP + 2 * FEED_PRUNE_EVERY + 10;
    const started = performance.now();
    store.write(() => {
      for (let i = 1; i < total; i++) store.setLabel('a', 'n', String(i));
    });
    const ms = performance.now() - started;
    const count = (store.db.prepare('SELECT count(*) AS n FROM events').get() as { n: number }).n;
    assert.equal(feed.head(), total);
    assert.ok(count <= FEED_KEEP + FEED_PRUNE_EVERY, `${count} events kept`);
    const pruned = feed.pruned();
    assert.equal(pruned, Math.floor(total / FEED_PRUNE_EVERY) * FEED_PRUNE_EVERY - FEED_KEEP);
    assert.equal((store.db.prepare('SELECT min(id) AS id FROM events').get() as { id: number }).id, pruned + 1);
    assert.deepEqual(feed.read(5), { ok: false, after: 5, pruned });
    const r = feed.read(pruned);
    assert.ok(r.ok && r.events[0]!.id === pruned + 1, 'a reader at the mark misses nothing');
    process.stderr.write(`# ${total} label changes in one transaction: ${ms.toFixed(0)} ms, ${count} events kept, pruned through #${pruned}\n`);
  });

  for (const [mode, options] of [
    // No safety poll: this passes only if inotify wakes the tail.
    ['inotify', { safetyPollMs: 1e9 }],
    ['poll only', { watch: false, intervalMs: 5 }],
  ] as const) {
    it(`tail (${mode}): catches up from a cursor, sees another connection\'s commits, resyncs after a gap`, async () => {
      sandboxWithEverything();
      const other = new Store(dir); // another writer, as a CLI process would be
      const batches: Batch[] = [];
      let wake: () => void = () => {};
      const next = () => new Promise<void>((r) => (wake = r));
      const caughtUp = next();
      const tail = feed.tail(3, (b) => {
        batches.push(b);
        wake();
      }, options);
      try {
        await caughtUp;
        assert.equal(batches.length, 1);
        const first = batches[0]!;
        assert.ok(first.kind === 'events');
        assert.deepEqual(first.events.map((e) => e.id), [4, 5, 6, 7, 8, 9, 10, 11]);

        for (let i = 0; i < 20; i++) {
          const seen = next();
          other.write(() => other.setLabel('a', 'round', String(i)));
          await seen;
        }
        const evs = batches.slice(1).flatMap((b) => (b.kind === 'events' ? b.events : []));
        assert.deepEqual(evs.map((e) => e.id), Array.from({ length: 20 }, (_, i) => 12 + i), 'every change once, in order');
        await new Promise((r) => setImmediate(r)); // the cursor moves once the batch's handler returned
        assert.equal(tail.cursor, 31);

        // Fall behind a prune: the next batch is a snapshot, then tailing goes on after it.
        const resynced = next();
        other.write(() => {
          for (let i = 0; i < FEED_KEEP + FEED_PRUNE_EVERY; i++) other.setLabel('a', 'n', String(i));
        });
        await resynced;
        const r = batches.at(-1)!;
        assert.ok(r.kind === 'resync', `got ${r.kind}`);
        assert.match(r.reason, /^events 32\.\.\d+ were pruned before they were read$/);
        assert.equal(r.cursor, feed.head());
        assert.deepEqual(r.snapshot.rows.label.map((l) => `${l.key}=${l.value}`).sort(), ['n=10999', 'round=19', 'tier=web']);
        const after = next();
        other.write(() => other.deleteLabel('a', 'n'));
        await after;
        const last = batches.at(-1)!;
        assert.ok(last.kind === 'events' && last.events.length === 1 && last.events[0]!.id === r.cursor + 1);
      } finally {
        await tail.stop();
        other.close();
      }
    });
  }

  it('tail: a cursor past the head (the store was replaced) resyncs from a snapshot', async () => {
    sandboxWithEverything();
    const got: Batch[] = [];
    const tail = feed.tail(500, (b) => void got.push(b), { intervalMs: 5 });
    await until(() => got.length > 0);
    await tail.stop();
    assert.equal(got.length, 1);
    assert.ok(got[0]!.kind === 'resync' && /past the newest event 11/.test(got[0]!.reason));
    assert.equal(got[0]!.snapshot.rows.sandbox[0]!.name, 'a');
    assert.equal(tail.cursor, 11);
  });

  it('a tail whose consumer fails gets the same batch again at the next poll', async () => {
    sandboxWithEverything();
    let calls = 0;
    const errors: string[] = [];
    const seen: number[][] = [];
    const tail = feed.tail(9, (b) => {
      if (++calls === 1) throw new Error('busy');
      if (b.kind === 'events') seen.push(b.events.map((e) => e.id));
    }, { intervalMs: 5, onError: (e) => errors.push(e.message) });
    await until(() => seen.length > 0);
    await tail.stop();
    assert.deepEqual(errors, ['busy']);
    assert.deepEqual(seen, [[10, 11]]);
  });
});

describe('schema migrations', () => {
  it('a schema 4 store gains the events table and triggers; existing rows are in snapshots, not events', () => {
    const dir = mkdtempSync(join(tmpdir(), 'ctnet-feed-'));
    try {
      const db = new DatabaseSync(join(dir, 'ctnet.db'));
      db.exec(SCHEMA + PORTS + POLICY + CNI);
      db.exec("INSERT INTO meta VALUES ('instance', 'abcd'); PRAGMA user_version = 4");
      db.exec("INSERT INTO sandboxes(name, netns, owned, state, created) VALUES ('old', '/n', 1, 'ready', 'then')");
      db.close();
      assert.equal(Object.keys(MIGRATIONS).at(-1), String(SCHEMA_VERSION));
      const store = new Store(dir);
      const feed = new ChangeFeed(dir);
      try {
        assert.equal((store.db.prepare('PRAGMA user_version').get() as { user_version: number }).user_version, SCHEMA_VERSION);
        assert.equal(feed.head(), 0);
        assert.deepEqual(feed.snapshot().rows.sandbox, [{ name: 'old', netns: '/n', owned: true, state: 'ready', created: 'then' }]);
        store.write(() => store.setSandboxState('old', 'removing'));
        assert.equal(feed.head(), 1);
        const triggers = store.db.prepare("SELECT count(*) AS n FROM sqlite_schema WHERE type = 'trigger'").get() as { n: number };
        assert.equal(triggers.n, KINDS.length * 3 + 1);
        // Reopening keeps them; a store whose triggers differ from the code's gets them replaced.
        store.db.exec(`DROP TRIGGER feed_labels_insert; UPDATE meta SET value = 'old' WHERE key = '${META_TRIGGERS}'`);
        new Store(dir).close();
        assert.equal((store.db.prepare("SELECT count(*) AS n FROM sqlite_schema WHERE type = 'trigger'").get() as { n: number }).n, KINDS.length * 3 + 1);
      } finally {
        feed.close();
        store.close();
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
