// Benchmark: wall time of `ctnet create NAME --network bench` at 0, 100 and 250 existing sandboxes,
// next to the reference CNI bridge plugin doing the same work (a fresh netns + a veth on a bridge
// + an address + masquerade), each in a lab of its own, in the same run. With --baseline DIR, a
// third side runs the same `ctnet create` with another checkout's bin/ctnet. See bench/README.md.
//
//   scripts/node bench/create.ts [--samples N] [--levels 0,100,250] [--baseline DIR] [--json]
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
const CNI_PATH = '/usr/lib/cni';
// Every namespace this script adds itself starts with this (the lab's own are ctlab-/ctnet-).
const NETNS_PREFIX = 'ctbench-';

type SideName = 'ctnet' | 'reference' | 'baseline';

// ---------------------------------------------------------------------------------------------
// Options

interface Options {
  readonly samples: number;
  readonly levels: readonly number[];
  /** Another ctnet checkout, for the baseline side. */
  readonly baseline: string | undefined;
  readonly json: boolean;
}

const USAGE = `usage: scripts/node bench/create.ts [--samples N] [--levels L,L,...] [--baseline DIR] [--json]
  --samples N      timed creates per level and side (default ${DEFAULT_SAMPLES})
  --levels L,...   existing sandboxes during the samples, ascending (default ${DEFAULT_LEVELS.join(',')})
  --baseline DIR   another ctnet checkout (scripts/build.sh run in it): a third side runs the same
                   ctnet create with DIR/bin/ctnet, and the output adds ctnet/baseline ratios
  --json           print the results as JSON instead of a table`;

function parseOptions(argv: readonly string[]): Options | 'help' {
  const { values } = parseArgs({
    args: [...argv],
    options: {
      samples: { type: 'string' },
      levels: { type: 'string' },
      baseline: { type: 'string' },
      json: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
    strict: true,
    allowPositionals: false,
  });
  if (values.help) return 'help';
  const samples = intOption('samples', values.samples, DEFAULT_SAMPLES, 1, 1000);
  const { levels, baseline } = levelsAndBaseline(values, DEFAULT_LEVELS, MAX_LEVEL);
  return { samples, levels, baseline, json: values.json };
}

// ---------------------------------------------------------------------------------------------
// The sides. add() is exactly the operation that is timed; fill and cleanup use the same calls.

interface Side {
  readonly label: SideName;
  setup(): Promise<void>;
  add(name: string): Promise<void>;
  remove(names: readonly string[]): Promise<void>;
  destroy(): Promise<void>;
}

/**
 * ctnet, spawned end to end as a user runs it: `ctnet create NAME --network bench`. The baseline
 * side is this class in a lab whose ctnet() runs the baseline checkout's bin/ctnet.
 */
class CtnetSide implements Side {
  readonly label: 'ctnet' | 'baseline';
  readonly #lab: Lab;

  constructor(lab: Lab, label: 'ctnet' | 'baseline') {
    this.#lab = lab;
    this.label = label;
  }

  async setup(): Promise<void> {
    await this.#lab.ctnetOk(['network', 'create', NETWORK, '--subnet', CTNET_SUBNET]);
  }

  async add(name: string): Promise<void> {
    await this.#lab.ctnetOk(['create', name, '--network', NETWORK]);
  }

  async remove(names: readonly string[]): Promise<void> {
    if (names.length > 0) await this.#lab.ctnetOk(['rm', ...names]);
  }

  async destroy(): Promise<void> {
    // the lab's teardown removes ctnet's namespaces
  }
}

/**
 * The reference: `ip netns add` + the containernetworking `bridge` plugin (ADD, host-local IPAM),
 * both run in the lab host with nsenter, as a CNI runtime would. Its bridge, veths and iptables
 * rules therefore live in the lab host and vanish with it; the container namespaces it adds live
 * in /run/netns like ctnet's, so this class tracks them and deletes them in destroy().
 */
class ReferenceSide implements Side {
  readonly label = 'reference';
  readonly #host: string;
  readonly #prefix: string;
  readonly #tmp: string;
  readonly #config: string;
  /** Namespaces added (or being added) and not yet deleted. */
  readonly #netns = new Set<string>();

  constructor(lab: Lab) {
    this.#host = lab.host;
    this.#prefix = `${NETNS_PREFIX}${lab.id}-`; // the lab id keeps parallel runs apart
    this.#tmp = mkdtempSync(join(tmpdir(), `${NETNS_PREFIX}${lab.id}-`));
    this.#config = JSON.stringify({
      cniVersion: '1.0.0',
      name: 'ctbench',
      type: 'bridge',
      bridge: REF_BRIDGE,
      isGateway: true,
      ipMasq: true,
      // host-local keeps its leases in files; a temp dir keeps them out of /var/lib/cni.
      ipam: { type: 'host-local', subnet: REF_SUBNET, dataDir: join(this.#tmp, 'ipam') },
    });
  }

  async setup(): Promise<void> {
    // bridge makes cni0 on the first ADD (the warm-up)
  }

  #inHost(argv: readonly string[]): string[] {
    return ['nsenter', `--net=/run/netns/${this.#host}`, ...argv];
  }

  #plugin(command: 'ADD' | 'DEL', netns: string): Promise<string> {
    return execOk(this.#inHost([join(CNI_PATH, 'bridge')]), {
      input: this.#config,
      env: {
        CNI_COMMAND: command,
        CNI_CONTAINERID: netns,
        CNI_NETNS: `/run/netns/${netns}`,
        CNI_IFNAME: 'eth0',
        CNI_PATH,
      },
    });
  }

  async add(name: string): Promise<void> {
    const netns = this.#prefix + name;
    this.#netns.add(netns); // before the command, so an interrupted add is still cleaned up
    await execOk(this.#inHost(['ip', 'netns', 'add', netns]));
    const result = JSON.parse(await this.#plugin('ADD', netns)) as { ips?: unknown };
    // A plugin that "succeeds" without an address would make the comparison meaningless.
    if (!Array.isArray(result.ips) || result.ips.length === 0) {
      throw new Error(`bridge plugin ADD for ${netns} returned no addresses`);
    }
  }

  async remove(names: readonly string[]): Promise<void> {
    for (const name of names) {
      const netns = this.#prefix + name;
      await this.#plugin('DEL', netns); // releases the host-local lease and the masquerade rules
      await execOk(this.#inHost(['ip', 'netns', 'del', netns]));
      this.#netns.delete(netns);
    }
  }

  /**
   * Deletes every namespace still tracked and the temp dir; keeps going past errors and throws
   * them together. No CNI DEL needed: the veths go with the namespaces, the bridge and the
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
  readonly sides: Partial<Record<SideName, Stats>>;
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

  // One untimed create + remove per side first: the first reference ADD also creates cni0 and the
  // first ctnet create runs with cold caches; `network create` already made ctnet's bridge.
  for (const side of sides) {
    signal.throwIfAborted();
    await side.add('warmup');
    await side.remove(['warmup']);
  }

  const results: LevelResult[] = [];
  let filled = 0;
  for (const level of opts.levels) {
    if (level > filled) progress(`filling every side from ${filled} to ${level} attachments, one at a time and side after side`);
    for (; filled < level; filled++) {
      for (const side of sides) {
        signal.throwIfAborted();
        await side.add(`fill-${filled}`);
      }
    }

    progress(`level ${level}: ${opts.samples} samples per side`);
    const times = new Map<Side, number[]>(sides.map((s) => [s, []]));
    const taken: string[] = [];
    for (let i = 0; i < opts.samples; i++) {
      const name = `s${level}-${i}`;
      taken.push(name);
      // Vary which side goes first (see sampleOrder) so drift in machine load hits all alike.
      for (const side of sampleOrder(sides, i)) {
        signal.throwIfAborted();
        times.get(side)!.push(await timed(() => side.add(name)));
      }
    }
    // Back to `level` attachments before the next level fills up.
    for (const side of sides) await side.remove(taken);
    results.push({ level, sides: Object.fromEntries(sides.map((s) => [s.label, stats(times.get(s)!)])) });
  }
  return results;
}

function render(results: readonly LevelResult[], info: Machine, opts: Options, warnings: readonly string[]): string {
  const ms = (n: number) => n.toFixed(1);
  const x = (a: number, b: number) => `${(a / b).toFixed(2)}x`;
  const { ctnet, baseline } = info.checkouts;
  const head = ['level', 'ctnet median', 'ctnet p95', 'ref median', 'ref p95'];
  if (baseline) head.push('base median', 'base p95');
  head.push('ctnet/ref median', 'ctnet/ref p95');
  if (baseline) head.push('ctnet/base median', 'ctnet/base p95');
  const rows = results.map((r) => {
    const c = r.sides.ctnet!;
    const ref = r.sides.reference!;
    const base = r.sides.baseline;
    return [
      String(r.level),
      ms(c.p50), ms(c.p95), ms(ref.p50), ms(ref.p95),
      ...(base ? [ms(base.p50), ms(base.p95)] : []),
      x(c.p50, ref.p50), x(c.p95, ref.p95),
      ...(base ? [x(c.p50, base.p50), x(c.p95, base.p95)] : []),
    ];
  });
  return [
    `ctnet create vs. reference CNI bridge plugin${baseline ? ' and the baseline\'s ctnet create' : ''}: ` +
      `wall time in ms, ${opts.samples} samples per level and side`,
    `kernel ${info.kernel}, node ${info.node}, ${info.cpu}, ctnet ${info.ctnet}, containernetworking-plugins ${info.cniPlugins}, ` +
      `load ${info.load} at the start`,
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
    samples: opts.samples,
    warnings,
    levels: results.map((r) => {
      const c = r.sides.ctnet!;
      const ref = r.sides.reference!;
      const base = r.sides.baseline;
      return {
        level: r.level,
        ctnet: side(c),
        reference: side(ref),
        ...(base ? { baseline: side(base) } : {}),
        ratio: ratio(c, ref),
        ...(base ? { ratioToBaseline: ratio(c, base) } : {}),
      };
    }),
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
  const labels: SideName[] = ['ctnet', 'reference', ...(baseline ? ['baseline' as const] : [])];
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
