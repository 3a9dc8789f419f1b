// Issue #2, point 7: rm and network rm remove exactly what was made; removing twice succeeds.
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';
import { Lab } from '../../src/lab/lab.ts';
import { checkConsistent, nftSets, readStore } from './consistency.ts';

import { readFileSync } from 'node:fs';

/** Running, not a zombie waiting for a parent that may never reap it. */
const alive = (pid: number) => {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2)[0] !== 'Z';
  } catch {
    return false;
  }
};

describe('teardown', () => {
  let lab: Lab;
  before(async () => {
    lab = await Lab.create();
  });
  after(() => lab?.destroy());

  it('rm stops the processes and removes the veth pair, the netns, the addresses and the nft entries', async () => {
    await lab.ctnetOk(['network', 'create', 'one', '--subnet', '10.40.0.0/24', '--subnet', 'fd00:40::/64']);
    await lab.ctnetOk(['network', 'create', 'two', '--subnet', '10.41.0.0/24']);
    const out = await lab.ctnetOk(['run', '-d', '--name', 'svc', '--network', 'one', '--network', 'two', '--', 'sleep', '300']);
    const pid = Number(out.trim().split('\t')[1]);
    await lab.ctnetOk(['exec', 'svc', '--', 'sh', '-c', 'sleep 300 >/dev/null 2>&1 &']);
    await lab.ctnetOk(['create', 'keep', '--network', 'one']);
    const store = readStore(lab);
    const veths = store.attachments.filter((a) => a.sandbox === 'svc').map((a) => String(a.host_veth));
    const netns = String(store.sandboxes.find((s) => s.name === 'svc')!.netns);
    assert.equal(veths.length, 2);
    assert.ok(alive(pid));
    const inside = (await lab.inHost(['ip', 'netns', 'pids', netns.replace('/run/netns/', '')])).stdout.trim().split('\n').map(Number);
    assert.ok(inside.length >= 2, 'both processes run in the sandbox');

    await lab.ctnetOk(['rm', 'svc']);
    for (let i = 0; i < 50 && inside.some(alive); i++) await new Promise((r) => setTimeout(r, 20));
    assert.deepEqual(inside.filter(alive), [], 'every process in the sandbox is stopped');
    assert.equal(existsSync(netns), false);
    const links = (await lab.inHost(['ip', '-o', 'link'])).stdout;
    for (const v of veths) assert.doesNotMatch(links, new RegExp(v));
    const sets = (await nftSets(lab))!;
    assert.deepEqual(sets.get('endpoints4')!.filter((e) => e.includes('10.41.')), []);
    assert.equal(sets.get('endpoints4')!.length, 1, 'keep\'s entry stays');
    assert.equal(readStore(lab).addresses.filter((a) => a.sandbox === 'svc').length, 0);
    assert.deepEqual(await checkConsistent(lab), []);
  });

  it('removing what is already gone succeeds', async () => {
    const again = await lab.ctnet(['rm', 'svc']);
    assert.equal(again.code, 0);
    assert.match(again.stderr, /nothing to remove/);
    assert.equal((await lab.ctnet(['network', 'rm', 'nope'])).code, 0);
    assert.equal((await lab.ctnet(['disconnect', 'two', 'keep'])).code, 0, 'disconnecting what is not connected');
  });

  it('network rm refuses while sandboxes are attached, unless --force', async () => {
    const r = await lab.ctnet(['network', 'rm', 'one']);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /network one is in use by keep/);
    assert.match(r.stderr, /hint: .*--force/);
    await lab.ctnetOk(['network', 'rm', '--force', 'one']);
    const v = JSON.parse(await lab.ctnetOk(['inspect', 'keep', '--json']));
    assert.deepEqual(v.interfaces, [], 'keep was disconnected');
    assert.doesNotMatch((await lab.inHost(['ip', '-o', 'link'])).stdout, /ctbr-one/);
    const sets = (await nftSets(lab))!;
    assert.deepEqual(sets.get('bridges'), ['ctbr-two']);
    assert.deepEqual(sets.get('masq4'), ['10.41.0.0/24']);
    assert.deepEqual(await checkConsistent(lab), []);
  });

  it('removing the last network removes the bridge and ctnet\'s nft table', async () => {
    await lab.ctnetOk(['rm', 'keep']);
    await lab.ctnetOk(['network', 'rm', 'two']);
    assert.doesNotMatch((await lab.inHost(['ip', '-o', 'link'])).stdout, /ctbr-/);
    assert.equal((await lab.inHost(['nft', 'list', 'tables'])).stdout.trim(), '');
    assert.deepEqual(readStore(lab).networks, []);
  });
});
