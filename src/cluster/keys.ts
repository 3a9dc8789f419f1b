// What ctnet keeps in etcd, and where: the key layout and the JSON of each value, parsed and
// checked here so nothing above handles raw keys. Pure: no I/O. (docs/overlay.md describes it.)
//
//   /ctnet/networks/NAME            {subnet, hostPrefix, vni, port, internal, isolate}  an overlay network
//   /ctnet/leases/NET/10.50.3.0-24  {host, underlay, vtepMac}   a host's subnet of NET; etcd lease
//   /ctnet/hosts/NAME               {underlay, vtepMac, joined}  a member (VTEP record); etcd lease
//   /ctnet/sandboxes/HOST/NAME      {addresses, labels, networks} the directory; etcd lease
//   /ctnet/traces/HOST/ID[/reply|/done]  a cross-host trace asked of HOST (engine/trace-remote.ts
//                                   parses the values); the tracing host's short etcd lease
//   /ctnet/services/NAME            {host, network, vip, ...}    a service on an overlay network; its host's etcd lease
//
// Keys bound to an etcd lease (the host's, one per host, kept alive by its ctnetd) disappear with
// it: a host that stops renewing leaves the cluster after its TTL, subnets and all.
import { formatAddr, formatSubnet, parseAddr, parseSubnet, type Subnet } from '../model/cidr.ts';
import { parseMac } from '../model/mac.ts';
import { parseDnsLabel, parseName } from '../model/names.ts';
import { parseServiceCheck, type ServiceCheck } from '../model/service.ts';

export const PREFIX = '/ctnet/';
export const NETWORKS = `${PREFIX}networks/`;
export const LEASES = `${PREFIX}leases/`;
export const HOSTS = `${PREFIX}hosts/`;
export const SANDBOXES = `${PREFIX}sandboxes/`;
export const TRACES = `${PREFIX}traces/`;
export const SERVICES = `${PREFIX}services/`;

/** An overlay network as every host must see it. */
export interface OverlayDef {
  /** The whole overlay range, e.g. 10.50.0.0/16. */
  readonly subnet: string;
  /** The prefix length of each host's share, e.g. 24. */
  readonly hostPrefix: number;
  /** VXLAN network identifier (24 bits). */
  readonly vni: number;
  /** VXLAN UDP port. */
  readonly port: number;
  /** No egress to the world. */
  readonly internal: boolean;
  /**
   * Its sandboxes reach each other only where a policy allows it, on every host: a packet between
   * hosts passes the forward chain of both, so both must isolate (absent in older values: false).
   */
  readonly isolate: boolean;
}

/** A host's subnet of an overlay network (the value of leases/NET/SUBNET). */
export interface LeaseValue {
  readonly host: string;
  readonly underlay: string;
  readonly vtepMac: string;
}

/** A member host (the value of hosts/NAME). */
export interface HostValue {
  readonly underlay: string;
  readonly vtepMac: string;
  /** When it joined (ISO 8601). */
  readonly joined: string;
}

/** A sandbox in the cluster's directory (the value of sandboxes/HOST/NAME). */
export interface SandboxValue {
  readonly addresses: readonly string[];
  readonly labels: Readonly<Record<string, string>>;
  readonly networks: readonly string[];
  /**
   * Its aliases per overlay network (--alias), so they answer on every host's DNS; written only
   * when it has some (an entry without aliases reads as before, and older hosts ignore the key).
   */
  readonly aliases?: Readonly<Record<string, readonly string[]>>;
}

/**
 * A service on an overlay network (the value of services/NAME): what every member needs to balance
 * its VIP over the selected sandboxes of every host. Keyed by name alone, so a name is one
 * service in the whole cluster; host: the member that made it (its VIP is from that host's lease).
 */
export interface ServiceValue {
  readonly host: string;
  readonly network: string;
  readonly vip: string;
  readonly proto: 'tcp' | 'udp';
  readonly port: number;
  readonly selector: { readonly key: string; readonly value: string };
  readonly targetPort: number;
  readonly affinity: 'none' | 'client-ip';
  /** `--check`: every host probes the backends it balances over itself (absent: no check). */
  readonly check?: ServiceCheck | undefined;
}

export const networkKey = (name: string) => `${NETWORKS}${name}`;
/** 10.50.3.0/24 -> 10.50.3.0-24 (as flannel writes it: a '/' would make one more level). */
export const subnetKeyPart = (cidr: string) => cidr.replace('/', '-');
export const leasePrefix = (network: string) => `${LEASES}${network}/`;
export const leaseKey = (network: string, cidr: string) => `${leasePrefix(network)}${subnetKeyPart(cidr)}`;
export const hostKey = (name: string) => `${HOSTS}${name}`;
export const sandboxPrefix = (host: string) => `${SANDBOXES}${host}/`;
export const sandboxKey = (host: string, name: string) => `${sandboxPrefix(host)}${name}`;
/** Trace requests asked of HOST (its ctnetd watches this prefix). */
export const tracePrefix = (host: string) => `${TRACES}${host}/`;
/** One trace request (request), the asked host's answer (reply), and the tracer's "probe sent" (done). */
export const traceKey = (host: string, id: string, part: TracePart = 'request') => `${tracePrefix(host)}${id}${part === 'request' ? '' : `/${part}`}`;
export type TracePart = 'request' | 'reply' | 'done';
export const serviceKey = (name: string) => `${SERVICES}${name}`;

/** One of ctnet's keys, with the names it holds; undefined for a key outside the layout. */
export type ParsedKey =
  | { readonly kind: 'network'; readonly name: string }
  | { readonly kind: 'lease'; readonly network: string; readonly subnet: string }
  | { readonly kind: 'host'; readonly name: string }
  | { readonly kind: 'sandbox'; readonly host: string; readonly name: string }
  | { readonly kind: 'trace'; readonly host: string; readonly id: string; readonly part: TracePart }
  | { readonly kind: 'service'; readonly name: string };

const NAME = /^[a-zA-Z0-9][a-zA-Z0-9_.-]*$/;

export function parseKey(key: string): ParsedKey | undefined {
  if (!key.startsWith(PREFIX)) return undefined;
  const parts = key.slice(PREFIX.length).split('/');
  const [kind, a, b] = parts;
  // A lease's last part is a subnet (10.50.3.0-24, fd00:50:0:3::-64); every other part a name.
  if (!parts.every((p, i) => NAME.test(p) || (kind === 'leases' && i === 2 && /^[0-9a-fA-F.:]+-\d{1,3}$/.test(p)))) return undefined;
  if (kind === 'networks' && parts.length === 2) return { kind: 'network', name: a! };
  if (kind === 'hosts' && parts.length === 2) return { kind: 'host', name: a! };
  if (kind === 'services' && parts.length === 2) return { kind: 'service', name: a! };
  if (kind === 'sandboxes' && parts.length === 3) return { kind: 'sandbox', host: a!, name: b! };
  if (kind === 'traces' && parts.length === 3) return { kind: 'trace', host: a!, id: b!, part: 'request' };
  if (kind === 'traces' && parts.length === 4 && (parts[3] === 'reply' || parts[3] === 'done')) return { kind: 'trace', host: a!, id: b!, part: parts[3] };
  if (kind === 'leases' && parts.length === 3) {
    const m = /^(.+)-(\d{1,3})$/.exec(b!);
    return m ? { kind: 'lease', network: a!, subnet: `${m[1]}/${m[2]}` } : undefined;
  }
  return undefined;
}

/** A key and its value, read and checked; or why it could not be (it is then left alone, and reported). */
export type Entry =
  | { readonly kind: 'network'; readonly name: string; readonly def: OverlayDef }
  | { readonly kind: 'lease'; readonly network: string; readonly subnet: string; readonly value: LeaseValue }
  | { readonly kind: 'host'; readonly name: string; readonly value: HostValue }
  | { readonly kind: 'sandbox'; readonly host: string; readonly name: string; readonly value: SandboxValue }
  /** A cross-host trace's key: its value is engine/trace-remote.ts's to parse (short-lived, not cluster state). */
  | { readonly kind: 'trace'; readonly host: string; readonly id: string; readonly part: TracePart }
  | { readonly kind: 'service'; readonly name: string; readonly value: ServiceValue }
  | { readonly kind: 'bad'; readonly key: string; readonly reason: string };

type Json = Record<string, unknown>;

function object(text: string): Json {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch {
    throw new Error('not JSON');
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new Error('not a JSON object');
  return v as Json;
}
function str(o: Json, k: string): string {
  if (typeof o[k] !== 'string') throw new Error(`"${k}" is not a string`);
  return o[k];
}
function int(o: Json, k: string, min: number, max: number): number {
  const v = o[k];
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) throw new Error(`"${k}" is not an integer in ${min}..${max}`);
  return v;
}
function strings(o: Json, k: string): string[] {
  const v = o[k];
  if (!Array.isArray(v) || !v.every((x) => typeof x === 'string')) throw new Error(`"${k}" is not a list of strings`);
  return v;
}

/** A directory entry's aliases: network (one of its networks) -> DNS labels. */
function aliasMap(v: unknown, networks: readonly string[]): Record<string, string[]> {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new Error('"aliases" is not an object');
  const out: Record<string, string[]> = {};
  for (const [network, list] of Object.entries(v)) {
    if (!networks.includes(network)) throw new Error(`"aliases" names network ${network}, which is not one of its networks`);
    if (!Array.isArray(list) || !list.every((a) => typeof a === 'string')) throw new Error(`"aliases.${network}" is not a list of strings`);
    out[network] = list.map((a: string) => parseDnsLabel(`alias on ${network}`, a));
  }
  return out;
}

/** Checks a thrown parse error into a plain reason (the model's invalid() errors included). */
const reasonOf = (e: unknown) => (e as Error).message;

export function decodeEntry(key: string, value: string): Entry {
  const k = parseKey(key);
  if (!k) return { kind: 'bad', key, reason: 'not a key of ctnet\'s layout' };
  if (k.kind === 'trace') return k;
  try {
    const o = object(value);
    switch (k.kind) {
      case 'network':
        return { kind: 'network', name: k.name, def: checkOverlayDef({
          subnet: str(o, 'subnet'), hostPrefix: int(o, 'hostPrefix', 1, 128), vni: int(o, 'vni', 1, VNI_MAX),
          port: int(o, 'port', 1, 65535), internal: o.internal === true, isolate: o.isolate === true,
        }) };
      case 'lease': {
        const s = parseSubnet('leased subnet', k.subnet);
        if (formatSubnet(s) !== k.subnet) throw new Error(`subnet ${k.subnet} is not in canonical form`);
        return { kind: 'lease', network: k.network, subnet: k.subnet, value: {
          host: parseName('host', str(o, 'host')), underlay: canonicalAddr(str(o, 'underlay')), vtepMac: parseMac(str(o, 'vtepMac')),
        } };
      }
      case 'host':
        return { kind: 'host', name: k.name, value: { underlay: canonicalAddr(str(o, 'underlay')), vtepMac: parseMac(str(o, 'vtepMac')), joined: str(o, 'joined') } };
      case 'sandbox': {
        const labels = o.labels;
        if (typeof labels !== 'object' || labels === null || Array.isArray(labels) || !Object.values(labels).every((x) => typeof x === 'string')) {
          throw new Error('"labels" is not an object of strings');
        }
        const networks = strings(o, 'networks');
        return { kind: 'sandbox', host: k.host, name: k.name, value: {
          addresses: strings(o, 'addresses').map(canonicalAddr), labels: labels as Record<string, string>, networks,
          ...(o.aliases === undefined ? {} : { aliases: aliasMap(o.aliases, networks) }),
        } };
      }
      case 'service': {
        const sel = o.selector;
        if (typeof sel !== 'object' || sel === null || Array.isArray(sel)) throw new Error('"selector" is not an object');
        const proto = str(o, 'proto');
        if (proto !== 'tcp' && proto !== 'udp') throw new Error('"proto" is not tcp or udp');
        const affinity = str(o, 'affinity');
        if (affinity !== 'none' && affinity !== 'client-ip') throw new Error('"affinity" is not none or client-ip');
        const vip = parseAddr('vip', str(o, 'vip'));
        if (vip.family !== 4) throw new Error('"vip" is not an IPv4 address');
        return { kind: 'service', name: k.name, value: {
          host: parseName('host', str(o, 'host')), network: parseName('network', str(o, 'network')), vip: formatAddr(4, vip.n),
          proto, port: int(o, 'port', 1, 65535),
          selector: { key: str(sel as Json, 'key'), value: str(sel as Json, 'value') },
          targetPort: int(o, 'targetPort', 1, 65535), affinity,
          ...(o.check === undefined ? {} : { check: parseCheckValue(o.check) }),
        } };
      }
    }
  } catch (e) {
    return { kind: 'bad', key, reason: reasonOf(e) };
  }
}

/** The JSON written for each kind (fields in a fixed order, so equal values are equal text). */
export const encodeOverlayDef = (d: OverlayDef) => JSON.stringify({ subnet: d.subnet, hostPrefix: d.hostPrefix, vni: d.vni, port: d.port, internal: d.internal, isolate: d.isolate });
export const encodeLease = (v: LeaseValue) => JSON.stringify({ host: v.host, underlay: v.underlay, vtepMac: v.vtepMac });
export const encodeHost = (v: HostValue) => JSON.stringify({ underlay: v.underlay, vtepMac: v.vtepMac, joined: v.joined });
export const encodeSandbox = (v: SandboxValue) => JSON.stringify({
  addresses: v.addresses, labels: v.labels, networks: v.networks, ...(v.aliases && Object.keys(v.aliases).length ? { aliases: v.aliases } : {}),
});

export const encodeService = (v: ServiceValue) => JSON.stringify({
  host: v.host, network: v.network, vip: v.vip, proto: v.proto, port: v.port, selector: { key: v.selector.key, value: v.selector.value },
  targetPort: v.targetPort, affinity: v.affinity,
  ...(v.check ? { check: v.check.kind === 'tcp' ? { kind: 'tcp', intervalMs: v.check.intervalMs } : { kind: 'http', path: v.check.path, intervalMs: v.check.intervalMs } } : {}),
});

/** A service's check as written in etcd, checked as `--check` and `--check-interval` are. */
function parseCheckValue(x: unknown): ServiceCheck {
  if (typeof x !== 'object' || x === null || Array.isArray(x)) throw new Error('"check" is not an object');
  const c = x as Json;
  const kind = str(c, 'kind');
  return parseServiceCheck(kind === 'http' ? `http:${str(c, 'path')}` : kind, `${int(c, 'intervalMs', 100, 3_600_000)}ms`)!;
}

/** An address in the one form every host writes (so a comparison of text is one of addresses). */
export function canonicalAddr(text: string): string {
  const [addr, prefix] = text.split('/');
  const a = parseAddr('address', addr!);
  return formatAddr(a.family, a.n) + (prefix === undefined ? '' : `/${prefix}`);
}

export const VNI_MAX = 0xffffff;

/** Checks what a definition read from etcd (or made by parseOverlaySpec) says on its own. */
export function checkOverlayDef(d: OverlayDef): OverlayDef {
  const s: Subnet = parseSubnet('overlay subnet', d.subnet);
  const max = s.family === 4 ? 30 : 126;
  if (d.hostPrefix < s.prefix) throw new Error(`host prefix /${d.hostPrefix} is larger than the subnet ${d.subnet}`);
  if (d.hostPrefix === s.prefix) throw new Error(`host prefix /${d.hostPrefix} leaves one host subnet in ${d.subnet}; at least 2 are needed`);
  if (d.hostPrefix > max) throw new Error(`host prefix /${d.hostPrefix} leaves no room for a gateway and a sandbox (at most /${max})`);
  return { ...d, subnet: formatSubnet(s) };
}
