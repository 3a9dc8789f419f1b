// Services on overlay networks (issue 17) on the fake kernel: the owner's service takes its VIP from
// its lease and balances over the selected sandboxes of every host (the directory's mirror); the
// others' copies follow etcd's services/NAME entries (mirrorServices): installed, replaced, removed,
// refused; the etcd value's text and parsing.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { decodeEntry, encodeService, parseKey, serviceKey, type ServiceValue } from '../../src/cluster/keys.ts';
import { applyMirror } from '../../src/engine/directory.ts';
import { createNetwork, removeNetwork, type OverlaySpec } from '../../src/engine/network.ts';
import { syncPolicy } from '../../src/engine/policy.ts';
import { createSandbox } from '../../src/engine/sandbox.ts';
import { createService, listServices, mirrorServices, ownServiceEntries, removeService } from '../../src/engine/services.ts';
import { parseAttachSpec, parseNetworkSpec } from '../../src/model/spec.ts';
import type { Op } from '../../src/plan/ops.ts';
import type { RemoteSandboxRow } from '../../src/store/store.ts';
import { withWorld as inWorld, serviceRules as rule, type World } from './fake-world.ts';

const withWorld = <T>(fn: (w: World) => Promise<T>) => inWorld('svc-overlay', fn);

const OVERLAY: OverlaySpec = { vni: 42, port: 4789, cidr: '10.50.0.0/16', underlay: { ip: '192.0.2.10', dev: 'eth0', mtu: 1500 } };
/** This host's side of overlay ov (lease 10.50.1.0/24), a bridge network, and web (label app=web) here. */
async function setup(w: World) {
  await createNetwork(w.ctx, parseNetworkSpec({ name: 'ov', subnet: ['10.50.1.0/24'] }), OVERLAY);
  await createNetwork(w.ctx, parseNetworkSpec({ name: 'br', subnet: ['10.1.0.0/24'] }));
  await createSandbox(w.ctx, 'web', parseAttachSpec({ network: ['ov'] }), undefined, [{ key: 'app', value: 'web' }]);
}
/** web2 on h2 (in h2's lease), and one whose address is on no overlay of ours (never a backend). */
const WEB2: RemoteSandboxRow = { host: 'h2', name: 'web2', addresses: ['10.50.2.2'], labels: { app: 'web' }, networks: ['ov'], aliases: {} };
const req = { name: 'api', network: 'ov', port: '80', to: 'label:app=web:8080', vip: undefined, affinity: undefined };
/** h2's service api2 on ov, VIP from h2's lease. */
const API2: ServiceValue = { host: 'h2', network: 'ov', vip: '10.50.2.200', proto: 'tcp', port: 80, selector: { key: 'app', value: 'web' }, targetPort: 8080, affinity: 'none' };

describe('a service on an overlay network, on its owner', () => {
  it('takes its VIP from this host\'s lease and balances over the selected sandboxes of every host', () => withWorld(async (w) => {
    await setup(w);
    const s = await createService(w.ctx, req);
    assert.equal(s.vip, '10.50.1.3', 'from the lease, after the gateway and web');
    assert.match(rule(w, 'api'), /mod 1 map \{ 0 : 10\.50\.1\.2 \. 8080 \}/);
    // web2 on h2 joins when the directory mirrors it (syncPolicy runs syncServices), and leaves with its entry.
    applyMirror(w.store, { put: [WEB2], removed: [], snapshot: true });
    await syncPolicy(w.ctx);
    assert.match(rule(w, 'api'), /mod 2 map \{ 0 : 10\.50\.1\.2 \. 8080, 1 : 10\.50\.2\.2 \. 8080 \}/);
    applyMirror(w.store, { put: [{ ...WEB2, labels: { app: 'db' } }], removed: [], snapshot: false });
    await syncPolicy(w.ctx);
    assert.match(rule(w, 'api'), /mod 1 map \{ 0 : 10\.50\.1\.2 \. 8080 \}/, 'relabelled there: out');
    applyMirror(w.store, { put: [WEB2, { ...WEB2, name: 'elsewhere', addresses: ['10.1.0.9'] }], removed: [], snapshot: true });
    await syncPolicy(w.ctx);
    assert.match(rule(w, 'api'), /mod 2 map \{ 0 : 10\.50\.1\.2 \. 8080, 1 : 10\.50\.2\.2 \. 8080 \}/, 'an address outside the overlay is never a backend');
    // What this host publishes, and that a bridge network's service stays local.
    await createService(w.ctx, { ...req, name: 'local', network: 'br' });
    assert.deepEqual([...ownServiceEntries(w.store, 'h1')], [['api', { host: 'h1', network: 'ov', vip: '10.50.1.3', proto: 'tcp', port: 80, selector: { key: 'app', value: 'web' }, targetPort: 8080, affinity: 'none' }]]);
    const [view] = await listServices(w.ctx, 'api');
    assert.equal(view!.host, undefined, 'no member: no host to name');
    await assert.rejects(createService(w.ctx, { ...req, name: 'pub', publish: '8080' }), /--publish 8080: services on overlay network ov are not published on host ports yet/);
  }));
});

describe('other hosts\' services, mirrored from etcd', () => {
  it('installed without a VIP on the bridge, over every host\'s backends; the same entries again change nothing; changed and removed follow', () => withWorld(async (w) => {
    await setup(w);
    applyMirror(w.store, { put: [WEB2], removed: [], snapshot: true });
    const ops: Op[] = [];
    w.fake.failWhen((op) => ops.push(op) < 0);
    assert.deepEqual(await mirrorServices(w.ctx, new Map([['api2', API2]])), { said: ['api2 (of h2) added'], refused: [] });
    assert.ok(!ops.some((o) => o.kind === 'addr.add'), 'the VIP is on its owner\'s bridge only');
    assert.deepEqual((w.fake.elements('services4') ?? []).filter((e) => e.includes('api2')), ['10.50.2.200 . tcp . 80 : goto svc_api2']);
    assert.match(rule(w, 'api2'), /mod 2 map \{ 0 : 10\.50\.1\.2 \. 8080, 1 : 10\.50\.2\.2 \. 8080 \}/);
    assert.equal(w.store.service('api2')?.ownerHost, 'h2');
    ops.length = 0;
    assert.deepEqual(await mirrorServices(w.ctx, new Map([['api2', API2]])), { said: [], refused: [] });
    assert.deepEqual(ops, [], 'nothing to do, nothing done');
    w.fake.failWhen(undefined);
    // Not this host's to remove; nor to publish; a local create of the same name is refused.
    await assert.rejects(removeService(w.ctx, 'api2'), /service api2 belongs to host h2: its VIP 10\.50\.2\.200 is from that host's lease of network ov/);
    assert.deepEqual([...ownServiceEntries(w.store, 'h1')], []);
    await assert.rejects(createService(w.ctx, { ...req, name: 'api2' }), /a service named api2 exists already in the cluster, on host h2/);
    const [view] = await listServices(w.ctx, 'api2');
    assert.equal(view!.host, 'h2');
    // Changed there (another port): replaced; gone from etcd: removed.
    assert.deepEqual((await mirrorServices(w.ctx, new Map([['api2', { ...API2, port: 81 }]]))).said, ['api2 (of h2) changed', 'api2 (of h2) added']);
    assert.deepEqual((w.fake.elements('services4') ?? []).filter((e) => e.includes('api2')), ['10.50.2.200 . tcp . 81 : goto svc_api2']);
    assert.deepEqual((await mirrorServices(w.ctx, new Map())).said, ['api2 (of h2) removed']);
    assert.equal(w.store.service('api2'), undefined);
    assert.equal(rule(w, 'api2'), '');
  }));

  it('a copy of a checked service keeps its check, and takes backends in only once this host\'s own probe passed', () => withWorld(async (w) => {
    await setup(w);
    applyMirror(w.store, { put: [WEB2], removed: [], snapshot: true });
    const checked: ServiceValue = { ...API2, check: { kind: 'tcp', intervalMs: 1000 } };
    assert.deepEqual((await mirrorServices(w.ctx, new Map([['api2', checked]]))).said, ['api2 (of h2) added']);
    const copy = w.store.service('api2')!;
    assert.deepEqual(copy.check, { kind: 'tcp', intervalMs: 1000 });
    assert.deepEqual(copy.backends, [], 'no probe has passed here yet');
    assert.deepEqual([...copy.unready ?? []].sort(), ['10.50.1.2', '10.50.2.2']);
    // The same entry again changes nothing; another check replaces the copy.
    assert.deepEqual((await mirrorServices(w.ctx, new Map([['api2', checked]]))).said, []);
    assert.deepEqual((await mirrorServices(w.ctx, new Map([['api2', { ...checked, check: { kind: 'http' as const, path: '/h', intervalMs: 1000 } }]]))).said, ['api2 (of h2) changed', 'api2 (of h2) added']);
  }));

  it('refuses a name this host has and a VIP outside the overlay; waits for a network this host has no side of; goes with the network', () => withWorld(async (w) => {
    await setup(w);
    await createService(w.ctx, req);
    const want = new Map([
      ['api', API2], // this host's own name
      ['bad', { ...API2, vip: '10.9.0.1' }],
      ['other', { ...API2, network: 'ov2' }],
      ['api2', API2],
    ]);
    const r = await mirrorServices(w.ctx, want);
    assert.deepEqual(r.said, ['api2 (of h2) added']);
    assert.deepEqual(r.refused, ['api of host h2: this host has a service of that name', 'bad of host h2: VIP 10.9.0.1 is outside overlay ov\'s subnet 10.50.0.0/16']);
    assert.equal(w.store.service('api')?.ownerHost, undefined, 'the local one stays');
    // This host's side of ov goes (its own service must go first; h2's goes with it).
    await assert.rejects(removeNetwork(w.ctx, 'ov', { force: true }), /network ov carries services api$/);
    await removeService(w.ctx, 'api');
    await removeNetwork(w.ctx, 'ov', { force: true });
    assert.deepEqual(w.store.services(), []);
  }));
});

describe('services/NAME in etcd', () => {
  it('one value per service, fields in a fixed order; a value that does not read is named', () => {
    assert.deepEqual(parseKey(serviceKey('api')), { kind: 'service', name: 'api' });
    const text = encodeService(API2);
    assert.equal(text, '{"host":"h2","network":"ov","vip":"10.50.2.200","proto":"tcp","port":80,"selector":{"key":"app","value":"web"},"targetPort":8080,"affinity":"none"}');
    assert.deepEqual(decodeEntry(serviceKey('api'), text), { kind: 'service', name: 'api', value: API2 });
    assert.deepEqual(decodeEntry(serviceKey('api'), text.replace('"tcp"', '"sctp"')), { kind: 'bad', key: '/ctnet/services/api', reason: '"proto" is not tcp or udp' });
    assert.deepEqual(decodeEntry(serviceKey('api'), text.replace('10.50.2.200', 'fd00::1')), { kind: 'bad', key: '/ctnet/services/api', reason: '"vip" is not an IPv4 address' });
    assert.equal(decodeEntry(serviceKey('api'), text.replace(',"port":80', '')).kind, 'bad');
  });

  it('carries --check, so every host probes the backends it balances over', () => {
    const checked: ServiceValue = { ...API2, check: { kind: 'http', path: '/healthz', intervalMs: 500 } };
    const text = encodeService(checked);
    assert.match(text, /"check":\{"kind":"http","path":"\/healthz","intervalMs":500\}\}$/);
    assert.deepEqual(decodeEntry(serviceKey('api'), text), { kind: 'service', name: 'api', value: checked });
    const tcp: ServiceValue = { ...API2, check: { kind: 'tcp', intervalMs: 2000 } };
    assert.deepEqual(decodeEntry(serviceKey('api'), encodeService(tcp)), { kind: 'service', name: 'api', value: tcp });
    const bad = (from: string, to: string) => decodeEntry(serviceKey('api'), text.replace(from, to));
    assert.equal(bad('"/healthz"', '"healthz"').kind, 'bad');
    assert.equal(bad('"http"', '"udp"').kind, 'bad');
    assert.equal(bad('"intervalMs":500', '"intervalMs":5').kind, 'bad');
  });
});
