import { egressUpdate, setEgress } from '../../engine/egress.ts';
import { parseName } from '../../model/names.ts';
import { defineCommand } from '../command.ts';

export default defineCommand({
  name: 'network update',
  summary: 'change a network in place: the address its egress leaves from',
  args: ['<name>'],
  options: [
    { flags: '--egress-ip <ip>', description: 'a host address the network\'s egress leaves from (one per family; replaces the ones set)', repeatable: true },
    { flags: '--no-egress-ip', description: 'masquerade its egress again' },
  ],
  async run({ ctx, args, opts, io }) {
    const name = parseName('network', args.name);
    await setEgress(ctx, 'network', name, egressUpdate(opts.egressIp as unknown as string[] | false | undefined));
    if (!io.quiet) io.out(name);
  },
});
