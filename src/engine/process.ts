// Commands run inside sandboxes, the way `ip netns exec` runs them in the seeds.
import { closeSync, mkdirSync, openSync } from 'node:fs';
import { join } from 'node:path';
import { CtnetError } from '../errors.ts';
import { execArgv, spawnInNetns } from '../kernel/netns.ts';
import { isAlive, processToken, signalProcess } from '../kernel/proc.ts';
import { nsenterArgv, shellLine } from '../plan/render.ts';
import type { Ctx } from './context.ts';
import { readySandbox, sandboxNetns } from './records.ts';

/** The namespace of a ready sandbox whose namespace file exists. */
function liveNetns(ctx: Ctx, name: string) {
  const s = readySandbox(ctx.store, name);
  if (!ctx.kernel.isNetns(s.netns)) {
    throw new CtnetError('STATE', `the network namespace of sandbox ${name} (${s.netns}) is gone`, 'run "ctnet gc" to rebuild it, or remove the sandbox');
  }
  return sandboxNetns(s);
}

/** Runs cmd in the sandbox with the terminal's stdio; resolves to its exit status. */
export function execInSandbox(ctx: Ctx, name: string, cmd: readonly string[]): Promise<number> {
  const ns = liveNetns(ctx, name);
  // A user's process, not a kernel setting: printed for --explain like a plan, run here.
  ctx.applier.note(`run in sandbox ${name}`);
  ctx.applier.explainLine(shellLine(execArgv(ns, cmd)));
  if (ctx.applier.dryRun) return Promise.resolve(0);
  const child = spawnInNetns(ns, cmd, { stdio: 'inherit', detached: false });
  const forward = (sig: NodeJS.Signals) => child.kill(sig);
  process.on('SIGINT', forward).on('SIGTERM', forward);
  return new Promise((resolve, reject) => {
    child.on('error', (e) => reject(new CtnetError('ENVIRONMENT', `cannot run ${cmd[0]}: ${e.message}`)));
    child.on('close', (code, signal) => {
      process.off('SIGINT', forward).off('SIGTERM', forward);
      resolve(code ?? (signal ? 128 + (signalNumber(signal) ?? 1) : 1));
    });
  });
}

/** Starts cmd in the background, its output in STATE_DIR/logs/NAME.log; returns its pid. */
export function startInSandbox(ctx: Ctx, name: string, cmd: readonly string[]): number {
  const ns = liveNetns(ctx, name);
  const logs = join(ctx.store.dir, 'logs');
  mkdirSync(logs, { recursive: true });
  const log = join(logs, `${name}.log`);
  ctx.applier.note(`start in sandbox ${name}, output to ${log}`);
  ctx.applier.explainLine(`${shellLine(execArgv(ns, cmd))} >>${shellLine([log])} 2>&1 &`);
  if (ctx.applier.dryRun) return 0;
  const fd = openSync(log, 'a');
  try {
    const child = spawnInNetns(ns, cmd, { stdio: ['ignore', fd, fd], detached: true });
    child.unref();
    if (child.pid === undefined) throw new CtnetError('ENVIRONMENT', `cannot start ${cmd[0]} in sandbox ${name}`);
    ctx.store.write(() => ctx.store.insertProcess({ sandbox: name, pid: child.pid!, command: shellLine(cmd) }));
    return child.pid;
  } finally {
    closeSync(fd);
  }
}

function signalNumber(signal: NodeJS.Signals): number | undefined {
  const table: Partial<Record<NodeJS.Signals, number>> = { SIGHUP: 1, SIGINT: 2, SIGQUIT: 3, SIGKILL: 9, SIGTERM: 15 };
  return table[signal];
}

/**
 * A sandbox's supervised command (a topology file's `command:`): started detached in its own
 * session (setsid) in the sandbox's namespace, recorded with its process token (pid and start
 * time) so `apply` can tell whether it still runs and start it again when not.
 */
export function startCommand(ctx: Ctx, sandbox: string, argv: readonly string[]): void {
  const pid = startInSandbox(ctx, sandbox, argv);
  if (ctx.applier.dryRun) return;
  ctx.store.write(() => ctx.store.setCommand({ sandbox, argv, process: processToken(pid) }));
}

/** True while the recorded command of SANDBOX runs (the same process that was started). */
export function commandRunning(ctx: Ctx, sandbox: string): boolean {
  const c = ctx.store.command(sandbox);
  return c?.process != null && isAlive(c.process);
}

/**
 * Stops a sandbox's supervised command (SIGTERM to its group, then SIGKILL if it is still there
 * after `graceMs`) and forgets it (forget: false keeps the record, for a restart).
 */
export async function stopCommand(ctx: Ctx, sandbox: string, options: { forget: boolean; graceMs?: number } = { forget: true }): Promise<void> {
  const c = ctx.store.command(sandbox);
  if (!c) return;
  ctx.applier.note(`stop the command of sandbox ${sandbox}`);
  if (ctx.applier.dryRun) return;
  if (c.process && signalProcess(c.process, 'SIGTERM')) {
    const until = Date.now() + (options.graceMs ?? 3000);
    while (isAlive(c.process) && Date.now() < until) await new Promise((r) => setTimeout(r, 50));
    signalProcess(c.process, 'SIGKILL');
  }
  ctx.store.write(() => (options.forget ? ctx.store.deleteCommand(sandbox) : ctx.store.setCommand({ ...c, process: null })));
}
