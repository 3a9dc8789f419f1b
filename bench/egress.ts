// Egress SNAT by map (issue 18, point 1): new TCP connections per second from a sandbox to a server
// in the lab's world, in one run, taken in turn:
//   masquerade    the network has no --egress-ip (ctnet's rule before this change, and Docker's)
//   egress x1     network update --egress-ip: the egress_network4 map holds 1 element
//   egress x1000  the same, with 999 more elements in the map: what 1,000 networks with their own
//                 address put there (their bridges are not made: a packet's cost is the lookup)
// Reported: medians and the ratios to masquerade (the goal: flat, ~1.0).
//
// As root: scripts/node bench/egress.ts [--seconds 5] [--repeat 5] [--parallel 8]
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { Lab, ROOT, UPLINK } from '../src/lab/lab.ts';
import { intOption, loadAverage, progress, quantile } from './lib.ts';

const NODE = join(ROOT, 'scripts', 'node');
const CONNRATE = join(ROOT, 'bench', 'connrate.ts');
const EXTRA = '198.51.100.71';
const PORT = 7100;

const argv = process.argv.slice(2);
const opt = (name: string) => { const i = argv.indexOf(name); return i >= 0 ? argv[i + 1] : undefined; };
const seconds = intOption('--seconds', opt('--seconds'), 5, 1, 60);
const repeat = intOption('--repeat', opt('--repeat'), 5, 1, 50);
const parallel = intOption('--parallel', opt('--parallel'), 8, 1, 64);

const lab = await Lab.create();
const server = spawn('nsenter', [`--net=/run/netns/${lab.world}`, NODE, CONNRATE, 'serve', String(PORT)], { stdio: 'ignore' });
const filler = Array.from({ length: 999 }, (_, i) => `10.${200 + (i >> 8)}.${i & 255}.0/24 : ${EXTRA}`);
try {
  await lab.inHost(['ip', 'addr', 'add', `${EXTRA}/32`, 'dev', 'uplink0']);
  await lab.ctnetOk(['network', 'create', 'e', '--subnet', '10.83.0.0/24']);
  await lab.ctnetOk(['create', 'cli', '--network', 'e']);
  await new Promise((r) => setTimeout(r, 500));
  let fillerIn = false;
  const filler_ = async (verb: 'add' | 'delete') => {
    if ((verb === 'add') === fillerIn) return;
    for (let i = 0; i < filler.length; i += 250) {
      const part = filler.slice(i, i + 250).map((e) => (verb === 'add' ? e : e.split(' : ')[0]));
      await lab.inHost(['nft', `${verb} element inet ctnet egress_network4 { ${part.join(', ')} }`]);
    }
    fillerIn = verb === 'add';
  };
  const modes = {
    'masquerade': async () => { await filler_('delete'); await lab.ctnetOk(['network', 'update', 'e', '--no-egress-ip']); },
    'egress x1': async () => { await filler_('delete'); await lab.ctnetOk(['network', 'update', 'e', '--egress-ip', EXTRA]); },
    'egress x1000': async () => { await lab.ctnetOk(['network', 'update', 'e', '--egress-ip', EXTRA]); await filler_('add'); },
  } as const;
  const names = Object.keys(modes) as (keyof typeof modes)[];
  const samples = new Map(names.map((n) => [n, [] as number[]]));
  const seen = new Map<string, string>();
  for (let r = 0; r < repeat; r++) {
    for (const name of [...names.slice(r % names.length), ...names.slice(0, r % names.length)]) {
      await modes[name]();
      await lab.inHost(['conntrack', '-D', '-p', 'tcp', '--dport', String(PORT)]); // the lab host's own table: this sample's flows only
      const out = await lab.ctnetOk(['exec', 'cli', '--', NODE, CONNRATE, 'connect', UPLINK.remote4, String(PORT), String(seconds), String(parallel)]);
      const { connections, seconds: s } = JSON.parse(out) as { connections: number; seconds: number };
      samples.get(name)!.push(connections / s);
      // The address the world saw (the reply tuple's destination): the path measured is the one meant.
      const ct = (await lab.inHost(['conntrack', '-L', '-p', 'tcp', '--dport', String(PORT)])).stdout;
      const re = new RegExp(`src=${UPLINK.remote4.replace(/\./g, '\\.')} dst=(\\S+) sport=${PORT} `);
      const dsts = new Set(ct.split('\n').flatMap((l) => re.exec(l)?.[1] ?? []));
      seen.set(name, [...dsts].join(',') || '?');
      progress(`${name}: ${(connections / s).toFixed(0)} connections/s`);
    }
  }
  const med = (xs: number[]) => quantile([...xs].sort((a, b) => a - b), 0.5);
  const base = med(samples.get('masquerade')!);
  console.log(`bench/egress.ts --seconds ${seconds} --repeat ${repeat} --parallel ${parallel} (load ${loadAverage()})`);
  console.log('mode            world sees        conn/s (median)   ratio to masquerade   samples');
  for (const n of names) {
    const m = med(samples.get(n)!);
    console.log(`${n.padEnd(15)} ${(seen.get(n) ?? '?').padEnd(15)} ${m.toFixed(0).padStart(17)}   ${(m / base).toFixed(2).padStart(19)}   ${samples.get(n)!.map((x) => x.toFixed(0)).join(' ')}`);
  }
} finally {
  server.kill();
  await lab.destroy();
}
