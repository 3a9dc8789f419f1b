// Benchmark: CNI ADD and DEL latency (p50, p95) with one port mapping per container, at 0, 100 and
// 500 existing attachments, for ctnet's CNI plugin next to the reference chain
// bridge + host-local + portmap from /usr/lib/cni, both driven the way libcni drives a conflist,
// each in a lab of its own, in the same run. With --baseline DIR, a third side does what the ctnet
// side does with another checkout's bin/ctnet (its plugin, its ctnetd), in a third lab. ctnetd's
// log splits each sampled request into its tools' time and the engine's own. See bench/README.md.
//
// With --burst N, each level ends with N ADD chains started at once on each side (a node starting
// N pods), then their N DELs at once: per-ADD p50/p99/max, the burst's wall time and errors.
//
//   scripts/node bench/cni.ts [--samples N] [--levels 0,100,500] [--sides ctnet,reference,baseline]
//                             [--baseline DIR] [--parallel N] [--burst N] [--json]
import { spawn } from 'node:child_process';
import { accessSync, constants as fsConstants, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { cpus, release, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { table } from '../src/cli/table.ts';
import { Lab, ROOT } from '../src/lab/lab.ts';
import {
  type Checkout, checkout, describeCheckout, exec, execOk, intOption, optionsOrExit, progress, quantile, round, sampleOrder, type Stats,
  destroyAll, levelsAndBaseline, loadAverage, machineBusyMs, stats, trapSignals,
} from './lib.ts';

const DEFAULT_LEVELS = [0, 100, 500] as const;
const DEFAULT_SAMPLES = 30;
const DEFAULT_PARALLEL = 8;
const MAX_LEVEL = 10_000;
const MAX_BURST = 1_000;
const NETWORK = 'bench';
// Each side has a lab of its own. The subnets and bridges differ anyway, so no two sides could
// share a kernel object even in one lab; the baseline does exactly what the ctnet side does.
const CTNET_SUBNET = '10.200.0.0/16';
const REF_SUBNET = '10.201.0.0/16';
const REF_BRIDGE = 'cni0';
const REF_NAME = 'ctbench';
const CNI_PATH = '/usr/lib/cni';
/** Each container publishes one distinct host port (lowest free from the side's base) -> 80/tcp. */
const PORT_BASE = { ctnet: 20000, reference: 40000, baseline: 20000 } as const;
const CONTAINER_PORT = 80;
// Every namespace this script adds itself starts with this (the lab's own are ctlab-/ctnet-).
const NETNS_PREFIX = 'ctbench-';
/** One plugin exec may take this long before it is killed and the run fails. */
const PLUGIN_TIMEOUT_MS = 120_000;
/** After a plugin exits, how long its stdout/stderr may stay open (held by a child it started). */
const PIPE_GRACE_MS = 5_000;

type SideName = 'ctnet' | 'reference' | 'baseline';
const SIDE_NAMES: readonly SideName[] = ['ctnet', 'reference', 'baseline'];

// ---------------------------------------------------------------------------------------------
// Options

interface Options {
  readonly samples: number;
  readonly levels: readonly number[];
  readonly sides: readonly SideName[];
  /** Another ctnet checkout, for the baseline side. */
  readonly baseline: string | undefined;
  readonly parallel: number;
  /** Chains started at once after each level's samples (0: no burst). */
  readonly burst: number;
  readonly json: boolean;
}

const USAGE = `usage: scripts/node bench/cni.ts [--samples N] [--levels L,L,...] [--sides S,...] [--baseline DIR] [--parallel N] [--burst N] [--json]
  --samples N        timed ADD + DEL pairs per level and side (default ${DEFAULT_SAMPLES})
  --levels L,...     existing attachments during the samples, ascending (default ${DEFAULT_LEVELS.join(',')})
  --sides S,...      any of ctnet, reference, baseline (default ctnet,reference, and baseline with --baseline)
  --baseline DIR     another ctnet checkout (scripts/build.sh run in it): the baseline side does what the
                     ctnet side does with DIR/bin/ctnet, and the output adds ctnet/baseline ratios
  --parallel N       plugin chains run at once while filling up to a level, untimed (default ${DEFAULT_PARALLEL})
  --burst N          after each level's samples, start N ADD chains at once on each side (one side after the
                     other), then their N DELs at once; report per-ADD p50/p99/max, wall time and errors
                     (default 0: no burst)
  --json             print the results as JSON instead of tables`;

function parseOptions(argv: readonly string[]): Options | 'help' {
  const { values } = parseArgs({
    args: [...argv],
    options: {
      samples: { type: 'string' },
      levels: { type: 'string' },
      sides: { type: 'string' },
      baseline: { type: 'string' },
      parallel: { type: 'string' },
      burst: { type: 'string' },
      json: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
    strict: true,
    allowPositionals: false,
  });
  if (values.help) return 'help';
  const samples = intOption('samples', values.samples, DEFAULT_SAMPLES, 1, 1000);
  const parallel = intOption('parallel', values.parallel, DEFAULT_PARALLEL, 1, 64);
  const burst = intOption('burst', values.burst, 0, 0, MAX_BURST);
  const { levels, baseline } = levelsAndBaseline(values, DEFAULT_LEVELS, MAX_LEVEL);
  const sides = values.sides === undefined
    ? SIDE_NAMES.filter((s) => s !== 'baseline' || baseline !== undefined)
    : values.sides.split(',').map((s) => s.trim());
  for (const s of sides) {
    if (!SIDE_NAMES.includes(s as SideName)) throw new Error(`--sides takes ${SIDE_NAMES.join(', ')}, got ${JSON.stringify(s)}`);
  }
  if (sides.includes('baseline') && values.baseline === undefined) throw new Error('--sides baseline needs --baseline DIR');
  // Always in the same order, whatever the command line said: ctnet, the reference, the baseline.
  const picked = SIDE_NAMES.filter((s) => sides.includes(s));
  return { samples, levels, sides: picked, baseline, parallel, burst, json: values.json };
}

// ---------------------------------------------------------------------------------------------
// Running a plugin the way libcni does

interface PluginConf {
  readonly type: string;
  readonly capabilities?: Readonly<Record<string, boolean>>;
  readonly [key: string]: unknown;
}

interface ConfList {
  readonly cniVersion: string;
  readonly name: string;
  readonly plugins: readonly PluginConf[];
}

interface PortMapping {
  readonly hostPort: number;
  readonly containerPort: number;
  readonly protocol: 'tcp';
}

/** One container of one side: its netns, its host port, and its ADD result (DEL's prevResult). */
interface Container {
  readonly name: string;
  readonly netns: string;
  readonly hostPort: number;
  result?: object;
}

/** One plugin exec inside a chain: "portmap ADD" and how long it took. */
interface Step {
  readonly step: string;
  readonly ms: number;
}

/** One chain's wall time, its plugin execs, and when it ended (performance.now()). */
interface ChainTime {
  readonly ms: number;
  readonly steps: Step[];
  readonly end: number;
}

/**
 * Spawns argv with env and stdin, resolves to its stdout when it exits 0 and closes its pipes.
 * Throws with the plugin's error (CNI plugins print error JSON on stdout) otherwise. Unlike
 * lib.ts's exec() it does not wait forever: a plugin that starts a daemon which inherits its
 * stdout would otherwise hang the run, so that is reported as what it is.
 */
function runPlugin(argv: readonly string[], env: NodeJS.ProcessEnv, input: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(argv[0]!, argv.slice(1), { env: { ...process.env, ...env }, stdio: 'pipe' });
    let stdout = '';
    let stderr = '';
    let exit: { code: number | null; signal: NodeJS.Signals | null } | undefined;
    let settled = false;
    const what = `${env.CNI_COMMAND} ${argv[argv.length - 1]} (${env.CNI_CONTAINERID})`;
    const finish = (err: Error | undefined): void => {
      if (settled) return;
      settled = true;
      clearTimeout(overall);
      clearTimeout(grace);
      if (err) reject(err);
      else resolve(stdout);
    };
    const overall = setTimeout(() => {
      child.kill('SIGKILL');
      finish(new Error(`${what} did not finish within ${PLUGIN_TIMEOUT_MS / 1000} s`));
    }, PLUGIN_TIMEOUT_MS);
    let grace: NodeJS.Timeout | undefined;
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    child.on('error', (e) => finish(new Error(`${what}: ${e.message}`)));
    child.on('exit', (code, signal) => {
      exit = { code, signal };
      grace = setTimeout(() => finish(new Error(
        `${what} exited (${code ?? signal}) but its stdout/stderr stayed open for ${PIPE_GRACE_MS / 1000} s: ` +
        'a process it started (a daemon?) inherited them; it must close or redirect them')), PIPE_GRACE_MS);
    });
    child.on('close', () => {
      const e = exit ?? { code: null, signal: null };
      if (e.code === 0) return finish(undefined);
      const detail = (stdout.trim() || stderr.trim()).split('\n').slice(-3).join('; ');
      finish(new Error(`${what} failed (exit ${e.code ?? e.signal}): ${detail}`));
    });
    child.stdin.on('error', () => {}); // the plugin may exit without reading stdin; its exit code says why
    child.stdin.end(input);
  });
}

/**
 * One side: a conflist run plugin by plugin in the lab host, as libcni's AddNetworkList and
 * DelNetworkList run it. ADD: each plugin in order, its config being the list's cniVersion and name
 * + the plugin's own, + `prevResult` = the previous plugin's result (from the second plugin on),
 * + `runtimeConfig.portMappings` if the plugin declares `capabilities.portMappings`. DEL: each
 * plugin in reverse order, with `prevResult` = the final ADD result and the same runtimeConfig.
 * The container namespaces are `ip netns add`ed here (untimed) and tracked until deleted.
 */
export abstract class Side {
  abstract readonly label: SideName;
  protected readonly lab: Lab;
  readonly #prefix: string;
  /** Containers whose netns exists (or is being added), by name. */
  readonly live = new Map<string, Container>();
  readonly #ports = new Set<number>();
  #conflist: ConfList | undefined;
  #pluginDirs: readonly string[] = [];
  #fills = 0;

  constructor(lab: Lab, letter: string) {
    this.lab = lab;
    this.#prefix = `${NETNS_PREFIX}${lab.id}-${letter}-`; // the lab id keeps parallel runs apart
  }

  /** The CNI_CONTAINERID (and netns name) of container `name`. */
  containerId(name: string): string {
    return this.#prefix + name;
  }

  /** Makes the network and returns the conflist and the directories to find its plugins in. */
  protected abstract prepare(): Promise<{ conflist: ConfList; pluginDirs: readonly string[] }>;
  /** Counts of the kernel and store objects this side's attachments make, for the residue check. */
  abstract census(): Promise<Record<string, number>>;
  /** How many attachments census() sees (veths on the side's bridges). */
  abstract attached(census: Record<string, number>): number | undefined;
  /** Environment a plugin exec gets on top of this process's and the CNI_* variables. */
  protected pluginEnv(): NodeJS.ProcessEnv {
    return {};
  }
  /** Adds what the side knows about a failed plugin exec (a log the cleanup would delete). */
  protected explain(e: unknown): unknown {
    return e;
  }

  async setup(): Promise<void> {
    const { conflist, pluginDirs } = await this.prepare();
    if (!conflist.plugins.some((p) => p.capabilities?.portMappings === true)) {
      throw new Error(`${this.label}: no plugin in the conflist declares capabilities.portMappings, ` +
        'so a runtime would not pass it the port mappings');
    }
    this.#conflist = conflist;
    this.#pluginDirs = pluginDirs;
  }

  get conflist(): ConfList {
    if (!this.#conflist) throw new Error(`${this.label}: setup() first`);
    return this.#conflist;
  }

  #pluginPath(type: string): string {
    for (const dir of this.#pluginDirs) {
      const path = join(dir, type);
      try {
        accessSync(path, fsConstants.X_OK);
        return path;
      } catch {
        // not in this directory
      }
    }
    throw new Error(`${this.label}: no executable plugin ${JSON.stringify(type)} in ${this.#pluginDirs.join(':')}`);
  }

  #config(plugin: PluginConf, c: Container, prevResult: object | undefined): string {
    const list = this.conflist;
    const conf: Record<string, unknown> = { ...plugin, name: list.name, cniVersion: list.cniVersion };
    if (prevResult !== undefined) conf.prevResult = prevResult;
    if (plugin.capabilities?.portMappings === true) {
      const mapping: PortMapping = { hostPort: c.hostPort, containerPort: CONTAINER_PORT, protocol: 'tcp' };
      conf.runtimeConfig = { portMappings: [mapping] };
    }
    return JSON.stringify(conf);
  }

  #exec(command: 'ADD' | 'DEL', plugin: PluginConf, c: Container, prevResult: object | undefined): Promise<string> {
    return runPlugin(['nsenter', `--net=/run/netns/${this.lab.host}`, this.#pluginPath(plugin.type)], {
      ...this.pluginEnv(),
      CNI_COMMAND: command,
      CNI_CONTAINERID: c.netns,
      CNI_NETNS: `/run/netns/${c.netns}`,
      CNI_IFNAME: 'eth0',
      CNI_PATH: this.#pluginDirs.join(':'),
    }, this.#config(plugin, c, prevResult));
  }

  #port(): number {
    let port = PORT_BASE[this.label];
    while (this.#ports.has(port)) port++;
    this.#ports.add(port);
    return port;
  }

  /** Adds container `name` and its netns (untimed): add() does it unless it was done before. */
  async netnsAdd(name: string): Promise<void> {
    if (this.live.has(name)) throw new Error(`${this.label}: container ${name} exists already`);
    const c: Container = { name, netns: this.containerId(name), hostPort: this.#port() };
    this.live.set(name, c); // before the command, so an interrupted add is still cleaned up
    await execOk(['ip', 'netns', 'add', c.netns]);
  }

  /**
   * Runs the ADD chain of container `name` (timed), after adding its netns (untimed) unless
   * netnsAdd() did. Returns the chain's wall time.
   */
  async add(name: string): Promise<ChainTime> {
    if (!this.live.has(name)) await this.netnsAdd(name);
    const c = this.live.get(name)!;
    if (c.result !== undefined) throw new Error(`${this.label}: container ${name} exists already`);
    const steps: Step[] = [];
    const start = performance.now();
    let prev: object | undefined;
    for (const plugin of this.conflist.plugins) {
      const t = performance.now();
      const out = await this.#exec('ADD', plugin, c, prev).catch((e: unknown) => Promise.reject(this.explain(e)));
      steps.push({ step: `${plugin.type} ADD`, ms: performance.now() - t });
      try {
        prev = JSON.parse(out) as object;
      } catch {
        throw new Error(`${this.label}: ${plugin.type} ADD for ${c.netns} printed no JSON result: ${JSON.stringify(out.slice(0, 200))}`);
      }
    }
    const end = performance.now();
    // A chain that "succeeds" without an address would make the comparison meaningless.
    const ips = (prev as { ips?: unknown } | undefined)?.ips;
    if (!Array.isArray(ips) || ips.length === 0) throw new Error(`${this.label}: ADD for ${c.netns} returned no addresses`);
    c.result = prev;
    return { ms: end - start, steps, end };
  }

  /**
   * Runs the DEL chain (timed), then deletes the container's netns (untimed) unless `keepNetns`
   * (then netnsDel() does it). DEL's prevResult is the ADD result, none after a failed ADD.
   */
  async del(name: string, keepNetns = false): Promise<ChainTime> {
    const c = this.live.get(name);
    if (!c) throw new Error(`${this.label}: no container ${name}`);
    const steps: Step[] = [];
    const start = performance.now();
    for (const plugin of [...this.conflist.plugins].reverse()) {
      const t = performance.now();
      const out = await this.#exec('DEL', plugin, c, c.result).catch((e: unknown) => Promise.reject(this.explain(e)));
      steps.push({ step: `${plugin.type} DEL`, ms: performance.now() - t });
      if (out.trim() !== '') throw new Error(`${this.label}: ${plugin.type} DEL for ${c.netns} printed output: ${out.slice(0, 200)}`);
    }
    const end = performance.now();
    if (!keepNetns) await this.netnsDel(name);
    return { ms: end - start, steps, end };
  }

  /** Deletes container `name`'s netns (untimed) and forgets it. */
  async netnsDel(name: string): Promise<void> {
    const c = this.live.get(name);
    if (!c) throw new Error(`${this.label}: no container ${name}`);
    await execOk(['ip', 'netns', 'del', c.netns]);
    this.live.delete(name);
    this.#ports.delete(c.hostPort);
  }

  /** Adds containers (untimed, `parallel` chains at once) until `level` exist; resolves to the wall time. */
  async fill(level: number, parallel: number, signal: AbortSignal): Promise<number> {
    const names: string[] = [];
    while (this.live.size + names.length < level) names.push(`fill-${this.#fills++}`);
    const start = performance.now();
    let next = 0;
    let failed: { error: unknown } | undefined;
    // Every worker finishes its current chain before this returns, so cleanup never races an exec.
    const worker = async (): Promise<void> => {
      while (!failed && next < names.length) {
        if (signal.aborted) {
          failed = { error: signal.reason };
          break;
        }
        const name = names[next++]!;
        try {
          await this.add(name);
        } catch (e) {
          failed ??= { error: e };
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(parallel, names.length) }, worker));
    if (failed) throw failed.error;
    return performance.now() - start;
  }

  /** Deletes every namespace still tracked (no CNI DEL: the lab's teardown takes the rest). */
  async destroy(): Promise<void> {
    const errors: string[] = [];
    for (const [name, c] of this.live) {
      const r = await exec(['ip', 'netns', 'del', c.netns]);
      if (r.code === 0 || /No such file or directory/.test(r.stderr)) this.live.delete(name);
      else errors.push(`ip netns del ${c.netns}: ${r.stderr.trim()}`);
    }
    if (errors.length > 0) throw new Error(`${this.label} cleanup left namespaces behind:\n  ${errors.join('\n  ')}`);
  }

  /** Runs argv in the lab host; throws on failure. */
  protected inHost(argv: readonly string[]): Promise<string> {
    return execOk(['nsenter', `--net=/run/netns/${this.lab.host}`, ...argv]);
  }

  /** Bridge ports in the lab host, by bridge. */
  protected async bridgePorts(): Promise<Map<string, number>> {
    const links = JSON.parse(await this.inHost(['ip', '-j', 'link', 'show'])) as { ifname: string; master?: string }[];
    const ports = new Map<string, number>();
    for (const l of links) if (l.master) ports.set(l.master, (ports.get(l.master) ?? 0) + 1);
    return ports;
  }
}

/**
 * ctnet's plugin, installed with `ctnet cni install` into a temp dir; its conflist is read back
 * and run as any runtime would run it. The plugin forwards to a daemon it starts in the lab host;
 * the lab's teardown ends it with the lab host's other processes. The baseline side is this class
 * in a lab whose ctnet() runs the baseline checkout's bin/ctnet: its `cni install` compiles that
 * checkout's client, with that checkout's bin/ctnet as the daemon to start.
 */
export class CtnetSide extends Side {
  readonly label: 'ctnet' | 'baseline';
  readonly #tmp: string;

  constructor(lab: Lab, label: 'ctnet' | 'baseline') {
    super(lab, label === 'ctnet' ? 'c' : 'b');
    this.label = label;
    this.#tmp = mkdtempSync(join(tmpdir(), `${NETNS_PREFIX}${lab.id}-cni-`));
  }

  protected async prepare(): Promise<{ conflist: ConfList; pluginDirs: readonly string[] }> {
    const bin = join(this.#tmp, 'bin');
    const conf = join(this.#tmp, 'conf');
    mkdirSync(bin);
    mkdirSync(conf);
    await this.lab.ctnetOk(['network', 'create', NETWORK, '--subnet', CTNET_SUBNET]);
    const r = await this.lab.ctnet(['cni', 'install', '--bin-dir', bin, '--conf-dir', conf, '--network', NETWORK]);
    if (r.code !== 0) {
      throw new Error(`ctnet cni install failed (exit ${r.code}): ${r.stderr.trim().split('\n').slice(-3).join('; ')}\n` +
        '  (until ctnet has its CNI plugin, run only the reference: --sides reference)');
    }
    const path = join(conf, `${NETWORK}.conflist`);
    const list = JSON.parse(readFileSync(path, 'utf8')) as Partial<ConfList>;
    if (typeof list.cniVersion !== 'string' || typeof list.name !== 'string' || !Array.isArray(list.plugins) || list.plugins.length === 0) {
      throw new Error(`${path}: not a conflist with cniVersion, name and plugins`);
    }
    const stateDir = list.plugins[0]?.stateDir;
    if (typeof stateDir !== 'string' || resolve(stateDir) !== resolve(this.lab.stateDir)) {
      throw new Error(`${path}: stateDir is ${JSON.stringify(stateDir)}, not the lab's ${this.lab.stateDir}`);
    }
    const ctnetBin = list.plugins[0]?.ctnetBin;
    if (typeof ctnetBin === 'string' && resolve(ctnetBin) !== resolve(this.lab.ctnetBin)) {
      throw new Error(`${path}: ctnetBin is ${JSON.stringify(ctnetBin)}, not ${this.lab.ctnetBin}, the ctnet this side runs`);
    }
    // CNI_PATH as a runtime sets it: its plugin directories, the installed one first.
    return { conflist: list as ConfList, pluginDirs: [bin, CNI_PATH] };
  }

  /** ctnetd's log: STATE_DIR/ctnetd.log (the plugin points the daemon's stderr there). */
  get #log(): string {
    const dir = this.conflist.plugins[0]?.stateDir;
    return join(typeof dir === 'string' ? dir : this.lab.stateDir, 'ctnetd.log');
  }

  /**
   * What ctnetd logged about requests for these container IDs, by "ADD id" / "DEL id". ctnetd logs
   * one line per request, `ADD ID IFNAME: exit 0 in X ms (tools Y ms in N spawns[, netlink K ms in M
   * calls], engine Z ms)`, where X runs from the decoded request to the reply, Y is the time during
   * which at least one process it spawned (ip, nft, ...) ran, K the time in the in-process backend's
   * kernel calls (netlink requests, libnftables transactions; 0 when ctnetd runs the exec backend),
   * and Z = X - Y - K. Older ctnetds log only `in X ms`. The log rotates at 8 MiB into
   * ctnetd.log.1, so both are read.
   */
  daemonLog(ids: ReadonlySet<string>): Map<string, DaemonRequest> {
    const found = new Map<string, DaemonRequest>();
    const line = /ctnetd\[\d+\]: (ADD|DEL) (\S+) \S*: exit (\d+) in ([\d.]+) ms(?: \(tools ([\d.]+) ms in (\d+) spawns(?:, netlink ([\d.]+) ms in \d+ calls)?, engine (-?[\d.]+) ms\))?/;
    for (const file of [`${this.#log}.1`, this.#log]) {
      let text: string;
      try {
        text = readFileSync(file, 'utf8');
      } catch {
        continue; // no rotated copy yet
      }
      for (const l of text.split('\n')) {
        const m = line.exec(l);
        if (!m || !ids.has(m[2]!) || m[3] !== '0') continue;
        const queued = /, after ([\d.]+) ms in the queue/.exec(l);
        found.set(`${m[1]} ${m[2]}`, {
          totalMs: Number(m[4]),
          queuedMs: queued ? Number(queued[1]) : 0,
          ...(m[5] !== undefined ? { toolsMs: Number(m[5]), spawns: Number(m[6]), netlinkMs: Number(m[7] ?? 0), engineMs: Number(m[8]) } : {}),
        });
      }
    }
    return found;
  }

  async census(): Promise<Record<string, number>> {
    let ports = 0;
    for (const [bridge, n] of await this.bridgePorts()) if (bridge !== REF_BRIDGE) ports += n;
    let rules = 0;
    let elements = 0;
    const r = await exec(['nsenter', `--net=/run/netns/${this.lab.host}`, 'nft', '-j', 'list', 'table', 'inet', 'ctnet']);
    if (r.code === 0) {
      for (const o of (JSON.parse(r.stdout) as { nftables: Record<string, { elem?: unknown[] }>[] }).nftables) {
        if (o.rule) rules++;
        elements += (o.set?.elem?.length ?? 0) + (o.map?.elem?.length ?? 0);
      }
    }
    return { 'veths on ctnet bridges': ports, 'nft rules': rules, 'nft set/map elements': elements };
  }

  attached(census: Record<string, number>): number | undefined {
    return census['veths on ctnet bridges'];
  }

  /**
   * A runtime passes no CTNET_STATE_DIR; the plugin takes its state dir from the conflist. This
   * sets it to the same dir anyway, as a guard: a plugin or daemon that ignored the config's
   * stateDir would otherwise fall back to /var/lib/ctnet, outside the lab (as at e30d82a, where
   * `ctnet daemon --state-dir DIR` ignored DIR; fixed in b840a57).
   */
  protected override pluginEnv(): NodeJS.ProcessEnv {
    return { CTNET_STATE_DIR: this.lab.stateDir };
  }

  /** The plugin points at the daemon's log, which goes with the lab's state dir: quote its end. */
  protected override explain(e: unknown): unknown {
    try {
      const log = readFileSync(this.#log, 'utf8').trimEnd();
      if (log === '' || !(e instanceof Error)) return e;
      return new Error(`${e.message}\n  ctnetd.log ends with:\n    ${log.split('\n').slice(-10).join('\n    ')}`);
    } catch {
      return e; // no log
    }
  }

  override async destroy(): Promise<void> {
    try {
      await super.destroy();
    } finally {
      rmSync(this.#tmp, { recursive: true, force: true });
    }
  }
}

/**
 * The reference: the conflist bridge (host-local IPAM) -> portmap from /usr/lib/cni, run in the lab
 * host. Its bridge, veths and iptables rules live in the lab host and vanish with it; host-local's
 * leases go to a temp dir.
 */
class ReferenceSide extends Side {
  readonly label = 'reference';
  readonly #tmp: string;

  constructor(lab: Lab) {
    super(lab, 'r');
    this.#tmp = mkdtempSync(join(tmpdir(), `${NETNS_PREFIX}${lab.id}-ref-`));
  }

  get #leaseDir(): string {
    return join(this.#tmp, 'ipam');
  }

  protected async prepare(): Promise<{ conflist: ConfList; pluginDirs: readonly string[] }> {
    const conflist: ConfList = {
      cniVersion: '1.0.0',
      name: REF_NAME,
      plugins: [
        {
          type: 'bridge',
          bridge: REF_BRIDGE,
          // What ctnet's networks do: the bridge is the containers' gateway, traffic out is
          // masqueraded, and a container can reach its own published port (hairpin).
          isGateway: true,
          ipMasq: true,
          hairpinMode: true,
          // host-local keeps its leases in files; a temp dir keeps them out of /var/lib/cni.
          ipam: { type: 'host-local', ranges: [[{ subnet: REF_SUBNET }]], dataDir: this.#leaseDir },
        },
        // snat defaults to true: masquerade for hairpin and localhost connections to the port.
        { type: 'portmap', capabilities: { portMappings: true } },
      ],
    };
    return { conflist, pluginDirs: [CNI_PATH] };
  }

  async census(): Promise<Record<string, number>> {
    const save = async (t: string) => (await this.inHost(['iptables-save', '-t', t])).split('\n');
    const nat = await save('nat');
    const filter = await save('filter');
    // portmap's DEL also tears down IPv6 chains, whether or not it made any.
    const nat6 = (await this.inHost(['ip6tables-save', '-t', 'nat'])).split('\n');
    let leases = 0;
    try {
      leases = readdirSync(join(this.#leaseDir, REF_NAME)).filter((f) => f !== 'lock' && !f.startsWith('last_reserved_ip')).length;
    } catch {
      // no lease yet
    }
    return {
      'veths on cni0': (await this.bridgePorts()).get(REF_BRIDGE) ?? 0,
      'nat rules': nat.filter((l) => l.startsWith('-A ')).length,
      'nat chains': nat.filter((l) => l.startsWith(':')).length,
      'filter rules': filter.filter((l) => l.startsWith('-A ')).length,
      'ip6 nat rules': nat6.filter((l) => l.startsWith('-A ')).length,
      'ip6 nat chains': nat6.filter((l) => l.startsWith(':')).length,
      'host-local leases': leases,
    };
  }

  attached(census: Record<string, number>): number | undefined {
    return census['veths on cni0'];
  }

  override async destroy(): Promise<void> {
    try {
      await super.destroy();
    } finally {
      rmSync(this.#tmp, { recursive: true, force: true });
    }
  }
}

// ---------------------------------------------------------------------------------------------
// ctnetd's own account of the sampled requests

/** One request as ctnetd logged it (tools, spawns and engine only from a ctnetd that logs them). */
interface DaemonRequest {
  readonly totalMs: number;
  /** How long it waited in ctnetd's queue before (ctnetd logs it from 1 ms; 0 from an older ctnetd). */
  readonly queuedMs: number;
  readonly toolsMs?: number;
  readonly spawns?: number;
  /** In-process kernel calls (the netlink backend); 0 from a ctnetd on the exec backend. */
  readonly netlinkMs?: number;
  readonly engineMs?: number;
}

/** The sampled ADDs (or DELs) of one level, as ctnetd logged them. */
interface DaemonStats {
  /** How many of the sampled requests the log has. */
  readonly found: number;
  /** From the decoded request to the reply. */
  readonly totalMs: Stats;
  /** The chain's wall time minus ctnetd's: plugin exec, nsenter, socket, the queue. Per sample. */
  readonly outsideMs: Stats;
  /** Of outsideMs, the wait in ctnetd's queue (behind the previous request's deferred work, or the services'). */
  readonly queuedMs: Stats;
  readonly toolsMs?: Stats;
  readonly spawns?: Stats;
  readonly netlinkMs?: Stats;
  readonly engineMs?: Stats;
}

/** Pairs each sample's wall time with ctnetd's line for it. */
function daemonStats(log: Map<string, DaemonRequest>, command: 'ADD' | 'DEL', walls: ReadonlyMap<string, number>): DaemonStats | undefined {
  const got: { wall: number; r: DaemonRequest }[] = [];
  for (const [id, wall] of walls) {
    const r = log.get(`${command} ${id}`);
    if (r) got.push({ wall, r });
  }
  if (got.length === 0) return undefined;
  const split = got.every((g) => g.r.toolsMs !== undefined);
  return {
    found: got.length,
    totalMs: stats(got.map((g) => g.r.totalMs)),
    outsideMs: stats(got.map((g) => g.wall - g.r.totalMs)),
    queuedMs: stats(got.map((g) => g.r.queuedMs)),
    ...(split ? {
      toolsMs: stats(got.map((g) => g.r.toolsMs!)),
      spawns: stats(got.map((g) => g.r.spawns!)),
      netlinkMs: stats(got.map((g) => g.r.netlinkMs ?? 0)),
      engineMs: stats(got.map((g) => g.r.engineMs!)),
    } : {}),
  };
}

// ---------------------------------------------------------------------------------------------
// The run

interface SideResult {
  readonly add: Stats;
  readonly del: Stats;
  /** Per plugin exec ("portmap ADD"), the p50 and p95 of its own time. */
  readonly steps: Record<string, Stats>;
  /** Untimed fill from the previous level up to this one, wall time in ms. */
  readonly fillMs: number;
  readonly filled: number;
  /** State before the samples, and what the samples' ADD + DEL left behind (after - before, non-zero only). */
  readonly before: Record<string, number>;
  readonly residue: Record<string, number>;
  /** The ctnet and baseline sides: the sampled requests as ctnetd logged them. */
  readonly daemon?: { readonly add?: DaemonStats; readonly del?: DaemonStats };
  /** With --burst: the burst after this level's samples. */
  readonly burst?: BurstResult;
}

/** N chains of one kind (ADD or DEL) started at once on one side. */
interface BurstPhase {
  /** Each successful chain's wall time, ms, in the order the chains were started. */
  readonly samples: readonly number[];
  readonly p50: number;
  readonly p99: number;
  readonly max: number;
  /** From starting the chains to the end of the last successful one, ms. */
  readonly wallMs: number;
  /** The failed chains' errors (a run with any is not a result). */
  readonly errors: readonly string[];
  /** The ctnet and baseline sides: ctnetd's own time for these requests (queue included), from its log. */
  readonly daemon?: DaemonStats;
  /**
   * The machine's busy CPU time during the phase, ms (machineBusyMs): per chain, what one costs in
   * CPU anywhere; times the chains over the CPUs, the least wall time the phase could take.
   */
  readonly cpuMs: number;
}

/** One side's burst: `size` ADD chains at once, then their `size` DELs at once, at `level` attachments. */
interface BurstResult {
  readonly size: number;
  /** The same level's sequential ADD p50 (this run's samples): what p99 is measured against. */
  readonly singleAddP50: number;
  readonly singleDelP50: number;
  readonly add: BurstPhase;
  readonly del: BurstPhase;
  /** Attachments seen on the side's bridges after the ADD burst (level + size when all succeeded). */
  readonly attachedAfterAdd: number | undefined;
  /** What the burst's ADDs and DELs left behind (census after - before, non-zero only). */
  readonly residue: Record<string, number>;
}

/** Runs every chain at once; each chain's own time, the phase's wall time, and the failures. */
async function burstPhase(chains: readonly (() => Promise<ChainTime>)[]): Promise<Omit<BurstPhase, 'daemon'> & { byChain: (number | undefined)[] }> {
  const start = performance.now();
  const cpuBefore = machineBusyMs();
  const settled = await Promise.allSettled(chains.map((chain) => chain()));
  const cpuMs = machineBusyMs() - cpuBefore;
  const ok = settled.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []));
  const errors = settled.flatMap((r) => (r.status === 'rejected' ? [r.reason instanceof Error ? r.reason.message : String(r.reason)] : []));
  const samples = ok.map((t) => t.ms);
  const sorted = [...samples].sort((a, b) => a - b);
  return {
    samples,
    p50: sorted.length > 0 ? quantile(sorted, 0.5) : NaN,
    p99: sorted.length > 0 ? quantile(sorted, 0.99) : NaN,
    max: sorted.length > 0 ? sorted[sorted.length - 1]! : NaN,
    wallMs: ok.length > 0 ? Math.max(...ok.map((t) => t.end)) - start : NaN,
    errors,
    cpuMs,
    byChain: settled.map((r) => (r.status === 'fulfilled' ? r.value.ms : undefined)),
  };
}

/**
 * A node starting `size` pods at once: the containers' namespaces are added first (untimed, one
 * by one), then every ADD chain is started at the same moment; when all have ended, every DEL
 * chain likewise; then the namespaces are deleted (untimed). A failed chain is counted, not fatal:
 * the DELs run for every container, as a runtime cleans up a failed ADD with a DEL.
 */
async function burst(side: Side, level: number, size: number, single: SideResult, signal: AbortSignal): Promise<BurstResult> {
  const names = Array.from({ length: size }, (_, i) => `b${level}-${i}`);
  const before = await side.census();
  for (const name of names) {
    signal.throwIfAborted();
    await side.netnsAdd(name);
  }
  progress(`${side.label}: burst of ${size} ADDs at once at level ${level}`);
  const add = await burstPhase(names.map((name) => () => side.add(name)));
  const attachedAfterAdd = side.attached(await side.census());
  progress(`${side.label}: burst of ${size} DELs at once at level ${level}`);
  const del = await burstPhase(names.map((name) => () => side.del(name, true)));
  for (const name of names) if (side.live.has(name)) await side.netnsDel(name);
  const residue = diff(before, await side.census());
  let daemon: { add?: DaemonStats; del?: DaemonStats } = {};
  if (side instanceof CtnetSide) {
    const ids = names.map((n) => side.containerId(n));
    const walls = (byChain: (number | undefined)[]) => new Map(ids.flatMap((id, i) => (byChain[i] === undefined ? [] : [[id, byChain[i]!] as const])));
    const log = side.daemonLog(new Set(ids));
    const a = daemonStats(log, 'ADD', walls(add.byChain));
    const d = daemonStats(log, 'DEL', walls(del.byChain));
    daemon = { ...(a ? { add: a } : {}), ...(d ? { del: d } : {}) };
  }
  const phase = ({ byChain: _, ...p }: typeof add, d: DaemonStats | undefined): BurstPhase => ({ ...p, ...(d ? { daemon: d } : {}) });
  return {
    size,
    singleAddP50: single.add.p50,
    singleDelP50: single.del.p50,
    add: phase(add, daemon.add),
    del: phase(del, daemon.del),
    attachedAfterAdd,
    residue,
  };
}

interface LevelResult {
  readonly level: number;
  readonly sides: Partial<Record<SideName, SideResult>>;
}

interface Machine {
  readonly kernel: string;
  readonly node: string;
  readonly cpu: string;
  readonly ctnet: string;
  readonly commit: string;
  readonly cniPlugins: string;
  readonly iptables: string;
  readonly load: string;
  /** This checkout, and the baseline's (with --baseline). */
  readonly checkouts: { readonly ctnet: Checkout; readonly baseline?: Checkout };
}

async function machine(baselineDir: string | undefined): Promise<Machine> {
  const cpu = cpus();
  // Debian's plugins are built without a version string, so ask the package manager.
  const plugins = await exec(['dpkg-query', '-W', '-f', '${Version}', 'containernetworking-plugins']);
  const iptables = await exec(['iptables', '-V']);
  const load = loadAverage();
  const ctnet = await checkout(ROOT);
  const baseline = baselineDir === undefined ? undefined : await checkout(baselineDir);
  return {
    kernel: release(),
    node: process.version,
    cpu: `${cpu.length} x ${cpu[0]?.model.trim() ?? 'unknown'}`,
    ctnet: ctnet.version,
    commit: ctnet.commit,
    cniPlugins: plugins.code === 0 && plugins.stdout ? plugins.stdout : 'unknown',
    iptables: iptables.code === 0 ? iptables.stdout.trim() : 'unknown',
    load,
    checkouts: { ctnet, ...(baseline ? { baseline } : {}) },
  };
}


function diff(before: Record<string, number>, after: Record<string, number>): Record<string, number> {
  const out: Record<string, number> = {};
  for (const k of new Set([...Object.keys(before), ...Object.keys(after)])) {
    const d = (after[k] ?? 0) - (before[k] ?? 0);
    if (d !== 0) out[k] = d;
  }
  return out;
}

async function measure(sides: readonly Side[], opts: Options, signal: AbortSignal): Promise<LevelResult[]> {
  for (const side of sides) {
    signal.throwIfAborted();
    progress(`${side.label}: setting up`);
    await side.setup();
  }

  // One untimed ADD + DEL per side first: the first reference ADD also creates cni0 and portmap's
  // and bridge's shared iptables chains; ctnet's plugin starts its daemon on the first call.
  for (const side of sides) {
    signal.throwIfAborted();
    await side.add('warmup');
    await side.del('warmup');
  }

  const results: LevelResult[] = [];
  for (const level of opts.levels) {
    const fill: Partial<Record<SideName, { ms: number; filled: number }>> = {};
    for (const side of sides) {
      const from = side.live.size;
      if (level > from) progress(`${side.label}: filling from ${from} to ${level} attachments, ${opts.parallel} at a time`);
      const ms = await side.fill(level, opts.parallel, signal);
      fill[side.label] = { ms, filled: level - from };
      if (level > from) progress(`${side.label}: filled ${level - from} in ${(ms / 1000).toFixed(1)} s`);
    }
    const before = new Map<Side, Record<string, number>>();
    for (const side of sides) {
      const c = await side.census();
      const seen = side.attached(c);
      if (seen !== undefined && seen !== level) progress(`warning: ${side.label} should have ${level} attachments, the lab host shows ${seen}`);
      before.set(side, c);
    }

    progress(`level ${level}: ${opts.samples} samples (ADD, then DEL) per side`);
    const add = new Map<Side, number[]>(sides.map((s) => [s, []]));
    const del = new Map<Side, number[]>(sides.map((s) => [s, []]));
    // Each sample's wall time by container ID, to pair with ctnetd's log line for it.
    const addById = new Map<Side, Map<string, number>>(sides.map((s) => [s, new Map()]));
    const delById = new Map<Side, Map<string, number>>(sides.map((s) => [s, new Map()]));
    const steps = new Map<Side, Map<string, number[]>>(sides.map((s) => [s, new Map()]));
    const record = (side: Side, name: string, into: Map<Side, number[]>, byId: Map<Side, Map<string, number>>, r: { ms: number; steps: Step[] }): void => {
      into.get(side)!.push(r.ms);
      byId.get(side)!.set(side.containerId(name), r.ms);
      const mine = steps.get(side)!;
      for (const s of r.steps) {
        if (!mine.has(s.step)) mine.set(s.step, []);
        mine.get(s.step)!.push(s.ms);
      }
    };
    for (let i = 0; i < opts.samples; i++) {
      const name = `s${level}-${i}`;
      // Vary which side goes first (see sampleOrder) so drift in machine load hits all alike. Each
      // ADD runs with exactly `level` others on its side, each DEL with `level` others left.
      const order = sampleOrder(sides, i);
      for (const side of order) {
        signal.throwIfAborted();
        record(side, name, add, addById, await side.add(name));
      }
      for (const side of order) {
        signal.throwIfAborted();
        record(side, name, del, delById, await side.del(name));
      }
    }

    const level_: LevelResult = { level, sides: {} };
    for (const side of sides) {
      const b = before.get(side)!;
      const stepStats: Record<string, Stats> = {};
      for (const [k, v] of steps.get(side)!) stepStats[k] = stats(v);
      let daemon: SideResult['daemon'];
      if (side instanceof CtnetSide) {
        const log = side.daemonLog(new Set(addById.get(side)!.keys()));
        const a = daemonStats(log, 'ADD', addById.get(side)!);
        const d = daemonStats(log, 'DEL', delById.get(side)!);
        daemon = { ...(a ? { add: a } : {}), ...(d ? { del: d } : {}) };
        if ((a?.found ?? 0) < opts.samples || (d?.found ?? 0) < opts.samples) {
          progress(`warning: ${side.label}: ctnetd.log has ${a?.found ?? 0} of the ${opts.samples} sampled ADDs and ${d?.found ?? 0} of the DELs`);
        }
      }
      level_.sides[side.label] = {
        add: stats(add.get(side)!),
        del: stats(del.get(side)!),
        steps: stepStats,
        fillMs: fill[side.label]!.ms,
        filled: fill[side.label]!.filled,
        before: b,
        residue: diff(b, await side.census()),
        ...(daemon ? { daemon } : {}),
      };
    }
    if (opts.burst > 0) {
      // One side's burst after the other's (which goes first changes with the level): the sides
      // never compete for the CPUs during a burst.
      for (const side of sampleOrder(sides, results.length)) {
        const b = await burst(side, level, opts.burst, level_.sides[side.label]!, signal);
        level_.sides[side.label] = { ...level_.sides[side.label]!, burst: b };
        if (b.add.errors.length + b.del.errors.length > 0) {
          progress(`warning: ${side.label}: ${b.add.errors.length} ADDs and ${b.del.errors.length} DELs of the burst failed; first: ` +
            `${[...b.add.errors, ...b.del.errors][0]}`);
        }
      }
    }
    results.push(level_);
  }
  return results;
}

/** ctnet's p50 and p95 divided by another side's, for ADD and DEL. */
function ratios(c: SideResult, o: SideResult): { addP50: number; addP95: number; delP50: number; delP95: number } {
  return { addP50: c.add.p50 / o.add.p50, addP95: c.add.p95 / o.add.p95, delP50: c.del.p50 / o.del.p50, delP95: c.del.p95 / o.del.p95 };
}

function render(results: readonly LevelResult[], info: Machine, opts: Options): string {
  const ms = (n: number) => n.toFixed(1);
  const x = (n: number) => `${n.toFixed(2)}x`;
  const { ctnet, baseline } = info.checkouts;
  const out = [
    `CNI ADD and DEL with one port mapping: ctnet plugin vs. bridge + host-local + portmap` +
      `${baseline ? ' and the baseline\'s ctnet plugin' : ''}, wall time of the whole chain in ms, ${opts.samples} samples per level and side`,
    `kernel ${info.kernel}, node ${info.node}, ${info.cpu}, ctnet ${info.ctnet} (${info.commit}), ` +
      `containernetworking-plugins ${info.cniPlugins}, ${info.iptables}, load ${info.load} at the start`,
    describeCheckout('ctnet', ctnet),
    ...(baseline ? [describeCheckout('baseline', baseline)] : []),
  ];
  for (const r of results) {
    const rows: string[][] = [];
    for (const label of opts.sides) {
      const s = r.sides[label]!;
      rows.push([label, ms(s.add.p50), ms(s.add.p95), ms(s.del.p50), ms(s.del.p95)]);
    }
    const c = r.sides.ctnet;
    for (const other of ['reference', 'baseline'] as const) {
      const o = r.sides[other];
      if (!c || !o) continue;
      const q = ratios(c, o);
      rows.push([`ctnet/${other}`, x(q.addP50), x(q.addP95), x(q.delP50), x(q.delP95)]);
    }
    out.push('', `level ${r.level} (existing attachments per side)`, table(['side', 'ADD p50', 'ADD p95', 'DEL p50', 'DEL p95'], rows));
    for (const label of opts.sides) {
      const s = r.sides[label]!;
      const steps = Object.entries(s.steps).map(([k, v]) => `${k} ${ms(v.p50)}/${ms(v.p95)}`).join(', ');
      const state = Object.entries(s.before).map(([k, v]) => `${v} ${k}`).join(', ');
      const residue = Object.entries(s.residue).map(([k, v]) => `${v > 0 ? '+' : ''}${v} ${k}`).join(', ') || 'none';
      out.push(`  ${label}: per plugin p50/p95 ${steps}`);
      out.push(`  ${label}: before the samples ${state}; left after the samples' DELs: ${residue}`);
    }
  }
  if (opts.burst > 0) out.push(...renderBursts(results, opts));
  out.push('', `fill (untimed, ${opts.parallel} chains at a time, one side after the other):`);
  for (const label of opts.sides) {
    const parts = results.filter((r) => r.sides[label]!.filled > 0)
      .map((r) => `${r.sides[label]!.filled} up to ${r.level} in ${(r.sides[label]!.fillMs / 1000).toFixed(1)} s`);
    const total = results.reduce((t, r) => t + r.sides[label]!.fillMs, 0);
    const count = results.reduce((t, r) => t + r.sides[label]!.filled, 0);
    out.push(`  ${label}: ${parts.join(', ') || 'nothing'}; total ${count} in ${(total / 1000).toFixed(1)} s` +
      (count > 0 ? ` (${(total / count).toFixed(1)} ms per attachment)` : ''));
  }

  // ctnetd's own account: where a request's time goes, and so what in-process netlink could save.
  const rows: string[][] = [];
  for (const label of opts.sides) {
    for (const r of results) {
      const s = r.sides[label]!;
      for (const [command, d, wall] of [['ADD', s.daemon?.add, s.add], ['DEL', s.daemon?.del, s.del]] as const) {
        if (!s.daemon) continue;
        const pair = (st: Stats | undefined) => (st ? `${ms(st.p50)}/${ms(st.p95)}` : '-');
        const spawns = d?.spawns ? `${d.spawns.p50} (${Math.min(...d.spawns.samples)}-${Math.max(...d.spawns.samples)})` : '-';
        rows.push([label, String(r.level), command, `${d?.found ?? 0}/${opts.samples}`, pair(wall), pair(d?.totalMs), pair(d?.outsideMs), pair(d?.queuedMs),
          pair(d?.toolsMs), spawns, pair(d?.netlinkMs), pair(d?.engineMs)]);
      }
    }
  }
  if (rows.length > 0) {
    const old = rows.some((row) => row[11] === '-') ? ' (- where that ctnetd logs no tools and engine times)' : '';
    out.push('', `inside ctnetd, p50/p95 in ms, from ctnetd.log${old}:`,
      table(['side', 'level', 'request', 'logged', 'wall', 'in ctnetd', 'outside', 'of it queued', 'tools', 'spawns', 'netlink', 'engine'], rows));
  }
  return out.join('\n') + '\n';
}

/**
 * The bursts: per level, one table for the ADDs and one for the DELs. `p99/single` is the burst's
 * p99 over the same level's sequential p50 (issue 20's goal for ADD: at most 5x); `per s` is the
 * fill rate, chains completed per second of the burst's wall time.
 */
function renderBursts(results: readonly LevelResult[], opts: Options): string[] {
  const ms = (n: number) => (Number.isNaN(n) ? '-' : n.toFixed(1));
  const out: string[] = [];
  for (const r of results) {
    out.push('', `burst at level ${r.level}: ${opts.burst} chains started at once, ADDs then DELs, one side after the other; ms`);
    for (const command of ['ADD', 'DEL'] as const) {
      const rows: string[][] = [];
      for (const label of opts.sides) {
        const b = r.sides[label]?.burst;
        if (!b) continue;
        const p = command === 'ADD' ? b.add : b.del;
        const single = command === 'ADD' ? b.singleAddP50 : b.singleDelP50;
        const d = p.daemon ? `${ms(p.daemon.totalMs.p50)}/${ms(Math.max(...p.daemon.totalMs.samples))}` : '-';
        // The CPU bound: the burst's CPU spread over every CPU is the least wall time its last chain can take.
        const floor = p.cpuMs / cpus().length;
        rows.push([label, ms(single), ms(p.p50), ms(p.p99), ms(p.max), `${(p.p99 / single).toFixed(2)}x`, ms(p.wallMs),
          (p.samples.length / (p.wallMs / 1000)).toFixed(1), String(p.errors.length), d, ms(p.cpuMs / opts.burst), `${ms(floor)} (${(floor / single).toFixed(1)}x)`]);
      }
      out.push(table([`${command}`, 'single p50', 'p50', 'p99', 'max', 'p99/single', 'wall', 'per s', 'errors', 'in ctnetd p50/max', 'CPU per chain', 'CPU floor (/single)'], rows));
    }
    for (const label of opts.sides) {
      const b = r.sides[label]?.burst;
      if (!b) continue;
      const residue = Object.entries(b.residue).map(([k, v]) => `${v > 0 ? '+' : ''}${v} ${k}`).join(', ') || 'none';
      out.push(`  ${label}: ${b.attachedAfterAdd ?? '?'} attached after the ADDs (expected ${r.level + b.size}); left after the DELs: ${residue}`);
      for (const e of [...b.add.errors, ...b.del.errors].slice(0, 3)) out.push(`  ${label}: error: ${e.split('\n')[0]}`);
    }
  }
  return out;
}

function toJson(results: readonly LevelResult[], info: Machine, opts: Options): string {
  const st = (s: Stats) => ({ p50Ms: round(s.p50), p95Ms: round(s.p95), samplesMs: s.samples.map(round) });
  const rq = (q: ReturnType<typeof ratios>) => ({ addP50: round(q.addP50), addP95: round(q.addP95), delP50: round(q.delP50), delP95: round(q.delP95) });
  const dm = (d: DaemonStats) => ({
    found: d.found,
    total: st(d.totalMs),
    outside: st(d.outsideMs), queued: st(d.queuedMs),
    ...(d.toolsMs ? { tools: st(d.toolsMs) } : {}),
    ...(d.spawns ? { spawns: { p50: d.spawns.p50, p95: d.spawns.p95, samples: d.spawns.samples } } : {}),
    ...(d.engineMs ? { engine: st(d.engineMs) } : {}),
  });
  const bp = (p: BurstPhase, single: number) => ({
    p50Ms: round(p.p50), p99Ms: round(p.p99), maxMs: round(p.max), p99OverSingleP50: round(p.p99 / single), wallMs: round(p.wallMs),
    perSecond: round(p.samples.length / (p.wallMs / 1000)), errors: p.errors, samplesMs: p.samples.map(round), cpuMs: round(p.cpuMs), cpus: cpus().length,
    ...(p.daemon ? { daemon: dm(p.daemon) } : {}),
  });
  const burstJson = (b: BurstResult) => ({
    size: b.size, singleAddP50Ms: round(b.singleAddP50), singleDelP50Ms: round(b.singleDelP50),
    add: bp(b.add, b.singleAddP50), del: bp(b.del, b.singleDelP50), attachedAfterAdd: b.attachedAfterAdd, residue: b.residue,
  });
  return JSON.stringify({
    benchmark: 'cni',
    date: new Date().toISOString(),
    machine: info,
    samples: opts.samples,
    parallel: opts.parallel,
    burst: opts.burst,
    levels: results.map((r) => {
      const c = r.sides.ctnet;
      const ref = r.sides.reference;
      const base = r.sides.baseline;
      return {
        level: r.level,
        ...Object.fromEntries(Object.entries(r.sides).map(([label, s]) => [label, {
          add: st(s.add),
          del: st(s.del),
          steps: Object.fromEntries(Object.entries(s.steps).map(([k, v]) => [k, st(v)])),
          fill: { attachments: s.filled, ms: round(s.fillMs) },
          before: s.before,
          residue: s.residue,
          ...(s.daemon ? { daemon: { ...(s.daemon.add ? { add: dm(s.daemon.add) } : {}), ...(s.daemon.del ? { del: dm(s.daemon.del) } : {}) } } : {}),
          ...(s.burst ? { burst: burstJson(s.burst) } : {}),
        }])),
        ...(c && ref ? { ratio: rq(ratios(c, ref)) } : {}),
        ...(c && base ? { ratioToBaseline: rq(ratios(c, base)) } : {}),
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
  if (baseline) {
    progress(describeCheckout('ctnet', info.checkouts.ctnet));
    progress(describeCheckout('baseline', baseline));
  }
  // A lab per side: no side's links, rules or daemon are in another side's netns.
  const labs: Lab[] = [];
  const sides: Side[] = [];
  let code = 0;
  try {
    for (const label of opts.sides) {
      abort.signal.throwIfAborted();
      progress(`${label}: creating a lab`);
      const lab = await Lab.create(label === 'baseline' ? { ctnet: baseline!.bin } : {}); // removes what it made if it fails itself
      labs.push(lab);
      progress(`${label}: lab host ${lab.host}, container namespaces ${NETNS_PREFIX}${lab.id}-*`);
      sides.push(label === 'reference' ? new ReferenceSide(lab) : new CtnetSide(lab, label));
    }
    const results = await measure(sides, opts, abort.signal);
    process.stdout.write(opts.json ? toJson(results, info, opts) : render(results, info, opts));
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

// bench/memory.ts imports CtnetSide from here.
if (import.meta.main) process.exitCode = await main();
