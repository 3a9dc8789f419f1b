// Address choice, as a pure function over a subnet and a "taken" test. The store calls it inside
// its write transaction, so two processes can never be handed the same address.
import { CtnetError } from '../errors.ts';
import { contains, formatAddr, formatSubnet, hostRange, parseAddr, parseSubnet, type Subnet } from './cidr.ts';

/**
 * The next free address after `cursor` (round-robin like host-local, so a just-released address is
 * not reused at once), wrapping around once. Throws when the subnet is full.
 */
export function nextFree(subnet: Subnet, cursor: bigint | undefined, isTaken: (n: bigint) => boolean): bigint {
  const { first, last } = hostRange(subnet);
  const start = cursor === undefined || cursor < first || cursor >= last ? first : cursor + 1n;
  for (let n = start; n <= last; n++) if (!isTaken(n)) return n;
  for (let n = first; n < start; n++) if (!isTaken(n)) return n;
  throw new CtnetError('CONFLICT', `subnet ${formatSubnet(subnet)} has no free address left`,
    'remove sandboxes from this network, or create a network with a larger subnet');
}

export interface SubnetLease {
  readonly cidr: string;
  readonly gateway: string;
  /** The last address handed out in this subnet (round-robin continues after it). */
  readonly cursor: string | null;
}

export interface RequestedAddress {
  readonly family: 4 | 6;
  readonly n: bigint;
  /** As the user wrote it, canonical (for messages and the record). */
  readonly text: string;
}

export interface Allocation {
  readonly ip: string;
  readonly family: 4 | 6;
  readonly cidr: string;
  /** The new cursor when the address was chosen (not requested). */
  readonly cursor: string | undefined;
}

/**
 * The address an attachment gets in one subnet: the requested one (checked: a host address, not
 * the gateway, not taken) or the next free one. `holder` names who holds an address ("sandbox web1"), if anyone.
 */
export function allocate(network: string, lease: SubnetLease, requested: readonly RequestedAddress[],
  holder: (ip: string) => string | undefined): Allocation {
  const subnet = parseSubnet('subnet', lease.cidr);
  const gateway = parseAddr('gateway', lease.gateway).n;
  const want = requested.find((r) => contains(subnet, r.family, r.n));
  if (want) {
    const { first, last } = hostRange(subnet);
    if (want.n < first || want.n > last) throw new CtnetError('INVALID_ARGUMENT', `--ip ${want.text} is the network or broadcast address of ${lease.cidr}`, 'choose a host address');
    if (want.n === gateway) throw new CtnetError('CONFLICT', `--ip ${want.text} is the gateway of network ${network}`, 'choose another address');
    const taken = holder(want.text);
    if (taken) throw new CtnetError('CONFLICT', `--ip ${want.text} is taken by ${taken}`, 'choose another address, or leave --ip out to get a free one');
    return { ip: want.text, family: subnet.family, cidr: lease.cidr, cursor: undefined };
  }
  const cursor = lease.cursor === null ? undefined : parseAddr('cursor', lease.cursor).n;
  const n = nextFree(subnet, cursor, (x) => x === gateway || holder(formatAddr(subnet.family, x)) !== undefined);
  const ip = formatAddr(subnet.family, n);
  return { ip, family: subnet.family, cidr: lease.cidr, cursor: ip };
}
