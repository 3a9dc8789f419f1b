// Addresses and subnets as numbers (bigint), so IPv4 and IPv6 share one arithmetic.
import ipaddr from 'ipaddr.js';
import { invalid } from '../errors.ts';

export type Family = 4 | 6;

export interface Subnet {
  readonly family: Family;
  readonly network: bigint;
  readonly prefix: number;
}

const bitsOf = (f: Family) => (f === 4 ? 32 : 128);

export function addrToBigint(a: ipaddr.IPv4 | ipaddr.IPv6): bigint {
  return a.toByteArray().reduce((n, b) => (n << 8n) | BigInt(b), 0n);
}

export function formatAddr(family: Family, n: bigint): string {
  if (family === 4) {
    const v = Number(n); // what ipaddr.js prints for IPv4, without its objects (policy formats thousands)
    return `${(v >>> 24) & 255}.${(v >>> 16) & 255}.${(v >>> 8) & 255}.${v & 255}`;
  }
  const bytes: number[] = [];
  for (let i = 0; i < bitsOf(family) / 8; i++) bytes.unshift(Number((n >> BigInt(8 * i)) & 0xffn));
  return ipaddr.fromByteArray(bytes).toString();
}

export function formatSubnet(s: Subnet): string {
  return `${formatAddr(s.family, s.network)}/${s.prefix}`;
}

/**
 * IPv4 as four plain decimal numbers. ipaddr.js (like inet_aton) also reads 010.1.0.0 as octal
 * (8.1.0.0) and 0x0a.1.0.0 as hex, which would silently mean another address than the one written.
 */
function checkDottedQuad(what: string, value: string, addr: string): void {
  if (!addr.includes(':') && !ipaddr.IPv4.isValidFourPartDecimal(addr)) {
    throw invalid(`${what} ${JSON.stringify(value)} is not an IPv4 address in plain form`,
      'write four decimal numbers without leading zeros, e.g. 10.88.0.5 (010.88.0.5 would be read as octal)');
  }
}

/** An IP address (no prefix). */
export function parseAddr(what: string, value: string): { family: Family; n: bigint } {
  if (!ipaddr.isValid(value) || value.includes('/') || value.includes('%')) {
    throw invalid(`${what} ${JSON.stringify(value)} is not an IP address`, 'write it as e.g. 10.88.0.5 or fd00::5');
  }
  checkDottedQuad(what, value, value);
  const a = ipaddr.parse(value);
  // ::ffff:a.b.c.d would be an IPv4 address in IPv6 clothing: refuse it rather than guess.
  return { family: a.kind() === 'ipv4' ? 4 : 6, n: addrToBigint(a) };
}

/** A subnet in CIDR form; the address must be the network address itself. */
export function parseSubnet(what: string, value: string): Subnet {
  let parsed: [ipaddr.IPv4 | ipaddr.IPv6, number];
  try {
    parsed = ipaddr.parseCIDR(value);
  } catch {
    throw invalid(`${what} ${JSON.stringify(value)} is not a CIDR`, 'write it as ADDRESS/PREFIX, e.g. 10.88.0.0/24 or fd00:88::/64');
  }
  checkDottedQuad(what, value, value.split('/')[0]!);
  const [addr, prefix] = parsed;
  const family: Family = addr.kind() === 'ipv4' ? 4 : 6;
  const bits = bitsOf(family);
  const n = addrToBigint(addr);
  const network = prefix === 0 ? 0n : (n >> BigInt(bits - prefix)) << BigInt(bits - prefix);
  const s: Subnet = { family, network, prefix };
  if (network !== n) {
    throw invalid(`${what} ${value} has host bits set`, `did you mean ${formatSubnet(s)}?`);
  }
  const maxPrefix = family === 4 ? 30 : 126;
  if (prefix > maxPrefix) throw invalid(`${what} ${value} is too small for a gateway and a sandbox`, `use a prefix of /${maxPrefix} or shorter`);
  const minPrefix = family === 4 ? 8 : 48;
  if (prefix < minPrefix) throw invalid(`${what} ${value} is larger than ctnet allows`, `use a prefix of /${minPrefix} or longer`);
  if (family === 4) {
    const taken = RESERVED4.find((r) => overlaps(s, r.subnet));
    if (taken) throw invalid(`${what} ${value} overlaps ${formatSubnet(taken.subnet)}, ${taken.why}`, 'use a private range such as 10.0.0.0/8, 172.16.0.0/12 or 192.168.0.0/16');
  }
  if (family === 6 && addr.range() !== 'uniqueLocal' && addr.range() !== 'unicast' && addr.range() !== 'reserved') {
    throw invalid(`${what} ${value} is in the ${addr.range()} range`, 'use a unique local (fd00::/8) or global unicast prefix');
  }
  return s;
}

export function size(s: Subnet): bigint {
  return 1n << BigInt(bitsOf(s.family) - s.prefix);
}

export function contains(s: Subnet, family: Family, n: bigint): boolean {
  return s.family === family && n >= s.network && n < s.network + size(s);
}

export function overlaps(a: Subnet, b: Subnet): boolean {
  return a.family === b.family && a.network < b.network + size(b) && b.network < a.network + size(a);
}

/** First and last address a sandbox may get: not the network address, not IPv4 broadcast. */
export function hostRange(s: Subnet): { first: bigint; last: bigint } {
  const last = s.network + size(s) - 1n;
  return { first: s.network + 1n, last: s.family === 4 ? last - 1n : last };
}

/** IPv4 ranges no network of ctnet's may use: the kernel gives them a meaning of their own. */
const RESERVED4: readonly { subnet: Subnet; why: string }[] = [
  ['0.0.0.0', 8, 'which means "this network" (0.0.0.0/8)'],
  ['127.0.0.0', 8, 'the loopback range: the kernel treats it as martian outside lo'],
  ['169.254.0.0', 16, 'the link-local range'],
  ['224.0.0.0', 4, 'the multicast range'],
  ['240.0.0.0', 4, 'a reserved range (and the broadcast address)'],
].map(([a, p, why]) => ({ subnet: { family: 4 as const, network: addrToBigint(ipaddr.parse(a as string)), prefix: p as number }, why: why as string }));
