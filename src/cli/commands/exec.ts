import { execInSandbox } from '../../engine/process.ts';
import { defineCommand } from '../command.ts';

export default defineCommand({
  name: 'exec',
  summary: 'run a command in a sandbox',
  args: ['<name>', { spec: '<cmd...>', description: 'command and arguments, after --' }],
  async run({ ctx, args }) {
    return execInSandbox(ctx, args.name, args.cmd);
  },
});
