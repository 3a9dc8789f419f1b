// Issue #2, point 10: inspect and network inspect show what the kernel holds (seed 000's commands).
import assert from 'node:assert/strict';
import { after, before, it } from 'node:test';
import { Lab } from '../../src/lab/lab.ts';

let lab: Lab;
before(async () => {
  lab = await Lab.create();
  await lab.ctnetOk(['network', 'create', 'obs', '--subnet', '10.95.0.0/24']);
  await lab.ctnetOk(['create', 'one', '--network', 'obs']);
  await lab.ctnetOk(['create', 'two', '--network', 'obs']);
  await lab.ctnetOk(['exec', 'one', '--', 'ping', '-c1', '-W1', '10.95.0.3']);
});
after(() => lab?.destroy());

const hostLink = async (name: string) => JSON.parse((await lab.inHost(['ip', '-j', 'link', 'show', name])).stdout)[0];

it('inspect: each interface with its host veth peer (name, ifindex), addresses, routes and neighbours', async () => {
  const v = JSON.parse(await lab.ctnetOk(['inspect', 'one', '--json']));
  const two = JSON.parse(await lab.ctnetOk(['inspect', 'two', '--json']));
  const [eth0] = v.interfaces;
  const peer = await hostLink(eth0.hostPeer.ifname);
  assert.equal(eth0.hostPeer.ifindex, peer.ifindex);
  assert.equal(eth0.hostPeer.bridge, 'ctbr-obs');
  const inner = JSON.parse((await lab.inHost(['nsenter', `--net=${v.netns}`, 'ip', '-j', 'link', 'show', 'eth0'])).stdout)[0];
  assert.equal(inner.link_index, peer.ifindex, 'eth0 is the peer of that host veth');
  assert.equal(eth0.ifindex, inner.ifindex);
  assert.deepEqual(eth0.addresses, ['10.95.0.2/24']);
  assert.ok(v.routes.some((r: any) => r.dst === 'default' && r.gateway === '10.95.0.1'));
  assert.ok(v.neighbours.some((n: any) => n.dst === '10.95.0.3' && n.lladdr === two.interfaces[0].mac));
  const text = await lab.ctnetOk(['inspect', 'one']);
  assert.match(text, new RegExp(`${eth0.hostPeer.ifname} \\(${peer.ifindex}\\) @ ctbr-obs`));
});

it('network inspect: the bridge, its ports, learned FDB entries, gateway and sandboxes', async () => {
  const v = JSON.parse(await lab.ctnetOk(['network', 'inspect', 'obs', '--json']));
  assert.equal(v.bridge.ifindex, (await hostLink('ctbr-obs')).ifindex);
  assert.deepEqual(v.subnets, [{ cidr: '10.95.0.0/24', gateway: '10.95.0.1' }]);
  assert.deepEqual(v.ports.map((p: any) => p.sandbox).sort(), ['one', 'two']);
  const macs = await Promise.all(['one', 'two'].map(async (s) => JSON.parse(await lab.ctnetOk(['inspect', s, '--json'])).interfaces[0].mac));
  for (const [i, s] of ['one', 'two'].entries()) {
    assert.ok(v.fdb.some((f: any) => f.mac === macs[i] && f.sandbox === s), `learned FDB entry of ${s}`);
  }
  assert.deepEqual(v.sandboxes.map((s: any) => `${s.name} ${s.addresses}`).sort(), ['one 10.95.0.2', 'two 10.95.0.3']);
  assert.match(await lab.ctnetOk(['network', 'inspect', 'obs']), /learned FDB entries/);
});
