// IPv6 VIPs (issue 17) on the fake kernel: a service on a dual-stack network has a VIP of each
// family, one rule per family in its chain over that family's backends, an element in services6,
// and its IPv6 VIP on the bridge; `--vip` takes one address per family; rm takes it all back.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { createNetwork } from '../../src/engine/network.ts';
import { createSandbox, removeSandbox } from '../../src/engine/sandbox.ts';
import { createService, listServices, removeService } from '../../src/engine/services.ts';
import { parseAttachSpec, parseNetworkSpec } from '../../src/model/spec.ts';
import type { Op } from '../../src/plan/ops.ts';
import { withWorld as inWorld, serviceRules, type World } from './fake-world.ts';

const withWorld = <T>(fn: (w: World) => Promise<T>) => inWorld('svc-dual', fn);

const DUAL = () => parseNetworkSpec({ name: 'dual', subnet: ['10.73.0.0/24', 'fd00:73::/64'] });
const rule = (w: World) => serviceRules(w, 'web');
const req = { name: 'web', network: 'dual', port: '80', to: 'label:app=web:8080', vip: undefined, affinity: undefined };
const app = [{ key: 'app', value: 'web' }];

describe('IPv6 VIPs on a dual-stack network', () => {
  it('a VIP of each family; one rule per family over its backends; both VIPs on the bridge; rm takes it all back', () => withWorld(async (w) => {
    await createNetwork(w.ctx, DUAL());
    await createSandbox(w.ctx, 'b1', parseAttachSpec({ network: ['dual'] }), undefined, app);
    const before = w.fake.snapshot();
    const ops: Op[] = [];
    w.fake.failWhen((op) => ops.push(op) < 0);
    const s = await createService(w.ctx, req);
    w.fake.failWhen(undefined);
    assert.equal(s.vip, '10.73.0.3');
    assert.equal(s.vip6, 'fd00:73::3');
    assert.deepEqual(ops.filter((o) => o.kind === 'addr.add').map((o) => (o.kind === 'addr.add' ? o.cidr : '')), ['10.73.0.3/32', 'fd00:73::3/128']);
    assert.deepEqual(w.fake.elements('services6'), ['fd00:73::3 . tcp . 80 : goto svc_web']);
    assert.deepEqual(w.fake.elements('service_vips6'), ['fd00:73::3']);
    assert.deepEqual(rule(w).split('\n').map((r) => r.replace(/ comment .*/, '')), [
      'meta nfproto ipv4 meta l4proto tcp counter dnat ip to numgen random mod 1 map { 0 : 10.73.0.2 . 8080 }',
      'meta nfproto ipv6 meta l4proto tcp counter dnat ip6 to numgen random mod 1 map { 0 : fd00:73::2 . 8080 }',
    ]);
    assert.deepEqual(w.store.service('web')!.backends, ['10.73.0.2', 'fd00:73::2']);
    // A new backend joins both rules; the VIPs are never handed out.
    await createSandbox(w.ctx, 'b2', parseAttachSpec({ network: ['dual'] }), undefined, app);
    assert.deepEqual(w.store.addresses({ sandbox: 'b2' }).map((a) => a.ip).sort(), ['10.73.0.4', 'fd00:73::4']);
    assert.match(rule(w), /dnat ip6 to numgen random mod 2 map \{ 0 : fd00:73::2 \. 8080, 1 : fd00:73::4 \. 8080 \}/);
    const [view] = await listServices(w.ctx, 'web');
    assert.equal(view!.vip6, 'fd00:73::3');
    await removeService(w.ctx, 'web');
    await removeSandbox(w.ctx, 'b2');
    assert.deepEqual(w.fake.snapshot(), before, 'rm took every element, rule and VIP back');
  }));

  it('--vip: one address of each family, checked like the IPv4 one; an IPv6 VIP needs an IPv6 subnet', () => withWorld(async (w) => {
    await createNetwork(w.ctx, DUAL());
    await createNetwork(w.ctx, parseNetworkSpec({ name: 'v4', subnet: ['10.74.0.0/24'] }));
    await assert.rejects(createService(w.ctx, { ...req, vip: ['fd00:73::10', 'fd00:73::11'] }), /--vip fd00:73::11: --vip fd00:73::10 is an IPv6 VIP already/);
    await assert.rejects(createService(w.ctx, { ...req, vip: 'fd00:99::1' }), /--vip fd00:99::1 is not in network dual's subnet fd00:73::\/64/);
    await assert.rejects(createService(w.ctx, { ...req, network: 'v4', vip: 'fd00:73::10' }), /--vip fd00:73::10: network v4 has no IPv6 subnet/);
    assert.deepEqual(w.store.services(), [], 'nothing changed');
    const s = await createService(w.ctx, { ...req, vip: ['fd00:73::10', '10.73.0.10'] });
    assert.deepEqual([s.vip, s.vip6], ['10.73.0.10', 'fd00:73::10']);
    await assert.rejects(createService(w.ctx, { ...req, name: 'two', vip: 'fd00:73::10' }), /--vip fd00:73::10 is taken by service web \(its VIP\)/);
    // An IPv4-only network's service is as it always was: one rule, no nfproto, no IPv6 element.
    const v4 = await createService(w.ctx, { ...req, name: 'four', network: 'v4' });
    assert.equal(v4.vip6, undefined);
    assert.match((w.fake.snapshot().nft!.chains['svc_four']?.rules ?? []).join(''), /^meta l4proto tcp counter reject with tcp reset/);
    assert.deepEqual(w.fake.elements('services6'), ['fd00:73::10 . tcp . 80 : goto svc_web']);
  }));
});
