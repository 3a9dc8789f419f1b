// Issue #2, point 9: bad input gets a clear error and changes nothing (store and kernel alike).
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { Lab } from '../../src/lab/lab.ts';
import { readStore } from './consistency.ts';

describe('bad input', () => {
  let lab: Lab;
  const snapshot = async () => JSON.stringify({
    store: readStore(lab),
    links: (await lab.inHost(['ip', '-o', 'link'])).stdout.replace(/\s+/g, ' '),
    nft: (await lab.inHost(['nft', 'list', 'ruleset'])).stdout,
  });
  before(async () => {
    lab = await Lab.create();
    await lab.ctnetOk(['network', 'create', 'web', '--subnet', '10.80.0.0/24']);
    await lab.ctnetOk(['create', 'app', '--network', 'web', '--ip', '10.80.0.9']);
  });
  after(() => lab?.destroy());

  const cases: [string[], RegExp][] = [
    [['network', 'create', 'n2', '--subnet', '10.80.0.0/16'], /overlaps 10\.80\.0\.0\/24 of network web/],
    [['network', 'create', 'n2', '--subnet', '198.51.100.0/25'], /overlaps 198\.51\.100\.0\/24, routed via uplink0/],
    [['network', 'create', 'n2', '--subnet', '10.0.0.0/33'], /is not a CIDR/],
    [['network', 'create', 'n2', '--subnet', '10.81.0.1/24'], /host bits/],
    [['network', 'create', 'n2', '--subnet', '10.81.0.0/24', '--gateway', '10.82.0.1'], /outside every --subnet/],
    [['network', 'create', '', '--subnet', '10.81.0.0/24'], /name is empty/],
    [['network', 'create', 'x'.repeat(60), '--subnet', '10.81.0.0/24'], /limit is 48/],
    [['network', 'create', 'a;reboot', '--subnet', '10.81.0.0/24'], /not allowed/],
    [['network', 'create', 'n2', '--subnet', '10.81.0.0/24', '--bridge', 'br0 type veth'], /not a valid interface name/],
    [['network', 'create', 'web', '--subnet', '10.81.0.0/24'], /exists already/],
    [['create', 'b', '--network', 'nope'], /no network named nope/],
    [['create', 'b', '--network', 'web', '--ip', '10.99.0.1'], /outside the subnets/],
    [['create', 'b', '--network', 'web', '--ip', '10.80.0.9'], /taken by sandbox app/],
    [['create', 'b', '--network', 'web', '--mac', '01:00:5e:00:00:01'], /multicast/],
    [['create', 'b', '--network', 'web', '--mac', 'zz:00:00:00:00:00'], /malformed/],
    [['create', '$(touch /tmp/pwned)', '--network', 'web'], /not allowed/],
    [['create', 'b"; flush ruleset', '--network', 'web'], /not allowed/],
    [['create', 'app', '--network', 'web'], /sandbox app exists already/],
    [['network', 'rm', 'web'], /in use by app/],
    [['exec', 'ghost', '--', 'true'], /no sandbox named ghost/],
    [['connect', 'nope', 'app'], /no network named nope/],
    [['disconnect', 'web', 'ghost'], /no sandbox named ghost/],
  ];
  for (const [args, message] of cases) {
    it(`ctnet ${args.join(' ')}`, async () => {
      const before = await snapshot();
      const r = await lab.ctnet(args);
      assert.notEqual(r.code, 0);
      assert.match(r.stderr, message);
      assert.match(r.stderr, /^ctnet: /);
      assert.equal(await snapshot(), before, 'nothing changed');
    });
  }
});
