// ctnet never fails open for long: when someone flushes or changes ctnet's nft tables (an admin's
// `nft flush ruleset`, a firewall reload), ctnetd notices at once (`nft monitor`), and writes them
// again from the store, logging what it found and which process made the change.
import { spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import { isAlive } from '../kernel/proc.ts';
import { cutDeniedFlows } from '../engine/policy.ts';
import { restoreTables, tableDrift } from '../engine/tables.ts';
import type { Ctx } from '../engine/context.ts';
import type { Service, ServiceContext } from './service.ts';

/** Table, chain, rule or set changes of ctnet's tables (element changes are ctnet's daily work). */
const RELEVANT = /^(?:delete|flush) (?:table|chain|rule|set|map) (?:inet|bridge) ctnet\b|^flush ruleset/;
/** nft monitor's line after each transaction: who made it. */
const GENERATION = /^# new generation \d+ by process (\d+) \(([^)]*)\)/;
/** Events come in bursts (one per rule); look once they stop. */
const SETTLE_MS = 20;
/** While an operation is under way (a record creating or removing, its owner alive), look again later. */
const BUSY_RETRY_MS = 100;

/** True while a live ctnet process is in the middle of an operation (its tables are in flux). */
function operationUnderWay(ctx: Ctx): boolean {
  const { store } = ctx;
  const busy = (r: { state: string; owner: string | null }) => r.state !== 'ready' && r.owner !== null && isAlive(r.owner);
  return store.networks().some(busy) || store.sandboxes().some(busy) || store.attachments().some(busy);
}

export function tableGuard(): Service {
  let child: ChildProcess | undefined;
  let timer: NodeJS.Timeout | undefined;
  let stopping = false;
  let who: string[] = [];
  /** While the guard writes the tables itself, the transactions nft monitor names are its own. */
  let restoring = false;
  let since = 0;

  return {
    name: 'table guard',
    start(ctx: ServiceContext) {
      const check = async () => {
        const changed = await ctx.exclusive(async (e) => {
          restoring = false;
          if (operationUnderWay(e)) return 'busy' as const;
          const drift = await tableDrift(e);
          if (drift.length === 0) return [];
          restoring = true;
          await restoreTables(e, [], 'table guard: rewrite ctnet\'s tables from the store');
          // Flows that started while the tables were gone are established now, and an established
          // flow is accepted before any rule looks at it: end those the rules deny.
          await cutDeniedFlows(e);
          return drift;
        });
        if (changed === 'busy') {
          schedule(BUSY_RETRY_MS);
        } else if (changed.length === 0) {
          who = []; // nothing of ctnet's was lost (its own work, or the guard's own restore)
        } else if (changed.length > 0) {
          // nft monitor names a transaction's process after its events: read the names now.
          const by = [...new Set(who)].join(', ') || 'a process nft monitor did not name';
          who = [];
          restoring = false;
          ctx.log(`restored ctnet's nft tables ${(performance.now() - since).toFixed(1)} ms after a change by ${by}: ${changed.join('; ')}`);
        }
      };
      const schedule = (ms: number) => {
        clearTimeout(timer);
        timer = setTimeout(() => {
          timer = undefined;
          void check().catch((e: Error) => ctx.log(`check failed: ${e.message}`));
        }, ms);
      };
      const watch = () => {
        // The namespace ctnetd runs in is the one its tables are in.
        // Line-buffered (stdbuf): nft writes to a pipe in blocks, and a transaction's events and the
        // line naming its process must arrive as they happen.
        child = spawn('stdbuf', ['-oL', 'nft', 'monitor'], { stdio: ['ignore', 'pipe', 'pipe'] });
        createInterface({ input: child.stdout! }).on('line', (line) => {
          const g = GENERATION.exec(line);
          if (g) {
            if (!restoring) who.push(`${g[2]} (pid ${g[1]})`);
          } else if (RELEVANT.test(line)) {
            if (!timer) since = performance.now();
            schedule(SETTLE_MS);
          }
        });
        child.on('exit', (code) => {
          if (stopping) return;
          ctx.log(`nft monitor exited (${code}); watching again in 1 s`);
          setTimeout(() => {
            if (!stopping) watch();
          }, 1000);
        });
        child.on('error', (e) => ctx.log(`cannot run nft monitor: ${e.message}`));
      };
      watch();
      since = performance.now();
      schedule(0); // what changed while ctnetd was down
    },
    changes() {},
    resync() {},
    stop() {
      stopping = true;
      clearTimeout(timer);
      child?.kill();
    },
  };
}
