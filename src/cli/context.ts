// The global options, worked out in one place: the state directory, --explain/--dry-run, --json,
// the root check, and the Ctx (store, kernel, applier) a command runs with.
import { CtnetError } from '../errors.ts';
import { DEFAULT_STATE_DIR, Store } from '../store/store.ts';
import { createCtx, type Ctx } from '../engine/context.ts';
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

export const out = (text: string): void => void process.stdout.write(text.endsWith('\n') ? text : text + '\n');
export const warn = (message: string): void => void process.stderr.write(`ctnet: ${message}\n`);

export function makeIo(g: Globals): Io {
  return { out, warn, json: g.json, quiet: g.explain || g.dryRun, stateDir: g.stateDir };
}

/** Opens the store and the applier for one command. The caller closes the store. */
export function openCtx(g: Globals): Ctx {
  if (process.getuid?.() !== 0) {
    throw new CtnetError('ENVIRONMENT', 'ctnet programs the kernel and must run as root', 'run it with sudo');
  }
  const explain = g.explain || g.dryRun;
  return createCtx({ store: new Store(g.stateDir, { onWait: warn }), dryRun: g.dryRun, explain: explain ? (line) => out(line) : undefined, warn });
}
