import { downTopology, withTopologyLock } from '../../topology/apply.ts';
import { readTopology } from '../../topology/parse.ts';
import { defineCommand } from '../command.ts';

export default defineCommand({
  name: 'down',
  summary: 'remove exactly what a topology file\'s name: owns (its rules, sandboxes and their commands, networks)',
  options: [{ flags: '-f, --file <file>', description: 'the topology file (YAML)', required: true }],
  async run({ ctx, opts, io }) {
    const topo = readTopology(opts.file);
    const done = await withTopologyLock(ctx, () => downTopology(ctx, topo.name));
    if (!io.quiet) io.out(done.length ? done.map((d) => `ctnet: ${d}`).join('\n') : `${topo.name} owns nothing here`);
  },
});
