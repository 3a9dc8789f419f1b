// The cluster's pure model (src/cluster/): etcd URLs, the key layout and its values, overlay network
// definitions and the lease pool, the underlay choice; and the local side of join/leave on the fake
// kernel (what is refused before etcd is asked, and that a refusal changes nothing).
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { parseEndpoints, prefixEnd } from '../../src/cluster/etcd.ts';
import {
  decodeEntry, encodeHost, encodeLease, encodeOverlayDef, encodeSandbox, hostKey, leaseKey, networkKey, parseKey, sandboxKey, type OverlayDef,
} from '../../src/cluster/keys.ts';
import { chooseHostSubnet, chooseVni, describePool, hostGateway, inPool, parseOverlaySpec, poolSize, validateOverlay } from '../../src/cluster/pool.ts';
import { leaseHealth } from '../../src/cluster/registry.ts';
import { chooseUnderlay } from '../../src/cluster/underlay.ts';
import { joinCluster, leaveCluster, parseJoinSpec, DEFAULT_LEASE_TTL } from '../../src/engine/cluster.ts';
import { Applier } from '../../src/engine/applier.ts';
import type { Ctx } from '../../src/engine/context.ts';
import { CtnetError } from '../../src/errors.ts';
import type { AddrInfo, RouteInfo } from '../../src/kernel/backend.ts';
import { FakeKernel } from '../../src/kernel/fake.ts';
import { ChangeFeed } from '../../src/store/feed.ts';
import { Store, type MemberRow } from '../../src/store/store.ts';

const code = (c: string, re?: RegExp) => (e: unknown) => {
  assert.ok(e instanceof CtnetError, `not a CtnetError: ${String(e)}`);
  assert.equal(e.code, c, e.message);
  if (re) assert.match(e.message, re);
  return true;
};

describe('etcd URLs', () => {
  it('takes one or more http(s)://HOST:PORT, canonical and without repeats', () => {
    assert.deepEqual(parseEndpoints('http://10.0.0.5:2379'), ['http://10.0.0.5:2379']);
    assert.deepEqual(parseEndpoints('http://a:2379/, https://b:2379,http://a:2379'), ['http://a:2379', 'https://b:2379']);
    assert.deepEqual(parseEndpoints('http://[fd00::5]:2379'), ['http://[fd00::5]:2379']);
  });
  it('refuses malformed ones at parse time, naming the bad one', () => {
    assert.throws(() => parseEndpoints('10.0.0.5:2379'), code('INVALID_ARGUMENT', /"10.0.0.5:2379" has no http:\/\/ in front/));
    assert.throws(() => parseEndpoints('http://x:99999'), code('INVALID_ARGUMENT', /etcd URL "http:\/\/x:99999" is malformed/));
    assert.throws(() => parseEndpoints('http://x'), code('INVALID_ARGUMENT', /has no port/));
    assert.throws(() => parseEndpoints('http://x:2379/v3'), code('INVALID_ARGUMENT', /more than a scheme, host and port/));
    assert.throws(() => parseEndpoints('http://u:p@x:2379'), code('INVALID_ARGUMENT', /more than a scheme/));
    assert.throws(() => parseEndpoints('ftp://x:2379'), code('INVALID_ARGUMENT', /uses ftp/));
    assert.throws(() => parseEndpoints(''), code('INVALID_ARGUMENT', /names no etcd URL/));
    assert.throws(() => parseEndpoints('http://a:2379,,http://b:2379'), code('INVALID_ARGUMENT', /between two commas/));
  });
  it('a prefix range ends at the prefix with its last byte plus one', () => {
    assert.equal(Buffer.from(prefixEnd('/ctnet/hosts/'), 'base64').toString(), '/ctnet/hosts0');
  });
});

const DEF: OverlayDef = { subnet: '10.50.0.0/16', hostPrefix: 24, vni: 1, port: 4789, internal: false, isolate: false };

describe('key layout', () => {
  it('every key reads back as what made it', () => {
    assert.equal(leaseKey('ov', '10.50.3.0/24'), '/ctnet/leases/ov/10.50.3.0-24');
    assert.deepEqual(parseKey(leaseKey('ov', '10.50.3.0/24')), { kind: 'lease', network: 'ov', subnet: '10.50.3.0/24' });
    assert.deepEqual(parseKey(leaseKey('ov', 'fd00:50:0:3::/64')), { kind: 'lease', network: 'ov', subnet: 'fd00:50:0:3::/64' });
    assert.deepEqual(parseKey(networkKey('ov')), { kind: 'network', name: 'ov' });
    assert.deepEqual(parseKey(hostKey('h1')), { kind: 'host', name: 'h1' });
    assert.deepEqual(parseKey(sandboxKey('h1', 'web')), { kind: 'sandbox', host: 'h1', name: 'web' });
  });
  it('keys outside the layout are not ctnet\'s', () => {
    for (const k of ['/other/hosts/h1', '/ctnet/hosts/', '/ctnet/hosts/h1/x', '/ctnet/leases/ov/10.50.3.0', '/ctnet/nets/a', '/ctnet/hosts/../x']) {
      assert.equal(parseKey(k), undefined, k);
    }
  });
  it('values are checked: good ones decode, bad ones are reported with why (and never thrown)', () => {
    assert.deepEqual(decodeEntry(networkKey('ov'), encodeOverlayDef(DEF)), { kind: 'network', name: 'ov', def: DEF });
    const lease = { host: 'h1', underlay: '192.0.2.10', vtepMac: '02:00:00:00:00:01' };
    assert.deepEqual(decodeEntry(leaseKey('ov', '10.50.3.0/24'), encodeLease(lease)), { kind: 'lease', network: 'ov', subnet: '10.50.3.0/24', value: lease });
    const host = { underlay: '192.0.2.10', vtepMac: '02:00:00:00:00:01', joined: '2026-01-01T00:00:00.000Z' };
    assert.deepEqual(decodeEntry(hostKey('h1'), encodeHost(host)), { kind: 'host', name: 'h1', value: host });
    const sb = { addresses: ['10.50.3.2'], labels: { tier: 'web' }, networks: ['ov'] };
    assert.deepEqual(decodeEntry(sandboxKey('h1', 'web'), encodeSandbox(sb)), { kind: 'sandbox', host: 'h1', name: 'web', value: sb });
    const bad = (k: string, v: string, re: RegExp) => {
      const e = decodeEntry(k, v);
      assert.equal(e.kind, 'bad', `${k} ${v}`);
      assert.match((e as { reason: string }).reason, re);
    };
    bad(hostKey('h1'), 'nope', /not JSON/);
    bad(hostKey('h1'), '[]', /not a JSON object/);
    bad(hostKey('h1'), JSON.stringify({ ...host, vtepMac: 'ff:ff:ff:ff:ff:ff' }), /multicast/);
    bad(hostKey('h1'), JSON.stringify({ ...host, underlay: 'x' }), /not an IP address/);
    bad(networkKey('ov'), JSON.stringify({ ...DEF, vni: 0 }), /"vni" is not an integer/);
    bad(networkKey('ov'), JSON.stringify({ ...DEF, hostPrefix: 16 }), /leaves one host subnet/);
    bad(leaseKey('ov', '10.50.3.0/24'), JSON.stringify({ ...lease, host: '../x' }), /not allowed/);
    bad(leaseKey('ov', '10.50.3.1/24'), encodeLease(lease), /host bits set/);
    bad(sandboxKey('h1', 'web'), JSON.stringify({ ...sb, labels: { a: 1 } }), /"labels" is not an object of strings/);
    bad('/ctnet/x', '{}', /not a key/);
    const aliased = { ...sb, aliases: { ov: ['api', 'web-2'] } };
    assert.deepEqual(decodeEntry(sandboxKey('h1', 'web'), encodeSandbox(aliased)), { kind: 'sandbox', host: 'h1', name: 'web', value: aliased });
    bad(sandboxKey('h1', 'web'), JSON.stringify({ ...sb, aliases: { other: ['api'] } }), /names network other, which is not one of its networks/);
    bad(sandboxKey('h1', 'web'), JSON.stringify({ ...sb, aliases: { ov: ['no_way'] } }), /alias on ov "no_way" is not a valid DNS label/);
    bad(sandboxKey('h1', 'web'), JSON.stringify({ ...sb, aliases: [] }), /"aliases" is not an object/);
  });
  it('addresses are written in one form by every host', () => {
    const e = decodeEntry(hostKey('h1'), JSON.stringify({ underlay: 'FD00:0::5', vtepMac: '02:00:00:00:00:01', joined: 'x' }));
    assert.equal(e.kind === 'host' && e.value.underlay, 'fd00::5');
  });
});

describe('overlay network definitions', () => {
  it('defaults: /24 per host (IPv4), /64 (IPv6), port 4789, VNI chosen later', () => {
    assert.deepEqual(parseOverlaySpec({ subnet: '10.50.0.0/16' }), { subnet: '10.50.0.0/16', hostPrefix: 24, vni: undefined, port: 4789, internal: false, isolate: false });
    assert.equal(parseOverlaySpec({ subnet: 'fd00:50::/48' }).hostPrefix, 64);
    assert.deepEqual(parseOverlaySpec({ subnet: '10.50.0.0/16', hostPrefix: '20', vni: '42', port: '8472', internal: true, isolate: true }),
      { subnet: '10.50.0.0/16', hostPrefix: 20, vni: 42, port: 8472, internal: true, isolate: true });
  });
  it('a host prefix larger than the subnet, or leaving fewer than 2 host subnets, is refused with what to do', () => {
    assert.throws(() => parseOverlaySpec({ subnet: '10.50.0.0/16', hostPrefix: '12' }), code('INVALID_ARGUMENT', /host prefix \/12 is larger than the subnet 10.50.0.0\/16/));
    assert.throws(() => parseOverlaySpec({ subnet: '10.50.0.0/24' }), code('INVALID_ARGUMENT', /host prefix \/24 leaves one host subnet in 10.50.0.0\/24; at least 2/));
    assert.throws(() => parseOverlaySpec({ subnet: '10.50.0.0/24', hostPrefix: '31' }), code('INVALID_ARGUMENT', /no room for a gateway/));
    assert.throws(() => parseOverlaySpec({ subnet: '10.50.0.0/16', hostPrefix: 'x' }), code('INVALID_ARGUMENT', /--host-prefix "x" is not a whole number/));
    assert.throws(() => parseOverlaySpec({ subnet: '10.50.0.0/16', vni: '16777216' }), code('INVALID_ARGUMENT', /--vni "16777216" is not a whole number from 1 to 16777215/));
    assert.throws(() => parseOverlaySpec({ subnet: '10.50.0.0/16', port: '0' }), code('INVALID_ARGUMENT', /--port "0"/));
    assert.throws(() => parseOverlaySpec({}), code('INVALID_ARGUMENT', /needs --subnet/));
    assert.throws(() => parseOverlaySpec({ subnet: '10.50.0.1/16' }), code('INVALID_ARGUMENT', /host bits set/));
  });
  it('checked against the cluster\'s others: name, overlapping subnet, VNI in use', () => {
    const existing = new Map([['a', DEF], ['b', { ...DEF, subnet: '10.60.0.0/16', vni: 3 }]]);
    assert.throws(() => validateOverlay('a', parseOverlaySpec({ subnet: '10.70.0.0/16' }), existing), code('CONFLICT', /overlay network a exists already/));
    assert.throws(() => validateOverlay('c', parseOverlaySpec({ subnet: '10.0.0.0/8' }), existing), code('CONFLICT', /subnet 10.0.0.0\/8 overlaps 10.50.0.0\/16 of overlay network a/));
    assert.throws(() => validateOverlay('c', parseOverlaySpec({ subnet: '10.60.128.0/17' }), existing), code('CONFLICT', /overlaps 10.60.0.0\/16 of overlay network b/));
    assert.throws(() => validateOverlay('c', parseOverlaySpec({ subnet: '10.70.0.0/16', vni: '3' }), existing), code('CONFLICT', /VNI 3 is in use by overlay network b/));
    assert.deepEqual(validateOverlay('c', parseOverlaySpec({ subnet: '10.70.0.0/16' }), existing), { ...DEF, subnet: '10.70.0.0/16', vni: 2 });
    assert.equal(chooseVni(new Map()), 1);
  });
});

describe('the lease pool', () => {
  it('first free host subnet; the one held before when it is free', () => {
    assert.equal(poolSize(DEF), 256n);
    assert.equal(chooseHostSubnet('ov', DEF, []), '10.50.0.0/24');
    assert.equal(chooseHostSubnet('ov', DEF, ['10.50.0.0/24', '10.50.2.0/24']), '10.50.1.0/24');
    assert.equal(chooseHostSubnet('ov', DEF, ['10.50.0.0/24'], '10.50.7.0/24'), '10.50.7.0/24');
    assert.equal(chooseHostSubnet('ov', DEF, ['10.50.7.0/24'], '10.50.7.0/24'), '10.50.0.0/24', 'taken by another host: the first free');
    assert.equal(chooseHostSubnet('ov', DEF, [], '10.60.7.0/24'), '10.50.0.0/24', 'outside the pool: ignored');
    assert.equal(chooseHostSubnet('ov', DEF, [], '10.50.7.0/25'), '10.50.0.0/24', 'another size: ignored');
    assert.equal(inPool(DEF, '10.50.255.0/24'), true);
    assert.equal(inPool(DEF, '10.51.0.0/24'), false);
  });
  it('a full pool is a clear error naming the pool', () => {
    const small = { subnet: '10.50.0.0/23', hostPrefix: 24 };
    assert.throws(() => chooseHostSubnet('ov', small, ['10.50.0.0/24', '10.50.1.0/24']),
      code('CONFLICT', /^the lease pool of overlay network ov \(10.50.0.0\/23 in \/24s: 2 host subnets\) is full/));
    assert.equal(describePool('ov', DEF), 'the lease pool of overlay network ov (10.50.0.0/16 in /24s: 256 host subnets)');
  });
  it('IPv6 pools, and the gateway of a host subnet', () => {
    assert.equal(chooseHostSubnet('v6', { subnet: 'fd00:50::/48', hostPrefix: 64 }, ['fd00:50::/64']), 'fd00:50:0:1::/64');
    assert.equal(hostGateway('10.50.3.0/24'), '10.50.3.1');
    assert.equal(hostGateway('fd00:50:0:1::/64'), 'fd00:50:0:1::1');
  });
});

describe('underlay', () => {
  const addrs: AddrInfo[] = [
    { ifname: 'lo', addr_info: [{ family: 'inet', local: '127.0.0.1', prefixlen: 8, scope: 'host' }] },
    { ifname: 'eth0', addr_info: [{ family: 'inet6', local: '2001:db8::10', prefixlen: 64, scope: 'global' }, { family: 'inet', local: '198.51.100.2', prefixlen: 24, scope: 'global' }] },
    { ifname: 'underlay0', addr_info: [{ family: 'inet', local: '192.0.2.10', prefixlen: 24, scope: 'global' }] },
    { ifname: 'bare0', addr_info: [{ family: 'inet6', local: 'fe80::1', prefixlen: 64, scope: 'link' }] },
  ];
  const routes: RouteInfo[] = [{ dst: 'default', gateway: '198.51.100.1', dev: 'eth0' }];
  it('by address, by interface (IPv4 first), or the default route\'s interface', () => {
    assert.deepEqual(chooseUnderlay('192.0.2.10', addrs, routes), { ip: '192.0.2.10', dev: 'underlay0' });
    assert.deepEqual(chooseUnderlay('underlay0', addrs, routes), { ip: '192.0.2.10', dev: 'underlay0' });
    assert.deepEqual(chooseUnderlay(undefined, addrs, routes), { ip: '198.51.100.2', dev: 'eth0' });
  });
  it('says what is wrong and lists what there is', () => {
    assert.throws(() => chooseUnderlay('192.0.2.99', addrs, routes), code('INVALID_ARGUMENT', /192.0.2.99 is not a global address.*/));
    assert.throws(() => chooseUnderlay('127.0.0.1', addrs, routes), code('INVALID_ARGUMENT', /is not a global address/));
    assert.throws(() => chooseUnderlay('nope0', addrs, routes), code('INVALID_ARGUMENT', /no interface of that name/));
    assert.throws(() => chooseUnderlay('bare0', addrs, routes), code('INVALID_ARGUMENT', /bare0 has no global address/));
    assert.throws(() => chooseUnderlay(undefined, addrs, []), code('INVALID_ARGUMENT', /no default route/));
  });
});

describe('membership', () => {
  it('health from the lease: ok while renewals come, late after a missed one, expired', () => {
    assert.equal(leaseHealth(60, 60), 'ok');
    assert.equal(leaseHealth(21, 60), 'ok');
    assert.equal(leaseHealth(20, 60), 'late');
    assert.equal(leaseHealth(0, 60), 'expired');
    assert.equal(leaseHealth(-1, 0), 'expired');
  });
  it('join options: URLs, host name (default: the hostname), lease TTL bounds', () => {
    assert.deepEqual(parseJoinSpec({ etcd: 'http://e:2379' }, 'node7.example.org'),
      { endpoints: ['http://e:2379'], underlay: undefined, host: 'node7', leaseTtl: DEFAULT_LEASE_TTL });
    assert.equal(parseJoinSpec({ etcd: 'http://e:2379', leaseTtl: '5' }, 'h').leaseTtl, 5);
    assert.throws(() => parseJoinSpec({ etcd: 'http://e:2379', leaseTtl: '1' }, 'h'), code('INVALID_ARGUMENT', /--lease-ttl "1"/));
    assert.throws(() => parseJoinSpec({ etcd: 'http://e:2379', hostName: 'a/b' }, 'h'), code('INVALID_ARGUMENT', /host name "a\/b"/));
    assert.throws(() => parseJoinSpec({ etcd: 'e:2379' }, 'h'), code('INVALID_ARGUMENT'));
  });

  const SCRATCH = existsSync('/dev/shm') ? '/dev/shm' : tmpdir();
  async function withCtx(fn: (ctx: Ctx, store: Store, dir: string) => Promise<void>): Promise<void> {
    const dir = mkdtempSync(join(SCRATCH, 'ctnet-cluster-'));
    const store = new Store(dir);
    const fake = new FakeKernel();
    const warn = () => {};
    try {
      await fn({ store, kernel: fake, warn, applier: new Applier({ backend: fake, store, warn }) }, store, dir);
    } finally {
      store.close();
      rmSync(dir, { recursive: true, force: true });
    }
  }
  // An address no test ever reaches: each refusal below comes before etcd is asked.
  const NOWHERE = ['http://192.0.2.254:9'];
  const MEMBER: MemberRow = {
    host: 'h1', endpoints: NOWHERE, underlay: '192.0.2.10', vtepMac: '02:00:00:00:00:01', leaseTtl: 60, leaseId: '7', state: 'ready', joined: '2026-01-01T00:00:00.000Z',
  };

  it('joining twice is refused before etcd is asked, and changes nothing', async () => {
    await withCtx(async (ctx, store) => {
      store.write(() => store.insertMember(MEMBER));
      await assert.rejects(joinCluster(ctx, { endpoints: NOWHERE, underlay: undefined, host: 'h2', leaseTtl: 60 }),
        code('CONFLICT', /already a member of the cluster at http:\/\/192.0.2.254:9 as h1/));
      assert.deepEqual(store.member(), MEMBER);
    });
  });
  it('a bad underlay is refused before etcd is asked, and records nothing', async () => {
    await withCtx(async (ctx, store) => {
      await assert.rejects(joinCluster(ctx, { endpoints: NOWHERE, underlay: '10.9.9.9', host: 'h1', leaseTtl: 60 }), code('INVALID_ARGUMENT', /--underlay 10.9.9.9/));
      assert.equal(store.member(), undefined);
    });
  });
  it('leave refuses while local sandboxes use overlay networks, and changes nothing', async () => {
    await withCtx(async (ctx, store) => {
      store.write(() => {
        store.insertMember(MEMBER);
        store.insertNetwork({ name: 'ov', bridge: 'ctbr-ov', internal: false, isolate: false, hostAccess: false, mtu: 1450, driver: 'vxlan', mac: null, dns: false, dnsForward: [], state: 'ready' },
          [{ cidr: '10.50.3.0/24', family: 4, gateway: '10.50.3.1' }]);
        store.insertSandbox({ name: 'web', netns: '/run/netns/x', owned: true, state: 'ready' });
        store.insertAttachment({ sandbox: 'web', network: 'ov', ifname: 'eth0', hostVeth: 'vethx', mac: '02:00:00:00:00:02', state: 'ready' });
      });
      await assert.rejects(leaveCluster(ctx, { force: false }), code('IN_USE', /sandboxes on this host use overlay networks: web \(on ov\)/));
      assert.deepEqual(store.member(), MEMBER);
    });
  });
  it('leave without a membership says how to join', async () => {
    await withCtx(async (ctx) => {
      await assert.rejects(leaveCluster(ctx, { force: true }), code('NOT_FOUND', /not a member of a cluster/));
    });
  });
  it('the membership is in the change feed (ctnetd follows joins and leaves); lease renewals are not', async () => {
    await withCtx(async (_ctx, store, dir) => {
      const feed = new ChangeFeed(dir);
      try {
        const from = feed.head();
        store.write(() => store.insertMember(MEMBER));
        store.write(() => store.setMemberLease('8'));
        store.write(() => store.setMemberState('leaving'));
        store.write(() => store.deleteMember());
        const r = feed.read(from);
        assert.ok(r.ok);
        const events = r.events;
        assert.deepEqual(events.map((e) => `${e.kind} ${e.key} ${e.action}`), ['member h1 created', 'member h1 changed', 'member h1 removed']);
        assert.equal(events[0]!.kind === 'member' && events[0].data.endpoints, NOWHERE.join(','));
        assert.throws(() => store.write(() => { store.insertMember(MEMBER); store.insertMember(MEMBER); }), /UNIQUE|constraint/i);
      } finally {
        feed.close();
      }
    });
  });
  it('the subnets held are kept per network, replaced by a new claim', async () => {
    await withCtx(async (_ctx, store) => {
      store.write(() => store.setClusterLease('ov', '10.50.3.0/24'));
      store.write(() => store.setClusterLease('ov', '10.50.4.0/24'));
      assert.deepEqual(store.clusterLeases().map((l) => [l.network, l.subnet]), [['ov', '10.50.4.0/24']]);
    });
  });
});
