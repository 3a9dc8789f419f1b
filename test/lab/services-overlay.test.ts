// Issue 17, services on an overlay network: two lab hosts and etcd. A service made on h1 is known on
// h2 (etcd's services/NAME, mirrored by h2's ctnetd), its VIP from h1's lease; its backends are the
// labelled sandboxes of both hosts. Clients on both hosts reach the VIP and their connections land
// on both hosts' backends; a backend removed (or relabelled) on h2 stops getting connections from h1;
// `service rm` on h2 is refused (h1 owns it); on h1 it removes the service on both hosts. Waits
// poll for the state, with no time limit asserted on (the machine is shared).
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { Lab } from '../../src/lab/lab.ts';
import { EtcdHosts } from './etcd-hosts.ts';

const TTL = 8;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
interface Count { servers: Record<string, number>; failed: number }
interface ServiceJson { name: string; vip: string; port: number; backends: string[]; host?: string; check?: unknown; notReady?: string[] }

describe('services on an overlay network, backends on two hosts', () => {
  let cluster: EtcdHosts | undefined;
  const ips = new Map<string, string>();
  const h = (i: number) => cluster!.host(i);

  const ip = async (lab: Lab, s: string) => ((JSON.parse(await lab.ctnetOk(['inspect', s, '--json'])) as { interfaces: { addresses: string[] }[] }).interfaces[0]!.addresses[0]!).split('/')[0]!;
  const eventually = async (what: string, cond: () => Promise<boolean>, ms = 120_000): Promise<number> => {
    const start = performance.now();
    while (performance.now() - start < ms) {
      if (await cond()) return performance.now() - start;
      await sleep(100);
    }
    assert.fail(`never: ${what}`);
  };
  const services = async (i: number) => JSON.parse(await h(i).ctnetOk(['service', 'ls', '--json'])) as ServiceJson[];
  const backendsOn = async (i: number, name: string) => (await services(i)).find((s) => s.name === name)?.backends.join(' ');
  const want = (...names: string[]) => names.map((n) => ips.get(n)!).sort((a, b) => a.localeCompare(b, undefined, { numeric: true })).join(' ');
  /** N connections in a row from sandbox s on host i (or the host itself) to VIP:PORT: who answered. */
  const count = async (i: number, from: string, vip: string, port: number, n: number): Promise<Count> => {
    const argv = Lab.countArgv(vip, port, n);
    const r = from === 'host' ? await h(i).inHost(argv) : await h(i).ctnet(['exec', from, '--', ...argv]);
    assert.equal(r.code, 0, r.stderr);
    return JSON.parse(r.stdout) as Count;
  };
  const serve = async (i: number, name: string, labels: string[]) => {
    await h(i).ctnetOk(['run', '-d', '--name', name, '--network', 'ov', ...labels.flatMap((l) => ['--label', l]), '--', ...Lab.serverArgv(name, { tcp: 8080 })]);
    ips.set(name, await ip(h(i), name));
    await eventually(`${name} serves`, async () => (await h(i).inHost(Lab.probeArgv('tcp', ips.get(name)!, 8080, 500))).code === 0);
  };

  before(async () => {
    cluster = await EtcdHosts.create(2, { ttl: TTL });
    await cluster.joinAll();
    await h(0).ctnetOk(['network', 'create', 'ov', '--driver', 'vxlan', '--subnet', '10.82.0.0/16']);
    await serve(0, 'b1', ['app=web']);
    await serve(0, 'c1', []);
    await serve(1, 'b2', ['app=web']);
    await serve(1, 'b3', ['app=web']);
    await serve(1, 'c2', []);
  });
  after(async () => {
    await cluster?.destroy();
  });

  it('made on h1 (VIP from its lease), known on h2; balanced over both hosts\' backends from clients on both hosts', async () => {
    const made = JSON.parse(await h(0).ctnetOk(['service', 'create', 'web', '--network', 'ov', '--port', '80', '--to', 'label:app=web:8080', '--json'])) as ServiceJson;
    const lease1 = ips.get('b1')!.split('.').slice(0, 3).join('.');
    assert.ok(made.vip.startsWith(`${lease1}.`), `VIP ${made.vip} in h1's lease (${lease1}.0/24)`);
    const all = want('b1', 'b2', 'b3');
    const t2 = await eventually('h2 has web with every host\'s backends', async () => (await backendsOn(1, 'web')) === all);
    const t1 = await eventually('h1 balances over every host\'s backends', async () => (await backendsOn(0, 'web')) === all);
    console.log(`# web on h2 with 3 backends ${t2.toFixed(0)} ms after create returned; h1 had all 3 ${t1.toFixed(0)} ms after that`);
    const seen2 = (await services(1)).find((s) => s.name === 'web')!;
    assert.equal(seen2.vip, made.vip);
    assert.equal(seen2.host, 'h1');
    assert.equal((await services(0)).find((s) => s.name === 'web')!.host, 'h1');
    // h2 cannot remove or shadow it.
    const rm = await h(1).ctnet(['service', 'rm', 'web']);
    assert.notEqual(rm.code, 0);
    assert.match(rm.stderr, /service web belongs to host h1/);
    const dup = await h(1).ctnet(['service', 'create', 'web', '--network', 'ov', '--port', '81', '--to', 'label:app=web']);
    assert.notEqual(dup.code, 0);
    assert.match(dup.stderr, /a service named web exists already in the cluster, on host h1/);

    for (const [i, from] of [[0, 'c1'], [1, 'c2'], [0, 'host'], [1, 'host']] as const) {
      const c = await count(i, from, made.vip, 80, 120);
      assert.equal(c.failed, 0, `${from} on h${i + 1}: ${JSON.stringify(c)}`);
      assert.deepEqual(Object.keys(c.servers).sort(), ['b1', 'b2', 'b3'], `${from} on h${i + 1} reached both hosts' backends: ${JSON.stringify(c.servers)}`);
    }
    // Policy applies at the backend, wherever it runs: a deny on h2 from c1 (h1's sandbox, known on h2
    // from the directory) to app=web drops what the VIP sends from c1 to h2's backends; b1 still answers.
    await h(1).ctnetOk(['policy', 'deny', '--from', 'c1', '--to', 'label:app=web', '--name', 'no-c1']);
    const denied = await count(0, 'c1', made.vip, 80, 12);
    assert.ok(denied.failed > 0 && Object.keys(denied.servers).every((s) => s === 'b1'), `a deny on h2 holds through h1's VIP: ${JSON.stringify(denied)}`);
    await h(1).ctnetOk(['policy', 'rm', 'no-c1']);
    assert.equal((await count(0, 'c1', made.vip, 80, 30)).failed, 0);
  });

  it('a backend relabelled on h2 leaves on h1 and comes back; one removed on h2 gets no more connections from h1', async () => {
    const vip = (await services(0)).find((s) => s.name === 'web')!.vip;
    await h(1).ctnetOk(['label', 'b2', 'app=old']);
    await eventually('h1 drops b2', async () => (await backendsOn(0, 'web')) === want('b1', 'b3'));
    const c = await count(0, 'c1', vip, 80, 60);
    assert.equal(c.failed, 0);
    assert.deepEqual(Object.keys(c.servers).sort(), ['b1', 'b3']);
    await h(1).ctnetOk(['label', 'b2', 'app=web']);
    await eventually('h1 takes b2 back', async () => (await backendsOn(0, 'web')) === want('b1', 'b2', 'b3'));

    await h(1).ctnetOk(['rm', 'b3']);
    assert.equal(await backendsOn(1, 'web'), want('b1', 'b2'), 'h2 took it out before rm returned');
    await eventually('h1 drops b3', async () => (await backendsOn(0, 'web')) === want('b1', 'b2'));
    const after = await count(0, 'c1', vip, 80, 120);
    assert.equal(after.failed, 0);
    assert.deepEqual(Object.keys(after.servers).sort(), ['b1', 'b2'], JSON.stringify(after.servers));
  });

  it('--check reaches every host: h2 probes the backends itself, and one that fails there gets no connection from h2', async () => {
    await h(0).ctnetOk(['run', '-d', '--name', 'k1', '--network', 'ov', '--label', 'app=chk', '--', ...Lab.serverArgv('k1', { tcp: 8091 })]);
    await h(1).ctnetOk(['create', 'k2', '--network', 'ov', '--label', 'app=chk']); // nothing listens in k2
    ips.set('k1', await ip(h(0), 'k1'));
    ips.set('k2', await ip(h(1), 'k2'));
    await eventually('k1 serves', async () => (await h(0).inHost(Lab.probeArgv('tcp', ips.get('k1')!, 8091, 500))).code === 0);
    const made = JSON.parse(await h(0).ctnetOk(['service', 'create', 'chk', '--network', 'ov', '--port', '91', '--to', 'label:app=chk:8091',
      '--check', 'tcp', '--check-interval', '300ms', '--json'])) as ServiceJson;
    const copy = async () => (await services(1)).find((s) => s.name === 'chk');
    await eventually('h2 has the copy, with k1 in after its own probe', async () => (await copy())?.backends.join(' ') === ips.get('k1'));
    const c2 = (await copy())!;
    assert.deepEqual(c2.check, { kind: 'tcp', intervalMs: 300 });
    assert.deepEqual(c2.notReady, [ips.get('k2')], 'k2 failed h2\'s probes: out of h2\'s copy too');
    const c = await count(1, 'c2', made.vip, 91, 30);
    assert.equal(c.failed, 0, JSON.stringify(c));
    assert.deepEqual(c.servers, { k1: 30 });
    await h(0).ctnetOk(['service', 'rm', 'chk']);
    await eventually('h2 drops chk', async () => (await copy()) === undefined);
    await h(0).ctnetOk(['rm', 'k1']);
    await h(1).ctnetOk(['rm', 'k2']);
  });

  it('rm on h1 removes it on both hosts', async () => {
    const vip = (await services(0)).find((s) => s.name === 'web')!.vip;
    await h(0).ctnetOk(['service', 'rm', 'web']);
    assert.deepEqual(await services(0), []);
    await eventually('h2 removes web', async () => (await services(1)).length === 0);
    for (const lab of cluster!.hosts) {
      const nft = (await lab.inHost(['nft', 'list', 'table', 'inet', 'ctnet'])).stdout;
      assert.doesNotMatch(nft, /svc_web/);
      assert.doesNotMatch(nft, new RegExp(vip.replace(/\./g, '\\.')));
    }
    assert.equal((await cluster!.etcd.etcdctl(['get', '--prefix', '/ctnet/services/'])).stdout.trim(), '');
    const r = await h(1).ctnet(['exec', 'c2', '--', ...Lab.probeArgv('tcp', vip, 80, 2000)]);
    assert.notEqual(r.code, 0, 'nothing answers the VIP any more');
  });
});
