// Benchmark: what a published port costs per new connection, with 10 and with 10,000 other
// mappings installed, for ctnet (one nft map lookup) next to the reference CNI portmap plugin
// (iptables, one rule per mapping). A client in the lab's world namespace opens N TCP connections
// one after another to the lab host's uplink address. See bench/README.md.
//
//   scripts/node bench/ports-lookup.ts [--connections N] [--warmup N] [--rounds N] [--json]
//   scripts/node bench/ports-lookup.ts client HOST PORT COUNT WARMUP   (internal: the client)
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { connect } from 'node:net';
import { cpus, release, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { table } from '../src/cli/table.ts';
import { netnsKillAll } from '../src/kernel/netns.ts';
import { Lab, ROOT, UPLINK } from '../src/lab/lab.ts';
import { exec, execOk, intOption, optionsOrExit, progress, quantile, timed, trapSignals } from './lib.ts';

const LEVELS = [10, 10_000] as const;
const DEFAULT_CONNECTIONS = 2000;
const DEFAULT_WARMUP = 200;
const DEFAULT_ROUNDS = 6;
/** The measured mapping on both sides: lab host 198.51.100.2:8080 -> a server on port 80. */
const HOST_PORT = 8080;
const SERVER_PORT = 80;
/** The other mappings take host ports from here up (each side is in its own lab, so both may). */
const OTHERS_FIRST_PORT = 20000;
const NETWORK = 'bench';
const CTNET_SUBNET = '10.200.0.0/24';
const REF_SUBNET = '10.201.0.0/16';
const REF_BRIDGE = 'cni0';
/**
 * portmap installs every rule with its own `iptables -C` + `iptables -A` processes (3 rules per
 * mapping), and each of those costs more the longer the chain, so one container with N mappings
 * costs O(N^2): 1,000 took 43 s and 2,000 took 149 s here (10,000 would take about an hour). Many
 * containers with a few hundred mappings each keep every chain short; this is the size per container.
 */
const REF_MAPPINGS_PER_CONTAINER = 200;
const CNI_PATH = '/usr/lib/cni';
const NETNS_PREFIX = 'ctbench-';
const NODE = join(ROOT, 'scripts', 'node');
const SELF = fileURLToPath(import.meta.url);
/** Ephemeral ports the client may use in the world namespace (widened there, see prepareWorld). */
const CLIENT_PORTS = 64_000;

// ---------------------------------------------------------------------------------------------
// Options

interface Options {
  readonly connections: number;
  readonly warmup: number;
  readonly rounds: number;
  readonly json: boolean;
}

const USAGE = `usage: scripts/node bench/ports-lookup.ts [--connections N] [--warmup N] [--rounds N] [--json]
  --connections N   timed connections per batch (default ${DEFAULT_CONNECTIONS})
  --warmup N        untimed connections before each batch (default ${DEFAULT_WARMUP})
  --rounds N        batches per side and level, taken in rotating order (default ${DEFAULT_ROUNDS})
  --json            print the results as JSON instead of a table`;


function parseOptions(argv: readonly string[]): Options | 'help' {
  const { values } = parseArgs({
    args: [...argv],
    options: {
      connections: { type: 'string' },
      warmup: { type: 'string' },
      rounds: { type: 'string' },
      json: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
    strict: true,
    allowPositionals: false,
  });
  if (values.help) return 'help';
  const opts = {
    connections: intOption('connections', values.connections, DEFAULT_CONNECTIONS, 1, 50_000),
    warmup: intOption('warmup', values.warmup, DEFAULT_WARMUP, 0, 10_000),
    rounds: intOption('rounds', values.rounds, DEFAULT_ROUNDS, 1, 100),
    json: values.json,
  };
  // Every connection of a run leaves its source port in TIME_WAIT for a minute, so one client
  // address must not need more ports than the world namespace has.
  const perTarget = opts.rounds * (opts.connections + opts.warmup);
  if (perTarget > CLIENT_PORTS) {
    throw new Error(`--rounds x (--connections + --warmup) is ${perTarget}; keep it under ${CLIENT_PORTS} (the client's source ports)`);
  }
  return opts;
}

// ---------------------------------------------------------------------------------------------
// Processes




const inNetns = (netns: string, argv: readonly string[]): string[] => ['nsenter', `--net=/run/netns/${netns}`, ...argv];
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));


// ---------------------------------------------------------------------------------------------
// The client: runs in the world namespace as its own process, so neither side's setup or the
// parent's bookkeeping shares its event loop. Prints one JSON line.

interface Batch {
  readonly elapsedMs: number;
  readonly latenciesMs: readonly number[];
}

/** Opens one TCP connection and closes it as soon as it is up; resolves to the connect time. */
function connectOnce(host: string, port: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const start = performance.now();
    const socket = connect({ host, port });
    // A lost SYN is retried after 1 s and would show in p99; no answer at all is a broken setup.
    socket.setTimeout(5000, () => socket.destroy(new Error('no answer within 5 s')));
    socket.once('error', (e) => reject(new Error(`connect ${host}:${port}: ${e.message}`)));
    socket.once('connect', () => {
      const ms = performance.now() - start;
      socket.destroy();
      resolve(ms);
    });
  });
}

async function client(argv: readonly string[]): Promise<number> {
  const [host, port, count, warmup] = [argv[0]!, Number(argv[1]), Number(argv[2]), Number(argv[3])];
  try {
    for (let i = 0; i < warmup; i++) await connectOnce(host, port);
    const latenciesMs: number[] = [];
    const start = performance.now();
    for (let i = 0; i < count; i++) latenciesMs.push(await connectOnce(host, port));
    const batch: Batch = { elapsedMs: performance.now() - start, latenciesMs };
    process.stdout.write(JSON.stringify(batch) + '\n');
    return 0;
  } catch (e) {
    process.stderr.write(`client: ${(e as Error).message}\n`);
    return 1;
  }
}

// ---------------------------------------------------------------------------------------------
// The two sides. Each side and level gets a lab of its own: in one network namespace, ctnet's nat
// chains and iptables' nat chains hook the same place, and the kernel runs them in turn until one
// DNATs the connection, so one side's connections would also pay for the other side's rules.

interface Target {
  readonly side: 'ctnet' | 'portmap';
  readonly level: number;
  readonly lab: Lab;
  /** How long installing the `level` other mappings took (the setup, not the benchmark). */
  installMs: number;
  /** What was installed and where the measured mapping sits, for the report. */
  layout: string;
  setup(signal: AbortSignal): Promise<void>;
  destroy(): Promise<void>;
}

/** ctnet: sandbox `others` publishes one range of `level` ports, sandbox `srv` runs the server. */
class CtnetTarget implements Target {
  readonly side = 'ctnet';
  readonly lab: Lab;
  readonly level: number;
  installMs = 0;
  layout = '';

  constructor(lab: Lab, level: number) {
    this.lab = lab;
    this.level = level;
  }

  async setup(signal: AbortSignal): Promise<void> {
    const lab = this.lab;
    await lab.ctnetOk(['network', 'create', NETWORK, '--subnet', CTNET_SUBNET]);
    await lab.ctnetOk(['create', 'others', '--network', NETWORK]);
    signal.throwIfAborted();
    const last = OTHERS_FIRST_PORT + this.level - 1;
    const range = `${OTHERS_FIRST_PORT}-${last}:${OTHERS_FIRST_PORT}-${last}`;
    // Timed on its own so the number is the publishing, not the sandbox creation.
    this.installMs = await timed(() => lab.ctnetOk(['port', 'add', 'others', range]));
    signal.throwIfAborted();
    await lab.ctnetOk(['run', '-d', '--name', 'srv', '--network', NETWORK, '-p', `${HOST_PORT}:${SERVER_PORT}`, '--',
      ...Lab.serverArgv('srv', { tcp: SERVER_PORT })]);
    // Check the kernel holds what we think we measure: one element per port, plus the measured one.
    const listed = JSON.parse(await execOk(inNetns(lab.host, ['nft', '-j', 'list', 'map', 'inet', 'ctnet', 'ports4_any']))) as
      { nftables: { map?: { elem?: unknown[] } }[] };
    const elements = listed.nftables.find((o) => o.map)?.map?.elem?.length ?? 0;
    if (elements !== this.level + 1) throw new Error(`ctnet: map ports4_any has ${elements} elements, expected ${this.level + 1}`);
    this.layout = `sandbox others publishes -p ${range} (ctnet port add, one command); map ports4_any holds ${elements} elements`;
  }

  async destroy(): Promise<void> {} // the lab's teardown removes ctnet's namespaces and processes
}

interface CniMapping {
  readonly hostPort: number;
  readonly containerPort: number;
  readonly protocol: 'tcp';
}

/**
 * The reference: for each container `ip netns add`, then the CNI chain bridge (host-local IPAM)
 * -> portmap with `runtimeConfig.portMappings`, as a runtime runs it, in the lab host. The other
 * mappings go to containers of REF_MAPPINGS_PER_CONTAINER each; the server's container comes last,
 * so its rules come after every other mapping's in the chains a new connection walks.
 */
class PortmapTarget implements Target {
  readonly side = 'portmap';
  readonly lab: Lab;
  readonly level: number;
  installMs = 0;
  layout = '';
  readonly #prefix: string;
  readonly #tmp: string;
  /** Container namespaces added (or being added) and not yet deleted. */
  readonly #netns = new Set<string>();

  constructor(lab: Lab, level: number) {
    this.lab = lab;
    this.level = level;
    this.#prefix = `${NETNS_PREFIX}${lab.id}-`; // the lab id keeps parallel runs apart
    this.#tmp = mkdtempSync(join(tmpdir(), this.#prefix));
  }

  #netConf(type: 'bridge' | 'portmap', extra: object): string {
    const bridge = {
      bridge: REF_BRIDGE,
      // The default route lets the container answer the world; no masquerade: the measured
      // traffic comes in from the world and needs none, and bridge's ipMasq would add one
      // POSTROUTING rule per container that new connections walk too.
      isDefaultGateway: true,
      ipMasq: false,
      // host-local keeps its leases in files; a temp dir keeps them out of /var/lib/cni.
      ipam: { type: 'host-local', subnet: REF_SUBNET, dataDir: join(this.#tmp, 'ipam') },
    };
    return JSON.stringify({ cniVersion: '1.0.0', name: 'ctbench', type, ...(type === 'bridge' ? bridge : {}), ...extra });
  }

  #plugin(type: 'bridge' | 'portmap', netns: string, config: string): Promise<string> {
    return execOk(inNetns(this.lab.host, [join(CNI_PATH, type)]), {
      input: config,
      env: { CNI_COMMAND: 'ADD', CNI_CONTAINERID: netns, CNI_NETNS: `/run/netns/${netns}`, CNI_IFNAME: 'eth0', CNI_PATH },
    });
  }

  /** Adds one container with these mappings; resolves to the time portmap's ADD took. */
  async #addContainer(name: string, mappings: readonly CniMapping[]): Promise<number> {
    const netns = this.#prefix + name;
    this.#netns.add(netns); // before the command, so an interrupted add is still cleaned up
    await execOk(['ip', 'netns', 'add', netns]);
    const prevResult = JSON.parse(await this.#plugin('bridge', netns, this.#netConf('bridge', {}))) as object;
    const config = this.#netConf('portmap', { capabilities: { portMappings: true }, runtimeConfig: { portMappings: mappings }, prevResult });
    return timed(() => this.#plugin('portmap', netns, config));
  }

  async setup(signal: AbortSignal): Promise<void> {
    const containers = Math.ceil(this.level / REF_MAPPINGS_PER_CONTAINER);
    for (let c = 0; c < containers; c++) {
      signal.throwIfAborted();
      const first = c * REF_MAPPINGS_PER_CONTAINER;
      const count = Math.min(REF_MAPPINGS_PER_CONTAINER, this.level - first);
      const mappings = Array.from({ length: count }, (_, i): CniMapping =>
        ({ hostPort: OTHERS_FIRST_PORT + first + i, containerPort: OTHERS_FIRST_PORT + first + i, protocol: 'tcp' }));
      this.installMs += await this.#addContainer(`o${c}`, mappings);
      if (containers > 1 && (c + 1) % 10 === 0) progress(`portmap ${this.level}: ${c + 1} of ${containers} containers, ${(this.installMs / 1000).toFixed(0)} s in portmap ADDs`);
    }
    signal.throwIfAborted();
    await this.#addContainer('srv', [{ hostPort: HOST_PORT, containerPort: SERVER_PORT, protocol: 'tcp' }]);
    // The lab's teardown only knows its own namespaces: destroy() ends this server itself.
    spawn('nsenter', [`--net=/run/netns/${this.#prefix}srv`, ...Lab.serverArgv('srv', { tcp: SERVER_PORT })],
      { stdio: 'ignore', detached: true }).unref();
    this.layout = `${containers} container(s) of up to ${REF_MAPPINGS_PER_CONTAINER} portMappings, then the server's; ${await this.#position()}`;
  }

  /** Where the measured mapping's rules sit in the chains a new connection to it walks. */
  async #position(): Promise<string> {
    const rules = async (...chain: string[]) => (await execOk(inNetns(this.lab.host, ['iptables', '-t', 'nat', '-S', ...chain])))
      .split('\n').filter((l) => l.startsWith('-A '));
    const top = await rules('CNI-HOSTPORT-DNAT');
    const ports = (rule: string) => (/--dports (\S+)/.exec(rule)?.[1] ?? '').split(',').map(Number);
    const entry = top.findIndex((r) => ports(r).includes(HOST_PORT));
    const chain = /-j (CNI-DN-\S+)/.exec(top[entry] ?? '')?.[1];
    if (entry < 0 || !chain) throw new Error(`portmap: no rule for port ${HOST_PORT} in CNI-HOSTPORT-DNAT`);
    const own = await rules(chain);
    const dnat = own.findIndex((r) => r.includes(`--dport ${HOST_PORT} `) && r.includes('-j DNAT'));
    const total = (await rules()).length;
    return `its jump is rule ${entry + 1} of ${top.length} in CNI-HOSTPORT-DNAT (multiport: up to 15 ports a rule), ` +
      `its DNAT rule ${dnat + 1} of ${own.length} in ${chain}; ${total} rules in the nat table`;
  }

  /**
   * Ends the server, deletes every namespace still tracked and the temp dir; keeps going past
   * errors and throws them together. The bridge, veths and iptables rules go with the lab host.
   */
  async destroy(): Promise<void> {
    const errors: string[] = [];
    for (const netns of this.#netns) {
      netnsKillAll({ name: netns }); // only the server this class started lives there
      const r = await exec(['ip', 'netns', 'del', netns]);
      if (r.code === 0 || /No such file or directory/.test(r.stderr)) this.#netns.delete(netns);
      else errors.push(`ip netns del ${netns}: ${r.stderr.trim()}`);
    }
    rmSync(this.#tmp, { recursive: true, force: true });
    if (errors.length > 0) throw new Error(`portmap cleanup left namespaces behind:\n  ${errors.join('\n  ')}`);
  }
}

/** Lets the world's client use most of the port space (see CLIENT_PORTS); only this lab's world. */
async function prepareWorld(lab: Lab): Promise<void> {
  const r = await lab.inWorld(['sysctl', '-qw', 'net.ipv4.ip_local_port_range=1024 65535']);
  if (r.code !== 0) throw new Error(`sysctl in ${lab.world}: ${r.stderr.trim()}`);
}

/** Waits until the server answers through the published port (ctnet run -d returns at once). */
async function waitForServer(t: Target): Promise<void> {
  let last = '';
  for (let i = 0; i < 50; i++) {
    const r = await t.lab.inWorld(Lab.probeArgv('tcp', UPLINK.host4, HOST_PORT, 1000));
    if (r.code === 0) return;
    last = r.stderr.trim();
    await sleep(200);
  }
  throw new Error(`${t.side} ${t.level}: ${UPLINK.host4}:${HOST_PORT} never answered from the world: ${last}`);
}

async function runBatch(t: Target, opts: Options): Promise<Batch> {
  const argv = inNetns(t.lab.world, [NODE, SELF, 'client', UPLINK.host4, String(HOST_PORT), String(opts.connections), String(opts.warmup)]);
  return JSON.parse(await execOk(argv)) as Batch;
}

// ---------------------------------------------------------------------------------------------
// Statistics

interface Stats {
  /** New connections per second over all timed batches. */
  readonly rate: number;
  readonly p50Ms: number;
  readonly p99Ms: number;
  /** The rate of each batch, in the order taken. */
  readonly batchRates: readonly number[];
}


function stats(batches: readonly Batch[]): Stats {
  const all = batches.flatMap((b) => b.latenciesMs).sort((a, b) => a - b);
  const ms = batches.reduce((sum, b) => sum + b.elapsedMs, 0);
  return {
    rate: all.length / (ms / 1000),
    p50Ms: quantile(all, 0.5),
    p99Ms: quantile(all, 0.99),
    batchRates: batches.map((b) => b.latenciesMs.length / (b.elapsedMs / 1000)),
  };
}

// ---------------------------------------------------------------------------------------------
// The run

interface Result {
  readonly side: Target['side'];
  readonly level: number;
  readonly installMs: number;
  readonly layout: string;
  readonly stats: Stats;
}

interface Machine {
  readonly kernel: string;
  readonly node: string;
  readonly cpu: string;
  readonly ctnet: string;
  readonly cniPlugins: string;
  readonly iptables: string;
}

async function machine(): Promise<Machine> {
  const cpu = cpus();
  const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string };
  // Debian's plugins are built without a version string, so ask the package manager.
  const plugins = await exec(['dpkg-query', '-W', '-f', '${Version}', 'containernetworking-plugins']);
  const iptables = await exec(['iptables', '--version']);
  return {
    kernel: release(),
    node: process.version,
    cpu: `${cpu.length} x ${cpu[0]?.model.trim() ?? 'unknown'}`,
    ctnet: pkg.version,
    cniPlugins: plugins.code === 0 && plugins.stdout ? plugins.stdout : 'unknown',
    iptables: iptables.stdout.trim() || 'unknown',
  };
}

async function measure(targets: readonly Target[], opts: Options, signal: AbortSignal): Promise<Result[]> {
  for (const t of targets) {
    progress(`${t.side} ${t.level}: installing ${t.level} other mappings and the measured one`);
    await prepareWorld(t.lab);
    await t.setup(signal);
    await waitForServer(t);
    progress(`${t.side} ${t.level}: ${(t.installMs / 1000).toFixed(2)} s to install the others; ${t.layout}`);
  }
  const batches = new Map<Target, Batch[]>(targets.map((t) => [t, []]));
  for (let round = 0; round < opts.rounds; round++) {
    // Rotate the order each round so drift in machine load hits every side and level alike.
    const order = targets.map((_, i) => targets[(i + round) % targets.length]!);
    progress(`round ${round + 1} of ${opts.rounds}: ${order.map((t) => `${t.side} ${t.level}`).join(', ')}`);
    for (const t of order) {
      signal.throwIfAborted();
      batches.get(t)!.push(await runBatch(t, opts));
    }
  }
  return targets.map((t) => ({ side: t.side, level: t.level, installMs: t.installMs, layout: t.layout, stats: stats(batches.get(t)!) }));
}

const find = (results: readonly Result[], side: Result['side'], level: number): Result => results.find((r) => r.side === side && r.level === level)!;

function render(results: readonly Result[], info: Machine, opts: Options): string {
  const us = (ms: number) => (ms * 1000).toFixed(0);
  const x = (a: number, b: number) => `${(a / b).toFixed(2)}x`;
  const rows = LEVELS.map((level) => {
    const c = find(results, 'ctnet', level).stats;
    const p = find(results, 'portmap', level).stats;
    return [String(level), c.rate.toFixed(0), us(c.p50Ms), us(c.p99Ms), p.rate.toFixed(0), us(p.p50Ms), us(p.p99Ms), x(c.rate, p.rate)];
  });
  const [lo, hi] = [LEVELS[0], LEVELS[LEVELS.length - 1]!];
  const scale = (side: Result['side']) => x(find(results, side, hi).stats.rate, find(results, side, lo).stats.rate);
  rows.push([`${hi}/${lo}`, scale('ctnet'), '', '', scale('portmap'), '', '', '']);
  return [
    `published port, new TCP connections from the world to ${UPLINK.host4}:${HOST_PORT}: ` +
      `${opts.rounds} batches of ${opts.connections} (after ${opts.warmup} untimed) per side and level`,
    `kernel ${info.kernel}, node ${info.node}, ${info.cpu}, ctnet ${info.ctnet}, containernetworking-plugins ${info.cniPlugins}, ${info.iptables}`,
    '',
    table(['others', 'ctnet conn/s', 'ctnet p50 us', 'ctnet p99 us', 'portmap conn/s', 'portmap p50 us', 'portmap p99 us', 'rate ctnet/portmap'], rows),
    '',
    'setup (not part of the numbers above):',
    ...results.map((r) => `  ${r.side} ${r.level}: ${(r.installMs / 1000).toFixed(2)} s to install the others; ${r.layout}`),
    '',
  ].join('\n');
}

function toJson(results: readonly Result[], info: Machine, opts: Options): string {
  const round = (n: number, digits = 2) => Math.round(n * 10 ** digits) / 10 ** digits;
  const ratio = (a: number, b: number) => round(a / b, 3);
  const [lo, hi] = [LEVELS[0], LEVELS[LEVELS.length - 1]!];
  return JSON.stringify({
    benchmark: 'ports-lookup',
    date: new Date().toISOString(),
    machine: info,
    connections: opts.connections,
    warmup: opts.warmup,
    rounds: opts.rounds,
    results: results.map((r) => ({
      side: r.side,
      otherMappings: r.level,
      connPerSec: round(r.stats.rate, 0),
      p50Us: round(r.stats.p50Ms * 1000, 1),
      p99Us: round(r.stats.p99Ms * 1000, 1),
      batchConnPerSec: r.stats.batchRates.map((n) => round(n, 0)),
      installSeconds: round(r.installMs / 1000),
      layout: r.layout,
    })),
    ratios: {
      [`rate${hi}over${lo}`]: {
        ctnet: ratio(find(results, 'ctnet', hi).stats.rate, find(results, 'ctnet', lo).stats.rate),
        portmap: ratio(find(results, 'portmap', hi).stats.rate, find(results, 'portmap', lo).stats.rate),
      },
      rateCtnetOverPortmap: Object.fromEntries(LEVELS.map((l) =>
        [String(l), ratio(find(results, 'ctnet', l).stats.rate, find(results, 'portmap', l).stats.rate)])),
    },
  }, null, 2) + '\n';
}

async function main(): Promise<number> {
  if (process.argv[2] === 'client') return client(process.argv.slice(3));
  const opts = optionsOrExit(parseOptions, USAGE);
  if (typeof opts === 'number') return opts;

  const { abort, interrupted: signalled } = trapSignals();

  const info = await machine();
  const labs: Lab[] = [];
  const targets: Target[] = [];
  let code = 0;
  try {
    for (const level of LEVELS) {
      for (const Side of [CtnetTarget, PortmapTarget]) {
        abort.signal.throwIfAborted();
        const lab = await Lab.create(); // removes what it made if it fails itself
        labs.push(lab);
        targets.push(new Side(lab, level));
      }
    }
    progress(`labs: ${targets.map((t) => `${t.side} ${t.level} in ${t.lab.host}`).join(', ')}`);
    const results = await measure(targets, opts, abort.signal);
    process.stdout.write(opts.json ? toJson(results, info, opts) : render(results, info, opts));
  } catch (e) {
    process.stderr.write(`bench: ${(e as Error).message}\n`);
    code = signalled() || 1;
  } finally {
    progress('cleaning up');
    for (const t of targets) {
      try {
        await t.destroy();
      } catch (e) {
        process.stderr.write(`bench: ${(e as Error).message}\n`);
        code ||= 1;
      }
    }
    for (const lab of labs) await lab.destroy();
  }
  return code;
}

process.exitCode = await main();
