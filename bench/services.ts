// Services (issue 17): new TCP connections per second, and connect-to-answer p50/p99, from a sandbox
// to one backend sandbox, in one run, the sides taken in turn:
//   direct                 to the backend's own address (the limit), routed from the client's network
//   ctnet S svc / B be     through a ctnet service's VIP with S services in services4 (S-1 more as
//                          `service create` makes them: a chain with its rule and an element each;
//                          their VIPs are not on the bridge: a packet's cost is the lookup), our
//                          service's rule holding B backends (all the one real server: the cost of
//                          a B-element map, not of B servers)
//   iptables S svc / B be  kube-proxy's iptables shape built by hand in the lab host: KUBE-SERVICES
//                          with one rule per service (S-1 that do not match, then ours) jumping to a
//                          KUBE-SVC chain of B endpoint rules `-m statistic --mode random
//                          --probability 1/(B-i)` as kube-proxy writes them, each to a KUBE-SEP DNAT
// with S in {10, --services} and B in {1, 100} (--backends). Reported: medians and ratios.
//
// As root: scripts/node bench/services.ts [--seconds 5] [--repeat 3] [--parallel 8] [--services 10000] [--backends 100]
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
const MANY = intOption('--services', opt('--services'), 10_000, 11, 60_000);
const WIDE = intOption('--backends', opt('--backends'), 100, 2, 1000);
const FEW = 10;

const lab = await Lab.create();
try {
  await lab.ctnetOk(['network', 'create', 's', '--subnet', '10.84.0.0/24']);
  await lab.ctnetOk(['run', '-d', '--name', 'srv', '--network', 's', '--label', 'app=b', '--', NODE, CONNRATE, 'serve', String(PORT)]);
  // The client on a network of its own, allowed to the backend by policy: routed like a client of
  // another network, and not masqueraded. (On the backend's bridge every flow through a VIP is
  // masqueraded to the gateway; with conntrack cleared between samples the masquerade reused ports
  // the server still held in TIME_WAIT, and every side after the first round collapsed.)
  await lab.ctnetOk(['network', 'create', 'c', '--subnet', '10.85.0.0/24']);
  await lab.ctnetOk(['create', 'cli', '--network', 'c']);
  // The client's namespace only (the lab's): reuse its own TIME_WAIT ports, and more of them.
  await lab.ctnetOk(['exec', 'cli', '--', 'sysctl', '-q', '-w', 'net.ipv4.tcp_tw_reuse=1', 'net.ipv4.ip_local_port_range=1024 65000']);
  await lab.ctnetOk(['policy', 'allow', '--from', 'cli', '--to', 'label:app=b', '--port', `${PORT}/tcp`]);
  const svc = JSON.parse(await lab.ctnetOk(['service', 'create', 'b', '--network', 's', '--port', '80', '--to', `label:app=b:${PORT}`, '--json'])) as { vip: string; backends: string[] };
  const backend = svc.backends[0]!;
  const file = (name: string, lines: string[]) => { const f = join(lab.stateDir, name); writeFileSync(f, lines.join('\n') + '\n'); return f; };
  const okOrThrow = async (argv: string[]) => {
    const r = await lab.inHost(argv);
    if (r.code !== 0) throw new Error(`${argv.join(' ')}: ${r.stderr}`);
  };
  // Other services, as service create writes them (chain, rule, element), in one nft file each way.
  const fillers = (n: number) => Array.from({ length: n }, (_, i) => ({ name: `svc_f${i}`, vip: `10.${200 + (i >> 16)}.${(i >> 8) & 255}.${i & 255}` }));
  const fillerFiles = new Map([FEW - 1, MANY - 1].map((n) => {
    const chains = fillers(n);
    return [n, {
      add: file(`filler-${n}.nft`, [
        ...chains.flatMap((c) => [`add chain inet ctnet ${c.name}`, `add rule inet ctnet ${c.name} meta l4proto tcp dnat ip to numgen random mod 1 map { 0 : ${backend} . ${PORT} }`]),
        ...chains.map((c) => `add element inet ctnet services4 { ${c.vip} . tcp . 80 : goto ${c.name} }`),
      ]),
      drop: file(`filler-${n}-drop.nft`, [...chains.map((c) => `delete element inet ctnet services4 { ${c.vip} . tcp . 80 }`), ...chains.map((c) => `delete chain inet ctnet ${c.name}`)]),
    }];
  }));
  // Our service's rule with B backends (every one the real server), in place of ctnet's own.
  const ruleWith = (b: number) => file(`svc-b-${b}.nft`, ['flush chain inet ctnet svc_b',
    `add rule inet ctnet svc_b meta l4proto tcp counter dnat ip to numgen random mod ${b} map { ${Array.from({ length: b }, (_, i) => `${i} : ${backend} . ${PORT}`).join(', ')} }`]);
  const backendFiles = new Map([1, WIDE].map((b) => [b, ruleWith(b)]));
  // kube-proxy's shape: KUBE-SERVICES, one rule per service, ours last (a connection walks them all).
  const iptFile = (s: number, b: number) => file(`kube-${s}-${b}.rules`, [
    '*nat', ':KUBE-SERVICES - [0:0]', ':KUBE-SVC-B - [0:0]', ':KUBE-SEP-B - [0:0]',
    '-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
    ...fillers(s - 1).map((c, i) => `-A KUBE-SERVICES -d ${c.vip}/32 -p tcp -m comment --comment "f/${i}" -m tcp --dport 80 -j KUBE-SVC-B`),
    `-A KUBE-SERVICES -d ${IPT_VIP}/32 -p tcp -m comment --comment "b" -m tcp --dport 80 -j KUBE-SVC-B`,
    ...Array.from({ length: b }, (_, i) => `-A KUBE-SVC-B -m comment --comment "b -> endpoint ${i + 1}" -m statistic --mode random --probability ${(1 / (b - i)).toFixed(11)} -j KUBE-SEP-B`),
    `-A KUBE-SEP-B -p tcp -m tcp -j DNAT --to-destination ${backend}:${PORT}`,
    'COMMIT', '',
  ]);
  await lab.inHost(['ip', 'addr', 'add', `${IPT_VIP}/32`, 'dev', 'ctbr-s']);

  type State = { kind: 'none' } | { kind: 'ctnet' | 'iptables'; services: number; backends: number };
  let state: State = { kind: 'none' };
  const key = (s: State) => JSON.stringify(s);
  const to = async (want: State) => {
    if (key(state) === key(want)) return;
    if (state.kind === 'ctnet') {
      if (state.services > 1) await okOrThrow(['nft', '-f', fillerFiles.get(state.services - 1)!.drop]);
      if (state.backends !== 1) await okOrThrow(['nft', '-f', backendFiles.get(1)!]);
    }
    if (state.kind === 'iptables') {
      await okOrThrow(['sh', '-c', 'iptables -t nat -D PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES && iptables -t nat -F KUBE-SERVICES && iptables -t nat -F KUBE-SVC-B && iptables -t nat -F KUBE-SEP-B && iptables -t nat -X KUBE-SERVICES && iptables -t nat -X KUBE-SVC-B && iptables -t nat -X KUBE-SEP-B']);
    }
    if (want.kind === 'ctnet') {
      if (want.services > 1) await okOrThrow(['nft', '-f', fillerFiles.get(want.services - 1)!.add]);
      if (want.backends !== 1) await okOrThrow(['nft', '-f', backendFiles.get(want.backends)!]);
    }
    if (want.kind === 'iptables') await okOrThrow(['sh', '-c', `iptables-restore --noflush < ${iptFile(want.services, want.backends)}`]);
    state = want;
  };
  const sides: Record<string, { target: string; port: number; state: State }> = {
    'direct': { target: backend, port: PORT, state: { kind: 'none' } },
    [`ctnet ${FEW}/1`]: { target: svc.vip, port: 80, state: { kind: 'ctnet', services: FEW, backends: 1 } },
    [`ctnet ${MANY}/1`]: { target: svc.vip, port: 80, state: { kind: 'ctnet', services: MANY, backends: 1 } },
    [`ctnet ${MANY}/${WIDE}`]: { target: svc.vip, port: 80, state: { kind: 'ctnet', services: MANY, backends: WIDE } },
    [`iptables ${FEW}/1`]: { target: IPT_VIP, port: 80, state: { kind: 'iptables', services: FEW, backends: 1 } },
    [`iptables ${MANY}/1`]: { target: IPT_VIP, port: 80, state: { kind: 'iptables', services: MANY, backends: 1 } },
    [`iptables ${MANY}/${WIDE}`]: { target: IPT_VIP, port: 80, state: { kind: 'iptables', services: MANY, backends: WIDE } },
  };
  const names = Object.keys(sides);
  const samples = new Map(names.map((n) => [n, [] as { rate: number; p50: number; p99: number }[]]));
  for (let r = 0; r < repeat; r++) {
    for (const name of [...names.slice(r % names.length), ...names.slice(0, r % names.length)]) {
      const side = sides[name]!;
      await to(side.state);
      await lab.inHost(['conntrack', '-D', '-p', 'tcp']); // the lab host's own table: this sample's flows only
      const out = await lab.ctnetOk(['exec', 'cli', '--', NODE, CONNRATE, 'connect', side.target, String(side.port), String(seconds), String(parallel)]);
      const { connections, seconds: s, p50Ms, p99Ms } = JSON.parse(out) as { connections: number; seconds: number; p50Ms: number; p99Ms: number };
      samples.get(name)!.push({ rate: connections / s, p50: p50Ms, p99: p99Ms });
      progress(`${name}: ${(connections / s).toFixed(0)} connections/s, p50 ${p50Ms} ms, p99 ${p99Ms} ms`);
    }
  }
  await to({ kind: 'none' });
  const med = (xs: number[]) => quantile([...xs].sort((a, b) => a - b), 0.5);
  const m = (n: string, f: 'rate' | 'p50' | 'p99') => med(samples.get(n)!.map((x) => x[f]));
  const base = m('direct', 'rate');
  console.log(`bench/services.ts --seconds ${seconds} --repeat ${repeat} --parallel ${parallel} --services ${MANY} --backends ${WIDE} (load ${loadAverage()})`);
  console.log('side (services/backends)   conn/s (median)   ratio to direct   p50 ms   p99 ms   rates');
  for (const n of names) {
    console.log(`${n.padEnd(26)} ${m(n, 'rate').toFixed(0).padStart(15)}   ${(m(n, 'rate') / base).toFixed(2).padStart(15)}   ${m(n, 'p50').toFixed(2).padStart(6)}   ${m(n, 'p99').toFixed(2).padStart(6)}   ${samples.get(n)!.map((x) => x.rate.toFixed(0)).join(' ')}`);
  }
  const ratio = (a: string, b: string) => (m(a, 'rate') / m(b, 'rate')).toFixed(2);
  console.log(`ctnet ${MANY}/1 over ${FEW}/1: ${ratio(`ctnet ${MANY}/1`, `ctnet ${FEW}/1`)}; ctnet ${MANY}/${WIDE} over ${FEW}/1: ${ratio(`ctnet ${MANY}/${WIDE}`, `ctnet ${FEW}/1`)}`);
  console.log(`iptables ${MANY}/1 over ${FEW}/1: ${ratio(`iptables ${MANY}/1`, `iptables ${FEW}/1`)}; iptables ${MANY}/${WIDE} over ${FEW}/1: ${ratio(`iptables ${MANY}/${WIDE}`, `iptables ${FEW}/1`)}`);
} finally {
  await lab.destroy();
}
