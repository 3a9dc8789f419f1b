// Benchmark: what the change feed costs (issue 11, point 6). No kernel, no lab: store-level only.
// 1. The triggers: the store writes `ctnet create` and `ctnet rm` make for 500 sandboxes (dual-stack
//    address, label, port), with the feed's triggers and with them dropped, alternating rounds.
// 2. The commit stamp: an empty write transaction with and without the mark/stamp statements.
// 3. The tail's idle cost: CPU while nothing changes, inotify + 500 ms poll (the default) against
//    polling every 25 ms, against a process asleep.
// 4. The tail's latency: another process commits a change every 10-60 ms; ms from each commit to
//    the tail's callback, in both modes.
//
//   scripts/node bench/feed.ts [--sandboxes N] [--rounds N] [--commits N]
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { ChangeFeed, SAFETY_POLL_MS, type TailOptions } from '../src/store/feed.ts';
import { Store } from '../src/store/store.ts';

const { values } = parseArgs({
  options: {
    sandboxes: { type: 'string', default: '500' }, rounds: { type: 'string', default: '5' }, commits: { type: 'string', default: '200' },
    writer: { type: 'string' },
  },
});
const N = Number(values.sandboxes);
const ROUNDS = Number(values.rounds);
const COMMITS = Number(values.commits);

// The writer of part 4, in a process of its own (as the CLI would be).
if (values.writer !== undefined) {
  const store = new Store(values.writer);
  store.write(() => store.insertSandbox({ name: 'a', netns: '/n', owned: true, state: 'ready' }));
  for (let i = 0; i < COMMITS; i++) {
    await new Promise((r) => setTimeout(r, 10 + Math.random() * 50));
    store.write(() => store.setLabel('a', 'n', String(i)));
  }
  store.close();
  process.exit(0);
}
const dirs: string[] = [];
const fresh = () => {
  const d = mkdtempSync(join(tmpdir(), 'ctnet-bench-feed-'));
  dirs.push(d);
  return d;
};
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

/** The rows and transactions createSandbox and removeSandbox write, n times. Returns ms for each half. */
function workload(store: Store, n: number): { create: number; remove: number } {
  store.write(() => store.insertNetwork({ name: 'web', bridge: 'ctbr-web', internal: false, isolate: false, hostAccess: false, mtu: null, driver: 'bridge', mac: null, dns: false, dnsForward: [], state: 'ready' },
    [{ cidr: '10.0.0.0/16', family: 4, gateway: '10.0.0.1' }, { cidr: 'fd00::/64', family: 6, gateway: 'fd00::1' }]));
  const t0 = performance.now();
  for (let i = 0; i < n; i++) {
    const name = `s${i}`;
    const v4 = `10.0.${i >> 8}.${(i & 255) + 2}`;
    const v6 = `fd00::${(i + 2).toString(16)}`;
    store.write(() => {
      store.insertSandbox({ name, netns: `/run/netns/${name}`, owned: true, state: 'creating' });
      store.setLabel(name, 'tier', 'web');
      store.insertAttachment({ sandbox: name, network: 'web', ifname: 'eth0', hostVeth: `ctv${i}`, mac: '02:00:00:00:00:01', state: 'creating' });
      store.insertAddress({ ip: v4, family: 4, cidr: '10.0.0.0/16', network: 'web', sandbox: name });
      store.setCursor('web', '10.0.0.0/16', v4);
      store.insertAddress({ ip: v6, family: 6, cidr: 'fd00::/64', network: 'web', sandbox: name });
      store.setCursor('web', 'fd00::/64', v6);
      store.insertPort({ sandbox: name, proto: 'tcp', hostIp: '', hostPort: 10_000 + i, containerPort: 80, count: 1 });
    });
    store.write(() => {
      store.setAttachmentState(name, 'web', 'ready');
      store.setSandboxState(name, 'ready');
    });
  }
  const t1 = performance.now();
  for (let i = 0; i < n; i++) {
    const name = `s${i}`;
    store.write(() => {
      store.setSandboxState(name, 'removing');
      store.setAttachmentState(name, 'web', 'removing');
    });
    store.write(() => store.deleteSandbox(name));
  }
  return { create: t1 - t0, remove: performance.now() - t1 };
}

function dropTriggers(store: Store): void {
  for (const r of store.db.prepare("SELECT name FROM sqlite_schema WHERE type = 'trigger'").all() as { name: string }[]) {
    store.db.exec(`DROP TRIGGER ${r.name}`);
  }
}

try {
  // 1. Triggers.
  const withT = { create: [] as number[], remove: [] as number[] };
  const without = { create: [] as number[], remove: [] as number[] };
  let events = 0;
  for (let r = 0; r < ROUNDS; r++) {
    for (const triggers of r % 2 ? [false, true] : [true, false]) {
      const store = new Store(fresh());
      if (!triggers) dropTriggers(store);
      const t = workload(store, N);
      const into = triggers ? withT : without;
      into.create.push(t.create);
      into.remove.push(t.remove);
      if (triggers) events = (store.db.prepare('SELECT max(id) AS n FROM events').get() as { n: number }).n;
      store.close();
    }
  }
  const per = (ms: number) => ((ms / N) * 1000).toFixed(0);
  console.log(`store writes of ${N} sandboxes (create: 2 transactions each, rm: 2), median of ${ROUNDS} rounds; ${events} events with triggers`);
  for (const k of ['create', 'remove'] as const) {
    const a = median(without[k]);
    const b = median(withT[k]);
    console.log(`  ${k.padEnd(6)}  without triggers ${a.toFixed(0)} ms (${per(a)} µs/sandbox)   with ${b.toFixed(0)} ms (${per(b)} µs/sandbox)   +${(((b - a) / N) * 1000).toFixed(0)} µs/sandbox (+${(((b - a) / a) * 100).toFixed(0)}%)`);
  }

  // 2. The commit stamp: an empty write() (BEGIN IMMEDIATE, mark, stamp, COMMIT) against raw BEGIN/COMMIT.
  {
    const store = new Store(fresh());
    const M = 20_000;
    const time = (fn: () => void) => {
      const t = performance.now();
      for (let i = 0; i < M; i++) fn();
      return ((performance.now() - t) / M) * 1000;
    };
    const raw: number[] = [];
    const stamped: number[] = [];
    for (let r = 0; r < ROUNDS; r++) {
      raw.push(time(() => store.db.exec('BEGIN IMMEDIATE; COMMIT')));
      stamped.push(time(() => store.write(() => {})));
    }
    console.log(`empty write transaction: raw BEGIN/COMMIT ${median(raw).toFixed(1)} µs, store.write (with the feed's mark and stamp) ${median(stamped).toFixed(1)} µs`);
    store.close();
  }

  // 3. The tail's idle cost.
  const POLL_ONLY: TailOptions = { watch: false, intervalMs: 25 };
  {
    const dir = fresh();
    const store = new Store(dir);
    workload(store, 100); // some events to sit on
    const feed = new ChangeFeed(dir);
    const M = 100_000;
    const t = performance.now();
    for (let i = 0; i < M; i++) feed.head();
    const perHead = ((performance.now() - t) / M) * 1000;
    const SECONDS = 10;
    const cpu = async (options: TailOptions | undefined) => {
      const tail = options ? feed.tail(feed.head(), () => {}, options) : undefined;
      const c0 = process.cpuUsage();
      await new Promise((r) => setTimeout(r, SECONDS * 1000));
      const c = process.cpuUsage(c0);
      await tail?.stop();
      return (c.user + c.system) / 1000;
    };
    const asleep = await cpu(undefined);
    const watching = await cpu({});
    const polling = await cpu(POLL_ONLY);
    const pct = (ms: number) => `${((ms - asleep) / SECONDS / 10).toFixed(2)}% of a core`;
    console.log(`tail, idle: one head() lookup ${perHead.toFixed(1)} µs; CPU in ${SECONDS} s: asleep ${asleep.toFixed(0)} ms, ` +
      `inotify + ${SAFETY_POLL_MS} ms poll ${watching.toFixed(0)} ms (${pct(watching)}), 25 ms poll only ${polling.toFixed(0)} ms (${pct(polling)})`);
    feed.close();
    store.close();
  }

  // 4. The tail's latency, commit to callback, with another process writing.
  for (const [label, options] of [[`inotify + ${SAFETY_POLL_MS} ms poll`, {}], ['25 ms poll only', POLL_ONLY]] as const) {
    const dir = fresh();
    new Store(dir).close();
    const feed = new ChangeFeed(dir);
    const ms: number[] = [];
    const tail = feed.tail(0, (b) => {
      const now = Date.now();
      if (b.kind === 'events') for (const e of b.events) if (e.kind === 'label') ms.push(now - Date.parse(e.at));
    }, options);
    const writer = spawn(process.execPath, [import.meta.filename, '--writer', dir, '--commits', String(COMMITS)], { stdio: 'inherit' });
    await new Promise((r) => writer.on('exit', r));
    await new Promise((r) => setTimeout(r, 200));
    await tail.stop();
    feed.close();
    ms.sort((a, b) => a - b);
    const q = (x: number) => ms[Math.min(ms.length - 1, Math.floor(x * ms.length))]!;
    console.log(`tail latency, ${label}: ${ms.length} commits from another process, commit to callback p50 ${q(0.5)} ms, p95 ${q(0.95)} ms, max ${ms.at(-1)} ms`);
  }
} finally {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
}
