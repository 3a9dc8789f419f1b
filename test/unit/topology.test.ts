// Topology files (issue 19) without a kernel: the parser's messages (FILE:LINE:COLUMN), and plan and
// apply on the fake kernel (no changes after apply, ownership, rollback of a failed apply, down).
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { Applier } from '../../src/engine/applier.ts';
import type { Ctx } from '../../src/engine/context.ts';
import { createNetwork } from '../../src/engine/network.ts';
import { createSandbox } from '../../src/engine/sandbox.ts';
import { FakeKernel } from '../../src/kernel/fake.ts';
import { withLinkSnapshot } from '../../src/kernel/snapshot.ts';
import { tableDrift } from '../../src/engine/tables.ts';
import { parsePortSpec } from '../../src/model/ports.ts';
import { parseNetworkSpec } from '../../src/model/spec.ts';
import { Store } from '../../src/store/store.ts';
import { applyPlan, downTopology } from '../../src/topology/apply.ts';
import { expand, parseTopology, splitWords } from '../../src/topology/parse.ts';
import { computePlan, planJson, renderPlan } from '../../src/topology/plan.ts';

const SHOP = `name: shop
networks:
  front: { subnets: [10.70.1.0/24] }
  back:  { subnets: [10.70.2.0/24, "fd00:70:2::/64"], internal: true }
sandboxes:
  web: { networks: [front], labels: { tier: web }, ports: ["8080:80"] }
  api: { networks: [back, { network: front, ip: 10.70.1.20 }], labels: { tier: api } }
policy:
  - { name: web-to-api, action: allow, from: "label:tier=web", to: "label:tier=api", port: 80/tcp }
`;

describe('parseTopology', () => {
  it('reads the issue\'s example into typed values', () => {
    const t = parseTopology('shop.yaml', SHOP);
    assert.equal(t.name, 'shop');
    assert.deepEqual(t.networks.map((n) => [n.name, n.spec.subnets.map((s) => s.cidr), n.spec.internal, n.at]),
      [['front', ['10.70.1.0/24'], false, 'shop.yaml:3:3'], ['back', ['10.70.2.0/24', 'fd00:70:2::/64'], true, 'shop.yaml:4:3']]);
    assert.deepEqual(t.sandboxes[1]!.networks.map((a) => [a.network, a.ips.map((i) => i.text)]), [['back', []], ['front', ['10.70.1.20']]]);
    assert.deepEqual(t.policy[0], { name: 'web-to-api', action: 'allow', from: 'label:tier=web', to: 'label:tier=api', port: '80/tcp', at: 'shop.yaml:9:5' });
  });

  const bad: [string, string, RegExp][] = [
    ['YAML syntax', 'name: shop\nnetworks:\n  front: { subnets: [10.70.1.0/24 }\n', /^f\.yaml:3:\d+: /],
    ['no name', 'networks: {}\n', /^f\.yaml:1:1: the file has no name:/],
    ['an unknown top-level key', 'name: a\nservice: {}\n', /^f\.yaml:2:1: unknown key "service" in the file/],
    ['a service on an unknown network', SHOP + 'services:\n  w: { network: frnt, port: 80, to: "label:tier=web" }\n', /^f\.yaml:11:\d+: service w: no network named "frnt" in this file/],
    ['a service with a bad port', SHOP + 'services:\n  w: { network: front, port: 80/sctp, to: "label:tier=web" }\n', /^f\.yaml:11:\d+: .*protocol "sctp" is not tcp or udp/],
    ['a service with a bad selector', SHOP + 'services:\n  w: { network: front, port: 80, to: "tier=web" }\n', /^f\.yaml:11:\d+: .*does not start with "label:"/],
    ['a VIP outside the subnet', SHOP + 'services:\n  w: { network: front, port: 80, to: "label:tier=web", vip: 10.70.2.9 }\n', /^f\.yaml:11:\d+: service w: vip 10\.70\.2\.9 is outside network front's subnet 10\.70\.1\.0\/24/],
    ['a VIP that is a sandbox\'s address', SHOP + 'services:\n  w: { network: front, port: 80, to: "label:tier=web", vip: 10.70.1.20 }\n', /^f\.yaml:11:\d+: service w: vip 10\.70\.1\.20 is also sandbox api's address/],
    ['a service published on a sandbox\'s host port', SHOP + 'services:\n  w: { network: front, port: 80, to: "label:tier=web", publish: 8080 }\n', /^f\.yaml:11:\d+: service w: host port 8080\/tcp is also published by sandbox web/],
    ['a bad check', SHOP + 'services:\n  w: { network: front, port: 80, to: "label:tier=web", check: ping }\n', /^f\.yaml:11:\d+: .*--check "ping" is not tcp or http:PATH/],
    ['a service with an unknown key', SHOP + 'services:\n  w: { network: front, port: 80, to: "label:tier=web", weight: 2 }\n', /^f\.yaml:11:\d+: unknown key "weight" in service w/],
    ['an unknown key', SHOP.replace('internal: true', 'internal: true, colour: red'), /^f\.yaml:4:\d+: unknown key "colour" in network back/],
    ['a wrong type', SHOP.replace('internal: true', 'internal: "yes"'), /^f\.yaml:4:\d+: internal must be true or false, not string "yes"/],
    ['a bad subnet', SHOP.replace('10.70.1.0/24', '10.70.1.0/33'), /^f\.yaml:3:\d+: .*10\.70\.1\.0\/33/],
    ['overlapping subnets', SHOP.replace('10.70.2.0/24', '10.70.1.128/25'), /^f\.yaml:4:\d+: subnet 10\.70\.1\.128\/25 of network back overlaps 10\.70\.1\.0\/24 of network front/],
    ['an unknown network', SHOP.replace('networks: [front]', 'networks: [frnt]'), /^f\.yaml:6:\d+: sandbox web: no network named "frnt" in this file/],
    ['an address outside its subnet', SHOP.replace('ip: 10.70.1.20', 'ip: 10.70.3.20'), /^f\.yaml:7:\d+: sandbox api: 10\.70\.3\.20 is outside network front's subnets/],
    ['the gateway as an address', SHOP.replace('ip: 10.70.1.20', 'ip: 10.70.1.1'), /^f\.yaml:7:\d+: sandbox api: 10\.70\.1\.1 is the network, broadcast or gateway address/],
    ['a duplicate sandbox', SHOP.replace('  api: {', '  web: {'), /^f\.yaml:7:3: web is given twice/],
    ['a duplicate rule', SHOP + '  - { name: web-to-api, action: deny, from: world, to: web }\n', /^f\.yaml:10:13: a second policy rule named web-to-api/],
    ['an unquoted port', SHOP.replace('"8080:80"', '8080'), /^f\.yaml:6:\d+: port 8080 of sandbox web must be quoted/],
    ['a host port twice', SHOP.replace('labels: { tier: api }', 'labels: { tier: api }, ports: ["8080:81"]'), /^f\.yaml:7:\d+: sandbox api: 8080:81\/tcp overlaps 8080:80\/tcp of sandbox web/],
    ['a rule naming an unknown sandbox', SHOP.replace('from: "label:tier=web"', 'from: wbe'), /^f\.yaml:9:\d+: from: no sandbox named wbe in this file/],
    ['a bad action', SHOP.replace('action: allow', 'action: permit'), /^f\.yaml:9:\d+: action must be allow or deny, not "permit"/],
  ];
  for (const [what, text, want] of bad) {
    it(`rejects ${what} with FILE:LINE:COLUMN`, () => {
      assert.throws(() => parseTopology('f.yaml', text), (e: Error) => (assert.match(e.message, want), true));
    });
  }

  it('command: a list, or a string split like a shell with ${VAR} from the environment', () => {
    assert.deepEqual(splitWords(`a 'b c' "d"  e`), ['a', 'b c', 'd', 'e']);
    assert.equal(expand('${S:-python3 -m http.server} 80 $$HOME', {}), 'python3 -m http.server 80 $HOME');
    assert.equal(expand('${S:-x} 80', { S: 'serve' }), 'serve 80');
    assert.throws(() => expand('${NOPE}', {}), /\$\{NOPE\} is not set/);
    const t = parseTopology('f.yaml', 'name: a\nnetworks:\n  n: { subnets: [10.1.0.0/24] }\nsandboxes:\n  s: { networks: [n], command: "${X:-sleep} 60" }\n', { X: 'sleep' });
    assert.deepEqual(t.sandboxes[0]!.command, ['sleep', '60']);
  });
});

function world() {
  const dir = mkdtempSync(join(tmpdir(), 'ctnet-topo-unit-'));
  const store = new Store(dir);
  const fake = new FakeKernel();
  const ctx: Ctx = { store, kernel: fake, warn: () => {}, applier: new Applier({ backend: fake, store, warn: () => {} }) };
  return { ctx, fake, [Symbol.dispose]: () => { store.close(); rmSync(dir, { recursive: true, force: true }); } };
}

describe('issue 18 in a file: egress, default route, shaping, macvlan', () => {
  const OUT = (route: string, egress: string, shaping: string) => `name: out
networks:
  o1: { subnets: [10.73.1.0/24], egress_ip: [${egress}] }
  o2: { subnets: [10.73.2.0/24] }
  lan: { subnets: [192.0.2.0/24], driver: macvlan, parent: eth0, gateways: [192.0.2.1] }
sandboxes:
  s1: { networks: [o1, o2], default_route: ${route}${shaping} }
  s2: { networks: [lan] }
`;
  it('creates them as the flags would, changes egress, route and shaping in place, and a second plan is empty', async () => {
    using w = world();
    const t = parseTopology('out.yaml', OUT('o2', '192.0.2.10', ', rate_in: 20mbit'));
    await applyPlan(w.ctx, t, await computePlan(w.ctx, t, { prune: false }));
    const { store } = w.ctx;
    assert.deepEqual(store.networkEgress('o1').map((e) => e.ip), ['192.0.2.10']);
    assert.equal(store.defaultRoute('s1'), 'o2');
    assert.equal(store.shaping('s1', 'o1')?.rateIn, 20_000_000);
    assert.equal(store.network('lan')?.driver, 'macvlan');
    assert.deepEqual((await computePlan(w.ctx, t, { prune: false })).changes, []);
    const t2 = parseTopology('out.yaml', OUT('o1', '', ''));
    const p2 = await computePlan(w.ctx, t2, { prune: false });
    assert.deepEqual(renderPlan(p2).split('\n').slice(1, -1), [
      '  ~   network o1: egress 192.0.2.10 -> masquerade (new connections)',
      '  ~   sandbox s1: default route via o2 -> o1; shaping rateIn 20000000 -> none',
    ]);
    await applyPlan(w.ctx, t2, p2);
    assert.deepEqual(store.networkEgress('o1'), []);
    assert.equal(store.defaultRoute('s1'), 'o1');
    assert.equal(store.shaping('s1', 'o1'), undefined);
    assert.deepEqual((await computePlan(w.ctx, t2, { prune: false })).changes, []);
  });
  it('bad values name the file position', () => {
    assert.throws(() => parseTopology('out.yaml', OUT('o3', '192.0.2.10', '')), /out\.yaml:7:\d+: default_route o3 of sandbox s1 is not one of its networks/);
    assert.throws(() => parseTopology('out.yaml', OUT('o2', 'nope', '')), /out\.yaml:3:\d+: .*egress_ip/);
    assert.throws(() => parseTopology('out.yaml', OUT('o2', '192.0.2.10', ', rate_in: 20')), /out\.yaml:7:\d+: .*rate/);
  });
});

describe('plan and apply on the fake kernel', () => {
  it('apply, then no changes; an in-place change; down removes only what the file owns', async () => {
    using w = world();
    const t = parseTopology('shop.yaml', SHOP);
    const first = await computePlan(w.ctx, t, { prune: false });
    assert.match(renderPlan(first), /Plan: 5 to add, 0 to change, 0 to replace, 0 to remove\.$/);
    const j = planJson(first) as { summary: object; changes: { op: string; kind: string; name: string }[] };
    assert.deepEqual(j.summary, { add: 5, change: 0, replace: 0, remove: 0, repair: 0 });
    assert.deepEqual(j.changes.map((c) => `${c.op} ${c.kind} ${c.name}`), ['create network front', 'create network back', 'create sandbox web', 'create sandbox api', 'create policy web-to-api']);
    await applyPlan(w.ctx, t, first);
    assert.deepEqual((await computePlan(w.ctx, t, { prune: false })).changes, []);
    assert.deepEqual(w.ctx.store.owned({ topology: 'shop' }).map((o) => `${o.kind} ${o.name}`),
      ['network back', 'network front', 'policy web-to-api', 'sandbox api', 'sandbox web']);
    const t2 = parseTopology('shop.yaml', SHOP.replace('labels: { tier: web }', 'labels: { tier: front }'));
    const p2 = await computePlan(w.ctx, t2, { prune: false });
    assert.deepEqual(renderPlan(p2).split('\n').slice(1), ['  ~   sandbox web: labels tier=web -> tier=front', 'Plan: 0 to add, 1 to change, 0 to replace, 0 to remove.']);
    await applyPlan(w.ctx, t2, p2);
    assert.deepEqual(w.ctx.store.labels('web').map((l) => l.value), ['front']);
    // MTU in place: the bridge and both ends of every veth on it; the sandboxes stay.
    const t3 = parseTopology('shop.yaml', SHOP.replace('labels: { tier: web }', 'labels: { tier: front }').replace('front: { subnets: [10.70.1.0/24] }', 'front: { subnets: [10.70.1.0/24], mtu: 1400 }'));
    const p3 = await computePlan(w.ctx, t3, { prune: false });
    assert.deepEqual(renderPlan(p3).split('\n').slice(1), ['  ~   network front: mtu default -> 1400 (bridge and its sandboxes\' interfaces)', 'Plan: 0 to add, 1 to change, 0 to replace, 0 to remove.']);
    await applyPlan(w.ctx, t3, p3);
    const links = w.fake.snapshot().namespaces;
    const web = w.ctx.store.attachments({ sandbox: 'web' })[0]!;
    assert.equal((links.host as any).links[web.hostVeth].mtu, 1400);
    assert.equal((links.host as any).links['ctbr-front'].mtu, 1400);
    assert.equal((links[w.ctx.store.sandbox('web')!.netns] as any).links.eth0.mtu, 1400);
    assert.equal(w.ctx.store.network('front')!.mtu, 1400);
    assert.deepEqual((await computePlan(w.ctx, t3, { prune: false })).changes, []);
    // By hand, beside the file's: down leaves it.
    await createNetwork(w.ctx, parseNetworkSpec({ name: 'manual', subnet: ['10.72.0.0/24'] }));
    await downTopology(w.ctx, 'shop');
    assert.deepEqual(w.ctx.store.networks().map((n) => n.name), ['manual']);
    assert.deepEqual(w.ctx.store.sandboxes(), []);
    assert.deepEqual(w.ctx.store.policies(), []);
    assert.deepEqual(w.ctx.store.owned(), []);
  });

  it('a failure part-way undoes what this apply did and says what failed', async () => {
    using w = world();
    // A sandbox made by hand holds host port 8080: web's create fails after both networks were made.
    await createNetwork(w.ctx, parseNetworkSpec({ name: 'manual', subnet: ['10.72.0.0/24'] }));
    await createSandbox(w.ctx, 'hand', { networks: ['manual'], ips: [], mac: undefined, aliases: [] }, { mappings: [parsePortSpec('8080:80')], force: true });
    const before = w.fake.snapshot();
    const t = parseTopology('shop.yaml', SHOP);
    const plan = await computePlan(w.ctx, t, { prune: false });
    await assert.rejects(applyPlan(w.ctx, t, plan), /apply failed at "create sandbox web": .*8080.*; undid 2 earlier change\(s\) of this apply/);
    assert.deepEqual(w.ctx.store.networks().map((n) => n.name), ['manual']);
    assert.deepEqual(w.ctx.store.owned(), []);
    // Forwarding, once on, stays on (removing a network never turns it off): the rest is as before.
    assert.deepEqual({ ...w.fake.snapshot(), sysctls: undefined }, { ...before, sysctls: undefined });
  });

  it('services: created after the sandboxes, replaced on any change (the VIP kept), pruned, removed by down', async () => {
    using w = world();
    const SVC = SHOP + 'services:\n  web: { network: front, port: 80, to: "label:tier=web" }\n';
    const t = parseTopology('shop.yaml', SVC);
    assert.deepEqual(t.services, [{ name: 'web', network: 'front', port: '80/tcp', to: 'label:tier=web:80', vip: undefined, affinity: 'none', publish: undefined, check: undefined, at: 'shop.yaml:11:3' }]);
    const p = await computePlan(w.ctx, t, { prune: false });
    assert.equal(renderPlan(p).split('\n').at(-2), '  +   service web: on front; port 80/tcp; to label:tier=web:80');
    await applyPlan(w.ctx, t, p);
    const vip = w.ctx.store.service('web')!.vip;
    assert.deepEqual(w.ctx.store.service('web')!.backends, [w.ctx.store.addresses({ sandbox: 'web' }).find((a) => a.family === 4)!.ip]);
    assert.deepEqual((await computePlan(w.ctx, t, { prune: false })).changes, []);
    assert.ok(w.ctx.store.owned({ topology: 'shop' }).some((o) => o.kind === 'service' && o.name === 'web'));
    // A new target port replaces it and keeps its VIP.
    const t2 = parseTopology('shop.yaml', SVC.replace('to: "label:tier=web" }', 'to: "label:tier=web:8080", affinity: client-ip }'));
    const p2 = await computePlan(w.ctx, t2, { prune: false });
    assert.deepEqual(renderPlan(p2).split('\n').slice(1), ['  -/+ service web: to label:tier=web:80 -> label:tier=web:8080; affinity none -> client-ip', 'Plan: 0 to add, 0 to change, 1 to replace, 0 to remove.']);
    await applyPlan(w.ctx, t2, p2);
    assert.equal(w.ctx.store.service('web')!.targetPort, 8080);
    assert.equal(w.ctx.store.service('web')!.vip, vip);
    assert.deepEqual((await computePlan(w.ctx, t2, { prune: false })).changes, []);
    // Published and checked: a replace that says so.
    const t2b = parseTopology('shop.yaml', SVC.replace('to: "label:tier=web" }', 'to: "label:tier=web:8080", affinity: client-ip, publish: 9080, check: tcp, check_interval: 5s }'));
    const p2b = await computePlan(w.ctx, t2b, { prune: false });
    assert.deepEqual(renderPlan(p2b).split('\n').slice(1, -1), ['  -/+ service web: publish none -> 0.0.0.0:9080; check none -> tcp every 5s']);
    await applyPlan(w.ctx, t2b, p2b);
    assert.deepEqual(w.ctx.store.service('web')!.publish, { hostIp: '0.0.0.0', hostPort: 9080 });
    assert.deepEqual((await computePlan(w.ctx, t2b, { prune: false })).changes, []);
    // Dropped from the file: kept without --prune, removed with it.
    const p3 = await computePlan(w.ctx, parseTopology('shop.yaml', SHOP), { prune: false });
    assert.deepEqual(p3.kept, [{ kind: 'service', name: 'web' }]);
    const p4 = await computePlan(w.ctx, parseTopology('shop.yaml', SHOP), { prune: true });
    assert.deepEqual(p4.changes.map((c) => `${c.op} ${c.kind} ${c.name}`), ['remove service web']);
    await applyPlan(w.ctx, parseTopology('shop.yaml', SHOP), p4);
    assert.equal(w.ctx.store.service('web'), undefined);
    assert.ok(!w.ctx.store.owned().some((o) => o.kind === 'service'));
    // down removes the file's services before its networks.
    await applyPlan(w.ctx, t, await computePlan(w.ctx, t, { prune: false }));
    assert.ok(w.ctx.store.service('web'));
    await downTopology(w.ctx, 'shop');
    assert.deepEqual(w.ctx.store.services(), []);
    assert.deepEqual(w.ctx.store.networks(), []);
    assert.deepEqual(w.ctx.store.owned(), []);
  });

  it('an object that exists but was made by hand (or by another file) is a conflict at plan time', async () => {
    using w = world();
    await createNetwork(w.ctx, parseNetworkSpec({ name: 'front', subnet: ['10.70.1.0/24'] }));
    await assert.rejects(computePlan(w.ctx, parseTopology('shop.yaml', SHOP), { prune: false }), /shop\.yaml:3:3: network front exists already and was not made by this file/);
  });
});

describe('overlay networks in a file (driver: vxlan)', () => {
  const OV = (extra = '') => `name: ov
networks:
  ov: { driver: vxlan, subnets: [10.80.0.0/16], vni: 4242${extra} }
sandboxes:
  a: { networks: [ov] }
`;
  const MEMBER = { host: 'h1', endpoints: ['http://192.0.2.254:9'], underlay: '192.0.2.10', vtepMac: '02:00:00:00:00:01', leaseTtl: 60, leaseId: '7', state: 'ready', joined: '2026-01-01T00:00:00.000Z' } as const;

  it('parses the cluster\'s keys as network create --driver vxlan takes them', () => {
    const t = parseTopology('ov.yaml', OV(', host_prefix: 26, port: 8472, isolate: true, mtu: 1400'));
    assert.deepEqual(t.networks[0]!.overlay, { subnet: '10.80.0.0/16', hostPrefix: 26, vni: 4242, port: 8472, internal: false, isolate: true });
    assert.equal(t.networks[0]!.spec.mtu, 1400);
    assert.equal(parseTopology('ov.yaml', OV().replace(', vni: 4242', '')).networks[0]!.overlay?.vni, undefined);
  });
  const bad: [string, string, RegExp][] = [
    ['a bad VNI', OV().replace('4242', '0'), /^ov\.yaml:3:\d+: vni "0" is not a whole number from 1 to/],
    ['a VNI as text', OV().replace('4242', '"x"'), /^ov\.yaml:3:\d+: vni of network ov must be a number, not string "x"/],
    ['IPv6', OV().replace('10.80.0.0/16', '"fd00:80::/48"'), /^ov\.yaml:3:\d+: .*IPv4 only/],
    ['two subnets', OV().replace('[10.80.0.0/16]', '[10.80.0.0/16, 10.81.0.0/16]'), /^ov\.yaml:3:\d+: overlay network ov has one subnet/],
    ['a host share larger than the subnet', OV(', host_prefix: 12'), /^ov\.yaml:3:\d+: host_prefix/],
    ['a gateway', OV(', gateways: [10.80.0.1]'), /^ov\.yaml:3:\d+: network ov: gateways is not for an overlay network/],
    ['egress_ip', OV(', egress_ip: [192.0.2.10]'), /^ov\.yaml:3:\d+: network ov: egress_ip is not for an overlay network.*/],
    ['vni on a bridge', OV().replace('driver: vxlan, ', ''), /^ov\.yaml:3:\d+: network ov: vni is for overlay networks/],
    ['a fixed address', OV().replace('networks: [ov]', 'networks: [{ network: ov, ip: 10.80.0.5 }]'), /^ov\.yaml:5:\d+: sandbox a: no fixed address on overlay network ov/],
    ['an unknown driver', OV().replace('vxlan', 'geneve'), /^ov\.yaml:3:\d+: driver "geneve" is not a network driver/],
  ];
  for (const [what, text, want] of bad) it(`rejects ${what} with FILE:LINE:COLUMN`, () => assert.throws(() => parseTopology('ov.yaml', text), (e: Error) => (assert.match(e.message, want), true)));

  it('needs this host in a cluster: a clear error at plan time, nothing changed', async () => {
    using w = world();
    await assert.rejects(computePlan(w.ctx, parseTopology('ov.yaml', OV()), { prune: false }),
      /ov\.yaml:3:3: network ov is an overlay network \(driver: vxlan\): it needs this host in a cluster, and this host is not a member of one/);
    assert.deepEqual(w.ctx.store.networks(), []);
  });

  it('an overlay made by this file: no changes; a local option changed: replace with the reason', async () => {
    using w = world();
    const { store } = w.ctx;
    store.write(() => store.insertMember(MEMBER));
    // This host's side as ensureOverlayNetwork makes it (the lease 10.80.3.0/24 from the cluster).
    await createNetwork(w.ctx, parseNetworkSpec({ name: 'ov', subnet: ['10.80.3.0/24'] }),
      { vni: 4242, port: 4789, cidr: '10.80.0.0/16', underlay: { ip: '192.0.2.10', dev: 'eth0', mtu: 1500 }, vtepMac: '02:00:00:00:00:01' });
    await createSandbox(w.ctx, 'a', { networks: ['ov'], ips: [], mac: undefined, aliases: [] }, { mappings: [], force: false }, []);
    store.write(() => { for (const [kind, name] of [['network', 'ov'], ['sandbox', 'a']] as const) store.setOwner({ kind, name, topology: 'ov', file: 'ov.yaml' }); });
    assert.deepEqual((await computePlan(w.ctx, parseTopology('ov.yaml', OV()), { prune: false })).changes, []);
    const p = await computePlan(w.ctx, parseTopology('ov.yaml', OV(', mtu: 1400, host_access: true')), { prune: false });
    assert.deepEqual(renderPlan(p).split('\n').slice(1), [
      '  -/+ network ov: mtu 1450 -> 1400 (an overlay\'s MTU is set when it is made); host_access false -> true; re-attaches a',
      'Plan: 0 to add, 0 to change, 1 to replace, 0 to remove.',
    ]);
    assert.deepEqual(p.actions.map((a) => a.do), ['network.replace']);
  });
});

describe('the plan reads the kernel in a few calls', () => {
  it('withLinkSnapshot answers link and linksOf on the host as the kernel does, from one read', async () => {
    using w = world();
    const t = parseTopology('shop.yaml', SHOP);
    await applyPlan(w.ctx, t, await computePlan(w.ctx, t, { prune: false }));
    const snap = await withLinkSnapshot(w.fake);
    for (const name of ['ctbr-front', 'ctbr-back', 'nope']) {
      assert.deepEqual(await snap.link(name), await w.fake.link(name), name);
      assert.deepEqual(await snap.linksOf(name), await w.fake.linksOf(name).catch(() => []), name);
    }
    assert.equal((await snap.linksOf('ctbr-front')).length, 2, 'web and api on front');
    // Made before a change, it does not see it: a view for one read-only pass.
    await w.fake.apply([{ kind: 'link.add.bridge', name: 'ctbr-later', mac: '02:00:00:00:00:09' }]);
    assert.equal(await snap.link('ctbr-later'), undefined);
  });
  it('the tables\' drift from the mirror\'s counts is the drift of the whole script', async () => {
    using w = world();
    const t = parseTopology('shop.yaml', SHOP);
    await applyPlan(w.ctx, t, await computePlan(w.ctx, t, { prune: false }));
    assert.deepEqual(await tableDrift(w.ctx, { fromMirror: true }), []);
    assert.deepEqual(await tableDrift(w.ctx), []);
  });
});
