// `ctnet daemon events`: the store's change feed, printed. It reads the store directly (ctnetd
// need not run), so scripts and tests can see what every writer changed, and follow it.
import { invalid } from '../errors.ts';
import type { ChangeEvent } from '../store/events.ts';
import { ChangeFeed } from '../store/feed.ts';
import { Store } from '../store/store.ts';

// Each line is one committed change of a recorded row, in commit order, whoever made it:
//   #ID  TIME  KIND  KEY  created|changed|removed  [STATE]
// --json prints {id, at, kind, action, key, data} per line; a gap after a prune is said in a line of its own.
const line = (e: ChangeEvent) =>
  `#${e.id}  ${e.at}  ${e.kind}  ${e.key}  ${e.action}${'state' in e.data ? `  ${e.data.state}` : ''}`;

/** Prints the feed from `since` (and, with follow, goes on until interrupted). */
export async function printEvents(o: { stateDir: string; json: boolean; since: string | undefined; follow: boolean }): Promise<void> {
  if (o.since !== undefined && !/^\d+$/.test(o.since)) throw invalid(`--since ${o.since} is not an event id`, 'give a number, e.g. the id of the last change you read');
  const dir = o.stateDir;
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
}
