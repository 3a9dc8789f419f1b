// The overlay datapath on the fake kernel: the VXLAN operations (inverses, rendering, the fake's
// failures), planPeers (three entries per peer; add, replace, remove; idempotent), the vxlan
// driver through the use cases (create, attach, syncPeers, gc, remove) and rollback at every step.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { DriverNetwork } from '../../src/drivers/driver.ts';
import { entriesOf, localVtep, observePeers, planPeerEntries, planPeers } from '../../src/drivers/vxlan/peers.ts';
import { vxlanDriver } from '../../src/drivers/vxlan/vxlan.ts';
import { gc } from '../../src/engine/gc.ts';
import { createNetwork, hostSteps, removeNetwork, type OverlaySpec } from '../../src/engine/network.ts';
import { peerStatus, syncPeers } from '../../src/engine/overlay.ts';
import { createSandbox } from '../../src/engine/sandbox.ts';
import { CtnetError, KernelError } from '../../src/errors.ts';
import { FakeKernel, HOST } from '../../src/kernel/fake.ts';
import { parseSubnet } from '../../src/model/cidr.ts';
import { parseOverlayOptions, parsePeer, type Peer } from '../../src/model/overlay.ts';
import { parseAttachSpec, parseNetworkSpec } from '../../src/model/spec.ts';
import { inverse, removes, type Op } from '../../src/plan/ops.ts';
import type { Step } from '../../src/plan/plan.ts';
import { renderOp } from '../../src/plan/render.ts';
import { withWorld as inWorld, type World } from './fake-world.ts';

const withWorld = <T>(fn: (w: World) => Promise<T>) => inWorld('overlay', fn);

const VX = 'ctov-ov';
const OVERLAY: OverlaySpec = { vni: 42, port: 4789, cidr: '10.50.0.0/16', underlay: { ip: '192.0.2.10', dev: 'eth0', mtu: 1500 } };
/** This host's side: lease 10.50.1.0/24 (the fake's eth0 is the underlay). */
const LEASE = () => parseNetworkSpec({ name: 'ov', subnet: ['10.50.1.0/24'] });
const peer = (i: number, over: Partial<Peer> = {}): Peer =>
  ({ host: `h${i}`, subnet: `10.50.${i}.0/24`, underlay: `192.0.2.${10 + i}`, vtepMac: `02:00:00:00:00:0${i}`, ...over });

/** A driver network as the store would give it, for the pure functions. */
const NET: DriverNetwork = {
  name: 'ov', device: 'ctbr-ov', mac: '02:aa:00:00:00:01', internal: false, isolate: false, hostAccess: false, dns: false, mtu: 1450,
  subnets: [{ family: 4, cidr: '10.50.1.0/24', gateway: '10.50.1.1' }],
  overlay: { vni: 42, port: 4789, device: VX, vtepMac: '02:00:00:00:00:01', cidrs: ['10.50.0.0/16'], underlay: { ip: '192.0.2.11', dev: 'eth0' }, peers: [] },
};
const LOCAL = localVtep(NET);

const ops = (plan: readonly Step[]) => plan.flatMap((s) => s.lanes.flat());
const lines = (plan: readonly Step[]) => ops(plan).flatMap(renderOp);
const kinds = (plan: readonly Step[]) => ops(plan).map((o) => o.kind);
/** The kernel entries of the VXLAN device in a fake kernel: neigh, fdb and routes. */
function entries(fake: FakeKernel, dev = VX) {
  const host = fake.snapshot().namespaces[HOST]!;
  return {
    neigh: (host.neigh ?? []).filter((x) => x.endsWith(`dev ${dev}`)),
    fdb: host.links[dev]?.fdb ?? [],
    routes: (host.routes ?? []).filter((x) => x.includes(`dev ${dev}`)),
  };
}

describe('VXLAN operations', () => {
  it('render as the iproute2 commands a person would type, and each undoes with its inverse', () => {
    const cases: [Op, string, string | undefined][] = [
      [{ kind: 'link.add.vxlan', name: VX, mac: '02:00:00:00:00:01', vni: 42, local: '192.0.2.11', dev: 'eth0', port: 4789, mtu: 1450 },
        'ip link add ctov-ov address 02:00:00:00:00:01 mtu 1450 type vxlan id 42 local 192.0.2.11 dev eth0 dstport 4789 nolearning', 'ip link del ctov-ov'],
      [{ kind: 'neigh.replace', addr: '10.50.2.0', lladdr: '02:00:00:00:00:02', dev: VX },
        'ip neigh replace 10.50.2.0 lladdr 02:00:00:00:00:02 dev ctov-ov nud permanent', 'ip neigh del 10.50.2.0 dev ctov-ov'],
      [{ kind: 'neigh.replace', addr: '10.50.2.0', lladdr: '02:00:00:00:00:02', dev: VX, previous: { lladdr: '02:00:00:00:00:09' } },
        'ip neigh replace 10.50.2.0 lladdr 02:00:00:00:00:02 dev ctov-ov nud permanent', 'ip neigh replace 10.50.2.0 lladdr 02:00:00:00:00:09 dev ctov-ov nud permanent'],
      [{ kind: 'fdb.replace', mac: '02:00:00:00:00:02', dev: VX, dst: '192.0.2.12' },
        'bridge fdb replace 02:00:00:00:00:02 dev ctov-ov dst 192.0.2.12 self permanent', 'bridge fdb del 02:00:00:00:00:02 dev ctov-ov dst 192.0.2.12 self'],
      [{ kind: 'fdb.replace', mac: '02:00:00:00:00:02', dev: VX, dst: '192.0.2.12', previous: { dst: '192.0.2.99' } },
        'bridge fdb replace 02:00:00:00:00:02 dev ctov-ov dst 192.0.2.12 self permanent', 'bridge fdb replace 02:00:00:00:00:02 dev ctov-ov dst 192.0.2.99 self permanent'],
      [{ kind: 'route.replace', dst: '10.50.2.0/24', via: '10.50.2.0', dev: VX, onlink: true },
        'ip route replace 10.50.2.0/24 via 10.50.2.0 dev ctov-ov onlink', 'ip route del 10.50.2.0/24 via 10.50.2.0 dev ctov-ov'],
      [{ kind: 'route.replace', dst: '10.50.2.0/24', via: '10.50.2.0', dev: VX, onlink: true, previous: { via: '10.50.9.0', dev: VX, onlink: true } },
        'ip route replace 10.50.2.0/24 via 10.50.2.0 dev ctov-ov onlink', 'ip route replace 10.50.2.0/24 via 10.50.9.0 dev ctov-ov onlink'],
      [{ kind: 'neigh.del', addr: '10.50.2.0', dev: VX }, 'ip neigh del 10.50.2.0 dev ctov-ov', undefined],
      [{ kind: 'neigh.del', addr: '10.50.2.0', dev: VX, lladdr: '02:00:00:00:00:02' }, 'ip neigh del 10.50.2.0 dev ctov-ov',
        'ip neigh replace 10.50.2.0 lladdr 02:00:00:00:00:02 dev ctov-ov nud permanent'],
      [{ kind: 'fdb.del', mac: '02:00:00:00:00:02', dev: VX, dst: '192.0.2.12' }, 'bridge fdb del 02:00:00:00:00:02 dev ctov-ov dst 192.0.2.12 self',
        'bridge fdb replace 02:00:00:00:00:02 dev ctov-ov dst 192.0.2.12 self permanent'],
      [{ kind: 'route.del', dst: '10.50.2.0/24', via: '10.50.2.0', dev: VX, onlink: true }, 'ip route del 10.50.2.0/24 via 10.50.2.0 dev ctov-ov',
        'ip route replace 10.50.2.0/24 via 10.50.2.0 dev ctov-ov onlink'],
    ];
    for (const [op, line, undo] of cases) {
      assert.deepEqual(renderOp(op), [line]);
      const inv = inverse(op);
      assert.equal(inv && renderOp(inv).join(''), undo, `inverse of ${line}`);
      assert.equal(removes(op), op.kind.endsWith('.del'), `${op.kind} removes`);
    }
  });

  it('the fake fails where the kernel does, and a VXLAN device takes its entries along', async () => {
    const k = new FakeKernel();
    const failed = (kind: string) => (e: unknown) => e instanceof KernelError && e.kind === kind;
    const add: Op = { kind: 'link.add.vxlan', name: VX, mac: '02:00:00:00:00:01', vni: 42, local: '192.0.2.10', dev: 'eth0', port: 4789, mtu: 1450 };
    await assert.rejects(k.apply([{ ...add, dev: 'nope' }]), failed('not-found'));
    await k.apply([add]);
    await assert.rejects(k.apply([add]), failed('exists'));
    await assert.rejects(k.apply([{ ...add, name: 'ctov-other' }]), failed('exists'), 'one device per VNI and port');
    const route: Op = { kind: 'route.replace', dst: '10.50.2.0/24', via: '10.50.2.0', dev: VX, onlink: true };
    await assert.rejects(k.apply([route]), failed('failed'), 'onlink needs the device up');
    await k.apply([{ kind: 'link.set.up', name: VX }, route, { kind: 'neigh.replace', addr: '10.50.2.0', lladdr: '02:00:00:00:00:02', dev: VX },
      { kind: 'fdb.replace', mac: '02:00:00:00:00:02', dev: VX, dst: '192.0.2.12' }]);
    await assert.rejects(k.apply([{ kind: 'fdb.replace', mac: '02:00:00:00:00:02', dev: 'eth0', dst: '192.0.2.12' }]), failed('failed'), 'not a VXLAN device');
    await assert.rejects(k.apply([{ kind: 'route.del', dst: '10.50.2.0/24', via: '10.50.9.0', dev: VX }]), failed('not-found'));
    await assert.rejects(k.apply([{ kind: 'fdb.del', mac: '02:00:00:00:00:02', dev: VX, dst: '192.0.2.99' }]), failed('not-found'));
    assert.deepEqual(entries(k), {
      neigh: ['10.50.2.0 lladdr 02:00:00:00:00:02 dev ctov-ov'], fdb: ['02:00:00:00:00:02 dst 192.0.2.12'], routes: ['10.50.2.0/24 via 10.50.2.0 dev ctov-ov onlink'],
    });
    await k.apply([{ kind: 'link.del', name: VX }]);
    assert.deepEqual(entries(k), { neigh: [], fdb: [], routes: [] });
    await assert.rejects(k.apply([{ kind: 'neigh.del', addr: '10.50.2.0', dev: VX }]), failed('not-found'));
  });
});

describe('planPeers', () => {
  it('adds each peer as exactly three kernel entries and its known VTEP, next hop before route', () => {
    const plan = planPeers(NET, LOCAL, [peer(2), peer(3)], []);
    assert.equal(plan.length, 1, 'one step: nothing to remove');
    assert.deepEqual(kinds(plan), ['nft', 'neigh.replace', 'neigh.replace', 'fdb.replace', 'fdb.replace', 'route.replace', 'route.replace']);
    assert.deepEqual(lines(plan).slice(1), [
      'ip neigh replace 10.50.2.0 lladdr 02:00:00:00:00:02 dev ctov-ov nud permanent',
      'ip neigh replace 10.50.3.0 lladdr 02:00:00:00:00:03 dev ctov-ov nud permanent',
      'bridge fdb replace 02:00:00:00:00:02 dev ctov-ov dst 192.0.2.12 self permanent',
      'bridge fdb replace 02:00:00:00:00:03 dev ctov-ov dst 192.0.2.13 self permanent',
      'ip route replace 10.50.2.0/24 via 10.50.2.0 dev ctov-ov onlink',
      'ip route replace 10.50.3.0/24 via 10.50.3.0 dev ctov-ov onlink',
    ]);
    assert.deepEqual((ops(plan)[0] as Extract<Op, { kind: 'nft' }>).lines, ['add element inet ctnet vteps4 { 192.0.2.12 . 4789 . 42 }', 'add element inet ctnet vteps4 { 192.0.2.13 . 4789 . 42 }']);
  });

  it('re-planning what is there is nothing; only what differs is replaced, with its inverse putting it back', () => {
    const want = [peer(2), peer(3)];
    assert.deepEqual(planPeers(NET, LOCAL, want, want), []);
    assert.deepEqual(planPeers(NET, LOCAL, [peer(3), peer(2)], want), [], 'order does not matter');
    // h2 moved to another underlay address: one fdb entry changes, and its known VTEP.
    const moved = planPeers(NET, LOCAL, [peer(2, { underlay: '192.0.2.99' }), peer(3)], want);
    assert.deepEqual(lines(moved), [
      "nft -f - <<'EOF'\nadd element inet ctnet vteps4 { 192.0.2.99 . 4789 . 42 }\nEOF",
      'bridge fdb replace 02:00:00:00:00:02 dev ctov-ov dst 192.0.2.99 self permanent',
      "nft -f - <<'EOF'\ndelete element inet ctnet vteps4 { 192.0.2.12 . 4789 . 42 }\nEOF",
    ]);
    assert.deepEqual(renderOp(inverse(ops(moved)[1]!)!), ['bridge fdb replace 02:00:00:00:00:02 dev ctov-ov dst 192.0.2.12 self permanent']);
    // h2's VTEP was rebuilt with a new MAC: the neighbour entry is replaced, the old MAC's fdb entry goes.
    const rebuilt = planPeers(NET, LOCAL, [peer(2, { vtepMac: '02:00:00:00:00:22' }), peer(3)], want);
    assert.deepEqual(lines(rebuilt), [
      'ip neigh replace 10.50.2.0 lladdr 02:00:00:00:00:22 dev ctov-ov nud permanent',
      'bridge fdb replace 02:00:00:00:00:22 dev ctov-ov dst 192.0.2.12 self permanent',
      'bridge fdb del 02:00:00:00:00:02 dev ctov-ov dst 192.0.2.12 self',
    ]);
  });

  it('removes a peer that is no longer listed: route first, then its next hop, its fdb entry and its known VTEP', () => {
    const plan = planPeers(NET, LOCAL, [peer(3)], [peer(2), peer(3)]);
    assert.equal(plan.length, 1);
    assert.ok(ops(plan).every(removes), 'a removal step only: run as a teardown');
    assert.deepEqual(lines(plan), [
      'ip route del 10.50.2.0/24 via 10.50.2.0 dev ctov-ov',
      'ip neigh del 10.50.2.0 dev ctov-ov',
      'bridge fdb del 02:00:00:00:00:02 dev ctov-ov dst 192.0.2.12 self',
      "nft -f - <<'EOF'\ndelete element inet ctnet vteps4 { 192.0.2.12 . 4789 . 42 }\nEOF",
    ]);
  });

  it('leaves this host out, and refuses peers that would take its own routes or lie outside the overlay', () => {
    const self = { host: 'me', subnet: LOCAL.subnet, underlay: LOCAL.underlay, vtepMac: LOCAL.vtepMac };
    assert.deepEqual(planPeers(NET, LOCAL, [self], []), []);
    const bad = [peer(4, { subnet: '10.50.1.0/25' }), peer(5, { subnet: '10.60.5.0/24' }), peer(6, { subnet: '10.50.2.0/24' }), peer(7, { vtepMac: LOCAL.vtepMac })];
    assert.deepEqual(lines(planPeers(NET, LOCAL, [peer(2), ...bad], [])).filter((l) => l.startsWith('ip route')), ['ip route replace 10.50.2.0/24 via 10.50.2.0 dev ctov-ov onlink']);
  });

  it('stray entries on the device (no peer of ours) are removed; programmed entries found by observe plan to nothing', async () => {
    const k = new FakeKernel();
    await k.apply(ops(hostSteps(false)));
    await k.apply(ops(vxlanDriver.planCreate({ ...NET, overlay: { ...NET.overlay!, underlay: { ip: '192.0.2.10', dev: 'eth0' } } })));
    await k.apply(ops(planPeers(NET, LOCAL, [peer(2), peer(3)], [])));
    await k.apply([{ kind: 'neigh.replace', addr: '10.50.9.0', lladdr: '02:00:00:00:00:09', dev: VX }]);
    const seen = await observePeers(k, NET);
    assert.deepEqual(seen.peers, [peer(2), peer(3)].map(({ host: _, ...p }) => p));
    const vteps = [peer(2), peer(3)].flatMap(entriesOf).filter((e) => e.kind === 'vtep');
    assert.deepEqual(lines(planPeerEntries(NET, LOCAL, [peer(2), peer(3)], [...vteps, ...seen.entries])), ['ip neigh del 10.50.9.0 dev ctov-ov']);
  });
});

describe('overlay options', () => {
  const sub = parseSubnet('--subnet', '10.50.0.0/16');
  it('defaults, and every bad value named with what to do', () => {
    assert.deepEqual(parseOverlayOptions({}, sub), { vni: undefined, port: 4789, hostPrefix: 24 });
    assert.deepEqual(parseOverlayOptions({ vni: '7', port: '8472', hostPrefix: '17' }, sub), { vni: 7, port: 8472, hostPrefix: 17 });
    const bad = (raw: Record<string, string>, s = sub) => assert.throws(() => parseOverlayOptions(raw, s), (e) => e instanceof CtnetError && e.code === 'INVALID_ARGUMENT' && !!e.hint);
    bad({ vni: '0' });
    bad({ vni: '16777216' });
    bad({ vni: 'x' });
    bad({ port: '0' });
    bad({ port: '65536' });
    bad({ hostPrefix: '16' }); // one host subnet only
    bad({ hostPrefix: '31' });
    bad({}, parseSubnet('--subnet', '10.50.0.0/24')); // the default /24 host prefix leaves one host
    bad({}, parseSubnet('--subnet', 'fd00:50::/64'));
    assert.throws(() => parsePeer({ host: 'h2', subnet: '10.50.2.1/24', underlay: '192.0.2.12', vtepMac: '02:00:00:00:00:02' }), CtnetError);
    assert.deepEqual(parsePeer({ host: 'h2', subnet: '10.50.2.0/24', underlay: '192.0.2.12', vtepMac: '02:00:00:00:00:0A' }).vtepMac, '02:00:00:00:00:0a');
  });
});

describe('the vxlan driver through the use cases', () => {
  it('a network: bridge, VXLAN device and sandbox interfaces at the underlay MTU less 50; its nft elements', async () => {
    await withWorld(async (w) => {
      await createNetwork(w.ctx, LEASE(), OVERLAY);
      await createSandbox(w.ctx, 's1', parseAttachSpec({ network: ['ov'] }));
      const s = w.fake.snapshot();
      const host = s.namespaces[HOST]!;
      assert.equal(host.links['ctbr-ov']!.mtu, 1450);
      assert.deepEqual(host.links['ctbr-ov']!.addrs, ['10.50.1.1/24'], 'the gateway: the lease\'s first address');
      assert.deepEqual([host.links[VX]!.mtu, host.links[VX]!.vxlan, host.links[VX]!.master, host.links[VX]!.addrs, host.links[VX]!.up],
        [1450, 'id 42 local 192.0.2.10 dev eth0 dstport 4789', null, ['10.50.1.0/32'], true], 'not a port of the bridge');
      assert.equal(s.namespaces[`/run/netns/ctnet-${w.store.instance}-s1`]!.links.eth0!.mtu, 1450);
      assert.deepEqual(w.fake.elements('overlay4'), ['10.50.0.0/16']);
      assert.deepEqual(w.fake.elements('masq4'), ['10.50.1.0/24']);
      assert.deepEqual(w.fake.elements('vxlan_ids'), ['4789 . 42']);
      assert.deepEqual(w.fake.elements('overlays'), ['"ctov-ov"']);
      assert.deepEqual(w.fake.elements('bridge_pairs'), ['"ctbr-ov" . "ctbr-ov"', '"ctbr-ov" . "ctov-ov"', '"ctov-ov" . "ctbr-ov"']);
    });
  });

  it('refuses a second network on a VNI in use or overlapping the overlay, changing nothing', async () => {
    await withWorld(async (w) => {
      await createNetwork(w.ctx, LEASE(), OVERLAY);
      const before = w.fake.snapshot();
      const conflict = (e: unknown) => e instanceof CtnetError && e.code === 'CONFLICT';
      await assert.rejects(createNetwork(w.ctx, parseNetworkSpec({ name: 'ov2', subnet: ['10.60.1.0/24'] }), { ...OVERLAY, cidr: '10.60.0.0/16' }), conflict);
      await assert.rejects(createNetwork(w.ctx, parseNetworkSpec({ name: 'lan', subnet: ['10.50.200.0/24'] })), conflict, 'inside the overlay: another host\'s lease');
      await assert.rejects(createNetwork(w.ctx, parseNetworkSpec({ name: 'ov3', subnet: ['10.51.1.0/24'] }), { ...OVERLAY, vni: 43, cidr: '10.50.0.0/15' }), conflict);
      assert.deepEqual(w.fake.snapshot(), before);
      assert.deepEqual(w.store.networks().map((n) => n.name), ['ov']);
    });
  });

  it('syncPeers: three entries per peer whatever the number of sandboxes; again changes nothing; a missing peer is removed', async () => {
    for (const sandboxes of [1, 12]) {
      await withWorld(async (w) => {
        await createNetwork(w.ctx, LEASE(), OVERLAY);
        for (let i = 0; i < sandboxes; i++) await createSandbox(w.ctx, `s${i}`, parseAttachSpec({ network: ['ov'] }));
        const me = { host: 'me', subnet: '10.50.1.0/24', underlay: '192.0.2.10', vtepMac: w.store.overlay('ov')!.vtepMac };
        const r = await syncPeers(w.ctx, 'ov', [me, peer(2), peer(3)]);
        assert.deepEqual(r, { programmed: ['h2', 'h3'], removed: [], refused: [], operations: 7 });
        const e = entries(w.fake);
        assert.deepEqual([e.neigh.length, e.fdb.length, e.routes.length], [2, 2, 2], `${sandboxes} sandboxes`);
        assert.deepEqual(w.fake.elements('vteps4'), ['192.0.2.12 . 4789 . 42', '192.0.2.13 . 4789 . 42']);
        assert.deepEqual(w.store.peers('ov').map((p) => p.host), ['h2', 'h3']);

        const count = w.fake.opCount;
        assert.deepEqual(await syncPeers(w.ctx, 'ov', [peer(3), peer(2)]), { programmed: [], removed: [], refused: [], operations: 0 });
        assert.equal(w.fake.opCount, count, 'nothing applied: no entry flushed and re-added');

        assert.deepEqual(await syncPeers(w.ctx, 'ov', [peer(3)]), { programmed: [], removed: ['h2'], refused: [], operations: 4 });
        assert.deepEqual(entries(w.fake), {
          neigh: ['10.50.3.0 lladdr 02:00:00:00:00:03 dev ctov-ov'], fdb: ['02:00:00:00:00:03 dst 192.0.2.13'], routes: ['10.50.3.0/24 via 10.50.3.0 dev ctov-ov onlink'],
        });
        assert.deepEqual(w.fake.elements('vteps4'), ['192.0.2.13 . 4789 . 42']);
        assert.deepEqual((await peerStatus(w.ctx, 'ov')).map((p) => [p.host, p.neigh, p.fdb, p.route]), [['h3', true, true, true]]);
      });
    }
  });

  it('syncPeers: a failure at any step leaves kernel and store as they were', async () => {
    let n = 0;
    for (; ; n++) {
      const done = await withWorld(async (w) => {
        await createNetwork(w.ctx, LEASE(), OVERLAY);
        await syncPeers(w.ctx, 'ov', [peer(2), peer(3)]);
        const before = { kernel: w.fake.snapshot(), peers: w.store.peers('ov') };
        // h2 moves, h3 leaves, h4 joins: replacements, removals and additions in one call.
        const start = w.fake.opCount;
        w.fake.failAt(n);
        try {
          await syncPeers(w.ctx, 'ov', [peer(2, { underlay: '192.0.2.99' }), peer(4)]);
        } catch (e) {
          assert.ok(e instanceof KernelError, String(e));
          assert.deepEqual({ kernel: w.fake.snapshot(), peers: w.store.peers('ov') }, before, `failure at operation ${n}`);
          return false;
        }
        assert.ok(w.fake.opCount - start <= n, 'every operation was tried');
        return true;
      });
      if (done) break;
    }
    assert.ok(n >= 6, `${n} failure points tried`);
  });

  it('gc puts back a peer\'s lost entry and a deleted VXLAN device with every peer; rm removes it all', async () => {
    await withWorld(async (w) => {
      await createNetwork(w.ctx, LEASE(), OVERLAY);
      await syncPeers(w.ctx, 'ov', [peer(2), peer(3)]);
      const programmed = w.fake.snapshot();
      await w.fake.apply([{ kind: 'route.del', dst: '10.50.2.0/24', via: '10.50.2.0', dev: VX }]);
      assert.deepEqual((await peerStatus(w.ctx, 'ov')).map((p) => [p.host, p.route]), [['h2', false], ['h3', true]]);
      assert.ok((await gc(w.ctx)).some((l) => /peer h2/.test(l)));
      assert.deepEqual(w.fake.snapshot(), programmed);
      await w.fake.apply([{ kind: 'link.del', name: VX }]);
      assert.ok((await gc(w.ctx)).some((l) => /recreated VXLAN device ctov-ov/.test(l)));
      assert.deepEqual(entries(w.fake), entries({ snapshot: () => programmed } as FakeKernel));
      await removeNetwork(w.ctx, 'ov', { force: false });
      const host = w.fake.snapshot().namespaces[HOST]!;
      assert.deepEqual([Object.keys(host.links), host.routes, host.neigh, w.fake.snapshot().nft], [['eth0', 'lo'], undefined, undefined, null]);
      assert.deepEqual(w.store.peers(), []);
    });
  });
});
