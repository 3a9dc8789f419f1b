// Issue 12, point 5: the crash campaign (bench/crash.ts) in small, so its code runs with the suite:
// random operations, each SIGKILLed (the CLI, or ctnetd under a CNI call) after a random delay or
// at a random crash point, then gc and the invariants. The full run is `scripts/node bench/crash.ts`.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { Campaign } from '../../bench/crash.ts';
import { Lab } from '../../src/lab/lab.ts';
import { checkConsistent, readStore } from './consistency.ts';

describe('crash campaign', () => {
  let lab: Lab;
  let campaign: Campaign;
  before(async () => {
    lab = await Lab.create();
    // Seed 1: its first 12 trials kill both the CLI and ctnetd, both ways (the seed alone decides that).
    campaign = new Campaign(lab, { trials: 12, seed: 1, maxSandboxes: 9 });
    await campaign.setup();
  });
  after(async () => {
    await campaign?.close();
    await lab?.destroy();
  });

  it('12 operations killed at random moments: after gc, store and kernel agree every time', async () => {
    const sum = await campaign.run();
    assert.equal(sum.trials.length, 12);
    assert.deepEqual(sum.trials.flatMap((t) => t.violations.map((v) => `trial ${t.n + 1} (${t.what}, ${t.target} ${t.mode} ${t.at}): ${v}`)), []);
    for (const target of ['cli', 'ctnetd']) {
      for (const mode of ['delay', 'crash-at']) assert.ok(sum.trials.some((t) => t.target === target && t.mode === mode), `a ${target} ${mode} trial`);
    }
    assert.ok(sum.trials.some((t) => t.midOp), 'a kill landed mid-operation');
  });

  it('the checks see what a crash could leave behind: a stray interface, a port or policy element no record makes', async () => {
    await lab.ctnetOk(['create', 'probe', '--network', 'base']);
    assert.deepEqual(await checkConsistent(lab), []);
    const netns = String(readStore(lab).sandboxes.find((s) => s.name === 'probe')!.netns);
    const sh = async (argv: string[]) => assert.equal((await lab.inHost(argv)).code, 0, argv.join(' '));

    await sh(['ip', '-n', netns.replace('/run/netns/', ''), 'link', 'add', 'stray0', 'type', 'veth', 'peer', 'name', 'stray1']);
    assert.match((await checkConsistent(lab)).join('\n'), /probe: interface stray0 no record owns/);
    await sh(['ip', '-n', netns.replace('/run/netns/', ''), 'link', 'del', 'stray0']);

    await sh(['nft', 'add', 'element', 'bridge', 'ctnet', 'ports', '{ "ctv0stray" }']);
    assert.match((await checkConsistent(lab)).join('\n'), /nft bridge ports: .*ctv0stray/);
    await sh(['nft', 'add', 'element', 'inet', 'ctnet', 'policy_allow4', '{ 10.150.0.250 . 10.150.0.251 . tcp . 80 }']);
    assert.match((await checkConsistent(lab)).join('\n'), /nft policy_allow4: \d+ elements in the kernel, \d+ in the store's mirror/);
    await lab.ctnetOk(['gc']); // rewrites both tables from the store
    assert.deepEqual(await checkConsistent(lab), []);
    await lab.ctnetOk(['rm', 'probe']);
  });
});
