// Shaping: parsing rates and sizes as tc and CNI spell them, the tc commands a plan renders to, and
// the use case on the fake kernel (what create, shape, --clear and rm leave on the host veth).
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { hostShapeSteps } from '../../src/drivers/shape.ts';
import { Applier } from '../../src/engine/applier.ts';
import type { Ctx } from '../../src/engine/context.ts';
import { ifbName } from '../../src/engine/naming.ts';
import { createNetwork } from '../../src/engine/network.ts';
import { createSandbox, removeSandbox } from '../../src/engine/sandbox.ts';
import { shapeSandbox } from '../../src/engine/shape.ts';
import { CtnetError } from '../../src/errors.ts';
import { FakeKernel, HOST } from '../../src/kernel/fake.ts';
import { defaultBurst, describeShape, mergeShape, parseCniBandwidth, parseMs, parsePct, parseRate, parseShapeFlags, parseSize } from '../../src/model/shape.ts';
import { parseAttachSpec, parseNetworkSpec } from '../../src/model/spec.ts';
import { renderPlan } from '../../src/plan/plan.ts';
import { Store } from '../../src/store/store.ts';

const bad = (fn: () => unknown, re: RegExp) => assert.throws(fn, (e: unknown) => e instanceof CtnetError && e.code === 'INVALID_ARGUMENT' && re.test(e.message));

describe('shaping: parsing', () => {
  it('rates as tc spells them: bits (SI and binary) and bytes per second', () => {
    assert.equal(parseRate('--rate-in', '10mbit'), 10_000_000);
    assert.equal(parseRate('--rate-in', '1gbit'), 1_000_000_000);
    assert.equal(parseRate('--rate-in', '500kbit'), 500_000);
    assert.equal(parseRate('--rate-in', '1.5Mbit'), 1_500_000);
    assert.equal(parseRate('--rate-in', '1mibit'), 1_048_576);
    assert.equal(parseRate('--rate-in', '1mbps'), 8_000_000);
  });
  it('a bare number, an unknown unit or a rate out of range is refused, naming the flag', () => {
    bad(() => parseRate('--rate-in', '10'), /^--rate-in "10" is not a rate/);
    bad(() => parseRate('--rate-out', '10mbits'), /^--rate-out "10mbits" is not a rate/);
    bad(() => parseRate('--rate-out', '-1mbit'), /--rate-out/);
    bad(() => parseRate('--rate-in', '1kbit'), /^--rate-in 1kbit is out of range/);
    bad(() => parseRate('--rate-in', '1tbit'), /out of range/);
  });
  it('sizes, delays and percentages', () => {
    assert.equal(parseSize('--burst', '32kb'), 32768);
    assert.equal(parseSize('--burst', '1mb'), 1 << 20);
    assert.equal(parseSize('--burst', '256kbit'), 32768);
    assert.equal(parseSize('--burst', '2000'), 2000);
    bad(() => parseSize('--burst', '100'), /^--burst 100 is out of range/);
    bad(() => parseSize('--burst', 'lots'), /^--burst "lots" is not a size/);
    assert.equal(parseMs('--latency', '50ms'), 50);
    assert.equal(parseMs('--latency', '7'), 7);
    bad(() => parseMs('--latency', '0'), /--latency/);
    bad(() => parseMs('--latency', '1s'), /--latency/);
    assert.equal(parsePct('--loss', '0.5%'), 0.5);
    bad(() => parsePct('--loss', '101'), /--loss/);
    bad(() => parsePct('--loss', '0'), /--loss/);
  });
  it('flags: --burst applies to the rates given, and needs one', () => {
    assert.equal(parseShapeFlags({}), undefined);
    assert.deepEqual(parseShapeFlags({ rateIn: '10mbit', burst: '64kb' }),
      { rateIn: 10_000_000, rateOut: undefined, burstIn: 65536, burstOut: undefined, latencyMs: undefined, lossPct: undefined });
    bad(() => parseShapeFlags({ burst: '64kb' }), /--burst needs --rate-in or --rate-out/);
  });
  it('CNI bandwidth: bits per second and bursts in bits; 0 is "no limit"; unknown keys and orphan bursts refused', () => {
    assert.deepEqual(parseCniBandwidth('bw', { ingressRate: 10_000_000, ingressBurst: 800_000, egressRate: 0 }),
      { rateIn: 10_000_000, rateOut: undefined, burstIn: 100_000, burstOut: undefined });
    assert.equal(parseCniBandwidth('bw', {}), undefined);
    bad(() => parseCniBandwidth('bw', { ingressRate: '10mbit' }), /^bw\.ingressRate is "10mbit"/);
    bad(() => parseCniBandwidth('bw', { egressBurst: 80_000 }), /^bw\.egressBurst is given without bw\.egressRate/);
    bad(() => parseCniBandwidth('bw', { rate: 1 }), /^bw\.rate is not a bandwidth setting/);
  });
  it('a change keeps the settings it does not name; a new rate drops the burst sized for the old one', () => {
    const old = parseShapeFlags({ rateIn: '10mbit', rateOut: '5mbit', burst: '64kb', latency: '20' })!;
    assert.deepEqual(mergeShape(old, parseShapeFlags({ rateIn: '20mbit' })!),
      { rateIn: 20_000_000, rateOut: 5_000_000, burstIn: undefined, burstOut: 65536, latencyMs: 20, lossPct: undefined });
    assert.deepEqual(describeShape(mergeShape(old, {})), { rateIn: '10mbit', burstIn: 65536, rateOut: '5mbit', burstOut: 65536, latency: '20ms' });
    assert.equal(defaultBurst(1_000_000_000), 1_250_000);
    assert.equal(defaultBurst(1_000_000), 16384);
  });
});

describe('shaping: plans', () => {
  const a = { sandbox: 's1', hostVeth: 'ctv0123456789', ifb: 'ctq0123456789' };
  it('in on the veth (tbf, a fixed fifo child), out through an ifb shaped before anything is redirected to it', () => {
    assert.deepEqual(renderPlan(hostShapeSteps(a, parseShapeFlags({ rateIn: '10mbit', rateOut: '2mbit', burst: '32kb' }), undefined)), [
      '# s1: ctv0123456789 shaped: in 10000000 bit/s, out 2000000 bit/s (through ifb)',
      'tc qdisc replace dev ctv0123456789 root handle 1: tbf rate 10000000bit burst 32768 latency 100ms',
      'tc qdisc replace dev ctv0123456789 parent 1:1 handle 10: bfifo limit 125000',
      'ip link add ctq0123456789 up type ifb',
      'tc qdisc replace dev ctq0123456789 root handle 1: tbf rate 2000000bit burst 32768 latency 100ms',
      'tc qdisc replace dev ctq0123456789 parent 1:1 handle 10: bfifo limit 65536',
      'tc qdisc replace dev ctv0123456789 handle ffff: ingress',
      'tc filter replace dev ctv0123456789 parent ffff: protocol all prio 1 handle 800::800 u32 match u32 0 0 action mirred egress redirect dev ctq0123456789',
    ]);
  });
  it('delay and loss: netem as tbf\'s child, or alone at the root without a rate', () => {
    assert.deepEqual(renderPlan(hostShapeSteps(a, parseShapeFlags({ rateIn: '10mbit', latency: '50ms', loss: '1' }), undefined)).slice(1), [
      'tc qdisc replace dev ctv0123456789 root handle 1: tbf rate 10000000bit burst 16384 latency 100ms',
      'tc qdisc replace dev ctv0123456789 parent 1:1 handle 10: netem delay 50ms loss 1% limit 1000',
    ]);
    assert.deepEqual(renderPlan(hostShapeSteps(a, parseShapeFlags({ latency: '50ms' }), undefined)).slice(1), [
      'tc qdisc replace dev ctv0123456789 root handle 1: netem delay 50ms limit 125000',
    ]);
  });
  it('a change touches only what changed; clearing removes the redirect before the ifb', () => {
    const have = parseShapeFlags({ rateIn: '10mbit', rateOut: '2mbit' });
    assert.deepEqual(renderPlan(hostShapeSteps(a, mergeShape(have, parseShapeFlags({ rateOut: '4mbit' })!), have)).slice(1), [
      'tc qdisc replace dev ctq0123456789 root handle 1: tbf rate 4000000bit burst 16384 latency 100ms',
      'tc qdisc replace dev ctq0123456789 parent 1:1 handle 10: bfifo limit 50000',
    ]);
    assert.deepEqual(hostShapeSteps(a, have, have), []);
    assert.deepEqual(renderPlan(hostShapeSteps(a, undefined, have)).slice(1), [
      'tc qdisc del dev ctv0123456789 root',
      'tc qdisc del dev ctv0123456789 ingress',
      'tc qdisc del dev ctq0123456789 root',
      'ip link del ctq0123456789',
    ]);
  });
});

describe('shaping on the fake kernel', () => {
  const world = async (fn: (ctx: Ctx, fake: FakeKernel, store: Store) => Promise<void>) => {
    const dir = mkdtempSync(join(tmpdir(), 'ctnet-shape-'));
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
  it('create shapes, shape changes, --clear and rm leave nothing (no ifb, no qdisc, no record)', () => world(async (ctx, fake, store) => {
    await createNetwork(ctx, parseNetworkSpec({ name: 'web', subnet: ['10.1.0.0/24'] }));
    await createSandbox(ctx, 's1', parseAttachSpec({ network: ['web'] }), undefined, [], [], parseShapeFlags({ rateIn: '10mbit' }));
    const [att] = store.attachments({ sandbox: 's1' });
    const host = () => fake.snapshot().namespaces[HOST]!.links;
    assert.match(host()[att!.hostVeth]!.qdisc!, /tbf rate 10000000bit/);
    assert.equal(host()[ifbName(att!.hostVeth)], undefined, 'no ifb without --rate-out');
    await shapeSandbox(ctx, 's1', undefined, parseShapeFlags({ rateOut: '1mbit' })!);
    assert.equal(host()[att!.hostVeth]!.redirect, ifbName(att!.hostVeth));
    assert.match(host()[ifbName(att!.hostVeth)]!.qdisc!, /tbf rate 1000000bit/);
    assert.deepEqual(store.shaping('s1', 'web'), { rateIn: 10_000_000, rateOut: 1_000_000, burstIn: undefined, burstOut: undefined, latencyMs: undefined, lossPct: undefined });
    await assert.rejects(shapeSandbox(ctx, 's1', 'nope', parseShapeFlags({ rateOut: '2mbit' })!), /no network named nope/);
    await shapeSandbox(ctx, 's1', 'web', 'clear');
    assert.equal(host()[ifbName(att!.hostVeth)], undefined);
    assert.equal(host()[att!.hostVeth]!.qdisc, undefined);
    assert.equal(store.shaping('s1', 'web'), undefined);
    await shapeSandbox(ctx, 's1', undefined, parseShapeFlags({ rateOut: '1mbit' })!);
    await removeSandbox(ctx, 's1');
    assert.deepEqual(Object.keys(host()).filter((n) => n.startsWith('ct') && n !== 'ctbr-web'), []);
  }));
});
