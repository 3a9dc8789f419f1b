import { CtnetError, invalid } from '../../errors.ts';
import { publishedPorts } from '../../engine/inspect.ts';
import { parseName } from '../../model/names.ts';
import { defineCommand } from '../command.ts';

// `ctnet port NAME` lists; `port add` and `port rm` are its subcommands.
export default defineCommand({
  name: 'port',
  summary: 'list a sandbox\'s published ports; add or remove them on a live sandbox',
  args: [{ spec: '[name]', description: 'the sandbox' }],
  json: true,
  async run({ ctx, args, io }) {
    if (args.name === undefined) throw invalid('name the sandbox', 'ctnet port NAME, ctnet port add NAME SPEC, ctnet port rm NAME SPEC');
    const sandbox = parseName('sandbox', args.name);
    if (!ctx.store.sandbox(sandbox)) throw new CtnetError('NOT_FOUND', `no sandbox named ${sandbox}`, 'list sandboxes with "ctnet ls"');
    const rows = publishedPorts(ctx.store, sandbox);
    if (io.json) return io.out(JSON.stringify(rows, null, 2));
    if (rows.length) io.out(rows.flatMap((r) => r.bindings.length ? r.bindings : [`${r.spec} (inactive: no network with a way out)`]).join('\n'));
  },
});
