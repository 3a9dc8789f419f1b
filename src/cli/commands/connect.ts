import { invalid } from '../../errors.ts';
import { connect, connectExternal } from '../../engine/sandbox.ts';
import { formatAddr, parseAddr } from '../../model/cidr.ts';
import { parseName } from '../../model/names.ts';
import { parseAliases } from '../../model/spec.ts';
import { defineCommand } from '../command.ts';

export default defineCommand({
  name: 'connect',
  summary: 'connect a sandbox to one more network, or a namespace made elsewhere (--netns/--pid with --name)',
  args: ['<network>', '[name]'],
  options: [
    { flags: '--ip <ip>', description: 'a fixed address (repeatable)', repeatable: true },
    { flags: '--netns <path>', description: 'a network namespace file made by someone else', conflicts: 'pid' },
    { flags: '--pid <pid>', description: 'the network namespace of this process' },
    { flags: '--name <name>', description: 'the sandbox name to record a --netns/--pid namespace under' },
    { flags: '--default-route', description: 'this network carries the sandbox\'s default routes from now on' },
    { flags: '--alias <name>', description: 'one more DNS name of the sandbox on this network (repeatable)', repeatable: true },
  ],
  async run({ ctx, args: { network: net, name }, opts: o }) {
    const ips = (o.ip ?? []).map((t) => { const a = parseAddr('--ip', t); return { ...a, text: formatAddr(a.family, a.n) }; });
    parseName('network', net);
    const aliases = parseAliases(o.alias);
    if (o.netns !== undefined || o.pid !== undefined) {
      if (name !== undefined) throw invalid('give either a sandbox NAME or --netns/--pid with --name, not both');
      if (o.defaultRoute) throw invalid('--default-route is for sandboxes ctnet made', 'leave it out; for a runtime\'s container, use ctnet route NAME --via NETWORK');
      if (o.name === undefined) throw invalid('--netns and --pid need --name', 'e.g. ctnet connect web --pid 1234 --name app');
      if (o.pid !== undefined && !/^[1-9]\d*$/.test(o.pid)) throw invalid(`--pid ${JSON.stringify(o.pid)} is not a process id`);
      const path = o.netns ?? `/proc/${o.pid}/ns/net`;
      return void await connectExternal(ctx, net, path, parseName('sandbox', o.name), ips, aliases);
    }
    if (name === undefined) throw invalid('name the sandbox to connect', 'ctnet connect NETWORK SANDBOX');
    await connect(ctx, net, parseName('sandbox', name), ips, o.defaultRoute ?? false, aliases);
  },
});
