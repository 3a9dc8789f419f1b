// Benchmark: ctnetd's DNS server (issue 15) against aardvark-dns 1.4 (Debian's, podman's DNS server)
// and dnsmasq (a C server answering the same names from a hosts file: the practical limit here),
// side by side in one lab run, queried with dnsperf from a sandbox on each server's network.
//
// 1. Throughput and latency for local names: dnsperf -q 100 for --seconds, the three servers in
//    turns (--rounds), queries for every name in random order. QPS, p50/p99 (from dnsperf -v's
//    per-query latencies), lost queries. Forwarded names too, ctnet against dnsmasq asked directly
//    (the upstream: aardvark 1.4 cannot be given one but the host's resolv.conf).
// 2. Churn: dnsperf at a fixed rate (--rate) for names that stay, while sandboxes are created and
//    removed one after another (ctnet) / while aardvark's config is rewritten and SIGHUPed every
//    200 ms (what netavark does for each container). Lost queries and answers other than NOERROR.
// 3. Memory: resident size of ctnetd and of aardvark-dns with --names names.
//
//   scripts/node bench/dns.ts [--names N] [--seconds S] [--rounds R] [--rate QPS]
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { Lab, ROOT, UPLINK } from '../src/lab/lab.ts';
import { intOption, progress, quantile } from './lib.ts';

const AARDVARK = '/usr/lib/podman/aardvark-dns';
const { values } = parseArgs({
  options: {
    names: { type: 'string' }, seconds: { type: 'string' }, rounds: { type: 'string' }, rate: { type: 'string' }, churn: { type: 'string' },
  },
});
const NAMES = intOption('names', values.names, 100, 2, 1000);
const SECONDS = intOption('seconds', values.seconds, 5, 1, 120);
const ROUNDS = intOption('rounds', values.rounds, 3, 1, 20);
const RATE = intOption('rate', values.rate, 2000, 10, 100000);
for (const tool of ['/usr/bin/dnsperf', '/usr/sbin/dnsmasq', AARDVARK]) {
  if (!existsSync(tool)) throw new Error(`${tool} is missing: run scripts/install.sh (dnsperf, dnsmasq-base, aardvark-dns)`);
}

interface Perf {
  readonly qps: number;
  readonly sent: number;
  readonly lost: number;
  readonly p50: number;
  readonly p99: number;
  /** Answers by rcode. */
  readonly rcodes: Record<string, number>;
}

const lab = await Lab.create();
try {
  const dir = join(lab.stateDir, 'bench');
  mkdirSync(dir, { recursive: true });
  // The upstream for forwarded names: dnsmasq in the world.
  spawn('nsenter', [`--net=/run/netns/${lab.world}`, 'dnsmasq', '--keep-in-foreground', '--no-resolv', '--no-hosts', '--conf-file=/dev/null',
    '--user=root', '--pid-file=', `--listen-address=${UPLINK.world4}`, '--bind-interfaces', '--address=/upstream.test/203.0.113.10', '--cache-size=0'],
  { stdio: 'ignore', detached: true }).unref();
  // ctnet's network; the peers' networks only give them a gateway address to listen on (DNS off,
  // host access on so their clients reach it).
  await lab.ctnetOk(['network', 'create', 'cn', '--subnet', '10.70.0.0/20', '--dns-forward', UPLINK.world4]);
  await lab.ctnetOk(['network', 'create', 'an', '--subnet', '10.71.0.0/24', '--dns', 'off', '--host-access']);
  await lab.ctnetOk(['network', 'create', 'dn', '--subnet', '10.72.0.0/24', '--dns', 'off', '--host-access']);
  const log = join(lab.stateDir, 'ctnetd.log');
  spawn('nsenter', [`--net=/run/netns/${lab.host}`, join(ROOT, 'bin', 'ctnet'), 'daemon'], {
    // No per-client limit: one dnsperf client measures the server, as for the peers (which have none).
    env: { ...process.env, CTNET_STATE_DIR: lab.stateDir, CTNET_DNS_CLIENT_QPS: '0' }, stdio: ['ignore', 'ignore', 'ignore'], detached: true,
  }).unref();
  // Memory: what ctnetd holds before any name, to tell the node agent's own size from the names'.
  const smaps = (pid: number) => {
    const text = readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8');
    const kib = (k: string) => Number(new RegExp(`^${k}:\\s+(\\d+) kB`, 'm').exec(text)?.[1] ?? NaN);
    return { rss_kib: kib('Rss'), anonymous_kib: kib('Anonymous'), file_kib: kib('Rss') - kib('Anonymous') };
  };
  const pidFile = join(lab.stateDir, 'ctnetd.pid');
  for (let i = 0; i < 300 && !existsSync(pidFile); i++) await new Promise((r) => setTimeout(r, 100));
  await new Promise((r) => setTimeout(r, 2000)); // its services started
  const ctnetdEmpty = smaps(Number(readFileSync(pidFile, 'utf8').trim()));
  // The runtime alone: the same node, idle, nothing loaded.
  const bare = spawn(process.execPath, ['-e', 'setInterval(() => {}, 1000)'], { stdio: 'ignore' });
  await new Promise((r) => setTimeout(r, 1500));
  const nodeBare = smaps(bare.pid!);
  bare.kill();
  progress(`creating ${NAMES} sandboxes`);
  const names = Array.from({ length: NAMES }, (_, i) => `s${i}`);
  for (const n of names) await lab.ctnetOk(['create', n, '--network', 'cn']);
  for (const [c, net] of [['cclient', 'cn'], ['aclient', 'an'], ['dclient', 'dn']] as const) await lab.ctnetOk(['create', c, '--network', net]);
  const ls = JSON.parse(await lab.ctnetOk(['ls', '--json'])) as { name: string; addresses: string[] }[];
  const ipOf = new Map(ls.map((r) => [r.name, r.addresses.map((a) => a.split('/')[0]!)[0]!]));
  for (let i = 0; i < 600 && !(existsSync(log) && readFileSync(log, 'utf8').includes('on 10.70.0.1 port 53')); i++) await new Promise((r) => setTimeout(r, 100));

  // aardvark-dns: the same names, on an's gateway. Its config (one file per network): the listen
  // addresses, then "ID IPV4S IPV6S NAMES" per container.
  const aconf = join(dir, 'aardvark');
  mkdirSync(aconf, { recursive: true });
  const writeAardvark = (list: readonly string[]) => writeFileSync(join(aconf, 'an'),
    `10.71.0.1\n${list.map((n, i) => `${i.toString(16).padStart(64, '0')} ${ipOf.get(n) ?? `10.70.9.${i % 250}`}  ${n}`).join('\n')}\n`);
  writeAardvark(names);
  // aardvark 1.4 forks into the background and writes its pid into the config directory.
  await lab.inHost([AARDVARK, '--config', aconf, '-p', '53', 'run']);
  // dnsmasq, the C reference: the same names from a hosts file, on dn's gateway, no cache games.
  const hosts = join(dir, 'hosts');
  writeFileSync(hosts, names.map((n) => `${ipOf.get(n)} ${n}`).join('\n') + '\n');
  spawn('nsenter', [`--net=/run/netns/${lab.host}`, 'dnsmasq', '--keep-in-foreground', '--no-resolv', '--no-hosts', '--conf-file=/dev/null',
    '--user=root', '--pid-file=', '--listen-address=10.72.0.1', '--bind-interfaces', `--addn-hosts=${hosts}`, `--server=${UPLINK.world4}`],
  { stdio: 'ignore', detached: true }).unref();

  const servers = { ctnet: { client: 'cclient', ip: '10.70.0.1' }, aardvark: { client: 'aclient', ip: '10.71.0.1' }, dnsmasq: { client: 'dclient', ip: '10.72.0.1' } } as const;
  type Side = keyof typeof servers;
  for (const side of Object.keys(servers) as Side[]) {
    const s = servers[side];
    for (let i = 0; i < 100; i++) {
      const r = await lab.ctnet(['exec', s.client, '--', 'dig', `@${s.ip}`, '+tries=1', '+time=1', '+short', 's0']);
      if (r.stdout.trim() === ipOf.get('s0')) break;
      if (i === 99) throw new Error(`${side} does not answer s0 on ${s.ip}: ${r.stdout}${r.stderr}`);
      await new Promise((res) => setTimeout(res, 200));
    }
  }

  const queryFile = (file: string, lines: readonly string[]) => {
    const path = join(dir, file);
    writeFileSync(path, lines.join('\n') + '\n');
    return path;
  };
  const shuffled = [...names].sort(() => Math.random() - 0.5);
  const localQueries = queryFile('local.txt', shuffled.map((n) => `${n} A`));
  const fwdQueries = queryFile('forward.txt', Array.from({ length: 200 }, (_, i) => `n${i}.upstream.test A`));

  /** dnsperf from a sandbox; per-query latencies from -v. */
  const perf = async (client: string, server: string, file: string, args: readonly string[]): Promise<Perf> => {
    const r = await lab.ctnet(['exec', client, '--', 'dnsperf', '-s', server, '-d', file, '-v', ...args]);
    const text = r.stdout + r.stderr;
    const num = (re: RegExp) => Number(re.exec(text)?.[1] ?? NaN);
    const lat: number[] = [];
    const rcodes: Record<string, number> = {};
    for (const m of text.matchAll(/^> (\w+) \S+ \S+ ([\d.]+)$/gm)) {
      rcodes[m[1]!] = (rcodes[m[1]!] ?? 0) + 1;
      lat.push(Number(m[2]) * 1000);
    }
    lat.sort((a, b) => a - b);
    return {
      qps: num(/Queries per second:\s+([\d.]+)/), sent: num(/Queries sent:\s+(\d+)/), lost: num(/Queries lost:\s+(\d+)/),
      p50: lat.length ? quantile(lat, 0.5) : NaN, p99: lat.length ? quantile(lat, 0.99) : NaN, rcodes,
    };
  };

  // 1. Throughput, in turns.
  const runs: Record<string, Perf[]> = {};
  const add = (k: string, p: Perf) => (runs[k] ??= []).push(p);
  for (let round = 0; round < ROUNDS; round++) {
    progress(`round ${round + 1}/${ROUNDS}`);
    for (const side of Object.keys(servers) as Side[]) {
      add(`local ${side}`, await perf(servers[side].client, servers[side].ip, localQueries, ['-l', String(SECONDS), '-q', '100']));
    }
    add('forward ctnet', await perf('cclient', '10.70.0.1', fwdQueries, ['-l', String(SECONDS), '-q', '100']));
    add('forward dnsmasq (world, direct)', await perf('cclient', UPLINK.world4, fwdQueries, ['-l', String(SECONDS), '-q', '100']));
  }
  const median = (xs: number[]) => quantile([...xs].sort((a, b) => a - b), 0.5);
  const summary = Object.fromEntries(Object.entries(runs).map(([k, ps]) => [k, {
    qps: Math.round(median(ps.map((p) => p.qps))), p50_ms: +median(ps.map((p) => p.p50)).toFixed(3), p99_ms: +median(ps.map((p) => p.p99)).toFixed(3),
    lost: ps.reduce((a, p) => a + p.lost, 0), sent: ps.reduce((a, p) => a + p.sent, 0),
  }]));

  // 3. Memory, before the churn.
  const rss = (pid: number) => Number(/VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? NaN);
  const ctnetdPid = Number(readFileSync(join(lab.stateDir, 'ctnetd.pid'), 'utf8').trim());
  const aardvarkPid = Number(readFileSync(join(aconf, 'aardvark.pid'), 'utf8').trim());
  const memory = {
    ctnetd_kib: rss(ctnetdPid), aardvark_kib: rss(aardvarkPid), names: NAMES,
    // After the names and the throughput runs; before any name; an idle node with nothing loaded.
    ctnetd_after: smaps(ctnetdPid), ctnetd_no_names: ctnetdEmpty, node_idle: nodeBare,
  };

  // 2. Churn: a fixed rate for names that stay, while sandboxes come and go / the config is reloaded.
  const stay = queryFile('stay.txt', shuffled.slice(0, Math.min(50, NAMES)).map((n) => `${n} A`));
  const churnSeconds = Math.max(SECONDS * 4, 20);
  progress(`churn: sandboxes created and removed on ctnet, aardvark's config rewritten and reloaded, for ${churnSeconds} s each at ${RATE} qps`);
  /** Runs change() over and over while dnsperf runs; returns its result and how many changes were made. */
  const during = async (client: string, server: string, change: (i: number) => Promise<void>) => {
    let done = false;
    const t = perf(client, server, stay, ['-l', String(churnSeconds), '-Q', String(RATE), '-q', '200']).finally(() => (done = true));
    let changes = 0;
    while (!done) await change(changes++);
    return { ...(await t), changes };
  };
  const ctnetChurned = await during('cclient', '10.70.0.1', async (i) => {
    await lab.ctnetOk(['create', `churn${i}`, '--network', 'cn']);
    await lab.ctnetOk(['rm', `churn${i}`]);
  });
  const aardvarkChurned = await during('aclient', '10.71.0.1', async (i) => {
    // What netavark does for each container started or stopped: rewrite the file, SIGHUP.
    writeAardvark(i % 2 ? names : [...names, `churn${i}`]);
    process.kill(aardvarkPid, 'SIGHUP');
    await new Promise((r) => setTimeout(r, 200));
  });
  const churn = Object.fromEntries(([['ctnet', ctnetChurned], ['aardvark', aardvarkChurned]] as const).map(([k, p]) => [k, {
    changes: p.changes, sent: p.sent, lost: p.lost, not_noerror: Object.entries(p.rcodes).filter(([c]) => c !== 'NOERROR').reduce((a, [, n]) => a + n, 0), rcodes: p.rcodes,
  }]));

  const ratio = (a: number, b: number) => +(a / b).toFixed(2);
  const ratios = {
    'qps ctnet/aardvark (local)': ratio(summary['local ctnet']!.qps, summary['local aardvark']!.qps),
    'qps ctnet/dnsmasq (local)': ratio(summary['local ctnet']!.qps, summary['local dnsmasq']!.qps),
    'p50 ctnet/aardvark (local)': ratio(summary['local ctnet']!.p50_ms, summary['local aardvark']!.p50_ms),
    'p99 ctnet/aardvark (local)': ratio(summary['local ctnet']!.p99_ms, summary['local aardvark']!.p99_ms),
    'qps ctnet forward/dnsmasq direct': ratio(summary['forward ctnet']!.qps, summary['forward dnsmasq (world, direct)']!.qps),
  };
  process.stdout.write(`${JSON.stringify({ names: NAMES, seconds: SECONDS, rounds: ROUNDS, summary, ratios, churn, memory }, null, 2)}\n`);
} finally {
  await lab.ctnet(['daemon', 'stop']);
  await lab.destroy();
}
