import { defineCommand } from '../command.ts';
import { runClusterDemo } from '../demo-cluster.ts';

export default defineCommand({
  name: 'demo cluster',
  summary: 'an overlay network across three lab hosts and etcd: sandboxes talking across hosts, a host leaving and coming back; then clean up',
  needsCtx: false,
  globalOptions: false,
  async run() {
    return runClusterDemo();
  },
});
