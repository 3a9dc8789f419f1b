// An overlay network's facts as plain values: its options (VNI, UDP port, host prefix), the MTU it
// leaves, and its peers (the other hosts' VTEPs, as the control plane hands them over). Pure.
import { invalid } from '../errors.ts';
import { contains, formatAddr, formatSubnet, parseAddr, parseSubnet, size, type Subnet } from './cidr.ts';
import { parseMac } from './mac.ts';

/** Outer IPv4 (20) + UDP (8) + VXLAN (8) + inner Ethernet (14) headers: what each frame costs on the underlay. */
export const VXLAN_OVERHEAD = 50;
/** IANA's VXLAN port; Linux's own default (8472) predates it, so ctnet always says which. */
export const VXLAN_PORT = 4789;
export const DEFAULT_HOST_PREFIX = 24;
const VNI_MAX = 2 ** 24 - 1;

/** The MTU an overlay leaves its sandboxes on an underlay of this MTU. */
export function overlayMtu(underlayMtu: number): number {
  return underlayMtu - VXLAN_OVERHEAD;
}

/**
 * One remote host's end of an overlay network: what the control plane knows about it (its subnet
 * lease and its VTEP record), and all the datapath needs to reach it.
 */
export interface Peer {
  /** The host's name (for messages and records; nothing in the kernel carries it). */
  readonly host: string;
  /** Its lease: the subnet its sandboxes have, e.g. 10.50.2.0/24. */
  readonly subnet: string;
  /** Its underlay address: where VXLAN packets for its subnet go. */
  readonly underlay: string;
  /** Its VXLAN device's MAC. */
  readonly vtepMac: string;
}

/** A peer as the kernel holds it (the kernel knows no host names). */
export type PeerDatapath = Omit<Peer, 'host'>;

/**
 * A VTEP's own address inside the overlay: the network address of its lease, set as a /32 on its
 * VXLAN device (flannel's choice). Peers route a lease via it, so it is never a sandbox's (IPAM
 * starts at the next address) nor the bridge's gateway.
 */
export function vtepAddress(subnet: string): string {
  const s = parseSubnet('lease', subnet);
  return formatAddr(s.family, s.network);
}

/** A peer record from outside (the control plane), checked: canonical subnet, address and MAC. */
export function parsePeer(raw: { host: string; subnet: string; underlay: string; vtepMac: string }): Peer {
  const s = parseSubnet(`peer ${raw.host}'s subnet`, raw.subnet);
  if (s.family !== 4) throw invalid(`peer ${raw.host}'s subnet ${raw.subnet} is not IPv4`, 'overlay networks carry IPv4 only');
  const u = parseAddr(`peer ${raw.host}'s underlay address`, raw.underlay);
  if (u.family !== 4) throw invalid(`peer ${raw.host}'s underlay address ${raw.underlay} is not IPv4`, 'the underlay is IPv4 only');
  return { host: raw.host, subnet: formatSubnet(s), underlay: formatAddr(4, u.n), vtepMac: parseMac(raw.vtepMac) };
}

export interface OverlayOptions {
  /** undefined: the control plane picks one no other overlay network uses. */
  readonly vni: number | undefined;
  readonly port: number;
  /** Each host's lease is a subnet of this prefix inside the overlay's subnet. */
  readonly hostPrefix: number;
}

const whole = (what: string, text: string, min: number, max: number, hint: string): number => {
  const n = Number(text);
  if (!/^\d+$/.test(text) || n < min || n > max) throw invalid(`${what} ${JSON.stringify(text)} is not a number from ${min} to ${max}`, hint);
  return n;
};

/** --vni, --port and --host-prefix of `network create --driver vxlan`, checked against its --subnet. */
export function parseOverlayOptions(raw: { vni?: string; port?: string; hostPrefix?: string }, subnet: Subnet): OverlayOptions {
  if (subnet.family !== 4) throw invalid(`--subnet ${formatSubnet(subnet)} is not IPv4`, 'overlay networks carry IPv4 only; give an IPv4 --subnet');
  const vni = raw.vni === undefined ? undefined : whole('--vni', raw.vni, 1, VNI_MAX, 'a VXLAN network identifier is 24 bits; leave --vni out to get a free one');
  const port = raw.port === undefined ? VXLAN_PORT : whole('--port', raw.port, 1, 65535, `a UDP port; VXLAN's is ${VXLAN_PORT}`);
  const hostPrefix = raw.hostPrefix === undefined ? DEFAULT_HOST_PREFIX
    : whole('--host-prefix', raw.hostPrefix, 1, 30, 'the prefix of each host\'s subnet, e.g. 24 for a /24 per host');
  // A lease must fit at least two hosts into the overlay, and hold a gateway and a sandbox.
  if (hostPrefix <= subnet.prefix) {
    throw invalid(`--host-prefix ${hostPrefix} is not longer than --subnet ${formatSubnet(subnet)}: it leaves fewer than 2 host subnets`,
      `use a host prefix from ${subnet.prefix + 1} to 30, or a larger --subnet`);
  }
  return { vni, port, hostPrefix };
}

/** True when a lease lies inside one of the overlay's subnets. */
export function insideOverlay(cidrs: readonly string[], lease: string): boolean {
  const l = parseSubnet('lease', lease);
  return cidrs.some((c) => {
    const o = parseSubnet('overlay subnet', c);
    return contains(o, l.family, l.network) && contains(o, l.family, l.network + size(l) - 1n);
  });
}
