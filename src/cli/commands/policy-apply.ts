import { readFileSync } from 'node:fs';
import { invalid } from '../../errors.ts';
import { addPolicies, parseRulesFile } from '../../engine/policy.ts';
import { defineCommand } from '../command.ts';

export default defineCommand({
  name: 'policy apply',
  summary: 'add every rule of a rules file in one transaction (one rule per line: allow|deny --from SEL --to SEL [--port P] [--name N]; - reads stdin)',
  args: ['<file>'],
  async run({ ctx, args: { file }, io }) {
    let text: string;
    try {
      text = readFileSync(file === '-' ? 0 : file, 'utf8');
    } catch (e) {
      throw invalid(`cannot read ${file}: ${(e as Error).message}`);
    }
    const rows = await addPolicies(ctx, parseRulesFile(file, text));
    if (!io.quiet) io.out(rows.map((r) => r.name).join('\n'));
  },
});
