// Cluster membership (issue 14, the control plane's foundation): two lab hosts and etcd in its own
// namespace on a lab underlay. Hosts join, list each other with their lease's TTL, leave; a host
// whose ctnetd is killed drops out after its TTL and comes back with the same subnet; a hung etcd
// (SIGSTOP) makes commands that need it fail fast, and ctnetd recovers by itself after SIGCONT;
// bad input changes nothing, locally or in etcd.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { closeSync, openSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { DatabaseSync } from 'node:sqlite';
import { after, before, describe, it } from 'node:test';
import type { EtcdLab } from '../../src/lab/etcd.ts';
import { ROOT, type Lab } from '../../src/lab/lab.ts';
import { EtcdHosts } from './etcd-hosts.ts';

const TTL = 5;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface LsJson {
  self: string;
  hosts: { name: string; underlay: string; vtepMac: string; ttl: number; grantedTtl: number; health: string; leases: { network: string; subnet: string; ttl: number }[] }[];
}

describe('cluster membership in etcd', () => {
  let cluster: EtcdHosts | undefined;
  let etcd: EtcdLab;
  let h1: Lab;
  let h2: Lab;
  const underlay: Record<string, string> = {};

  const ls = async (lab: Lab): Promise<LsJson> => JSON.parse(await lab.ctnetOk(['cluster', 'ls', '--json'])) as LsJson;
  const names = async (lab: Lab) => (await ls(lab)).hosts.map((h) => h.name).sort();
  /** Every key under /ctnet/ with its value (what "changes nothing in etcd" compares). */
  const etcdKeys = async () => {
    const r = await etcd.etcdctl(['get', '--prefix', '/ctnet/']);
    assert.equal(r.code, 0, r.stderr);
    return r.stdout;
  };
  const daemonPid = async (lab: Lab) => Number(/pid (\d+)/.exec(await lab.ctnetOk(['daemon', 'status']))?.[1]);
  const daemonLog = (lab: Lab) => readFileSync(join(lab.stateDir, 'ctnetd.log'), 'utf8');
  /** Polls until cond holds (a generous bound that only ends a hung test, never a measure). */
  const eventually = async (what: string, cond: () => Promise<boolean>, ms = 60_000) => {
    const until = Date.now() + ms;
    while (Date.now() < until) {
      if (await cond()) return;
      await sleep(250);
    }
    assert.fail(`never: ${what}`);
  };
  const join_ = (lab: Lab, name: string) => cluster!.join(lab, name);

  before(async () => {
    cluster = await EtcdHosts.create(2, { ttl: TTL });
    etcd = cluster.etcd;
    [h1, h2] = [cluster.host(0), cluster.host(1)];
    Object.assign(underlay, { h1: cluster.underlay[0], h2: cluster.underlay[1] });
  });
  after(async () => {
    await cluster?.destroy();
  });

  it('the etcd client and the registry hold against a real etcd (run inside a lab host)', async () => {
    // Without NODE_TEST_CONTEXT: else the inner runner takes itself for a child of this one.
    const r = await h1.inHost(['env', '-u', 'NODE_TEST_CONTEXT', join(ROOT, 'scripts', 'node'), '--test', '--test-reporter=tap', join(ROOT, 'test', 'lab', 'cluster-etcd.ts')],
      { ETCD_URL: etcd.url });
    assert.equal(r.code, 0, r.stdout + r.stderr);
    assert.match(r.stdout, /# fail 0/);
  });

  it('bad input changes nothing: a malformed or unreachable etcd URL', async () => {
    const keys = await etcdKeys();
    let r = await h1.ctnet(['cluster', 'join', '--etcd', '192.0.2.1:2379', '--host-name', 'h1']);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /^ctnet: etcd URL "192.0.2.1:2379" has no http:\/\/ in front\nhint: write it as http:\/\/HOST:PORT, e.g. http:\/\/192.0.2.1:2379/);
    r = await h1.ctnet(['cluster', 'join', '--etcd', 'http://192.0.2.1:2380', '--underlay', 'underlay0', '--host-name', 'h1']);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /^ctnet: etcd at http:\/\/192.0.2.1:2380 is unreachable: http:\/\/192.0.2.1:2380: connection refused\nhint: check the --etcd URL/);
    r = await h1.ctnet(['cluster', 'join', '--etcd', etcd.url, '--underlay', '10.9.9.9', '--host-name', 'h1']);
    assert.match(r.stderr, /--underlay 10.9.9.9 is not a global address of an interface of this host/);
    assert.match((await h1.ctnet(['cluster', 'ls'])).stderr, /this host is not a member of a cluster/);
    assert.equal(await etcdKeys(), keys);
    assert.equal((await h1.ctnet(['daemon', 'status'])).code, 3, 'no ctnetd was started');
  });

  it('two hosts join; each lists both with underlay, VTEP MAC and TTL; joining twice is refused and changes nothing', async () => {
    assert.match(await join_(h1, 'h1'), new RegExp(`^joined the cluster at ${etcd.url} as h1 \\(underlay ${underlay.h1}, VTEP MAC [0-9a-f:]{17}, lease TTL ${TTL} s\\)`));
    await join_(h2, 'h2');
    for (const lab of [h1, h2]) {
      const v = await ls(lab);
      assert.deepEqual(v.hosts.map((h) => [h.name, h.underlay]).sort(), [['h1', underlay.h1], ['h2', underlay.h2]]);
      for (const h of v.hosts) {
        assert.ok(h.ttl > 0 && h.ttl <= TTL && h.grantedTtl === TTL, JSON.stringify(h));
        assert.match(h.vtepMac, /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/);
      }
    }
    const text = await h1.ctnetOk(['cluster', 'ls']);
    assert.match(text, /^HOST +UNDERLAY +VTEP MAC +LEASE TTL +HEALTH +SUBNETS +JOINED\nh1 \* +192\.0\.2\.\d+ .* \d\/5 s +ok/);

    const keys = await etcdKeys();
    const r = await h1.ctnet(['cluster', 'join', '--etcd', etcd.url, '--underlay', 'underlay0', '--host-name', 'other']);
    assert.equal(r.code, 1);
    assert.match(r.stderr, new RegExp(`already a member of the cluster at ${etcd.url} as h1`));
    assert.equal(await etcdKeys(), keys);
  });

  it('ctnetd keeps the leases alive past their TTL', async () => {
    await sleep(TTL * 2 * 1000);
    assert.deepEqual(await names(h1), ['h1', 'h2']);
    assert.ok((await ls(h1)).hosts.every((h) => h.health === 'ok'));
  });

  it('leave removes the host from etcd and from every listing; it can join again', async () => {
    assert.match(await h2.ctnetOk(['cluster', 'leave']), /^h2 left the cluster/);
    assert.deepEqual(await names(h1), ['h1']);
    assert.doesNotMatch(await etcdKeys(), /h2/);
    assert.match((await h2.ctnet(['cluster', 'ls'])).stderr, /not a member/);
    await eventually('ctnetd on h2 sees the leave', async () => /no longer a member of a cluster/.test(daemonLog(h2)));
    await join_(h2, 'h2');
    assert.deepEqual(await names(h1), ['h1', 'h2']);
  });

  it('a host whose ctnetd is killed disappears after the TTL, and comes back with the same subnet', async () => {
    // An overlay network whose subnet h2 held (as the datapath records it): taken back on return.
    const def = { subnet: '10.50.0.0/16', hostPrefix: 24, vni: 7, port: 4789, internal: false, isolate: false };
    assert.equal((await etcd.etcdctl(['put', '/ctnet/networks/ov', JSON.stringify(def)])).code, 0);
    const db = new DatabaseSync(join(h2.stateDir, 'ctnet.db'));
    db.prepare('INSERT INTO cluster_leases(network, subnet, claimed) VALUES (?, ?, ?)').run('ov', '10.50.7.0/24', new Date().toISOString());
    db.close();

    const pid = await daemonPid(h2);
    process.kill(pid, 'SIGKILL');
    await eventually('h2 drops out of h1\'s listing', async () => !(await names(h1)).includes('h2'));
    assert.doesNotMatch(await etcdKeys(), /h2/, 'everything of h2 went with its lease');

    const out = openSync(join(h2.stateDir, 'ctnetd.log'), 'a');
    const d = spawn('nsenter', [`--net=/run/netns/${h2.host}`, h2.ctnetBin, 'daemon'], { env: { ...process.env, CTNET_STATE_DIR: h2.stateDir }, stdio: ['ignore', 'ignore', out], detached: true });
    d.unref();
    closeSync(out);
    await eventually('h2 is back', async () => (await names(h1)).includes('h2'));
    const back = (await ls(h1)).hosts.find((h) => h.name === 'h2')!;
    assert.deepEqual(back.leases.map((l) => [l.network, l.subnet]), [['ov', '10.50.7.0/24']]);
    assert.match(daemonLog(h2), /is gone \(expired while it could not be renewed\): registering again/);
  });

  it('etcd hung (SIGSTOP): commands that need it fail fast and change nothing; ctnetd recovers by itself after SIGCONT', async () => {
    const pids = [await daemonPid(h1), await daemonPid(h2)];
    etcd.pause();
    try {
      const t0 = performance.now();
      const r = await h1.ctnet(['cluster', 'ls']);
      const took = performance.now() - t0;
      assert.equal(r.code, 1);
      assert.match(r.stderr, new RegExp(`^ctnet: etcd at ${etcd.url} is unreachable: ${etcd.url}: no answer within 5000 ms\\nhint: check the --etcd URL`));
      console.log(`# cluster ls against a hung etcd failed after ${took.toFixed(0)} ms`);
      const leave = await h2.ctnet(['cluster', 'leave']);
      assert.equal(leave.code, 1);
      assert.match(leave.stderr, /is unreachable/);
      const db = new DatabaseSync(join(h2.stateDir, 'ctnet.db'), { readOnly: true });
      assert.equal((db.prepare('SELECT state FROM cluster_member').get() as { state: string }).state, 'ready', 'a failed leave left the membership as it was');
      db.close();
      // Longer than the TTL: etcd may let the leases expire as it resumes; ctnetd must register again.
      await sleep((TTL + 2) * 1000);
    } finally {
      etcd.resume();
    }
    for (const lab of [h1, h2]) {
      await eventually('both hosts listed and healthy', async () => {
        const v = await lab.ctnet(['cluster', 'ls', '--json']);
        return v.code === 0 && (JSON.parse(v.stdout) as LsJson).hosts.filter((h) => h.health === 'ok').map((h) => h.name).sort().join() === 'h1,h2';
      });
    }
    assert.deepEqual([await daemonPid(h1), await daemonPid(h2)], pids, 'no ctnetd was restarted');
    for (const lab of [h1, h2]) {
      const log = daemonLog(lab);
      assert.match(log, /is unreachable: .*no answer within 5000 ms: changing nothing, trying again every 1 s/);
      assert.match(log, /etcd answers again after \d+\.\d s/);
    }
    assert.deepEqual((await ls(h1)).hosts.find((h) => h.name === 'h2')!.leases.map((l) => l.subnet), ['10.50.7.0/24'], 'h2 kept its subnet');
  });

  it('leave --force without etcd leaves locally; the records expire with the lease', async () => {
    etcd.pause();
    try {
      const r = await h2.ctnet(['cluster', 'leave', '--force']);
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stdout, /left the cluster at .* \(locally only: etcd was not reached\)/);
      assert.match(r.stderr, /leaving anyway \(--force\): this host's records in etcd expire with its lease, within 5 s/);
    } finally {
      etcd.resume();
    }
    await eventually('h2 drops out after its TTL', async () => !(await names(h1)).includes('h2'));
    assert.match(await h1.ctnetOk(['cluster', 'leave']), /^h1 left/);
  });
});
