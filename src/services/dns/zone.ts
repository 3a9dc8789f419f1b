// The names ctnetd's DNS server answers for, per network, and the answer to one question. Pure: the
// rows come from the store (read.ts), the wire from server.ts.
//
// A query is answered for the network whose gateway it arrived on, and only from that network's
// names: NAME, NAME.NETWORK and each alias (ALIAS, ALIAS.NETWORK), A and AAAA of the sandbox's
// addresses there, PTR for those addresses; a service's NAME and NAME.NETWORK, its VIP. A name that exists without an address of the family
// asked is NODATA (NOERROR, no answer), not NXDOMAIN. Names that cannot be anyone else's are never
// forwarded: single labels, and names under any ctnet network's domain on this host (a sandbox on
// another network gets NXDOMAIN for them, exactly as for a name nobody has), and reverse names in
// the network's own subnets. Everything else goes upstream, except from an --internal network.
import { contains, parseAddr, parseSubnet, type Subnet } from '../../model/cidr.ts';
import type { NameRows } from '../../store/names.ts';

/** Answers are current at every query (the zone follows the store): nothing should cache them. */
export const TTL = 0;

export type ZoneRows = NameRows;

/** One DNS label (letters, digits, inner hyphens; underscores as sandbox names allow them). */
const LABEL = /^[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?$/;

export interface ZoneNetwork {
  readonly name: string;
  readonly internal: boolean;
  readonly forward: readonly string[];
  /** Lower-case name (NAME, ALIAS; without the network) -> its addresses by family. */
  readonly names: ReadonlyMap<string, { readonly v4: readonly string[]; readonly v6: readonly string[] }>;
  /** Address -> the name it points back to (NAME.NETWORK). */
  readonly ptr: ReadonlyMap<string, string>;
  readonly subnets: readonly Subnet[];
  /** Gateway addresses: where ctnetd listens for it. */
  readonly gateways: readonly string[];
}

export interface Zone {
  readonly serial: number;
  /** Networks with DNS on, by name. */
  readonly networks: ReadonlyMap<string, ZoneNetwork>;
  /** Lower-case names of every network on this host: their domains are never forwarded. */
  readonly domains: ReadonlySet<string>;
}

export function buildZone(rows: ZoneRows): Zone {
  const networks = new Map<string, ZoneNetwork>();
  for (const n of rows.networks) {
    if (!n.dns || !n.ready) continue;
    const subnets = rows.subnets.filter((s) => s.network === n.name);
    const names = new Map<string, { v4: string[]; v6: string[] }>();
    const ptr = new Map<string, string>();
    const bySandbox = new Map<string, string[]>();
    for (const a of rows.addresses) {
      if (a.network !== n.name) continue;
      const list = bySandbox.get(a.sandbox) ?? [];
      list.push(a.ip);
      bySandbox.set(a.sandbox, list);
      ptr.set(canonicalIp(a.ip), `${a.sandbox.toLowerCase()}.${n.name.toLowerCase()}`);
    }
    const add = (name: string, ips: readonly string[]) => {
      const entry = names.get(name) ?? { v4: [], v6: [] };
      for (const ip of ips) (ip.includes(':') ? entry.v6 : entry.v4).push(ip);
      names.set(name, entry);
    };
    for (const [sandbox, ips] of bySandbox) add(sandbox.toLowerCase(), ips);
    // An alias that is a sandbox's name here is not added to it: this host refuses such an alias
    // (and such a name), but another host's (from the directory) may say so; the sandbox's name wins.
    const sandboxNames = new Set([...bySandbox.keys()].map((s) => s.toLowerCase()));
    for (const a of rows.aliases) if (a.network === n.name && !sandboxNames.has(a.alias)) add(a.alias, bySandbox.get(a.sandbox) ?? []);
    // Services: NAME (and NAME.NETWORK) is the VIP. A sandbox's name or alias of the same name wins
    // (it was there first, or was chosen on purpose on this network); a service name that is not
    // one DNS label (service names may hold dots) has no name.
    for (const svc of rows.services) {
      const key = svc.name.toLowerCase();
      if (svc.network !== n.name || names.has(key) || !LABEL.test(key)) continue;
      // A dual-stack network's service answers AAAA with its IPv6 VIP.
      const vips = svc.vip6 ? [svc.vip, svc.vip6] : [svc.vip];
      add(key, vips);
      for (const vip of vips) {
        const back = canonicalIp(vip);
        if (!ptr.has(back)) ptr.set(back, `${key}.${n.name.toLowerCase()}`);
      }
    }
    networks.set(n.name, {
      name: n.name, internal: n.internal, forward: n.forward, names, ptr,
      subnets: subnets.map((s) => parseSubnet('subnet', s.cidr)), gateways: subnets.map((s) => s.gateway),
    });
  }
  return { serial: rows.serial, networks, domains: new Set(rows.networks.map((n) => n.name.toLowerCase())) };
}

export type RecordType = 'A' | 'AAAA' | 'PTR' | 'SOA' | 'ANY' | string;

export interface Answer {
  readonly name: string;
  readonly type: 'A' | 'AAAA' | 'PTR';
  readonly data: string;
}

export type Decision =
  | {
    readonly kind: 'local'; readonly rcode: 'NOERROR' | 'NXDOMAIN'; readonly answers: readonly Answer[];
    /** The zone whose SOA goes into a negative answer's authority section (the network's domain). */
    readonly soa?: string | undefined;
  }
  | { readonly kind: 'forward'; readonly upstreams: readonly string[] }
  /** Not ours and not to be forwarded (an --internal network). */
  | { readonly kind: 'refused' };

/**
 * What to do with one question on network n. rotate: where round robin starts (a counter), so
 * sandboxes sharing an alias take turns being first.
 */
export function decide(zone: Zone, n: ZoneNetwork, qname: string, qtype: RecordType, rotate = 0): Decision {
  const name = qname.toLowerCase().replace(/\.$/, '');
  const domain = n.name.toLowerCase();
  const local = (key: string): Decision | undefined => {
    const entry = n.names.get(key);
    if (!entry) return undefined;
    const answers: Answer[] = [];
    if (qtype === 'A' || qtype === 'ANY') answers.push(...turn(entry.v4, rotate).map((ip) => ({ name: qname, type: 'A' as const, data: ip })));
    if (qtype === 'AAAA' || qtype === 'ANY') answers.push(...turn(entry.v6, rotate).map((ip) => ({ name: qname, type: 'AAAA' as const, data: ip })));
    return { kind: 'local', rcode: 'NOERROR', answers, soa: answers.length ? undefined : domain };
  };
  const nx: Decision = { kind: 'local', rcode: 'NXDOMAIN', answers: [], soa: domain };
  if (name === domain) return { kind: 'local', rcode: 'NOERROR', answers: [], soa: domain };
  if (name.endsWith(`.${domain}`)) return local(name.slice(0, -domain.length - 1)) ?? nx;
  const reverse = reverseIp(name);
  if (reverse) {
    const target = n.ptr.get(reverse.ip);
    if (target) return qtype === 'PTR' || qtype === 'ANY'
      ? { kind: 'local', rcode: 'NOERROR', answers: [{ name: qname, type: 'PTR', data: target }] }
      : { kind: 'local', rcode: 'NOERROR', answers: [], soa: domain };
    if (n.subnets.some((s) => contains(s, reverse.family, reverse.n))) return nx;
  } else {
    const own = local(name);
    if (own) return own;
    // Single labels and other networks' names: nobody upstream has them, and they must not leak there.
    if (!name.includes('.')) return { ...nx, soa: undefined };
    for (const d of zone.domains) if (name === d || name.endsWith(`.${d}`)) return { ...nx, soa: undefined };
  }
  if (n.internal) return { kind: 'refused' };
  return { kind: 'forward', upstreams: n.forward };
}

function turn<T>(list: readonly T[], by: number): T[] {
  if (list.length < 2) return [...list];
  const k = by % list.length;
  return [...list.slice(k), ...list.slice(0, k)];
}

/** The canonical text of an address (as the store and PTR keys hold it). */
function canonicalIp(ip: string): string {
  const a = parseAddr('address', ip);
  return formatKey(a.family, a.n);
}
const formatKey = (family: 4 | 6, n: bigint) => `${family}/${n.toString(16)}`;

/** The address a reverse name (in-addr.arpa, ip6.arpa) stands for, when it names a whole one. */
export function reverseIp(name: string): { ip: string; family: 4 | 6; n: bigint } | undefined {
  let m = /^((?:\d{1,3}\.){3}\d{1,3})\.in-addr\.arpa$/.exec(name);
  if (m) {
    const parts = m[1]!.split('.').reverse().map(Number);
    if (parts.some((p) => p > 255)) return undefined;
    const n = parts.reduce((acc, p) => (acc << 8n) | BigInt(p), 0n);
    return { ip: formatKey(4, n), family: 4, n };
  }
  m = /^((?:[0-9a-f]\.){32})ip6\.arpa$/.exec(name);
  if (m) {
    const n = BigInt(`0x${m[1]!.split('.').filter(Boolean).reverse().join('')}`);
    return { ip: formatKey(6, n), family: 6, n };
  }
  return undefined;
}
