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
  /** `--egress-ip`: host addresses its egress leaves from, at most one per family (engine/egress.ts). */
  readonly egress?: readonly { readonly family: 4 | 6; readonly ip: string }[] | undefined;
  /** A macvlan or ipvlan network: the parent interface, mode, and whether the host gets a shim. */
  readonly lower?: LowerSpec | undefined;
}

export interface LowerSpec {
  readonly kind: 'macvlan' | 'ipvlan';
  readonly parent: string;
  readonly mode: string;
  readonly hostShim: boolean;
}

const LOWER_MODES = { macvlan: ['bridge', 'private', 'vepa'], ipvlan: ['l2', 'l3'] } as const;

/**
 * --driver macvlan|ipvlan with --parent, --mode and --host-shim; undefined for the other drivers
 * (which must not get these flags). Flags that need the host on the path (--bridge, --internal,
 * --isolate, --host-access) are refused: a macvlan sandbox's packets never pass the host's netfilter.
 */
export function parseLowerSpec(raw: { driver: string; parent?: string; mode?: string; hostShim?: boolean; bridge?: string; internal?: boolean; isolate?: boolean; hostAccess?: boolean }): LowerSpec | undefined {
  if (raw.driver !== 'macvlan' && raw.driver !== 'ipvlan') {
    for (const [flag, v] of [['--parent', raw.parent], ['--mode', raw.mode], ['--host-shim', raw.hostShim]] as const) {
      if (v !== undefined) throw invalid(`${flag} is for macvlan and ipvlan networks`, 'add --driver macvlan (or ipvlan), or leave it out');
    }
    return undefined;
  }
  if (raw.parent === undefined) throw invalid(`a ${raw.driver} network needs --parent`, 'name the host interface whose segment the sandboxes join, e.g. --parent eth0');
  const parent = parseIfname('--parent', raw.parent);
  for (const [flag, v] of [['--bridge', raw.bridge], ['--internal', raw.internal], ['--isolate', raw.isolate], ['--host-access', raw.hostAccess]] as const) {
    if (v) throw invalid(`${flag} does not apply to a ${raw.driver} network`, `its sandboxes sit on ${parent}'s segment: their traffic never passes this host's bridge or firewall`);
  }
  const modes: readonly string[] = LOWER_MODES[raw.driver];
  const mode = raw.mode ?? modes[0]!;
  if (!modes.includes(mode)) throw invalid(`--mode ${JSON.stringify(mode)} is not a ${raw.driver} mode`, `use ${modes.join(', ')}`);
  return { kind: raw.driver, parent, mode, hostShim: raw.hostShim ?? false };
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
  driver?: string;
  parent?: string;
  mode?: string;
  hostShim?: boolean;
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
  const lower = parseLowerSpec({ ...raw, driver: raw.driver ?? 'bridge' });
  const subnets = (raw.subnet ?? []).map((s) => parseSubnet('--subnet', s));
  if (subnets.length === 0) throw invalid('a network needs at least one --subnet', 'e.g. --subnet 10.88.0.0/24');
  if (lower && (subnets.length !== 1 || subnets[0]!.family !== 4)) {
    throw invalid(`a ${lower.kind} network takes one IPv4 --subnet`, 'IPv6 on macvlan/ipvlan is not done yet: give the segment\'s IPv4 subnet');
  }
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
    ...(lower ? { lower } : {}),
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
  /** `--default-route NET`: the network (one of networks) that carries the default routes. */
  readonly defaultRoute?: string | undefined;
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

export function parseAttachSpec(raw: { network?: string[]; ip?: string[]; mac?: string; defaultRoute?: string; alias?: string[] }): AttachSpec {
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
  const defaultRoute = raw.defaultRoute === undefined ? undefined : parseName('network', raw.defaultRoute);
  if (defaultRoute !== undefined && !networks.includes(defaultRoute)) {
    throw invalid(`--default-route ${defaultRoute} is not one of the --network options`, `add --network ${defaultRoute}, or choose one of ${networks.join(', ')}`);
  }
  return { networks, ips, mac: raw.mac === undefined ? undefined : parseMac(raw.mac), defaultRoute, aliases: parseAliases(raw.alias) };
}
