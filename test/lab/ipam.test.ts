// Issue #2, point 5: addresses from the subnet, --ip honoured or refused, release, and 50
// concurrent creates on one network.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { Lab } from '../../src/lab/lab.ts';
import { checkConsistent, readStore } from './consistency.ts';

describe('IPAM', () => {
  let lab: Lab;
  before(async () => {
    lab = await Lab.create();
    await lab.ctnetOk(['network', 'create', 'small', '--subnet', '10.30.0.0/29', '--gateway', '10.30.0.4']);
    await lab.ctnetOk(['network', 'create', 'big', '--subnet', '10.31.0.0/24', '--subnet', 'fd00:31::/64']);
  });
  after(() => lab?.destroy());

  const ipOf = async (name: string) =>
    (JSON.parse(await lab.ctnetOk(['inspect', name, '--json'])).interfaces[0].addresses as string[]).map((a) => a.split('/')[0]);

  it('hands out host addresses only: never the network, broadcast or gateway address', async () => {
    const got: string[] = [];
    for (let i = 0; i < 5; i++) {
      await lab.ctnetOk(['create', `s${i}`, '--network', 'small']);
      got.push(...((await ipOf(`s${i}`)) as string[]));
    }
    assert.deepEqual(got.sort(), ['10.30.0.1', '10.30.0.2', '10.30.0.3', '10.30.0.5', '10.30.0.6']);
    const full = await lab.ctnet(['create', 'extra', '--network', 'small']);
    assert.equal(full.code, 1);
    assert.match(full.stderr, /10\.30\.0\.0\/29 has no free address left/);
    assert.equal(readStore(lab).sandboxes.some((s) => s.name === 'extra'), false);
    assert.deepEqual(await checkConsistent(lab), []);
  });

  it('releases addresses on rm and disconnect, and honours --ip', async () => {
    await lab.ctnetOk(['rm', 's2']);
    await lab.ctnetOk(['create', 'again', '--network', 'small', '--ip', '10.30.0.3']);
    assert.deepEqual(await ipOf('again'), ['10.30.0.3']);
    await lab.ctnetOk(['connect', 'big', 'again', '--ip', '10.31.0.77']);
    const v = JSON.parse(await lab.ctnetOk(['inspect', 'again', '--json']));
    assert.deepEqual(v.interfaces[1].addresses.map((a: string) => a.split('/')[0]), ['10.31.0.77', 'fd00:31::2']);
    await lab.ctnetOk(['disconnect', 'big', 'again']);
    await lab.ctnetOk(['create', 'taker', '--network', 'big', '--ip', '10.31.0.77', '--ip', 'fd00:31::2']);
    assert.deepEqual(await ipOf('taker'), ['10.31.0.77', 'fd00:31::2']);
  });

  it('refuses an --ip that is taken, outside the subnet, or the gateway, naming why', async () => {
    const taken = await lab.ctnet(['create', 'x1', '--network', 'big', '--ip', '10.31.0.77']);
    assert.equal(taken.code, 1);
    assert.match(taken.stderr, /10\.31\.0\.77 is taken by sandbox taker/);
    const outside = await lab.ctnet(['create', 'x2', '--network', 'big', '--ip', '10.99.0.5']);
    assert.match(outside.stderr, /10\.99\.0\.5 is outside the subnets of big/);
    const gw = await lab.ctnet(['create', 'x3', '--network', 'small', '--ip', '10.30.0.4']);
    assert.match(gw.stderr, /is the gateway of network small/);
    const bcast = await lab.ctnet(['create', 'x4', '--network', 'small', '--ip', '10.30.0.7']);
    assert.match(bcast.stderr, /network or broadcast address/);
    assert.equal(readStore(lab).sandboxes.filter((s) => String(s.name).startsWith('x')).length, 0);
    assert.deepEqual(await checkConsistent(lab), []);
  });

  it('50 concurrent creates on one network get 50 distinct addresses and a consistent store', async () => {
    const names = Array.from({ length: 50 }, (_, i) => `par${i}`);
    const results = await Promise.all(names.map((n) => lab.ctnet(['create', n, '--network', 'big'])));
    assert.deepEqual(results.filter((r) => r.code !== 0).map((r) => r.stderr), []);
    const s = readStore(lab);
    const mine = s.addresses.filter((a) => String(a.sandbox).startsWith('par'));
    assert.equal(mine.length, 100); // one IPv4 and one IPv6 each
    assert.equal(new Set(mine.map((a) => a.ip)).size, 100);
    assert.deepEqual(await checkConsistent(lab), []);
    const gc = await lab.ctnetOk(['gc']);
    assert.match(gc, /store and kernel agree/);
  });
});
