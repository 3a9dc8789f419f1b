// Issue 12, point 4: the host is a destination like any other. By default a sandbox reaches on the
// host only ping (and neighbour discovery) and published ports, not the services the host binds on
// wildcard addresses; a network made with --host-access opens them; an --internal network never
// (but for what a policy allows). `host` is a policy selector: --to host opens or closes host ports.
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
    await lab.ctnetOk(['network', 'create', 'closed', '--subnet', '10.55.1.0/24', '--subnet', 'fd00:551::/64']);
    await lab.ctnetOk(['network', 'create', 'open', '--subnet', '10.55.2.0/24', '--host-access']);
    await lab.ctnetOk(['network', 'create', 'inner', '--subnet', '10.55.3.0/24', '--internal']);
    for (const [s, n] of [['c', 'closed'], ['o', 'open'], ['i', 'inner']]) await lab.ctnetOk(['create', s!, '--network', n!]);
    await lab.ctnetOk(['run', '-d', '--name', 'pub', '--network', 'closed', '-p', '8383:80', '--', ...Lab.serverArgv('pub', { tcp: 80 })]);
    // A service of the host, bound on every address (as sshd or a database often is); started after
    // the bridges exist, since its UDP side binds each address the host has at start.
    spawn('nsenter', [`--net=/run/netns/${lab.host}`, ...Lab.serverArgv('host', { tcp: 9999, udp: 5353, echo: 9998 })], { stdio: 'ignore', detached: true }).unref();
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

  it('policy --to host: an allow opens one port (also from --internal), a deny closes one of --host-access, check agrees', async () => {
    const udp = async (s: string, host: string, port: number) => (await lab.ctnet(['exec', s, '--', ...Lab.probeArgv('udp', host, port)])).code === 0;
    const check = async (s: string, port: string) => JSON.parse(await lab.ctnetOk(['policy', 'check', s, 'host', port, '--json'])) as { allowed: boolean; by: string }[];
    assert.equal((await check('c', '9999'))[0]!.allowed, false);
    await lab.ctnetOk(['policy', 'allow', '--from', 'net:closed', '--to', 'host', '--port', '9999', '--name', 'c-host']);
    assert.ok(await probe('c', '10.55.1.1', 9999), 'the gateway');
    assert.ok(await probe('c', UPLINK.host4, 9999), 'any host address');
    assert.ok(await probe('c', 'fd00:551::1', 9999), 'IPv6 too');
    assert.ok((await check('c', '9999')).every((d) => d.allowed && d.by === 'rule c-host'));
    assert.equal(await udp('c', '10.55.1.1', 5353), false, 'only the port the rule names');
    // --internal reaches nothing on the host, not even ping, until a rule says so.
    assert.equal(await ping('i', '10.55.3.1'), false);
    assert.equal(await udp('i', '10.55.3.1', 5353), false);
    await lab.ctnetOk(['policy', 'allow', '--from', 'net:inner', '--to', 'host', '--port', '5353/udp', '--name', 'i-dns']);
    assert.ok(await udp('i', '10.55.3.1', 5353));
    assert.equal(await probe('i', '10.55.3.1', 9999), false);
    // A deny closes one port of a --host-access network and leaves the rest open.
    await lab.ctnetOk(['policy', 'deny', '--from', 'o', '--to', 'host', '--port', '9999', '--name', 'o-no']);
    assert.equal(await probe('o', '10.55.2.1', 9999), false);
    assert.ok(await udp('o', '10.55.2.1', 5353));
    assert.match((await check('o', '9999'))[0]!.by, /rule o-no/);
    const ls = JSON.parse(await lab.ctnetOk(['policy', 'ls', '--json'])) as { name: string; hits: { packets: number } }[];
    assert.ok(ls.find((r) => r.name === 'c-host')!.hits.packets >= 1, 'host rules count their hits');
    assert.ok(ls.find((r) => r.name === 'o-no')!.hits.packets >= 1);
    await lab.ctnetOk(['policy', 'rm', 'c-host', 'i-dns', 'o-no']);
    assert.equal(await probe('c', '10.55.1.1', 9999), false, 'closed again');
  });

  it('a connection to the host is cut when the rule that allowed it goes', async () => {
    await lab.ctnetOk(['policy', 'allow', '--from', 'c', '--to', 'host', '--port', '9998', '--name', 'c-echo']);
    const held = await lab.ctnet(['exec', 'c', '--', ...Lab.holdArgv('10.55.1.1', 9998, 1500)]);
    assert.equal(held.code, 0, `the connection holds while allowed: ${held.stdout}`);
    const hold = lab.ctnet(['exec', 'c', '--', ...Lab.holdArgv('10.55.1.1', 9998, 6000)]);
    await new Promise((r) => setTimeout(r, 1500));
    await lab.ctnetOk(['policy', 'rm', 'c-echo']);
    const r = await hold;
    assert.equal(r.code, 1, `the connection was cut: ${r.stdout}`);
  });

  it('host is only a destination', async () => {
    const r = await lab.ctnet(['policy', 'allow', '--from', 'host', '--to', 'c']);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /--from host: ctnet does not filter the host's own connections/);
    assert.equal(JSON.parse(await lab.ctnetOk(['policy', 'ls', '--json'])).length, 0, 'nothing was added');
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
