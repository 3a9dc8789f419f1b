// Issue 14, point 8: three hosts create 50 sandboxes each on one overlay network at once, racing for
// their leases; some of those creates (and some removals after) are SIGKILLed at a random crash
// point, and one host's ctnetd is SIGKILLed in the middle. After `ctnet gc` on each host the
// cluster agrees: no address twice across hosts, no subnet twice, every host's store, kernel,
// lease and directory entries in etcd the same story.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { EtcdLab } from '../../src/lab/etcd.ts';
import { Lab } from '../../src/lab/lab.ts';
import { random as rng } from '../../bench/crash.ts'; // mulberry32: a failure replays with CTNET_SCALE_SEED
import { checkConsistent, readStore } from './consistency.ts';

const PER_HOST = 50;
const PARALLEL = 4; // creates in flight per host (12 across the cluster, on 2 cores)
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A run told to kill itself that died without a word (a SIGKILLed ctnet says nothing). */
const crashed = (crash: object, r: { code: number; stderr: string }) => 'CTNET_CRASH_AT' in crash && r.code !== 0 && !r.stderr.trim();
/** A command the front end handed to ctnetd when the test SIGKILLed that ctnetd: killed with it, and says so. */
const diedWithDaemon = (r: { code: number; stderr: string }) => r.code !== 0 && /ended the request without an answer; the command may have run in part/.test(r.stderr);

/** Runs jobs with at most `width` in flight. */
async function pool<T>(items: T[], width: number, job: (item: T) => Promise<void>): Promise<void> {
  const queue = [...items];
  await Promise.all(Array.from({ length: width }, async () => {
    for (let item = queue.shift(); item !== undefined; item = queue.shift()) await job(item);
  }));
}

describe('overlay at scale: 3 hosts × 50 sandboxes in parallel, crashes, gc', () => {
  const seed = Number(process.env.CTNET_SCALE_SEED ?? Date.now() % 100_000);
  const random = rng(seed);
  let etcd: EtcdLab;
  const hosts: Lab[] = [];
  const names = ['h1', 'h2', 'h3'];

  const eventually = async (what: string, cond: () => Promise<boolean>, ms = 90_000): Promise<void> => {
    const start = performance.now();
    while (performance.now() - start < ms) {
      if (await cond()) return;
      await sleep(200);
    }
    assert.fail(`never: ${what}`);
  };
  const leases = async () => new Map((await etcd.etcdctl(['get', '--prefix', '/ctnet/leases/sc/'])).stdout.trim().split('\n')
    .reduce<[string, string][]>((acc, line, i, all) => (i % 2 === 0 ? [...acc, [line, all[i + 1]!]] : acc), [])
    .map(([k, v]) => [(JSON.parse(v) as { host: string }).host, k.slice('/ctnet/leases/sc/'.length).replace('-', '/')]));
  const directory = async (host: string) => new Map((await etcd.etcdctl(['get', '--prefix', `/ctnet/sandboxes/${host}/`])).stdout.trim().split('\n')
    .filter(Boolean)
    .reduce<[string, string][]>((acc, line, i, all) => (i % 2 === 0 ? [...acc, [line, all[i + 1]!]] : acc), [])
    .map(([k, v]) => [k.slice(`/ctnet/sandboxes/${host}/`.length), ((JSON.parse(v) as { addresses: string[] }).addresses).join(',')]));
  /** This host's ready sandboxes on the overlay network and their addresses, from its own store. */
  const local = (lab: Lab) => {
    const s = readStore(lab);
    const ready = new Set(s.sandboxes.filter((x) => x.state === 'ready').map((x) => String(x.name)));
    return new Map([...ready].sort().map((n) => [n, s.addresses.filter((a) => a.sandbox === n && a.network === 'sc').map((a) => String(a.ip)).join(',')]));
  };
  const inside = (ip: string, cidr: string) => {
    const [base, len] = cidr.split('/');
    const n = (a: string) => a.split('.').reduce((x, o) => x * 256 + Number(o), 0);
    const size = 2 ** (32 - Number(len));
    return Math.floor(n(ip) / size) === Math.floor(n(base!) / size);
  };

  before(async () => {
    console.log(`# seed ${seed} (CTNET_SCALE_SEED=${seed} replays it)`);
    etcd = await EtcdLab.create();
    for (const name of names) {
      const lab = await Lab.create();
      hosts.push(lab);
      await etcd.connect(lab.host);
      await lab.ctnetOk(['cluster', 'join', '--etcd', etcd.url, '--underlay', 'underlay0', '--host-name', name, '--lease-ttl', '15']);
    }
    await hosts[0]!.ctnetOk(['network', 'create', 'sc', '--driver', 'vxlan', '--subnet', '10.62.0.0/16', '--host-prefix', '25']);
  });
  after(async () => {
    for (const h of hosts) await h.destroy();
    await etcd?.destroy();
  });

  it('creates and removals in parallel on every host, some killed at random, one ctnetd killed: gc restores agreement', async () => {
    let killed = 0;
    let completed = 0;
    // One host's ctnetd dies somewhere in the middle of the batch (its lease outlives it: TTL 15 s).
    const victim = hosts[Math.floor(random() * 3)]!;
    const daemonKill = (async () => {
      await sleep(2000 + random() * 8000);
      const pid = Number(/pid (\d+)/.exec(await victim.ctnetOk(['daemon', 'status']))?.[1]);
      process.kill(pid, 'SIGKILL');
      return pid;
    })().catch((e: Error) => e); // awaited below; a failed batch must not leave it unhandled
    const started = performance.now();
    await Promise.all(hosts.map(async (lab, h) => {
      const jobs = Array.from({ length: PER_HOST }, (_, i) => `${names[h]}-s${i}`);
      await pool(jobs, PARALLEL, async (name) => {
        // About one create in six is killed at a random crash point between two of its state changes.
        const crash = random() < 1 / 6 ? { CTNET_CRASH_AT: String(Math.floor(random() * 12)) } : {};
        const r = await lab.ctnet(['create', name, '--network', 'sc', '--label', `host=${names[h]}`], crash);
        if (r.code === 0) completed++;
        else if (crashed(crash, r)) killed++;
        else if (lab === victim && diedWithDaemon(r)) killed++;
        else assert.fail(`create ${name} on ${names[h]}: ${r.code} ${r.stderr}`);
      });
    }));
    const victimPid = await daemonKill;
    assert.equal(typeof victimPid, 'number', `ctnetd of ${names[hosts.indexOf(victim)]} was killed: ${String(victimPid)}`);
    console.log(`# ${completed} creates completed, ${killed} killed, in ${((performance.now() - started) / 1000).toFixed(1)} s`);
    // Removals, some killed too.
    await Promise.all(hosts.map(async (lab, h) => {
      const gone = Array.from({ length: 8 }, (_, i) => `${names[h]}-s${i * 6}`);
      await pool(gone, PARALLEL, async (name) => {
        const crash = random() < 1 / 3 ? { CTNET_CRASH_AT: String(Math.floor(random() * 6)) } : {};
        const r = await lab.ctnet(['rm', name], crash);
        // A create killed before its record was committed leaves gc nothing to find by that name.
        if (r.code !== 0 && !crashed(crash, r) && !(lab === victim && diedWithDaemon(r)) && !/no sandbox/.test(r.stderr)) assert.fail(`rm ${name}: ${r.stderr}`);
      });
    }));
    assert.ok(killed > 0, 'the batch had killed creates');

    for (const [h, lab] of hosts.entries()) {
      const out = await lab.ctnetOk(['gc']);
      console.log(`# gc on ${names[h]}: ${out.trim().split('\n').length} repairs`);
      assert.deepEqual(await checkConsistent(lab), [], `${names[h]}: store and kernel agree after gc`);
      console.log(out.trim().split('\n').filter((l) => /ctnetd|lease/.test(l)).map((l) => `#   ${l}`).join('\n'));
    }
    // The host whose ctnetd died had its etcd lease expire: gc started ctnetd, which registers again.
    for (const [h, lab] of hosts.entries()) {
      let last = '';
      await eventually(`${names[h]}: a later gc finds nothing to do`, async () => /agree/.test(last = await lab.ctnetOk(['gc'])))
        .catch((e: Error) => assert.fail(`${e.message}: ${last}`));
    }

    // No address twice across the cluster, none outside its host's lease; no subnet twice.
    const held = await leases();
    assert.deepEqual([...held.keys()].sort(), names, `one lease per host: ${[...held.entries()].join(' ')}`);
    assert.equal(new Set(held.values()).size, 3, 'no two hosts with one subnet');
    const all: string[] = [];
    for (const [h, lab] of hosts.entries()) {
      const mine = local(lab);
      assert.ok(mine.size > PER_HOST - 8 - 15, `${names[h]} kept most of its sandboxes (${mine.size})`);
      const lease = held.get(names[h]!)!;
      assert.deepEqual(readStore(lab).networks.length, 1);
      for (const [name, ip] of mine) {
        assert.ok(ip && inside(ip, lease), `${names[h]}'s ${name} (${ip}) inside its lease ${lease}`);
        all.push(ip);
      }
    }
    assert.equal(new Set(all).size, all.length, 'no address used twice across the cluster');

    // etcd's directory says what each store says (ctnetd publishes; the killed one was restarted by gc).
    for (const [h, lab] of hosts.entries()) {
      await eventually(`${names[h]}'s directory entries match its store`, async () =>
        JSON.stringify([...(await directory(names[h]!)).entries()].sort()) === JSON.stringify([...local(lab).entries()]));
    }
    // Each kernel routes exactly the other two hosts' leases over the VXLAN device.
    for (const [h, lab] of hosts.entries()) {
      const want = names.filter((_, i) => i !== h).map((n) => held.get(n)!).sort();
      await eventually(`${names[h]} routes its two peers' subnets`, async () =>
        JSON.stringify((await lab.inHost(['ip', 'route', 'show', 'dev', 'ctov-sc'])).stdout.trim().split('\n').map((l) => l.split(' ')[0]).sort()) === JSON.stringify(want));
    }
    // And a sample of pairs on different hosts reach each other.
    for (let k = 0; k < 3; k++) {
      const [a, b] = [k, (k + 1) % 3];
      const from = [...local(hosts[a]!).keys()][Math.floor(random() * local(hosts[a]!).size)]!;
      const to = [...local(hosts[b]!).values()][Math.floor(random() * local(hosts[b]!).size)]!;
      const ok = await hosts[a]!.ctnet(['exec', from, '--', 'ping', '-c', '1', '-W', '2', to]);
      assert.equal(ok.code, 0, `${names[a]}'s ${from} reaches ${to} on ${names[b]}: ${ok.stdout}`);
    }
  });
});
