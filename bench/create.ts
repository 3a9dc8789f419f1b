// Benchmark: wall time of `ctnet create`, `connect`, `port add` and `rm` at 0, 100 and 250 existing
// sandboxes, next to the reference CNI plugins doing the same work (`ip netns add` + the bridge
// plugin; the bridge plugin on a second bridge; portmap; their DELs + `ip netns del`), each side in
// a lab of its own, in the same run. ctnet runs with its ctnetd started in its lab, so the front end
// (src/cli/front.c) hands the commands to it; --direct adds a side that runs every command as a
// Node process of its own (no ctnetd), --baseline DIR one with another checkout's bin/ctnet (with
// a ctnetd too). See bench/README.md.
//
//   scripts/node bench/create.ts [--samples N] [--levels 0,100,250] [--direct] [--baseline DIR] [--json]
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { cpus, release, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { table } from '../src/cli/table.ts';
import { Lab, ROOT } from '../src/lab/lab.ts';
import {
  bundled, type Checkout, destroyAll, levelsAndBaseline, loadAverage, checkout, describeCheckout, exec, execOk, intOption, optionsOrExit, progress, round, sampleOrder,
  startupMismatch, type Stats, stats, timed, trapSignals,
} from './lib.ts';

const DEFAULT_LEVELS = [0, 100, 250] as const;
const DEFAULT_SAMPLES = 20;
const MAX_LEVEL = 5000;
const NETWORK = 'bench';
const CTNET_SUBNET = '10.200.0.0/16';
// Each side has a lab of its own; the reference's subnet and bridge differ from ctnet's anyway.
// The baseline does exactly what the ctnet side does.
const REF_SUBNET = '10.201.0.0/16';
const REF_BRIDGE = 'cni0';
// The second network, for connect.
const NETWORK2 = 'bench2';
const CTNET_SUBNET2 = '10.202.0.0/16';
const REF_SUBNET2 = '10.203.0.0/16';
const REF_BRIDGE2 = 'cni1';
/** Host ports published by `port add`: one per sample, from here up. */
const FIRST_PORT = 20000;
const CNI_PATH = '/usr/lib/cni';
// Every namespace this script adds itself starts with this (the lab's own are ctlab-/ctnet-).
const NETNS_PREFIX = 'ctbench-';

type SideName = 'ctnet' | 'reference' | 'direct' | 'baseline';
const OPS = ['create', 'connect', 'port add', 'rm'] as const;
type OpName = typeof OPS[number];

// ---------------------------------------------------------------------------------------------
// Options

interface Options {
  readonly samples: number;
  readonly levels: readonly number[];
  /** Another ctnet checkout, for the baseline side. */
  readonly baseline: string | undefined;
  /** A side running ctnet without ctnetd (a Node process per command). */
  readonly direct: boolean;
  readonly json: boolean;
}

const USAGE = `usage: scripts/node bench/create.ts [--samples N] [--levels L,L,...] [--direct] [--baseline DIR] [--json]
  --samples N      timed samples per level, operation and side (default ${DEFAULT_SAMPLES})
  --levels L,...   existing sandboxes during the samples, ascending (default ${DEFAULT_LEVELS.join(',')})
  --direct         a side that runs ctnet without ctnetd: every command starts Node (CTNET_DIRECT=1)
  --baseline DIR   another ctnet checkout (scripts/build.sh run in it): a side runs the same
                   commands with DIR/bin/ctnet, and the output adds ctnet/baseline ratios
  --json           print the results as JSON instead of a table`;

function parseOptions(argv: readonly string[]): Options | 'help' {
  const { values } = parseArgs({
    args: [...argv],
    options: {
      samples: { type: 'string' },
      levels: { type: 'string' },
      baseline: { type: 'string' },
      direct: { type: 'boolean', default: false },
      json: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
    strict: true,
    allowPositionals: false,
  });
  if (values.help) return 'help';
  const samples = intOption('samples', values.samples, DEFAULT_SAMPLES, 1, 1000);
  const { levels, baseline } = levelsAndBaseline(values, DEFAULT_LEVELS, MAX_LEVEL);
  return { samples, levels, baseline, direct: values.direct, json: values.json };
}

// ---------------------------------------------------------------------------------------------
// The sides. Each method is exactly the operation that is timed; fill uses create.

interface Side {
  readonly label: SideName;
  setup(): Promise<void>;
  /** A new sandbox on the first network. */
  create(name: string): Promise<void>;
  /** The sandbox joins the second network. */
  connect(name: string): Promise<void>;
  /** One more published TCP port: hostPort -> 80. */
  portAdd(name: string, hostPort: number): Promise<void>;
  /** The sandbox and everything it has. */
  rm(name: string): Promise<void>;
  destroy(): Promise<void>;
}

/**
 * ctnet, spawned end to end as a user runs it (bin/ctnet). With ctnetd running in the lab (the
 * ctnet and baseline sides), the front end hands the commands to it; the direct side sets
 * CTNET_DIRECT=1, so every command runs in a Node process of its own, as without ctnetd.
 */
class CtnetSide implements Side {
  readonly label: 'ctnet' | 'direct' | 'baseline';
  readonly #lab: Lab;
  readonly #env: NodeJS.ProcessEnv;

  constructor(lab: Lab, label: 'ctnet' | 'direct' | 'baseline') {
    this.#lab = lab;
    this.label = label;
    this.#env = label === 'direct' ? { CTNET_DIRECT: '1' } : {};
  }

  async setup(): Promise<void> {
    await this.#lab.ctnetOk(['network', 'create', NETWORK, '--subnet', CTNET_SUBNET]);
    await this.#lab.ctnetOk(['network', 'create', NETWORK2, '--subnet', CTNET_SUBNET2]);
    if (this.label !== 'direct') await this.#lab.startDaemon();
  }

  async create(name: string): Promise<void> {
    await this.#lab.ctnetOk(['create', name, '--network', NETWORK], this.#env);
  }

  async connect(name: string): Promise<void> {
    await this.#lab.ctnetOk(['connect', NETWORK2, name], this.#env);
  }

  async portAdd(name: string, hostPort: number): Promise<void> {
    await this.#lab.ctnetOk(['port', 'add', name, `${hostPort}:80`], this.#env);
  }

  async rm(name: string): Promise<void> {
    await this.#lab.ctnetOk(['rm', name], this.#env);
  }

  async destroy(): Promise<void> {
    // the lab's teardown removes ctnet's namespaces and ends its ctnetd
  }
}

/**
 * The reference: `ip netns add` + the containernetworking plugins, run in the lab host with
 * nsenter as a CNI runtime would: bridge (host-local IPAM) for create and, on a second bridge as
 * eth1, for connect; portmap (iptables DNAT, chained after bridge's result) for port add; DEL of
 * each, newest first, then `ip netns del` for rm. Its bridges, veths and iptables rules live in the
 * lab host and vanish with it; the container namespaces it adds live in /run/netns like ctnet's,
 * so this class tracks them and deletes them in destroy().
 */
class ReferenceSide implements Side {
  readonly label = 'reference';
  readonly #host: string;
  readonly #prefix: string;
  readonly #tmp: string;
  readonly #bridge1: object;
  readonly #bridge2: object;
  /** Namespaces added (or being added) and not yet deleted. */
  readonly #netns = new Set<string>();
  /** Per sandbox: bridge's ADD result on eth0 (portmap's prevResult), what was added, newest last. */
  readonly #added = new Map<string, { result: unknown; plugins: { conf: object; ifname: string }[] }>();

  constructor(lab: Lab) {
    this.#host = lab.host;
    this.#prefix = `${NETNS_PREFIX}${lab.id}-`; // the lab id keeps parallel runs apart
    this.#tmp = mkdtempSync(join(tmpdir(), `${NETNS_PREFIX}${lab.id}-`));
    // host-local keeps its leases in files; a temp dir keeps them out of /var/lib/cni.
    const bridge = (name: string, br: string, subnet: string) => ({
      cniVersion: '1.0.0', name, type: 'bridge', bridge: br, isGateway: true, ipMasq: true,
      ipam: { type: 'host-local', subnet, dataDir: join(this.#tmp, 'ipam') },
    });
    this.#bridge1 = bridge('ctbench', REF_BRIDGE, REF_SUBNET);
    this.#bridge2 = bridge('ctbench2', REF_BRIDGE2, REF_SUBNET2);
  }

  async setup(): Promise<void> {
    // bridge makes cni0 and cni1 on the first ADDs (the warm-up)
  }

  #inHost(argv: readonly string[]): string[] {
    return ['nsenter', `--net=/run/netns/${this.#host}`, ...argv];
  }

  #plugin(command: 'ADD' | 'DEL', netns: string, conf: object, ifname: string): Promise<string> {
    return execOk(this.#inHost([join(CNI_PATH, (conf as { type: string }).type)]), {
      input: JSON.stringify(conf),
      env: { CNI_COMMAND: command, CNI_CONTAINERID: netns, CNI_NETNS: `/run/netns/${netns}`, CNI_IFNAME: ifname, CNI_PATH },
    });
  }

  async #add(name: string, conf: object, ifname: string): Promise<unknown> {
    const netns = this.#prefix + name;
    const entry = this.#added.get(name)!;
    entry.plugins.push({ conf, ifname }); // before the ADD, so an interrupted one is deleted too
    const result = JSON.parse(await this.#plugin('ADD', netns, conf, ifname)) as { ips?: unknown };
    return result;
  }

  async create(name: string): Promise<void> {
    const netns = this.#prefix + name;
    this.#netns.add(netns); // before the command, so an interrupted add is still cleaned up
    this.#added.set(name, { result: undefined, plugins: [] });
    await execOk(this.#inHost(['ip', 'netns', 'add', netns]));
    const result = await this.#add(name, this.#bridge1, 'eth0') as { ips?: unknown };
    // A plugin that "succeeds" without an address would make the comparison meaningless.
    if (!Array.isArray(result.ips) || result.ips.length === 0) throw new Error(`bridge plugin ADD for ${netns} returned no addresses`);
    this.#added.get(name)!.result = result;
  }

  async connect(name: string): Promise<void> {
    const result = await this.#add(name, this.#bridge2, 'eth1') as { ips?: unknown };
    if (!Array.isArray(result.ips) || result.ips.length === 0) throw new Error(`bridge plugin ADD (eth1) for ${name} returned no addresses`);
  }

  async portAdd(name: string, hostPort: number): Promise<void> {
    const conf = {
      cniVersion: '1.0.0', name: 'ctbench', type: 'portmap', capabilities: { portMappings: true },
      runtimeConfig: { portMappings: [{ hostPort, containerPort: 80, protocol: 'tcp' }] },
      prevResult: this.#added.get(name)!.result,
    };
    await this.#add(name, conf, 'eth0');
  }

  async rm(name: string): Promise<void> {
    const netns = this.#prefix + name;
    const entry = this.#added.get(name);
    // DEL in reverse order of ADD, as a runtime does (it also releases the host-local leases).
    for (const p of [...(entry?.plugins ?? [])].reverse()) await this.#plugin('DEL', netns, p.conf, p.ifname);
    await execOk(this.#inHost(['ip', 'netns', 'del', netns]));
    this.#added.delete(name);
    this.#netns.delete(netns);
  }

  /**
   * Deletes every namespace still tracked and the temp dir; keeps going past errors and throws
   * them together. No CNI DEL needed: the veths go with the namespaces, the bridges and the
   * iptables rules with the lab host, the leases with the temp dir.
   */
  async destroy(): Promise<void> {
    const errors: string[] = [];
    for (const netns of this.#netns) {
      const r = await exec(['ip', 'netns', 'del', netns]);
      if (r.code === 0 || /No such file or directory/.test(r.stderr)) this.#netns.delete(netns);
      else errors.push(`ip netns del ${netns}: ${r.stderr.trim()}`);
    }
    rmSync(this.#tmp, { recursive: true, force: true });
    if (errors.length > 0) throw new Error(`reference cleanup left namespaces behind:\n  ${errors.join('\n  ')}`);
  }
}

// ---------------------------------------------------------------------------------------------
// The run

interface LevelResult {
  readonly level: number;
  readonly ops: Record<OpName, Partial<Record<SideName, Stats>>>;
}

interface Machine {
  readonly kernel: string;
  readonly node: string;
  readonly cpu: string;
  readonly ctnet: string;
  readonly cniPlugins: string;
  readonly load: string;
  /** This checkout, and the baseline's (with --baseline). */
  readonly checkouts: { readonly ctnet: Checkout; readonly baseline?: Checkout };
}

async function machine(baselineDir: string | undefined): Promise<Machine> {
  const cpu = cpus();
  // Debian's plugins are built without a version string, so ask the package manager.
  const plugins = await exec(['dpkg-query', '-W', '-f', '${Version}', 'containernetworking-plugins']);
  const load = loadAverage();
  const ctnet = await checkout(ROOT);
  const baseline = baselineDir === undefined ? undefined : await checkout(baselineDir);
  return {
    kernel: release(),
    node: process.version,
    cpu: `${cpu.length} x ${cpu[0]?.model.trim() ?? 'unknown'}`,
    ctnet: ctnet.version,
    cniPlugins: plugins.code === 0 && plugins.stdout ? plugins.stdout : 'unknown',
    load,
    checkouts: { ctnet, ...(baseline ? { baseline } : {}) },
  };
}

async function measure(sides: readonly Side[], opts: Options, signal: AbortSignal): Promise<LevelResult[]> {
  for (const side of sides) {
    signal.throwIfAborted();
    await side.setup();
  }

  let port = FIRST_PORT;
  // One sandbox through every operation: each sample is this, timed per operation and side.
  const run = async (name: string, time: (op: OpName, side: Side, ms: number) => void, order: (i: number) => readonly Side[], i: number) => {
    const hostPort = port++;
    const ops: Record<OpName, (s: Side) => Promise<void>> = {
      create: (s) => s.create(name),
      connect: (s) => s.connect(name),
      'port add': (s) => s.portAdd(name, hostPort),
      rm: (s) => s.rm(name),
    };
    for (const op of OPS) {
      // Vary which side goes first (see sampleOrder) so drift in machine load hits all alike.
      for (const side of order(i)) {
        signal.throwIfAborted();
        time(op, side, await timed(() => ops[op](side)));
      }
    }
  };

  // One untimed round per side first: the first reference ADDs also create cni0 and cni1 and the
  // first ctnet commands run with cold caches; `network create` already made ctnet's bridges.
  await run('warmup', () => {}, () => sides, 0);

  const results: LevelResult[] = [];
  let filled = 0;
  for (const level of opts.levels) {
    if (level > filled) progress(`filling every side from ${filled} to ${level} sandboxes, one at a time and side after side`);
    for (; filled < level; filled++) {
      for (const side of sides) {
        signal.throwIfAborted();
        await side.create(`fill-${filled}`);
      }
    }

    progress(`level ${level}: ${opts.samples} samples per side of create, connect, port add, rm`);
    const times = new Map<string, number[]>();
    const key = (op: OpName, side: Side) => `${op}/${side.label}`;
    for (let i = 0; i < opts.samples; i++) {
      await run(`s${level}-${i}`, (op, side, ms) => {
        const k = key(op, side);
        times.set(k, [...(times.get(k) ?? []), ms]);
      }, (n) => sampleOrder(sides, n), i);
    }
    const ops = Object.fromEntries(OPS.map((op) => [op, Object.fromEntries(sides.map((s) => [s.label, stats(times.get(key(op, s))!)]))])) as LevelResult['ops'];
    results.push({ level, ops });
  }
  return results;
}

function render(results: readonly LevelResult[], info: Machine, opts: Options, warnings: readonly string[]): string {
  const ms = (n: number) => n.toFixed(1);
  const x = (a: number, b: number) => `${(a / b).toFixed(2)}x`;
  const { ctnet, baseline } = info.checkouts;
  const head = ['level', 'operation', 'ctnet median', 'ctnet p95', 'ref median', 'ref p95'];
  if (opts.direct) head.push('direct median');
  if (baseline) head.push('base median', 'base p95');
  head.push('ctnet/ref median', 'ctnet/ref p95');
  if (opts.direct) head.push('direct/ref median');
  if (baseline) head.push('ctnet/base median', 'ctnet/base p95');
  const rows = results.flatMap((r) => OPS.map((op) => {
    const c = r.ops[op].ctnet!;
    const ref = r.ops[op].reference!;
    const direct = r.ops[op].direct;
    const base = r.ops[op].baseline;
    return [
      String(r.level), op,
      ms(c.p50), ms(c.p95), ms(ref.p50), ms(ref.p95),
      ...(direct ? [ms(direct.p50)] : []),
      ...(base ? [ms(base.p50), ms(base.p95)] : []),
      x(c.p50, ref.p50), x(c.p95, ref.p95),
      ...(direct ? [x(direct.p50, ref.p50)] : []),
      ...(base ? [x(c.p50, base.p50), x(c.p95, base.p95)] : []),
    ];
  }));
  return [
    `ctnet create, connect, port add, rm (through ctnetd) vs. the reference CNI plugins${opts.direct ? ', ctnet without ctnetd (direct)' : ''}${baseline ? ' and the baseline\'s ctnet' : ''}: ` +
      `wall time in ms, ${opts.samples} samples per level, operation and side`,
    `kernel ${info.kernel}, node ${info.node}, ${info.cpu}, ctnet ${info.ctnet}, containernetworking-plugins ${info.cniPlugins}, ` +
      `load ${info.load} at the start, ${loadAverage()} at the end`,
    describeCheckout('ctnet', ctnet),
    ...(baseline ? [describeCheckout('baseline', baseline)] : []),
    ...warnings,
    '',
    table(head, rows),
    '',
  ].join('\n');
}

function toJson(results: readonly LevelResult[], info: Machine, opts: Options, warnings: readonly string[]): string {
  const side = (s: Stats) => ({ medianMs: round(s.p50), p95Ms: round(s.p95), samplesMs: s.samples.map(round) });
  const ratio = (a: Stats, b: Stats) => ({ median: round(a.p50 / b.p50), p95: round(a.p95 / b.p95) });
  return JSON.stringify({
    benchmark: 'create',
    date: new Date().toISOString(),
    machine: info,
    loadAtEnd: loadAverage(),
    samples: opts.samples,
    warnings,
    levels: results.map((r) => ({
      level: r.level,
      operations: OPS.map((op) => {
        const { ctnet: c, reference: ref, direct, baseline: base } = r.ops[op];
        return {
          operation: op,
          ctnet: side(c!),
          reference: side(ref!),
          ...(direct ? { direct: side(direct), directRatio: ratio(direct, ref!) } : {}),
          ...(base ? { baseline: side(base) } : {}),
          ratio: ratio(c!, ref!),
          ...(base ? { ratioToBaseline: ratio(c!, base) } : {}),
        };
      }),
    })),
  }, null, 2) + '\n';
}

async function main(): Promise<number> {
  const opts = optionsOrExit(parseOptions, USAGE);
  if (typeof opts === 'number') return opts;

  const { abort, interrupted: signalled } = trapSignals();

  let info: Machine;
  try {
    info = await machine(opts.baseline);
  } catch (e) {
    process.stderr.write(`bench: ${(e as Error).message}\n`);
    return 2;
  }
  if (abort.signal.aborted) return signalled();
  const baseline = info.checkouts.baseline;
  const warnings: string[] = [];
  if (baseline) {
    progress(describeCheckout('ctnet', info.checkouts.ctnet));
    progress(describeCheckout('baseline', baseline));
    const w = startupMismatch(info.checkouts.ctnet, baseline);
    if (w) {
      progress(w);
      warnings.push(w);
    }
  }
  // A lab per side: no side's links or rules are in another side's netns.
  const labels: SideName[] = ['ctnet', 'reference', ...(opts.direct ? ['direct' as const] : []), ...(baseline ? ['baseline' as const] : [])];
  const labs: Lab[] = [];
  const sides: Side[] = [];
  let code = 0;
  try {
    for (const label of labels) {
      abort.signal.throwIfAborted();
      progress(`${label}: creating a lab`);
      const lab = await Lab.create(label === 'baseline' ? { ctnet: baseline!.bin } : {}); // removes what it made if it fails itself
      labs.push(lab);
      progress(`${label}: lab host ${lab.host}${label === 'reference' ? `, container namespaces ${NETNS_PREFIX}${lab.id}-*` : ''}`);
      sides.push(label === 'reference' ? new ReferenceSide(lab) : new CtnetSide(lab, label));
    }
    const results = await measure(sides, opts, abort.signal);
    // bin/ctnet decides at every start: an edit in src/ during the run switches it to the sources.
    for (const c of [info.checkouts.ctnet, ...(baseline ? [baseline] : [])]) {
      if (await bundled(c.dir) !== c.bundle) {
        warnings.push(`warning: ${c.dir}/bin/ctnet ${c.bundle ? 'ran the bundle at the start and the sources at the end' : 'ran the sources at the start and the bundle at the end'}; some samples started the other way`);
      }
    }
    process.stdout.write(opts.json ? toJson(results, info, opts, warnings) : render(results, info, opts, warnings));
  } catch (e) {
    process.stderr.write(`bench: ${(e as Error).message}\n`);
    code = signalled() || 1;
  } finally {
    progress('cleaning up');
    const sidesFailed = await destroyAll(sides); // labs go too, whatever the sides did
    code ||= (await destroyAll(labs)) || sidesFailed;
  }
  return code;
}

process.exitCode = await main();
