// The etcd client and the registry against a real etcd. Not a test file of its own: cluster.test.ts
// runs it (`node --test`) inside a lab host, the only place that reaches the lab's etcd (ETCD_URL).
// Each test works under its own network names, so they do not see each other's keys.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { EtcdClient, EtcdError, follow, type Kv, type WatchEvent } from '../../src/cluster/etcd.ts';
import { leaseKey, networkKey, parseKey } from '../../src/cluster/keys.ts';
import { parseOverlaySpec } from '../../src/cluster/pool.ts';
import { claimLease, clusterView, defineOverlay, networkLeases, reclaimLease, registerHost, undefineOverlay } from '../../src/cluster/registry.ts';
import { CtnetError } from '../../src/errors.ts';

const url = process.env.ETCD_URL!;
const etcd = new EtcdClient([url]);
const run = Math.random().toString(36).slice(2, 8);
const code = (c: string, re?: RegExp) => (e: unknown) => {
  assert.ok(e instanceof CtnetError, String(e));
  assert.equal(e.code, c, e.message);
  if (re) assert.match(e.message, re);
  return true;
};
const member = (host: string, n: number) => ({ host, underlay: `192.0.2.${100 + n}`, vtepMac: `02:00:00:00:00:${(n + 16).toString(16)}` });
const dump = async (prefix: string) => (await etcd.range(prefix, { prefix: true })).kvs.map((kv) => `${kv.key}=${kv.value}`);

describe('etcd client', () => {
  it('put, range, compare-and-swap, delete', async () => {
    const k = `/test-${run}/a`;
    await etcd.put(k, 'one');
    assert.equal((await etcd.get(k))?.value, 'one');
    const kv = (await etcd.get(k))!;
    const lost = await etcd.txn({ compare: [{ key: k, target: 'mod', op: '=', value: '1' }], success: [{ put: k, value: 'two' }], failure: [{ range: k }] });
    assert.equal(lost.succeeded, false);
    assert.equal(lost.ranges[0]![0]!.value, 'one');
    const won = await etcd.txn({ compare: [{ key: k, target: 'mod', op: '=', value: kv.modRevision }], success: [{ put: k, value: 'two' }] });
    assert.equal(won.succeeded, true);
    const empty = await etcd.txn({ compare: [{ key: `/test-${run}/none/`, prefix: true, target: 'version', op: '=', value: 0 }], success: [] });
    assert.equal(empty.succeeded, true, 'a comparison over an empty range holds');
    assert.equal(await etcd.delete(`/test-${run}/`, { prefix: true }), 1);
    assert.equal(await etcd.get(k), undefined);
  });

  it('a key bound to a lease goes with it; a lost lease renews to 0', async () => {
    const k = `/test-${run}/leased`;
    const l = await etcd.leaseGrant(30);
    await etcd.put(k, 'x', { lease: l.id });
    assert.equal((await etcd.get(k))?.lease, l.id);
    assert.ok((await etcd.leaseKeepAlive(l.id)) > 0);
    assert.ok((await etcd.leaseTimeToLive(l.id)).ttl > 0);
    await etcd.leaseRevoke(l.id);
    await etcd.leaseRevoke(l.id); // already gone: no error
    assert.equal(await etcd.get(k), undefined);
    assert.equal(await etcd.leaseKeepAlive(l.id), 0);
    assert.equal((await etcd.leaseTimeToLive(l.id)).ttl, -1);
  });

  it('follow(): a snapshot, then events; after a compaction, a snapshot again (nothing implied deleted)', async () => {
    const p = `/test-${run}/follow/`;
    await etcd.put(`${p}a`, '1');
    const seen: string[] = [];
    let snapshots = 0;
    let broken = '';
    const f = follow(etcd, p, {
      snapshot(kvs: readonly Kv[]) {
        snapshots++;
        seen.push(`snapshot ${kvs.map((kv) => `${kv.key.slice(p.length)}=${kv.value}`).join(',')}`);
      },
      events(evs: readonly WatchEvent[]) {
        for (const e of evs) seen.push(`${e.type} ${e.kv.key.slice(p.length)}${e.type === 'put' ? `=${e.kv.value}` : ` (was ${e.prev?.value})`}`);
      },
      broken(reason) {
        broken = reason;
      },
    });
    const until = async (what: () => boolean) => {
      for (let i = 0; i < 100 && !what(); i++) await new Promise((r) => setTimeout(r, 50));
      assert.ok(what(), seen.join('\n'));
    };
    await until(() => snapshots === 1);
    await etcd.put(`${p}b`, '2');
    await etcd.delete(`${p}a`);
    await until(() => seen.length === 3);
    assert.deepEqual(seen, ['snapshot a=1', 'put b=2', 'delete a (was 1)']);
    // A watch from a compacted revision ends 'compacted': follow() lists again. Compacted first: a
    // watch that had already caught up before the compaction would never end (a race under load).
    const rev = (await etcd.range(p, { prefix: true })).revision;
    await fetch(`${url}/v3/kv/compaction`, { method: 'POST', body: JSON.stringify({ revision: rev }) });
    const w = etcd.watch(p, { prefix: true, startRevision: '1' }, () => {});
    const end = await w.ended;
    assert.equal(end.kind, 'compacted');
    f.restart();
    await until(() => snapshots === 2);
    assert.equal(seen.at(-1), 'snapshot b=2');
    await f.stop();
    assert.equal(broken, '', 'restart is no break');
  });

  it('an endpoint that does not answer is a clear UNAVAILABLE error', async () => {
    const nowhere = new EtcdClient(['http://192.0.2.1:2380'], { timeoutMs: 500 }); // the peer port: served on loopback only
    await assert.rejects(nowhere.range('/x'), code('UNAVAILABLE', /^etcd at http:\/\/192.0.2.1:2380 is unreachable: http:\/\/192.0.2.1:2380: connection refused$/));
    // A second endpoint is tried after the first.
    const two = new EtcdClient(['http://192.0.2.1:2380', url]);
    assert.deepEqual((await two.range('/none')).kvs, []);
  });
});

describe('registry', () => {
  it('overlay definitions: overlap, VNI in use and name taken are refused and change nothing', async () => {
    const a = `a-${run}`;
    const def = await defineOverlay(etcd, a, parseOverlaySpec({ subnet: '10.201.0.0/16', vni: '4001' }));
    assert.equal(def.vni, 4001);
    const before = await dump('/ctnet/networks/');
    await assert.rejects(defineOverlay(etcd, `b-${run}`, parseOverlaySpec({ subnet: '10.201.128.0/17' })), code('CONFLICT', /overlaps 10.201.0.0\/16 of overlay network a-/));
    await assert.rejects(defineOverlay(etcd, `b-${run}`, parseOverlaySpec({ subnet: '10.202.0.0/16', vni: '4001' })), code('CONFLICT', /VNI 4001 is in use by overlay network a-/));
    await assert.rejects(defineOverlay(etcd, a, parseOverlaySpec({ subnet: '10.203.0.0/16' })), code('CONFLICT', /exists already/));
    assert.deepEqual(await dump('/ctnet/networks/'), before);
    assert.equal(await undefineOverlay(etcd, a), true);
  });

  it('leases: first free, the previous one when free, the same again for the same host; a full pool names the pool', async () => {
    const n = `pool-${run}`;
    await defineOverlay(etcd, n, parseOverlaySpec({ subnet: '10.210.0.0/22', hostPrefix: '24' }));
    const lease = (await etcd.leaseGrant(30)).id;
    assert.equal(await claimLease(etcd, { network: n, member: member('h1', 1), leaseId: lease }), '10.210.0.0/24');
    assert.equal(await claimLease(etcd, { network: n, member: member('h1', 1), leaseId: lease }), '10.210.0.0/24', 'a host holds one subnet per network');
    assert.equal(await claimLease(etcd, { network: n, member: member('h2', 2), leaseId: lease, previous: '10.210.3.0/24' }), '10.210.3.0/24');
    assert.equal(await claimLease(etcd, { network: n, member: member('h3', 3), leaseId: lease, previous: '10.210.3.0/24' }), '10.210.1.0/24');
    assert.equal(await claimLease(etcd, { network: n, member: member('h4', 4), leaseId: lease }), '10.210.2.0/24');
    const before = await dump(`/ctnet/leases/${n}/`);
    await assert.rejects(claimLease(etcd, { network: n, member: member('h5', 5), leaseId: lease }),
      code('CONFLICT', new RegExp(`^the lease pool of overlay network ${n} \\(10.210.0.0/22 in /24s: 4 host subnets\\) is full`)));
    assert.deepEqual(await dump(`/ctnet/leases/${n}/`), before);
    await assert.rejects(undefineOverlay(etcd, n), code('IN_USE', /in use by h1 \(10.210.0.0\/24\), h3 \(10.210.1.0\/24\), h4 \(10.210.2.0\/24\), h2 \(10.210.3.0\/24\)$/));
    await assert.rejects(claimLease(etcd, { network: `none-${run}`, member: member('h1', 1), leaseId: lease }), code('NOT_FOUND'));
    await etcd.leaseRevoke(lease);
    assert.deepEqual(await dump(`/ctnet/leases/${n}/`), [], 'the leases went with the etcd lease');
    await undefineOverlay(etcd, n);
  });

  it('hosts claiming at once never share a subnet', async () => {
    const n = `race-${run}`;
    await defineOverlay(etcd, n, parseOverlaySpec({ subnet: '10.220.0.0/16' }));
    const lease = (await etcd.leaseGrant(30)).id;
    const got = await Promise.all(Array.from({ length: 12 }, (_, i) => claimLease(etcd, { network: n, member: member(`r${i}`, i), leaseId: lease })));
    assert.equal(new Set(got).size, 12, got.join(' '));
    const { leases } = await networkLeases(etcd, n);
    assert.equal(leases.length, 12);
    await etcd.leaseRevoke(lease);
    await undefineOverlay(etcd, n);
  });

  it('reclaim takes back exactly the same subnet, or says who holds it', async () => {
    const n = `back-${run}`;
    await defineOverlay(etcd, n, parseOverlaySpec({ subnet: '10.230.0.0/16' }));
    const old = (await etcd.leaseGrant(30)).id;
    const s = await claimLease(etcd, { network: n, member: member('h1', 1), leaseId: old, previous: '10.230.9.0/24' });
    assert.equal(s, '10.230.9.0/24');
    const fresh = (await etcd.leaseGrant(30)).id;
    assert.equal(await reclaimLease(etcd, { network: n, subnet: s, member: member('h1', 1), leaseId: fresh }), 'claimed', 'still held under the old lease: rebound');
    assert.equal((await etcd.get(leaseKey(n, s)))?.lease, fresh);
    assert.deepEqual(await reclaimLease(etcd, { network: n, subnet: s, member: member('h2', 2), leaseId: fresh }), { heldBy: 'h1' });
    assert.equal(await reclaimLease(etcd, { network: `none-${run}`, subnet: s, member: member('h1', 1), leaseId: fresh }), 'no-network');
    await etcd.leaseRevoke(fresh);
    await etcd.leaseRevoke(old);
    await undefineOverlay(etcd, n);
  });

  it('host names and underlay addresses are each held once; a host takes its own record over', async () => {
    const l1 = (await etcd.leaseGrant(30)).id;
    const h = `reg-${run}`;
    const m = member(h, 50);
    await registerHost(etcd, m, l1, { joined: 'then', takeover: false });
    await assert.rejects(registerHost(etcd, member(h, 51), l1, { joined: 'now', takeover: true }), code('CONFLICT', new RegExp(`host name ${h} is taken`)));
    await assert.rejects(registerHost(etcd, { ...member(`other-${run}`, 52), underlay: m.underlay }, l1, { joined: 'now', takeover: false }), code('CONFLICT', /underlay address 192.0.2.150 is in use by member reg-/));
    const l2 = (await etcd.leaseGrant(30)).id;
    await registerHost(etcd, m, l2, { joined: 'now', takeover: true });
    const view = await clusterView(etcd);
    const mine = view.hosts.find((x) => x.name === h)!;
    assert.equal(mine.joined, 'then', 'taking over keeps when it joined');
    assert.equal(mine.health, 'ok');
    assert.ok(mine.ttl > 0 && mine.grantedTtl === 30);
    await etcd.leaseRevoke(l1);
    await etcd.leaseRevoke(l2);
    assert.equal(parseKey(networkKey('x'))?.kind, 'network');
    assert.ok(!(await clusterView(etcd)).hosts.some((x) => x.name === h));
  });

  it('EtcdError carries etcd\'s status, never only text', async () => {
    const e = await etcd.range('/x', { revision: '1' }).then(() => undefined, (x: unknown) => x);
    assert.ok(e instanceof EtcdError);
    assert.equal(e.grpcCode, 11, 'revision 1 is compacted by now');
  });
});
