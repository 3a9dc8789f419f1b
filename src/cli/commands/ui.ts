import { randomBytes } from 'node:crypto';
import { CtnetError } from '../../errors.ts';
import { daemonPid } from '../../daemon/server.ts';
import { startDaemon } from '../../daemon/spawn.ts';
import { DEFAULT_LISTEN, formatListen, hashToken, isLoopback, newToken, parseListen, readUiConfig, readUiState, removeUiConfig, writeUiConfig } from '../../services/api/config.ts';
import { defineCommand } from '../command.ts';

const WAIT_MS = 20_000;

// `ctnet ui`: asks ctnetd (started here if it is not running) to serve the live page, waits for its
// answer in ui.state, prints the URL and returns. The page lives as long as ctnetd does.
export default defineCommand({
  name: 'ui',
  summary: 'serve the live topology page from ctnetd (starting it if needed) and print its URL',
  options: [
    { flags: '--listen <addr:port>', description: `where ctnetd serves it (default ${DEFAULT_LISTEN}, or the address given last; port 0: any free port); beyond loopback a token is required, printed once` },
    { flags: '--off', description: 'stop serving the page', conflicts: 'listen' },
  ],
  async run({ opts, io }) {
    const dir = io.stateDir;
    const signal = () => {
      const pid = daemonPid(dir);
      if (pid) process.kill(pid, 'SIGHUP');
      return pid;
    };
    if (opts.off) {
      removeUiConfig(dir);
      signal();
      return void io.out('the page is no longer served');
    }
    const had = readUiConfig(dir);
    const listen = parseListen(opts.listen ?? had?.listen ?? DEFAULT_LISTEN);
    // A new token only with a new --listen beyond loopback: it is printed once and stored hashed.
    let token: string | undefined;
    let tokenHash: string | null = null;
    if (!isLoopback(listen.host)) {
      if (opts.listen === undefined && had?.tokenHash) tokenHash = had.tokenHash;
      else {
        token = newToken();
        tokenHash = hashToken(token);
      }
    }
    const generation = randomBytes(8).toString('hex');
    writeUiConfig(dir, { listen: formatListen(listen), tokenHash, generation });
    let pid = signal();
    if (!pid) pid = startDaemon(dir);
    const until = Date.now() + WAIT_MS;
    let state = readUiState(dir);
    while (state?.generation !== generation && Date.now() < until) {
      await new Promise((r) => setTimeout(r, 50));
      state = readUiState(dir);
    }
    if (state?.generation !== generation) {
      throw new CtnetError('UNAVAILABLE', `ctnetd (pid ${pid ?? '?'}) did not answer within ${WAIT_MS / 1000} s`, `see ${dir}/ctnetd.log; "ctnet daemon status" says whether it runs`);
    }
    if (state.error || !state.url) throw new CtnetError('ENVIRONMENT', state.error ?? 'ctnetd did not say where it listens', 'choose another --listen ADDR:PORT (port 0: any free port)');
    io.out(token ? `${state.url}?token=${token}` : state.url);
    if (token) io.warn('the token is printed only now: keep the URL (ctnet ui --listen again makes a new token)');
    else if (tokenHash) io.warn('this address needs the token printed when it was made (ctnet ui --listen ADDR:PORT makes a new one)');
  },
});
