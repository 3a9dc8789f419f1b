// Names of the kernel objects ctnet makes, derived so they carry ctnet's mark and fit in 15 chars.
import { createHash, randomBytes } from 'node:crypto';
import { IFNAME_MAX } from '../model/names.ts';

export const BRIDGE_PREFIX = 'ctbr-';
export const VETH_PREFIX = 'ctv';
/** VXLAN devices of overlay networks (not ctv...: sandbox ports are matched by that prefix). */
export const VXLAN_PREFIX = 'ctov-';

/** ctbr-NAME when it fits, else ctbr- and a hash of the name. */
export function bridgeName(network: string): string {
  const plain = BRIDGE_PREFIX + network;
  if (plain.length <= IFNAME_MAX) return plain;
  return BRIDGE_PREFIX + createHash('sha256').update(network).digest('hex').slice(0, IFNAME_MAX - BRIDGE_PREFIX.length);
}

/** ctov-NAME when it fits, else ctov- and a hash of the name. */
export function vxlanName(network: string): string {
  const plain = VXLAN_PREFIX + network;
  if (plain.length <= IFNAME_MAX) return plain;
  return VXLAN_PREFIX + createHash('sha256').update(network).digest('hex').slice(0, IFNAME_MAX - VXLAN_PREFIX.length);
}

/** A fresh host-side veth name: ctv + 10 random hex digits. */
export function vethName(): string {
  return VETH_PREFIX + randomBytes(5).toString('hex');
}

/** Host shims of macvlan/ipvlan networks: ctmv-NAME, or ctmv- and a hash of the name. */
export const SHIM_PREFIX = 'ctmv-';
export function shimName(network: string): string {
  const plain = SHIM_PREFIX + network;
  if (plain.length <= IFNAME_MAX) return plain;
  return SHIM_PREFIX + createHash('sha256').update(network).digest('hex').slice(0, IFNAME_MAX - SHIM_PREFIX.length);
}

/** ifb devices that shape a sandbox's egress: ctq and the ten hex digits of its host veth. */
export const IFB_PREFIX = 'ctq';
export function ifbName(hostVeth: string): string {
  return IFB_PREFIX + hostVeth.slice(VETH_PREFIX.length);
}

/** netns file name of a sandbox ctnet owns: ctnet-INSTANCE-NAME, INSTANCE marking the state dir. */
export function netnsName(instance: string, sandbox: string): string {
  return `${netnsPrefix(instance)}${sandbox}`;
}
export function netnsPrefix(instance: string): string {
  return `ctnet-${instance}-`;
}

/** Container-side interface names: eth0, eth1, ... the lowest one not in use. */
export function nextIfname(used: readonly string[]): string {
  for (let i = 0; ; i++) if (!used.includes(`eth${i}`)) return `eth${i}`;
}
