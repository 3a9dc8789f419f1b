import { daemonPid } from '../../daemon/server.ts';
import { doctor } from '../../engine/doctor.ts';
import { acceptForward } from '../../engine/forward.ts';
import { defineCommand } from '../command.ts';

export default defineCommand({
  name: 'doctor',
  summary: 'check what on this host keeps ctnet\'s networks from working (forward policies, br_netfilter, sysctls, state)',
  json: true,
  options: [
    { flags: '--fix', description: 'with your consent: where the host\'s iptables FORWARD chain drops by default (Docker), accept each ctnet network\'s bridge in it' },
  ],
  async run({ ctx, opts, io }) {
    if (opts.fix) {
      const { done, cannot } = await acceptForward(ctx);
      for (const line of done) io.out(`fixed: ${line}`);
      for (const line of cannot) io.warn(line);
    }
    const findings = await doctor(ctx, daemonPid(ctx.store.dir));
    if (io.json) io.out(JSON.stringify(findings, null, 2));
    else {
      io.out(findings.map((f) => `${f.status.padEnd(4)}  ${f.check.padEnd(15)}  ${f.detail}${f.hint && f.status !== 'ok' ? `\n      ${''.padEnd(15)}  fix: ${f.hint}` : ''}`).join('\n'));
    }
    return findings.some((f) => f.status === 'fail') ? 1 : 0;
  },
});
