// Benchmark: wall time of `ctnet create NAME --network bench` at 0, 100 and 250 existing sandboxes,
// next to the reference CNI bridge plugin doing the same work (a fresh netns + a veth on a bridge
// + an address + masquerade) in the same lab host, in the same run. See bench/README.md.
//
//   scripts/node bench/create.ts [--samples N] [--json]
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { cpus, release, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { table } from '../src/cli/table.ts';
import { Lab, ROOT } from '../src/lab/lab.ts';
import { exec, execOk, optionsOrExit, progress, quantile, round, type Stats, stats, timed, trapSignals } from './lib.ts';

const LEVELS = [0, 100, 250] as const;
const DEFAULT_SAMPLES = 20;
const NETWORK = 'bench';
const CTNET_SUBNET = '10.200.0.0/16';
// The reference side gets its own subnet and bridge so the two never share kernel objects.
const REF_SUBNET = '10.201.0.0/16';
const REF_BRIDGE = 'cni0';
const CNI_PATH = '/usr/lib/cni';
// Every namespace this script adds itself starts with this (the lab's own are ctlab-/ctnet-).
const NETNS_PREFIX = 'ctbench-';

// ---------------------------------------------------------------------------------------------
// Options

interface Options {
  readonly samples: number;
  readonly json: boolean;
}

const USAGE = `usage: scripts/node bench/create.ts [--samples N] [--json]
  --samples N   timed creates per level and side (default ${DEFAULT_SAMPLES})
  --json        print the results as JSON instead of a table`;

function parseOptions(argv: readonly string[]): Options | 'help' {
  const { values } = parseArgs({
    args: [...argv],
    options: {
      samples: { type: 'string' },
      json: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
    strict: true,
    allowPositionals: false,
  });
  if (values.help) return 'help';
  const samples = values.samples === undefined ? DEFAULT_SAMPLES : Number(values.samples);
  if (!Number.isInteger(samples) || samples < 1 || samples > 1000) {
    throw new Error(`--samples must be an integer from 1 to 1000, got ${JSON.stringify(values.samples)}`);
  }
  return { samples, json: values.json };
}

// ---------------------------------------------------------------------------------------------
// Processes




// ---------------------------------------------------------------------------------------------
// The two sides. add() is exactly the operation that is timed; fill and cleanup use the same calls.

interface Side {
  readonly label: string;
  add(name: string): Promise<void>;
  remove(names: readonly string[]): Promise<void>;
}

/** ctnet, spawned end to end as a user runs it: `ctnet create NAME --network bench`. */
class CtnetSide implements Side {
  readonly label = 'ctnet';
  readonly #lab: Lab;

  constructor(lab: Lab) {
    this.#lab = lab;
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
// Statistics


// ---------------------------------------------------------------------------------------------
// The run

interface LevelResult {
  readonly level: number;
  readonly ctnet: Stats;
  readonly reference: Stats;
}

interface Machine {
  readonly kernel: string;
  readonly node: string;
  readonly cpu: string;
  readonly ctnet: string;
  readonly cniPlugins: string;
}

async function machine(): Promise<Machine> {
  const cpu = cpus();
  const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string };
  // Debian's plugins are built without a version string, so ask the package manager.
  const plugins = await exec(['dpkg-query', '-W', '-f', '${Version}', 'containernetworking-plugins']);
  return {
    kernel: release(),
    node: process.version,
    cpu: `${cpu.length} x ${cpu[0]?.model.trim() ?? 'unknown'}`,
    ctnet: pkg.version,
    cniPlugins: plugins.code === 0 && plugins.stdout ? plugins.stdout : 'unknown',
  };
}



async function measure(ctnet: CtnetSide, ref: ReferenceSide, opts: Options, signal: AbortSignal): Promise<LevelResult[]> {
  const sides = [ctnet, ref] as const;
  await ctnet.setup();

  // One untimed create + remove per side first: the first reference ADD also creates cni0 and the
  // first ctnet create runs with cold caches; `network create` already made ctnet's bridge.
  for (const side of sides) {
    await side.add('warmup');
    await side.remove(['warmup']);
  }

  const results: LevelResult[] = [];
  let filled = 0;
  for (const level of LEVELS) {
    progress(`filling both sides to ${level} attachments`);
    for (; filled < level; filled++) {
      for (const side of sides) {
        signal.throwIfAborted();
        await side.add(`fill-${filled}`);
      }
    }

    progress(`level ${level}: ${opts.samples} samples per side`);
    const times = { ctnet: [] as number[], reference: [] as number[] };
    const taken: string[] = [];
    for (let i = 0; i < opts.samples; i++) {
      const name = `s${level}-${i}`;
      taken.push(name);
      // Alternate which side goes first so drift in machine load hits both alike.
      const order = i % 2 === 0 ? sides : ([ref, ctnet] as const);
      for (const side of order) {
        signal.throwIfAborted();
        const ms = await timed(() => side.add(name));
        (side === ctnet ? times.ctnet : times.reference).push(ms);
      }
    }
    // Back to `level` attachments before the next level fills up.
    for (const side of sides) await side.remove(taken);
    results.push({ level, ctnet: stats(times.ctnet), reference: stats(times.reference) });
  }
  return results;
}

function render(results: readonly LevelResult[], info: Machine, opts: Options): string {
  const ms = (n: number) => n.toFixed(1);
  const x = (a: number, b: number) => `${(a / b).toFixed(2)}x`;
  const rows = results.map((r) => [
    String(r.level),
    ms(r.ctnet.p50), ms(r.ctnet.p95),
    ms(r.reference.p50), ms(r.reference.p95),
    x(r.ctnet.p50, r.reference.p50), x(r.ctnet.p95, r.reference.p95),
  ]);
  return [
    `ctnet create vs. reference CNI bridge plugin: wall time in ms, ${opts.samples} samples per level and side`,
    `kernel ${info.kernel}, node ${info.node}, ${info.cpu}, ctnet ${info.ctnet}, containernetworking-plugins ${info.cniPlugins}`,
    '',
    table(['level', 'ctnet median', 'ctnet p95', 'ref median', 'ref p95', 'ratio median', 'ratio p95'], rows),
    '',
  ].join('\n');
}

function toJson(results: readonly LevelResult[], info: Machine, opts: Options): string {
  const side = (s: Stats) => ({ medianMs: round(s.p50), p95Ms: round(s.p95), samplesMs: s.samples.map(round) });
  return JSON.stringify({
    benchmark: 'create',
    date: new Date().toISOString(),
    machine: info,
    samples: opts.samples,
    levels: results.map((r) => ({
      level: r.level,
      ctnet: side(r.ctnet),
      reference: side(r.reference),
      ratio: { median: round(r.ctnet.p50 / r.reference.p50), p95: round(r.ctnet.p95 / r.reference.p95) },
    })),
  }, null, 2) + '\n';
}

async function main(): Promise<number> {
  const opts = optionsOrExit(parseOptions, USAGE);
  if (typeof opts === 'number') return opts;

  const { abort, interrupted: signalled } = trapSignals();

  const info = await machine();
  if (abort.signal.aborted) return signalled();
  progress('creating a lab');
  const lab = await Lab.create(); // removes what it made if it fails itself
  let ref: ReferenceSide | undefined;
  let code = 0;
  try {
    abort.signal.throwIfAborted();
    ref = new ReferenceSide(lab);
    const results = await measure(new CtnetSide(lab), ref, opts, abort.signal);
    process.stdout.write(opts.json ? toJson(results, info, opts) : render(results, info, opts));
  } catch (e) {
    process.stderr.write(`bench: ${(e as Error).message}\n`);
    code = signalled() || 1;
  } finally {
    progress('cleaning up');
    try {
      await ref?.destroy();
    } catch (e) {
      process.stderr.write(`bench: ${(e as Error).message}\n`);
      code ||= 1;
    }
    await lab.destroy();
  }
  return code;
}

process.exitCode = await main();
