// Overlay networks as data: what a definition may say (alone and beside the others), and how a
// host gets its share, a subnet of --host-prefix inside the overlay subnet (the lease pool).
// Pure: the registry (registry.ts) reads etcd, asks here, and writes with compare-and-swap.
import { CtnetError, invalid } from '../errors.ts';
import { formatAddr, formatSubnet, overlaps, parseSubnet, size, type Subnet } from '../model/cidr.ts';
import { checkOverlayDef, VNI_MAX, type OverlayDef } from './keys.ts';

export const DEFAULT_HOST_PREFIX4 = 24;
export const DEFAULT_HOST_PREFIX6 = 64;
export const DEFAULT_VXLAN_PORT = 4789;

/** What `network create --driver vxlan` is given, as text (undefined: the default). */
export interface RawOverlay {
  readonly subnet?: string | undefined;
  readonly hostPrefix?: string | undefined;
  readonly vni?: string | undefined;
  readonly port?: string | undefined;
  readonly internal?: boolean | undefined;
  readonly isolate?: boolean | undefined;
}

/** The spec of a new overlay network; vni undefined: the lowest one free (chooseVni). */
export interface OverlaySpec extends Omit<OverlayDef, 'vni'> {
  readonly vni: number | undefined;
}

function intOption(flag: string, text: string, min: number, max: number): number {
  if (!/^\d+$/.test(text) || Number(text) < min || Number(text) > max) {
    throw invalid(`${flag} ${JSON.stringify(text)} is not a whole number from ${min} to ${max}`);
  }
  return Number(text);
}

/** Parses an overlay network's options: everything it can say about itself, before etcd is asked. */
export function parseOverlaySpec(raw: RawOverlay): OverlaySpec {
  if (raw.subnet === undefined) throw invalid('an overlay network needs --subnet', 'e.g. --subnet 10.50.0.0/16: each host gets a /24 of it');
  const s = parseSubnet('--subnet', raw.subnet);
  const hostPrefix = raw.hostPrefix === undefined
    ? (s.family === 4 ? DEFAULT_HOST_PREFIX4 : DEFAULT_HOST_PREFIX6)
    : intOption('--host-prefix', raw.hostPrefix, 1, s.family === 4 ? 32 : 128);
  const vni = raw.vni === undefined ? undefined : intOption('--vni', raw.vni, 1, VNI_MAX);
  const port = raw.port === undefined ? DEFAULT_VXLAN_PORT : intOption('--port', raw.port, 1, 65535);
  const spec = { subnet: formatSubnet(s), hostPrefix, vni, port, internal: raw.internal ?? false, isolate: raw.isolate ?? false };
  try {
    checkOverlayDef({ ...spec, vni: vni ?? 1 });
  } catch (e) {
    const longer = Math.min(s.prefix + 8, s.family === 4 ? 30 : 126);
    throw invalid(`--host-prefix: ${(e as Error).message}`, `give each host a smaller share, e.g. --host-prefix ${longer}, or the network a larger --subnet`);
  }
  return spec;
}

/** How many host subnets the pool of a definition holds. */
export function poolSize(d: Pick<OverlayDef, 'subnet' | 'hostPrefix'>): bigint {
  const s = parseSubnet('overlay subnet', d.subnet);
  return 1n << BigInt(d.hostPrefix - s.prefix);
}

/** "10.50.0.0/16 in /24s (256 host subnets)": how errors name a pool. */
export function describePool(name: string, d: Pick<OverlayDef, 'subnet' | 'hostPrefix'>): string {
  return `the lease pool of overlay network ${name} (${d.subnet} in /${d.hostPrefix}s: ${poolSize(d)} host subnets)`;
}

/** The lowest VNI no other overlay network uses. */
export function chooseVni(existing: ReadonlyMap<string, OverlayDef>): number {
  const used = new Set([...existing.values()].map((d) => d.vni));
  for (let v = 1; v <= VNI_MAX; v++) if (!used.has(v)) return v;
  throw new CtnetError('CONFLICT', 'every VNI is in use', 'remove an overlay network');
}

/**
 * Checks a new overlay network against those etcd holds: its name, its subnet (no overlap) and its
 * VNI (unique) are free. Returns the definition to write (with its VNI chosen when none was given).
 */
export function validateOverlay(name: string, spec: OverlaySpec, existing: ReadonlyMap<string, OverlayDef>): OverlayDef {
  if (existing.has(name)) throw new CtnetError('CONFLICT', `overlay network ${name} exists already in the cluster`, 'choose another name, or use the existing network');
  const mine = parseSubnet('--subnet', spec.subnet);
  for (const [other, d] of existing) {
    if (overlaps(mine, parseSubnet('subnet', d.subnet))) {
      throw new CtnetError('CONFLICT', `subnet ${spec.subnet} overlaps ${d.subnet} of overlay network ${other}`, 'choose a subnet no other overlay network uses (ctnet network ls)');
    }
    if (spec.vni !== undefined && d.vni === spec.vni) {
      throw new CtnetError('CONFLICT', `VNI ${spec.vni} is in use by overlay network ${other}`, 'leave --vni out to get a free one, or choose another');
    }
  }
  return checkOverlayDef({ ...spec, vni: spec.vni ?? chooseVni(existing) });
}

/** True when cidr is one of the pool's host subnets (inside, of the host prefix, aligned). */
export function inPool(d: Pick<OverlayDef, 'subnet' | 'hostPrefix'>, cidr: string): boolean {
  let s: Subnet;
  try {
    s = parseSubnet('subnet', cidr);
  } catch {
    return false;
  }
  const pool = parseSubnet('overlay subnet', d.subnet);
  return s.prefix === d.hostPrefix && overlaps(pool, s) && s.network >= pool.network;
}

/**
 * The host subnet a host should lease: the one it held before (preferred, recorded locally) when
 * that is still in the pool and free, else the first free one. Throws CONFLICT naming the pool when
 * every host subnet is leased. `taken` are the subnets leased by other hosts.
 */
export function chooseHostSubnet(name: string, d: Pick<OverlayDef, 'subnet' | 'hostPrefix'>, taken: readonly string[], preferred?: string): string {
  const busy = new Set(taken);
  if (preferred !== undefined && inPool(d, preferred) && !busy.has(preferred)) return preferred;
  const pool = parseSubnet('overlay subnet', d.subnet);
  const step = size({ family: pool.family, network: 0n, prefix: d.hostPrefix });
  const end = pool.network + size(pool);
  // At most |taken| + 1 steps: every subnet skipped is a taken one.
  for (let n = pool.network; n < end; n += step) {
    const cidr = formatSubnet({ family: pool.family, network: n, prefix: d.hostPrefix });
    if (!busy.has(cidr)) return cidr;
  }
  throw new CtnetError('CONFLICT', `${describePool(name, d)} is full: every host subnet is leased`,
    'a host that leaves (ctnet cluster leave) frees its subnet; or make a network with a larger --subnet or a longer --host-prefix');
}

/** The gateway of a host subnet: its first address (the bridge's address on that host). */
export function hostGateway(cidr: string): string {
  const s = parseSubnet('subnet', cidr);
  return formatAddr(s.family, s.network + 1n);
}
