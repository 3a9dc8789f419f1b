import { randomBytes } from 'node:crypto';
import { invalid } from '../../errors.ts';
import { execInSandbox, startInSandbox } from '../../engine/process.ts';
import { parseEgress } from '../../engine/egress.ts';
import { createSandbox, removeSandbox } from '../../engine/sandbox.ts';
import { parseName } from '../../model/names.ts';
import { parseAttachSpec } from '../../model/spec.ts';
import { ATTACH_OPTIONS, labelsOf, publishRequest, SHAPE_OPTIONS } from '../attach.ts';
import { parseShapeFlags } from '../../model/shape.ts';
import { defineCommand } from '../command.ts';

export default defineCommand({
  name: 'run',
  summary: 'create a sandbox and run a command in it',
  args: [{ spec: '<cmd...>', description: 'command and arguments, after --' }],
  options: [
    ...ATTACH_OPTIONS,
    ...SHAPE_OPTIONS,
    { flags: '--name <name>', description: 'sandbox name (default: a generated one)' },
    { flags: '--rm', description: 'remove the sandbox when the command exits' },
    { flags: '-d, --detach', description: 'run in the background; output goes to STATE_DIR/logs/NAME.log' },
  ],
  async run({ ctx, args, opts, io }) {
    if (opts.rm && opts.detach) throw invalid('--rm and -d cannot be used together', 'remove a detached sandbox with "ctnet rm NAME"');
    const name = parseName('sandbox', opts.name ?? `sbx-${randomBytes(3).toString('hex')}`);
    const spec = parseAttachSpec(opts);
    const shape = parseShapeFlags(opts);
    await createSandbox(ctx, name, spec, publishRequest(opts), labelsOf(opts), parseEgress('--egress-ip', opts.egressIp), shape);
    if (opts.detach) {
      const pid = startInSandbox(ctx, name, args.cmd);
      if (!io.quiet) io.out(`${name}\t${pid}`);
      return 0;
    }
    try {
      return await execInSandbox(ctx, name, args.cmd);
    } finally {
      if (opts.rm) await removeSandbox(ctx, name);
    }
  },
});
