import { CtnetError } from '../../errors.ts';
import { changeLabels } from '../../engine/policy.ts';
import { parseName } from '../../model/names.ts';
import { parseLabel } from '../../model/policy.ts';
import { defineCommand } from '../command.ts';

export default defineCommand({
  name: 'label',
  summary: 'show a sandbox\'s labels, or set KEY=VALUE labels (policy selects them as label:KEY=VALUE)',
  args: ['<name>', '[labels...]'],
  options: [{ flags: '--rm <key>', description: 'remove a label (repeatable)', repeatable: true }],
  json: true,
  async run({ ctx, args, opts, io }) {
    const sandbox = parseName('sandbox', args.name);
    const set = args.labels.map((l) => parseLabel('label', l));
    const remove = opts.rm ?? [];
    if (set.length || remove.length) await changeLabels(ctx, sandbox, set, remove);
    else if (!ctx.store.sandbox(sandbox)) throw new CtnetError('NOT_FOUND', `no sandbox named ${sandbox}`, 'list sandboxes with "ctnet ls"');
    const rows = ctx.store.labels(sandbox);
    if (io.json) return io.out(JSON.stringify(Object.fromEntries(rows.map((r) => [r.key, r.value])), null, 2));
    if (!io.quiet && rows.length) io.out(rows.map((r) => `${r.key}=${r.value}`).join('\n'));
  },
});
