// ctnet never fails open: when someone flushes or changes ctnet's nft tables (an admin's
// `nft flush ruleset`, a firewall reload), ctnetd notices at once (`nft monitor`) and writes them
// again, logging what it found and which process made the change. Meanwhile its fail-closed tables
// (nft/ruleset.ts failsafeScript), which no other process can flush, drop the sandbox traffic
// ctnet's tables would have checked, so nothing ctnet denies passes while they are gone.
//
// Two ways back:
// - fast: the first line of a transaction that deletes something of ctnet's (nft monitor prints a
//   transaction's events one by one, and under load its last line comes tens of ms after the
//   first) is answered with a script rendered beforehand from the store (kept current from the
//   change feed), applied through ctnetd's own `nft -i` (an `include` of the file: no process
//   spawn, no store read, no comparison first). Only when the store has not changed since that
//   script was rendered and no operation was under way then; a transaction that turns out to be
//   ctnet's own rewrite (gc: delete and write again) is written once more, with the same content.
// - thorough: in ctnetd's request queue, compare the tables with the store (tableDrift) and write
//   them from the store when they differ; after either way, end the flows begun while the tables
//   were gone that the rules deny.
import { mkdtempSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { NftSession, nftMonitor } from '../kernel/exec/nftlive.ts';
import { isAlive } from '../kernel/proc.ts';
import { cutDeniedFlows, mirrorElements } from '../engine/policy.ts';
import { restoreTables, tableDrift, tablesScript } from '../engine/tables.ts';
import type { Ctx } from '../engine/context.ts';
import { FAILSAFE_BRIDGE, FAILSAFE_INET, failsafeBridges, failsafeScript } from '../nft/ruleset.ts';
import type { Service, ServiceContext } from './service.ts';

/** Table, chain, rule or set changes of ctnet's tables (element changes are ctnet's daily work). */
const RELEVANT = /^(?:delete|flush) (?:table|chain|rule|set|map) (?:inet|bridge) ctnet\b|^flush ruleset/;
const SERVICE_CHAIN = /^(?:delete|flush) (?:chain|rule) inet ctnet svc_/;
const ANONYMOUS = /^delete (?:set|map) (?:inet|bridge) ctnet __/;
const ADDED = /^add (?:table|chain|rule|set|map) (?:inet|bridge) ctnet\b/;
const TABLE_EVENT = /^(add|delete) table (inet|bridge) ctnet\b/;
/** nft monitor's line after each transaction's events: who made it. */
const GENERATION = /^# new generation \d+ by process (\d+) \(([^)]*)\)/;
/** Changes by others come in bursts (a script, a firewall reload): compare once they stop. */
const SETTLE_MS = 20;
/** While an operation is under way (a record creating or removing, its owner alive), look again later. */
const BUSY_RETRY_MS = 100;
/**
 * Render the restore script once the store has been quiet this long: a render reads the whole
 * store in ctnetd's request queue, and under a stream of changes the script would be stale at
 * once anyway (then a loss takes the thorough way, the fail-closed tables holding meanwhile).
 */
const RENDER_MS = 200;
/** How long a render waits at most for ctnetd to hold no request. */
const RENDER_WAIT_MS = 5_000;
/** A render due now waits while ctnetd holds requests, up to RENDER_WAIT_MS since it was asked for. */
export const renderWaits = (requests: number, waitedMs: number): boolean => requests > 0 && waitedMs < RENDER_WAIT_MS;
/** Tries to make the fail-closed tables before ctnetd gives up on them (one a second). */
const FAILSAFE_TRIES = 10;
/** A transaction of ctnetd's own nft -i whose last line nft monitor has not shown this long after is taken as shown. */
const OWN_LINE_MS = 2000;

/** What one nft transaction did to ctnet's tables, as nft monitor told it. */
export interface Transaction {
  readonly pid: number;
  readonly process: string;
  /** It deleted or flushed a table, chain, rule or set of ctnet's. */
  readonly touched: boolean;
  /** It also added to ctnet's tables: a rewrite (ctnet's own, as gc does), not only a loss. */
  readonly added: boolean;
  /** ctnet's tables it left deleted (its last word on them was a delete). */
  readonly deleted: readonly string[];
  /** When its first line arrived (performance.now()). */
  readonly firstAt: number;
}

/** Reads nft monitor's lines into transactions: each ends with the line naming its process. */
export class MonitorReader {
  #touched = false;
  #added = false;
  readonly #tables = new Map<string, boolean>();
  #firstAt: number | undefined;

  /**
   * One line. `end`: the transaction this line ends; `loss`: this line deletes something of
   * ctnet's and nothing in the transaction so far added to ctnet's tables (the moment to act).
   */
  line(line: string, now: number): { end?: Transaction; loss: boolean } {
    const g = GENERATION.exec(line);
    if (!g) {
      this.#firstAt ??= now;
      const t = TABLE_EVENT.exec(line);
      if (t) this.#tables.set(`${t[2]} ctnet`, t[1] === 'add');
      if (ADDED.test(line)) this.#added = true;
      const deletes = RELEVANT.test(line);
      if (deletes) this.#touched = true;
      // A service's chain or rule is ctnet's daily work (a backend change replaces the rule, service
      // rm deletes the chain), made before the store says so: the script rendered before it would
      // put the old rule back. It still touches the tables, so the thorough check looks at them.
      // An anonymous set or map (__mapN) goes with its rule, whose own line says whether it is a loss.
      return { loss: deletes && !SERVICE_CHAIN.test(line) && !ANONYMOUS.test(line) && !this.#added };
    }
    const end: Transaction = {
      pid: Number(g[1]), process: g[2]!, touched: this.#touched, added: this.#added,
      deleted: [...this.#tables].filter(([, present]) => !present).map(([t]) => t), firstAt: this.#firstAt ?? now,
    };
    this.reset();
    return { end, loss: false };
  }

  /** When the first line of the transaction being read arrived. */
  get firstAt(): number | undefined {
    return this.#firstAt;
  }

  /** Forgets a transaction half read (the monitor restarted). */
  reset(): void {
    this.#touched = false;
    this.#added = false;
    this.#tables.clear();
    this.#firstAt = undefined;
  }
}

/** True while a live ctnet process is in the middle of an operation (its tables are in flux). */
function operationUnderWay(ctx: Ctx): boolean {
  const { store } = ctx;
  const busy = (r: { state: string; owner: string | null }) => r.state !== 'ready' && r.owner !== null && isAlive(r.owner);
  return store.networks().some(busy) || store.sandboxes().some(busy) || store.attachments().some(busy) ||
    store.services().some((s) => busy({ state: s.state ?? 'ready', owner: s.owner ?? null })); // creating or removing
}

/** A fast restore, and the transaction that started it (known when its last line comes). */
interface FastRestore {
  readonly firstAt: number;
  done?: number;
  failed?: boolean;
  tx?: Transaction;
}

/** The restore script, rendered from the store when the store said so. */
interface Rendered {
  /** The change feed's newest event when it was rendered: the script is current while that is. */
  readonly at: number;
  readonly file: string;
  readonly networks: number;
  /** An operation was under way: its records are in flux, so the script may not be what it leaves. */
  readonly busy: boolean;
}

export function tableGuard(): Service {
  let stopping = false;
  let monitor: { stop(): void } | undefined;
  let session: NftSession | undefined;
  /** The restore script's file, and the directory made for it when the state directory cannot hold it. */
  let file: string | undefined;
  let ownDir: string | undefined;
  let rendered: Rendered | undefined;
  /** The bridges ctnetd's fail-closed tables hold (JSON), undefined until they are made. */
  let failsafeFor: string | undefined;
  let failsafeTries = 0;
  let started = false;
  let checkTimer: NodeJS.Timeout | undefined;
  let renderTimer: NodeJS.Timeout | undefined;
  /**
   * Transactions sent through the nft -i session whose last line nft monitor has not shown yet:
   * while there are any, a deletion the monitor shows may be the session's own (a restore deletes
   * and writes the tables), so it starts nothing by itself.
   */
  let ownPending = 0;
  let ownTimer: NodeJS.Timeout | undefined;
  /** A fast restore started by the transaction being read (answered when its last line comes). */
  let fastFor: FastRestore | undefined;
  /** After a fast restore: the thorough check ends the flows begun meanwhile, even if the tables agree. */
  let cutPending = false;
  /** The processes whose changes the next check answers, and when the first of them came. */
  let who: string[] = [];
  let since: number | undefined;
  const reader = new MonitorReader();
  /** Renders the restore script soon (set by start). */
  let renderSoon = () => {};

  return {
    name: 'table guard',
    start(ctx: ServiceContext) {
      // In the state directory (gone with it, also after a crash), unless nft's `include "PATH"`
      // could not name it plainly.
      const state = resolve(ctx.stateDir);
      if (/^[\w./-]+$/.test(state)) file = join(state, 'guard-tables.nft');
      else file = join((ownDir = mkdtempSync(join(tmpdir(), 'ctnetd-guard-'))), 'tables.nft');

      /**
       * The next check may compare with the store's mirror (what ctnet last wrote) instead of compiling
       * every rule: when nothing was seen to go, only the monitor's gap is looked into (a compile at
       * 500 sandboxes under label rules holds ctnetd's thread for seconds, and the monitor has died
       * after most creates there). A loss seen, or a fast restore, compiles.
       */
      let fromMirror = false;
      const check = async () => {
        const mirrorOnly = fromMirror;
        const drift = await ctx.exclusive(async (e) => {
          if (operationUnderWay(e)) return 'busy' as const;
          const found = await tableDrift(e, { fromMirror: mirrorOnly });
          if (found.length > 0) await restoreTables(e, [], 'table guard: rewrite ctnet\'s tables from the store');
          if (found.length > 0 || cutPending) {
            cutPending = false;
            // Flows that started while the tables were gone are established now, and an established
            // flow is accepted before any rule looks at it: end those the rules deny.
            await cutDeniedFlows(e);
          }
          return found;
        });
        if (drift === 'busy') return scheduleCheck(BUSY_RETRY_MS, mirrorOnly);
        if (drift.length > 0) {
          const by = [...new Set(who)].join(', ') || 'a process nft monitor did not name';
          ctx.log(`restored ctnet's nft tables ${(performance.now() - (since ?? performance.now())).toFixed(1)} ms after a change by ${by}: ${drift.join('; ')}`);
        }
        // Otherwise nothing of ctnet's was lost (its own work, a restore already done).
        who = [];
        since = undefined;
      };
      const scheduleCheck = (ms: number, mirrorOnly = false) => {
        // A check already due for a loss stays a full one.
        fromMirror = mirrorOnly && (checkTimer === undefined || fromMirror);
        clearTimeout(checkTimer);
        checkTimer = setTimeout(() => {
          checkTimer = undefined;
          void check().catch((e: Error) => ctx.log(`check failed: ${e.message}`));
        }, ms);
      };

      const render = async () => {
        // The policy sets as the mirror holds them, not compiled again: a compile of every rule (a
        // few hundred ms at 10,000) after each change held ctnetd's queue and a core while the next
        // command waited. The mirror is what ctnet last wrote, and the thorough check that follows a
        // fast restore compiles and rewrites the tables if they still differ from the rules.
        const r = await ctx.exclusive(async (e) => ({
          at: ctx.feed.head(), lines: tablesScript(e.store, mirrorElements(e.store)), busy: operationUnderWay(e), bridges: e.store.networks().map((n) => n.bridge),
        }));
        if (stopping || !file) return;
        writeFileSync(`${file}.new`, `${r.lines.join('\n')}\n`);
        renameSync(`${file}.new`, file);
        rendered = { at: r.at, file, networks: r.bridges.length, busy: r.busy };
        await failsafe(r.bridges);
      };
      /** When the render now due was first asked for (it waits for requests, up to RENDER_WAIT_MS). */
      let renderAskedAt: number | undefined;
      const scheduleRender = (ms: number) => {
        if (!started || stopping) return; // the first render follows the first check
        clearTimeout(renderTimer);
        renderAskedAt ??= performance.now();
        renderTimer = setTimeout(() => {
          renderTimer = undefined;
          // At 500 sandboxes a render is 110,000 policy elements of work in ctnetd's one thread. Queued
          // while a create still ran, it went ahead of the page's update of that create (by up to
          // seconds): it waits while requests are held instead, but not for ever (a stale script only
          // means the thorough way back, not the fast one).
          if (renderWaits(ctx.requests?.() ?? 0, performance.now() - renderAskedAt!)) return scheduleRender(RENDER_MS);
          renderAskedAt = undefined;
          void render().catch((e: Error) => ctx.log(`rendering the restore script failed: ${e.message}`));
        }, ms);
      };

      /** Sends a transaction through the session, counting it until its last line shows. */
      const viaSession = async (s: NftSession, send: (s: NftSession) => Promise<void>) => {
        ownPending++;
        clearTimeout(ownTimer);
        ownTimer = setTimeout(() => {
          ownPending = 0; // its line was lost (the monitor restarted): do not wait forever
        }, OWN_LINE_MS);
        try {
          await send(s);
        } catch (e) {
          ownPending = Math.max(0, ownPending - 1); // nothing was committed: no line will come
          throw e;
        }
      };

      const failsafe = async (bridges: string[]) => {
        const s = session;
        const key = JSON.stringify(bridges);
        if (!s || failsafeFor === key) return;
        try {
          await viaSession(s, (x) => x.run(failsafeFor === undefined ? failsafeScript(bridges) : failsafeBridges(bridges)));
          if (failsafeFor === undefined) ctx.log(`fail-closed tables ${FAILSAFE_INET} and ${FAILSAFE_BRIDGE} in place (owned by nft -i, pid ${s.pid})`);
          failsafeFor = key;
          failsafeTries = 0;
        } catch (e) {
          // E.g. the nft -i of a ctnetd that just stopped still owns them: try again a few times.
          if (failsafeTries++ === 0) ctx.log(`cannot keep the fail-closed tables (${(e as Error).message}): sandbox traffic passes unchecked while ctnet's tables are gone; trying again`);
          if (failsafeTries < FAILSAFE_TRIES) setTimeout(() => scheduleRender(0), 1000);
          else ctx.log(`gave up on the fail-closed tables after ${FAILSAFE_TRIES} tries`);
        }
      };

      /** Writes the rendered script back at once; false when it may not be current. */
      const fast = (firstAt: number): boolean => {
        const s = session;
        const r = rendered;
        if (!s || !r || r.busy || r.networks === 0 || ownPending > 0 || fastFor || ctx.feed.head() !== r.at) return false;
        const f: FastRestore = { firstAt };
        fastFor = f;
        viaSession(s, (x) => x.runFile(r.file)).then(() => {
          f.done = performance.now();
        }, (e: Error) => {
          f.failed = true;
          ctx.log(`restoring from the rendered script failed (${e.message}); rewriting from the store`);
        }).finally(() => answered(f));
        return true;
      };
      /** A fast restore is answered once it is done and the transaction that started it has ended. */
      const answered = (f: FastRestore) => {
        if (!f.tx || (f.done === undefined && !f.failed)) return;
        if (fastFor === f) fastFor = undefined;
        const tx = f.tx;
        if (f.failed) {
          since ??= tx.firstAt;
          who.push(`${tx.process} (pid ${tx.pid})`);
          scheduleCheck(0);
        } else if (!tx.added) {
          const what = tx.deleted.length ? tx.deleted.map((t) => `table ${t} was deleted`).join('; ') : 'rules or chains of ctnet\'s were deleted';
          ctx.log(`restored ctnet's nft tables ${(f.done! - f.firstAt).toFixed(1)} ms after a change by ${tx.process} (pid ${tx.pid}): ${what}`);
          cutPending = true;
          scheduleCheck(SETTLE_MS);
        }
        // A rewrite (gc's) was written once more with the same content: nothing to report.
      };

      const watch = () => {
        reader.reset();
        fastFor = undefined;
        ownPending = 0;
        // The namespace ctnetd runs in is the one its tables are in.
        monitor = nftMonitor((line) => {
          const { end, loss } = reader.line(line, performance.now());
          if (loss && !fastFor) fast(reader.firstAt ?? performance.now());
          if (!end) return;
          if (end.pid === session?.pid) {
            ownPending = Math.max(0, ownPending - 1);
            return;
          }
          if (fastFor && !fastFor.tx) {
            fastFor.tx = end;
            answered(fastFor);
            return;
          }
          if (!end.touched) return;
          since ??= end.firstAt;
          who.push(`${end.process} (pid ${end.pid})`);
          scheduleCheck(SETTLE_MS);
        }, (why) => {
          ctx.log(`nft monitor ${why}; watching again in 1 s`);
          const downAt = performance.now();
          setTimeout(() => {
            if (stopping) return;
            watch();
            // A change made while no monitor was reading would go unseen: compare once now (the
            // time a loss is reported against is then when the monitor went down).
            since ??= downAt;
            who.push('a process unseen while nft monitor was restarting');
            scheduleCheck(0, true);
          }, 1000);
        });
      };
      const own = () => {
        failsafeFor = undefined;
        session = new NftSession((why) => {
          session = undefined;
          failsafeFor = undefined;
          ctx.log(`${why}; the fail-closed tables went with it: starting it again in 1 s`);
          setTimeout(() => {
            if (stopping) return;
            own();
            scheduleRender(0);
          }, 1000);
        });
      };

      renderSoon = () => scheduleRender(RENDER_MS);
      watch();
      own();
      // What changed while ctnetd was down first (tables an older ctnet wrote are rewritten before
      // the fail-closed tables, which expect ctnet's own to clear their mark, go in).
      void (async () => {
        await check();
        started = true;
        await render();
      })().catch((e: Error) => ctx.log(`start failed: ${e.message}`));
    },
    changes() {
      renderSoon();
    },
    resync() {
      renderSoon();
    },
    stop() {
      stopping = true;
      clearTimeout(checkTimer);
      clearTimeout(renderTimer);
      monitor?.stop();
      session?.close(); // the fail-closed tables go with it
      if (ownDir) rmSync(ownDir, { recursive: true, force: true });
      else if (file) rmSync(file, { force: true });
    },
  };
}
