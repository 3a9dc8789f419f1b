import { removePolicies } from '../../engine/policy.ts';
import { defineCommand } from '../command.ts';

export default defineCommand({
  name: 'policy rm',
  aliases: ['remove'],
  summary: 'remove rules (by name or ID); connections they allowed and nothing else allows are cut',
  args: ['<rule...>'],
  async run({ ctx, args }) {
    await removePolicies(ctx, args.rule);
  },
});
