// The one place that spawns kernel tools. Every mutating command goes through run(), which is also
// what --explain prints and --dry-run skips.
import { spawn } from 'node:child_process';
import { KernelError } from '../errors.ts';
import { shellLine } from './shell.ts';

/** CTNET_TRACE=1: every tool ctnet runs, with its duration, on stderr (the daemon's log). */
const TRACE = process.env.CTNET_TRACE === '1';

export interface RunOptions {
  /** Changes the kernel: printed by --explain, skipped by --dry-run. */
  readonly mutates?: boolean;
  /** Text for the command's stdin. */
  readonly input?: string;
  /** What --explain prints instead of the argv (e.g. a batch shown as its single commands). */
  readonly explain?: readonly string[];
  readonly hint?: string;
}

export interface RunResult {
  readonly stdout: string;
  readonly stderr: string;
}

export interface RunnerOptions {
  /** Receives each mutating command as a shell line, in order. */
  readonly explain?: (line: string) => void;
  readonly dryRun?: boolean;
}

export class Runner {
  readonly dryRun: boolean;
  readonly #explain: ((line: string) => void) | undefined;

  constructor(options: RunnerOptions = {}) {
    this.dryRun = options.dryRun ?? false;
    this.#explain = options.explain;
  }

  /** Prints a comment line in --explain output (context for the commands that follow). */
  note(text: string): void {
    this.#explain?.(`# ${text}`);
  }

  /**
   * For a change made in-process rather than by a tool (e.g. a /proc/sys write): prints its shell
   * equivalent and says whether to make it (false under --dry-run).
   */
  willChange(line: string): boolean {
    this.#explain?.(line);
    return !this.dryRun;
  }

  async run(argv: readonly string[], options: RunOptions = {}): Promise<RunResult> {
    if (options.mutates) {
      for (const line of options.explain ?? [shellLine(argv)]) this.#explain?.(line);
      if (this.dryRun) return { stdout: '', stderr: '' };
    }
    if (!TRACE) return exec(argv, options.input, options.hint);
    const t = performance.now();
    try {
      return await exec(argv, options.input, options.hint);
    } finally {
      process.stderr.write(`ctnet: trace: ${(performance.now() - t).toFixed(1)} ms ${shellLine(argv).slice(0, 120)}\n`);
    }
  }
}

function exec(argv: readonly string[], input: string | undefined, hint: string | undefined): Promise<RunResult> {
  const [file, ...args] = argv;
  if (!file) throw new Error('empty argv');
  return new Promise((resolve, reject) => {
    const child = spawn(file, args, { stdio: [input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout!.on('data', (b: Buffer) => out.push(b));
    child.stderr!.on('data', (b: Buffer) => err.push(b));
    child.on('error', (e: NodeJS.ErrnoException) => {
      reject(new KernelError(shellLine(argv), null, e.message,
        e.code === 'ENOENT' ? `install ${file} (scripts/install.sh does it)` : hint));
    });
    child.on('close', (code) => {
      const stdout = Buffer.concat(out).toString();
      const stderr = Buffer.concat(err).toString();
      if (code === 0) resolve({ stdout, stderr });
      else reject(new KernelError(shellLine(argv), code, stderr || stdout, hint));
    });
    if (input !== undefined) child.stdin?.end(input);
  });
}
