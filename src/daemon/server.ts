// ctnetd: the node agent, one per state directory (its socket lives there), in the network
// namespace of whoever started it. It owns what is resident: the CNI plugin's requests, and the
// services (src/services/) that follow the store's change feed (agent.ts). For CNI it keeps the
// store open and runs one request at a time, so requests never interleave their kernel work; the
// store's transactions still serialise it against CLI processes using the same state directory.
// The CLI never needs ctnetd: what it changes while ctnetd is down reaches the services at start.
// While it runs, the front end (src/cli/front.c) hands it the hot commands (cli.ts), which run in
// the same queue as CNI requests.
import { chmodSync, copyFileSync, existsSync, fstatSync, ftruncateSync, readFileSync, readlinkSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { connect, createServer, type Socket } from 'node:net';
import { join } from 'node:path';
import { DatabaseSync } from 'node:sqlite';
import { handleCni } from '../cni/handler.ts';
import { CniError, CODE, renderError } from '../cni/protocol.ts';
import { CrashPoints } from '../engine/applier.ts';
import { createCtx, type Ctx } from '../engine/context.ts';
import { ExecBackend } from '../kernel/exec/backend.ts';
import { NftSession } from '../kernel/exec/nftlive.ts';
import { chooseAddon, daemonBackend, type DaemonBackend } from '../kernel/netlink/backend.ts';
import { builtinServices } from '../services/index.ts';
import { Store } from '../store/store.ts';
import { startAgent, type Agent } from './agent.ts';
import { answerCli, isCliRequest, self } from './cli.ts';
import { decodeRequest, encodeReply, type Reply } from './wire.ts';

/** The in-process backend's share of a request (netlink requests and libnftables transactions), for the log. */
const inProcess = (k: DaemonBackend) => (k.calls ? `, netlink ${k.calls.ms.toFixed(1)} ms in ${k.calls.calls} calls` : '');

export const SOCKET_NAME = 'ctnetd.sock';
const LOCK_NAME = 'ctnetd.lock';
const PID_NAME = 'ctnetd.pid';

export const socketPath = (stateDir: string) => join(stateDir, SOCKET_NAME);

/** The log (ctnetd.log, where the plugin points stderr) keeps at most this much, plus one older copy. */
const LOG_MAX = Number(process.env.CTNET_LOG_MAX_BYTES) || 8 << 20;

/** When stderr is STATE_DIR/ctnetd.log and has grown past LOG_MAX: copy it to .1 and start again. */
function boundLog(stateDir: string): void {
  const path = join(stateDir, 'ctnetd.log');
  try {
    const mine = fstatSync(2);
    if (mine.size < LOG_MAX || mine.ino !== statSync(path).ino) return;
    copyFileSync(path, `${path}.1`);
    ftruncateSync(2, 0); // opened with O_APPEND: the next line starts the file again
  } catch {
    // stderr is not that file (a terminal, a pipe): nothing to bound
  }
}

const log = (m: string) => process.stderr.write(`${new Date().toISOString()} ctnetd[${process.pid}]: ${m}\n`);
const myNetns = () => readlinkSync('/proc/self/ns/net');

/**
 * Holds the daemon lock of a state directory for the life of the process: an exclusive SQLite
 * lock (a POSIX file lock, so a killed daemon releases it). Undefined when another daemon has it.
 */
function takeLock(stateDir: string): DatabaseSync | undefined {
  const db = new DatabaseSync(join(stateDir, LOCK_NAME), { timeout: 0 });
  try {
    db.exec('PRAGMA locking_mode = EXCLUSIVE; BEGIN EXCLUSIVE');
    return db;
  } catch {
    db.close();
    return undefined;
  }
}

/** True while a daemon holds the lock of stateDir. */
function lockHeld(stateDir: string): boolean {
  if (!existsSync(join(stateDir, LOCK_NAME))) return false;
  const probe = takeLock(stateDir);
  probe?.close();
  return probe === undefined;
}

/** The pid of the daemon serving stateDir, or undefined when none holds its lock. */
export function daemonPid(stateDir: string): number | undefined {
  if (!lockHeld(stateDir)) return undefined;
  let text = '';
  try {
    text = readFileSync(join(stateDir, PID_NAME), 'utf8');
  } catch {
    return undefined; // between taking the lock and writing its pid (or the reverse, stopping)
  }
  const pid = Number(text.trim());
  return Number.isInteger(pid) && pid > 0 ? pid : undefined;
}

/** Stops the daemon of stateDir (SIGTERM, then SIGKILL after 10 s); false when none ran. */
export async function stopDaemon(stateDir: string): Promise<boolean> {
  const pid = daemonPid(stateDir);
  if (!pid) return false;
  process.kill(pid, 'SIGTERM');
  for (let i = 0; i < 200 && lockHeld(stateDir); i++) await new Promise((r) => setTimeout(r, 50));
  if (lockHeld(stateDir)) process.kill(pid, 'SIGKILL');
  return true;
}

/** True when a daemon accepts connections on path. */
function answers(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const c = connect(path);
    c.once('connect', () => {
      c.destroy();
      resolve(true);
    });
    c.once('error', () => resolve(false));
  });
}

export interface DaemonOptions {
  readonly stateDir: string;
  /** Exit after this long without a request (0: never). */
  readonly idleExitMs: number;
}

/** Runs until SIGTERM/SIGINT (or idle exit); resolves with the exit status. */
export async function runDaemon(opts: DaemonOptions): Promise<number> {
  const store = new Store(opts.stateDir, { busyTimeoutMs: Number(process.env.CTNET_BUSY_TIMEOUT_MS) || 10_000, onWait: (m) => log(m) });
  // Another daemon holds the lock: it serves, or it is stopping (then wait for it, briefly).
  let lock = takeLock(opts.stateDir);
  for (let i = 0; !lock && i < 100 && !(await answers(socketPath(opts.stateDir))); i++) {
    await new Promise((r) => setTimeout(r, 50));
    lock = takeLock(opts.stateDir);
  }
  if (!lock) {
    store.close();
    log(`another ctnetd serves ${opts.stateDir}; exiting`);
    return 0;
  }
  // SIGHUP asks services to read their settings again (the web service: `ctnet ui`). Handled from
  // before the pid is known, so a signal sent while services start never kills the daemon.
  process.on('SIGHUP', () => log('SIGHUP: services read their settings again'));
  writeFileSync(join(opts.stateDir, PID_NAME), `${process.pid}\n`);
  // The file this daemon's store has open: if it is deleted or replaced (a restore, an rm), the
  // daemon would go on writing to a file nobody reads, and a new empty store would say nothing
  // exists. It refuses instead, and stops: the next call starts a daemon on the directory as it is.
  const dbFile = join(opts.stateDir, 'ctnet.db');
  const dbInode = statSync(dbFile).ino;
  const storeGone = (): string | undefined => {
    try {
      const ino = statSync(dbFile).ino;
      return ino === dbInode ? undefined : `was replaced (inode ${dbInode} is now ${ino})`;
    } catch {
      return 'was deleted';
    }
  };
  const path = socketPath(opts.stateDir);
  rmSync(path, { force: true }); // stale: its daemon is gone, or we could not hold the lock
  const netns = myNetns();
  const me = self(opts.stateDir, storeGone);
  const crash = new CrashPoints(); // CTNET_CRASH_AT counts over the daemon's life, as it did per process
  let queue: Promise<unknown> = Promise.resolve();
  let idle: NodeJS.Timeout | undefined;
  // The nft -i that applies the nft transactions of the commands the front end hands over, started
  // with the first of them; if it ends, the next command starts another (its requests run one at a
  // time, and the request queue runs one command at a time anyway).
  let cliNft: NftSession | undefined;
  const commandNft = () => (cliNft ??= new NftSession((why) => {
    log(`the commands' ${why}; the next command starts another`);
    cliNft = undefined;
  }));
  // The kernel backend of every request (chosen once; the log says which): netlink in process,
  // or exec when CTNET_KERNEL=exec or the addon is not built.
  const addon = chooseAddon(log);
  let busy = 0;

  // allowHalfOpen: the client half-closes after its request and still reads the reply.
  const server = createServer({ allowHalfOpen: true }, (sock) => serve(sock));
  const armIdle = () => {
    if (opts.idleExitMs > 0 && busy === 0) {
      clearTimeout(idle);
      idle = setTimeout(() => stop('idle'), opts.idleExitMs);
    }
  };

  function serve(sock: Socket): void {
    clearTimeout(idle);
    busy++;
    const chunks: Buffer[] = [];
    sock.on('data', (b) => chunks.push(b));
    sock.on('error', () => {}); // a client killed mid-request: the operation still completes
    sock.on('end', () => {
      if (chunks.length === 0) { // a probe (another daemon asking whether this one answers)
        sock.end();
        busy--;
        armIdle();
        return;
      }
      // One request at a time, in arrival order.
      const arrived = performance.now();
      const run = queue.then(async () => {
        const { reply, later, cli } = await answer(Buffer.concat(chunks), performance.now() - arrived);
        if (!sock.destroyed) sock.end(encodeReply(reply, cli));
        // Deferred work (stale conntrack entries) runs before the next request starts.
        for (const fn of later) await fn().catch((e: Error) => log(`deferred work failed: ${e.message}`));
      });
      queue = run.catch((e: Error) => log(`request failed: ${e.stack ?? e.message}`));
      void run.finally(() => {
        boundLog(opts.stateDir);
        busy--;
        armIdle();
      });
    });
  }

  /** waitedMs: how long the request waited in the queue (behind other requests, deferred work, the services' exclusive work). */
  async function answer(buf: Buffer, waitedMs: number): Promise<{ reply: Reply; later: (() => Promise<void>)[]; cli?: boolean }> {
    const waited = waitedMs >= 1 ? `, after ${waitedMs.toFixed(1)} ms in the queue` : '';
    const later: (() => Promise<void>)[] = [];
    let req;
    try {
      req = decodeRequest(buf);
    } catch (e) {
      return { later, reply: fail(new CniError(CODE.DECODE, `malformed request: ${(e as Error).message}`, 'use the ctnet plugin of the same version as ctnetd')) };
    }
    if (isCliRequest(req.env)) {
      const started = performance.now();
      const { reply, why, argv, kernel } = await answerCli(req.env, me, commandNft, addon);
      const took = `${(performance.now() - started).toFixed(1)} ms${kernel ? ` (tools ${kernel.stats.ms.toFixed(1)} ms in ${kernel.stats.spawns} spawns and ${kernel.stats.sessionCalls} nft -i transactions${inProcess(kernel)})` : ''}`;
      log(`ctnet ${argv.join(' ').slice(0, 200)}: ${why ? `the front end runs it itself: ${why}` : `exit ${reply.exit} in ${took}${waited}`}`);
      return { later, reply, cli: true };
    }
    const gone = storeGone();
    if (gone) {
      log(`the state database ${dbFile} ${gone} while ctnetd ran: refusing requests and stopping`);
      setImmediate(() => stop('state database replaced'));
      return { later, reply: fail(new CniError(CODE.TRY_AGAIN, `ctnet's state database ${dbFile} ${gone} while ctnetd ran: nothing was changed`,
        'ctnetd stops now; try again (the next call starts one on the state directory as it is). If the file was lost, restore it before anything else: an empty state would know none of the attachments that exist')) };
    }
    const clientNs = req.env.CTNET_CLIENT_NETNS;
    if (clientNs && clientNs !== netns) {
      return { later, reply: fail(new CniError(CODE.INVALID_CONFIG, `ctnetd for ${opts.stateDir} runs in network namespace ${netns}, the caller in ${clientNs}`,
        'one state directory serves one network namespace: give this namespace its own stateDir')) };
    }
    const warnings: string[] = [];
    const kernel = daemonBackend(addon, () => new ExecBackend());
    const ctx = createCtx({ store, kernel, warn: (m) => warnings.push(m), defer: (fn) => later.push(fn), crash });
    const started = performance.now();
    const reply = await handleCni(ctx, req.env, req.stdin);
    const total = performance.now() - started;
    // The engine's own time (parse, plan, store, apply) apart from the tools it spawned.
    const tools = `tools ${kernel.stats.ms.toFixed(1)} ms in ${kernel.stats.spawns} spawns${inProcess(kernel)}, engine ${(total - kernel.stats.ms - (kernel.calls?.ms ?? 0)).toFixed(1)} ms`;
    log(`${req.env.CNI_COMMAND ?? '?'} ${req.env.CNI_CONTAINERID ?? ''} ${req.env.CNI_IFNAME ?? ''}: exit ${reply.exit} in ${total.toFixed(1)} ms (${tools})${waited}${reply.exit ? ` ${reply.stdout.trim()}` : ''}`);
    return { later, reply: { ...reply, stderr: reply.stderr + warnings.map((w) => `ctnet: ${w}\n`).join('') } };
  }

  let agent: Promise<Agent | undefined> = Promise.resolve(undefined);
  let resolveDone!: (code: number) => void;
  const done = new Promise<number>((r) => (resolveDone = r));
  function stop(why: string): void {
    log(`stopping (${why})`);
    server.close();
    void queue.finally(async () => {
      // Services stop (and the cursor is saved) while the lock is held: no successor overlaps them.
      await (await agent)?.stop().catch((e: Error) => log(`stopping services failed: ${e.message}`));
      rmSync(path, { force: true });
      rmSync(join(opts.stateDir, PID_NAME), { force: true }); // before the lock: no successor wrote it yet
      cliNft?.close();
      store.close();
      lock!.close();
      resolveDone(0);
    });
  }
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(path, () => resolve());
  });
  chmodSync(path, 0o600);
  log(`serving ${opts.stateDir} on ${path} (netns ${netns})`);
  // Services' kernel work joins the request queue, so it never interleaves with a CNI request.
  const exclusive = <T>(fn: (ctx: Ctx) => Promise<T>): Promise<T> => {
    const run = queue.then(() => fn(createCtx({ store, warn: log, crash })));
    queue = run.catch((e: Error) => log(`service work failed: ${e.stack ?? e.message}`));
    return run;
  };
  agent = startAgent({ stateDir: opts.stateDir, instance: store.instance, services: builtinServices(), log, exclusive, requests: () => busy, afterBatch: () => boundLog(opts.stateDir) })
    .catch((e: Error) => {
      log(`services did not start (CNI requests are still served): ${e.stack ?? e.message}`);
      return undefined;
    });
  armIdle();
  return done;
}

const fail = (e: CniError): Reply => ({ exit: 1, stdout: JSON.stringify(renderError(e, '1.1.0')) + '\n', stderr: '' });
