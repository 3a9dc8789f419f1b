// ctnet never fails open for long: when someone flushes or changes ctnet's nft tables (an admin's
// `nft flush ruleset`, a firewall reload), ctnetd notices at once (`nft monitor`), and writes them
// again from the store, logging what it found and which process made the change.
import { spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import { isAlive } from '../kernel/proc.ts';
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
  let since = 0;

  return {
    name: 'table guard',
    start(ctx: ServiceContext) {
      const check = async () => {
        const seen = who;
        who = [];
        const changed = await ctx.exclusive(async (e) => {
          if (operationUnderWay(e)) return 'busy' as const;
          const drift = await tableDrift(e);
          if (drift.length === 0) return [];
          await restoreTables(e, [], 'table guard: rewrite ctnet\'s tables from the store');
          return drift;
        });
        if (changed === 'busy') {
          who = [...seen, ...who];
          schedule(BUSY_RETRY_MS);
        } else if (changed.length > 0) {
          const by = [...new Set(seen)].join(', ') || 'a process nft monitor did not name';
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
        child = spawn('nft', ['monitor'], { stdio: ['ignore', 'pipe', 'pipe'] });
        createInterface({ input: child.stdout! }).on('line', (line) => {
          const g = GENERATION.exec(line);
          if (g) {
            who.push(`${g[2]} (pid ${g[1]})`);
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
