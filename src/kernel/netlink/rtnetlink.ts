// rtnetlink messages as bytes, and their replies as typed values: the requests ctnet's
// in-process backend (backend.ts) sends for the ops of the CNI and create/rm paths. Pure: no I/O.
//
// Why hand-written: the npm packages that speak rtnetlink are either unmaintained for years
// (`netlink`, `node-netlink`, last releases 2019-2021, native builds via node-gyp) or wrap a whole
// netlink library we would have to download and build; what ctnet needs is about a dozen fixed
// message shapes. Each encoder says which `ip` command it is equivalent to, and the unit tests
// compare its bytes with what that command sent (strace captures, test/unit/netlink.test.ts).
//
// Where `ip` first asks for a link's index by name (RTM_GETLINK) and then sends the index, the link
// operations here name the link (IFLA_IFNAME with ifi_index 0: the kernel looks it up by name in
// rtnl_newlink/rtnl_dellink), one round trip fewer; addresses and routes need the index.

export const NLMSG_ERROR = 2;
export const NLMSG_DONE = 3;
export const RTM_NEWLINK = 16;
export const RTM_DELLINK = 17;
export const RTM_GETLINK = 18;
export const RTM_NEWADDR = 20;
export const RTM_DELADDR = 21;
export const RTM_GETADDR = 22;
export const RTM_NEWROUTE = 24;
export const RTM_DELROUTE = 25;
export const RTM_GETROUTE = 26;

export const NLM_F_REQUEST = 0x1;
export const NLM_F_ACK = 0x4;
export const NLM_F_DUMP = 0x300;
export const NLM_F_REPLACE = 0x100;
export const NLM_F_EXCL = 0x200;
export const NLM_F_CREATE = 0x400;

const AF_UNSPEC = 0;
const AF_INET = 2;
const AF_INET6 = 10;
const IFF_UP = 0x1;

const IFLA_ADDRESS = 1;
const IFLA_IFNAME = 3;
const IFLA_MTU = 4;
const IFLA_LINK = 5;
const IFLA_MASTER = 10;
const IFLA_OPERSTATE = 16;
const IFLA_LINKINFO = 18;
const IFLA_NET_NS_FD = 28;
const IFLA_EXT_MASK = 29;
const IFLA_LINK_NETNSID = 37;
const IFLA_INFO_KIND = 1;
const IFLA_INFO_DATA = 2;
const IFLA_INFO_SLAVE_DATA = 5;
const VETH_INFO_PEER = 1;
const IFLA_BRPORT_MODE = 4; // hairpin
/** RTEXT_FILTER_VF | RTEXT_FILTER_SKIP_STATS: what `ip` asks for (no per-VF data, no stats). */
const EXT_MASK = 9;

const IFA_ADDRESS = 1;
const IFA_LOCAL = 2;
const IFA_BROADCAST = 4;
const IFA_F_NODAD = 0x02;

const RTA_DST = 1;
const RTA_OIF = 4;
const RTA_GATEWAY = 5;
const RTA_PREFSRC = 7;
const RTA_TABLE = 15;
const RT_TABLE_MAIN = 254;
const RTPROT_BOOT = 3;
const RT_SCOPE_UNIVERSE = 0;
const RT_SCOPE_NOWHERE = 255;
const RTN_UNICAST = 1;
const RTNH_F_ONLINK = 4;

// ---------------- encoding ----------------

/** An attribute: a type and its payload, or nested attributes. */
type Attr = { readonly type: number; readonly data: Buffer } | { readonly type: number; readonly nested: readonly Attr[] };

const align4 = (n: number) => (n + 3) & ~3;

function attrBytes(a: Attr): Buffer {
  const payload = 'data' in a ? a.data : Buffer.concat(a.nested.map(attrBytes));
  const len = 4 + payload.length;
  const out = Buffer.alloc(align4(len));
  out.writeUInt16LE(len, 0);
  out.writeUInt16LE(a.type, 2);
  payload.copy(out, 4);
  return out;
}

const str = (type: number, s: string): Attr => ({ type, data: Buffer.from(`${s}\0`) });
/** A kind name as ip sends it: without the NUL (the kernel compares it by length). */
const kind = (type: number, s: string): Attr => ({ type, data: Buffer.from(s) });
const u32 = (type: number, v: number): Attr => {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(v);
  return { type, data: b };
};
const u8 = (type: number, v: number): Attr => ({ type, data: Buffer.from([v]) });
const raw = (type: number, data: Buffer): Attr => ({ type, data });

/** struct nlmsghdr + body + attributes. seq: the request's number, matched in the reply. */
export function message(type: number, flags: number, seq: number, body: Buffer, attrs: readonly Attr[] = []): Buffer {
  const payload = Buffer.concat([body, ...attrs.map(attrBytes)]);
  const hdr = Buffer.alloc(16);
  hdr.writeUInt32LE(16 + payload.length, 0);
  hdr.writeUInt16LE(type, 4);
  hdr.writeUInt16LE(flags, 6);
  hdr.writeUInt32LE(seq >>> 0, 8);
  hdr.writeUInt32LE(0, 12);
  return Buffer.concat([hdr, payload]);
}

/** struct ifinfomsg */
function ifinfo(index = 0, flags = 0, change = 0): Buffer {
  const b = Buffer.alloc(16);
  b.writeUInt8(AF_UNSPEC, 0);
  b.writeInt32LE(index, 4);
  b.writeUInt32LE(flags, 8);
  b.writeUInt32LE(change, 12);
  return b;
}

/** A MAC as 6 bytes; throws naming the field for anything else. */
export function macBytes(mac: string): Buffer {
  if (!/^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/i.test(mac)) throw new Error(`invalid MAC address ${JSON.stringify(mac)}`);
  return Buffer.from(mac.split(':').map((x) => parseInt(x, 16)));
}

/** An IPv4 or IPv6 address as its family and bytes; throws naming the address otherwise. */
export function ipBytes(ip: string): { family: 4 | 6; bytes: Buffer } {
  if (ip.includes(':')) return { family: 6, bytes: ipv6Bytes(ip) };
  const parts = ip.split('.');
  if (parts.length !== 4 || parts.some((p) => !/^\d{1,3}$/.test(p) || Number(p) > 255)) throw new Error(`invalid IPv4 address ${JSON.stringify(ip)}`);
  return { family: 4, bytes: Buffer.from(parts.map(Number)) };
}

function ipv6Bytes(ip: string): Buffer {
  const bad = () => new Error(`invalid IPv6 address ${JSON.stringify(ip)}`);
  const halves = ip.split('::');
  if (halves.length > 2) throw bad();
  const groups = (s: string) => (s === '' ? [] : s.split(':'));
  const head = groups(halves[0]!);
  const tail = halves.length === 2 ? groups(halves[1]!) : [];
  const fill = 8 - head.length - tail.length;
  if ((halves.length === 1 && fill !== 0) || fill < 0 || (halves.length === 2 && fill < 1)) throw bad();
  const all = [...head, ...Array<string>(halves.length === 2 ? fill : 0).fill('0'), ...tail];
  const out = Buffer.alloc(16);
  all.forEach((g, i) => {
    if (!/^[0-9a-f]{1,4}$/i.test(g)) throw bad();
    out.writeUInt16BE(parseInt(g, 16), i * 2);
  });
  return out;
}

/** A CIDR (address/prefix) as family, bytes and prefix length. */
export function cidrParts(cidr: string): { family: 4 | 6; bytes: Buffer; prefixlen: number } {
  const [addr, len, extra] = cidr.split('/');
  const { family, bytes } = ipBytes(addr ?? '');
  const prefixlen = Number(len);
  if (extra !== undefined || len === undefined || !/^\d+$/.test(len) || prefixlen > (family === 4 ? 32 : 128)) throw new Error(`invalid CIDR ${JSON.stringify(cidr)}`);
  return { family, bytes, prefixlen };
}

const af = (family: 4 | 6) => (family === 4 ? AF_INET : AF_INET6);
const CREATE_EXCL = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL;
const SET = NLM_F_REQUEST | NLM_F_ACK;

/**
 * Equivalent to: ip link add NAME [mtu N] type veth peer name PEER [mtu N] [address MAC] netns PEER_NS.
 * peerNsFd: an open descriptor of the peer's namespace (the kernel moves the peer there as it makes it).
 */
export function linkAddVeth(seq: number, v: { name: string; mtu?: number | undefined; peer: string; peerMac?: string | undefined; peerNsFd: number }): Buffer {
  const peer = Buffer.concat([ifinfo(), ...[
    ...(v.mtu !== undefined ? [u32(IFLA_MTU, v.mtu)] : []),
    ...(v.peerMac ? [raw(IFLA_ADDRESS, macBytes(v.peerMac))] : []),
    u32(IFLA_NET_NS_FD, v.peerNsFd),
    str(IFLA_IFNAME, v.peer),
  ].map(attrBytes)]);
  return message(RTM_NEWLINK, CREATE_EXCL, seq, ifinfo(), [
    ...(v.mtu !== undefined ? [u32(IFLA_MTU, v.mtu)] : []),
    str(IFLA_IFNAME, v.name),
    { type: IFLA_LINKINFO, nested: [kind(IFLA_INFO_KIND, 'veth'), { type: IFLA_INFO_DATA, nested: [raw(VETH_INFO_PEER, peer)] }] },
  ]);
}

/** Equivalent to: ip link set NAME master BRIDGE (masterIndex: the bridge's ifindex). */
export function linkSetMaster(seq: number, name: string, masterIndex: number): Buffer {
  return message(RTM_NEWLINK, SET, seq, ifinfo(), [str(IFLA_IFNAME, name), u32(IFLA_MASTER, masterIndex)]);
}

/** Equivalent to: ip link set NAME type bridge_slave hairpin on */
export function linkSetHairpin(seq: number, name: string): Buffer {
  return message(RTM_NEWLINK, SET, seq, ifinfo(), [str(IFLA_IFNAME, name),
    { type: IFLA_LINKINFO, nested: [kind(IFLA_INFO_KIND, 'bridge_slave'), { type: IFLA_INFO_SLAVE_DATA, nested: [u8(IFLA_BRPORT_MODE, 1)] }] }]);
}

/** Equivalent to: ip link set NAME up */
export function linkSetUp(seq: number, name: string): Buffer {
  return message(RTM_NEWLINK, SET, seq, ifinfo(0, IFF_UP, IFF_UP), [str(IFLA_IFNAME, name)]);
}

/** Equivalent to: ip link set NAME mtu N */
export function linkSetMtu(seq: number, name: string, mtu: number): Buffer {
  return message(RTM_NEWLINK, SET, seq, ifinfo(), [str(IFLA_IFNAME, name), u32(IFLA_MTU, mtu)]);
}

/** Equivalent to: ip link del NAME */
export function linkDel(seq: number, name: string): Buffer {
  return message(RTM_DELLINK, SET, seq, ifinfo(), [str(IFLA_IFNAME, name)]);
}

/**
 * Equivalent to: ip link show dev NAME (one link; ENODEV when there is none). With an ACK after the
 * link (unlike ip's): the addon reads until the ACK or error that ends every non-dump request.
 */
export function linkGet(seq: number, name: string): Buffer {
  return message(RTM_GETLINK, SET, seq, ifinfo(), [u32(IFLA_EXT_MASK, EXT_MASK), str(IFLA_IFNAME, name)]);
}

/** Equivalent to: ip link show (every link) */
export function linkDump(seq: number): Buffer {
  return message(RTM_GETLINK, NLM_F_REQUEST | NLM_F_DUMP, seq, ifinfo(), [u32(IFLA_EXT_MASK, EXT_MASK)]);
}

/** struct ifaddrmsg */
function ifaddr(family: 4 | 6, prefixlen: number, flags: number, index: number): Buffer {
  const b = Buffer.alloc(8);
  b.writeUInt8(af(family), 0);
  b.writeUInt8(prefixlen, 1);
  b.writeUInt8(flags, 2);
  b.writeUInt8(0, 3); // scope: global
  b.writeUInt32LE(index, 4);
  return b;
}

/** The IPv4 broadcast address of a CIDR (`brd +`). */
function broadcast(bytes: Buffer, prefixlen: number): Buffer {
  const host = prefixlen === 32 ? 0 : (0xffffffff >>> prefixlen);
  const out = Buffer.alloc(4);
  out.writeUInt32BE((bytes.readUInt32BE(0) | host) >>> 0);
  return out;
}

/**
 * Equivalent to: ip addr add CIDR brd + dev DEV (IPv4), ip addr add CIDR dev DEV nodad (IPv6):
 * what ctnet's exec backend runs (src/plan/render.ts). index: DEV's ifindex.
 */
export function addrAdd(seq: number, cidr: string, index: number): Buffer {
  const { family, bytes, prefixlen } = cidrParts(cidr);
  return message(RTM_NEWADDR, CREATE_EXCL, seq, ifaddr(family, prefixlen, family === 6 ? IFA_F_NODAD : 0, index), [
    raw(IFA_LOCAL, bytes), raw(IFA_ADDRESS, bytes), ...(family === 4 ? [raw(IFA_BROADCAST, broadcast(bytes, prefixlen))] : []),
  ]);
}

/** Equivalent to: ip addr del CIDR dev DEV */
export function addrDel(seq: number, cidr: string, index: number): Buffer {
  const { family, bytes, prefixlen } = cidrParts(cidr);
  return message(RTM_DELADDR, SET, seq, ifaddr(family, prefixlen, 0, index), [raw(IFA_LOCAL, bytes), raw(IFA_ADDRESS, bytes)]);
}

/** Equivalent to: ip addr show (both families) */
export function addrDump(seq: number): Buffer {
  // ifa_family AF_UNSPEC: both families.
  return message(RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP, seq, Buffer.alloc(8));
}

/** struct rtmsg for a default route in the main table. */
function rtmsg(family: 4 | 6, o: { protocol: number; scope: number; type: number }): Buffer {
  return Buffer.from([af(family), 0, 0, 0, RT_TABLE_MAIN, o.protocol, o.scope, o.type, 0, 0, 0, 0]);
}

/** Equivalent to: ip [-6] route replace default via GW dev DEV (index: DEV's ifindex) */
export function routeReplaceDefault(seq: number, via: string, index: number): Buffer {
  const { family, bytes } = ipBytes(via);
  // `ip -6` names the IPv6 default's destination (::/0) explicitly; IPv4 leaves it out.
  return message(RTM_NEWROUTE, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE, seq,
    rtmsg(family, { protocol: RTPROT_BOOT, scope: RT_SCOPE_UNIVERSE, type: RTN_UNICAST }),
    [...(family === 6 ? [raw(RTA_DST, Buffer.alloc(16))] : []), raw(RTA_GATEWAY, bytes), u32(RTA_OIF, index)]);
}

/** Equivalent to: ip [-6] route del default via GW dev DEV */
export function routeDelDefault(seq: number, via: string, index: number): Buffer {
  const { family, bytes } = ipBytes(via);
  return message(RTM_DELROUTE, SET, seq, rtmsg(family, { protocol: 0, scope: RT_SCOPE_NOWHERE, type: 0 }),
    [...(family === 6 ? [raw(RTA_DST, Buffer.alloc(16))] : []), raw(RTA_GATEWAY, bytes), u32(RTA_OIF, index)]);
}

/** Equivalent to: ip -4 route show; ip -6 route show (every table: the reader keeps main's) */
export function routeDump(seq: number, family: 4 | 6): Buffer {
  return message(RTM_GETROUTE, NLM_F_REQUEST | NLM_F_DUMP, seq, Buffer.from([af(family), 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]));
}

// ---------------- decoding ----------------

export interface Reply {
  readonly type: number;
  readonly flags: number;
  readonly seq: number;
  readonly body: Buffer;
}

/** The messages of a reply buffer, in order. */
export function replies(buf: Buffer): Reply[] {
  const out: Reply[] = [];
  let off = 0;
  while (off + 16 <= buf.length) {
    const len = buf.readUInt32LE(off);
    if (len < 16 || off + len > buf.length) throw new Error(`malformed netlink reply: message of ${len} bytes at ${off} of ${buf.length}`);
    out.push({ type: buf.readUInt16LE(off + 4), flags: buf.readUInt16LE(off + 6), seq: buf.readUInt32LE(off + 8), body: buf.subarray(off + 16, off + len) });
    off += align4(len);
  }
  return out;
}

/** The errno an NLMSG_ERROR carries (0: an ACK). */
export function errnoOf(r: Reply): number {
  return -r.body.readInt32LE(0);
}

function attrs(buf: Buffer, from: number): Map<number, Buffer> {
  const m = new Map<number, Buffer>();
  let off = from;
  while (off + 4 <= buf.length) {
    const len = buf.readUInt16LE(off);
    if (len < 4 || off + len > buf.length) break;
    // NLA_F_NESTED and NLA_F_NET_BYTEORDER are flags, not part of the type.
    m.set(buf.readUInt16LE(off + 2) & 0x3fff, buf.subarray(off + 4, off + len));
    off += align4(len);
  }
  return m;
}

const cstr = (b: Buffer | undefined) => (b ? b.toString('utf8', 0, b.indexOf(0) >= 0 ? b.indexOf(0) : b.length) : undefined);
const macText = (b: Buffer) => [...b].map((x) => x.toString(16).padStart(2, '0')).join(':');

export function ipText(b: Buffer): string {
  if (b.length === 4) return [...b].join('.');
  // RFC 5952: the longest run of zero groups (two or more) becomes ::.
  const g = Array.from({ length: 8 }, (_, i) => b.readUInt16BE(i * 2));
  let best = -1, bestLen = 1;
  for (let i = 0; i < 8;) {
    if (g[i] !== 0) { i++; continue; }
    let j = i;
    while (j < 8 && g[j] === 0) j++;
    if (j - i > bestLen) { best = i; bestLen = j - i; }
    i = j;
  }
  const hex = (xs: number[]) => xs.map((x) => x.toString(16)).join(':');
  return best < 0 ? hex(g) : `${hex(g.slice(0, best))}::${hex(g.slice(best + bestLen))}`;
}

const OPERSTATES = ['UNKNOWN', 'NOTPRESENT', 'DOWN', 'LOWERLAYERDOWN', 'TESTING', 'DORMANT', 'UP'];
const IFF_NAMES: [number, string][] = [[0x2, 'BROADCAST'], [0x8, 'LOOPBACK'], [0x10, 'POINTOPOINT'], [0x1000, 'MULTICAST'], [0x1, 'UP'], [0x10000, 'LOWER_UP']];

/** A link from RTM_NEWLINK, as `ip -j -d link show` names its fields (master as an index here). */
export interface RawLink {
  readonly ifindex: number;
  readonly ifname: string;
  readonly flags: string[];
  readonly mtu?: number;
  readonly address?: string;
  readonly masterIndex?: number;
  readonly link_index?: number;
  readonly link_netnsid?: number;
  readonly operstate?: string;
  readonly kind?: string;
}

export function parseLink(body: Buffer): RawLink {
  const ifindex = body.readInt32LE(4);
  const flags = body.readUInt32LE(8);
  const a = attrs(body, 16);
  const info = a.get(IFLA_LINKINFO);
  const kind = info ? cstr(attrs(info, 0).get(IFLA_INFO_KIND)) : undefined;
  const op = a.get(IFLA_OPERSTATE);
  return {
    ifindex,
    ifname: cstr(a.get(IFLA_IFNAME)) ?? '',
    flags: IFF_NAMES.filter(([bit]) => flags & bit).map(([, n]) => n),
    ...(a.get(IFLA_MTU) ? { mtu: a.get(IFLA_MTU)!.readUInt32LE(0) } : {}),
    ...(a.get(IFLA_ADDRESS)?.length === 6 ? { address: macText(a.get(IFLA_ADDRESS)!) } : {}),
    ...(a.get(IFLA_MASTER) ? { masterIndex: a.get(IFLA_MASTER)!.readUInt32LE(0) } : {}),
    ...(a.get(IFLA_LINK) ? { link_index: a.get(IFLA_LINK)!.readUInt32LE(0) } : {}),
    ...(a.get(IFLA_LINK_NETNSID) ? { link_netnsid: a.get(IFLA_LINK_NETNSID)!.readInt32LE(0) } : {}),
    ...(op ? { operstate: OPERSTATES[op.readUInt8(0)] ?? 'UNKNOWN' } : {}),
    ...(kind ? { kind } : {}),
  };
}

export interface RawAddr {
  readonly family: 4 | 6;
  readonly prefixlen: number;
  readonly scope: string;
  readonly index: number;
  readonly local: string;
}

const SCOPES: Record<number, string> = { 0: 'global', 200: 'site', 253: 'link', 254: 'host', 255: 'nowhere' };

export function parseAddr(body: Buffer): RawAddr | undefined {
  const family = body.readUInt8(0) === AF_INET ? 4 : body.readUInt8(0) === AF_INET6 ? 6 : undefined;
  if (!family) return undefined;
  const a = attrs(body, 8);
  const local = a.get(IFA_LOCAL) ?? a.get(IFA_ADDRESS);
  if (!local) return undefined;
  return { family, prefixlen: body.readUInt8(1), scope: SCOPES[body.readUInt8(3)] ?? String(body.readUInt8(3)), index: body.readUInt32LE(4), local: ipText(local) };
}

export interface RawRoute {
  readonly family: 4 | 6;
  /** 'default', or ADDR/LEN (ADDR alone for a host route), as ip prints it */
  readonly dst: string;
  readonly table: number;
  readonly gateway?: string;
  readonly oif?: number;
  readonly protocol: string;
  readonly scope: string;
  readonly prefsrc?: string;
  readonly type: number;
  readonly flags: string[];
}

const PROTOCOLS: Record<number, string> = { 1: 'redirect', 2: 'kernel', 3: 'boot', 4: 'static', 9: 'ra' };

export function parseRoute(body: Buffer): RawRoute | undefined {
  const family = body.readUInt8(0) === AF_INET ? 4 : body.readUInt8(0) === AF_INET6 ? 6 : undefined;
  if (!family) return undefined;
  const dstLen = body.readUInt8(1);
  const a = attrs(body, 12);
  const table = a.get(RTA_TABLE)?.readUInt32LE(0) ?? body.readUInt8(4);
  const dst = a.get(RTA_DST);
  const gw = a.get(RTA_GATEWAY);
  const src = a.get(RTA_PREFSRC);
  const flags = body.readUInt32LE(8);
  return {
    family,
    dst: dstLen === 0 ? 'default' : `${dst ? ipText(dst) : family === 4 ? '0.0.0.0' : '::'}${dstLen === (family === 4 ? 32 : 128) ? '' : `/${dstLen}`}`,
    table,
    ...(gw ? { gateway: ipText(gw) } : {}),
    ...(a.get(RTA_OIF) ? { oif: a.get(RTA_OIF)!.readUInt32LE(0) } : {}),
    protocol: PROTOCOLS[body.readUInt8(5)] ?? String(body.readUInt8(5)),
    scope: SCOPES[body.readUInt8(6)] ?? String(body.readUInt8(6)),
    ...(src ? { prefsrc: ipText(src) } : {}),
    type: body.readUInt8(7),
    flags: flags & RTNH_F_ONLINK ? ['onlink'] : [],
  };
}

export { RT_TABLE_MAIN };
