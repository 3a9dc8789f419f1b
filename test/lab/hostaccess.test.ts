// Issue 12, point 4: the host is a destination like any other. By default a sandbox reaches on the
// host only ping (and neighbour discovery) and published ports, not the services the host binds on
// wildcard addresses; a network made with --host-access opens them; an --internal network never.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { after, before, describe, it } from 'node:test';
import { Lab, UPLINK } from '../../src/lab/lab.ts';

describe('the host as a destination', () => {
  let lab: Lab;
  const probe = async (s: string, host: string, port: number) => (await lab.ctnet(['exec', s, '--', ...Lab.probeArgv('tcp', host, port)])).code === 0;
  const ping = async (s: string, host: string) => (await lab.ctnet(['exec', s, '--', 'ping', '-c', '1', '-W', '1', host])).code === 0;

  before(async () => {
    lab = await Lab.create();
    // A service of the host, bound on every address (as sshd or a database often is).
    spawn('nsenter', [`--net=/run/netns/${lab.host}`, ...Lab.serverArgv('host', { tcp: 9999 })], { stdio: 'ignore', detached: true }).unref();
    await lab.ctnetOk(['network', 'create', 'closed', '--subnet', '10.55.1.0/24', '--subnet', 'fd00:551::/64']);
    await lab.ctnetOk(['network', 'create', 'open', '--subnet', '10.55.2.0/24', '--host-access']);
    await lab.ctnetOk(['network', 'create', 'inner', '--subnet', '10.55.3.0/24', '--internal']);
    for (const [s, n] of [['c', 'closed'], ['o', 'open'], ['i', 'inner']]) await lab.ctnetOk(['create', s!, '--network', n!]);
    await lab.ctnetOk(['run', '-d', '--name', 'pub', '--network', 'closed', '-p', '8383:80', '--', ...Lab.serverArgv('pub', { tcp: 80 })]);
    for (let i = 0; i < 50 && !(await probe('o', '10.55.2.1', 9999)); i++) await new Promise((r) => setTimeout(r, 100));
  });
  after(() => lab?.destroy());

  it('by default: the host\'s services are closed to sandboxes, on the gateway and on every other host address', async () => {
    assert.equal(await probe('c', '10.55.1.1', 9999), false, 'the gateway address');
    assert.equal(await probe('c', UPLINK.host4, 9999), false, 'the uplink address');
    assert.equal(await probe('c', 'fd00:551::1', 9999), false, 'the IPv6 gateway');
    assert.ok(await ping('c', '10.55.1.1'), 'ping still works');
    assert.ok(await probe('c', UPLINK.host4, 8383), 'published ports are reachable through the host\'s address');
  });

  it('--host-access opens them; --internal keeps them closed; --internal with --host-access is refused', async () => {
    assert.ok(await probe('o', '10.55.2.1', 9999));
    assert.ok(await probe('o', UPLINK.host4, 9999));
    assert.equal(await probe('i', '10.55.3.1', 9999), false);
    const r = await lab.ctnet(['network', 'create', 'both', '--subnet', '10.55.4.0/24', '--internal', '--host-access']);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /--internal and --host-access cannot be used together/);
  });

  it('the host still reaches its sandboxes (replies come back in)', async () => {
    spawn('nsenter', [`--net=/run/netns/${lab.host}`, lab.ctnetBin, 'exec', 'c', '--', ...Lab.serverArgv('c', { tcp: 7777 })],
      { stdio: 'ignore', detached: true, env: { ...process.env, CTNET_STATE_DIR: lab.stateDir } }).unref();
    let ok = false;
    for (let i = 0; i < 50 && !ok; i++) {
      ok = (await lab.inHost(Lab.probeArgv('tcp', '10.55.1.2', 7777))).code === 0;
      if (!ok) await new Promise((r) => setTimeout(r, 100));
    }
    assert.ok(ok);
  });
});
