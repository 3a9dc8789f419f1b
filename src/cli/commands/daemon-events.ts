import { printEvents } from '../../daemon/events.ts';
import { defineCommand } from '../command.ts';

export default defineCommand({
  name: 'daemon events',
  summary: 'print the change feed: every change to networks, sandboxes, ports, labels, policy, CNI (reads the store; ctnetd need not run)',
  json: true,
  needsCtx: false,
  options: [
    { flags: '--since <id>', description: 'only changes after this id (default: every change kept)' },
    { flags: '-f, --follow', description: 'keep printing changes as they are committed, until interrupted' },
  ],
  async run({ opts, io }) {
    await printEvents({ stateDir: io.stateDir, json: io.json, since: opts.since, follow: opts.follow ?? false });
  },
});
