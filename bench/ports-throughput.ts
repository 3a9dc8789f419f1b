// Benchmark: bulk TCP throughput (iperf3) from the lab's world namespace into a sandbox over three
// paths: the published port (kernel DNAT by ctnet), the sandbox address routed directly (no NAT),
// and a userland proxy (socat, standing in for docker-proxy). See bench/README.md.
//
//   scripts/node bench/ports-throughput.ts [--seconds N] [--repeat N] [--json]
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { cpus, release } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { table } from '../src/cli/table.ts';
import { Lab, ROOT, UPLINK } from '../src/lab/lab.ts';
import { intOption, optionsOrExit, progress, trapSignals } from './lib.ts';

const DEFAULT_SECONDS = 5;
const DEFAULT_REPEAT = 3;
const NETWORK = 'bench';
const SUBNET = '10.200.0.0/24';
const IPERF_PORT = 5201;
/** The published port: lab host 198.51.100.2:5201 -> sandbox :5201. */
const PUBLISHED_PORT = 5201;
/** Where the userland proxy listens in the lab host. */
const PROXY_PORT = 5202;

// ---------------------------------------------------------------------------------------------
// Options

interface Options {
  readonly seconds: number;
  readonly repeat: number;
  readonly json: boolean;
}

const USAGE = `usage: scripts/node bench/ports-throughput.ts [--seconds N] [--repeat N] [--json]
  --seconds N   length of each iperf3 test (default ${DEFAULT_SECONDS})
  --repeat N    tests per path, taken in rotating order; the median is reported (default ${DEFAULT_REPEAT})
  --json        print the results as JSON instead of a table`;


function parseOptions(argv: readonly string[]): Options | 'help' {
  const { values } = parseArgs({
    args: [...argv],
    options: {
      seconds: { type: 'string' },
      repeat: { type: 'string' },
      json: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
    strict: true,
    allowPositionals: false,
  });
  if (values.help) return 'help';
  return {
    // Lab.inWorld gives a command 60 s, and a test also needs time to connect and report.
    seconds: intOption('seconds', values.seconds, DEFAULT_SECONDS, 1, 50),
    repeat: intOption('repeat', values.repeat, DEFAULT_REPEAT, 1, 20),
    json: values.json,
  };
}

// ---------------------------------------------------------------------------------------------
// Small helpers

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

async function inHostOk(lab: Lab, argv: readonly string[]): Promise<string> {
  const r = await lab.inHost(argv);
  if (r.code !== 0) throw new Error(`${argv.join(' ')} (lab host) failed (exit ${r.code}): ${r.stderr.trim()}`);
  return r.stdout;
}

async function inWorldOk(lab: Lab, argv: readonly string[]): Promise<string> {
  const r = await lab.inWorld(argv);
  if (r.code !== 0) throw new Error(`${argv.join(' ')} (world) failed (exit ${r.code}): ${r.stderr.trim()}`);
  return r.stdout;
}

/** Polls until something listens on TCP `port` (ss run by `run`), so a test never races a start. */
async function waitForListener(what: string, run: (argv: string[]) => Promise<{ stdout: string }>, port: number): Promise<void> {
  for (let i = 0; i < 50; i++) {
    const r = await run(['ss', '-Hltn', `sport = :${port}`]);
    if (r.stdout.trim() !== '') return;
    await sleep(200);
  }
  throw new Error(`${what} is not listening on port ${port} after 10 s`);
}

// ---------------------------------------------------------------------------------------------
// The setup: one sandbox running `iperf3 -s`, published, routed and proxied.

interface Path {
  readonly name: 'direct' | 'published' | 'proxy';
  readonly what: string;
  readonly host: string;
  readonly port: number;
}

/** The sandbox address a published port leads to, as `ctnet port NAME --json` reports it. */
async function sandboxAddress(lab: Lab): Promise<string> {
  const ports = JSON.parse(await lab.ctnetOk(['port', 'srv', '--json'])) as { to: string[] }[];
  const ip = ports[0]?.to.find((a) => !a.includes(':'));
  if (!ip) throw new Error(`ctnet port srv --json names no IPv4 address: ${JSON.stringify(ports)}`);
  return ip;
}

/** Builds the three paths; `started.proxy` is set as soon as the proxy runs, for cleanup. */
async function setup(lab: Lab, started: { proxy?: ChildProcess }): Promise<Path[]> {
  await lab.ctnetOk(['network', 'create', NETWORK, '--subnet', SUBNET]);
  await lab.ctnetOk(['run', '-d', '--name', 'srv', '--network', NETWORK, '-p', `${PUBLISHED_PORT}:${IPERF_PORT}`, '--',
    'iperf3', '-s', '-p', String(IPERF_PORT)]);
  const ip = await sandboxAddress(lab);
  await waitForListener('iperf3 in sandbox srv', (argv) => lab.ctnet(['exec', 'srv', '--', ...argv]), IPERF_PORT);

  // Direct path: the world routes the sandbox subnet to the lab host, and (in this lab only) an
  // accept at the top of ctnet's forward chain lets it past "from outside, only published ports
  // reach sandboxes". ctnet does not offer this; it exists to have a no-NAT baseline.
  await inWorldOk(lab, ['ip', 'route', 'add', SUBNET, 'via', UPLINK.host4]);
  await inHostOk(lab, ['nft', 'insert', 'rule', 'inet', 'ctnet', 'forward', 'ip', 'daddr', ip, 'tcp', 'dport', String(IPERF_PORT), 'accept']);

  // The userland proxy, as docker-proxy does it: accept on the host, connect to the sandbox, copy.
  // It lives in the lab host, so the lab's teardown would end it too; main() ends it first.
  started.proxy = spawn('nsenter', [`--net=/run/netns/${lab.host}`, 'socat', `TCP-LISTEN:${PROXY_PORT},fork,reuseaddr`, `TCP:${ip}:${IPERF_PORT}`],
    { stdio: 'ignore', detached: true });
  started.proxy.unref();
  await waitForListener('socat in the lab host', (argv) => lab.inHost(argv), PROXY_PORT);

  return [
    { name: 'direct', what: `routed to ${ip}:${IPERF_PORT}, no NAT`, host: ip, port: IPERF_PORT },
    { name: 'published', what: `${UPLINK.host4}:${PUBLISHED_PORT}, ctnet -p (kernel DNAT)`, host: UPLINK.host4, port: PUBLISHED_PORT },
    { name: 'proxy', what: `${UPLINK.host4}:${PROXY_PORT}, socat in the lab host`, host: UPLINK.host4, port: PROXY_PORT },
  ];
}

// ---------------------------------------------------------------------------------------------
// One test

interface Test {
  readonly gbps: number;
  readonly retransmits: number;
  /** CPU use of the client's and the server's iperf3 process, in % of one CPU (iperf3's count). */
  readonly cpuClient: number;
  readonly cpuServer: number;
}

interface IperfReport {
  error?: string;
  end?: {
    sum_received?: { bits_per_second: number };
    sum_sent?: { retransmits?: number };
    cpu_utilization_percent?: { host_total: number; remote_total: number };
  };
}

/** Runs one iperf3 test from the world; retries while the server still finishes the last one. */
async function iperf(lab: Lab, path: Path, opts: Options): Promise<Test> {
  for (let attempt = 1; ; attempt++) {
    const r = await lab.inWorld(['iperf3', '-c', path.host, '-p', String(path.port), '-t', String(opts.seconds), '-J']);
    let report: IperfReport;
    try {
      report = JSON.parse(r.stdout) as IperfReport;
    } catch {
      throw new Error(`iperf3 to ${path.host}:${path.port} printed no JSON (exit ${r.code}): ${r.stderr.trim()}`);
    }
    // iperf3 serves one test at a time and says so; anything else is a broken path.
    if (report.error && /busy/.test(report.error) && attempt < 10) {
      await sleep(500);
      continue;
    }
    const end = report.end;
    if (report.error || !end?.sum_received) throw new Error(`iperf3 to ${path.host}:${path.port}: ${report.error ?? 'no result'}`);
    return {
      gbps: end.sum_received.bits_per_second / 1e9, // what arrived in the sandbox
      retransmits: end.sum_sent?.retransmits ?? 0,
      cpuClient: end.cpu_utilization_percent?.host_total ?? 0,
      cpuServer: end.cpu_utilization_percent?.remote_total ?? 0,
    };
  }
}

// ---------------------------------------------------------------------------------------------
// The run

interface PathResult {
  readonly path: Path;
  readonly medianGbps: number;
  readonly tests: readonly Test[];
}

function median(values: readonly number[]): number {
  const s = [...values].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 === 1 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

async function measure(lab: Lab, paths: readonly Path[], opts: Options, signal: AbortSignal): Promise<PathResult[]> {
  const tests = new Map<Path, Test[]>(paths.map((p) => [p, []]));
  for (let round = 0; round < opts.repeat; round++) {
    // Rotate the order each round so drift in machine load hits every path alike.
    const order = paths.map((_, i) => paths[(i + round) % paths.length]!);
    for (const path of order) {
      signal.throwIfAborted();
      const t = await iperf(lab, path, opts);
      progress(`round ${round + 1} of ${opts.repeat}: ${path.name} ${t.gbps.toFixed(2)} Gbit/s`);
      tests.get(path)!.push(t);
    }
  }
  return paths.map((path) => ({ path, medianGbps: median(tests.get(path)!.map((t) => t.gbps)), tests: tests.get(path)! }));
}

interface Machine {
  readonly kernel: string;
  readonly node: string;
  readonly cpu: string;
  readonly ctnet: string;
  readonly iperf3: string;
  readonly socat: string;
}

async function machine(lab: Lab): Promise<Machine> {
  const cpu = cpus();
  const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string };
  const iperf3 = (await lab.inHost(['iperf3', '--version'])).stdout.split('\n')[0]?.trim();
  const socat = /socat version (\S+)/.exec((await lab.inHost(['socat', '-V'])).stdout)?.[1];
  return {
    kernel: release(),
    node: process.version,
    cpu: `${cpu.length} x ${cpu[0]?.model.trim() ?? 'unknown'}`,
    ctnet: pkg.version,
    iperf3: iperf3 || 'unknown',
    socat: socat ?? 'unknown',
  };
}

function render(results: readonly PathResult[], info: Machine, opts: Options): string {
  const direct = results.find((r) => r.path.name === 'direct')!.medianGbps;
  const rows = results.map((r) => [
    r.path.name, r.path.what, r.medianGbps.toFixed(2), r.tests.map((t) => t.gbps.toFixed(2)).join(', '),
    `${(r.medianGbps / direct).toFixed(2)}x`,
    String(median(r.tests.map((t) => t.retransmits))),
  ]);
  return [
    `published port throughput: iperf3 TCP, world -> sandbox, ${opts.seconds} s per test, median of ${opts.repeat}`,
    `kernel ${info.kernel}, node ${info.node}, ${info.cpu}, ctnet ${info.ctnet}, ${info.iperf3}, socat ${info.socat}`,
    '',
    table(['path', 'to', 'Gbit/s', 'tests', 'vs direct', 'retransmits'], rows),
    '',
  ].join('\n');
}

function toJson(results: readonly PathResult[], info: Machine, opts: Options): string {
  const round = (n: number) => Math.round(n * 1000) / 1000;
  const direct = results.find((r) => r.path.name === 'direct')!.medianGbps;
  return JSON.stringify({
    benchmark: 'ports-throughput',
    date: new Date().toISOString(),
    machine: info,
    seconds: opts.seconds,
    repeat: opts.repeat,
    paths: results.map((r) => ({
      path: r.path.name,
      to: `${r.path.host}:${r.path.port}`,
      what: r.path.what,
      medianGbps: round(r.medianGbps),
      vsDirect: round(r.medianGbps / direct),
      tests: r.tests.map((t) => ({ gbps: round(t.gbps), retransmits: t.retransmits, cpuClient: round(t.cpuClient), cpuServer: round(t.cpuServer) })),
    })),
  }, null, 2) + '\n';
}

/** Ends the proxy and the copies it forked (they share its process group); quiet if gone. */
function stopProxy(proxy: ChildProcess | undefined): void {
  if (proxy?.pid === undefined) return;
  try {
    process.kill(-proxy.pid, 'SIGTERM');
  } catch {
    // already gone
  }
}

async function main(): Promise<number> {
  const opts = optionsOrExit(parseOptions, USAGE);
  if (typeof opts === 'number') return opts;

  const { abort, interrupted: signalled } = trapSignals();

  progress('creating a lab');
  const lab = await Lab.create(); // removes what it made if it fails itself
  const started: { proxy?: ChildProcess } = {};
  let code = 0;
  try {
    abort.signal.throwIfAborted();
    const info = await machine(lab);
    const paths = await setup(lab, started);
    const results = await measure(lab, paths, opts, abort.signal);
    process.stdout.write(opts.json ? toJson(results, info, opts) : render(results, info, opts));
  } catch (e) {
    process.stderr.write(`bench: ${(e as Error).message}\n`);
    code = signalled() || 1;
  } finally {
    progress('cleaning up');
    stopProxy(started.proxy);
    await lab.destroy(); // also ends iperf3 in the sandbox (ctnet's namespaces go with the lab)
  }
  return code;
}

process.exitCode = await main();
