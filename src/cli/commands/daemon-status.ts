import { daemonPid } from '../../daemon/server.ts';
import { defineCommand } from '../command.ts';

export default defineCommand({
  name: 'daemon status',
  summary: 'say whether ctnetd runs for a state directory, and its pid',
  needsCtx: false,
  async run({ io: { out, stateDir: dir } }) {
    const pid = daemonPid(dir);
    out(pid ? `ctnetd for ${dir} runs as pid ${pid}` : `no ctnetd runs for ${dir}`);
    return pid ? 0 : 3;
  },
});
