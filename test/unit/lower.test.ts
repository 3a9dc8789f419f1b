// macvlan and ipvlan networks: parsing their flags, and the driver on the fake kernel (what create,
// attach, detach and rm make and remove; bad input changes nothing).
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { Applier } from '../../src/engine/applier.ts';
import type { Ctx } from '../../src/engine/context.ts';
import { doctor } from '../../src/engine/doctor.ts';
import { createNetwork, removeNetwork } from '../../src/engine/network.ts';
import { createSandbox, disconnect, removeSandbox } from '../../src/engine/sandbox.ts';
import { CtnetError } from '../../src/errors.ts';
import { FakeKernel, HOST } from '../../src/kernel/fake.ts';
import { parsePortSpec } from '../../src/model/ports.ts';
import { parseAttachSpec, parseNetworkSpec } from '../../src/model/spec.ts';
import { Store } from '../../src/store/store.ts';

const bad = (fn: () => unknown, re: RegExp) => assert.throws(fn, (e: unknown) => e instanceof CtnetError && e.code === 'INVALID_ARGUMENT' && re.test(e.message));

describe('macvlan/ipvlan: parsing', () => {
  it('--parent, --mode (per kind) and --host-shim; flags that need the host on the path are refused', () => {
    const spec = parseNetworkSpec({ name: 'lan', subnet: ['192.168.5.0/24'], gateway: ['192.168.5.1'], driver: 'macvlan', parent: 'eth1', hostShim: true });
    assert.deepEqual(spec.lower, { kind: 'macvlan', parent: 'eth1', mode: 'bridge', hostShim: true });
    assert.equal(parseNetworkSpec({ name: 'lan', subnet: ['192.168.5.0/24'], driver: 'ipvlan', parent: 'eth1' }).lower!.mode, 'l2');
    bad(() => parseNetworkSpec({ name: 'lan', subnet: ['192.168.5.0/24'], driver: 'macvlan' }), /needs --parent/);
    bad(() => parseNetworkSpec({ name: 'lan', subnet: ['192.168.5.0/24'], driver: 'macvlan', parent: 'eth1', mode: 'l3' }), /--mode "l3" is not a macvlan mode/);
    bad(() => parseNetworkSpec({ name: 'lan', subnet: ['192.168.5.0/24'], driver: 'ipvlan', parent: 'eth1', mode: 'bridge' }), /not a ipvlan mode/);
    bad(() => parseNetworkSpec({ name: 'lan', subnet: ['192.168.5.0/24'], driver: 'macvlan', parent: 'eth1', internal: true }), /--internal does not apply/);
    bad(() => parseNetworkSpec({ name: 'lan', subnet: ['192.168.5.0/24'], parent: 'eth1' }), /--parent is for macvlan and ipvlan networks/);
    bad(() => parseNetworkSpec({ name: 'lan', subnet: ['fd00:5::/64'], driver: 'macvlan', parent: 'eth1' }), /one IPv4 --subnet/);
  });
});

describe('macvlan on the fake kernel', () => {
  const world = async (fn: (ctx: Ctx, fake: FakeKernel, store: Store) => Promise<void>) => {
    const dir = mkdtempSync(join(tmpdir(), 'ctnet-lower-'));
    const store = new Store(dir);
    const fake = new FakeKernel();
    const warn = () => {};
    try {
      await fn({ store, kernel: fake, warn, applier: new Applier({ backend: fake, store, warn }) }, fake, store);
    } finally {
      store.close();
      rmSync(dir, { recursive: true, force: true });
    }
  };
  const lan = (extra: Record<string, unknown> = {}) => parseNetworkSpec({ name: 'lan', subnet: ['192.168.5.0/24'], gateway: ['192.168.5.1'], driver: 'macvlan', parent: 'eth0', ...extra });

  it('a shim on the parent for the host; sandboxes get a macvlan in their namespace with an address from IPAM (never the shim\'s)', () => world(async (ctx, fake, store) => {
    await createNetwork(ctx, lan({ hostShim: true }));
    const host = () => fake.snapshot().namespaces[HOST]!.links;
    assert.deepEqual([host()['ctmv-lan']!.kind, host()['ctmv-lan']!.addrs, host()['ctmv-lan']!.up], ['macvlan', ['192.168.5.254/24'], true]);
    await createSandbox(ctx, 's1', parseAttachSpec({ network: ['lan'] }));
    const ns = `/run/netns/ctnet-${store.instance}-s1`;
    const eth0 = fake.snapshot().namespaces[ns]!.links.eth0!;
    assert.deepEqual([eth0.kind, eth0.addrs, eth0.up], ['macvlan', ['192.168.5.2/24'], true]);
    assert.deepEqual(fake.snapshot().namespaces[ns]!.defaults, { ipv4: 'via 192.168.5.1 dev eth0' });
    await assert.rejects(createSandbox(ctx, 's2', parseAttachSpec({ network: ['lan'], ip: ['192.168.5.254'] })), /host shim/);
    await assert.rejects(createSandbox(ctx, 's3', parseAttachSpec({ network: ['lan'] }), { mappings: [parsePortSpec('8080:80')], force: false }), /no network with a way out/);
    assert.equal(store.sandbox('s3'), undefined);
    await createSandbox(ctx, 's4', parseAttachSpec({ network: ['lan'] }));
    await disconnect(ctx, 'lan', 's4');
    assert.equal(fake.snapshot().namespaces[`/run/netns/ctnet-${store.instance}-s4`]!.links.eth0, undefined);
    await removeSandbox(ctx, 's1');
    await removeSandbox(ctx, 's4');
    await removeNetwork(ctx, 'lan', { force: false });
    assert.equal(host()['ctmv-lan'], undefined);
  }));

  it('refuses a missing parent, a ctnet bridge as parent, an overlapping subnet, changing nothing; doctor says why the host cannot reach sandboxes without a shim', () => world(async (ctx, _fake, store) => {
    await createNetwork(ctx, parseNetworkSpec({ name: 'br', subnet: ['10.1.0.0/24'] }));
    await assert.rejects(createNetwork(ctx, lan({ parent: 'nope0' })), /no interface named nope0/);
    await assert.rejects(createNetwork(ctx, lan({ parent: 'ctbr-br' })), /ctbr-br is the bridge of a ctnet network/);
    await assert.rejects(createNetwork(ctx, parseNetworkSpec({ name: 'lan', subnet: ['10.1.0.0/25'], driver: 'macvlan', parent: 'eth0' })), /overlaps 10\.1\.0\.0\/24 of network br/);
    assert.deepEqual(store.networks().map((n) => n.name), ['br']);
    await createNetwork(ctx, lan());
    const f = (await doctor(ctx, undefined)).find((x) => x.check === 'macvlan lan')!;
    assert.equal(f.status, 'warn');
    assert.match(f.detail, /cannot reach the sandboxes of network lan .* never passes traffic between a macvlan parent and its children/);
    assert.match(f.hint!, /--host-shim/);
  }));
});
