import { invalid } from '../../errors.ts';
import { shapeSandbox } from '../../engine/shape.ts';
import { parseName } from '../../model/names.ts';
import { parseShapeFlags } from '../../model/shape.ts';
import { SHAPE_OPTIONS } from '../attach.ts';
import { defineCommand } from '../command.ts';

export default defineCommand({
  name: 'shape',
  summary: 'change the bandwidth, latency or loss of a sandbox\'s interfaces, live (settings not given stay)',
  args: ['<name>'],
  options: [
    { flags: '--network <name>', description: 'only its interface on this network (default: every interface)' },
    ...SHAPE_OPTIONS,
    { flags: '--clear', description: 'remove all shaping (line rate, no delay)' },
  ],
  async run({ ctx, args, opts }) {
    const sandbox = parseName('sandbox', args.name);
    const network = opts.network === undefined ? undefined : parseName('network', opts.network);
    const shape = parseShapeFlags(opts);
    if (opts.clear && shape) throw invalid('--clear cannot be given with other shaping flags', 'clear first, or give only the settings to change');
    if (!opts.clear && !shape) throw invalid('nothing to change', 'give --rate-in, --rate-out, --burst, --latency, --loss or --clear');
    await shapeSandbox(ctx, sandbox, network, opts.clear ? 'clear' : shape!);
  },
});
