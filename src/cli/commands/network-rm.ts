import { removeNetwork } from '../../engine/network.ts';
import { removeOverlaySide } from '../../engine/overlay-network.ts';
import { parseName } from '../../model/names.ts';
import { defineCommand } from '../command.ts';

export default defineCommand({
  name: 'network rm',
  aliases: ['remove'],
  summary: 'remove networks (refused while sandboxes are attached, unless --force)',
  args: ['<name...>'],
  options: [{ flags: '-f, --force', description: 'disconnect attached sandboxes first' }],
  async run({ ctx, args, opts }) {
    const force = opts.force ?? false;
    for (const name of args.name) {
      parseName('network', name);
      if (!ctx.store.network(name)) ctx.warn(`no network named ${name}: nothing to remove`);
      if (ctx.store.network(name)?.driver === 'vxlan') {
        const r = await removeOverlaySide(ctx, name, { force });
        ctx.warn(r === 'undefined' ? `overlay network ${name}: this host's side removed; no host leases it any more, so it is gone from the cluster`
          : `overlay network ${name}: this host's side removed and its lease given back; other hosts keep theirs`);
      } else {
        await removeNetwork(ctx, name, { force });
      }
    }
  },
});
