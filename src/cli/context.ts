// The global options, worked out in one place: the state directory, --explain/--dry-run, --json,
// the root check, and the Ctx (store, kernel, applier) a command runs with.
import { CtnetError } from '../errors.ts';
import { DEFAULT_STATE_DIR, Store } from '../store/store.ts';
import { createCtx, type Ctx } from '../engine/context.ts';
import type { CrashPoints } from '../engine/applier.ts';
import type { KernelBackend } from '../kernel/backend.ts';
import type { Io, OptionSpec } from './command.ts';

/** The global options as commander parsed them (merged from the program and the subcommand). */
export interface GlobalOpts {
  readonly stateDir?: string;
  readonly explain?: boolean;
  readonly dryRun?: boolean;
  readonly json?: boolean;
}

/** The global options, resolved. */
export interface Globals {
  /** --state-dir, else $CTNET_STATE_DIR, else DEFAULT_STATE_DIR. */
  readonly stateDir: string;
  readonly explain: boolean;
  readonly dryRun: boolean;
  readonly json: boolean;
}

/** Every command but `demo` takes these (and `json` ones --json), before or after its name. */
export const GLOBAL_OPTIONS = [
  { flags: '--state-dir <dir>', description: `state directory (env CTNET_STATE_DIR, default ${DEFAULT_STATE_DIR})` },
  { flags: '--explain', description: 'print the equivalent ip/nft commands as they run' },
  { flags: '--dry-run', description: 'print the equivalent ip/nft commands and change nothing' },
] as const satisfies readonly OptionSpec[];
export const JSON_OPTION = { flags: '--json', description: 'print data as JSON' } as const satisfies OptionSpec;

export function resolveGlobals(g: GlobalOpts, env: NodeJS.ProcessEnv = process.env): Globals {
  return {
    stateDir: g.stateDir ?? env.CTNET_STATE_DIR ?? DEFAULT_STATE_DIR,
    explain: g.explain ?? false,
    dryRun: g.dryRun ?? false,
    json: g.json ?? false,
  };
}

/**
 * Where one run of the command line writes and what it sees: this process (PROCESS_HOST), or a
 * request ctnetd runs for the ctnet front end (src/daemon/cli.ts), whose output goes back to it.
 */
export interface CliHost {
  readonly env: NodeJS.ProcessEnv;
  stdout(text: string): void;
  stderr(text: string): void;
  /** The exit code a command asked for. */
  exit(code: number): void;
  /** Called with the resolved globals before the store opens; may throw NotHere (ctnetd: not its state directory). */
  readonly beforeCtx?: (g: Globals) => void;
  /** The kernel and crash points of the context (default: the exec backend; CTNET_CRASH_AT of env). */
  readonly kernel?: KernelBackend;
  readonly crash?: CrashPoints;
}

/** Thrown by a host that cannot run this command as this process would (ctnetd: another state directory). */
export class NotHere extends Error {}

export const PROCESS_HOST: CliHost = {
  env: process.env,
  stdout: (text) => void process.stdout.write(text),
  stderr: (text) => void process.stderr.write(text),
  exit: (code) => void (process.exitCode = code),
};

export function makeIo(g: Globals, host: CliHost = PROCESS_HOST): Io {
  const out = (text: string): void => host.stdout(text.endsWith('\n') ? text : text + '\n');
  const warn = (message: string): void => host.stderr(`ctnet: ${message}\n`);
  return { out, warn, json: g.json, quiet: g.explain || g.dryRun, stateDir: g.stateDir };
}

/** Opens the store and the applier for one command, writing through io. The caller closes the store. */
export function openCtx(g: Globals, io: Io = makeIo(g), host: CliHost = PROCESS_HOST): Ctx {
  if (process.getuid?.() !== 0) {
    throw new CtnetError('ENVIRONMENT', 'ctnet programs the kernel and must run as root', 'run it with sudo');
  }
  host.beforeCtx?.(g);
  const explain = g.explain || g.dryRun;
  const store = new Store(g.stateDir, { onWait: io.warn });
  return createCtx({ store, dryRun: g.dryRun, explain: explain ? (line) => io.out(line) : undefined, warn: io.warn, kernel: host.kernel, crash: host.crash });
}
