// Issue 14, the datapath: an overlay network across three lab hosts on one underlay. Until the
// control plane (etcd) lands, the network and its peers are handed to each host through
// src/lab/overlay-agent.ts, which calls the engine functions the control plane will call.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { after, before, describe, it } from 'node:test';
import { ClusterLab, overlayAgent, type ClusterHost } from '../../src/lab/cluster-lab.ts';
import { Lab, UPLINK } from '../../src/lab/lab.ts';
import type { Peer } from '../../src/model/overlay.ts';

const VNI = 42;
const PORT = 4789;
const OVERLAY = { vni: VNI, port: PORT, cidr: '10.50.0.0/16' };
const VX = 'ctov-ov';
const lease = (i: number) => `10.50.${i}.0/24`;
/** The first sandbox on host i: the lease's second address. */
const sandboxIp = (i: number) => `10.50.${i}.2`;

interface SyncResult { programmed: string[]; removed: string[]; refused: { host: string; reason: string }[]; operations: number }

describe('a VXLAN overlay across three lab hosts', () => {
  let c: ClusterLab;
  let peers: Peer[];
  const h = (i: number): ClusterHost => c.hosts[i - 1]!;
  const exec = (i: number, argv: readonly string[]) => h(i).lab.ctnet(['exec', `s${i}`, '--', ...argv]);
  const ping = async (from: number, to: string, extra: string[] = []) => (await exec(from, ['ping', '-c1', '-W1', ...extra, to]));
  const probe = async (from: number, proto: 'tcp' | 'udp', host: string, port: number) => {
    const r = await exec(from, Lab.probeArgv(proto, host, port));
    return r.code === 0 ? (JSON.parse(r.stdout) as { server: string; client: string }) : undefined;
  };
  const sync = (i: number, list: readonly Peer[]) => overlayAgent<SyncResult>(h(i), ['peers', 'ov', JSON.stringify(list)]);
  /** What the kernel holds for the overlay on a host, as ip and bridge print it in detail. */
  const dump = async (i: number) => {
    const run = async (argv: string[]) => (await h(i).lab.inHost(argv)).stdout;
    return {
      neigh: await run(['ip', '-d', 'neigh', 'show', 'dev', VX]),
      fdb: await run(['bridge', '-d', 'fdb', 'show', 'dev', VX]),
      route: await run(['ip', '-d', 'route', 'show', 'dev', VX]),
      vteps: (await run(['nft', 'list', 'set', 'inet', 'ctnet', 'vteps4'])).replace(/\s+/g, ' '),
    };
  };
  const rxPackets = async (i: number) => {
    const l = JSON.parse((await h(i).lab.inHost(['ip', '-s', '-j', 'link', 'show', VX])).stdout) as { stats64: { rx: { packets: number } } }[];
    return l[0]!.stats64.rx.packets;
  };
  /** Packets the "VXLAN from an unknown VTEP" rule dropped on a host. */
  const unknownDrops = async (i: number) => {
    const text = (await h(i).lab.inHost(['nft', 'list', 'chain', 'inet', 'ctnet', 'input'])).stdout;
    const m = /counter packets (\d+) bytes \d+ drop comment "VXLAN from an unknown VTEP"/.exec(text);
    assert.ok(m, text);
    return Number(m[1]);
  };

  before(async () => {
    c = await ClusterLab.create({ hosts: 3 });
    for (let i = 1; i <= 3; i++) {
      await overlayAgent(h(i), ['create', 'ov', lease(i), JSON.stringify({ ...OVERLAY, underlay: h(i).underlay })]);
      h(i).lab.serveInWorld(`world${i}`, { tcp: 7000 });
    }
    peers = [];
    for (let i = 1; i <= 3; i++) peers.push({ host: h(i).name, ...(await overlayAgent<Omit<Peer, 'host'>>(h(i), ['vtep', 'ov'])) });
    // Every host is handed the whole list, itself included (as the control plane will).
    for (let i = 1; i <= 3; i++) {
      const r = await sync(i, peers);
      assert.deepEqual(r.programmed.sort(), peers.map((p) => p.host).filter((x) => x !== h(i).name));
    }
    for (let i = 1; i <= 3; i++) {
      await h(i).lab.ctnetOk(['run', '-d', '--name', `s${i}`, '--network', 'ov', '--', ...Lab.serverArgv(`s${i}`, { tcp: 7000, udp: 7001 })]);
    }
    // Servers need a moment to bind: wait until each answers from its own host.
    for (let i = 1; i <= 3; i++) {
      for (let n = 0; n < 50 && !(await h(i).lab.inHost(Lab.probeArgv('tcp', sandboxIp(i), 7000))).stdout; n++) await new Promise((r) => setTimeout(r, 100));
    }
  });
  after(() => c?.destroy());

  it('sandboxes on different hosts reach each other over ICMP, TCP and UDP, with their own addresses', async () => {
    for (const [from, to] of [[1, 2], [2, 3], [3, 1]] as const) {
      assert.equal((await ping(from, sandboxIp(to))).code, 0, `ping s${from} -> s${to}`);
      assert.deepEqual(await probe(from, 'tcp', sandboxIp(to), 7000), { server: `s${to}`, client: sandboxIp(from) }, 'TCP, not masqueraded');
      assert.deepEqual(await probe(from, 'udp', sandboxIp(to), 7001), { server: `s${to}`, client: sandboxIp(from) }, 'UDP, not masqueraded');
    }
  });

  it('egress to the world is masqueraded on the sandbox\'s own host', async () => {
    for (let i = 1; i <= 3; i++) assert.deepEqual(await probe(i, 'tcp', UPLINK.remote4, 7000), { server: `world${i}`, client: UPLINK.host4 });
  });

  it('MTU: bridge, VXLAN device and sandbox carry the underlay\'s less 50; a DF ping of exactly that crosses, one byte more is refused', async () => {
    const mtu = async (argv: string[]) => (JSON.parse((await h(1).lab.inHost(['ip', '-j', ...argv])).stdout) as { mtu: number }[])[0]!.mtu;
    assert.deepEqual([await mtu(['link', 'show', 'ctbr-ov']), await mtu(['link', 'show', VX]), await mtu(['link', 'show', 'under0'])], [1450, 1450, 1500]);
    const inside = JSON.parse((await exec(1, ['ip', '-j', 'link', 'show', 'eth0'])).stdout) as { mtu: number }[];
    assert.equal(inside[0]!.mtu, 1450);
    // 1422 bytes of ICMP payload + 8 (ICMP) + 20 (IP) = 1450.
    const fits = await ping(1, sandboxIp(2), ['-M', 'do', '-s', '1422']);
    assert.equal(fits.code, 0, fits.stdout + fits.stderr);
    const over = await ping(1, sandboxIp(2), ['-M', 'do', '-s', '1423']);
    assert.notEqual(over.code, 0);
    assert.match(over.stdout + over.stderr, /message too long, mtu=1450/);
  });

  it('three entries per peer on each host, and the peers as known VTEPs', async () => {
    const d = await dump(1);
    const lines = (t: string) => t.trim().split('\n').filter((l) => l);
    assert.equal(lines(d.neigh).length, 2);
    assert.equal(lines(d.fdb).length, 2);
    assert.equal(lines(d.route).length, 2);
    for (const p of peers.filter((x) => x.host !== 'h1')) {
      assert.match(d.neigh, new RegExp(`^${p.subnet.replace('/24', '').replaceAll('.', '\\.')} lladdr ${p.vtepMac} PERMANENT`, 'm'));
      assert.match(d.fdb, new RegExp(`^${p.vtepMac} dst ${p.underlay.replaceAll('.', '\\.')} self permanent`, 'm'));
      assert.match(d.route, new RegExp(`${p.subnet} via ${p.subnet.replace('/24', '')} proto \\w+ scope global onlink`));
      assert.match(d.vteps, new RegExp(`${p.underlay} \\. ${PORT} \\. 0x${VNI.toString(16)}`));
    }
  });

  it('re-applying the peers changes nothing: same entries, and not one neighbour or route event on the way', async () => {
    const before = await dump(1);
    // ip monitor from before the sync to after it; a marker route on lo brackets what it saw.
    const monitor = spawn('nsenter', [`--net=/run/netns/${h(1).lab.host}`, 'ip', 'monitor', 'neigh', 'route'], { stdio: ['ignore', 'pipe', 'ignore'] });
    let seen = '';
    monitor.stdout.setEncoding('utf8').on('data', (d: string) => (seen += d));
    const mark = async (addr: string) => {
      await h(1).lab.inHost(['ip', 'route', 'add', `${addr}/32`, 'dev', 'lo']);
      await h(1).lab.inHost(['ip', 'route', 'del', `${addr}/32`, 'dev', 'lo']);
    };
    const waitFor = async (text: string) => {
      for (let n = 0; n < 100 && !seen.includes(text); n++) await new Promise((r) => setTimeout(r, 50));
      assert.ok(seen.includes(text), `ip monitor never showed ${text}`);
    };
    try {
      // The monitor may need a moment to subscribe: mark until it shows.
      for (let n = 0; n < 20 && !seen.includes('192.0.2.201'); n++) {
        await mark('192.0.2.201');
        await new Promise((r) => setTimeout(r, 50));
      }
      await waitFor('192.0.2.201');
      const r = await sync(1, peers);
      assert.deepEqual(r, { programmed: [], removed: [], refused: [], operations: 0 }, 'not one entry written again');
      await mark('192.0.2.202');
      await waitFor('192.0.2.202');
    } finally {
      monitor.kill();
    }
    const during = seen.slice(seen.lastIndexOf('192.0.2.201'), seen.indexOf('192.0.2.202'));
    assert.doesNotMatch(during, new RegExp(VX), `events on ${VX} while re-applying:\n${during}`);
    assert.deepEqual(await dump(1), before);
  });

  it('VXLAN from an unknown VTEP is dropped before decapsulation; the same sender as a peer gets through', async () => {
    // A hand-built VTEP on the underlay (seed 000's way), claiming 10.50.99.0/24 on the same VNI.
    const node = await c.addNode('intruder', '192.0.2.99');
    const mac = '02:00:00:00:99:99';
    const h1 = peers.find((p) => p.host === 'h1')!;
    const run = async (argv: string[]) => {
      const r = await c.in(node.netns, argv);
      assert.equal(r.code, 0, `${argv.join(' ')}: ${r.stderr}`);
    };
    await run(['ip', 'link', 'add', 'vx0', 'address', mac, 'mtu', '1450', 'type', 'vxlan', 'id', String(VNI), 'local', node.ip, 'dev', node.dev, 'dstport', String(PORT), 'nolearning']);
    await run(['ip', 'addr', 'add', '10.50.99.0/32', 'dev', 'vx0']);
    await run(['ip', 'link', 'set', 'vx0', 'up']);
    await run(['ip', 'neigh', 'replace', '10.50.1.0', 'lladdr', h1.vtepMac, 'dev', 'vx0', 'nud', 'permanent']);
    await run(['bridge', 'fdb', 'replace', h1.vtepMac, 'dev', 'vx0', 'dst', h1.underlay, 'self', 'permanent']);
    await run(['ip', 'route', 'replace', '10.50.1.0/24', 'via', '10.50.1.0', 'dev', 'vx0', 'onlink']);
    const intruderPing = () => c.in(node.netns, ['ping', '-c3', '-i', '0.2', '-W1', sandboxIp(1)]);

    const [rx, drops] = [await rxPackets(1), await unknownDrops(1)];
    assert.notEqual((await intruderPing()).code, 0);
    assert.equal(await rxPackets(1), rx, 'h1 decapsulated nothing from it');
    assert.ok((await unknownDrops(1)) >= drops + 3, 'the rule dropped its packets');

    const intruder: Peer = { host: 'intruder', subnet: '10.50.99.0/24', underlay: node.ip, vtepMac: mac };
    assert.deepEqual((await sync(1, [...peers, intruder])).programmed, ['intruder']);
    assert.equal((await intruderPing()).code, 0, 'known, it is let in (and answered)');
    assert.deepEqual((await sync(1, peers)).removed, ['intruder']);
    const rx2 = await rxPackets(1);
    assert.notEqual((await intruderPing()).code, 0);
    assert.equal(await rxPackets(1), rx2, 'forgotten, it is dropped again');
  });

  it('gc puts back an entry deleted behind ctnet\'s back', async () => {
    await h(1).lab.inHost(['ip', 'route', 'del', lease(2), 'dev', VX]);
    assert.notEqual((await ping(1, sandboxIp(2))).code, 0);
    assert.match(await h(1).lab.ctnetOk(['gc']), /rewrote the entries of peer h2/);
    assert.equal((await ping(1, sandboxIp(2))).code, 0);
  });

  it('removing a peer removes its three entries (and its known VTEP), and nothing else', async () => {
    const before = await dump(1);
    const h3 = peers.find((p) => p.host === 'h3')!;
    assert.deepEqual(await sync(1, peers.filter((p) => p.host !== 'h3')), { programmed: [], removed: ['h3'], refused: [], operations: 4 });
    const afterRemoval = await dump(1);
    const without = (text: string, needle: string) => text.split('\n').filter((l) => !l.includes(needle)).join('\n');
    assert.equal(afterRemoval.neigh, without(before.neigh, '10.50.3.0 '));
    assert.equal(afterRemoval.fdb, without(before.fdb, h3.vtepMac));
    assert.equal(afterRemoval.route, without(before.route, lease(3)));
    assert.doesNotMatch(afterRemoval.vteps, new RegExp(h3.underlay));
    assert.ok(before.neigh !== afterRemoval.neigh && before.fdb !== afterRemoval.fdb && before.route !== afterRemoval.route, 'each had h3\'s entry');
    assert.notEqual((await ping(1, sandboxIp(3))).code, 0);
    assert.equal((await ping(1, sandboxIp(2))).code, 0, 'h2 untouched');
    await sync(1, peers);
    assert.equal((await ping(1, sandboxIp(3))).code, 0, 'and back');
  });

  it('removing the network takes the VXLAN device, its entries and its nft elements along', async () => {
    await h(3).lab.ctnetOk(['rm', 's3']);
    await h(3).lab.ctnetOk(['network', 'rm', 'ov']);
    const links = JSON.parse((await h(3).lab.inHost(['ip', '-j', 'link', 'show'])).stdout) as { ifname: string }[];
    assert.deepEqual(links.map((l) => l.ifname).filter((n) => n.startsWith('ct')), []);
    assert.doesNotMatch((await h(3).lab.inHost(['ip', 'route'])).stdout, /10\.50\./);
    assert.notEqual((await h(3).lab.inHost(['nft', 'list', 'table', 'inet', 'ctnet'])).code, 0, 'the last network took the table');
  });
});
