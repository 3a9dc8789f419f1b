// The drift checks (ctnet diff/apply, gc, doctor, ctnetd's table guard) compare the counts of
// rules and set elements in ctnet's tables with the store. build/ctnet-nftcount reads them over
// netlink instead of listing every element with nft; here its counts must equal what `nft -j list
// table` shows, on real tables holding every kind of set ctnet makes: plain, concatenated,
// interval (subnets, CIDR policy), maps and verdict maps; and a table deleted behind ctnet's back.
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Lab, ROOT } from '../../src/lab/lab.ts';
import { countsOfNftJson, parseNftCountOutput, type TableCounts } from '../../src/kernel/nftcounts.ts';

const COUNTER = join(ROOT, 'build', 'ctnet-nftcount');
const plain = (c: TableCounts | undefined) => c && { chains: Object.fromEntries(c.chains), sets: Object.fromEntries(c.sets) };

describe('ctnet-nftcount', { skip: existsSync(COUNTER) ? false : 'build/ctnet-nftcount is not built (scripts/build.sh without libnftnl-dev)' }, () => {
  let lab: Lab;
  const counted = async () => {
    const r = await lab.inHost([COUNTER, 'ctnet']);
    assert.equal(r.code, 0, r.stderr);
    return parseNftCountOutput(r.stdout);
  };
  const listed = async (family: 'inet' | 'bridge') => {
    const r = await lab.inHost(['nft', '-j', 'list', 'table', family, 'ctnet']);
    return r.code === 0 ? countsOfNftJson((JSON.parse(r.stdout) as { nftables: unknown[] }).nftables) : undefined;
  };

  before(async () => {
    lab = await Lab.create();
    await lab.ctnetOk(['network', 'create', 'a', '--subnet', '10.91.0.0/24', '--subnet', 'fd00:91::/64']);
    await lab.ctnetOk(['network', 'create', 'b', '--subnet', '10.92.0.0/24', '--internal']);
    await lab.ctnetOk(['create', 'web', '--network', 'a', '--label', 'tier=web', '-p', '8080:80', '-p', '5353:53/udp']);
    await lab.ctnetOk(['create', 'api', '--network', 'a', '--network', 'b', '--label', 'tier=api']);
    await lab.ctnetOk(['policy', 'allow', '--from', 'label:tier=web', '--to', 'label:tier=api', '--port', '80', '--name', 'web-api']);
    await lab.ctnetOk(['policy', 'deny', '--from', 'net:a', '--to', '10.0.0.0/8', '--name', 'no-internal']);
    await lab.ctnetOk(['policy', 'allow', '--from', '10.91.0.0/25', '--to', '10.92.0.0/24', '--port', 'icmp', '--name', 'pings']);
  });
  after(async () => {
    await lab?.destroy();
  });

  it('counts what nft -j lists, table by table, chain by chain, set by set', async () => {
    const c = await counted();
    assert.deepEqual(plain(c.inet), plain(await listed('inet')));
    assert.deepEqual(plain(c.bridge), plain(await listed('bridge')));
    // Not two empty answers agreeing: the tables hold what was made above.
    assert.equal(c.inet?.sets.get('endpoints4'), 3);
    assert.ok((c.inet?.chains.get('forward') ?? 0) > 0);
    assert.ok([...(c.inet?.sets ?? new Map()).entries()].some(([k, n]) => k.startsWith('policy_') && n > 0));
  });

  it('says a deleted table is missing, and counts a flushed chain as empty', async () => {
    await lab.inHost(['nft', 'flush', 'chain', 'inet', 'ctnet', 'forward']);
    await lab.inHost(['nft', 'delete', 'table', 'bridge', 'ctnet']);
    const c = await counted();
    assert.equal(c.bridge, undefined);
    assert.equal(c.inet?.chains.get('forward'), 0);
    assert.deepEqual(plain(c.inet), plain(await listed('inet')));
    // And ctnet sees it as drift, and gc puts it back.
    const doctor = await lab.ctnet(['gc']);
    assert.equal(doctor.code, 0, doctor.stderr);
    const back = await counted();
    assert.ok(back.bridge);
    assert.ok((back.inet?.chains.get('forward') ?? 0) > 0);
  });
});
