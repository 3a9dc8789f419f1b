// Commands the front end (src/cli/front.c) hands to ctnetd: the hot ones (create, rm, connect,
// disconnect, port add, port rm, label, policy allow/deny/rm), run here by the same code as in a process of their own
// (cli/run.ts), so a script that builds a topology one command at a time pays no Node start per
// command. ctnetd answers "run it yourself" (the front end then execs the Node command) whenever it
// cannot run the command exactly as that process would: another network, mount or pid namespace,
// another state directory, another build of ctnet, a CTNET_* setting in the caller's environment
// (CTNET_CRASH_AT, CTNET_TRACE, ...), or a state database that was replaced under it.
//
// Request (wire.ts): CLI_ARGC=N, CLI_ARG_0..CLI_ARG_{N-1}, CLI_NETNS/CLI_MNTNS/CLI_PIDNS (the
// caller's /proc/self/ns links), CLI_SCRIPT and CLI_STAMP (codeStamp below, as the front end saw
// it), and the caller's CTNET_* variables as they are.
import { readdirSync, readlinkSync, realpathSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { NotHere, type CliHost } from '../cli/context.ts';
import { CrashPoints } from '../engine/applier.ts';
import { ExecBackend } from '../kernel/exec/backend.ts';
import type { NftSession } from '../kernel/exec/nftlive.ts';
import { daemonBackend, type DaemonBackend, type NetlinkAddon } from '../kernel/netlink/backend.ts';
import { ROOT } from '../root.ts';
import type { Reply } from './wire.ts';

/** The reply's exit status that tells the front end to run the command itself. */
export const RUN_IT_YOURSELF = -1;

/** True for a request from the front end (the CNI plugin's have CNI_COMMAND instead). */
export const isCliRequest = (env: Record<string, string>): boolean => env.CLI_ARGC !== undefined;

/**
 * Which code a start of ctnet runs: the bundle (scripts/build.sh), stamped with its mtime, or the
 * sources, stamped with the newest mtime of anything under src/ (what bin/ctnet's `find -newer`
 * looks at). front.c computes the same two values the same way.
 */
export function codeStamp(script: string): string {
  const ns = (p: string) => statSync(p, { bigint: true }).mtimeNs;
  if (script.endsWith('.mjs')) return String(ns(script));
  const src = join(ROOT, 'src');
  let newest = ns(src);
  for (const e of readdirSync(src, { recursive: true, withFileTypes: true })) {
    const t = ns(join(e.parentPath, e.name));
    if (t > newest) newest = t;
  }
  return String(newest);
}

export interface Self {
  readonly stateDir: string;
  /** realpath of the script this ctnetd runs, and its codeStamp at start. */
  readonly script: string;
  readonly stamp: string;
  /** The state database was deleted or replaced: why, else undefined. */
  readonly storeGone: () => string | undefined;
}

export function self(stateDir: string, storeGone: () => string | undefined): Self {
  const script = realpathSync(process.argv[1]!);
  return { stateDir: realpathSync(stateDir), script, stamp: codeStamp(script), storeGone };
}

const myNs = (kind: string) => readlinkSync(`/proc/self/ns/${kind}`);

/** Why this ctnetd cannot run the request as the caller's own process would; undefined when it can. */
function notHere(env: Record<string, string>, me: Self): string | undefined {
  for (const kind of ['net', 'mnt', 'pid']) {
    if (env[`CLI_${kind.toUpperCase()}NS`] !== myNs(kind)) return `another ${kind} namespace`;
  }
  if (env.CLI_SCRIPT !== me.script || env.CLI_STAMP !== me.stamp) return `another build (${env.CLI_SCRIPT} ${env.CLI_STAMP}; ctnetd runs ${me.script} ${me.stamp})`;
  const set = Object.keys(env).filter((k) => k.startsWith('CTNET_') && k !== 'CTNET_STATE_DIR');
  if (set.length) return `the caller sets ${set.join(', ')}`;
  const gone = me.storeGone();
  if (gone) return `the state database ${gone}`;
  return undefined;
}

/** Runs one command for the front end; the reply carries its stdout, stderr and exit status. */
/** nft: ctnetd's nft -i for the commands' nft transactions (no process start each; see ExecBackend). */
/** addon: ctnetd's in-process kernel backend (netlink/backend.ts), when it chose it; nft -i is then not needed. */
export async function answerCli(env: Record<string, string>, me: Self, nft?: () => NftSession, addon?: NetlinkAddon): Promise<{ reply: Reply; why?: string; argv: string[]; kernel?: DaemonBackend }> {
  const argc = Number(env.CLI_ARGC);
  const argv = Array.from({ length: Number.isInteger(argc) && argc >= 0 ? argc : 0 }, (_, i) => env[`CLI_ARG_${i}`] ?? '');
  const refuse = (why: string) => ({ reply: { exit: RUN_IT_YOURSELF, stdout: '', stderr: '' }, why, argv });
  const why = notHere(env, me);
  if (why) return refuse(why);
  const kernel = daemonBackend(addon, () => new ExecBackend(nft && !addon ? { nft: nft() } : {}));
  let stdout = '';
  let stderr = '';
  const host: CliHost = {
    env: Object.fromEntries(Object.entries(env).filter(([k]) => k.startsWith('CTNET_'))),
    stdout: (t) => void (stdout += t),
    stderr: (t) => void (stderr += t),
    exit: () => {},
    beforeCtx: (g) => {
      let dir: string;
      try {
        dir = realpathSync(g.stateDir);
      } catch {
        throw new NotHere(`state directory ${g.stateDir} does not exist yet`);
      }
      if (dir !== me.stateDir) throw new NotHere(`state directory ${g.stateDir}, not ${me.stateDir}`);
    },
    kernel,
    crash: CrashPoints.none(),
  };
  // Imported here, not above: the command list includes `ctnet daemon`, which imports this module.
  const { runCli } = await import('../cli/run.ts');
  try {
    const exit = await runCli(argv, host);
    return { reply: { exit, stdout, stderr }, argv, kernel };
  } catch (e) {
    if (e instanceof NotHere) return refuse(e.message);
    throw e;
  }
}
