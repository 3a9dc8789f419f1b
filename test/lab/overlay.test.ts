// Issue 14, end to end: an overlay network defined once in etcd, three lab hosts each with its own
// state directory and ctnetd, sandboxes on different hosts reaching each other over the VXLAN
// datapath that ctnetd programs from the leases it watches. A host that joins late reaches the
// others; a host that leaves (or dies) disappears from every other host's kernel; a restarted
// ctnetd loses no packet and rewrites no entry; bad input changes nothing in etcd.
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { EtcdLab } from '../../src/lab/etcd.ts';
import { Lab, UPLINK } from '../../src/lab/lab.ts';
import { execPlugin, pluginConfigs } from './cni-driver.ts';

const TTL = 5;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('overlay networks across hosts (etcd + vxlan)', () => {
  let etcd: EtcdLab;
  const hosts: Lab[] = [];
  const h1 = () => hosts[0]!;
  const h2 = () => hosts[1]!;
  const h3 = () => hosts[2]!;

  const join_ = (lab: Lab, name: string) => lab.ctnetOk(['cluster', 'join', '--etcd', etcd.url, '--underlay', 'underlay0', '--host-name', name, '--lease-ttl', String(TTL)]);
  const ip = async (lab: Lab, s: string) => ((JSON.parse(await lab.ctnetOk(['inspect', s, '--json'])) as { interfaces: { addresses: string[] }[] }).interfaces[0]!.addresses[0]!).split('/')[0]!;
  const ping = async (lab: Lab, s: string, to: string, extra: string[] = []) => (await lab.ctnet(['exec', s, '--', 'ping', '-c', '1', '-W', '1', ...extra, to])).code === 0;
  const etcdKeys = async () => (await etcd.etcdctl(['get', '--prefix', '/ctnet/'])).stdout;
  const daemonLog = (lab: Lab) => readFileSync(join(lab.stateDir, 'ctnetd.log'), 'utf8');
  const routes = async (lab: Lab) => (await lab.inHost(['ip', 'route', 'show', 'dev', 'ctov-ov'])).stdout;
  /** Polls until cond holds; returns how long it took (a generous bound only ends a hung test). */
  const eventually = async (what: string, cond: () => Promise<boolean>, ms = 60_000): Promise<number> => {
    const start = performance.now();
    while (performance.now() - start < ms) {
      if (await cond()) return performance.now() - start;
      await sleep(100);
    }
    assert.fail(`never: ${what}`);
  };

  before(async () => {
    etcd = await EtcdLab.create();
    for (let i = 0; i < 3; i++) {
      const lab = await Lab.create();
      hosts.push(lab);
      await etcd.connect(lab.host);
    }
    await join_(h1(), 'h1');
    await join_(h2(), 'h2');
  });
  after(async () => {
    for (const h of hosts) await h.destroy();
    await etcd?.destroy();
  });

  it('bad input changes nothing, locally or in etcd', async () => {
    const before = await etcdKeys();
    const cases: [string[], RegExp][] = [
      [['network', 'create', 'x', '--driver', 'vxlan'], /an overlay network needs --subnet/],
      [['network', 'create', 'x', '--driver', 'vxlan', '--subnet', '10.50.0.0/16', '--host-prefix', '16'], /--host-prefix/],
      [['network', 'create', 'x', '--driver', 'vxlan', '--subnet', 'fd00:50::/48'], /IPv4 only/],
      [['network', 'create', 'x', '--driver', 'vxlan', '--subnet', '10.50.0.0/16', '--vni', '0'], /--vni/],
      [['network', 'create', 'x', '--driver', 'bogus', '--subnet', '10.50.0.0/16'], /--driver "bogus" is not a network driver/],
      [['network', 'create', 'x', '--subnet', '10.50.0.0/16', '--vni', '5'], /--vni is for overlay networks/],
    ];
    for (const [argv, re] of cases) {
      const r = await h1().ctnet(argv);
      assert.equal(r.code, 1, `${argv.join(' ')}: ${r.stderr}`);
      assert.match(r.stderr, re);
    }
    const r = await h3().ctnet(['network', 'create', 'x', '--driver', 'vxlan', '--subnet', '10.50.0.0/16']);
    assert.match(r.stderr, /needs this host in a cluster/);
    assert.equal(await etcdKeys(), before, 'etcd unchanged');
    assert.equal(JSON.parse(await h1().ctnetOk(['network', 'ls', '--json'])).length, 0, 'no local network');
  });

  it('sandboxes on different hosts reach each other (ICMP, TCP, UDP); egress leaves through each host\'s own uplink', async () => {
    await h1().ctnetOk(['network', 'create', 'ov', '--driver', 'vxlan', '--subnet', '10.50.0.0/16', '--vni', '42']);
    // A second definition that overlaps, or takes the VNI, is refused by the cluster (from h2).
    assert.match((await h2().ctnet(['network', 'create', 'y', '--driver', 'vxlan', '--subnet', '10.50.128.0/17'])).stderr, /overlaps/);
    assert.match((await h2().ctnet(['network', 'create', 'y', '--driver', 'vxlan', '--subnet', '10.60.0.0/16', '--vni', '42'])).stderr, /VNI 42/);
    await h1().ctnetOk(['run', '-d', '--name', 'a1', '--network', 'ov', '--', ...Lab.serverArgv('a1', { tcp: 7000, udp: 7001 })]);
    // h2 has no side of ov yet: its first sandbox on it makes one (a lease of its own).
    await h2().ctnetOk(['run', '-d', '--name', 'b1', '--network', 'ov', '--', ...Lab.serverArgv('b1', { tcp: 7000, udp: 7001 })]);
    const [a1, b1] = [await ip(h1(), 'a1'), await ip(h2(), 'b1')];
    assert.notEqual(a1.split('.').slice(0, 3).join('.'), b1.split('.').slice(0, 3).join('.'), 'each host has its own subnet');
    const t = await eventually('a1 pings b1 across hosts', () => ping(h1(), 'a1', b1));
    console.log(`# converged ${t.toFixed(0)} ms after b1 was created`);
    assert.ok(await ping(h2(), 'b1', a1));
    const probe = async (lab: Lab, s: string, proto: 'tcp' | 'udp', to: string, port: number) => {
      const r = await lab.ctnet(['exec', s, '--', ...Lab.probeArgv(proto, to, port)]);
      return r.code === 0 ? (JSON.parse(r.stdout) as { server: string; client: string }) : undefined;
    };
    assert.deepEqual(await probe(h1(), 'a1', 'tcp', b1, 7000), { server: 'b1', client: a1 }, 'TCP with the real source: not masqueraded inside the overlay');
    assert.deepEqual(await probe(h2(), 'b1', 'udp', a1, 7001), { server: 'a1', client: b1 });
    // Egress to the world: masqueraded to the sandbox's own host's uplink.
    for (const lab of [h1(), h2()]) lab.serveInWorld('world', { tcp: 7002 });
    await sleep(500);
    assert.deepEqual(await probe(h1(), 'a1', 'tcp', UPLINK.remote4, 7002), { server: 'world', client: UPLINK.host4 });
    assert.deepEqual(await probe(h2(), 'b1', 'tcp', UPLINK.remote4, 7002), { server: 'world', client: UPLINK.host4 });
    // Exactly three kernel entries per remote host on each side, as network inspect shows them.
    const r1 = (await routes(h1())).trim().split('\n').filter(Boolean);
    assert.equal(r1.length, 1, `one route per peer on h1: ${r1.join(' | ')}`);
    const v = JSON.parse(await h1().ctnetOk(['network', 'inspect', 'ov', '--json'])) as { overlay: { vni: number; peers: { host: string; neigh: boolean; fdb: boolean; route: boolean }[] } };
    assert.equal(v.overlay.vni, 42);
    assert.deepEqual(v.overlay.peers.map((p) => [p.host, p.neigh, p.fdb, p.route]), [['h2', true, true, true]]);
    assert.match(await h1().ctnetOk(['network', 'inspect', 'ov']), /peers \(three kernel entries each: neigh, fdb, route\):\n.*HOST.*\n.*h2 .* yes +yes +yes/);
  });

  it('a published port on h2 answers the world with the real client address; h1\'s sandbox reaches it by h2\'s sandbox address', async () => {
    await h2().ctnetOk(['run', '-d', '--name', 'p2', '--network', 'ov', '-p', '8088:7000', '-p', '8089:7001/udp', '--', ...Lab.serverArgv('p2', { tcp: 7000, udp: 7001 })]);
    const fromWorld = async (proto: 'tcp' | 'udp', port: number) => {
      const r = await h2().inWorld(Lab.probeArgv(proto, UPLINK.host4, port));
      return r.code === 0 ? (JSON.parse(r.stdout) as { server: string; client: string }) : undefined;
    };
    await eventually('the world reaches p2\'s published port', async () => (await fromWorld('tcp', 8088)) !== undefined, 20_000);
    assert.deepEqual(await fromWorld('tcp', 8088), { server: 'p2', client: UPLINK.world4 }, 'DNAT on h2, no masquerade: p2 sees the world\'s address');
    assert.deepEqual(await fromWorld('udp', 8089), { server: 'p2', client: UPLINK.world4 });
    // The same sandbox across the overlay, straight to its port, with a1's own address.
    const r = await h1().ctnet(['exec', 'a1', '--', ...Lab.probeArgv('tcp', await ip(h2(), 'p2'), 7000)]);
    assert.deepEqual(JSON.parse(r.stdout), { server: 'p2', client: await ip(h1(), 'a1') });
    await h2().ctnetOk(['rm', 'p2']);
    assert.equal(await fromWorld('tcp', 8088), undefined, 'gone with its sandbox');
  });

  it('etcd down (SIGSTOP 20 s, longer than the lease TTL): no ping lost, local work goes on, etcd work fails fast, all converges after SIGCONT', async () => {
    const b1 = await ip(h2(), 'b1');
    const before = await routes(h1());
    const pinger = h1().ctnet(['exec', 'a1', '--', 'ping', '-c', '150', '-i', '0.2', '-W', '1', b1]);
    await sleep(1000);
    etcd.pause();
    try {
      await sleep(2000);
      // A sandbox on the lease this host holds needs no etcd.
      await h1().ctnetOk(['create', 'a2', '--network', 'ov']);
      const t0 = performance.now();
      const r = await h1().ctnet(['network', 'create', 'z', '--driver', 'vxlan', '--subnet', '10.70.0.0/16']);
      const failedIn = performance.now() - t0;
      assert.equal(r.code, 1);
      assert.match(r.stderr, /etcd at .* is unreachable/);
      console.log(`# with etcd stopped, network create --driver vxlan failed after ${failedIn.toFixed(0)} ms`);
      await sleep(Math.max(0, 20_000 - (performance.now() - t0) - 3000));
    } finally {
      etcd.resume();
    }
    const p = await pinger;
    assert.match(p.stdout, /150 packets transmitted, 150 received/, p.stdout);
    await eventually('cluster ls answers on both hosts again', async () => (await h1().ctnet(['cluster', 'ls'])).code === 0 && (await h2().ctnet(['cluster', 'ls'])).code === 0);
    await eventually('both hosts are registered again', async () => {
      const ls = JSON.parse(await h1().ctnetOk(['cluster', 'ls', '--json'])) as { hosts: { name: string; health: string }[] };
      return ['h1', 'h2'].every((n) => ls.hosts.some((h) => h.name === n && h.health === 'ok'));
    });
    assert.equal(await routes(h1()), before, 'h2\'s entries were never removed');
    assert.ok(await ping(h1(), 'a2', b1), 'the sandbox made during the outage reaches h2');
    await h1().ctnetOk(['rm', 'a2']);
  });

  it('MTU: the overlay\'s (underlay less 50) on the bridge and the sandbox; a DF ping of exactly it passes, one byte more is refused', async () => {
    const link = JSON.parse((await h1().ctnet(['exec', 'a1', '--', 'ip', '-j', 'link', 'show', 'eth0'])).stdout) as { mtu: number }[];
    assert.equal(link[0]!.mtu, 1450);
    const b1 = await ip(h2(), 'b1');
    assert.ok(await ping(h1(), 'a1', b1, ['-M', 'do', '-s', String(1450 - 28)]), 'a packet of exactly the MTU');
    const big = await h1().ctnet(['exec', 'a1', '--', 'ping', '-c', '1', '-W', '1', '-M', 'do', '-s', String(1451 - 28), b1]);
    assert.notEqual(big.code, 0);
    assert.match(big.stdout + big.stderr, /message too long|mtu=1450|Frag needed/i);
  });

  it('gc makes this host\'s leases in etcd and its overlay sides agree', async () => {
    const leaseKeys = async () => (await etcd.etcdctl(['get', '--prefix', '--keys-only', '/ctnet/leases/'])).stdout.split('\n').filter(Boolean).sort();
    const before = await leaseKeys();
    const mine = before.find((k) => k.startsWith('/ctnet/leases/ov/10.50.0.'))!;
    assert.ok(mine, `h1's lease of ov: ${before.join(' ')}`);
    // Its lease lost (as if etcd lost it): gc leases exactly that subnet again.
    assert.equal((await etcd.etcdctl(['del', mine])).code, 0);
    assert.match(await h1().ctnetOk(['gc']), /leased 10\.50\.0\.0\/24 of overlay network ov again/);
    assert.deepEqual(await leaseKeys(), before);
    // A lease of h1's in a network it has no side of (a create killed after the claim): given back.
    await h2().ctnetOk(['network', 'create', 'ov2', '--driver', 'vxlan', '--subnet', '10.80.0.0/16']);
    const v = JSON.parse((await etcd.etcdctl(['get', mine, '--print-value-only'])).stdout) as Record<string, string>;
    assert.equal((await etcd.etcdctl(['put', '/ctnet/leases/ov2/10.80.9.0-24', JSON.stringify(v)])).code, 0);
    assert.match(await h1().ctnetOk(['gc']), /gave back lease 10\.80\.9\.0\/24 of overlay network ov2/);
    assert.ok(!(await leaseKeys()).includes('/ctnet/leases/ov2/10.80.9.0-24'));
    assert.match(await h1().ctnetOk(['gc']), /agree/, 'a second gc finds nothing');
    await h2().ctnetOk(['network', 'rm', 'ov2']);
  });

  it('a host that joins late reaches the others; one that leaves disappears from their kernels, and comes back with its subnet', async () => {
    await join_(h3(), 'h3');
    await h3().ctnetOk(['create', 'c1', '--network', 'ov']);
    const [a1, b1, c1] = [await ip(h1(), 'a1'), await ip(h2(), 'b1'), await ip(h3(), 'c1')];
    const t = await eventually('c1 reaches a1 and b1', async () => (await ping(h3(), 'c1', a1)) && (await ping(h3(), 'c1', b1)));
    console.log(`# h3 joined: every pair reaches each other ${t.toFixed(0)} ms after its first sandbox`);
    assert.ok(await ping(h1(), 'a1', c1));
    // A runtime's namespace attached by the CNI plugin on h3 reaches h1's sandbox.
    const dir = mkdtempSync(join(tmpdir(), 'ctov-cni-'));
    const ns = `ctov-${h3().id}-pod`;
    execFileSync('ip', ['netns', 'add', ns]);
    try {
      const written = (await h3().ctnetOk(['cni', 'install', '--bin-dir', join(dir, 'bin'), '--conf-dir', join(dir, 'conf'), '--network', 'ov'])).trim().split('\n');
      const conf = JSON.stringify(pluginConfigs(written[1]!)[0]!);
      const env = (c: string) => ({ CNI_COMMAND: c, CNI_CONTAINERID: 'pod1', CNI_NETNS: `/run/netns/${ns}`, CNI_IFNAME: 'eth0', CNI_PATH: '/usr/lib/cni' });
      const add = await execPlugin(h3(), written[0]!, env('ADD'), conf);
      assert.equal(add.code, 0, add.stdout + add.stderr);
      assert.equal(execFileSync('ip', ['netns', 'exec', ns, 'ping', '-c', '1', '-W', '2', a1]).length > 0, true);
      assert.equal((await execPlugin(h3(), written[0]!, env('DEL'), conf)).code, 0);
    } finally {
      execFileSync('ip', ['netns', 'del', ns]);
      rmSync(dir, { recursive: true, force: true });
    }
    // Leaving is refused while a sandbox uses the overlay; removing this host's side gives the lease back.
    assert.match((await h3().ctnet(['cluster', 'leave'])).stderr, /c1/);
    const subnet = (await routes(h1())).split('\n').find((l) => l.startsWith(c1.split('.').slice(0, 3).join('.')));
    assert.ok(subnet, 'h1 routes h3\'s subnet');
    await h3().ctnetOk(['rm', 'c1']);
    await h3().ctnetOk(['network', 'rm', 'ov']);
    await h3().ctnetOk(['cluster', 'leave']);
    await eventually('h1 and h2 drop h3\'s entries', async () => !(await routes(h1())).includes(subnet.split(' ')[0]!) && !(await routes(h2())).includes(subnet.split(' ')[0]!));
    // The definition stays while h1 and h2 hold leases.
    assert.match(await etcdKeys(), /\/ctnet\/networks\/ov/);
  });

  it('ctnetd killed and restarted on h2 during a running ping: nothing lost, no entry rewritten', async () => {
    const b1 = await ip(h2(), 'b1');
    const before = await h2().inHost(['ip', '-d', 'route', 'show', 'dev', 'ctov-ov']);
    const pinger = h1().ctnet(['exec', 'a1', '--', 'ping', '-c', '40', '-i', '0.1', '-W', '1', b1]);
    await sleep(500);
    const pid = Number(/pid (\d+)/.exec(await h2().ctnetOk(['daemon', 'status']))?.[1]);
    const synced = () => (daemonLog(h2()).match(/overlay ov: peers in place \(0 kernel operations/g) ?? []).length;
    const seen = synced();
    process.kill(pid, 'SIGKILL');
    const out = openSync(join(h2().stateDir, 'ctnetd.log'), 'a'); // a daemon started by hand logs on stderr
    spawn('nsenter', [`--net=/run/netns/${h2().host}`, h2().ctnetBin, 'daemon'], { env: { ...process.env, CTNET_STATE_DIR: h2().stateDir }, stdio: ['ignore', 'ignore', out], detached: true }).unref();
    closeSync(out);
    const r = await pinger;
    assert.match(r.stdout, /40 packets transmitted, 40 received/, r.stdout);
    await eventually('the new ctnetd has listed the leases and found every entry in place', async () => synced() > seen, 20_000)
      .catch((e: Error) => assert.fail(`${e.message}\n${daemonLog(h2()).split('\n').slice(-15).join('\n')}`));
    assert.equal((await h2().inHost(['ip', '-d', 'route', 'show', 'dev', 'ctov-ov'])).stdout, before.stdout);
  });

  it('a host whose ctnetd dies drops out of the others\' kernels after its lease TTL', async () => {
    const b1 = await ip(h2(), 'b1');
    const prefix = b1.split('.').slice(0, 3).join('.');
    const pid = Number(/pid (\d+)/.exec(await h2().ctnetOk(['daemon', 'status']))?.[1]);
    process.kill(pid, 'SIGKILL');
    const t = await eventually('h1 drops h2\'s route', async () => !(await routes(h1())).includes(prefix), (TTL + 30) * 1000);
    console.log(`# h2's entries left h1 ${t.toFixed(0)} ms after its ctnetd died (lease TTL ${TTL} s)`);
    // Started again, it registers with the same subnet, and a1 reaches b1 again.
    spawn('nsenter', [`--net=/run/netns/${h2().host}`, h2().ctnetBin, 'daemon'], { env: { ...process.env, CTNET_STATE_DIR: h2().stateDir }, stdio: 'ignore', detached: true }).unref();
    await eventually('a1 reaches b1 again', () => ping(h1(), 'a1', b1));
    assert.equal(await ip(h2(), 'b1'), b1);
  });
});
