// What every benchmark needs: running tools, option parsing, timing, quantiles.
import { spawn } from 'node:child_process';
import { constants } from 'node:os';

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

/** The q-quantile with linear interpolation between closest ranks (numpy's default). */
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
