// Issue #2, points 1-4 and 6: real traffic between sandboxes, networks, and the lab's world.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { Lab, UPLINK } from '../../src/lab/lab.ts';

describe('connectivity in a lab', () => {
  let lab: Lab;
  const probe = async (from: string, proto: 'tcp' | 'udp' | 'http', host: string, port: number) => {
    const r = await lab.ctnet(['exec', from, '--', ...Lab.probeArgv(proto, host, port)]);
    return r.code === 0 ? (JSON.parse(r.stdout) as { server: string; client: string }) : undefined;
  };
  const ping = async (from: string, host: string) => (await lab.ctnet(['exec', from, '--', 'ping', '-c1', '-W1', host])).code === 0;

  before(async () => {
    lab = await Lab.create();
    await lab.ctnetOk(['network', 'create', 'front', '--subnet', '10.50.0.0/24', '--subnet', 'fd00:50::/64']);
    await lab.ctnetOk(['network', 'create', 'back', '--subnet', '10.60.0.0/24']);
    await lab.ctnetOk(['network', 'create', 'vault', '--subnet', '10.70.0.0/24', '--internal']);
    for (const [name, net] of [['a', 'front'], ['b', 'front'], ['c', 'back'], ['v', 'vault']] as const) {
      await lab.ctnetOk(['run', '-d', '--name', name, '--network', net, '--', ...Lab.serverArgv(name, { tcp: 7000, udp: 7001 })]);
    }
    lab.serveInWorld('world', { tcp: 7000, udp: 7001 });
    // Servers need a moment to bind; wait until each answers.
    for (const [from, host] of [['b', '10.50.0.2'], ['a', '10.50.0.3'], ['c', '10.60.0.2'], ['v', '10.70.0.2'], ['a', UPLINK.remote4]] as const) {
      for (let i = 0; i < 50 && !(await probe(from, 'tcp', host, 7000)); i++) await new Promise((r) => setTimeout(r, 100));
    }
  });
  after(() => lab?.destroy());

  it('two sandboxes on one network reach each other over ICMP, TCP and UDP (IPv4 and IPv6)', async () => {
    assert.ok(await ping('a', '10.50.0.3'));
    assert.ok(await ping('b', '10.50.0.2'));
    assert.deepEqual(await probe('a', 'tcp', '10.50.0.3', 7000), { server: 'b', client: '10.50.0.2' });
    assert.deepEqual(await probe('b', 'udp', '10.50.0.2', 7001), { server: 'a', client: '10.50.0.3' });
    assert.ok(await ping('a', 'fd00:50::3'));
    assert.deepEqual(await probe('a', 'tcp', 'fd00:50::3', 7000), { server: 'b', client: 'fd00:50::2' });
    assert.deepEqual(await probe('b', 'udp', 'fd00:50::2', 7001), { server: 'a', client: 'fd00:50::3' });
  });

  it('each sandbox reaches its gateway, and the host reaches each sandbox', async () => {
    assert.ok(await ping('a', '10.50.0.1'));
    assert.ok(await ping('a', 'fd00:50::1'));
    assert.ok(await ping('c', '10.60.0.1'));
    assert.equal((await lab.inHost(['ping', '-c1', '-W1', '10.50.0.2'])).code, 0);
    assert.equal((await lab.inHost(['ping', '-c1', '-W1', '10.60.0.2'])).code, 0);
    const r = await lab.inHost(Lab.probeArgv('tcp', '10.60.0.2', 7000));
    assert.equal(JSON.parse(r.stdout).server, 'c');
  });

  it('loopback is up in every sandbox', async () => {
    for (const s of ['a', 'b', 'c', 'v']) {
      assert.ok(await ping(s, '127.0.0.1'), `lo in ${s}`);
      assert.deepEqual(await probe(s, 'tcp', '127.0.0.1', 7000), { server: s, client: '127.0.0.1' });
    }
  });

  it('sandboxes on different networks cannot reach each other, in either direction', async () => {
    assert.equal(await ping('a', '10.60.0.2'), false);
    assert.equal(await ping('c', '10.50.0.2'), false);
    assert.equal(await probe('a', 'tcp', '10.60.0.2', 7000), undefined);
    assert.equal(await probe('c', 'udp', '10.50.0.3', 7001), undefined);
    assert.equal(await probe('c', 'tcp', '10.70.0.2', 7000), undefined);
    assert.equal(await probe('v', 'tcp', '10.50.0.2', 7000), undefined);
  });

  it('egress reaches the world, which sees the uplink address (masquerade), for IPv4 and IPv6', async () => {
    assert.deepEqual(await probe('a', 'tcp', UPLINK.remote4, 7000), { server: 'world', client: UPLINK.host4 });
    assert.deepEqual(await probe('c', 'udp', UPLINK.remote4, 7001), { server: 'world', client: UPLINK.host4 });
    assert.deepEqual(await probe('a', 'tcp', UPLINK.remote6, 7000), { server: 'world', client: UPLINK.host6 });
    assert.deepEqual(await probe('b', 'udp', UPLINK.remote6, 7001), { server: 'world', client: UPLINK.host6 });
    assert.ok(await ping('a', UPLINK.remote4));
  });

  it('a sandbox on an --internal network cannot leave its network', async () => {
    assert.equal(await probe('v', 'tcp', UPLINK.remote4, 7000), undefined);
    assert.equal(await ping('v', UPLINK.world4), false);
    assert.equal(await ping('v', '10.70.0.1'), false, 'nor the host, not even its gateway (issue 12: nothing on the host unless a policy --to host allows it)');
  });

  it('dual stack: one address of each family, with default routes for both', async () => {
    const v = JSON.parse(await lab.ctnetOk(['inspect', 'a', '--json']));
    assert.deepEqual(v.interfaces[0].addresses, ['10.50.0.2/24', 'fd00:50::2/64']);
    const defaults = v.routes.filter((r: { dst: string }) => r.dst === 'default').map((r: { gateway: string }) => r.gateway);
    assert.deepEqual(defaults.sort(), ['10.50.0.1', 'fd00:50::1']);
  });

  it('a sandbox on two networks has eth0 and eth1, reaches both, and disconnect leaves the other intact', async () => {
    await lab.ctnetOk(['connect', 'back', 'a']);
    const v = JSON.parse(await lab.ctnetOk(['inspect', 'a', '--json']));
    assert.deepEqual(v.interfaces.map((i: { ifname: string; network: string }) => `${i.ifname}:${i.network}`), ['eth0:front', 'eth1:back']);
    const backIp = v.interfaces[1].addresses[0].split('/')[0];
    assert.deepEqual(await probe('a', 'tcp', '10.60.0.2', 7000), { server: 'c', client: backIp });
    assert.deepEqual(await probe('a', 'tcp', '10.50.0.3', 7000), { server: 'b', client: '10.50.0.2' });
    assert.ok(await ping('c', backIp));
    await lab.ctnetOk(['disconnect', 'back', 'a']);
    const after = JSON.parse(await lab.ctnetOk(['inspect', 'a', '--json']));
    assert.deepEqual(after.interfaces.map((i: { ifname: string }) => i.ifname), ['eth0']);
    assert.equal(await ping('c', backIp), false);
    assert.deepEqual(await probe('a', 'tcp', '10.50.0.3', 7000), { server: 'b', client: '10.50.0.2' });
    assert.deepEqual(await probe('a', 'tcp', UPLINK.remote4, 7000), { server: 'world', client: UPLINK.host4 });
  });

  it('disconnecting the network that carries the default route hands it to the next one', async () => {
    await lab.ctnetOk(['create', 'hop', '--network', 'front', '--network', 'back']);
    const route = async () => (await lab.ctnet(['exec', 'hop', '--', 'ip', '-4', 'route', 'show', 'default'])).stdout;
    assert.match(await route(), /via 10\.50\.0\.1 dev eth0/);
    await lab.ctnetOk(['disconnect', 'front', 'hop']);
    assert.match(await route(), /via 10\.60\.0\.1 dev eth1/);
    assert.deepEqual(await probe('hop', 'tcp', UPLINK.remote4, 7000), { server: 'world', client: UPLINK.host4 }, 'egress goes on through back');
    await lab.ctnetOk(['rm', 'hop']);
  });
});
