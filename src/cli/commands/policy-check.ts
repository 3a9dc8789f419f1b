import { checkPolicy } from '../../engine/policy.ts';
import { defineCommand } from '../command.ts';

export default defineCommand({
  name: 'policy check',
  summary: `say whether a new connection FROM -> TO (sandboxes, addresses, or host) is allowed, and which rule or default decides`,
  args: ['<from>', '<to>', '[port]'],
  json: true,
  async run({ ctx, args, io }) {
    const rows = checkPolicy(ctx, args.from, args.to, args.port);
    if (io.json) return io.out(JSON.stringify(rows, null, 2));
    io.out(rows.map((r) => `${r.allowed ? 'allowed' : 'denied '}  ${r.from} -> ${r.to} ${r.port}: ${r.by}`).join('\n'));
    for (const host of new Set(rows.flatMap((r) => (r.alsoJudgedBy ? [r.alsoJudgedBy] : [])))) {
      io.warn(`${host} judges these connections too, by its own rules: policy is per host, so give every host the same rules`);
    }
  },
});
