// Benchmark (issue 12, point 5): the crash campaign. In one lab, trial after trial, a random
// operation (create, rm, connect, disconnect, port add/rm, policy allow/rm, label, network
// create/rm through the CLI; CNI ADD/DEL through ctnetd) is SIGKILLed at a random moment: the CLI
// process for CLI operations, ctnetd for CNI ones, either after a random delay or at a random crash
// point (CTNET_CRASH_AT). Then `ctnet gc`, and the invariants: gc succeeds and a second gc has
// nothing left to do, the store and the kernel agree object by object (test/lab/consistency.ts: no
// address twice, no orphan link, netns or nft element), and the CNI namespaces hold nothing no
// record owns. A killed ctnetd is started again. Exits 1 on any violation.
//
//   scripts/node bench/crash.ts [--trials N] [--seed N] [--max-sandboxes N] [--json]
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, mkdirSync, mkdtempSync, openSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { table } from '../src/cli/table.ts';
import { daemonPid, socketPath, stopDaemon } from '../src/daemon/server.ts';
import { Lab } from '../src/lab/lab.ts';
import { checkConsistent, readStore, type StoreDump } from '../test/lab/consistency.ts';
import { pluginConfigs } from '../test/lab/cni-driver.ts';
import { intOption, loadAverage, optionsOrExit, progress, quantile, trapSignals } from './lib.ts';

export type Target = 'cli' | 'ctnetd';
export type Mode = 'delay' | 'crash-at';

export interface CampaignOptions {
  readonly trials: number;
  readonly seed: number;
  /** CLI sandboxes and CNI containers together never exceed this. */
  readonly maxSandboxes: number;
  /** One line per trial (default: none). */
  readonly log?: ((line: string) => void) | undefined;
  readonly signal?: AbortSignal | undefined;
  /** Stop after this many trials with violations (default 20): past that, more say little. */
  readonly maxBadTrials?: number | undefined;
}

export interface Trial {
  readonly n: number;
  /** The operation's kind ("create", "CNI ADD", ...) and its command line (or CNI call). */
  readonly op: string;
  readonly what: string;
  readonly target: Target;
  readonly mode: Mode;
  /** ms of delay, or the crash point. */
  readonly at: number;
  /** A SIGKILL reached the process (a CLI that finished first, or an armed ctnetd that never reached its point, was not killed). */
  readonly killed: boolean;
  /** ...while the operation was still under way (its CLI running, or the CNI call unanswered). */
  readonly midOp: boolean;
  /** How the operation ended for its caller: "ok", "error" (a clean one), or "killed". */
  readonly result: 'ok' | 'error' | 'killed';
  /** What the first gc did (empty: store and kernel agreed). */
  readonly repairs: readonly string[];
  readonly violations: readonly string[];
  /** Whole trial: the operation, gc twice, the checks, restarting ctnetd. */
  readonly ms: number;
  readonly opMs: number;
  /** Something to know that is not a violation (a killed process's tools still running after 30 s). */
  readonly notes: readonly string[];
}

export interface Summary {
  readonly seed: number;
  readonly trials: readonly Trial[];
  readonly violations: number;
  readonly ms: number;
}

/** A small seeded generator (mulberry32): the same seed gives the same choices. */
export function random(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const pick = <T>(r: () => number, xs: readonly T[]): T => xs[Math.floor(r() * xs.length)]!;
const sleep = (ms: number) => new Promise((res) => setTimeout(res, ms));

/** Share of trials that are CNI calls through ctnetd (the rest: CLI commands). */
const CTNETD_SHARE = 0.3;
const FIXED_NETWORKS = ['base', 'side'];
const DYNAMIC_NETWORKS = ['n0', 'n1', 'n2'];
const LABELS = ['tier=web', 'tier=db'];

interface Run {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
  readonly stdout: string;
  readonly stderr: string;
  readonly ms: number;
}

/** A process spawned in its own process group (so the tools it runs can be waited for after a kill). */
function start(argv: readonly string[], env: NodeJS.ProcessEnv, input?: string): { child: ChildProcess; done: Promise<Run> } {
  const t0 = performance.now();
  const child = spawn(argv[0]!, argv.slice(1), { env, detached: true, stdio: ['pipe', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout!.setEncoding('utf8').on('data', (d: string) => (stdout += d));
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  child.stdin!.on('error', () => {});
  child.stdin!.end(input ?? '');
  const done = new Promise<Run>((res) => {
    child.on('error', (e) => res({ code: 127, signal: null, stdout, stderr: stderr + String(e), ms: performance.now() - t0 }));
    child.on('close', (code, signal) => res({ code, signal, stdout, stderr, ms: performance.now() - t0 }));
  });
  return { child, done };
}

/** Live (not zombie) members of a process group; ctnetd's `nft monitor` ends on its next event. */
function groupMembers(pgid: number, ignoreMonitor: boolean): string[] {
  const out: string[] = [];
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const stat = readFileSync(`/proc/${d}/stat`, 'utf8');
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      if (Number(f[2]) !== pgid || f[0] === 'Z' || f[0] === 'X') continue;
      const cmd = readFileSync(`/proc/${d}/cmdline`, 'utf8').split('\0').join(' ').trim();
      if (ignoreMonitor && /\bnft monitor\b/.test(cmd)) continue;
      out.push(`${d} ${cmd}`);
    } catch {
      // gone meanwhile
    }
  }
  return out;
}

/** Waits until what a killed process left running (its ip, nft) has finished: gc must not race it. */
async function settle(pgid: number, ignoreMonitor: boolean): Promise<string | undefined> {
  for (let i = 0; i < 600; i++) {
    if (groupMembers(pgid, ignoreMonitor).length === 0) return undefined;
    await sleep(50);
  }
  return `still running 30 s after the kill: ${groupMembers(pgid, ignoreMonitor).join('; ')}`;
}

function alive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const state = stat.slice(stat.lastIndexOf(')') + 2).split(' ')[0];
    return state !== 'Z' && state !== 'X';
  } catch {
    return false;
  }
}

function answers(path: string): Promise<boolean> {
  return new Promise((res) => {
    const c = connect(path);
    c.once('connect', () => {
      c.end(); // an empty request is a probe: the daemon just closes
      res(true);
    });
    c.once('error', () => res(false));
  });
}

/** Groups gc's lines by what they did, without the names. */
export function repairKind(line: string): string {
  let m: RegExpExecArray | null;
  if ((m = /^removed sandbox \S+ \((\w+) when/.exec(line))) return `removed sandbox (${m[1]})`;
  if ((m = /^removed \S+'s attachment to \S+ \((\w+) when/.exec(line))) return `removed attachment (${m[1]})`;
  if ((m = /^removed network \S+ \((\w+) when/.exec(line))) return `removed network (${m[1]})`;
  if ((m = /^removed (ct\w)\S*, which no record owns/.exec(line))) return m[1] === 'ctv' ? 'removed orphan veth' : 'removed orphan bridge';
  if (/^removed netns \S+, which no record owns/.test(line)) return 'removed orphan netns';
  if (/^rewrote ctnet's nft tables/.test(line)) return 'rewrote the nft tables';
  if (/^forgot sandbox/.test(line)) return 'forgot a CNI sandbox';
  if (/^reattached/.test(line)) return 'reattached';
  if (/^recreated bridge/.test(line)) return 'recreated a bridge';
  if (/^recreated network namespace/.test(line)) return 'recreated a netns';
  if (/^put .* back on bridge/.test(line)) return 'put a veth back on its bridge';
  return line.split(' ').slice(0, 3).join(' ');
}

interface Op {
  readonly kind: string;
  readonly argv?: readonly string[];
  readonly cni?: { readonly command: 'ADD' | 'DEL'; readonly slot: number; readonly hostPort?: number };
}

/**
 * The campaign's world: one lab with two fixed networks (base, dual-stack, is the CNI network),
 * up to three more made and removed by the trials, CLI sandboxes s0..sK, and CNI containers in
 * namespaces of their own (`ctcrash-LAB-N`, made here as a runtime would).
 */
export class Campaign {
  readonly lab: Lab;
  readonly #opts: CampaignOptions;
  readonly #dir: string;
  readonly #slots: string[] = [];
  #plugin = '';
  #conf: Record<string, unknown> = {};
  /** The ctnetd started with CTNET_CRASH_AT (it must not serve the next trial armed). */
  #armed: number | undefined;
  readonly #durations = new Map<string, number[]>();
  /** Highest crash point at which each kind of operation was seen to die. */
  readonly #deepest = new Map<string, number>();

  constructor(lab: Lab, opts: CampaignOptions) {
    this.lab = lab;
    this.#opts = opts;
    this.#dir = mkdtempSync(join(tmpdir(), `ctcrash-${lab.id}-`));
  }

  get cliSlots(): number {
    return this.#opts.maxSandboxes - this.cniSlots;
  }
  get cniSlots(): number {
    return Math.max(1, Math.floor(this.#opts.maxSandboxes / 3));
  }

  async setup(): Promise<void> {
    const { lab } = this;
    await lab.ctnetOk(['network', 'create', 'base', '--subnet', '10.150.0.0/22', '--subnet', 'fd00:150::/64']);
    await lab.ctnetOk(['network', 'create', 'side', '--subnet', '10.151.0.0/24']);
    mkdirSync(join(this.#dir, 'bin'));
    mkdirSync(join(this.#dir, 'conf'));
    const written = (await lab.ctnetOk(['cni', 'install', '--bin-dir', join(this.#dir, 'bin'), '--conf-dir', join(this.#dir, 'conf'), '--network', 'base'])).trim().split('\n');
    this.#plugin = written[0]!;
    this.#conf = pluginConfigs(written[1]!)[0]!;
    for (let i = 0; i < this.cniSlots; i++) {
      const name = `ctcrash-${lab.id}-${i}`;
      const r = await lab.inHost(['ip', 'netns', 'add', name]);
      if (r.code !== 0) throw new Error(`ip netns add ${name} failed: ${r.stderr.trim()}`);
      this.#slots.push(name);
    }
    await this.#startDaemon();
  }

  /** Stops ctnetd and removes the CNI namespaces and files (the lab is the caller's). */
  async close(): Promise<void> {
    await stopDaemon(this.lab.stateDir);
    for (const name of this.#slots) await this.lab.inHost(['ip', 'netns', 'del', name]);
    this.#slots.length = 0;
    rmSync(this.#dir, { recursive: true, force: true });
  }

  async run(): Promise<Summary> {
    const { trials: count, seed, log, signal } = this.#opts;
    // Two streams: what to kill and how depends on the seed alone; the operation and its
    // arguments also depend on what earlier trials left (which timing decides).
    const plan = random(seed);
    const args = random(seed ^ 0x5bd1e995);
    const trials: Trial[] = [];
    const t0 = performance.now();
    let bad = 0;
    for (let n = 0; n < count && !signal?.aborted; n++) {
      const target: Target = plan() < CTNETD_SHARE ? 'ctnetd' : 'cli';
      const mode: Mode = plan() < 0.5 ? 'delay' : 'crash-at';
      const fraction = plan();
      const trial = await this.#trial(n, target, mode, fraction, args);
      trials.push(trial);
      log?.(describeTrial(trial, count));
      if (trial.violations.length && ++bad >= (this.#opts.maxBadTrials ?? 20)) {
        log?.(`${bad} trials with violations: stopping`);
        break;
      }
    }
    return { seed, trials, violations: trials.reduce((k, t) => k + t.violations.length, 0), ms: performance.now() - t0 };
  }

  async #trial(n: number, target: Target, mode: Mode, fraction: number, r: () => number): Promise<Trial> {
    const t0 = performance.now();
    const s = readStore(this.lab);
    const op = target === 'cli' ? this.#cliOp(s, r, n) : this.#cniOp(s, r);
    const at = mode === 'delay' ? Math.round(fraction * this.#delayRange(op.kind, target)) : Math.floor(fraction * ((this.#deepest.get(op.kind) ?? 8) + 3));
    const out = target === 'cli' ? await this.#runCli(op, mode, at) : await this.#runCni(op, mode, at);
    if (!out.killed) (this.#durations.get(op.kind) ?? this.#durations.set(op.kind, []).get(op.kind)!).push(out.ms);
    if (mode === 'crash-at' && out.midOp) this.#deepest.set(op.kind, Math.max(at, this.#deepest.get(op.kind) ?? 0));

    const violations: string[] = [];
    if (out.unclean) violations.push(`${describeOp(op)} failed without a clean error: ${out.unclean}`);
    const repairs: string[] = [];
    const gc1 = await this.lab.ctnet(['gc']);
    if (gc1.code !== 0) violations.push(`gc failed (exit ${gc1.code}): ${gc1.stderr.trim().split('\n').slice(-2).join('; ')}`);
    else for (const line of gc1.stdout.trim().split('\n')) if (line && !/store and kernel agree/.test(line)) repairs.push(line);
    const gc2 = await this.lab.ctnet(['gc']);
    if (gc2.code !== 0 || !/store and kernel agree/.test(gc2.stdout)) violations.push(`a second gc still changed things: ${(gc2.stdout + gc2.stderr).trim().split('\n').join('; ')}`);
    violations.push(...(await checkConsistent(this.lab)), ...(await this.#cniNamespaces()));
    const notes = out.note ? [out.note] : [];
    const restarted = await this.#ensureDaemon();
    if (restarted) notes.push(restarted);
    return {
      n, op: op.kind, what: describeOp(op), target, mode, at, killed: out.killed, midOp: out.midOp, result: out.result,
      repairs, violations, ms: performance.now() - t0, opMs: out.ms, notes,
    };
  }

  /** Delays are drawn up to 1.5 times the median time this kind of operation took when it was not killed. */
  #delayRange(kind: string, target: Target): number {
    const d = this.#durations.get(kind) ?? [];
    if (d.length < 3) return target === 'cli' ? 800 : 150;
    return Math.min(5000, Math.max(30, 1.5 * quantile([...d].sort((a, b) => a - b), 0.5)));
  }

  #cliOp(s: StoreDump, r: () => number, n: number): Op {
    const mine = s.sandboxes.filter((x) => x.owned === 1).map((x) => String(x.name));
    const nets = s.networks.map((x) => String(x.name));
    const attached = (sb: string) => s.attachments.filter((a) => a.sandbox === sb).map((a) => String(a.network));
    const port = () => String(20000 + Math.floor(r() * 2000));
    const choices: [number, () => Op][] = [];
    const free = Array.from({ length: this.cliSlots }, (_, i) => `s${i}`).filter((x) => !mine.includes(x));
    if (free.length) {
      choices.push([3, () => {
        const argv = ['create', pick(r, free), '--network', 'base'];
        if (r() < 0.5) argv.push('--network', pick(r, nets.filter((x) => x !== 'base')));
        if (r() < 0.4) argv.push('-p', `${port()}:80`);
        if (r() < 0.5) argv.push('--label', pick(r, LABELS));
        return { kind: 'create', argv };
      }]);
    }
    if (mine.length) {
      choices.push([2, () => ({ kind: 'rm', argv: ['rm', pick(r, mine)] })]);
      choices.push([1, () => {
        const sb = pick(r, mine);
        const others = nets.filter((x) => !attached(sb).includes(x));
        return others.length ? { kind: 'connect', argv: ['connect', pick(r, others), sb] } : { kind: 'label', argv: ['label', sb, pick(r, LABELS)] };
      }]);
      choices.push([1, () => {
        const sb = pick(r, mine);
        const nets_ = attached(sb);
        return nets_.length ? { kind: 'disconnect', argv: ['disconnect', pick(r, nets_), sb] } : { kind: 'rm', argv: ['rm', sb] };
      }]);
      choices.push([1, () => ({ kind: 'port add', argv: ['port', 'add', pick(r, mine), `${port()}:${r() < 0.5 ? '80' : '53/udp'}`] })]);
      choices.push([1, () => ({ kind: 'label', argv: r() < 0.7 ? ['label', pick(r, mine), pick(r, LABELS)] : ['label', pick(r, mine), '--rm', 'tier'] })]);
    }
    const ports = s.ports.filter((p) => mine.includes(String(p.sandbox)));
    if (ports.length) {
      choices.push([1, () => {
        const p = pick(r, ports);
        return { kind: 'port rm', argv: ['port', 'rm', String(p.sandbox), `${p.host_port}:${p.container_port}/${p.proto}`] };
      }]);
    }
    choices.push([1, () => {
      const from = pick(r, ['label:tier=web', 'net:base']);
      const to = pick(r, ['label:tier=db', ...nets.map((x) => `net:${x}`)]);
      return { kind: 'policy allow', argv: ['policy', 'allow', '--from', from, '--to', to, '--port', `${1000 + Math.floor(r() * 100)}/tcp`, '--name', `p${n}`] };
    }]);
    if (s.policies.length) choices.push([1, () => ({ kind: 'policy rm', argv: ['policy', 'rm', String(pick(r, s.policies).name)] })]);
    const absent = DYNAMIC_NETWORKS.filter((x) => !nets.includes(x));
    if (absent.length) {
      choices.push([0.7, () => {
        const name = pick(r, absent);
        const argv = ['network', 'create', name, '--subnet', `10.152.${DYNAMIC_NETWORKS.indexOf(name)}.0/24`];
        if (r() < 0.3) argv.push('--isolate');
        else if (r() < 0.2) argv.push('--internal');
        return { kind: 'network create', argv };
      }]);
    }
    const present = DYNAMIC_NETWORKS.filter((x) => nets.includes(x));
    if (present.length) {
      choices.push([0.7, () => ({ kind: 'network rm', argv: ['network', 'rm', ...(r() < 0.5 ? ['--force'] : []), pick(r, present)] })]);
    }
    return weighted(r, choices)();
  }

  #cniOp(s: StoreDump, r: () => number): Op {
    const attached = new Set(s.cni.map((c) => String(c.container_id)));
    const slots = this.#slots.map((_, i) => i);
    const free = slots.filter((i) => !attached.has(`crash-${i}`));
    const used = slots.filter((i) => attached.has(`crash-${i}`));
    // A DEL of what is not attached (a runtime's retry) now and then: it must succeed and change nothing.
    if (free.length && (used.length === 0 || r() < 0.55)) {
      return { kind: 'CNI ADD', cni: { command: 'ADD', slot: pick(r, free), ...(r() < 0.4 ? { hostPort: 22000 + Math.floor(r() * 1000) } : {}) } };
    }
    return { kind: 'CNI DEL', cni: { command: 'DEL', slot: used.length && r() < 0.9 ? pick(r, used) : pick(r, slots) } };
  }

  async #runCli(op: Op, mode: Mode, at: number): Promise<Outcome> {
    const { lab } = this;
    const env = { ...process.env, CTNET_STATE_DIR: lab.stateDir, ...(mode === 'crash-at' ? { CTNET_CRASH_AT: String(at) } : {}) };
    const { child, done } = start(['nsenter', `--net=/run/netns/${lab.host}`, lab.ctnetBin, ...op.argv!], env);
    const pid = child.pid!;
    let timer: NodeJS.Timeout | undefined;
    if (mode === 'delay') timer = setTimeout(() => child.exitCode === null && child.signalCode === null && child.kill('SIGKILL'), at);
    const run = await done;
    clearTimeout(timer);
    const killed = run.signal === 'SIGKILL';
    const note = killed ? await settle(pid, false) : undefined;
    const failed = run.code !== 0 && !killed;
    // A CLI failure is one line saying what was wrong ("ctnet: ..."), never an internal error.
    const unclean = failed && (!/^ctnet: /m.test(run.stderr) || /internal error|database is locked|SQLITE_BUSY|\n\s+at /.test(run.stderr))
      ? run.stderr.trim().split('\n').slice(0, 3).join('; ') : undefined;
    return { killed, midOp: killed, result: killed ? 'killed' : failed ? 'error' : 'ok', ms: run.ms, unclean, note };
  }

  async #runCni(op: Op, mode: Mode, at: number): Promise<Outcome> {
    const { lab } = this;
    const { command, slot, hostPort } = op.cni!;
    let pid: number | undefined;
    let note: string | undefined;
    let killed = false;
    let armed: Daemon | undefined;
    if (mode === 'crash-at') {
      await stopDaemon(lab.stateDir);
      armed = await this.#startDaemon(at);
      pid = armed.pid;
      // Armed, it may die before the call (a crash point in its services' start): then the
      // plugin starts a plain one, and nothing is killed mid-operation.
      if (pid === undefined || !alive(pid)) {
        killed = true;
        pid = undefined;
      }
    } else {
      pid = daemonPid(lab.stateDir);
    }
    const conf = JSON.stringify({ ...this.#conf, ...(hostPort ? { runtimeConfig: { portMappings: [{ hostPort, containerPort: 80, protocol: 'tcp' }] } } : {}) });
    const env = {
      PATH: process.env.PATH, CNI_COMMAND: command, CNI_CONTAINERID: `crash-${slot}`, CNI_NETNS: `/run/netns/${this.#slots[slot]}`,
      CNI_IFNAME: 'eth0', CNI_PATH: '/usr/lib/cni',
    };
    const { done } = start(['nsenter', `--net=/run/netns/${lab.host}`, this.#plugin], env, conf);
    let answered = false;
    let midOp = false;
    let timer: Promise<void> = Promise.resolve();
    if (mode === 'delay' && pid !== undefined) {
      const target = pid;
      // ctnetd is killed at the moment drawn even when it has answered: it may be at its deferred work.
      timer = sleep(at).then(() => {
        if (!alive(target)) return;
        process.kill(target, 'SIGKILL');
        killed = true;
        midOp = !answered;
      });
    }
    const run = await done;
    answered = true;
    await timer;
    // The plugin sees the connection close while the kernel is still ending the daemon: a failed
    // call waits for that end (a daemon that outlives it failed the call some other way).
    if (mode === 'crash-at' && pid !== undefined && (run.code !== 0 ? await armed!.exited(10_000) : !alive(pid))) {
      killed = true;
      midOp = run.code !== 0; // it died on the call's way (the call says "try again"), not after answering
    }
    if (killed && pid !== undefined) note = await settle(pid, true);
    let reply: { code?: number; msg?: string } | undefined;
    try {
      reply = run.stdout.trim() ? (JSON.parse(run.stdout) as { code?: number; msg?: string }) : undefined;
    } catch {
      reply = undefined;
    }
    const failed = run.code !== 0;
    // A failure is the spec's error JSON; "try again" (11) only when ctnetd died under the call.
    const unclean = failed && (!reply?.msg || (reply.code === 11 && !midOp) || /internal error|database is locked/.test(run.stdout))
      ? (run.stdout + run.stderr).trim().slice(0, 300) : undefined;
    return { killed, midOp, result: midOp ? 'killed' : failed ? 'error' : 'ok', ms: run.ms, unclean, note };
  }

  /** Starts ctnetd (armed with a crash point when given); resolves once it answers, or once it died (no pid). */
  async #startDaemon(crashAt?: number): Promise<Daemon> {
    const { lab } = this;
    const log = openSync(join(lab.stateDir, 'ctnetd.log'), 'a');
    const env = { ...process.env, CTNET_STATE_DIR: lab.stateDir, ...(crashAt === undefined ? {} : { CTNET_CRASH_AT: String(crashAt) }) };
    const child = spawn('nsenter', [`--net=/run/netns/${lab.host}`, lab.ctnetBin, 'daemon'], { env, detached: true, stdio: ['ignore', log, log] });
    closeSync(log);
    child.unref();
    let exited = false;
    const exit = new Promise<void>((res) => child.on('exit', () => {
      exited = true;
      res();
    }));
    const daemon = (pid: number | undefined): Daemon => ({
      pid,
      exited: (ms) => Promise.race([exit.then(() => true), sleep(ms).then(() => exited)]),
    });
    for (let i = 0; i < 600 && !exited; i++) {
      if (daemonPid(lab.stateDir) === child.pid && (await answers(socketPath(lab.stateDir)))) {
        this.#armed = crashAt === undefined ? undefined : child.pid;
        return daemon(child.pid);
      }
      await sleep(50);
    }
    if (!exited) throw new Error(`ctnetd did not start within 30 s; see ${lab.stateDir}/ctnetd.log`);
    return daemon(undefined);
  }

  /** After a trial: a plain ctnetd serves (one that was killed, or is armed, is replaced). */
  async #ensureDaemon(): Promise<string | undefined> {
    const pid = daemonPid(this.lab.stateDir);
    if (pid !== undefined && pid !== this.#armed) return undefined;
    if (pid !== undefined) await stopDaemon(this.lab.stateDir);
    this.#armed = undefined;
    await this.#startDaemon();
    return pid === undefined ? 'ctnetd started again' : undefined;
  }

  /** A CNI namespace holds only lo and the interfaces its records name, and no address of another. */
  async #cniNamespaces(): Promise<string[]> {
    const s = readStore(this.lab);
    const problems: string[] = [];
    for (const name of this.#slots) {
      const sb = s.sandboxes.find((x) => x.netns === `/run/netns/${name}`);
      const mine = new Set(s.attachments.filter((a) => sb && a.sandbox === sb.name).map((a) => String(a.ifname)));
      const r = await this.lab.inHost(['ip', '-n', name, '-j', 'link', 'show']);
      if (r.code !== 0) {
        problems.push(`CNI namespace ${name}: ${r.stderr.trim()}`);
        continue;
      }
      for (const l of JSON.parse(r.stdout || '[]') as { ifname: string }[]) {
        if (l.ifname !== 'lo' && !mine.has(l.ifname)) problems.push(`CNI namespace ${name}: interface ${l.ifname} no record owns`);
      }
    }
    return problems;
  }
}

/** A ctnetd this benchmark started: its pid (none if it died before answering), and a wait for its end. */
interface Daemon {
  readonly pid: number | undefined;
  /** True once the process has ended, waiting at most ms for it. */
  exited(ms: number): Promise<boolean>;
}

interface Outcome {
  readonly killed: boolean;
  readonly midOp: boolean;
  readonly result: 'ok' | 'error' | 'killed';
  readonly ms: number;
  readonly unclean: string | undefined;
  readonly note: string | undefined;
}

function weighted<T>(r: () => number, choices: readonly [number, T][]): T {
  const total = choices.reduce((k, [w]) => k + w, 0);
  let x = r() * total;
  for (const [w, c] of choices) if ((x -= w) < 0) return c;
  return choices[choices.length - 1]![1];
}

function describeOp(op: Op): string {
  if (op.argv) return `ctnet ${op.argv.join(' ')}`;
  const c = op.cni!;
  return `CNI ${c.command} crash-${c.slot}${c.hostPort ? ` -p ${c.hostPort}:80` : ''}`;
}

function describeTrial(t: Trial, of: number): string {
  const kill = `${t.target} ${t.mode === 'delay' ? `after ${t.at} ms` : `at crash point ${t.at}`}: ${t.killed ? (t.midOp ? 'killed mid-operation' : 'killed after the operation') : 'not killed (done first)'}`;
  const gc = t.repairs.length ? `gc: ${t.repairs.length} repair(s)` : 'gc: nothing to do';
  const bad = t.violations.length ? ` VIOLATIONS: ${t.violations.join(' | ')}` : '';
  return `trial ${t.n + 1}/${of} ${t.what} [${t.result}] ${kill}; ${gc}; ${(t.ms / 1000).toFixed(1)} s${t.notes.length ? ` (${t.notes.join('; ')})` : ''}${bad}`;
}

/** Counts per row key: trials, kills, mid-operation kills, trials gc had to repair, violations. */
function tally(trials: readonly Trial[], key: (t: Trial) => string): string[][] {
  const rows = new Map<string, Trial[]>();
  for (const t of trials) (rows.get(key(t)) ?? rows.set(key(t), []).get(key(t))!).push(t);
  return [...rows].sort(([a], [b]) => a.localeCompare(b)).map(([k, ts]) => [
    k, String(ts.length), String(ts.filter((t) => t.killed).length), String(ts.filter((t) => t.midOp).length),
    String(ts.filter((t) => t.result === 'ok').length), String(ts.filter((t) => t.result === 'error').length),
    String(ts.filter((t) => t.repairs.length).length), String(ts.filter((t) => t.violations.length).length),
  ]);
}

export function render(sum: Summary): string {
  const ts = sum.trials;
  const head = ['', 'trials', 'killed', 'mid-op', 'op ok', 'op error', 'gc repaired', 'violating'];
  const total = tally(ts, () => 'all')[0] ?? [];
  const ms = [...ts.map((t) => t.ms)].sort((a, b) => a - b);
  const opMs = [...ts.map((t) => t.opMs)].sort((a, b) => a - b);
  const kinds = new Map<string, number>();
  for (const t of ts) for (const r of t.repairs) kinds.set(repairKind(r), (kinds.get(repairKind(r)) ?? 0) + 1);
  const lines = [
    `crash campaign: ${ts.length} trials, seed ${sum.seed}, ${(sum.ms / 1000).toFixed(0)} s`,
    '',
    table(head, [...tally(ts, (t) => `${t.target} ${t.mode}`), total]),
    '',
    table(['operation', ...head.slice(1)], tally(ts, (t) => t.op)),
    '',
    table(['what gc repaired', 'times'], [...kinds].sort((a, b) => b[1] - a[1]).map(([k, v]) => [k, String(v)])),
    '',
    ms.length ? `time per trial: p50 ${(quantile(ms, 0.5) / 1000).toFixed(2)} s, p95 ${(quantile(ms, 0.95) / 1000).toFixed(2)} s, mean ${(ms.reduce((a, b) => a + b, 0) / ms.length / 1000).toFixed(2)} s` +
      ` (the operation itself: p50 ${quantile(opMs, 0.5).toFixed(0)} ms)` : 'no trial ran',
    `violations: ${sum.violations}`,
  ];
  for (const t of ts.filter((x) => x.violations.length)) lines.push(`  trial ${t.n + 1} (${t.what}, ${t.target} ${t.mode} ${t.at}): ${t.violations.join(' | ')}`);
  const notes = ts.filter((t) => t.notes.some((n) => !/started again/.test(n)));
  for (const t of notes) lines.push(`  note, trial ${t.n + 1}: ${t.notes.join('; ')}`);
  return `${lines.join('\n')}\n`;
}

/** Runs a whole campaign in a lab of its own, removed at the end. */
export async function runCampaign(opts: CampaignOptions): Promise<Summary> {
  const lab = await Lab.create();
  let campaign: Campaign | undefined;
  try {
    campaign = new Campaign(lab, opts);
    await campaign.setup();
    return await campaign.run();
  } finally {
    await campaign?.close().catch((e: Error) => progress(`cleaning up: ${e.message}`));
    await lab.destroy();
  }
}

interface Options {
  readonly trials: number;
  readonly seed: number;
  readonly maxSandboxes: number;
  readonly json: boolean;
}

const USAGE = `usage: scripts/node bench/crash.ts [--trials N] [--seed N] [--max-sandboxes N] [--json]
  --trials N         random operations, each SIGKILLed at a random moment, then gc and the checks (default 1000)
  --seed N           the seed of the random choices (default: from the clock; printed)
  --max-sandboxes N  CLI sandboxes and CNI containers together, at most (default 20; a third are CNI)
  --json             print every trial as JSON instead of the tables`;

function parseOptions(argv: readonly string[]): Options | 'help' {
  const { values } = parseArgs({
    args: [...argv],
    options: {
      trials: { type: 'string' }, seed: { type: 'string' }, 'max-sandboxes': { type: 'string' },
      json: { type: 'boolean', default: false }, help: { type: 'boolean', short: 'h', default: false },
    },
    strict: true,
    allowPositionals: false,
  });
  if (values.help) return 'help';
  return {
    trials: intOption('trials', values.trials, 1000, 1, 1_000_000),
    seed: intOption('seed', values.seed, Date.now() % 1_000_000, 0, 2 ** 31 - 1),
    maxSandboxes: intOption('max-sandboxes', values['max-sandboxes'], 20, 3, 200),
    json: values.json,
  };
}

async function main(): Promise<number> {
  const opts = optionsOrExit(parseOptions, USAGE);
  if (typeof opts === 'number') return opts;
  const { abort, interrupted } = trapSignals();
  progress(`${opts.trials} trials, seed ${opts.seed}, at most ${opts.maxSandboxes} sandboxes; load ${loadAverage()}`);
  let sum: Summary;
  try {
    sum = await runCampaign({ ...opts, log: progress, signal: abort.signal });
  } catch (e) {
    progress((e as Error).message);
    return interrupted() || 1;
  }
  // Interrupted: the trials done so far are reported all the same.
  process.stdout.write(opts.json ? `${JSON.stringify(sum, null, 2)}\n` : render(sum));
  return sum.violations > 0 ? 1 : interrupted();
}

if (import.meta.main) process.exitCode = await main();
