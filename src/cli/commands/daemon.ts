import { invalid } from '../../errors.ts';
import { runDaemon } from '../../daemon/server.ts';
import { defineCommand } from '../command.ts';

// `ctnet daemon` runs ctnetd; `daemon stop` and `daemon status` are its subcommands.
export default defineCommand({
  name: 'daemon',
  summary: 'run ctnetd, the daemon behind the CNI plugin (the plugin starts it on demand)',
  options: [{ flags: '--idle-exit <seconds>', description: 'exit after this long without a request (0: never)', default: '0' }],
  needsCtx: false,
  async run({ opts, io }) {
    const idle = Number(opts.idleExit);
    if (!Number.isFinite(idle) || idle < 0) throw invalid(`--idle-exit ${opts.idleExit} is not a number of seconds`);
    return runDaemon({ stateDir: io.stateDir, idleExitMs: idle * 1000 });
  },
});
