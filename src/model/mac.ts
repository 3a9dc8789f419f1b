import { randomBytes } from 'node:crypto';
import ipaddr from 'ipaddr.js';
import { invalid } from '../errors.ts';

/** A unicast MAC address, written lower-case with colons. */
export function parseMac(value: string): string {
  const m = /^([0-9a-fA-F]{2})([:-][0-9a-fA-F]{2}){5}$/.exec(value);
  if (!m) throw invalid(`MAC address ${JSON.stringify(value)} is malformed`, 'write it as six hex bytes, e.g. 02:42:ac:11:00:02');
  const mac = value.toLowerCase().replaceAll('-', ':');
  const first = parseInt(mac.slice(0, 2), 16);
  if (first & 1) throw invalid(`MAC address ${mac} is a multicast address`, 'the lowest bit of the first byte must be 0 (e.g. 02:...)');
  if (mac === '00:00:00:00:00:00') throw invalid('MAC address 00:00:00:00:00:00 is not usable');
  return mac;
}

/** A random locally administered unicast MAC (02:xx:...). */
export function randomMac(): string {
  const b = randomBytes(6);
  b[0] = (b[0]! & 0xfc) | 0x02;
  return [...b].map((x) => x.toString(16).padStart(2, '0')).join(':');
}

/**
 * The IPv6 link-local address the kernel gives an interface with this MAC (addr_gen_mode eui64, the
 * default): fe80:: and the modified EUI-64 (the universal/local bit flipped, ff:fe in the middle).
 */
export function linkLocalOf(mac: string): string {
  const b = mac.split(':').map((x) => parseInt(x, 16));
  const words = [(b[0]! ^ 0x02) << 8 | b[1]!, b[2]! << 8 | 0xff, 0xfe << 8 | b[3]!, b[4]! << 8 | b[5]!];
  return ipaddr.fromByteArray([0xfe, 0x80, 0, 0, 0, 0, 0, 0, ...words.flatMap((w) => [w >> 8, w & 0xff])]).toString();
}

/** An IPv6 address as the 128-bit hex integer nft wants for a raw payload field (the ND target). */
export function ipv6Hex(addr: string): string {
  return '0x' + ipaddr.parse(addr).toByteArray().map((x) => x.toString(16).padStart(2, '0')).join('');
}
