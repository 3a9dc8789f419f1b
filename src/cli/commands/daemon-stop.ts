import { stopDaemon } from '../../daemon/server.ts';
import { defineCommand } from '../command.ts';

export default defineCommand({
  name: 'daemon stop',
  summary: 'stop the ctnetd of a state directory',
  needsCtx: false,
  async run({ io: { out, stateDir: dir } }) {
    out(await stopDaemon(dir) ? `ctnetd for ${dir} stopped` : `no ctnetd runs for ${dir}`);
  },
});
