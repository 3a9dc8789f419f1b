// What `create` and `run` share: the options that attach a new sandbox, and their parsing.
import { invalid } from '../errors.ts';
import type { PublishRequest } from '../engine/ports.ts';
import { parsePortSpec } from '../model/ports.ts';
import { parseLabel } from '../model/policy.ts';
import type { OptionSpec } from './command.ts';

export const ATTACH_OPTIONS = [
  { flags: '--network <name>', description: 'network to join (repeat for more: eth0, eth1, ...)', repeatable: true },
  { flags: '--ip <ip>', description: 'a fixed address (one per subnet; repeatable)', repeatable: true },
  { flags: '--mac <mac>', description: 'MAC address of the first interface' },
  { flags: '-p, --publish <spec>', description: 'publish a port: [HOST_IP:]HOST_PORT[-END]:CONTAINER_PORT[-END][/tcp|/udp|/sctp] (repeatable)', repeatable: true },
  { flags: '--force', description: 'publish even when a host process listens on the host port' },
  { flags: '--alias <name>', description: 'one more DNS name of the sandbox on its networks (several sandboxes may share one; repeatable)', repeatable: true },
  { flags: '--label <key=value>', description: 'a label policy rules can select (label:KEY=VALUE; repeatable)', repeatable: true },
] as const satisfies readonly OptionSpec[];

export function labelsOf(o: { readonly label?: readonly string[] }): { key: string; value: string }[] {
  const labels = (o.label ?? []).map((l) => parseLabel('--label', l));
  const dup = labels.find((l, i) => labels.findIndex((x) => x.key === l.key) !== i);
  if (dup) throw invalid(`--label ${dup.key} is given twice`);
  return labels;
}

export const publishRequest = (o: { readonly publish?: readonly string[]; readonly force?: boolean }): PublishRequest =>
  ({ mappings: (o.publish ?? []).map(parsePortSpec), force: o.force ?? false });
