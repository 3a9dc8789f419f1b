// Address choice, as a pure function over a subnet and a "taken" test. The store calls it inside
// its write transaction, so two processes can never be handed the same address.
import { CtnetError } from '../errors.ts';
import { formatSubnet, hostRange, type Subnet } from './cidr.ts';

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
