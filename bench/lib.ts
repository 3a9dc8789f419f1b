// What every benchmark needs: running tools, option parsing, timing, quantiles.
import { spawn } from 'node:child_process';
import { accessSync, constants as fsConstants, existsSync, readFileSync } from 'node:fs';
import { constants } from 'node:os';
import { join, resolve } from 'node:path';

export interface Exit {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

/** Spawns argv (no shell), feeds it `input`, and resolves when it exits. Never rejects. */
export function exec(argv: readonly string[], opts: { input?: string; env?: NodeJS.ProcessEnv } = {}): Promise<Exit> {
  return new Promise((resolve) => {
    const child = spawn(argv[0]!, argv.slice(1), { env: { ...process.env, ...opts.env }, stdio: 'pipe' });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    child.on('error', (e) => resolve({ code: 127, stdout, stderr: stderr + String(e) }));
    child.on('close', (code, signal) => resolve({ code: code ?? (signal ? 128 : 1), stdout, stderr }));
    child.stdin.on('error', () => {}); // the child may exit without reading stdin; its exit code says why
    child.stdin.end(opts.input ?? '');
  });
}

/** Like exec(), but a failure throws an error naming the command, its exit code and its output. */
export async function execOk(argv: readonly string[], opts: { input?: string; env?: NodeJS.ProcessEnv } = {}): Promise<string> {
  return check(argv, await exec(argv, opts));
}

/** The stdout of a finished command, or an error naming it, its exit code and its output. */
export function check(argv: readonly string[], r: Exit): string {
  if (r.code !== 0) {
    // CNI plugins report errors as JSON on stdout, not stderr.
    const detail = (r.stderr.trim() || r.stdout.trim()).split('\n').slice(-3).join('; ');
    throw new Error(`${argv.slice(0, 8).join(' ')}${argv.length > 8 ? ' ...' : ''} failed (exit ${r.code}): ${detail}`);
  }
  return r.stdout;
}

export function intOption(name: string, text: string | undefined, fallback: number, min: number, max: number): number {
  const n = text === undefined ? fallback : Number(text);
  if (!Number.isInteger(n) || n < min || n > max) throw new Error(`--${name} must be an integer from ${min} to ${max}, got ${JSON.stringify(text)}`);
  return n;
}

export async function timed(f: () => Promise<unknown>): Promise<number> {
  const start = performance.now();
  await f();
  return performance.now() - start;
}

/**
 * CPU time (user + system, ms) of this process's exited and reaped children so far, from
 * /proc/self/stat (cutime, cstime; USER_HZ is 100 on Linux). The difference around one awaited
 * command is that command's CPU, whole process tree: less swayed by a busy machine than its wall
 * time (10 ms resolution). Only meaningful while nothing else of this process runs meanwhile.
 */
export function childCpuMs(): number {
  const stat = readFileSync('/proc/self/stat', 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  // fields[0] is field 3 (state): cutime and cstime are fields 16 and 17.
  return (Number(fields[13]) + Number(fields[14])) * 10;
}

/** Wall time and children's CPU time (ms) of f. */
export async function timedCpu(f: () => Promise<unknown>): Promise<{ wall: number; cpu: number }> {
  const cpu = childCpuMs();
  const wall = await timed(f);
  return { wall, cpu: childCpuMs() - cpu };
}

/** The q-quantile with linear interpolation between closest ranks (numpy's default). */
/**
 * The whole machine's busy CPU time so far, ms (/proc/stat: every CPU's jiffies but idle and iowait,
 * at USER_HZ = 100). Over a stretch where the bench is all that runs, its difference is what the
 * stretch cost in CPU, wherever it ran: the plugins, ctnetd, the kernel's work for them.
 */
export function machineBusyMs(): number {
  const f = readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1).map(Number);
  // user nice system idle iowait irq softirq steal ...: steal is the hypervisor's, not this machine's work.
  const [user, nice, system, , , irq, softirq] = f;
  return (user! + nice! + system! + irq! + softirq!) * 10;
}

export function quantile(sorted: readonly number[], q: number): number {
  const pos = (sorted.length - 1) * q;
  const lo = Math.floor(pos);
  const hi = Math.ceil(pos);
  return sorted[lo]! + (sorted[hi]! - sorted[lo]!) * (pos - lo);
}

/** Progress lines for humans, on stderr (stdout carries the results). */
export const progress = (text: string): void => void process.stderr.write(`bench: ${text}\n`);

/** Parses options with parse(); on an error prints it with the usage. Returns the options or an exit code. */
export function optionsOrExit<T>(parse: (argv: readonly string[]) => T | 'help', usage: string): T | number {
  let opts: T | 'help';
  try {
    opts = parse(process.argv.slice(2));
  } catch (e) {
    process.stderr.write(`bench: ${(e as Error).message}\n${usage}\n`);
    return 2;
  }
  if (opts === 'help') {
    process.stdout.write(`${usage}\n`);
    return 0;
  }
  return opts;
}

/**
 * Ctrl-C / SIGTERM must not kill a benchmark before its finally has torn the lab down: the first
 * signal becomes an abort checked between steps, the rest are ignored while cleaning up.
 * interrupted() is the exit code to report: 128 + the signal's number, as a shell reports it.
 */
export function trapSignals(): { abort: AbortController; interrupted: () => number } {
  const abort = new AbortController();
  let code = 0;
  const onSignal = (sig: NodeJS.Signals): void => {
    if (abort.signal.aborted) return;
    progress(`${sig}: stopping after the current step, then cleaning up`);
    code = 128 + constants.signals[sig];
    abort.abort(new Error(`interrupted by ${sig}`));
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  process.on('SIGHUP', onSignal);
  return { abort, interrupted: () => code };
}

/** p50 and p95 of latency samples (ms), with the samples in the order taken. */
export interface Stats {
  readonly p50: number;
  readonly p95: number;
  readonly samples: readonly number[];
}

export function stats(samples: readonly number[]): Stats {
  const sorted = [...samples].sort((a, b) => a - b);
  return { p50: quantile(sorted, 0.5), p95: quantile(sorted, 0.95), samples };
}

/** Milliseconds to two decimals, for JSON output. */
export const round = (ms: number): number => Math.round(ms * 100) / 100;

/**
 * A ctnet checkout whose bin/ctnet a benchmark runs: the one it runs from (ROOT) or a baseline
 * (`--baseline DIR`). `bundle` says what bin/ctnet starts: build/ctnet.mjs (scripts/build.sh) while
 * no file in src/ is newer, else the sources, which start about twice as slowly. Two sides are
 * comparable only if both start the same way.
 */
export interface Checkout {
  readonly dir: string;
  readonly bin: string;
  readonly version: string;
  /** Short commit, with "+changes" if src/, bin/ or scripts/ differ from it (untracked files too). */
  readonly commit: string;
  readonly bundle: boolean;
}

/** Whether bin/ctnet in dir starts the bundle right now (the test bin/ctnet itself makes), not the sources. */
export async function bundled(dir: string): Promise<boolean> {
  const bundle = join(dir, 'build', 'ctnet.mjs');
  let launcher = '';
  try {
    launcher = readFileSync(join(dir, 'bin', 'ctnet'), 'utf8');
  } catch {
    return false;
  }
  if (!launcher.includes('ctnet.mjs') || !existsSync(bundle)) return false;
  const newer = await exec(['find', join(dir, 'src'), '-newer', bundle, '-print', '-quit']);
  return newer.code === 0 && newer.stdout.trim() === '';
}

export async function checkout(dir: string): Promise<Checkout> {
  const root = resolve(dir);
  const bin = join(root, 'bin', 'ctnet');
  try {
    accessSync(bin, fsConstants.X_OK);
  } catch {
    throw new Error(`${root} is not a ctnet checkout: no executable bin/ctnet`);
  }
  let version = 'unknown';
  try {
    version = (JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { version: string }).version;
  } catch {
    // no package.json: keep going, the commit says more
  }
  // Read-only git: no index refresh, no locks (other sessions work in these checkouts).
  const env = { GIT_OPTIONAL_LOCKS: '0' };
  const head = await exec(['git', '-C', root, 'rev-parse', '--short', 'HEAD'], { env });
  const dirty = await exec(['git', '-C', root, 'status', '--porcelain', '--', 'src', 'bin', 'scripts', 'package.json'], { env });
  const commit = head.code !== 0 ? 'unknown' : `${head.stdout.trim()}${dirty.code === 0 && dirty.stdout.trim() !== '' ? '+changes' : ''}`;
  return { dir: root, bin, version, commit, bundle: await bundled(root) };
}

/** One line about a checkout, for the header of a result. */
export function describeCheckout(label: string, c: Checkout): string {
  return `${label}: ${c.dir} at ${c.commit} (version ${c.version}), bin/ctnet runs ${c.bundle ? 'the bundle' : 'the sources (no current build/ctnet.mjs)'}`;
}

/**
 * Why a ctnet/baseline comparison would be unfair on how the two start, or undefined. A warning,
 * not an error: an edited checkout runs its sources on purpose.
 */
export function startupMismatch(ctnet: Checkout, baseline: Checkout): string | undefined {
  if (ctnet.bundle === baseline.bundle) return undefined;
  const [bundled_, sources] = ctnet.bundle ? ['ctnet', 'baseline'] : ['baseline', 'ctnet'];
  return `warning: ${bundled_} runs its bundle (build/ctnet.mjs) but ${sources} runs its sources, so each of ${sources}'s ctnet ` +
    `processes starts slower; run scripts/build.sh in ${sources === 'ctnet' ? ctnet.dir : baseline.dir} (and touch nothing in its src/ until the run ends)`;
}

/**
 * The order in which sample i takes the sides, so that drift in machine load hits all alike. Two
 * sides alternate (AB, BA, ...). More sides rotate by one each sample, and every other round of
 * rotations runs backwards: with three, six samples take all six orders, so each side is first,
 * second and last equally often, and comes before each other side as often as after it.
 */
export function sampleOrder<T>(sides: readonly T[], i: number): T[] {
  const n = sides.length;
  const order = sides.map((_, k) => sides[(k + i) % n]!);
  return n > 2 && Math.floor(i / n) % 2 === 1 ? order.reverse() : order;
}

/** Destroys each in turn, past failures (each reported); returns 1 when any failed, else 0. */
export async function destroyAll(things: readonly { destroy(): Promise<void> }[]): Promise<number> {
  let code = 0;
  for (const t of things) {
    try {
      await t.destroy();
    } catch (e) {
      process.stderr.write(`bench: ${(e as Error).message}\n`);
      code = 1;
    }
  }
  return code;
}

/** --levels (distinct, ascending; default `fallback`) and --baseline (a directory, if given). */
export function levelsAndBaseline(values: { levels?: string | undefined; baseline?: string | undefined }, fallback: readonly number[], max: number):
  { levels: number[]; baseline: string | undefined } {
  const levels = values.levels === undefined
    ? [...fallback]
    : values.levels.split(',').map((l) => intOption('levels', l.trim(), 0, 0, max));
  if (levels.length === 0 || levels.some((l, i) => i > 0 && l <= levels[i - 1]!)) {
    throw new Error(`--levels must be distinct and ascending, got ${JSON.stringify(values.levels)}`);
  }
  if (values.baseline === '') throw new Error('--baseline needs a directory');
  return { levels, baseline: values.baseline };
}

/** The 1, 5 and 15 minute load averages, as /proc/loadavg says them ("unknown" elsewhere). */
export function loadAverage(): string {
  try {
    return readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ');
  } catch {
    return 'unknown';
  }
}
