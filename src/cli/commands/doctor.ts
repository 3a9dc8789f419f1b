import { daemonPid } from '../../daemon/server.ts';
import { doctor } from '../../engine/doctor.ts';
import { defineCommand } from '../command.ts';

export default defineCommand({
  name: 'doctor',
  summary: 'check what on this host keeps ctnet\'s networks from working (forward policies, br_netfilter, sysctls, state)',
  json: true,
  async run({ ctx, io }) {
    const findings = await doctor(ctx, daemonPid(ctx.store.dir));
    if (io.json) io.out(JSON.stringify(findings, null, 2));
    else {
      io.out(findings.map((f) => `${f.status.padEnd(4)}  ${f.check.padEnd(15)}  ${f.detail}${f.hint && f.status !== 'ok' ? `\n      ${''.padEnd(15)}  fix: ${f.hint}` : ''}`).join('\n'));
    }
    return findings.some((f) => f.status === 'fail') ? 1 : 0;
  },
});
