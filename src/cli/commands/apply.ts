import { createInterface } from 'node:readline/promises';
import { CtnetError } from '../../errors.ts';
import { applyPlan, withTopologyLock } from '../../topology/apply.ts';
import { readTopology } from '../../topology/parse.ts';
import { computePlan, renderPlan } from '../../topology/plan.ts';
import { defineCommand } from '../command.ts';

export default defineCommand({
  name: 'apply',
  summary: 'make the store and the kernel hold what a topology file says: print the plan, then carry it out (docs/topology.md)',
  options: [
    { flags: '-f, --file <file>', description: 'the topology file (YAML)', required: true },
    { flags: '--prune', description: 'also remove what this file\'s name: owns and the file no longer has' },
    { flags: '-y, --yes', description: 'do not ask before a replace or a removal' },
  ],
  async run({ ctx, opts, io }) {
    const topo = readTopology(opts.file);
    // One apply (or down) at a time per state directory: the plan is made and carried out under the lock.
    return withTopologyLock(ctx, async () => {
      const plan = await computePlan(ctx, topo, { prune: opts.prune ?? false });
      io.out(renderPlan(plan));
      // --dry-run stops at the plan: the steps of one object depend on the ones before it.
      if (plan.changes.length === 0 || ctx.applier.dryRun) return 0;
      const risky = plan.changes.filter((c) => c.op === 'replace' || c.op === 'remove');
      if (risky.length && !opts.yes && process.stdin.isTTY && process.stderr.isTTY) {
        const rl = createInterface({ input: process.stdin, output: process.stderr });
        const answer = await rl.question(`${risky.length} object(s) will be replaced or removed. Go ahead? [y/N] `);
        rl.close();
        if (!/^y(es)?$/i.test(answer.trim())) throw new CtnetError('INVALID_ARGUMENT', 'apply cancelled: nothing changed');
      }
      const done = await applyPlan(ctx, topo, plan);
      if (!io.quiet) io.out(done.map((d) => `ctnet: ${d}`).join('\n') + `\nApplied ${topo.file} (${topo.name}).`);
    });
  },
});
