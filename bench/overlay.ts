// Benchmark: TCP throughput (iperf3) sandbox -> sandbox across two lab hosts over ctnet's VXLAN
// datapath, against the same across the same underlay with the seed's hand-built VXLAN (seed 000:
// `ip link add vxlan0 type vxlan id 100 local A remote B dstport 4789`, a route to the far side: the
// limit for this encapsulation, with no bridge and no nft rules), and against the same pair of
// sandboxes on one host (no encapsulation). One run, sides taken in turn, medians and ratios.
//
//   scripts/node bench/overlay.ts [--seconds N] [--repeat N] [--parallel N] [--json]
import { parseArgs } from 'node:util';
import { table } from '../src/cli/table.ts';
import { ClusterLab, overlayAgent, UNDERLAY } from '../src/lab/cluster-lab.ts';
import type { Peer } from '../src/model/overlay.ts';
import { destroyAll, intOption, loadAverage, optionsOrExit, progress, sampleOrder, trapSignals } from './lib.ts';

interface Options {
  readonly seconds: number;
  readonly repeat: number;
  readonly parallel: number;
  readonly json: boolean;
}

const USAGE = `usage: scripts/node bench/overlay.ts [--seconds N] [--repeat N] [--parallel N] [--json]
  --seconds N   length of each iperf3 test (default 5)
  --repeat N    tests per side, the sides taken in turn; the median is reported (default 5)
  --parallel N  iperf3 streams (-P, default 1)
  --json        print the results as JSON instead of a table`;

function parseOptions(argv: readonly string[]): Options | 'help' {
  const { values } = parseArgs({
    args: [...argv],
    options: {
      seconds: { type: 'string' }, repeat: { type: 'string' }, parallel: { type: 'string' },
      json: { type: 'boolean', default: false }, help: { type: 'boolean', short: 'h', default: false },
    },
    strict: true,
    allowPositionals: false,
  });
  if (values.help) return 'help';
  return {
    seconds: intOption('seconds', values.seconds, 5, 1, 60), repeat: intOption('repeat', values.repeat, 5, 1, 20),
    parallel: intOption('parallel', values.parallel, 1, 1, 16), json: values.json,
  };
}

const median = (xs: readonly number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

type Side = 'ctnet' | 'hand-built' | 'one host';
const SIDES: readonly Side[] = ['ctnet', 'hand-built', 'one host'];

async function ok(r: Promise<{ code: number; stdout: string; stderr: string }>, what: string): Promise<string> {
  const x = await r;
  if (x.code !== 0) throw new Error(`${what} failed (${x.code}): ${x.stderr.trim()}`);
  return x.stdout;
}

/** The seed's VXLAN between two underlay nodes, each routing for one "container" namespace behind a veth. */
async function handBuilt(c: ClusterLab): Promise<{ client: string; server: string; serverIp: string }> {
  const sides = [
    { node: await c.addNode('hb1', '192.0.2.21'), inner: '192.168.0.1', subnet: '10.60.1', remote: '192.0.2.22' },
    { node: await c.addNode('hb2', '192.0.2.22'), inner: '192.168.0.2', subnet: '10.60.2', remote: '192.0.2.21' },
  ];
  const containers: string[] = [];
  for (const [i, s] of sides.entries()) {
    const other = sides[1 - i]!;
    const ct = await c.addNetns(`hb${i + 1}c`);
    containers.push(ct);
    const inNode = (argv: string[]) => ok(c.in(s.node.netns, argv), argv.join(' '));
    const inCt = (argv: string[]) => ok(c.in(ct, argv), argv.join(' '));
    await inNode(['sysctl', '-qw', 'net.ipv4.ip_forward=1']);
    // Seed 000, as written there (its MTU: the kernel's default for a VXLAN device, the underlay's less 50).
    await inNode(['ip', 'link', 'add', 'vxlan0', 'type', 'vxlan', 'id', '100', 'local', s.node.ip, 'remote', s.remote, 'dev', s.node.dev, 'dstport', '4789']);
    await inNode(['ip', 'link', 'set', 'vxlan0', 'up']);
    await inNode(['ip', 'addr', 'add', `${s.inner}/24`, 'dev', 'vxlan0']);
    await inNode(['ip', 'route', 'add', `${other.subnet}.0/24`, 'via', other.inner, 'dev', 'vxlan0']);
    // The container: a veth at the same MTU as ctnet's sandboxes, routed (no bridge).
    await inNode(['ip', 'link', 'add', 'veth0', 'mtu', '1450', 'type', 'veth', 'peer', 'name', 'eth0', 'mtu', '1450', 'netns', ct]);
    await inNode(['ip', 'addr', 'add', `${s.subnet}.1/24`, 'dev', 'veth0']);
    await inNode(['ip', 'link', 'set', 'veth0', 'up']);
    await inCt(['ip', 'addr', 'add', `${s.subnet}.2/24`, 'dev', 'eth0']);
    await inCt(['ip', 'link', 'set', 'eth0', 'up']);
    await inCt(['ip', 'route', 'add', 'default', 'via', `${s.subnet}.1`]);
  }
  return { client: containers[0]!, server: containers[1]!, serverIp: '10.60.2.2' };
}

async function main(): Promise<number> {
  const opts = optionsOrExit(parseOptions, USAGE);
  if (typeof opts === 'number') return opts;
  const { abort, interrupted } = trapSignals();
  const c = await ClusterLab.create({ hosts: 2 });
  let code = 0;
  try {
    progress('ctnet: an overlay network on two hosts, sandboxes cli (h1), srv (h2) and near (h1)');
    const [h1, h2] = c.hosts as [typeof c.hosts[0], typeof c.hosts[0]];
    const overlay = { vni: 42, port: 4789, cidr: '10.50.0.0/16' };
    const peers: Peer[] = [];
    for (const [i, h] of c.hosts.entries()) {
      await overlayAgent(h, ['create', 'ov', `10.50.${i + 1}.0/24`, JSON.stringify({ ...overlay, underlay: h.underlay })]);
      peers.push({ host: h.name, ...(await overlayAgent<Omit<Peer, 'host'>>(h, ['vtep', 'ov'])) });
    }
    for (const h of c.hosts) await overlayAgent(h, ['peers', 'ov', JSON.stringify(peers)]);
    await h2.lab.ctnetOk(['run', '-d', '--name', 'srv', '--network', 'ov', '--', 'iperf3', '-s']);
    await h1.lab.ctnetOk(['run', '-d', '--name', 'near', '--network', 'ov', '--', 'iperf3', '-s']);
    await h1.lab.ctnetOk(['create', 'cli', '--network', 'ov']);
    progress('hand-built: seed 000\'s VXLAN between two more namespaces on the same underlay');
    const hb = await handBuilt(c);
    await ok(c.in(hb.server, ['iperf3', '-s', '-D']), 'iperf3 -s (hand-built)');

    const iperf = (side: Side) => {
      const args = ['iperf3', '-t', String(opts.seconds), '-P', String(opts.parallel), '-J', '-c'];
      switch (side) {
        case 'ctnet': return h1.lab.ctnet(['exec', 'cli', '--', ...args, '10.50.2.2']);
        case 'one host': return h1.lab.ctnet(['exec', 'cli', '--', ...args, '10.50.1.2']);
        case 'hand-built': return c.in(hb.client, [...args, hb.serverIp]);
      }
    };
    // Until each server listens: a one-second test succeeds.
    for (const side of SIDES) {
      let r;
      for (let i = 0; i < 50 && (r = await iperf(side)).code !== 0; i++) await new Promise((res) => setTimeout(res, 200));
      if (r?.code !== 0) throw new Error(`iperf3 (${side}) never connected: ${r?.stdout.slice(0, 300)}`);
    }
    const load = loadAverage();
    const samples = new Map<Side, number[]>(SIDES.map((s) => [s, []]));
    for (let r = 0; r < opts.repeat; r++) {
      for (const side of sampleOrder(SIDES, r)) {
        if (abort.signal.aborted) return interrupted();
        progress(`${side}, test ${r + 1} of ${opts.repeat}`);
        const out = JSON.parse(await ok(iperf(side), `iperf3 (${side})`)) as { end: { sum_received: { bits_per_second: number } } };
        samples.get(side)!.push(out.end.sum_received.bits_per_second / 1e9);
      }
    }
    const gbps = Object.fromEntries(SIDES.map((s) => [s, median(samples.get(s)!)])) as Record<Side, number>;
    const result = {
      seconds: opts.seconds, repeat: opts.repeat, parallel: opts.parallel, underlayMtu: UNDERLAY.mtu, load,
      gbps, samples: Object.fromEntries(samples), ratios: { ctnetVsHandBuilt: gbps.ctnet / gbps['hand-built'], crossHostVsOneHost: gbps.ctnet / gbps['one host'] },
    };
    if (opts.json) process.stdout.write(JSON.stringify(result, null, 2) + '\n');
    else {
      const f = (x: number, d = 2) => x.toFixed(d);
      process.stdout.write(`iperf3 TCP sandbox -> sandbox, -P ${opts.parallel}, ${opts.seconds} s per test, median of ${opts.repeat}, sides in turn; ` +
        `underlay MTU ${UNDERLAY.mtu}, overlay MTU ${UNDERLAY.mtu - 50}; load before: ${result.load}\n`);
      process.stdout.write(table(['path', 'Gbit/s', 'samples'], SIDES.map((s) => [s, f(gbps[s]), samples.get(s)!.map((x) => f(x)).join(' ')])) + '\n');
      process.stdout.write(`ctnet / hand-built: ${f(result.ratios.ctnetVsHandBuilt, 3)}   ctnet across hosts / one host: ${f(result.ratios.crossHostVsOneHost, 3)}\n`);
    }
  } catch (e) {
    process.stderr.write(`bench: ${(e as Error).message}\n`);
    code = interrupted() || 1;
  } finally {
    progress('cleaning up');
    code ||= await destroyAll([c]);
  }
  return code;
}

process.exitCode = await main();
