// The two long-lived nft processes ctnetd runs in its namespace (ctnet's other nft calls are one
// process per transaction, in run.ts): `nft monitor`, which says what changed in the ruleset and
// who changed it, and `nft -i`, a session whose netlink socket owns the tables it makes with
// `flags owner` and which applies a transaction without a process spawn.
import { spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import { KernelError } from '../../errors.ts';
import { classify } from './run.ts';

/**
 * Equivalent to: nft monitor. Calls onLine for each line as nft prints it, onExit once when it
 * ends. Line-buffered (stdbuf): nft writes to a pipe in blocks, and a transaction's events and the
 * line naming its process must arrive as they happen.
 */
export function nftMonitor(onLine: (line: string) => void, onExit: (why: string) => void): { stop(): void } {
  const child = spawn('stdbuf', ['-oL', 'nft', 'monitor'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stopped = false;
  let ended = false;
  const end = (why: string) => {
    if (ended) return;
    ended = true;
    if (!stopped) onExit(why);
  };
  createInterface({ input: child.stdout! }).on('line', onLine);
  child.on('exit', (code, signal) => end(`exited (${signal ?? code})`));
  child.on('error', (e) => end(`cannot run nft monitor: ${e.message}`));
  return {
    stop() {
      stopped = true;
      child.kill();
    },
  };
}

/** A line nft prints for this command, and for nothing a transaction prints: the end of a request. */
const MARKER = 'describe meta mark';
const MARKER_OUTPUT = /^meta expression, datatype mark /;
/** A transaction nft has not answered in this long is taken as failed, and the session ended. */
const REQUEST_TIMEOUT_MS = 30_000;

/**
 * Equivalent to: nft -i, kept running. Each request is one line of commands (one transaction:
 * all of it or nothing), followed by a marker command whose output says nft is done with it; what
 * nft printed on stderr meanwhile is its error. Requests run one at a time, in order.
 */
export class NftSession {
  readonly #child: ChildProcess;
  #queue: Promise<unknown> = Promise.resolve();
  #stderr = '';
  #waiting: (() => void) | undefined;
  #ended: string | undefined;
  readonly #onExit: (why: string) => void;
  #closing = false;

  /** onExit: the session ended other than by close() (the tables it owned are gone with it). */
  constructor(onExit: (why: string) => void) {
    this.#onExit = onExit;
    // HOME: nft -i keeps a history file there; a path that cannot hold one keeps it nowhere.
    this.#child = spawn('stdbuf', ['-oL', 'nft', '-i'], { stdio: ['pipe', 'pipe', 'pipe'], env: { ...process.env, HOME: '/dev/null' } });
    createInterface({ input: this.#child.stdout! }).on('line', (line) => {
      // The marker's line: stderr written before it (the request's error) is read in this turn of
      // the event loop or the next, so look once more before answering.
      if (MARKER_OUTPUT.test(line)) setImmediate(() => this.#waiting?.());
    });
    this.#child.stderr!.on('data', (b: Buffer) => {
      this.#stderr += b.toString();
    });
    this.#child.stdin!.on('error', () => {}); // a write after nft ended: reported by the exit below
    const end = (why: string) => {
      if (this.#ended) return;
      this.#ended = why;
      this.#waiting?.();
      if (!this.#closing) this.#onExit(why);
    };
    this.#child.on('exit', (code, signal) => end(`nft -i exited (${signal ?? code})${this.#stderr ? `: ${this.#stderr.trim()}` : ''}`));
    this.#child.on('error', (e) => end(`cannot run nft -i: ${e.message}`));
  }

  /** The pid of the nft process (nft monitor names it as the maker of the session's transactions). */
  get pid(): number | undefined {
    return this.#child.pid;
  }

  /** Applies these lines as one transaction. */
  run(lines: readonly string[]): Promise<void> {
    return this.#request(lines.join(' ; '), () => `nft: ${lines[0] ?? ''} (and ${lines.length - 1} more lines)`);
  }

  /** Equivalent to: nft -f FILE, without the spawn (`include` makes the file's commands one transaction). */
  runFile(path: string, op = 'nft.session'): Promise<void> {
    return this.#request(`include ${JSON.stringify(path)}`, () => `nft -f ${path}`, op);
  }

  close(): void {
    this.#closing = true;
    this.#child.stdin!.end();
    this.#child.kill();
  }

  #request(line: string, command: () => string, op = 'nft.session'): Promise<void> {
    const next = this.#queue.then(() => new Promise<void>((resolve, reject) => {
      if (this.#ended) {
        reject(new KernelError({ kind: 'failed', op, command: command(), stderr: this.#ended }));
        return;
      }
      this.#stderr = '';
      const timer = setTimeout(() => {
        this.#waiting = undefined;
        reject(new KernelError({ kind: 'failed', op, command: command(), stderr: `no answer from nft -i in ${REQUEST_TIMEOUT_MS} ms` }));
        this.close();
        this.#onExit('nft -i did not answer');
      }, REQUEST_TIMEOUT_MS);
      this.#waiting = () => {
        this.#waiting = undefined;
        clearTimeout(timer);
        const stderr = this.#stderr.trim();
        if (this.#ended && !stderr) reject(new KernelError({ kind: 'failed', op, command: command(), stderr: this.#ended }));
        else if (stderr) reject(new KernelError({ kind: classify(stderr), op, command: command(), stderr }));
        else resolve();
      };
      this.#child.stdin!.write(`${line}\n${MARKER}\n`);
    }));
    this.#queue = next.catch(() => {});
    return next;
  }
}
