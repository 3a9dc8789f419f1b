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
  { flags: '--default-route <network>', description: 'the network (one of --network) that carries the default routes (default: the first with a way out)' },
  { flags: '--egress-ip <ip>', description: 'a host address this sandbox\'s egress leaves from instead of the masqueraded one (one per family)', repeatable: true },
] as const satisfies readonly OptionSpec[];

/** Shaping of every interface a new sandbox gets (ctnet shape changes it later). */
export const SHAPE_OPTIONS = [
  { flags: '--rate-in <rate>', description: 'limit traffic into the sandbox, e.g. 10mbit, 500kbit, 1gbit (tc units; bps = bytes/s)' },
  { flags: '--rate-out <rate>', description: 'limit traffic out of the sandbox (same units)' },
  { flags: '--burst <size>', description: 'token bucket of each rate, e.g. 32kb (default: 10 ms at the rate, at least 16kb)' },
  { flags: '--latency <ms>', description: 'delay added to traffic into the sandbox, e.g. 50ms (needs netem in the kernel)' },
  { flags: '--loss <pct>', description: 'drop this percentage of traffic into the sandbox, e.g. 1 (needs netem in the kernel)' },
] as const satisfies readonly OptionSpec[];

export function labelsOf(o: { readonly label?: readonly string[] }): { key: string; value: string }[] {
  const labels = (o.label ?? []).map((l) => parseLabel('--label', l));
  const dup = labels.find((l, i) => labels.findIndex((x) => x.key === l.key) !== i);
  if (dup) throw invalid(`--label ${dup.key} is given twice`);
  return labels;
}

export const publishRequest = (o: { readonly publish?: readonly string[]; readonly force?: boolean }): PublishRequest =>
  ({ mappings: (o.publish ?? []).map(parsePortSpec), force: o.force ?? false });
