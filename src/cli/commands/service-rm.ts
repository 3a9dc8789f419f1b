import { removeService } from '../../engine/services.ts';
import { defineCommand } from '../command.ts';

export default defineCommand({
  name: 'service rm',
  aliases: ['remove'],
  summary: 'remove services: their VIPs, kernel elements and connections (on an overlay network: on the host that made it, and so on every host)',
  args: ['<name...>'],
  async run({ ctx, args }) {
    for (const name of args.name) {
      if (!(await removeService(ctx, name))) ctx.warn(`no service named ${name}: nothing to remove`);
    }
  },
});
