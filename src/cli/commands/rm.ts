import { removeSandbox } from '../../engine/sandbox.ts';
import { parseName } from '../../model/names.ts';
import { defineCommand } from '../command.ts';

export default defineCommand({
  name: 'rm',
  aliases: ['remove'],
  summary: 'remove sandboxes: stop their processes, remove their interfaces and addresses',
  args: ['<name...>'],
  options: [{ flags: '-f, --force', description: 'accepted for docker compatibility; rm always stops the processes' }],
  async run({ ctx, args }) {
    for (const name of args.name) {
      if (!(await removeSandbox(ctx, parseName('sandbox', name)))) ctx.warn(`no sandbox named ${name}: nothing to remove`);
    }
  },
});
