// User requests, parsed from raw strings into typed, checked values before anything changes.
import { invalid } from '../errors.ts';
import { contains, formatAddr, formatSubnet, hostRange, overlaps, parseAddr, parseSubnet, type Family, type Subnet } from './cidr.ts';
import { parseMac } from './mac.ts';
import { parseDnsLabel, parseIfname, parseName } from './names.ts';

export interface SubnetSpec {
  readonly subnet: Subnet;
  readonly cidr: string;
  readonly gateway: string;
}

export interface NetworkSpec {
  readonly name: string;
  readonly subnets: readonly SubnetSpec[];
  readonly bridge: string | undefined;
  readonly internal: boolean;
  readonly isolate: boolean;
  /** Sandboxes may reach any service of the host (else only ICMP and published ports). */
  readonly hostAccess: boolean;
  readonly mtu: number | undefined;
  /** ctnetd answers DNS on the network's gateways (default on). */
  readonly dns: boolean;
  /** Upstreams for names that are not the network's (empty: the host's resolvers). */
  readonly dnsForward: readonly string[];
}

export interface RawNetwork {
  name: string;
  subnet?: string[];
  gateway?: string[];
  bridge?: string;
  internal?: boolean;
  isolate?: boolean;
  hostAccess?: boolean;
  mtu?: string;
  /** 'on' (default) or 'off'. */
  dns?: string;
  /** IP[,IP...] */
  dnsForward?: string;
}

/** --dns and --dns-forward: DNS on unless 'off'; upstream addresses, never with --internal or --dns off. */
export function parseDnsOptions(raw: { dns?: string | undefined; dnsForward?: string | undefined; internal?: boolean | undefined }): { dns: boolean; dnsForward: string[] } {
  if (raw.dns !== undefined && raw.dns !== 'on' && raw.dns !== 'off') throw invalid(`--dns ${JSON.stringify(raw.dns)} is neither on nor off`, 'use --dns off to turn DNS off');
  const dns = raw.dns !== 'off';
  if (raw.dnsForward === undefined) return { dns, dnsForward: [] };
  if (!dns) throw invalid('--dns-forward needs DNS on', 'leave out --dns off, or --dns-forward');
  if (raw.internal) throw invalid('--dns-forward cannot be used with --internal', 'an --internal network answers only its own names and forwards nothing');
  const dnsForward = raw.dnsForward.split(',').map((t) => {
    const a = parseAddr('--dns-forward', t.trim());
    return formatAddr(a.family, a.n);
  });
  const dup = dnsForward.find((a, i) => dnsForward.indexOf(a) !== i);
  if (dup) throw invalid(`--dns-forward ${dup} is given twice`);
  return { dns, dnsForward };
}

export function parseNetworkSpec(raw: RawNetwork): NetworkSpec {
  if (raw.internal && raw.hostAccess) {
    throw invalid('--internal and --host-access cannot be used together', 'an --internal network reaches nothing outside it, the host included');
  }
  const name = parseName('network', raw.name);
  const subnets = (raw.subnet ?? []).map((s) => parseSubnet('--subnet', s));
  if (subnets.length === 0) throw invalid('a network needs at least one --subnet', 'e.g. --subnet 10.88.0.0/24');
  for (const f of [4, 6] as const) {
    if (subnets.filter((s) => s.family === f).length > 1) {
      throw invalid(`more than one IPv${f} --subnet`, 'give at most one IPv4 and one IPv6 subnet per network');
    }
  }
  for (const [i, a] of subnets.entries()) {
    for (const b of subnets.slice(i + 1)) if (overlaps(a, b)) throw invalid(`--subnet ${formatSubnet(a)} overlaps ${formatSubnet(b)}`);
  }
  const gateways = new Map<Subnet, bigint>();
  for (const g of raw.gateway ?? []) {
    const addr = parseAddr('--gateway', g);
    const s = subnets.find((x) => contains(x, addr.family, addr.n));
    if (!s) throw invalid(`--gateway ${g} is outside every --subnet`, `choose an address inside ${subnets.map(formatSubnet).join(' or ')}`);
    const { first, last } = hostRange(s);
    if (addr.n < first || addr.n > last) throw invalid(`--gateway ${g} is the network or broadcast address of ${formatSubnet(s)}`);
    if (gateways.has(s)) throw invalid(`two --gateway addresses for ${formatSubnet(s)}`);
    gateways.set(s, addr.n);
  }
  let mtu: number | undefined;
  if (raw.mtu !== undefined) {
    mtu = Number(raw.mtu);
    if (!/^\d+$/.test(raw.mtu) || mtu < 1280 || mtu > 65535) {
      throw invalid(`--mtu ${JSON.stringify(raw.mtu)} is not an MTU ctnet accepts`, 'use a whole number from 1280 (IPv6 minimum) to 65535');
    }
  }
  return {
    name,
    subnets: subnets.map((s) => ({
      subnet: s,
      cidr: formatSubnet(s),
      gateway: formatAddr(s.family, gateways.get(s) ?? hostRange(s).first),
    })),
    bridge: raw.bridge === undefined ? undefined : parseIfname('--bridge', raw.bridge),
    internal: raw.internal ?? false,
    isolate: raw.isolate ?? false,
    hostAccess: raw.hostAccess ?? false,
    mtu,
    ...parseDnsOptions(raw),
  };
}

export interface IpRequest {
  readonly family: Family;
  readonly n: bigint;
  readonly text: string;
}

export interface AttachSpec {
  readonly networks: readonly string[];
  readonly ips: readonly IpRequest[];
  readonly mac: string | undefined;
  /** More DNS names of the sandbox, on each network it joins. */
  readonly aliases: readonly string[];
}

/** --alias values: DNS labels, each once. */
export function parseAliases(raw: readonly string[] | undefined): string[] {
  const aliases = (raw ?? []).map((a) => parseDnsLabel('--alias', a));
  const dup = aliases.find((a, i) => aliases.indexOf(a) !== i);
  if (dup) throw invalid(`--alias ${dup} is given twice`);
  return aliases;
}

export function parseAttachSpec(raw: { network?: string[]; ip?: string[]; mac?: string; alias?: string[] }): AttachSpec {
  const networks = (raw.network ?? []).map((n) => parseName('network', n));
  if (networks.length === 0) throw invalid('no --network given', 'name the network to join, e.g. --network web');
  const dup = networks.find((n, i) => networks.indexOf(n) !== i);
  if (dup) throw invalid(`--network ${dup} is given twice`);
  const ips = (raw.ip ?? []).map((t) => {
    const a = parseAddr('--ip', t);
    return { ...a, text: formatAddr(a.family, a.n) };
  });
  const dupIp = ips.find((a, i) => ips.findIndex((b) => b.text === a.text) !== i);
  if (dupIp) throw invalid(`--ip ${dupIp.text} is given twice`);
  return { networks, ips, mac: raw.mac === undefined ? undefined : parseMac(raw.mac), aliases: parseAliases(raw.alias) };
}
