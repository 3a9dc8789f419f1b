// The one place that spawns kernel tools (execFile-style, never a shell string). A failure becomes a
// KernelError whose kind is decided here, from the tool's exit and stderr: the only place ctnet
// reads error text.
import { spawn } from 'node:child_process';
import { KernelError, type KernelErrorKind } from '../../errors.ts';
import { shellLine } from '../../plan/render.ts';

/** CTNET_TRACE=1: every tool ctnet runs, with its duration, on stderr (the daemon's log). */
const TRACE = process.env.CTNET_TRACE === '1';

export interface RunResult {
  readonly stdout: string;
  readonly stderr: string;
}

// iproute2, nft, conntrack and ss say "it is not there" and "it is there already" in these words.
// "Cannot assign requested address" (EADDRNOTAVAIL) is `ip addr del` of an address the link does
// not have: not-found, as the netlink backend maps the same errno.
const NOT_FOUND = /Cannot find device|No such file or directory|does not exist|No such process|Cannot find|not found|No such device|Cannot remove namespace|Invalid "netns"|0 flow entries have been deleted|does a matching rule exist|qdisc with handle of zero|Cannot assign requested address/i;
const EXISTS = /File exists|already exists/i;
const BUSY = /Device or resource busy|Resource busy/i;
const PERMISSION = /Operation not permitted|Permission denied/i;

export function classify(stderr: string): KernelErrorKind {
  if (PERMISSION.test(stderr)) return 'permission';
  if (EXISTS.test(stderr)) return 'exists';
  if (BUSY.test(stderr)) return 'busy';
  if (NOT_FOUND.test(stderr)) return 'not-found';
  return 'failed';
}

/** What to do about a failure whose cause the text names: a kernel built without a feature. */
function hintFor(stderr: string, command: string): string | undefined {
  // tc says "kind is unknown" alone, and "Invalid qdisc name" inside a batch.
  if (/Specified qdisc kind is unknown|Unknown qdisc "netem"|Invalid qdisc name/i.test(stderr) && /netem/.test(command)) {
    return 'this kernel has no netem (CONFIG_NET_SCH_NETEM, module sch_netem), which --latency and --loss need; rates alone work with tbf';
  }
  if (/Unknown device type/i.test(stderr)) return 'this kernel lacks that kind of interface (its module is not built or not loaded)';
  return undefined;
}

/** Time spent in tools, so a request can report its own (engine) time apart from process spawns. */
export class SpawnStats {
  spawns = 0;
  /** Transactions sent to a running nft -i instead of a process of their own (counted in ms, not in spawns). */
  sessionCalls = 0;
  /** Wall time with at least one tool running (overlapping tools count once). */
  ms = 0;
  #running = 0;
  #since = 0;
  started(now: number): void {
    if (this.#running++ === 0) this.#since = now;
  }
  ended(now: number, spawned = true): void {
    if (spawned) this.spawns++;
    else this.sessionCalls++;
    if (--this.#running === 0) this.ms += now - this.#since;
  }
}

/** Runs argv; op names the operation (or read) for the error. input: text for the tool's stdin. */
export async function run(op: string, argv: readonly string[], input?: string, stats?: SpawnStats): Promise<RunResult> {
  const t = performance.now();
  stats?.started(t);
  try {
    return await exec(op, argv, input);
  } finally {
    const now = performance.now();
    stats?.ended(now);
    if (TRACE) process.stderr.write(`ctnet: trace: ${(now - t).toFixed(1)} ms ${shellLine(argv).slice(0, 120)}\n`);
  }
}

function exec(op: string, argv: readonly string[], input: string | undefined): Promise<RunResult> {
  const [file, ...args] = argv;
  if (!file) throw new Error('empty argv');
  return new Promise((resolve, reject) => {
    const child = spawn(file, args, { stdio: [input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout!.on('data', (b: Buffer) => out.push(b));
    child.stderr!.on('data', (b: Buffer) => err.push(b));
    child.on('error', (e: NodeJS.ErrnoException) => {
      reject(new KernelError({
        kind: e.code === 'EACCES' || e.code === 'EPERM' ? 'permission' : 'failed', op, command: shellLine(argv), stderr: e.message,
        errno: e.code, hint: e.code === 'ENOENT' ? `install ${file} (scripts/install.sh does it)` : undefined,
      }));
    });
    child.on('close', (code) => {
      const stdout = Buffer.concat(out).toString();
      const stderr = Buffer.concat(err).toString();
      if (code === 0) resolve({ stdout, stderr });
      else reject(new KernelError({ kind: classify(stderr || stdout), op, command: shellLine(argv), stderr: stderr || stdout, exitCode: code, hint: hintFor(stderr, `${shellLine(argv)}\n${input ?? ''}`) }));
    });
    if (input !== undefined) child.stdin?.end(input);
  });
}
