import { parseEgress } from '../../engine/egress.ts';
import { createSandbox } from '../../engine/sandbox.ts';
import { parseName } from '../../model/names.ts';
import { parseAttachSpec } from '../../model/spec.ts';
import { ATTACH_OPTIONS, labelsOf, publishRequest, SHAPE_OPTIONS } from '../attach.ts';
import { parseShapeFlags } from '../../model/shape.ts';
import { defineCommand } from '../command.ts';

export default defineCommand({
  name: 'create',
  summary: 'create a sandbox (a network namespace) on networks',
  args: ['<name>'],
  options: [...ATTACH_OPTIONS, ...SHAPE_OPTIONS],
  async run({ ctx, args, opts, io }) {
    const spec = parseAttachSpec(opts);
    const shape = parseShapeFlags(opts);
    const s = await createSandbox(ctx, parseName('sandbox', args.name), spec, publishRequest(opts), labelsOf(opts), parseEgress('--egress-ip', opts.egressIp), shape);
    if (!io.quiet) io.out(s.name);
  },
});
