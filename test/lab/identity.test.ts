// Issue 12, point 1: a sandbox can never act as another. Each attack is made from inside a hostile
// sandbox with real packets, and each worked before the per-port identity rules (bridge ctnet).
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { Lab, UPLINK } from '../../src/lab/lab.ts';

type Answer = { server: string; client: string };

describe('per-port identity', () => {
  let lab: Lab;
  const exec = (s: string, argv: string[]) => lab.ctnet(['exec', s, '--', ...argv]);
  const execOk = async (s: string, argv: string[]) => {
    const r = await exec(s, argv);
    assert.equal(r.code, 0, `${s}: ${argv.join(' ')}: ${r.stderr}`);
    return r.stdout;
  };
  const fromWorld = async (port: number) => {
    const r = await lab.inWorld(Lab.probeArgv('http', UPLINK.host4, port));
    return r.code === 0 ? (JSON.parse(r.stdout) as Answer).server : undefined;
  };
  const macOf = async (s: string) => (JSON.parse(await execOk(s, ['ip', '-j', 'link', 'show', 'eth0'])) as { address: string }[])[0]!.address;
  const hostNeigh = async (ip: string) => (JSON.parse((await lab.inHost(['ip', '-j', 'neigh', 'show', ip])).stdout || '[]') as { lladdr?: string }[])[0]?.lladdr;
  const pingFrom = (s: string, src: string, dst: string) => exec(s, ['ping', '-c', '2', '-W', '1', '-I', src, dst]);

  before(async () => {
    lab = await Lab.create();
    await lab.ctnetOk(['network', 'create', 'net', '--subnet', '10.77.0.0/24', '--subnet', 'fd00:77::/64']);
    await lab.ctnetOk(['run', '-d', '--name', 'a1', '--network', 'net', '--ip', '10.77.0.2', '--ip', 'fd00:77::2', '--', ...Lab.serverArgv('a1', { http: 80 })]);
    await lab.ctnetOk(['run', '-d', '--name', 'a2', '--network', 'net', '--ip', '10.77.0.3', '--ip', 'fd00:77::3', '-p', '8181:80', '--', ...Lab.serverArgv('a2', { http: 80 })]);
    for (let i = 0; i < 50 && (await fromWorld(8181)) !== 'a2'; i++) await new Promise((r) => setTimeout(r, 100));
  });
  after(() => lab?.destroy());

  it('the honest paths still work: each sandbox reaches the other and its gateway over IPv4 and IPv6 (link-local included)', async () => {
    assert.equal((await pingFrom('a1', '10.77.0.2', '10.77.0.3')).code, 0);
    assert.equal((await pingFrom('a1', 'fd00:77::2', 'fd00:77::3')).code, 0);
    assert.equal((await exec('a1', ['ping', '-c', '2', '-W', '1', '10.77.0.1'])).code, 0);
    assert.equal((await exec('a1', ['ping', '-c', '2', '-W', '1', 'fd00:77::1'])).code, 0);
    assert.equal((await exec('a1', ['ping', '-c', '2', '-W', '1', 'ff02::1%eth0'])).code, 0, 'link-local multicast (ND, MLD) passes');
    assert.equal(await fromWorld(8181), 'a2');
  });

  it('a sandbox that takes its neighbour\'s address and sends gratuitous ARP takes over neither the address nor its published port', async () => {
    const a2mac = await macOf('a2');
    await execOk('a1', ['ip', 'addr', 'add', '10.77.0.3/24', 'dev', 'eth0']);
    try {
      for (let i = 0; i < 3; i++) await exec('a1', ['busybox', 'arping', '-U', '-c', '2', '-I', 'eth0', '-s', '10.77.0.3', '10.77.0.3']);
      await exec('a1', ['busybox', 'arping', '-A', '-c', '2', '-I', 'eth0', '-s', '10.77.0.3', '10.77.0.3']);
      const held = await hostNeigh('10.77.0.3');
      assert.ok(held === undefined || held === a2mac, `the host's neighbour entry for 10.77.0.3 is a2's MAC, not a1's (${held})`);
      for (let i = 0; i < 5; i++) assert.equal(await fromWorld(8181), 'a2', 'the world\'s connections to a2\'s port reach a2');
      assert.notEqual((await pingFrom('a1', '10.77.0.3', UPLINK.remote4)).code, 0, 'traffic from the stolen address goes nowhere');
    } finally {
      await exec('a1', ['ip', 'addr', 'del', '10.77.0.3/24', 'dev', 'eth0']);
    }
  });

  it('a spoofed source address (IPv4 and IPv6) does not leave the sandbox, also to a neighbour on the same bridge', async () => {
    await execOk('a1', ['ip', 'addr', 'add', '10.77.0.99/32', 'dev', 'eth0']);
    await execOk('a1', ['ip', 'addr', 'add', 'fd00:77::99/128', 'dev', 'eth0', 'nodad']);
    try {
      assert.notEqual((await pingFrom('a1', '10.77.0.99', '10.77.0.3')).code, 0, 'IPv4 from an address a1 was not given');
      assert.notEqual((await pingFrom('a1', 'fd00:77::99', 'fd00:77::3')).code, 0, 'IPv6 from an address a1 was not given');
      assert.equal((await pingFrom('a1', '10.77.0.2', '10.77.0.3')).code, 0, 'its own address still works');
    } finally {
      await exec('a1', ['ip', 'addr', 'del', '10.77.0.99/32', 'dev', 'eth0']);
      await exec('a1', ['ip', 'addr', 'del', 'fd00:77::99/128', 'dev', 'eth0']);
    }
  });

  it('a sandbox that changes its MAC is cut off until it changes it back', async () => {
    const mine = await macOf('a1');
    await execOk('a1', ['ip', 'link', 'set', 'eth0', 'address', '02:00:00:00:66:66']);
    try {
      await exec('a1', ['ip', 'neigh', 'flush', 'dev', 'eth0']);
      assert.notEqual((await exec('a1', ['ping', '-c', '2', '-W', '1', '10.77.0.1'])).code, 0);
    } finally {
      await exec('a1', ['ip', 'link', 'set', 'eth0', 'address', mine]);
    }
    assert.equal((await exec('a1', ['ping', '-c', '2', '-W', '1', '10.77.0.1'])).code, 0);
  });

  it('router advertisements from a sandbox install nothing in its neighbours', async () => {
    // An RA for 2001:db8:bad::/64 (documentation prefix) with a router lifetime, to all nodes on the
    // link, hop limit 255 as RAs must have: before the identity rules, a2 took a default route and an
    // address from it.
    await execOk('a1', Lab.routerAdvertArgv('2001:db8:bad::'));
    await new Promise((r) => setTimeout(r, 1500));
    const routes = await execOk('a2', ['ip', '-6', 'route', 'show']);
    const addrs = await execOk('a2', ['ip', '-6', 'addr', 'show', 'dev', 'eth0']);
    assert.doesNotMatch(routes, /proto ra/, `a2 took a route from a1's RA:\n${routes}`);
    assert.doesNotMatch(addrs, /2001:db8:bad/, `a2 took an address from a1's RA:\n${addrs}`);
  });
});
