// `ctnet graph` against the real kernel: every interface, address and host-side veth the graph
// shows is in the kernel where it says (and a veth deleted by hand shows as missing); the rules'
// edges are the pairs policy check decides by them; each format comes out of the CLI; bad input is
// refused.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { Graph } from '../../src/engine/graph.ts';
import { Lab } from '../../src/lab/lab.ts';

describe('ctnet graph', () => {
  let lab: Lab;
  before(async () => {
    lab = await Lab.create();
    await lab.ctnetOk(['network', 'create', 'front', '--subnet', '10.84.1.0/24', '--subnet', 'fd00:84:1::/64']);
    await lab.ctnetOk(['network', 'create', 'back', '--subnet', '10.84.2.0/24', '--internal']);
    await lab.ctnetOk(['create', 'web', '--network', 'front', '--label', 'tier=web', '-p', '8080:80']);
    await lab.ctnetOk(['create', 'api', '--network', 'back', '--network', 'front', '--label', 'tier=api']);
    await lab.ctnetOk(['create', 'db', '--network', 'back', '--label', 'tier=db']);
    await lab.ctnetOk(['policy', 'allow', '--from', 'label:tier=api', '--to', 'label:tier=db', '--port', '5432/tcp', '--name', 'api-to-db']);
  });
  after(() => lab?.destroy());

  const graph = async (...extra: string[]) => JSON.parse(await lab.ctnetOk(['graph', '--json', ...extra])) as Graph;

  it('matches the kernel: interfaces, addresses and host veths on their bridges', async () => {
    const g = await graph();
    assert.deepEqual(g.sandboxes.map((s) => s.name).sort(), ['api', 'db', 'web']);
    const links = JSON.parse((await lab.inHost(['ip', '-j', 'link'])).stdout) as { ifname: string; master?: string }[];
    for (const n of g.networks) assert.ok(links.some((l) => l.ifname === n.device.name), `bridge ${n.device.name}`);
    for (const s of g.sandboxes) {
      const inside = JSON.parse(await lab.ctnetOk(['exec', s.name, '--', 'ip', '-j', 'addr'])) as { ifname: string; addr_info: { local: string }[] }[];
      for (const i of s.interfaces) {
        assert.equal(i.present, true);
        const bridge = g.networks.find((n) => n.name === i.network)!.device.name;
        assert.equal(links.find((l) => l.ifname === i.hostVeth)?.master, bridge, `${s.name} ${i.ifname}: ${i.hostVeth} on ${bridge}`);
        assert.deepEqual(inside.find((x) => x.ifname === i.ifname)?.addr_info.map((a) => a.local).filter((a) => !a.startsWith('fe80')).sort(), [...i.addresses].sort());
      }
    }
    assert.deepEqual(g.sandboxes.find((s) => s.name === 'web')!.ports, ['8080:80/tcp']);
  });

  it('policy edges agree with policy check', async () => {
    const g = await graph();
    assert.deepEqual(g.policy.map((r) => [r.name, r.edges]), [['api-to-db', [{ from: 'api', to: 'db' }]]]);
    assert.match(await lab.ctnetOk(['policy', 'check', 'api', 'db', '5432/tcp']), /allow/);
  });

  it('a veth deleted by hand shows as missing, in json and text', async () => {
    const db = (await graph()).sandboxes.find((s) => s.name === 'db')!.interfaces[0]!;
    await lab.inHost(['ip', 'link', 'del', db.hostVeth]);
    assert.equal((await graph()).sandboxes.find((s) => s.name === 'db')!.interfaces[0]!.present, false);
    assert.match(await lab.ctnetOk(['graph']), new RegExp(`db +eth0 10\\.84\\.2\\.\\d+ +↔ ${db.hostVeth} \\(MISSING\\)`));
    await lab.ctnetOk(['gc']);
    assert.equal((await graph()).sandboxes.find((s) => s.name === 'db')!.interfaces[0]!.present, true, 'gc repaired it');
  });

  it('--network narrows it; dot and svg come out; bad input is refused', async () => {
    const back = await graph('--network', 'back');
    assert.deepEqual(back.networks.map((n) => n.name), ['back']);
    assert.deepEqual(back.sandboxes.map((s) => s.name).sort(), ['api', 'db']);
    assert.match(await lab.ctnetOk(['graph', '--format', 'dot']), /^digraph ctnet \{[\s\S]*"sb:api" -> "sb:db" \[color=darkgreen/);
    const svg = await lab.ctnetOk(['graph', '--format', 'svg']);
    assert.match(svg, /<svg[\s\S]*>web<[\s\S]*<\/svg>/);
    assert.match((await lab.ctnet(['graph', '--format', 'png'])).stderr, /--format "png" is not a graph format\nhint: use text, json, dot, svg/);
    assert.match((await lab.ctnet(['graph', '--network', 'nope'])).stderr, /no network named nope/);
  });
});
