import { readTopology } from '../../topology/parse.ts';
import { computePlan, planJson, renderPlan } from '../../topology/plan.ts';
import { defineCommand } from '../command.ts';

export default defineCommand({
  name: 'diff',
  summary: 'the plan for a topology file: + create, ~ change in place, -/+ replace (why), - remove (--prune), ! repair drift',
  options: [
    { flags: '-f, --file <file>', description: 'the topology file (YAML)', required: true },
    { flags: '--prune', description: 'include removing what the file no longer has' },
    { flags: '--detailed-exitcode', description: 'exit 0 with no changes, 2 with changes (1 on error)' },
  ],
  json: true,
  async run({ ctx, opts, io }) {
    const topo = readTopology(opts.file);
    const plan = await computePlan(ctx, topo, { prune: opts.prune ?? false });
    io.out(io.json ? JSON.stringify(planJson(plan), null, 2) : renderPlan(plan));
    return opts.detailedExitcode && plan.changes.length > 0 ? 2 : 0;
  },
});
