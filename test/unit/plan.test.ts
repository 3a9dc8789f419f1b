// Plan reshaping that saves tool runs: the same operations, fewer steps.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { withNetns } from '../../src/engine/sandbox.ts';
import type { Op } from '../../src/plan/ops.ts';
import { fuseRemovals, renderPlan, sideBySide, step } from '../../src/plan/plan.ts';

const ns = { name: 'ctnet-ab12-s' };
/** What --explain prints, line by line (a fused step's notes are one comment line each). */
const lines = (plan: Parameters<typeof renderPlan>[0]) => renderPlan(plan).join('\n').split('\n');

describe('fuseRemovals', () => {
  const detach = (veth: string, ip: string) => [
    sideBySide([[{ kind: 'link.del', name: veth }], [{ kind: 'nft.delete', lines: [`delete element inet ctnet endpoints4 { ${ip} . "br" }`] }]], `remove ${veth}`),
    step([{ kind: 'conntrack.forget', filter: { kind: 'addresses', ips: [ip] } }]),
  ];

  it('puts every removal in one step, nft lines in one transaction, and the flows last', () => {
    const plan = fuseRemovals([...detach('ctv1', '10.0.0.2'), ...detach('ctv2', '10.1.0.2')]);
    assert.equal(plan.length, 2);
    assert.deepEqual(plan[0]!.lanes, [
      [{ kind: 'link.del', name: 'ctv1' }, { kind: 'link.del', name: 'ctv2' }],
      [{ kind: 'nft.delete', lines: ['delete element inet ctnet endpoints4 { 10.0.0.2 . "br" }', 'delete element inet ctnet endpoints4 { 10.1.0.2 . "br" }'] }],
    ]);
    assert.deepEqual(plan[1]!.lanes, [[
      { kind: 'conntrack.forget', filter: { kind: 'addresses', ips: ['10.0.0.2'] } },
      { kind: 'conntrack.forget', filter: { kind: 'addresses', ips: ['10.1.0.2'] } },
    ]]);
    assert.deepEqual(lines(plan).filter((l) => l.startsWith('# remove')), ['# remove ctv1', '# remove ctv2']);
  });

  it('leaves a plan with anything but removals as it is', () => {
    const plan = [...detach('ctv1', '10.0.0.2'), step([{ kind: 'route.replace.default', via: '10.1.0.1', dev: 'eth1', netns: ns }])];
    assert.equal(fuseRemovals(plan), plan);
  });
});

describe('withNetns', () => {
  const attach = [
    sideBySide([[{ kind: 'link.add.veth', name: 'ctv1', peer: 'eth0', peerNetns: ns }, { kind: 'link.set.up', name: 'ctv1' }], [{ kind: 'nft', lines: ['x'] }]], 's: eth0'),
    step([{ kind: 'addr.add', cidr: '10.0.0.2/24', dev: 'eth0', netns: ns }, { kind: 'link.set.up', name: 'eth0', netns: ns }]),
  ];

  it('adds the namespace in the veth\'s lane and lo up with the namespace\'s own step', () => {
    const plan = withNetns('s', ns.name, attach);
    assert.equal(plan.length, 2);
    assert.deepEqual(plan[0]!.lanes[0]![0], { kind: 'netns.add', name: ns.name });
    assert.deepEqual(plan[1]!.lanes[0]![0], { kind: 'link.set.up', name: 'lo', netns: ns });
    // The same operations as the separate steps, the namespace first.
    const ops = (p: readonly { lanes: readonly (readonly Op[])[] }[]) => p.flatMap((s) => s.lanes.flat()).map((o) => JSON.stringify(o)).sort();
    assert.deepEqual(ops(plan), ops([step([{ kind: 'netns.add', name: ns.name }]), step([{ kind: 'link.set.up', name: 'lo', netns: ns }]), ...attach]));
    assert.deepEqual(lines(plan).slice(0, 3), [`# sandbox s: network namespace ${ns.name}`, '# s: eth0', `ip netns add ${ns.name}`]);
  });

  it('keeps two steps of their own without networks', () => {
    assert.deepEqual(withNetns('s', ns.name, []).map((s) => s.lanes), [[[{ kind: 'netns.add', name: ns.name }]], [[{ kind: 'link.set.up', name: 'lo', netns: ns }]]]);
  });
});
