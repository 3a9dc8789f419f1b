import { egressUpdate, setEgress } from '../../engine/egress.ts';
import { parseName } from '../../model/names.ts';
import { defineCommand } from '../command.ts';

export default defineCommand({
  name: 'update',
  summary: 'change a sandbox in place: the address its egress leaves from',
  args: ['<name>'],
  options: [
    { flags: '--egress-ip <ip>', description: 'a host address the sandbox\'s egress leaves from (one per family; replaces the ones set)', repeatable: true },
    { flags: '--no-egress-ip', description: 'leave it to the network again (its --egress-ip, or masquerade)' },
  ],
  async run({ ctx, args, opts, io }) {
    const name = parseName('sandbox', args.name);
    await setEgress(ctx, 'sandbox', name, egressUpdate(opts.egressIp as unknown as string[] | false | undefined));
    if (!io.quiet) io.out(name);
  },
});
