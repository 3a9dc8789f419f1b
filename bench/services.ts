// Services (issue 17): new TCP connections per second from a sandbox to one backend sandbox, in one
// run, the sides taken in turn:
//   direct          to the backend's own address (the limit)
//   service x1      through a ctnet service's VIP; services4 holds 1 element
//   service x1000   the same VIP with 999 more services in services4 (elements leading to chains of
//                   their own, as `service create` makes them; their VIPs are not on the bridge: a
//                   packet's cost is the lookup)
//   iptables x1000  kube-proxy's iptables shape, built by hand in the lab host: a KUBE-SERVICES chain
//                   with one rule per service (999 that do not match, then ours) jumping to a
//                   KUBE-SVC chain whose endpoint rule uses -m statistic --mode random --probability
//                   as kube-proxy writes it (one endpoint here, as for the other sides)
// Reported: medians and the ratios to direct.
//
// As root: scripts/node bench/services.ts [--seconds 5] [--repeat 3] [--parallel 8]
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Lab, ROOT } from '../src/lab/lab.ts';
import { intOption, loadAverage, progress, quantile } from './lib.ts';

const NODE = join(ROOT, 'scripts', 'node');
const CONNRATE = join(ROOT, 'bench', 'connrate.ts');
const PORT = 7200;
const IPT_VIP = '10.84.0.250';

const argv = process.argv.slice(2);
const opt = (name: string) => { const i = argv.indexOf(name); return i >= 0 ? argv[i + 1] : undefined; };
const seconds = intOption('--seconds', opt('--seconds'), 5, 1, 60);
const repeat = intOption('--repeat', opt('--repeat'), 3, 1, 50);
const parallel = intOption('--parallel', opt('--parallel'), 8, 1, 64);

const lab = await Lab.create();
try {
  await lab.ctnetOk(['network', 'create', 's', '--subnet', '10.84.0.0/24']);
  await lab.ctnetOk(['run', '-d', '--name', 'srv', '--network', 's', '--label', 'app=b', '--', NODE, CONNRATE, 'serve', String(PORT)]);
  await lab.ctnetOk(['create', 'cli', '--network', 's']);
  const svc = JSON.parse(await lab.ctnetOk(['service', 'create', 'b', '--network', 's', '--port', '80', '--to', `label:app=b:${PORT}`, '--json'])) as { vip: string; backends: string[] };
  const backend = svc.backends[0]!;
  // 999 more services, as service create writes them (chain, rule, elements), in one nft file.
  const fillerFile = join(lab.stateDir, 'filler.nft');
  const chains = Array.from({ length: 999 }, (_, i) => ({ name: `svc_f${i}`, vip: `10.${200 + (i >> 8)}.${i & 255}.1` }));
  writeFileSync(fillerFile, [
    ...chains.flatMap((c) => [`add chain inet ctnet ${c.name}`, `add rule inet ctnet ${c.name} meta l4proto tcp dnat ip to numgen random mod 1 map { 0 : ${backend} . ${PORT} }`]),
    ...chains.map((c) => `add element inet ctnet services4 { ${c.vip} . tcp . 80 : goto ${c.name} }`),
  ].join('\n') + '\n');
  const dropFile = join(lab.stateDir, 'filler-drop.nft');
  writeFileSync(dropFile, [...chains.map((c) => `delete element inet ctnet services4 { ${c.vip} . tcp . 80 }`), ...chains.map((c) => `delete chain inet ctnet ${c.name}`)].join('\n') + '\n');
  // kube-proxy's shape: KUBE-SERVICES, one rule per service, ours last (the connection walks them all).
  const iptFile = join(lab.stateDir, 'kube.rules');
  writeFileSync(iptFile, [
    '*nat', ':KUBE-SERVICES - [0:0]', ':KUBE-SVC-B - [0:0]', ':KUBE-SEP-B - [0:0]',
    '-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
    ...chains.map((c, i) => `-A KUBE-SERVICES -d ${c.vip}/32 -p tcp -m comment --comment "f/${i}" -m tcp --dport 80 -j KUBE-SVC-B`),
    `-A KUBE-SERVICES -d ${IPT_VIP}/32 -p tcp -m comment --comment "b" -m tcp --dport 80 -j KUBE-SVC-B`,
    '-A KUBE-SVC-B -m comment --comment "b -> endpoint 1" -m statistic --mode random --probability 1.00000000000 -j KUBE-SEP-B',
    `-A KUBE-SEP-B -p tcp -m tcp -j DNAT --to-destination ${backend}:${PORT}`,
    'COMMIT', '',
  ].join('\n'));
  await lab.inHost(['ip', 'addr', 'add', `${IPT_VIP}/32`, 'dev', 'ctbr-s']);
  const okOrThrow = async (argv: string[]) => {
    const r = await lab.inHost(argv);
    if (r.code !== 0) throw new Error(`${argv.join(' ')}: ${r.stderr}`);
  };
  let state: 'none' | 'filler' | 'iptables' = 'none';
  const to = async (want: typeof state) => {
    if (state === want) return;
    if (state === 'filler') await okOrThrow(['nft', '-f', dropFile]);
    if (state === 'iptables') await okOrThrow(['sh', '-c', 'iptables -t nat -D PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES && iptables -t nat -F KUBE-SERVICES && iptables -t nat -F KUBE-SVC-B && iptables -t nat -F KUBE-SEP-B && iptables -t nat -X KUBE-SERVICES && iptables -t nat -X KUBE-SVC-B && iptables -t nat -X KUBE-SEP-B']);
    if (want === 'filler') await okOrThrow(['nft', '-f', fillerFile]);
    if (want === 'iptables') await okOrThrow(['sh', '-c', `iptables-restore --noflush < ${iptFile}`]);
    state = want;
  };
  const sides = {
    'direct': { target: backend, port: PORT, setup: () => to('none') },
    'service x1': { target: svc.vip, port: 80, setup: () => to('none') },
    'service x1000': { target: svc.vip, port: 80, setup: () => to('filler') },
    'iptables x1000': { target: IPT_VIP, port: 80, setup: () => to('iptables') },
  } as const;
  const names = Object.keys(sides) as (keyof typeof sides)[];
  const samples = new Map(names.map((n) => [n, [] as number[]]));
  for (let r = 0; r < repeat; r++) {
    for (const name of [...names.slice(r % names.length), ...names.slice(0, r % names.length)]) {
      const side = sides[name];
      await side.setup();
      await lab.inHost(['conntrack', '-D', '-p', 'tcp']); // the lab host's own table: this sample's flows only
      const out = await lab.ctnetOk(['exec', 'cli', '--', NODE, CONNRATE, 'connect', side.target, String(side.port), String(seconds), String(parallel)]);
      const { connections, seconds: s } = JSON.parse(out) as { connections: number; seconds: number };
      samples.get(name)!.push(connections / s);
      progress(`${name}: ${(connections / s).toFixed(0)} connections/s`);
    }
  }
  await to('none');
  const med = (xs: number[]) => quantile([...xs].sort((a, b) => a - b), 0.5);
  const base = med(samples.get('direct')!);
  console.log(`bench/services.ts --seconds ${seconds} --repeat ${repeat} --parallel ${parallel} (load ${loadAverage()})`);
  console.log('side             conn/s (median)   ratio to direct   samples');
  for (const n of names) {
    const m = med(samples.get(n)!);
    console.log(`${n.padEnd(16)} ${m.toFixed(0).padStart(15)}   ${(m / base).toFixed(2).padStart(15)}   ${samples.get(n)!.map((x) => x.toFixed(0)).join(' ')}`);
  }
  const x1 = med(samples.get('service x1')!);
  console.log(`service x1000 / service x1: ${(med(samples.get('service x1000')!) / x1).toFixed(2)}; iptables x1000 / service x1: ${(med(samples.get('iptables x1000')!) / x1).toFixed(2)}`);
} finally {
  await lab.destroy();
}
