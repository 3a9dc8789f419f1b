// Network policy, pure: selectors and rules parsed from user input, resolved against the current
// networks and sandboxes into address ranges, compiled into disjoint boxes for nftables interval
// sets, and evaluated (for `policy check` and to find the flows a change must cut).
import ipaddr from 'ipaddr.js';
import { invalid } from '../errors.ts';
import { addrToBigint, formatAddr, type Family } from './cidr.ts';
import { parseName } from './names.ts';

export type Selector =
  | { readonly kind: 'sandbox'; readonly name: string }
  | { readonly kind: 'net'; readonly name: string }
  | { readonly kind: 'label'; readonly key: string; readonly value: string }
  | { readonly kind: 'cidr'; readonly family: Family; readonly start: bigint; readonly end: bigint; readonly text: string }
  | { readonly kind: 'world' }
  /** The host itself (any of its addresses, the gateways included): only as a destination. */
  | { readonly kind: 'host' };

export type Action = 'allow' | 'deny';
export const POLICY_PROTOCOLS = ['tcp', 'udp', 'sctp', 'icmp'] as const;
export type PolicyProto = (typeof POLICY_PROTOCOLS)[number];

/** Which traffic a rule covers: one protocol and a port range (ICMP: every message). */
export interface PortFilter {
  readonly proto: PolicyProto;
  readonly start: number;
  readonly end: number;
}

export interface PolicyRule {
  readonly id: number;
  readonly name: string;
  readonly action: Action;
  readonly from: Selector;
  readonly to: Selector;
  /** undefined: every protocol and port. */
  readonly port: PortFilter | undefined;
}

const LABEL_PART = /^[A-Za-z0-9]([A-Za-z0-9_.\/-]{0,62})?$/;
const LABEL_VALUE = /^[A-Za-z0-9_.\/-]{0,63}$/;

/** KEY=VALUE of --label (and label: selectors). */
export function parseLabel(what: string, text: string): { key: string; value: string } {
  const eq = text.indexOf('=');
  if (eq < 0) throw invalid(`${what} ${JSON.stringify(text)} has no "="`, 'write KEY=VALUE, e.g. tier=web');
  const key = text.slice(0, eq);
  const value = text.slice(eq + 1);
  if (!LABEL_PART.test(key)) throw invalid(`${what} key ${JSON.stringify(key)} is not allowed`, 'use up to 63 letters, digits, "_", ".", "/" or "-", starting with a letter or digit');
  if (!LABEL_VALUE.test(value)) throw invalid(`${what} value ${JSON.stringify(value)} is not allowed`, 'use up to 63 letters, digits, "_", ".", "/" or "-"');
  return { key, value };
}

const bitsOf = (f: Family) => (f === 4 ? 32 : 128);
const FULL = (f: Family): [bigint, bigint] => [0n, (1n << BigInt(bitsOf(f))) - 1n];

const OCTET = '(25[0-5]|2[0-4]\\d|1\\d\\d|[1-9]?\\d)';
const PLAIN_IPV4 = new RegExp(`^${OCTET}\\.${OCTET}\\.${OCTET}\\.${OCTET}(?:/(3[0-2]|[12]?\\d))?$`);

/** An address or a CIDR (any prefix length, host bits clear). */
function parseCidrSelector(what: string, text: string): Selector {
  let addr: ipaddr.IPv4 | ipaddr.IPv6;
  let prefix: number;
  // Plain dotted IPv4 (the common case, and a rules file may hold thousands): plain numbers, no
  // ipaddr.js objects and one BigInt per bound (this parse was a tenth of a 10,000-rule apply).
  const m = PLAIN_IPV4.exec(text);
  if (m) {
    const v = ((Number(m[1]) << 24) | (Number(m[2]) << 16) | (Number(m[3]) << 8) | Number(m[4])) >>> 0;
    prefix = m[5] === undefined ? 32 : Number(m[5]);
    const size = 2 ** (32 - prefix);
    const start = v - (v % size);
    if (start !== v) throw invalid(`${what} ${text} has host bits set`, `did you mean ${formatAddr(4, BigInt(start))}/${prefix}?`);
    const canonical = m[5] === undefined ? `${text}/32` : text;
    return { kind: 'cidr', family: 4, start: BigInt(start), end: BigInt(start + size - 1), text: canonical };
  } else try {
    if (text.includes('/')) [addr, prefix] = ipaddr.parseCIDR(text);
    else {
      addr = ipaddr.parse(text);
      prefix = addr.kind() === 'ipv4' ? 32 : 128;
    }
  } catch {
    throw invalid(`${what} ${JSON.stringify(text)} is not a sandbox name, net:NAME, label:KEY=VALUE, a CIDR, world or host`,
      'e.g. web1, net:frontend, label:tier=api, 10.0.0.0/8, world, host');
  }
  const family: Family = addr.kind() === 'ipv4' ? 4 : 6;
  const host = BigInt(bitsOf(family) - prefix);
  const n = addrToBigint(addr);
  const start = (n >> host) << host;
  if (start !== n) throw invalid(`${what} ${text} has host bits set`, `did you mean ${formatAddr(family, start)}/${prefix}?`);
  return { kind: 'cidr', family, start, end: start + (1n << host) - 1n, text: `${formatAddr(family, start)}/${prefix}` };
}

export function parseSelector(what: string, text: string): Selector {
  if (text === 'world') return { kind: 'world' };
  if (text === 'host') return { kind: 'host' };
  if (text.startsWith('net:')) return { kind: 'net', name: parseName(`${what} network`, text.slice(4)) };
  if (text.startsWith('label:')) return { kind: 'label', ...parseLabel(`${what} label`, text.slice(6)) };
  if (/^[0-9]/.test(text) && (text.includes('.') || text.includes('/')) || text.includes(':')) return parseCidrSelector(what, text);
  try {
    return { kind: 'sandbox', name: parseName(`${what} sandbox`, text) };
  } catch {
    throw invalid(`${what} ${JSON.stringify(text)} is not a sandbox name, net:NAME, label:KEY=VALUE, a CIDR, world or host`,
      'e.g. web1, net:frontend, label:tier=api, 10.0.0.0/8, world, host');
  }
}

/**
 * A rule's selectors as a pair: `host` only as the destination, from sandboxes. The host's own
 * connections leave through its output path, which ctnet does not filter, and the world's reach the
 * host on its uplink, which is not ctnet's to judge: such a rule would never match anything.
 */
export function checkRuleSelectors(from: Selector, to: Selector): void {
  if (from.kind === 'host') {
    throw invalid('--from host: ctnet does not filter the host\'s own connections (the host reaches every sandbox)',
      'use host as a destination: --to host, to say what sandboxes may reach on the host');
  }
  if (to.kind === 'host' && from.kind === 'world') {
    throw invalid('--from world --to host: ctnet judges only what sandboxes send to the host, never the world\'s traffic to it',
      'use the host\'s own firewall for that, or name sandboxes with --from (net:NAME, label:KEY=VALUE, a sandbox, a CIDR)');
  }
}

export function formatSelector(s: Selector): string {
  switch (s.kind) {
    case 'sandbox': return s.name;
    case 'net': return `net:${s.name}`;
    case 'label': return `label:${s.key}=${s.value}`;
    case 'cidr': return s.text;
    case 'world': return 'world';
    case 'host': return 'host';
  }
}

/** --port PORT[-END][/tcp|/udp|/sctp], or icmp (/icmp): what a rule covers. */
export function parsePortFilter(text: string): PortFilter {
  const bad = (why: string) => invalid(`--port ${JSON.stringify(text)}: ${why}`, 'write PORT[-END][/tcp|/udp|/sctp] or icmp, e.g. 3306, 8000-8080/tcp, 53/udp');
  const [ports, proto = 'tcp', ...extra] = text.replace(/^\//, '').split('/');
  if (extra.length) throw bad('too many "/"');
  if (ports === 'icmp' && text.split('/').length <= 2) return { proto: 'icmp', start: 0, end: 65535 };
  if (!(POLICY_PROTOCOLS as readonly string[]).includes(proto.toLowerCase())) throw bad(`unknown protocol ${JSON.stringify(proto)}`);
  const p = proto.toLowerCase() as PolicyProto;
  if (p === 'icmp') {
    if (ports !== '') throw bad('ICMP has no ports');
    return { proto: 'icmp', start: 0, end: 65535 };
  }
  const m = /^(\d{1,5})(?:-(\d{1,5}))?$/.exec(ports ?? '');
  if (!m) throw bad('not a port or a range');
  const start = Number(m[1]);
  const end = m[2] === undefined ? start : Number(m[2]);
  if (start < 1 || end > 65535) throw bad('ports are whole numbers from 1 to 65535');
  if (end < start) throw bad('the range ends before it starts');
  return { proto: p, start, end };
}

export function formatPortFilter(p: PortFilter | undefined): string {
  if (!p) return 'any';
  if (p.proto === 'icmp') return 'icmp';
  return `${p.start === p.end ? p.start : `${p.start}-${p.end}`}/${p.proto}`;
}

// ---- the current world, as plain data ----

export interface PolicyNetwork {
  readonly name: string;
  readonly internal: boolean;
  readonly isolate: boolean;
  /** network --host-access: its sandboxes reach every service of the host. */
  readonly hostAccess: boolean;
  readonly subnets: readonly { readonly family: Family; readonly start: bigint; readonly end: bigint }[];
}
export interface PolicySandbox {
  readonly name: string;
  readonly labels: Readonly<Record<string, string>>;
  readonly addresses: readonly { readonly family: Family; readonly n: bigint; readonly network: string }[];
}
export interface PolicyWorld {
  readonly networks: readonly PolicyNetwork[];
  readonly sandboxes: readonly PolicySandbox[];
}

export type Range = readonly [bigint, bigint];

/** The address ranges of one family a selector stands for now. */
export function resolve(sel: Selector, w: PolicyWorld, family: Family): Range[] {
  switch (sel.kind) {
    case 'sandbox':
      return (w.sandboxes.find((s) => s.name === sel.name)?.addresses ?? []).filter((a) => a.family === family).map((a) => [a.n, a.n]);
    case 'label':
      return w.sandboxes.filter((s) => s.labels[sel.key] === sel.value)
        .flatMap((s) => s.addresses.filter((a) => a.family === family).map((a): Range => [a.n, a.n]));
    case 'net':
      return (w.networks.find((n) => n.name === sel.name)?.subnets ?? []).filter((s) => s.family === family).map((s) => [s.start, s.end]);
    case 'cidr':
      return sel.family === family ? [[sel.start, sel.end]] : [];
    case 'world':
      return complement(w.networks.flatMap((n) => n.subnets.filter((s) => s.family === family).map((s): Range => [s.start, s.end])), family);
    case 'host':
      return []; // not an address range: the host's rules go to their own sets (compile's 'host' target)
  }
}

/** Everything of a family outside the given ranges. */
function complement(ranges: Range[], family: Family): Range[] {
  const sorted = [...ranges].sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
  const out: Range[] = [];
  let next = 0n;
  for (const [s, e] of sorted) {
    if (s > next) out.push([next, s - 1n]);
    if (e + 1n > next) next = e + 1n;
  }
  const max = FULL(family)[1];
  if (next <= max) out.push([next, max]);
  return out;
}

// ---- boxes: what an nftables element of (saddr . daddr . l4proto . dport) can express ----

/** [src, dst, protocol, port], each an inclusive range. */
export type Box = readonly [Range, Range, Range, Range];

export function protoRange(p: PortFilter | undefined, family: Family): [Range, Range] {
  if (!p) return [[0n, 255n], [0n, 65535n]];
  const num = { tcp: 6n, udp: 17n, sctp: 132n, icmp: family === 4 ? 1n : 58n }[p.proto];
  return [[num, num], [BigInt(p.start), BigInt(p.end)]];
}

/** Where a rule's boxes go: the forward path (between addresses) or the host's input path. */
export type PolicyTarget = 'forward' | 'host';

/** The only destination of a host box: its sets have no destination field. */
const HOST_DST: Range = [0n, 0n];

/** A rule's boxes in one set (its selectors resolved now), before overlaps are taken out. */
export function ruleBoxes(r: PolicyRule, w: PolicyWorld, family: Family, target: PolicyTarget): Box[] {
  if ((r.to.kind === 'host') !== (target === 'host')) return [];
  const from = resolve(r.from, w, family);
  const to = target === 'host' ? [HOST_DST] : resolve(r.to, w, family);
  const [proto, port] = protoRange(r.port, family);
  return from.flatMap((s) => to.map((d): Box => [s, d, proto, port]));
}

/**
 * The boxes of ruleBoxes whose source or destination range holds one of `points` (addresses of
 * this family), without making the others: after one sandbox changed, only boxes through its
 * addresses can differ (sandbox and label selectors gain or lose exactly its points), so a rule
 * of 55,000 boxes is compared on the few hundred through them.
 */
export function ruleBoxesTouching(r: PolicyRule, w: PolicyWorld, family: Family, target: PolicyTarget, points: readonly bigint[]): Box[] {
  if ((r.to.kind === 'host') !== (target === 'host') || points.length === 0) return [];
  const holds = (x: Range) => points.some((n) => x[0] <= n && n <= x[1]);
  const from = resolve(r.from, w, family);
  const to = target === 'host' ? [HOST_DST] : resolve(r.to, w, family);
  const [proto, port] = protoRange(r.port, family);
  const toHit = to.filter(holds);
  // Sources through a point pair with every destination; the others only with destinations through one.
  return from.flatMap((s) => (holds(s) ? to : toHit).map((d): Box => [s, d, proto, port]));
}

export const intersects = (a: Box, b: Box): boolean => a.every((r, i) => r[0] <= b[i]![1] && b[i]![0] <= r[1]);

/** The part two intersecting boxes share. */
export const intersection = (a: Box, b: Box): Box =>
  a.map((r, i) => [r[0] > b[i]![0] ? r[0] : b[i]![0], r[1] < b[i]![1] ? r[1] : b[i]![1]] as Range) as unknown as Box;

/** b minus a (which intersect): at most two pieces per dimension, disjoint from a and each other. */
export function subtract(b: Box, a: Box): Box[] {
  const pieces: Box[] = [];
  const cur = b.map((r) => [r[0], r[1]] as [bigint, bigint]);
  for (let i = 0; i < 4; i++) {
    const [lo, hi] = cur[i]!;
    if (lo < a[i]![0]) {
      const p = cur.map((r) => [r[0], r[1]] as Range);
      p[i] = [lo, a[i]![0] - 1n];
      pieces.push(p as unknown as Box);
      cur[i]![0] = a[i]![0];
    }
    if (hi > a[i]![1]) {
      const p = cur.map((r) => [r[0], r[1]] as Range);
      p[i] = [a[i]![1] + 1n, hi];
      pieces.push(p as unknown as Box);
      cur[i]![1] = a[i]![1];
    }
  }
  return pieces;
}

export interface CompiledBox {
  readonly box: Box;
  /** The rule that claimed this part first (overlaps count for the oldest rule). */
  readonly rule: number;
}

/**
 * The rules of one action as disjoint boxes (the kernel refuses overlapping elements in a
 * concatenated interval set), in rule order so each part belongs to the oldest rule covering it.
 * With raw, every rule's boxes before overlaps are taken out are pushed there too.
 */
export function compile(rules: readonly PolicyRule[], action: Action, w: PolicyWorld, family: Family, target: PolicyTarget = 'forward',
  raw?: CompiledBox[]): CompiledBox[] {
  const out: CompiledBox[] = [];
  const index = new BoxIndex();
  for (const r of rules.filter((x) => x.action === action)) {
    for (const box of ruleBoxes(r, w, family, target)) {
      raw?.push({ box, rule: r.id }); // the incremental compiler's index of what each rule covers (model/policy-inc.ts)
      let parts: Box[] = [box];
      for (const existing of index.candidates(box)) {
        parts = parts.flatMap((p) => (intersects(p, existing) ? subtract(p, existing) : [p]));
        if (parts.length === 0) break;
      }
      for (const p of parts) {
        out.push({ box: p, rule: r.id });
        index.add(p);
      }
    }
  }
  return out;
}

/**
 * Finds the boxes whose source range may meet a box's, so compiling n rules is not n^2 box tests.
 * Narrow source ranges (most: sandboxes, small CIDRs) sit in an array sorted by start, searched by
 * bisection; wide ones (networks, world) are few and always checked.
 */
export class BoxIndex {
  static readonly WIDTH = 1n << 16n;
  readonly #wide: Box[] = [];
  readonly #narrow: Box[] = [];
  /** The widest narrow source range so far: how far before s a meeting box may start. */
  #reach = 0n;

  add(b: Box): void {
    const width = b[0][1] - b[0][0];
    if (width >= BoxIndex.WIDTH) return void this.#wide.push(b);
    if (width > this.#reach) this.#reach = width;
    this.#narrow.splice(this.#lowerBound(b[0][0]), 0, b);
  }

  candidates(b: Box): Box[] {
    const [s, e] = b[0];
    const out = [...this.#wide];
    // A narrow box meeting [s, e] starts in [s - reach, e].
    for (let i = this.#lowerBound(s - this.#reach); i < this.#narrow.length && this.#narrow[i]![0][0] <= e; i++) out.push(this.#narrow[i]!);
    return out;
  }

  #lowerBound(start: bigint): number {
    let lo = 0;
    let hi = this.#narrow.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (this.#narrow[mid]![0][0] < start) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }
}

/** nft's text for a box: ADDR[-ADDR] . ADDR[-ADDR] . P[-P] . PORT[-PORT]. */
export function boxText(b: Box, family: Family): string {
  const addr = ([s, e]: Range) => (s === e ? formatAddr(family, s) : `${formatAddr(family, s)}-${formatAddr(family, e)}`);
  const num = ([s, e]: Range) => (s === e ? `${s}` : `${s}-${e}`);
  return `${addr(b[0])} . ${addr(b[1])} . ${num(b[2])} . ${num(b[3])}`;
}

/** nft's text for a host box (source . protocol . port: the host sets have no destination). */
export function hostBoxText(b: Box, family: Family): string {
  const [src, , proto, port] = boxText(b, family).split(' . ');
  return `${src} . ${proto} . ${port}`;
}

// ---- evaluation ----

export interface Packet {
  readonly family: Family;
  readonly src: bigint;
  readonly dst: bigint;
  readonly proto: number;
  readonly port: number;
  /** Arrived through a published port (DNAT): the default for it is to pass. */
  readonly published?: boolean;
  /** Addressed to the host itself (its input path; dst is then one of the host's addresses). */
  readonly toHost?: boolean;
}

export interface Decision {
  readonly allowed: boolean;
  /** The rule (by name) or the default that decided. */
  readonly by: string;
}

const inside = (r: Range, n: bigint) => r[0] <= n && n <= r[1];

function matches(r: PolicyRule, w: PolicyWorld, p: Packet): boolean {
  if ((r.to.kind === 'host') !== (p.toHost === true)) return false;
  const [proto, port] = protoRange(r.port, p.family);
  return inside(proto, BigInt(p.proto)) && inside(port, BigInt(p.port)) &&
    resolve(r.from, w, p.family).some((x) => inside(x, p.src)) && (p.toHost || resolve(r.to, w, p.family).some((x) => inside(x, p.dst)));
}

const ICMP = new Set([1, 58]);

/** What ctnet's forward chain does with a new connection (same order: deny, allow, defaults). */
export function decide(rules: readonly PolicyRule[], w: PolicyWorld, p: Packet): Decision {
  const deny = rules.find((r) => r.action === 'deny' && matches(r, w, p));
  if (deny) return { allowed: false, by: `rule ${deny.name}` };
  const allow = rules.find((r) => r.action === 'allow' && matches(r, w, p));
  if (allow) return { allowed: true, by: `rule ${allow.name}` };
  const netOf = (n: bigint) => w.networks.find((x) => x.subnets.some((s) => s.family === p.family && inside([s.start, s.end], n)));
  if (p.toHost) return decideHost(netOf(p.src), p);
  const src = netOf(p.src);
  const dst = netOf(p.dst);
  if (src && dst && src.name === dst.name && !src.isolate) return { allowed: true, by: `default: same network (${src.name})` };
  if (src?.internal) return { allowed: false, by: `default: network ${src.name} is --internal` };
  if (dst?.internal) return { allowed: false, by: `default: network ${dst.name} is --internal` };
  if (p.published) return { allowed: true, by: 'default: published port' };
  if (src && dst && src.name === dst.name) return { allowed: false, by: `default: network ${src.name} is --isolate` };
  if (src && dst) return { allowed: false, by: `default: networks ${src.name} and ${dst.name} are isolated from each other` };
  if (src) return { allowed: true, by: `default: egress from ${src.name}` };
  if (dst) return { allowed: false, by: 'default: from outside, only published ports reach sandboxes' };
  return { allowed: true, by: 'default: not ctnet traffic' };
}

/** The defaults of ctnet's input chain, for a new connection to the host no rule decided. */
function decideHost(src: PolicyNetwork | undefined, p: Packet): Decision {
  if (!src) return { allowed: true, by: 'default: not from a sandbox' };
  if (src.internal) return { allowed: false, by: `default: network ${src.name} is --internal (nothing on the host)` };
  if (ICMP.has(p.proto)) return { allowed: true, by: 'default: ping and ICMP reach the host' };
  if (src.hostAccess) return { allowed: true, by: `default: network ${src.name} has --host-access` };
  return { allowed: false, by: `default: the host is closed to sandboxes of ${src.name} (allow a port with --to host, or make the network with --host-access)` };
}

/** conntrack's protocol names as numbers. */
export const PROTO_NUMBERS: Readonly<Record<string, number>> = { tcp: 6, udp: 17, sctp: 132, icmp: 1, icmpv6: 58, 'ipv6-icmp': 58 };
