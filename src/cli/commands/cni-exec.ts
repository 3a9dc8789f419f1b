import { readFileSync } from 'node:fs';
import { handleCni } from '../../cni/handler.ts';
import { defineCommand } from '../command.ts';

export default defineCommand({
  name: 'cni exec',
  summary: 'run one CNI command in this process (CNI_* env, config on stdin), without the daemon',
  async run({ ctx }) {
    const reply = await handleCni(ctx, process.env, readFileSync(0, 'utf8'));
    // The CNI reply is written as it is: no newline added, no "ctnet:" prefix.
    process.stdout.write(reply.stdout);
    process.stderr.write(reply.stderr);
    return reply.exit;
  },
});
