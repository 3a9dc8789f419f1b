// ctnet's one nftables table, as text. Pure: the engine decides what, the kernel layer applies it.
//
// Every per-network and per-sandbox fact is a set element, never a rule, so the rules below are the
// same whatever the number of networks or sandboxes and each packet costs a few hash lookups.
import { ipv6Hex, linkLocalOf } from '../model/mac.ts';
import { hostIpFamilies, isWildcard, type PortMapping } from '../model/ports.ts';

export const TABLE = 'inet ctnet';
/**
 * Per-port identity lives in a bridge-family table: only there does a rule see which bridge port
 * (host veth) a frame came in on, and ARP and neighbour discovery, before anything is forwarded or
 * delivered, with or without br_netfilter.
 */
export const BRIDGE_TABLE = 'bridge ctnet';

export interface NetworkFacts {
  readonly bridge: string;
  readonly internal: boolean;
  /** No bridge_pairs element: its sandboxes reach each other only where a policy allows. */
  readonly isolate: boolean;
  /** Its sandboxes may reach every service of the host. */
  readonly hostAccess: boolean;
  /** ctnetd answers DNS on its gateways: one dns set element per gateway, open whatever else is closed. */
  readonly dns: boolean;
  readonly subnets: readonly { readonly family: 4 | 6; readonly cidr: string; readonly gateway: string }[];
  /** An overlay network's side of the host: its VXLAN device, the overlay's subnets, its VNI and port, the peers' VTEPs. */
  readonly overlay?: OverlayFacts | undefined;
  /** `--egress-ip`: the host address its subnets' egress leaves from (per family), instead of masquerade's choice. */
  readonly egress?: readonly { readonly family: 4 | 6; readonly ip: string }[] | undefined;
}

export interface OverlayFacts {
  readonly device: string;
  /** The overlay's whole subnets (every host's lease lies in one): traffic between them is not masqueraded. */
  readonly cidrs: readonly string[];
  readonly vni: number;
  readonly port: number;
  /** Underlay addresses of the peers' VTEPs: the only sources whose VXLAN packets for this VNI are accepted. */
  readonly vteps: readonly string[];
}

export interface PortFacts {
  readonly mapping: PortMapping;
  /** The sandbox addresses the mapping leads to (one per family it has on its published network). */
  readonly targets: readonly { readonly family: 4 | 6; readonly ip: string }[];
}

export interface EndpointFacts {
  readonly bridge: string;
  readonly addresses: readonly { readonly family: 4 | 6; readonly ip: string }[];
  /** The sandbox's bridge port (host veth) and its interface's MAC: what the port may send as. */
  readonly port?: { readonly name: string; readonly mac: string } | undefined;
  /** The sandbox's `--egress-ip` addresses, per family. */
  readonly egress?: Egress | undefined;
}

const q = (ifname: string) => JSON.stringify(ifname); // names are validated: [A-Za-z0-9_.-]

/**
 * Declares the table, its sets and chains, and (re)writes the rules. Idempotent and atomic, so
 * concurrent ctnet processes may all run it: `add` leaves existing sets and their elements alone.
 */
export function baseScript(): string {
  return `add table ${TABLE}
add set ${TABLE} bridges { type ifname; comment "every ctnet bridge"; }
add set ${TABLE} bridge_pairs { type ifname . ifname; comment "bridge . itself: traffic that stays in its network"; }
add set ${TABLE} internal_bridges { type ifname; comment "bridges of --internal networks"; }
add set ${TABLE} host_access_bridges { type ifname; comment "bridges of --host-access networks: their sandboxes reach the host's services"; }
add set ${TABLE} dns4 { type ipv4_addr . ifname; comment "gateway . bridge of networks with DNS: ctnetd answers there"; }
add set ${TABLE} dns6 { type ipv6_addr . ifname; comment "gateway . bridge of networks with DNS: ctnetd answers there"; }
add set ${TABLE} masq4 { type ipv4_addr; flags interval; comment "subnets whose egress is masqueraded"; }
add set ${TABLE} masq6 { type ipv6_addr; flags interval; comment "subnets whose egress is masqueraded"; }
add set ${TABLE} overlays { type ifname; comment "VXLAN devices of overlay networks: other hosts' sandboxes come in through them"; }
add set ${TABLE} overlay4 { type ipv4_addr; flags interval; comment "overlay subnets: traffic to them is not masqueraded"; }
add set ${TABLE} vxlan_ids { typeof udp dport . @th,96,24; comment "UDP port . VNI of this host's overlay networks (the VNI is bits 96-119 past the UDP header's start)"; }
add set ${TABLE} vteps4 { typeof ip saddr . udp dport . @th,96,24; comment "known VTEPs: underlay address . UDP port . VNI"; }
add set ${TABLE} endpoints4 { type ipv4_addr . ifname; comment "sandbox address . its bridge"; }
add set ${TABLE} endpoints6 { type ipv6_addr . ifname; comment "sandbox address . its bridge"; }
add map ${TABLE} egress_network4 { type ipv4_addr : ipv4_addr; flags interval; comment "network --egress-ip: subnet -> the host address its egress leaves from"; }
add map ${TABLE} egress_network6 { type ipv6_addr : ipv6_addr; flags interval; comment "network --egress-ip: subnet -> the host address its egress leaves from"; }
add map ${TABLE} egress_sandbox4 { type ipv4_addr : ipv4_addr; comment "sandbox --egress-ip: its address -> the host address its egress leaves from"; }
add map ${TABLE} egress_sandbox6 { type ipv6_addr : ipv6_addr; comment "sandbox --egress-ip: its address -> the host address its egress leaves from"; }
add map ${TABLE} ports4 { type ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service; comment "published on one host address: address . protocol . port -> sandbox address . port"; }
add map ${TABLE} ports6 { type ipv6_addr . inet_proto . inet_service : ipv6_addr . inet_service; comment "published on one host address: address . protocol . port -> sandbox address . port"; }
add map ${TABLE} ports4_any { type inet_proto . inet_service : ipv4_addr . inet_service; comment "published on every host address: protocol . port -> sandbox address . port"; }
add map ${TABLE} ports6_any { type inet_proto . inet_service : ipv6_addr . inet_service; comment "published on every host address: protocol . port -> sandbox address . port"; }
add map ${TABLE} services4 { type ipv4_addr . inet_proto . inet_service : verdict; comment "services: VIP . protocol . port -> goto the service's chain (its backends)"; }
add set ${TABLE} service_vips4 { type ipv4_addr; comment "services' VIPs: reached from another network only where policy allows"; }
add map ${TABLE} services6 { type ipv6_addr . inet_proto . inet_service : verdict; comment "services' IPv6 VIPs (dual-stack networks): VIP . protocol . port -> goto the service's chain"; }
add set ${TABLE} service_vips6 { type ipv6_addr; comment "services' IPv6 VIPs: reached from another network only where policy allows"; }
add map ${TABLE} service_ports4 { type ipv4_addr . inet_proto . inet_service : verdict; comment "services published on one host address: address . protocol . port -> goto the service's chain"; }
add map ${TABLE} service_ports4_any { type inet_proto . inet_service : verdict; comment "services published on every IPv4 host address: protocol . port -> goto the service's chain"; }
${policySets()}
add chain ${TABLE} guard { type filter hook prerouting priority raw; policy accept; }
add chain ${TABLE} prerouting { type nat hook prerouting priority dstnat; policy accept; }
add chain ${TABLE} output { type nat hook output priority -100; policy accept; }
add chain ${TABLE} forward { type filter hook forward priority filter; policy accept; }
add chain ${TABLE} input { type filter hook input priority filter; policy accept; }
add chain ${TABLE} postrouting { type nat hook postrouting priority srcnat; policy accept; }
flush chain ${TABLE} guard
flush chain ${TABLE} prerouting
flush chain ${TABLE} output
flush chain ${TABLE} forward
flush chain ${TABLE} input
flush chain ${TABLE} postrouting
add rule ${TABLE} guard iifname @bridges ip daddr 127.0.0.0/8 counter drop comment "route_localnet is on for bridges: keep sandboxes off the host's loopback"
add rule ${TABLE} guard iifname @bridges ip saddr 127.0.0.0/8 counter drop comment "loopback source from a sandbox"
add rule ${TABLE} prerouting ip daddr . meta l4proto . th dport vmap @services4 comment "services: one lookup, whatever their number"
add rule ${TABLE} output ip daddr . meta l4proto . th dport vmap @services4 comment "services, from the host"
add rule ${TABLE} prerouting ip6 daddr . meta l4proto . th dport vmap @services6 comment "services' IPv6 VIPs: one lookup, whatever their number"
add rule ${TABLE} output ip6 daddr . meta l4proto . th dport vmap @services6 comment "services' IPv6 VIPs, from the host"
${servicePortRules('prerouting')}
${servicePortRules('output')}
${dnatRules('prerouting')}
${dnatRules('output')}
add rule ${TABLE} forward ct state established,related accept
add rule ${TABLE} forward iifname @bridges ct label set ${SEEN_LABEL} comment "seen by ctnet (ctnetd's fail-closed table drops new flows of its bridges without it)"
add rule ${TABLE} forward oifname @bridges ct label set ${SEEN_LABEL} comment "seen by ctnet"
add rule ${TABLE} forward iifname @bridges ip saddr . iifname != @endpoints4 counter drop comment "spoofed source"
add rule ${TABLE} forward iifname @bridges ip6 saddr != { ::, fe80::/10 } ip6 saddr . iifname != @endpoints6 counter drop comment "spoofed source (link-local and DAD's :: stay on the link)"
add rule ${TABLE} forward ip saddr . ip daddr . meta l4proto . th dport @policy_deny4 counter drop comment "policy: deny"
add rule ${TABLE} forward ip6 saddr . ip6 daddr . meta l4proto . th dport @policy_deny6 counter drop comment "policy: deny"
add rule ${TABLE} forward ip saddr . ip daddr . meta l4proto . th dport @policy_allow4 counter accept comment "policy: allow"
add rule ${TABLE} forward ip6 saddr . ip6 daddr . meta l4proto . th dport @policy_allow6 counter accept comment "policy: allow"
add rule ${TABLE} forward iifname . oifname @bridge_pairs accept
add rule ${TABLE} forward iifname @internal_bridges counter drop comment "internal network: no way out"
add rule ${TABLE} forward oifname @internal_bridges counter drop comment "internal network: no way in"
add rule ${TABLE} forward iifname @bridges ct status dnat ct original ip daddr @service_vips4 counter drop comment "service: from another network only where policy allows (a service is no way around isolation)"
add rule ${TABLE} forward iifname @bridges ct status dnat ct original ip6 daddr @service_vips6 counter drop comment "service (IPv6 VIP): from another network only where policy allows"
add rule ${TABLE} forward ct status dnat counter accept comment "published port"
add rule ${TABLE} forward iifname @bridges oifname @bridges counter drop comment "networks are isolated from each other"
add rule ${TABLE} forward oifname @bridges counter drop comment "from outside, only published ports reach sandboxes"
add rule ${TABLE} forward iifname @overlays counter drop comment "the overlay carries its networks' traffic only, to and from their bridges"
add rule ${TABLE} forward oifname @overlays counter drop comment "the overlay carries its networks' traffic only, to and from their bridges"
add rule ${TABLE} postrouting ct status dnat ip saddr . oifname @endpoints4 counter masquerade comment "hairpin: published port reached from its own bridge"
add rule ${TABLE} postrouting ct status dnat ip6 saddr . oifname @endpoints6 counter masquerade comment "hairpin: published port reached from its own bridge"
add rule ${TABLE} input udp dport . @th,96,24 @vxlan_ids ip saddr . udp dport . @th,96,24 != @vteps4 counter drop comment "VXLAN from an unknown VTEP"
add rule ${TABLE} input iifname != @bridges iifname != @overlays accept
add rule ${TABLE} input ct state established,related accept comment "replies to what the host started"
add rule ${TABLE} input ct label set ${SEEN_LABEL} comment "seen by ctnet"
add rule ${TABLE} input icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit } accept comment "neighbour discovery: a sandbox must find its gateway"
add rule ${TABLE} input meta l4proto { udp, tcp } th dport 53 ip daddr . iifname @dns4 accept comment "DNS: ctnetd on the network's gateway (also --internal, also without host access)"
add rule ${TABLE} input meta l4proto { udp, tcp } th dport 53 ip6 daddr . iifname @dns6 accept comment "DNS: ctnetd on the network's gateway (also --internal, also without host access)"
add rule ${TABLE} input ip saddr . meta l4proto . th dport @policy_host_deny4 counter drop comment "policy: deny --to host"
add rule ${TABLE} input ip6 saddr . meta l4proto . th dport @policy_host_deny6 counter drop comment "policy: deny --to host"
add rule ${TABLE} input ip saddr . meta l4proto . th dport @policy_host_allow4 counter accept comment "policy: allow --to host"
add rule ${TABLE} input ip6 saddr . meta l4proto . th dport @policy_host_allow6 counter accept comment "policy: allow --to host"
add rule ${TABLE} input iifname @internal_bridges counter drop comment "internal network: nothing on the host (but what a policy allows)"
add rule ${TABLE} input meta l4proto { icmp, ipv6-icmp } accept comment "ping, path MTU"
add rule ${TABLE} input iifname @host_access_bridges accept comment "network --host-access"
add rule ${TABLE} input counter drop comment "the host is not open to sandboxes (published ports are DNATed past it; policy allow --to host or network --host-access opens it)"
add rule ${TABLE} postrouting ct status dnat ip saddr 127.0.0.0/8 counter masquerade comment "published port reached at 127.0.0.1"
add rule ${TABLE} postrouting ip saddr @masq4 ip daddr != @overlay4 oifname != @bridges snat ip to ip saddr map @egress_sandbox4 comment "egress from the sandbox's --egress-ip (no element: the next rule)"
add rule ${TABLE} postrouting ip saddr @masq4 ip daddr != @overlay4 oifname != @bridges snat ip to ip saddr map @egress_network4 comment "egress from the network's --egress-ip"
add rule ${TABLE} postrouting ip saddr @masq4 ip daddr != @overlay4 oifname != @bridges counter masquerade comment "egress, but not between overlay subnets"
add rule ${TABLE} postrouting ip6 saddr @masq6 oifname != @bridges snat ip6 to ip6 saddr map @egress_sandbox6 comment "egress from the sandbox's --egress-ip"
add rule ${TABLE} postrouting ip6 saddr @masq6 oifname != @bridges snat ip6 to ip6 saddr map @egress_network6 comment "egress from the network's --egress-ip"
add rule ${TABLE} postrouting ip6 saddr @masq6 oifname != @bridges counter masquerade
${identityScript()}
`;
}

/** The policy sets, by the PolicyElements field that fills each. */
export const POLICY_SET_NAMES = {
  deny4: 'policy_deny4', deny6: 'policy_deny6', allow4: 'policy_allow4', allow6: 'policy_allow6',
  hostDeny4: 'policy_host_deny4', hostDeny6: 'policy_host_deny6', hostAllow4: 'policy_host_allow4', hostAllow6: 'policy_host_allow6',
} as const;
export const POLICY_SETS = Object.values(POLICY_SET_NAMES);

/**
 * Policy rules compiled to disjoint boxes of source . destination . protocol . port (rules --to host:
 * source . protocol . port, looked up on the input path): one lookup per set for a new connection,
 * whatever the number of rules; per-element counters give rule hits.
 */
function policySets(): string {
  return POLICY_SETS.map((name) => {
    const addr = name.endsWith('4') ? 'ipv4_addr' : 'ipv6_addr';
    const host = name.includes('_host_');
    const type = host ? `${addr} . inet_proto . inet_service` : `${addr} . ${addr} . inet_proto . inet_service`;
    const comment = host ? 'policy --to host: source . protocol . port' : 'policy: source . destination . protocol . port';
    return `add set ${TABLE} ${name} { type ${type}; flags interval; counter; comment "${comment}"; }`;
  }).join('\n');
}

export type PolicyElements = { readonly [K in keyof typeof POLICY_SET_NAMES]: readonly string[] };

/** Replaces every policy element in one transaction (with the rest of the script it is part of). */
export function policyLines(e: PolicyElements): string[] {
  const lines: string[] = POLICY_SETS.map((name) => `flush set ${TABLE} ${name}`);
  for (const [key, set] of Object.entries(POLICY_SET_NAMES)) {
    const elements = e[key as keyof PolicyElements];
    for (let i = 0; i < elements.length; i += 500) lines.push(`add element ${TABLE} ${set} { ${elements.slice(i, i + 500).join(', ')} }`);
  }
  return lines;
}

/** One lookup per new connection to a local address: a specific-address map, then the any-address one. */
function dnatRules(chain: 'prerouting' | 'output'): string {
  return ([4, 6] as const).flatMap((f) => {
    // ::1 cannot be DNATed out of the host (IPv6 has no route_localnet): leave it to the host, so
    // a client gets "connection refused" instead of a silent drop.
    const [match, ip] = f === 4 ? ['meta nfproto ipv4', 'ip'] : ['meta nfproto ipv6 ip6 daddr != ::1', 'ip6'];
    return [
      `add rule ${TABLE} ${chain} ${match} fib daddr type local dnat ${ip} to ${ip} daddr . meta l4proto . th dport map @ports${f}`,
      `add rule ${TABLE} ${chain} ${match} fib daddr type local dnat ${ip} to meta l4proto . th dport map @ports${f}_any`,
    ];
  }).join('\n');
}

/** Published services: a local address's port leads to the service's chain, as a VIP does (one lookup per map). */
function servicePortRules(chain: 'prerouting' | 'output'): string {
  const local = `${TABLE} ${chain} meta nfproto ipv4 fib daddr type local`;
  return [
    `add rule ${local} ip daddr . meta l4proto . th dport vmap @service_ports4 comment "published services, on one host address"`,
    `add rule ${local} meta l4proto . th dport vmap @service_ports4_any comment "published services, on every IPv4 host address"`,
  ].join('\n');
}

/**
 * A sandbox's port may send only as the sandbox: its MAC, its addresses (IPv6: and the link-local
 * address the kernel makes from its MAC), in ARP and neighbour advertisements too; never router
 * advertisements, redirects or DHCP answers. A ctnet port not (or no longer) registered sends nothing.
 * Set lookups keyed by port: the same few rules whatever the number of sandboxes; a frame passes
 * the port's registration and MAC once, then only its own protocol's rules.
 */
function identityScript(): string {
  const T = BRIDGE_TABLE;
  return `add table ${T}
add set ${T} ports { type ifname; comment "sandbox ports (host veths)"; }
add set ${T} port_mac { type ifname . ether_addr; comment "port . the MAC its sandbox has"; }
add set ${T} port_ip4 { type ifname . ipv4_addr; comment "port . an address its sandbox has"; }
add set ${T} port_ip6 { type ifname . ipv6_addr; comment "port . an address its sandbox has (with its link-local)"; }
add set ${T} port_nd { typeof iifname . @th,64,128; comment "port . an address its neighbour advertisements may claim (the ND target)"; }
add chain ${T} identity { type filter hook prerouting priority filter; policy accept; }
add chain ${T} port4
add chain ${T} port6
add chain ${T} port_arp
flush chain ${T} identity
flush chain ${T} port4
flush chain ${T} port6
flush chain ${T} port_arp
add rule ${T} identity iifname != "${PORT_GLOB}" accept comment "not a sandbox's port"
add rule ${T} identity iifname != @ports counter drop comment "a ctnet port with no sandbox identity"
add rule ${T} identity iifname . ether saddr != @port_mac counter drop comment "spoofed MAC"
add rule ${T} identity meta mark set 0 comment "seen by ctnet (ctnetd's fail-closed table drops a sandbox's frame it marked and ctnet did not see)"
add rule ${T} identity ether type vmap { ip : goto port4, ip6 : goto port6, arp : goto port_arp } comment "goto: the protocol chain decides, nothing after this rule runs for these"
add rule ${T} identity counter drop comment "sandboxes send IPv4, IPv6 and ARP only (no VLAN tags around spoofed packets)"
add rule ${T} port4 ip saddr != 0.0.0.0 iifname . ip saddr != @port_ip4 counter drop comment "spoofed IPv4 source"
add rule ${T} port4 ip daddr 127.0.0.0/8 counter drop comment "the host's loopback (route_localnet is on for bridges): also guarded here, so a flush of inet ctnet alone does not open it"
add rule ${T} port4 udp sport 67 counter drop comment "sandboxes are not DHCP servers"
add rule ${T} port6 ip6 saddr != :: iifname . ip6 saddr != @port_ip6 counter drop comment "spoofed IPv6 source"
add rule ${T} port6 ip6 daddr ::1 counter drop comment "the host's loopback"
add rule ${T} port6 icmpv6 type nd-neighbor-advert iifname . @th,64,128 != @port_nd counter drop comment "neighbour advertisement claiming another's address"
add rule ${T} port6 icmpv6 type { nd-router-advert, nd-redirect } counter drop comment "sandboxes are not routers"
add rule ${T} port6 udp sport 547 counter drop comment "sandboxes are not DHCPv6 servers"
add rule ${T} port_arp arp saddr ip != 0.0.0.0 iifname . arp saddr ip != @port_ip4 counter drop comment "ARP claiming another's address"
add rule ${T} port_arp iifname . arp saddr ether != @port_mac counter drop comment "ARP claiming another's MAC"`;
}

/** Host veths of sandboxes are named ctv + hex (engine/naming.ts). */
const PORT_GLOB = 'ctv*';

/**
 * ctnetd's fail-closed tables. ctnetd holds them through a netlink socket that owns them (`flags
 * owner`): no other process can flush, change or delete them (`nft flush ruleset` passes them
 * over), and the kernel removes them when ctnetd's socket closes. They hold no policy: they drop
 * what ctnet's own tables did not look at, so while those are gone (a flush, until ctnetd writes
 * them again) no sandbox traffic that ctnet would check passes unchecked.
 * - inet: a new flow to or from a ctnet bridge must carry the conntrack label ctnet's forward and
 *   input chains give every flow they see (a flow they drop never gets an entry); established
 *   flows pass, as they would through ctnet's own rules.
 * - bridge: a frame from a sandbox's port is marked before ctnet's identity chain, which clears
 *   the mark; one still marked after it was not checked, and is dropped.
 */
export const FAILSAFE_INET = 'inet ctnetd';
export const FAILSAFE_BRIDGE = 'bridge ctnetd';
/** The conntrack label bit ctnet's tables set on flows they see (the highest of 128: others count from 0). */
export const SEEN_LABEL = 127;
/** The mark a sandbox's frame carries until ctnet's identity chain sees it ("ctnt"); cleared to 0 there. */
export const UNSEEN_MARK = '0x63746e74';

/** ctnetd's fail-closed tables, with the bridges ctnet has now (from scratch, in one transaction). */
export function failsafeScript(bridges: readonly string[]): string[] {
  const I = FAILSAFE_INET;
  const B = FAILSAFE_BRIDGE;
  return [
    `add table ${I} { flags owner; }`,
    `delete table ${I}`,
    `add table ${I} { flags owner; }`,
    `add set ${I} bridges { type ifname; comment "ctnet's bridges"; }`,
    `add chain ${I} forward { type filter hook forward priority filter + 10; policy accept; }`,
    `add chain ${I} input { type filter hook input priority filter + 10; policy accept; }`,
    `add rule ${I} forward ct state != new accept`,
    `add rule ${I} forward ct label ${SEEN_LABEL} accept comment "seen by ctnet's forward chain"`,
    `add rule ${I} forward iifname @bridges counter drop comment "ctnet's table is gone: fail closed"`,
    `add rule ${I} forward oifname @bridges counter drop comment "ctnet's table is gone: fail closed"`,
    `add rule ${I} input ct state != new accept`,
    `add rule ${I} input ct label ${SEEN_LABEL} accept comment "seen by ctnet's input chain"`,
    `add rule ${I} input iifname @bridges counter drop comment "ctnet's table is gone: fail closed"`,
    // Empty NAT chains: the kernel applies the NAT of flows already established (masqueraded,
    // published ports) only while some NAT chain is hooked in; these keep them working meanwhile.
    `add chain ${I} nat_prerouting { type nat hook prerouting priority -90; policy accept; }`,
    `add chain ${I} nat_output { type nat hook output priority -90; policy accept; }`,
    `add chain ${I} nat_input { type nat hook input priority 110; policy accept; }`,
    `add chain ${I} nat_postrouting { type nat hook postrouting priority 110; policy accept; }`,
    ...failsafeBridges(bridges),
    `add table ${B} { flags owner; }`,
    `delete table ${B}`,
    `add table ${B} { flags owner; }`,
    `add chain ${B} before { type filter hook prerouting priority filter - 10; policy accept; }`,
    `add chain ${B} after { type filter hook prerouting priority filter + 10; policy accept; }`,
    `add rule ${B} before iifname "${PORT_GLOB}" meta mark set ${UNSEEN_MARK}`,
    `add rule ${B} after iifname "${PORT_GLOB}" meta mark ${UNSEEN_MARK} counter drop comment "ctnet's identity chain is gone: fail closed"`,
  ];
}

/** Replaces the bridges of the inet fail-closed table. */
export function failsafeBridges(bridges: readonly string[]): string[] {
  return [
    `flush set ${FAILSAFE_INET} bridges`,
    ...(bridges.length ? [`add element ${FAILSAFE_INET} bridges { ${bridges.map(q).join(', ')} }`] : []),
  ];
}

type Verb = 'add' | 'delete';

export function networkElements(verb: Verb, n: NetworkFacts): string[] {
  const lines = [`${verb} element ${TABLE} bridges { ${q(n.bridge)} }`];
  if (!n.isolate) lines.push(`${verb} element ${TABLE} bridge_pairs { ${q(n.bridge)} . ${q(n.bridge)} }`);
  if (n.hostAccess) lines.push(`${verb} element ${TABLE} host_access_bridges { ${q(n.bridge)} }`);
  if (n.dns) for (const s of n.subnets) lines.push(`${verb} element ${TABLE} dns${s.family} { ${s.gateway} . ${q(n.bridge)} }`);
  if (n.internal) lines.push(`${verb} element ${TABLE} internal_bridges { ${q(n.bridge)} }`);
  else {
    for (const s of n.subnets) lines.push(`${verb} element ${TABLE} masq${s.family} { ${s.cidr} }`);
    lines.push(...networkEgressElements(verb, n.subnets, n.egress ?? []));
  }
  const o = n.overlay;
  if (!o) return lines;
  lines.push(`${verb} element ${TABLE} overlays { ${q(o.device)} }`);
  // The overlay is part of the network: its bridge and its VXLAN device are a pair, both ways.
  if (!n.isolate) lines.push(`${verb} element ${TABLE} bridge_pairs { ${q(n.bridge)} . ${q(o.device)}, ${q(o.device)} . ${q(n.bridge)} }`);
  if (n.hostAccess) lines.push(`${verb} element ${TABLE} host_access_bridges { ${q(o.device)} }`);
  for (const c of o.cidrs.filter((x) => !x.includes(':'))) lines.push(`${verb} element ${TABLE} overlay4 { ${c} }`);
  lines.push(`${verb} element ${TABLE} vxlan_ids { ${o.port} . ${o.vni} }`);
  return [...lines, ...vtepElements(verb, o, o.vteps)];
}

type Egress = readonly { readonly family: 4 | 6; readonly ip: string }[];

/** A network's egress addresses: one element per subnet of a family that has one (delete: keys only). */
export function networkEgressElements(verb: Verb, subnets: readonly { family: 4 | 6; cidr: string }[], egress: Egress): string[] {
  return subnets.flatMap((s) => {
    const e = egress.find((x) => x.family === s.family);
    return e ? [`${verb} element ${TABLE} egress_network${s.family} { ${s.cidr}${verb === 'add' ? ` : ${e.ip}` : ''} }`] : [];
  });
}

/** A sandbox's egress addresses: one element per address of a family that has one (delete: keys only). */
export function sandboxEgressElements(verb: Verb, addresses: readonly { family: 4 | 6; ip: string }[], egress: Egress): string[] {
  return addresses.flatMap((a) => {
    const e = egress.find((x) => x.family === a.family);
    return e ? [`${verb} element ${TABLE} egress_sandbox${a.family} { ${a.ip}${verb === 'add' ? ` : ${e.ip}` : ''} }`] : [];
  });
}

/** Known VTEPs of an overlay network: one line per element, so a delete of one already gone spares the rest. */
export function vtepElements(verb: Verb, o: Pick<OverlayFacts, 'port' | 'vni'>, underlays: readonly string[]): string[] {
  return underlays.filter((u) => !u.includes(':')).map((u) => `${verb} element ${TABLE} vteps4 { ${u} . ${o.port} . ${o.vni} }`);
}

export function endpointElements(verb: Verb, e: EndpointFacts): string[] {
  const lines = e.addresses.map((a) => `${verb} element ${TABLE} endpoints${a.family} { ${a.ip} . ${q(e.bridge)} }`);
  lines.push(...sandboxEgressElements(verb, e.addresses, e.egress ?? []));
  if (!e.port) return lines;
  const p = q(e.port.name);
  const v6 = [...e.addresses.filter((a) => a.family === 6).map((a) => a.ip), linkLocalOf(e.port.mac)];
  const v4 = e.addresses.filter((a) => a.family === 4).map((a) => `${p} . ${a.ip}`);
  // The port goes last on add and first on delete: while it is in ports, its identity is complete.
  const identity = [
    `${verb} element ${BRIDGE_TABLE} port_mac { ${p} . ${e.port.mac} }`,
    ...(v4.length ? [`${verb} element ${BRIDGE_TABLE} port_ip4 { ${v4.join(', ')} }`] : []),
    `${verb} element ${BRIDGE_TABLE} port_ip6 { ${v6.map((a) => `${p} . ${a}`).join(', ')} }`,
    `${verb} element ${BRIDGE_TABLE} port_nd { ${v6.map((a) => `${p} . ${ipv6Hex(a)}`).join(', ')} }`,
  ];
  const port = `${verb} element ${BRIDGE_TABLE} ports { ${p} }`;
  return verb === 'add' ? [...lines, ...identity, port] : [...lines, port, ...identity];
}

/** Map elements of one published mapping, one line per map; delete lines name only the keys. */
export function portElements(verb: Verb, p: PortFacts): string[] {
  const m = p.mapping;
  const lines: string[] = [];
  for (const f of hostIpFamilies(m.hostIp)) {
    const target = p.targets.find((t) => t.family === f);
    if (!target) continue;
    const elements: string[] = [];
    for (let i = 0; i < m.count; i++) {
      const key = `${isWildcard(m.hostIp) ? '' : `${m.hostIp} . `}${m.proto} . ${m.hostPort + i}`;
      elements.push(verb === 'add' ? `${key} : ${target.ip} . ${m.containerPort + i}` : key);
    }
    lines.push(`${verb} element ${TABLE} ports${f}${isWildcard(m.hostIp) ? '_any' : ''} { ${elements.join(', ')} }`);
  }
  return lines;
}

export interface ServiceFacts {
  readonly name: string;
  readonly vip: string;
  /** Its IPv6 VIP, on a dual-stack network: the chain then has one rule per family. */
  readonly vip6?: string | undefined;
  readonly proto: 'tcp' | 'udp';
  readonly port: number;
  readonly targetPort: number;
  readonly affinity: 'none' | 'client-ip';
  /** Backend addresses, sorted (IPv4 first): slot i of the hash or random number goes to the family's i-th. */
  readonly backends: readonly string[];
  /** `--publish`: a host address (0.0.0.0: every IPv4 one) and port that lead to the service's chain too. */
  readonly publish?: { readonly hostIp: string; readonly hostPort: number } | undefined;
}

/** A service's chain: its one rule picks a backend. Service names are [A-Za-z0-9_.-]. */
export const serviceChain = (name: string) => `svc_${name}`;

/**
 * A fixed seed, so a client keeps its backend (--affinity client-ip) across table rewrites (gc)
 * while the backends stay the same.
 */
const AFFINITY_SEED = '0x63746e74';

/**
 * The rule of a service's chain: DNAT to one of its backends chosen by an anonymous map, keyed by
 * a random number (or a hash of the client's address) modulo their number: one lookup. No backend:
 * the client is refused at once (TCP reset, ICMP port unreachable) rather than left to time out.
 */
export function serviceRule(s: ServiceFacts): string {
  return familyRule(s, 4, s.backends, '');
}

/**
 * One family's rule. FAMILY_MATCH is empty for an IPv4-only service (its rule as it always was);
 * with an IPv6 VIP each rule starts with `meta nfproto`, since a `dnat ip` rule's counter would
 * count IPv6 packets too (the kernel skips a NAT of the other family; the rule still matches).
 */
function familyRule(s: ServiceFacts, family: 4 | 6, backends: readonly string[], familyMatch: string): string {
  const chain = `${TABLE} ${serviceChain(s.name)}`;
  if (backends.length === 0) {
    return `add rule ${chain} ${familyMatch}meta l4proto ${s.proto} counter reject${s.proto === 'tcp' ? ' with tcp reset' : ''} comment "service ${s.name}: no backend"`;
  }
  const ip = family === 4 ? 'ip' : 'ip6';
  const pick = s.affinity === 'client-ip' ? `jhash ${ip} saddr mod ${backends.length} seed ${AFFINITY_SEED}` : `numgen random mod ${backends.length}`;
  const map = backends.map((b, i) => `${i} : ${b} . ${s.targetPort}`).join(', ');
  return `add rule ${chain} ${familyMatch}meta l4proto ${s.proto} counter dnat ${ip} to ${pick} map { ${map} } comment "service ${s.name}"`;
}

/** The rules of a service's chain: one, or with an IPv6 VIP one per family (each over its family's backends). */
export function serviceRules(s: ServiceFacts): string[] {
  if (!s.vip6) return [serviceRule(s)];
  const v6 = (b: string) => b.includes(':');
  return [
    familyRule(s, 4, s.backends.filter((b) => !v6(b)), 'meta nfproto ipv4 '),
    familyRule(s, 6, s.backends.filter(v6), 'meta nfproto ipv6 '),
  ];
}

/** Replaces a service's backends (its rules, in the transaction they are part of). */
export function serviceBackendLines(s: ServiceFacts): string[] {
  return [`flush chain ${TABLE} ${serviceChain(s.name)}`, ...serviceRules(s)];
}

/** A published service's element: its host port leads to its chain (delete: the key only). */
export function servicePublishElement(verb: Verb, s: ServiceFacts): string[] {
  const p = s.publish;
  if (!p) return [];
  const any = isWildcard(p.hostIp);
  const key = `${any ? '' : `${p.hostIp} . `}${s.proto} . ${p.hostPort}`;
  return [`${verb} element ${TABLE} service_ports4${any ? '_any' : ''} { ${key}${verb === 'add' ? ` : goto ${serviceChain(s.name)}` : ''} }`];
}

/** A service's chain and elements; delete: elements first (the maps' gotos hold the chain), then the chain. */
export function serviceLines(verb: Verb, s: ServiceFacts): string[] {
  const key = `${s.vip} . ${s.proto} . ${s.port}`;
  if (verb === 'delete') {
    return [
      ...servicePublishElement('delete', s),
      `delete element ${TABLE} services4 { ${key} }`,
      `delete element ${TABLE} service_vips4 { ${s.vip} }`,
      ...(s.vip6 ? [`delete element ${TABLE} services6 { ${s.vip6} . ${s.proto} . ${s.port} }`, `delete element ${TABLE} service_vips6 { ${s.vip6} }`] : []),
      `delete chain ${TABLE} ${serviceChain(s.name)}`,
    ];
  }
  return [
    `add chain ${TABLE} ${serviceChain(s.name)}`,
    ...serviceBackendLines(s),
    `add element ${TABLE} service_vips4 { ${s.vip} }`,
    `add element ${TABLE} services4 { ${key} : goto ${serviceChain(s.name)} }`,
    ...(s.vip6 ? [`add element ${TABLE} service_vips6 { ${s.vip6} }`, `add element ${TABLE} services6 { ${s.vip6} . ${s.proto} . ${s.port} : goto ${serviceChain(s.name)} }`] : []),
    ...servicePublishElement('add', s),
  ];
}

/** Adds the tables if missing, then deletes them: succeeds whether or not they existed. */
export function dropTableScript(): string {
  return `add table ${BRIDGE_TABLE}\ndelete table ${BRIDGE_TABLE}\nadd table ${TABLE}\ndelete table ${TABLE}\n`;
}

/** The whole table from scratch, atomically replacing whatever is there (used by gc). */
export function fullScript(networks: readonly NetworkFacts[], endpoints: readonly EndpointFacts[], ports: readonly PortFacts[] = [], policy?: PolicyElements,
  services: readonly ServiceFacts[] = []): string {
  if (networks.length === 0) return dropTableScript();
  return [
    dropTableScript().trimEnd(),
    baseScript().trimEnd(),
    ...networks.flatMap((n) => networkElements('add', n)),
    ...endpoints.flatMap((e) => endpointElements('add', e)),
    ...ports.flatMap((p) => portElements('add', p)),
    ...(policy ? policyLines(policy) : []),
    ...services.flatMap((x) => serviceLines('add', x)),
  ].join('\n') + '\n';
}
