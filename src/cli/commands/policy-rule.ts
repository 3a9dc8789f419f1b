import { addPolicy } from '../../engine/policy.ts';
import { defineCommand } from '../command.ts';

/** `policy allow` and `policy deny`: one rule from the command line. */
export const policyRule = (action: 'allow' | 'deny') => defineCommand({
  name: `policy ${action}`,
  summary: `${action} new connections --from SEL --to SEL (SEL: sandbox, net:NAME, label:KEY=VALUE, CIDR, world; --to also host)`,
  options: [
    { flags: '--from <sel>', description: 'where connections come from', required: true },
    { flags: '--to <sel>', description: 'where they go', required: true },
    { flags: '--port <port>', description: 'PORT[-END][/tcp|/udp|/sctp] or icmp (default: every protocol and port)' },
    { flags: '--name <name>', description: 'a name for the rule (default: rule-ID)' },
  ],
  async run({ ctx, opts, io }) {
    const row = await addPolicy(ctx, { action, from: opts.from, to: opts.to, port: opts.port, name: opts.name });
    if (!io.quiet) io.out(row.name);
  },
});
