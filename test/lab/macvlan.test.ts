// Issue 18, point 4: macvlan (and ipvlan) networks. The lab host gets a second link to the world,
// lan0 <-> lanw, standing in for a LAN: sandboxes sit on that segment with their own addresses and
// are reached there by them (no NAT); the host reaches them only through --host-shim, as the
// kernel dictates (doctor says why); bad input changes nothing.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { Lab, UPLINK } from '../../src/lab/lab.ts';

describe('macvlan and ipvlan networks in a lab', () => {
  let lab: Lab;
  const ok = async (p: Promise<{ code: number; stdout: string; stderr: string }>, what: string) => {
    const r = await p;
    assert.equal(r.code, 0, `${what}: ${r.stdout}${r.stderr}`);
    return r.stdout;
  };
  const ping = async (where: 'host' | 'world' | string, ip: string) => {
    const argv = ['ping', '-c1', '-W1', ip];
    const r = where === 'host' ? await lab.inHost(argv) : where === 'world' ? await lab.inWorld(argv) : await lab.ctnet(['exec', where, '--', ...argv]);
    return r.code === 0;
  };
  const probe = async (where: 'host' | 'world' | string, ip: string) => {
    const argv = Lab.probeArgv('tcp', ip, 7000);
    const r = where === 'host' ? await lab.inHost(argv) : where === 'world' ? await lab.inWorld(argv) : await lab.ctnet(['exec', where, '--', ...argv]);
    return r.code === 0 ? (JSON.parse(r.stdout) as { server: string; client: string }) : undefined;
  };
  /** Answers once the server started by run -d listens. */
  const eventually = async (fn: () => Promise<unknown>) => {
    for (let i = 0; i < 50; i++) {
      if (await fn()) return;
      await new Promise((r) => setTimeout(r, 100));
    }
  };
  const state = async () => ({
    networks: await lab.ctnetOk(['network', 'ls', '--json']),
    links: (await lab.inHost(['ip', '-br', 'link'])).stdout,
    addrs: (await lab.inHost(['ip', '-br', 'addr'])).stdout,
  });

  before(async () => {
    lab = await Lab.create();
    await ok(lab.inHost(['ip', 'link', 'add', 'lan0', 'type', 'veth', 'peer', 'name', 'lanw', 'netns', lab.world]), 'the LAN link');
    await ok(lab.inHost(['ip', 'link', 'set', 'lan0', 'up']), 'lan0 up');
    await ok(lab.inWorld(['ip', 'addr', 'add', '10.99.0.1/24', 'dev', 'lanw']), 'the world on the LAN');
    await ok(lab.inWorld(['ip', 'link', 'set', 'lanw', 'up']), 'lanw up');
    lab.serveInWorld('world', { tcp: 7000 });
    await lab.ctnetOk(['network', 'create', 'br', '--subnet', '10.50.0.0/24']);
  });
  after(() => lab?.destroy());

  it('bad input changes nothing: no such parent, a ctnet bridge as parent, an overlapping subnet, a wrong mode', async () => {
    const was = await state();
    for (const [args, msg] of [
      [['--parent', 'nope0', '--subnet', '10.99.0.0/24'], /no interface named nope0/],
      [['--parent', 'ctbr-br', '--subnet', '10.99.0.0/24'], /ctbr-br is the bridge of a ctnet network/],
      [['--parent', 'lan0', '--subnet', '10.50.0.0/25'], /overlaps 10\.50\.0\.0\/24 of network br/],
      [['--parent', 'lan0', '--subnet', '10.99.0.0/24', '--mode', 'l3'], /--mode "l3" is not a macvlan mode/],
      [['--subnet', '10.99.0.0/24'], /needs --parent/],
      [['--parent', 'lan0', '--subnet', '10.99.0.0/24', '--internal'], /--internal does not apply/],
    ] as const) {
      const r = await lab.ctnet(['network', 'create', 'mv', '--driver', 'macvlan', ...args]);
      assert.notEqual(r.code, 0, args.join(' '));
      assert.match(r.stderr, msg, args.join(' '));
    }
    assert.deepEqual(await state(), was);
  });

  it('without a shim: the world and other sandboxes reach a sandbox by its own address, the host cannot (even with an address on the parent), and doctor says why', async () => {
    // The host on the LAN too: it has a route to the subnet through the parent, and still cannot.
    await ok(lab.inHost(['ip', 'addr', 'add', '10.99.0.250/24', 'dev', 'lan0']), 'host address on lan0');
    await lab.ctnetOk(['network', 'create', 'mv', '--driver', 'macvlan', '--parent', 'lan0', '--subnet', '10.99.0.0/24', '--gateway', '10.99.0.1']);
    await lab.ctnetOk(['run', '-d', '--name', 'a', '--network', 'mv', '--', ...Lab.serverArgv('a', { tcp: 7000 })]);
    await lab.ctnetOk(['create', 'b', '--network', 'mv']);
    await eventually(() => probe('world', '10.99.0.2'));
    assert.deepEqual(await probe('world', '10.99.0.2'), { server: 'a', client: '10.99.0.1' }, 'the world reaches a at its own address, no NAT');
    assert.ok(await ping('world', '10.99.0.3'));
    assert.deepEqual(await probe('b', '10.99.0.2'), { server: 'a', client: '10.99.0.3' }, 'b reaches a on the segment');
    assert.deepEqual(await probe('a', UPLINK.remote4), { server: 'world', client: '10.99.0.2' }, 'egress through the segment\'s router, with a\'s own address');
    assert.equal(await ping('host', '10.99.0.2'), false, 'the kernel never passes traffic between a macvlan parent and its children');
    assert.equal(await probe('host', '10.99.0.2'), undefined);
    const doc = JSON.parse(await lab.ctnetOk(['doctor', '--json'])) as { check: string; status: string; detail: string; hint?: string }[];
    const f = doc.find((x) => x.check === 'macvlan mv')!;
    assert.equal(f.status, 'warn');
    assert.match(f.detail, /cannot reach the sandboxes of network mv .*never passes traffic between a macvlan parent and its children/);
    assert.match(f.hint!, /--host-shim/);
    const v = JSON.parse(await lab.ctnetOk(['inspect', 'a', '--json'])) as { interfaces: { addresses: string[] }[] };
    assert.deepEqual(v.interfaces[0]!.addresses, ['10.99.0.2/24']);
    await lab.ctnetOk(['rm', 'a']);
    await lab.ctnetOk(['rm', 'b']);
    await lab.ctnetOk(['network', 'rm', 'mv']);
    await ok(lab.inHost(['ip', 'addr', 'del', '10.99.0.250/24', 'dev', 'lan0']), 'host address off lan0');
  });

  it('with --host-shim the host reaches its sandboxes (and they it), the world still by their own addresses; gc makes a lost shim again; rm removes it', async () => {
    await lab.ctnetOk(['network', 'create', 'mv', '--driver', 'macvlan', '--parent', 'lan0', '--subnet', '10.99.0.0/24', '--gateway', '10.99.0.1', '--host-shim']);
    assert.match((await lab.inHost(['ip', '-br', 'addr', 'show', 'ctmv-mv'])).stdout, /10\.99\.0\.254\/24/);
    await lab.ctnetOk(['run', '-d', '--name', 'c', '--network', 'mv', '--', ...Lab.serverArgv('c', { tcp: 7000 })]);
    await eventually(() => probe('world', '10.99.0.2'));
    assert.deepEqual(await probe('host', '10.99.0.2'), { server: 'c', client: '10.99.0.254' }, 'host -> sandbox through the shim');
    assert.ok(await ping('c', '10.99.0.254'), 'sandbox -> host');
    assert.deepEqual(await probe('world', '10.99.0.2'), { server: 'c', client: '10.99.0.1' });
    const doc = JSON.parse(await lab.ctnetOk(['doctor', '--json'])) as { check: string; status: string }[];
    assert.equal(doc.find((x) => x.check === 'macvlan mv')!.status, 'ok');
    await ok(lab.inHost(['ip', 'link', 'del', 'ctmv-mv']), 'lose the shim');
    assert.equal(await probe('host', '10.99.0.2'), undefined);
    await lab.ctnetOk(['gc']);
    assert.deepEqual(await probe('host', '10.99.0.2'), { server: 'c', client: '10.99.0.254' }, 'gc made the shim again');
    assert.deepEqual(await probe('world', '10.99.0.2'), { server: 'c', client: '10.99.0.1' }, 'gc left the sandbox alone');
    await lab.ctnetOk(['rm', 'c']);
    await lab.ctnetOk(['network', 'rm', 'mv']);
    assert.doesNotMatch((await lab.inHost(['ip', '-br', 'link'])).stdout, /ctmv-mv/);
  });

  it('ipvlan: works where the kernel has it; where not (this lab machine), a clear error and nothing recorded', async () => {
    const was = await state();
    const r = await lab.ctnet(['network', 'create', 'iv', '--driver', 'ipvlan', '--parent', 'lan0', '--subnet', '10.99.0.0/24', '--gateway', '10.99.0.1', '--host-shim']);
    if (r.code !== 0) {
      assert.match(r.stderr, /Unknown device type/);
      assert.match(r.stderr, /lacks that kind of interface/);
      assert.deepEqual(await state(), was);
      return;
    }
    await lab.ctnetOk(['create', 'd', '--network', 'iv']);
    assert.ok(await ping('world', '10.99.0.2'));
    assert.ok(await ping('host', '10.99.0.2'));
    await lab.ctnetOk(['rm', 'd']);
    await lab.ctnetOk(['network', 'rm', 'iv']);
  });
});
