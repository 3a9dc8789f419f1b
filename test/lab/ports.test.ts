// Issue #3: published ports, with real traffic from the world, the lab host and sandboxes.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';
import { Lab, UPLINK } from '../../src/lab/lab.ts';
import { checkConsistent, expectedPortElements, nftMaps, readStore } from './consistency.ts';

type Answer = { server: string; client: string };

describe('published ports', () => {
  let lab: Lab;
  const parse = (r: { code: number; stdout: string }) => (r.code === 0 ? (JSON.parse(r.stdout) as Answer) : undefined);
  const fromWorld = async (proto: 'tcp' | 'udp' | 'http', host: string, port: number) => parse(await lab.inWorld(Lab.probeArgv(proto, host, port)));
  const fromHost = async (proto: 'tcp' | 'udp' | 'http', host: string, port: number) => parse(await lab.inHost(Lab.probeArgv(proto, host, port)));
  const fromSandbox = async (s: string, proto: 'tcp' | 'udp', host: string, port: number) =>
    parse(await lab.ctnet(['exec', s, '--', ...Lab.probeArgv(proto, host, port)]));
  const until = async (probe: () => Promise<Answer | undefined>) => {
    for (let i = 0; i < 50; i++) {
      if (await probe()) return;
      await new Promise((r) => setTimeout(r, 100));
    }
  };
  const serve = (name: string, net: string, ports: string[], listen: { tcp?: number; udp?: number; http?: number }) =>
    lab.ctnetOk(['run', '-d', '--name', name, '--network', net, ...ports.flatMap((p) => ['-p', p]), '--', ...Lab.serverArgv(name, listen)]);

  before(async () => {
    lab = await Lab.create();
    await lab.ctnetOk(['network', 'create', 'web', '--subnet', '10.91.0.0/24', '--subnet', 'fd00:91::/64']);
    await lab.ctnetOk(['network', 'create', 'other', '--subnet', '10.92.0.0/24', '--subnet', 'fd00:92::/64']);
    await serve('a', 'web', ['8080:80', '8081:81/udp'], { tcp: 80, udp: 81 }); // 10.91.0.2
    await serve('b', 'web', [`${UPLINK.host4}:8090:7000`, '9000-9001:7000-7001'], { tcp: 7000, http: 7001 }); // 10.91.0.3
    await serve('c', 'other', [], { tcp: 80 }); // 10.92.0.2
    await until(() => fromWorld('tcp', UPLINK.host4, 8080));
    await until(() => fromWorld('tcp', UPLINK.host4, 9000));
    // IPv6's first neighbour discovery (world -> uplink, host -> sandbox) can need a retransmission
    // under load (CI runs two lab files at once): wait for that path too before judging it.
    await until(() => fromWorld('tcp', UPLINK.host6, 8080));
  });
  after(() => lab?.destroy());

  it('world reaches published TCP and UDP ports on the uplink address, IPv4 and IPv6, and the sandbox sees the real client', async () => {
    assert.deepEqual(await fromWorld('tcp', UPLINK.host4, 8080), { server: 'a', client: UPLINK.world4 });
    assert.deepEqual(await fromWorld('udp', UPLINK.host4, 8081), { server: 'a', client: UPLINK.world4 });
    assert.deepEqual(await fromWorld('tcp', UPLINK.host6, 8080), { server: 'a', client: UPLINK.world6 });
    assert.deepEqual(await fromWorld('udp', UPLINK.host6, 8081), { server: 'a', client: UPLINK.world6 });
  });

  it('SCTP reaches the sandbox too, where the kernel has SCTP', async (t) => {
    if (!existsSync('/proc/net/sctp')) return t.skip('this kernel has no SCTP (no /proc/net/sctp): no SCTP traffic is possible here');
    await lab.ctnetOk(['run', '-d', '--name', 'sctp', '--network', 'other', '-p', '8132:132/sctp', '--',
      'socat', 'SCTP-LISTEN:132,fork,reuseaddr', 'SYSTEM:echo sctp']);
    try {
      let out = '';
      for (let i = 0; i < 30 && !out.includes('sctp'); i++) {
        out = (await lab.inWorld(['socat', '-T2', '-', `SCTP:${UPLINK.host4}:8132`])).stdout;
        if (!out.includes('sctp')) await new Promise((r) => setTimeout(r, 100));
      }
      assert.equal(out.trim(), 'sctp');
    } finally {
      await lab.ctnet(['rm', 'sctp']);
    }
  });

  it('the sctp protocol makes map elements even where traffic cannot be tested', async () => {
    await lab.ctnetOk(['port', 'add', 'c', '8133:133/sctp']);
    assert.ok((await nftMaps(lab)).get('ports4_any')!.includes('sctp . 8133 : 10.92.0.2 . 133'));
    assert.ok((await nftMaps(lab)).get('ports6_any')!.includes('sctp . 8133 : fd00:92::2 . 133'));
    await lab.ctnetOk(['port', 'rm', 'c', '8133:133/sctp']);
    assert.ok(!(await nftMaps(lab)).get('ports4_any')!.some((e) => e.startsWith('sctp')));
  });

  it('the lab host reaches them on its own addresses and on 127.0.0.1; ::1 is refused, not hung', async () => {
    assert.deepEqual(await fromHost('tcp', UPLINK.host4, 8080), { server: 'a', client: UPLINK.host4 });
    assert.deepEqual(await fromHost('tcp', UPLINK.host6, 8080), { server: 'a', client: UPLINK.host6 });
    // 127.0.0.1 is DNATed and masqueraded to the bridge's address (a loopback source cannot leave).
    assert.deepEqual(await fromHost('tcp', '127.0.0.1', 8080), { server: 'a', client: '10.91.0.1' });
    assert.deepEqual(await fromHost('udp', '127.0.0.1', 8081), { server: 'a', client: '10.91.0.1' });
    const r = await lab.inHost(Lab.probeArgv('tcp', '::1', 8080));
    assert.match(r.stderr, /ECONNREFUSED/, 'documented: ::1 is left to the host (README, Published ports)');
  });

  it('hairpin: a sandbox reaches its own and its neighbour\'s published port through the host address', async () => {
    assert.equal((await fromSandbox('a', 'tcp', UPLINK.host4, 8080))?.server, 'a');
    assert.equal((await fromSandbox('a', 'tcp', UPLINK.host6, 8080))?.server, 'a');
    assert.equal((await fromSandbox('b', 'tcp', UPLINK.host4, 8080))?.server, 'a');
    assert.equal((await fromSandbox('b', 'udp', UPLINK.host4, 8081))?.server, 'a');
    assert.equal((await fromSandbox('a', 'tcp', UPLINK.host4, 9000))?.server, 'b');
    // From another network the flow is routed, not hairpinned: the sandbox sees c's own address.
    assert.deepEqual(await fromSandbox('c', 'tcp', UPLINK.host4, 8080), { server: 'a', client: '10.92.0.2' });
  });

  it('HOST_IP limits a mapping to that address; ranges map one to one', async () => {
    assert.deepEqual(await fromWorld('tcp', UPLINK.host4, 8090), { server: 'b', client: UPLINK.world4 });
    assert.equal(await fromWorld('tcp', UPLINK.host6, 8090), undefined);
    assert.equal(await fromHost('tcp', '127.0.0.1', 8090), undefined);
    assert.equal((await fromWorld('tcp', UPLINK.host4, 9000))?.server, 'b');
    assert.equal((await fromWorld('http', UPLINK.host4, 9001))?.server, 'b'); // 9001 -> 7001, the HTTP server
    assert.equal(await fromWorld('tcp', UPLINK.host4, 9002), undefined);
  });

  it('unpublished ports are not reachable from outside, even with a route to the sandbox', async () => {
    await lab.inWorld(['ip', 'route', 'add', '10.91.0.0/24', 'via', UPLINK.host4]);
    try {
      assert.equal(await fromWorld('tcp', '10.91.0.2', 80), undefined);
      assert.equal(await fromWorld('udp', '10.91.0.2', 81), undefined);
    } finally {
      await lab.inWorld(['ip', 'route', 'del', '10.91.0.0/24']);
    }
  });

  it('a mapping that collides is refused naming the sandbox that holds it', async () => {
    for (const spec of ['8080:80', `${UPLINK.host4}:8080:81`, '8079-8080:79-80', `[${UPLINK.host6}]:8080:80`]) {
      const r = await lab.ctnet(['create', 'x', '--network', 'web', '-p', spec]);
      assert.equal(r.code, 1, spec);
      assert.match(r.stderr, /already published by sandbox a \(8080:80\/tcp\)/, spec);
    }
    // Another protocol or another host address is no collision.
    await lab.ctnetOk(['create', 'x', '--network', 'web', '-p', '8080:80/udp', '-p', '127.0.0.1:8090:80']);
    await lab.ctnetOk(['rm', 'x']);
    assert.deepEqual(readStore(lab).sandboxes.map((s) => s.name).sort(), ['a', 'b', 'c']);
  });

  it('a port a host process listens on is refused (naming the process) unless --force', async () => {
    const server = spawn('nsenter', [`--net=/run/netns/${lab.host}`, ...Lab.serverArgv('hostsvc', { tcp: 9500 })], { stdio: 'ignore' });
    try {
      await until(() => fromHost('tcp', '127.0.0.1', 9500));
      const r = await lab.ctnet(['create', 'y', '--network', 'web', '-p', '9500:80']);
      assert.equal(r.code, 1);
      assert.match(r.stderr, /tcp port 9500 on .* is in use on this host by node \(pid \d+\)/);
      assert.match(r.stderr, /--force/);
      await lab.ctnetOk(['run', '-d', '--name', 'y', '--network', 'web', '-p', '9500:80', '--force', '--', ...Lab.serverArgv('y', { tcp: 80 })]);
      await until(() => fromWorld('tcp', UPLINK.host4, 9500));
      assert.equal((await fromWorld('tcp', UPLINK.host4, 9500))?.server, 'y');
    } finally {
      server.kill('SIGKILL');
      await lab.ctnet(['rm', 'y']);
    }
  });

  it('port add, port and port rm change a live sandbox; rm removes only its own elements and ends their flows', async () => {
    await lab.ctnetOk(['port', 'add', 'c', '8200:80', '127.0.0.1:8201:80']);
    assert.equal(await lab.ctnetOk(['port', 'c']), '80/tcp -> 0.0.0.0:8200\n80/tcp -> [::]:8200\n80/tcp -> 127.0.0.1:8201\n');
    const json = JSON.parse(await lab.ctnetOk(['port', 'c', '--json'])) as { spec: string; to: string[] }[];
    assert.deepEqual(json.map((p) => [p.spec, p.to]), [['8200:80/tcp', ['10.92.0.2', 'fd00:92::2']], ['127.0.0.1:8201:80/tcp', ['10.92.0.2']]]);
    assert.equal((await fromWorld('tcp', UPLINK.host4, 8200))?.server, 'c');
    assert.equal((await fromHost('tcp', '127.0.0.1', 8201))?.server, 'c');
    const inspect = JSON.parse(await lab.ctnetOk(['inspect', 'c', '--json'])) as { ports: { spec: string }[] };
    assert.deepEqual(inspect.ports.map((p) => p.spec), ['8200:80/tcp', '127.0.0.1:8201:80/tcp']);

    await lab.ctnetOk(['port', 'rm', 'c', '8200:80']);
    assert.equal(await fromWorld('tcp', UPLINK.host4, 8200), undefined);
    assert.equal((await fromHost('tcp', '127.0.0.1', 8201))?.server, 'c');
    assert.equal((await fromWorld('tcp', UPLINK.host4, 8080))?.server, 'a');
    assert.deepEqual(await nftMaps(lab), expectedPortElements(readStore(lab)));
    const r = await lab.ctnet(['port', 'rm', 'c', '8200:80']);
    assert.match(r.stderr, /sandbox c has no mapping 8200:80\/tcp\nhint: its mappings are: 127\.0\.0\.1:8201:80\/tcp/);
    await lab.ctnetOk(['port', 'rm', 'c', '127.0.0.1:8201:80/tcp']);
  });

  it('a live UDP flow follows the host port to the new sandbox after the old one is removed', async () => {
    await serve('old', 'web', ['8085:81/udp'], { udp: 81 });
    await until(() => fromWorld('udp', UPLINK.host4, 8085));
    const oldIp = readStore(lab).addresses.find((a) => a.sandbox === 'old' && a.family === 4)!.ip;
    // Flows to old that it has answered (the probes above made some already).
    const answered = async () => (await lab.inHost(['conntrack', '-L', '-p', 'udp'])).stdout.split('\n')
      .filter((l) => l.includes('dport=8085 ') && l.includes(`src=${oldIp} `) && !l.includes('UNREPLIED')).length;
    const before = await answered();
    // One client socket (fixed source port) sending every 100 ms through all that follows.
    const flow = lab.inWorld(Lab.flowArgv(UPLINK.host4, 8085, 'new', 30_000));
    // Until old has answered the flow too, not a fixed wait: under load the flow's process may
    // start later than rm does.
    for (let i = 0; i < 300 && (await answered()) <= before; i++) await new Promise((r) => setTimeout(r, 100));
    await lab.ctnetOk(['rm', 'old']);
    const left = (await lab.inHost(['conntrack', '-L'])).stdout.split('\n').filter((l) => l.includes(`src=${oldIp} `));
    assert.deepEqual(left, [], 'no conntrack entry leads to the removed sandbox');
    // Packets now hit the host port with nothing published: conntrack records them un-NATed.
    await new Promise((r) => setTimeout(r, 500));
    await serve('new', 'web', ['8085:81/udp'], { udp: 81 });
    const r = await flow;
    assert.equal(r.code, 0, `the flow reached the new sandbox (saw: ${r.stdout.trim().split('\n').join(', ')})`);
    assert.deepEqual(r.stdout.trim().split('\n'), ['old', 'new']);
    await lab.ctnetOk(['rm', 'new']);
  });

  it('removing a network removes exactly its sandboxes\' map elements', async () => {
    await lab.ctnetOk(['network', 'create', 'tmp', '--subnet', '10.93.0.0/24']);
    await lab.ctnetOk(['create', 't', '--network', 'tmp', '-p', '8300:80', '-p', '8301:80/udp']);
    assert.ok((await nftMaps(lab)).get('ports4_any')!.includes('tcp . 8300 : 10.93.0.2 . 80'));
    await lab.ctnetOk(['network', 'rm', '--force', 'tmp']);
    const maps = await nftMaps(lab);
    assert.ok(!maps.get('ports4_any')!.some((e) => e.includes('10.93.0.')));
    assert.deepEqual(maps, expectedPortElements(readStore(lab)));
    assert.equal((await fromWorld('tcp', UPLINK.host4, 8080))?.server, 'a');
  });

  it('disconnecting the published network moves the mappings to the next network with a way out', async () => {
    await lab.ctnetOk(['create', 'm', '--network', 'web', '--network', 'other', '-p', '8400:80']);
    assert.ok((await nftMaps(lab)).get('ports4_any')!.some((e) => e.startsWith('tcp . 8400 : 10.91.')));
    await lab.ctnetOk(['disconnect', 'web', 'm']);
    const ip = readStore(lab).addresses.find((a) => a.sandbox === 'm' && String(a.ip).startsWith('10.92.'))!.ip;
    assert.ok((await nftMaps(lab)).get('ports4_any')!.includes(`tcp . 8400 : ${ip} . 80`));
    assert.deepEqual(await checkConsistent(lab), []);
    await lab.ctnetOk(['rm', 'm']);
  });

  it('published ports survive a flush of ctnet\'s table: gc restores every mapping from the store', async () => {
    await lab.inHost(['nft', 'delete', 'table', 'inet', 'ctnet']);
    assert.equal(await fromWorld('tcp', UPLINK.host4, 8080), undefined);
    await lab.ctnetOk(['gc']);
    assert.deepEqual(await fromWorld('tcp', UPLINK.host4, 8080), { server: 'a', client: UPLINK.world4 });
    assert.equal((await fromWorld('tcp', UPLINK.host4, 8090))?.server, 'b');
    assert.deepEqual(await checkConsistent(lab), []);
  });

  it('--explain shows the map elements and conntrack work of a mapping', async () => {
    const out = await lab.ctnetOk(['port', 'add', 'c', '8500:80/udp', '--explain']);
    assert.match(out, /add element inet ctnet ports4_any \{ udp \. 8500 : 10\.92\.0\.2 \. 80 \}/);
    assert.match(out, /add element inet ctnet ports6_any \{ udp \. 8500 : fd00:92::2 \. 80 \}/);
    const rm = await lab.ctnetOk(['port', 'rm', 'c', '8500:80/udp', '--explain']);
    assert.match(rm, /delete element inet ctnet ports4_any \{ udp \. 8500 \}/);
  });
});
