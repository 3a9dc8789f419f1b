// The simplest resident service: one line per change in ctnetd's log, with how long after the
// change was written ctnetd saw it. It proves the feed end to end (the lab test reads these lines)
// and tells an operator what happened on the host, whoever did it.
import type { ChangeEvent } from '../store/events.ts';
import type { Snapshot } from '../store/feed.ts';
import type { Service, ServiceContext } from './service.ts';

/** "change #12 attachment a/web changed ready (seen after 7.1 ms)": the lab test parses these. */
export function changeLine(e: ChangeEvent, now: number): string {
  const state = 'state' in e.data ? ` ${e.data.state}` : '';
  return `change #${e.id} ${e.kind} ${e.key} ${e.action}${state} (seen after ${(now - Date.parse(e.at)).toFixed(1)} ms)`;
}

export function logService(): Service {
  let log: (m: string) => void = () => {};
  return {
    name: 'log',
    start(ctx: ServiceContext) {
      log = ctx.log;
    },
    changes(events) {
      const now = Date.now();
      for (const e of events) log(changeLine(e, now));
    },
    resync(snapshot: Snapshot, reason: string) {
      const counts = Object.entries(snapshot.rows).filter(([, rows]) => rows.length).map(([k, rows]) => `${rows.length} ${k}`);
      log(`resync at #${snapshot.cursor} (${reason}): ${counts.join(', ') || 'nothing recorded'}`);
    },
    stop() {},
  };
}
