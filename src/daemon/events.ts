// `ctnet daemon events`: the store's change feed, printed. It reads the store directly (ctnetd
// need not run), so scripts and tests can see what every writer changed, and follow it.
import type { Command } from 'commander';
import { invalid } from '../errors.ts';
import type { ChangeEvent } from '../store/events.ts';
import { ChangeFeed } from '../store/feed.ts';
import { DEFAULT_STATE_DIR, Store } from '../store/store.ts';

const HELP = `
Each line is one committed change of a recorded row (networks, subnets, sandboxes, attachments,
addresses, ports, labels, policies, CNI attachments), in commit order, whoever made it (the CLI,
the CNI plugin through ctnetd, a file):
  #ID  TIME  KIND  KEY  created|changed|removed  [STATE]
--json prints one JSON object per line: {id, at, kind, action, key, data}, data being the row
after the change (the row as it was, for removed). The store keeps the newest 10,000 changes;
when --since N is older than that, a line "-- events N+1..M were pruned --" (with --json:
{"pruned": {"after": N, "through": M}}) says so, and the output goes on after M: read the
current state (ctnet ls --json, ctnet network ls --json) before relying on what follows.
Dry runs and failed operations roll back, and leave no trace here.`;

const line = (e: ChangeEvent) =>
  `#${e.id}  ${e.at}  ${e.kind}  ${e.key}  ${e.action}${'state' in e.data ? `  ${e.data.state}` : ''}`;

/** Adds the options and action of `ctnet daemon events` to cmd (made with the global options and --json). */
export function eventsCommand(cmd: Command): Command {
  return cmd.description('print the change feed: every change to networks, sandboxes, ports, labels, policy, CNI (reads the store; ctnetd need not run)')
    .option('--since <id>', 'only changes after this id (default: every change kept)')
    .option('-f, --follow', 'keep printing changes as they are committed, until interrupted')
    .addHelpText('after', HELP)
    .action(async (_o: unknown, c: Command) => {
      const o = c.optsWithGlobals<{ stateDir?: string; json?: boolean; since?: string; follow?: boolean }>();
      if (o.since !== undefined && !/^\d+$/.test(o.since)) throw invalid(`--since ${o.since} is not an event id`, 'give a number, e.g. the id of the last change you read');
      const dir = o.stateDir ?? process.env.CTNET_STATE_DIR ?? DEFAULT_STATE_DIR;
      new Store(dir).close(); // creates and migrates the store if needed
      const feed = new ChangeFeed(dir);
      const print = (text: string) => new Promise<void>((resolve) => (process.stdout.write(text) ? resolve() : process.stdout.once('drain', resolve)));
      try {
        let cursor = Number(o.since ?? 0);
        const drain = async () => {
          for (;;) {
            const r = feed.read(cursor);
            if (!r.ok) {
              await print(o.json ? JSON.stringify({ pruned: { after: r.after, through: r.pruned } }) + '\n' : `-- events ${r.after + 1}..${r.pruned} were pruned --\n`);
              cursor = r.pruned;
            } else if (r.events.length === 0) {
              return;
            } else {
              await print(r.events.map((e) => (o.json ? JSON.stringify(e) : line(e)) + '\n').join(''));
              cursor = r.cursor;
            }
          }
        };
        await drain();
        if (o.follow) {
          feed.watch(drain, { onError: (e) => process.stderr.write(`ctnet: ${e.message}\n`) });
          await new Promise<never>(() => {}); // until interrupted (the watch's timer keeps the process alive)
        }
      } finally {
        feed.close();
      }
    });
}
