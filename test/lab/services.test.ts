// Issue 17: services, with real traffic in a lab. A VIP on a network, balanced by the kernel over
// the sandboxes a label selects; backends follow the labels live; policy holds through the VIP.
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Lab, UPLINK } from '../../src/lab/lab.ts';
import { readStore } from './consistency.ts';

interface Count { servers: Record<string, number>; failed: number }
interface ServiceJson { name: string; vip: string; port: number; backends: string[]; connections: number; affinity: string; publish?: { hostIp: string; hostPort: number };
  check?: unknown; notReady?: string[] }

describe('services', () => {
  let lab: Lab;
  const ip = (sandbox: string) => String(readStore(lab).addresses.find((a) => a.sandbox === sandbox && a.family === 4)!.ip);
  const serve = (name: string, net: string, labels: string[]) =>
    lab.ctnetOk(['run', '-d', '--name', name, '--network', net, ...labels.flatMap((l) => ['--label', l]), '--',
      ...Lab.serverArgv(name, { tcp: 8080, echo: 9000 })]);
  const eventually = async (what: string, ok: () => Promise<boolean>) => {
    for (let i = 0; i < 100; i++) {
      if (await ok()) return;
      await new Promise((r) => setTimeout(r, 100));
    }
    assert.fail(`never: ${what}`);
  };
  const ready = (name: string) => eventually(`${name} serves`, async () => (await lab.inHost(Lab.probeArgv('tcp', ip(name), 8080, 500))).code === 0);
  /** N connections in a row from a sandbox (or the host) to VIP:PORT: who answered. */
  const count = async (from: string, vip: string, port: number, n: number): Promise<Count> => {
    const argv = Lab.countArgv(vip, port, n);
    const r = from === 'host' ? await lab.inHost(argv) : await lab.ctnet(['exec', from, '--', ...argv]);
    assert.equal(r.code, 0, r.stderr);
    return JSON.parse(r.stdout) as Count;
  };
  const service = async (name: string): Promise<ServiceJson> => JSON.parse(await lab.ctnetOk(['service', 'inspect', name, '--json'])) as ServiceJson;
  const nftText = async () => (await lab.inHost(['nft', 'list', 'table', 'inet', 'ctnet'])).stdout;
  const flowsTo = async (vip: string) => (await lab.inHost(['conntrack', '-L', '-d', vip])).stdout;
  /** N connections in a row from the lab's world to the host's uplink address at PORT. */
  const countFromWorld = async (port: number, n: number): Promise<Count> => {
    const r = await lab.inWorld(Lab.countArgv(UPLINK.host4, port, n));
    assert.equal(r.code, 0, r.stderr);
    return JSON.parse(r.stdout) as Count;
  };

  before(async () => {
    lab = await Lab.create();
    await lab.ctnetOk(['network', 'create', 'front', '--subnet', '10.71.0.0/24']);
    await lab.ctnetOk(['network', 'create', 'other', '--subnet', '10.72.0.0/24']);
    for (const b of ['b1', 'b2', 'b3']) await serve(b, 'front', ['app=web']);
    await serve('c1', 'front', []);
    await serve('c2', 'front', []);
    await serve('o1', 'other', []);
    for (const s of ['b1', 'b2', 'b3', 'c1', 'c2', 'o1']) await ready(s);
  });
  after(() => lab?.destroy());

  it('create: the VIP comes from the network, is never handed to a sandbox, and is listed with its backends', async () => {
    const out = JSON.parse(await lab.ctnetOk(['service', 'create', 'web', '--network', 'front', '--port', '80', '--to', 'label:app=web:8080', '--json'])) as ServiceJson;
    assert.match(out.vip, /^10\.71\.0\.\d+$/);
    assert.deepEqual(out.backends, [ip('b1'), ip('b2'), ip('b3')].sort());
    const ls = JSON.parse(await lab.ctnetOk(['service', 'ls', '--json'])) as ServiceJson[];
    assert.deepEqual(ls.map((s) => [s.name, s.vip, s.port]), [['web', out.vip, 80]]);
    // The next sandbox gets another address.
    await serve('tmp', 'front', []);
    assert.notEqual(ip('tmp'), out.vip);
    await lab.ctnetOk(['rm', 'tmp']);
    // One element in the verdict map, one chain.
    const nft = await nftText();
    assert.match(nft, new RegExp(`${out.vip.replace(/\./g, '\\.')} \\. tcp \\. 80 : goto svc_web`));
  });

  it('balances 300 connections over 3 backends (each 20-47 %), from a sandbox', async () => {
    const { vip } = await service('web');
    const c = await count('c1', vip, 80, 300);
    assert.equal(c.failed, 0);
    assert.deepEqual(Object.keys(c.servers).sort(), ['b1', 'b2', 'b3']);
    for (const [name, n] of Object.entries(c.servers)) assert.ok(n >= 60 && n <= 141, `${name} got ${n} of 300`);
    assert.ok((await service('web')).connections >= 300);
  });

  it('--affinity client-ip keeps a client on one backend', async () => {
    await lab.ctnetOk(['service', 'create', 'sticky', '--network', 'front', '--port', '81', '--to', 'label:app=web:8080', '--affinity', 'client-ip']);
    const { vip } = await service('sticky');
    for (const client of ['c1', 'c2']) {
      const c = await count(client, vip, 81, 40);
      assert.equal(c.failed, 0);
      assert.equal(Object.keys(c.servers).length, 1, `${client}: ${JSON.stringify(c.servers)}`);
    }
  });

  it('a service with no backend refuses at once (TCP reset), and gets one when a sandbox gets the label', async () => {
    await lab.ctnetOk(['service', 'create', 'empty', '--network', 'front', '--port', '84', '--to', 'label:app=none:8080']);
    const { vip, backends } = await service('empty');
    assert.deepEqual(backends, []);
    const r = await lab.ctnet(['exec', 'c1', '--', ...Lab.probeArgv('tcp', vip, 84, 5000)]);
    assert.notEqual(r.code, 0);
    assert.match(r.stdout + r.stderr, /ECONNREFUSED/, 'refused, not timed out');
    await lab.ctnetOk(['label', 'c2', 'app=none']);
    assert.deepEqual((await count('c1', vip, 84, 5)).servers, { c2: 5 });
    await lab.ctnetOk(['label', 'c2', '--rm', 'app']);
    await lab.ctnetOk(['service', 'rm', 'empty']);
  });

  it('from the host, and hairpin (a backend calling its own service)', async () => {
    const { vip } = await service('web');
    const h = await count('host', vip, 80, 60);
    assert.equal(h.failed, 0);
    assert.equal(Object.keys(h.servers).length, 3);
    const b = await count('b1', vip, 80, 60);
    assert.equal(b.failed, 0);
    assert.ok((b.servers.b1 ?? 0) > 0, `b1 reached itself: ${JSON.stringify(b.servers)}`);
  });

  it('a relabelled backend leaves at once, its connections are cut; labelled again it comes back', async () => {
    const { vip } = await service('web');
    await count('c1', vip, 80, 30); // leaves conntrack entries (TIME_WAIT) to b3 among others
    assert.match(await flowsTo(vip), new RegExp(`src=${ip('b3').replace(/\./g, '\\.')} `));
    await lab.ctnetOk(['label', 'b3', 'app=old']);
    assert.deepEqual((await service('web')).backends, [ip('b1'), ip('b2')].sort());
    assert.doesNotMatch(await flowsTo(vip), new RegExp(`src=${ip('b3').replace(/\./g, '\\.')} `), 'b3\'s flows through the VIP are gone');
    const c = await count('c1', vip, 80, 60);
    assert.equal(c.failed, 0);
    assert.deepEqual(Object.keys(c.servers).sort(), ['b1', 'b2']);
    await lab.ctnetOk(['label', 'b3', 'app=web']);
    assert.equal((await service('web')).backends.length, 3);
  });

  it('a new sandbox with the label joins; a removed one leaves before rm returns', async () => {
    const { vip } = await service('web');
    await serve('b4', 'front', ['app=web']);
    await ready('b4');
    assert.equal((await service('web')).backends.length, 4);
    const c = await count('c1', vip, 80, 80);
    assert.ok((c.servers.b4 ?? 0) > 0, JSON.stringify(c.servers));
    await lab.ctnetOk(['rm', 'b4']);
    assert.equal((await service('web')).backends.length, 3);
    const d = await count('c1', vip, 80, 60);
    assert.equal(d.failed, 0);
    assert.equal(d.servers.b4, undefined);
  });

  it('scale out and in under a running load: zero failed connections; a backend that leaves gets no new connection once label/rm returned', async (t) => {
    const { vip } = await service('web');
    const dir = mkdtempSync(join(tmpdir(), 'ctnet-load-'));
    const log = join(dir, 'log');
    const stop = join(dir, 'stop');
    let load: Promise<{ code: number; stdout: string; stderr: string }> | undefined;
    try {
      // A client opening short connections one after another for the whole test.
      load = lab.ctnet(['exec', 'c2', '--', ...Lab.loopArgv(vip, 80, log, stop)]);
      const entries = () => (existsSync(log) ? readFileSync(log, 'utf8') : '').split('\n').filter(Boolean)
        .map((l) => ({ t: Number(l.split(' ')[0]), server: l.split(' ')[1]! }));
      /** Waits until N connections began after T; returns those. */
      const after = async (t: number, n: number, what: string) => {
        await eventually(what, async () => entries().filter((e) => e.t > t).length >= n);
        return entries().filter((e) => e.t > t);
      };
      await after(0, 10, 'the load runs');
      // Scale out: b5 serves first, then gets the label (a backend joins when the label says so).
      await serve('b5', 'front', []);
      await ready('b5');
      await lab.ctnetOk(['label', 'b5', 'app=web']);
      await eventually('b5 gets new connections', async () => entries().some((e) => e.server === 'b5'));
      // Scale in by label: from the moment it returned, b5 gets no new connection.
      const took = { label: 0, rm: 0 };
      took.label = Date.now();
      await lab.ctnetOk(['label', 'b5', '--rm', 'app']);
      const unlabelled = Date.now();
      took.label = unlabelled - took.label;
      const sinceLabel = await after(unlabelled, 30, 'connections after the label went');
      // Back in, then removed gracefully with rm.
      await lab.ctnetOk(['label', 'b5', 'app=web']);
      const relabelled = Date.now();
      await eventually('b5 gets new connections again', async () => entries().some((e) => e.t > relabelled && e.server === 'b5'));
      took.rm = Date.now();
      await lab.ctnetOk(['rm', 'b5']);
      const removed = Date.now();
      took.rm = removed - took.rm;
      const sinceRm = await after(removed, 30, 'connections after rm');
      writeFileSync(stop, '');
      const r = await load;
      assert.equal(r.code, 0, r.stderr);
      const total = JSON.parse(r.stdout) as Count;
      t.diagnostic(`connections: ${JSON.stringify(total)}; label --rm took ${took.label} ms, rm ${took.rm} ms`);
      assert.equal(total.failed, 0, `failed connections: ${JSON.stringify(total)}`);
      assert.ok((total.servers.b5 ?? 0) > 0);
      assert.deepEqual(sinceLabel.filter((e) => e.t < relabelled && e.server === 'b5'), [], 'b5 got a new connection after its label went');
      assert.deepEqual(sinceRm.filter((e) => e.server === 'b5'), [], 'b5 got a new connection after rm returned');
      assert.equal((await service('web')).backends.length, 3);
    } finally {
      writeFileSync(stop, '');
      await load?.catch(() => undefined);
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('policy holds through the VIP: another network is isolated unless allowed; a deny holds', async () => {
    const { vip } = await service('web');
    assert.equal((await count('o1', vip, 80, 3)).failed, 3, 'another network does not reach the service by default');
    await lab.ctnetOk(['policy', 'allow', '--from', 'o1', '--to', 'label:app=web', '--port', '8080', '--name', 'o1-web']);
    assert.equal((await count('o1', vip, 80, 10)).failed, 0);
    await lab.ctnetOk(['policy', 'rm', 'o1-web']);
    await lab.ctnetOk(['policy', 'deny', '--from', 'c2', '--to', 'label:app=web', '--name', 'no-c2']);
    assert.equal((await count('c2', vip, 80, 3)).failed, 3, 'a deny holds through the VIP');
    assert.equal((await count('c1', vip, 80, 10)).failed, 0);
    await lab.ctnetOk(['policy', 'rm', 'no-c2']);
    assert.equal((await count('c2', vip, 80, 10)).failed, 0);
  });

  it('--publish: the world reaches the service on a host port, balanced, and the backends see the world\'s address', async () => {
    const out = await lab.ctnetOk(['service', 'create', 'pub', '--network', 'front', '--port', '85', '--to', 'label:app=web:8080', '--publish', '8085', '--explain']);
    assert.match(out, /add element inet ctnet service_ports4_any \{ tcp \. 8085 : goto svc_pub \}/, '--explain shows the element');
    const pub = await service('pub');
    assert.deepEqual(pub.publish, { hostIp: '0.0.0.0', hostPort: 8085 });
    assert.match(await lab.ctnetOk(['service', 'ls']), /pub\s+front\s+-\s+\S+\s+85\/tcp\s+0\.0\.0\.0:8085\s/);
    assert.match(await lab.ctnetOk(['service', 'inspect', 'pub']), /published\s+0\.0\.0\.0:8085\/tcp/);
    const c = await countFromWorld(8085, 90);
    assert.equal(c.failed, 0);
    assert.deepEqual(Object.keys(c.servers).sort(), ['b1', 'b2', 'b3'], JSON.stringify(c.servers));
    // No masquerade from the world: each backend sees the world's own address.
    const seen = new Set<string>();
    for (let i = 0; i < 12; i++) {
      const r = await lab.inWorld(Lab.probeArgv('tcp', UPLINK.host4, 8085));
      assert.equal(r.code, 0, r.stderr);
      const a = JSON.parse(r.stdout) as { server: string; client: string };
      assert.equal(a.client, UPLINK.world4, `${a.server} saw ${a.client}`);
      seen.add(a.server);
    }
    assert.ok(seen.size >= 2, `balanced from the world: ${[...seen].join(', ')}`);
    // The VIP's port is not the host's: nothing answers on the uplink at 85.
    assert.notEqual((await lab.inWorld(Lab.probeArgv('tcp', UPLINK.host4, 85, 1000))).code, 0);
  });

  it('--publish conflicts: a sandbox\'s -p and another service\'s --publish are clear errors that change nothing, both ways', async () => {
    await lab.ctnetOk(['run', '-d', '--name', 'px', '--network', 'front', '-p', '8086:8080', '--', ...Lab.serverArgv('px', { tcp: 8080 })]);
    const before = { nft: await nftText(), services: await lab.ctnetOk(['service', 'ls', '--json']), ports: await lab.ctnetOk(['port', 'c1']) };
    const bySandbox = await lab.ctnet(['service', 'create', 'p2', '--network', 'front', '--port', '86', '--to', 'label:app=web:8080', '--publish', '8086']);
    assert.notEqual(bySandbox.code, 0);
    assert.match(bySandbox.stderr, /--publish 0\.0\.0\.0:8086: tcp port 8086 is taken by sandbox px's -p 8086:8080\/tcp/);
    const byService = await lab.ctnet(['service', 'create', 'p2', '--network', 'front', '--port', '86', '--to', 'label:app=web:8080', '--publish', `${UPLINK.host4}:8085`]);
    assert.notEqual(byService.code, 0);
    assert.match(byService.stderr, /tcp port 8085 is taken by service pub/);
    const notHost = await lab.ctnet(['service', 'create', 'p2', '--network', 'front', '--port', '86', '--to', 'label:app=web:8080', '--publish', '192.0.2.77:8088']);
    assert.match(notHost.stderr, /192\.0\.2\.77 is not an address of this host/);
    const portAdd = await lab.ctnet(['port', 'add', 'c1', '8085:8080']);
    assert.notEqual(portAdd.code, 0);
    assert.match(portAdd.stderr, /-p 8085:8080\/tcp: the host port is taken by service pub/);
    assert.equal(await nftText(), before.nft);
    assert.equal(await lab.ctnetOk(['service', 'ls', '--json']), before.services);
    assert.equal(await lab.ctnetOk(['port', 'c1']), before.ports);
    assert.equal((await lab.inWorld(Lab.probeArgv('tcp', UPLINK.host4, 8086))).code, 0, 'px\'s port still works');
    await lab.ctnetOk(['rm', 'px']);
  });

  it('bad input changes nothing', async () => {
    const before = { nft: await nftText(), services: await lab.ctnetOk(['service', 'ls', '--json']) };
    const { vip } = await service('web');
    const bad: [string[], RegExp][] = [
      [['--vip', '10.72.0.50'], /not in network front's subnet/],
      [['--vip', '10.71.0.1'], /gateway/],
      [['--vip', ip('b1')], /taken by sandbox b1/],
      [['--vip', vip], /taken by service web/],
      [['--vip', 'fd00::1'], /IPv4/],
      [['--to', 'app=web'], /label:/],
      [['--to', 'label:app'], /has no "="/],
      [['--to', 'label:app=web:99999'], /not a port/],
      [['--port', '70000'], /not a port/],
      [['--port', '80/icmp'], /not tcp or udp/],
      [['--affinity', 'sticky'], /client-ip/],
      [['--network', 'nope'], /no network named nope/],
    ];
    for (const [args, message] of bad) {
      const base: Record<string, string> = { '--network': 'front', '--port': '82', '--to': 'label:app=web' };
      for (let i = 0; i < args.length; i += 2) base[args[i]!] = args[i + 1]!;
      const r = await lab.ctnet(['service', 'create', 'bad', ...Object.entries(base).flat()]);
      assert.notEqual(r.code, 0, args.join(' '));
      assert.match(r.stderr, message, args.join(' '));
    }
    const dup = await lab.ctnet(['service', 'create', 'web', '--network', 'front', '--port', '83', '--to', 'label:app=web']);
    assert.match(dup.stderr, /exists already/);
    const net = await lab.ctnet(['network', 'rm', 'front']);
    assert.match(net.stderr, /carries services/);
    assert.equal(await nftText(), before.nft);
    assert.equal(await lab.ctnetOk(['service', 'ls', '--json']), before.services);
  });

  it('IPv6 VIPs: on a dual-stack network a service has a VIP of each family; sandboxes, the host and hairpin reach the IPv6 one', async () => {
    await lab.ctnetOk(['network', 'create', 'dual', '--subnet', '10.73.0.0/24', '--subnet', 'fd00:73::/64']);
    for (const b of ['d1', 'd2']) await serve(b, 'dual', ['app=dual']);
    await serve('dc', 'dual', []);
    for (const b of ['d1', 'd2', 'dc']) await ready(b);
    const out = JSON.parse(await lab.ctnetOk(['service', 'create', 'dual', '--network', 'dual', '--port', '80', '--to', 'label:app=dual:8080', '--json'])) as ServiceJson & { vip6: string };
    assert.match(out.vip, /^10\.73\.0\.\d+$/);
    assert.match(out.vip6, /^fd00:73::[0-9a-f]+$/);
    assert.match(await nftText(), new RegExp(`${out.vip6} \\. tcp \\. 80 : goto svc_dual`));
    for (const [from, n] of [['dc', 60], ['host', 40]] as const) {
      const c = await count(from, out.vip6, 80, n);
      assert.equal(c.failed, 0, `${from}: ${JSON.stringify(c)}`);
      assert.deepEqual(Object.keys(c.servers).sort(), ['d1', 'd2'], `${from} over IPv6: ${JSON.stringify(c.servers)}`);
    }
    assert.equal((await count('dc', out.vip, 80, 20)).failed, 0, 'the IPv4 VIP as before');
    const hairpin = await count('d1', out.vip6, 80, 40);
    assert.equal(hairpin.failed, 0);
    assert.ok((hairpin.servers.d1 ?? 0) > 0, `d1 reached itself over IPv6: ${JSON.stringify(hairpin.servers)}`);
    // Both rules' counters (a backend change replaces the rules, and their counters start again).
    const balanced = (await service('dual')).connections;
    assert.ok(balanced >= 160, `160 connections balanced through both VIPs, counted ${balanced}`);
    // A relabelled backend leaves both families' rules.
    await lab.ctnetOk(['label', 'd2', '--rm', 'app']);
    assert.deepEqual((await count('dc', out.vip6, 80, 20)).servers, { d1: 20 });
    await lab.ctnetOk(['service', 'rm', 'dual']);
    assert.doesNotMatch(await nftText(), new RegExp(out.vip6));
    assert.doesNotMatch((await lab.inHost(['ip', '-6', 'addr', 'show'])).stdout, new RegExp(`${out.vip6}/128`), 'the IPv6 VIP left the bridge');
    for (const b of ['d1', 'd2', 'dc']) await lab.ctnetOk(['rm', b]);
    await lab.ctnetOk(['network', 'rm', 'dual']);
  });

  it('gc rewrites a flushed table with the services in it', async () => {
    const { vip } = await service('web');
    await lab.inHost(['nft', 'flush', 'table', 'inet', 'ctnet']);
    await lab.inHost(['ip', 'addr', 'del', `${vip}/32`, 'dev', 'ctbr-front']);
    assert.match(await lab.ctnetOk(['gc']), new RegExp(`put VIP ${vip.replace(/\./g, '\\.')} of service web back`));
    const c = await count('c1', vip, 80, 30);
    assert.equal(c.failed, 0);
    assert.equal(Object.keys(c.servers).length, 3);
    const w = await countFromWorld(8085, 30);
    assert.equal(w.failed, 0, 'the published port is back');
    assert.equal(Object.keys(w.servers).length, 3);
  });

  it('SIGKILL at every crash point of service create and rm: gc leaves the service whole or gone', async () => {
    /** After gc: recorded <=> VIP on the bridge, element and chain in the table, and traffic through it. */
    const consistent = async (name: string, port: number) => {
      const recorded = (JSON.parse(await lab.ctnetOk(['service', 'ls', '--json'])) as ServiceJson[]).find((x) => x.name === name);
      const nft = await nftText();
      const addrs = (await lab.inHost(['ip', '-4', 'addr', 'show', 'dev', 'ctbr-front'])).stdout;
      if (!recorded) {
        assert.doesNotMatch(nft, new RegExp(`svc_${name}\\b`), `${name}: not recorded, yet its chain is there`);
        return false;
      }
      assert.match(nft, new RegExp(`goto svc_${name}\\b`));
      assert.match(addrs, new RegExp(`${recorded.vip.replace(/\./g, '\\.')}/32`));
      assert.equal((await count('c1', recorded.vip, port, 6)).failed, 0, `${name}: recorded but not working`);
      return true;
    };
    let points = 0;
    for (let n = 0; n < 20; n++) {
      const r = await lab.ctnet(['service', 'create', `k${n}`, '--network', 'front', '--port', String(100 + n), '--to', 'label:app=web:8080'], { CTNET_CRASH_AT: String(n) });
      await lab.ctnetOk(['gc']);
      const exists = await consistent(`k${n}`, 100 + n);
      if (r.code === 0) {
        assert.ok(exists);
        break;
      }
      points++;
      if (exists) await lab.ctnetOk(['service', 'rm', `k${n}`]);
    }
    assert.ok(points >= 2, `service create has ${points} crash points`);
    points = 0;
    for (let n = 0; n < 20; n++) {
      await lab.ctnetOk(['service', 'create', 'kr', '--network', 'front', '--port', '120', '--to', 'label:app=web:8080']);
      const r = await lab.ctnet(['service', 'rm', 'kr'], { CTNET_CRASH_AT: String(n) });
      await lab.ctnetOk(['gc']);
      const exists = await consistent('kr', 120);
      if (r.code === 0) {
        assert.equal(exists, false);
        break;
      }
      points++;
      await lab.ctnetOk(['service', 'rm', 'kr']); // a killed rm is finished by running it again
      assert.equal(await consistent('kr', 120), false);
    }
    assert.ok(points >= 2, `service rm has ${points} crash points`);
  });

  it('rm of a published service: its host port goes too, and is free for a sandbox', async () => {
    await lab.ctnetOk(['service', 'rm', 'pub']);
    const nft = await nftText();
    assert.doesNotMatch(nft, /svc_pub/);
    assert.doesNotMatch(nft, /8085/);
    assert.notEqual((await lab.inWorld(Lab.probeArgv('tcp', UPLINK.host4, 8085, 1000))).code, 0);
    await lab.ctnetOk(['port', 'add', 'c1', '8085:8080']);
    assert.equal(JSON.parse((await lab.inWorld(Lab.probeArgv('tcp', UPLINK.host4, 8085))).stdout).server, 'c1');
    await lab.ctnetOk(['port', 'rm', 'c1', '8085:8080']);
  });

  it('rm: the VIP, its element and chain go; the address is free again', async () => {
    const { vip } = await service('sticky');
    await lab.ctnetOk(['service', 'rm', 'sticky']);
    assert.doesNotMatch(await nftText(), /svc_sticky/);
    assert.doesNotMatch((await lab.inHost(['ip', '-4', 'addr', 'show'])).stdout, new RegExp(`${vip.replace(/\./g, '\\.')}/32`));
    assert.equal((await count('c1', vip, 81, 2)).failed, 2);
    await lab.ctnetOk(['service', 'rm', 'sticky']); // again: nothing to do, not an error
    await lab.ctnetOk(['service', 'create', 'again', '--network', 'front', '--port', '81', '--to', 'label:app=web:8080', '--vip', vip]);
    assert.equal((await count('c1', vip, 81, 5)).failed, 0);
  });
  it('--check tcp: a backend whose server stops leaves the rule, started again it comes back (ctnetd probes)', async () => {
    await lab.startDaemon();
    const dir = mkdtempSync(join(tmpdir(), 'ctnet-check-'));
    const stop = join(dir, 'stop');
    /** h2's server, run with ctnet exec until the stop file exists. */
    const start = () => lab.ctnet(['exec', 'h2', '--', ...Lab.serverArgv('h2', { tcp: 8090 }), '--stop', stop]);
    let h2: Promise<{ code: number }> | undefined;
    try {
      await lab.ctnetOk(['run', '-d', '--name', 'h1', '--network', 'front', '--label', 'app=hc', '--', ...Lab.serverArgv('h1', { tcp: 8090 })]);
      await lab.ctnetOk(['create', 'h2', '--network', 'front', '--label', 'app=hc']);
      h2 = start();
      for (const h of ['h1', 'h2']) await eventually(`${h} serves`, async () => (await lab.inHost(Lab.probeArgv('tcp', ip(h), 8090, 500))).code === 0);
      const out = JSON.parse(await lab.ctnetOk(['service', 'create', 'hc', '--network', 'front', '--port', '90', '--to', 'label:app=hc:8090',
        '--check', 'tcp', '--check-interval', '200ms', '--json'])) as ServiceJson;
      assert.deepEqual(out.check, { kind: 'tcp', intervalMs: 200 });
      assert.match(await lab.ctnetOk(['service', 'inspect', 'hc']), /check\s+tcp every 200ms/);
      // Every backend waits for its first passed probe (none is in at create); ctnetd probes at once.
      assert.deepEqual(out.backends, []);
      await eventually('h1 and h2 passed their first check', async () => (await service('hc')).backends.length === 2);
      assert.deepEqual(Object.keys((await count('c1', out.vip, 90, 30)).servers).sort(), ['h1', 'h2']);
      // A sandbox labelled before anything listens in it is no backend yet: no client is refused for it.
      await lab.ctnetOk(['create', 'h3', '--network', 'front', '--label', 'app=hc']);
      assert.ok((await service('hc')).notReady!.includes(ip('h3')), 'h3 waits for its first check');
      const early = await count('c1', out.vip, 90, 30);
      assert.equal(early.failed, 0, JSON.stringify(early));
      assert.ok(!(await service('hc')).backends.includes(ip('h3')), 'h3 failed its checks: still out');
      await lab.ctnetOk(['rm', 'h3']);
      // h2's server stops: two failed checks take it out; new connections go to h1 only.
      writeFileSync(stop, '');
      await h2;
      await eventually('h2 is out', async () => (await service('hc')).backends.length === 1);
      const s = await service('hc');
      assert.deepEqual(s.backends, [ip('h1')]);
      assert.deepEqual(s.notReady, [ip('h2')]);
      assert.match(await lab.ctnetOk(['service', 'ls']), new RegExp(`hc\\s.*${ip('h1').replace(/\./g, '\\.')}\\s+${ip('h2').replace(/\./g, '\\.')}\\s`));
      const c = await count('c1', out.vip, 90, 30);
      assert.equal(c.failed, 0);
      assert.deepEqual(c.servers, { h1: 30 });
      // Started again: one passed check puts it back.
      rmSync(stop);
      h2 = start();
      await eventually('h2 is back', async () => (await service('hc')).backends.length === 2);
      assert.deepEqual((await service('hc')).notReady, []);
      await eventually('h2 gets connections again', async () => ((await count('c1', out.vip, 90, 10)).servers.h2 ?? 0) > 0);
    } finally {
      writeFileSync(stop, '');
      await h2?.catch(() => undefined);
      rmSync(dir, { recursive: true, force: true });
    }
    await lab.ctnetOk(['service', 'rm', 'hc']);
    await lab.ctnetOk(['rm', 'h1', 'h2']);
    // With ctnetd running, service rm is recorded as removing before its chain goes: the table guard
    // waits for it instead of putting the chain back from the store for a moment.
    for (const n of [0, 1, 2]) await lab.ctnetOk(['service', 'create', `g${n}`, '--network', 'front', '--port', String(95 + n), '--to', 'label:app=web:8080']);
    for (const n of [0, 1, 2]) await lab.ctnetOk(['service', 'rm', `g${n}`]);
    // The guard's check follows nft monitor's events within milliseconds; the restore it used to make
    // was logged within a second. Give it that long to show (a wait, not a limit asserted on).
    await new Promise((r) => setTimeout(r, 2000));
    assert.doesNotMatch(readFileSync(join(lab.stateDir, 'ctnetd.log'), 'utf8'), /restored ctnet's nft tables[^\n]*svc_g/);
    assert.doesNotMatch(await nftText(), /svc_g\d/);
  });
});
