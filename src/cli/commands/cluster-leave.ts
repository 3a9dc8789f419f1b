import { leaveCluster } from '../../engine/cluster.ts';
import { defineCommand } from '../command.ts';

export default defineCommand({
  name: 'cluster leave',
  summary: 'take this host out of its cluster (refused while local sandboxes use overlay networks, unless --force)',
  options: [{ flags: '-f, --force', description: 'leave even with sandboxes on overlay networks, or when etcd cannot be reached' }],
  async run({ ctx, opts, io }) {
    const r = await leaveCluster(ctx, { force: opts.force ?? false });
    io.out(`${r.member.host} left the cluster at ${r.member.endpoints.join(',')}${r.etcdReached ? '' : ' (locally only: etcd was not reached)'}`);
  },
});
