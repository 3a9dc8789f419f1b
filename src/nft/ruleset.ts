// ctnet's one nftables table, as text. Pure: the engine decides what, the kernel layer applies it.
//
// Every per-network and per-sandbox fact is a set element, never a rule, so the rules below are the
// same whatever the number of networks or sandboxes and each packet costs a few hash lookups.
export const TABLE = 'inet ctnet';

export interface NetworkFacts {
  readonly bridge: string;
  readonly internal: boolean;
  readonly subnets: readonly { readonly family: 4 | 6; readonly cidr: string }[];
}

export interface EndpointFacts {
  readonly bridge: string;
  readonly addresses: readonly { readonly family: 4 | 6; readonly ip: string }[];
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
add set ${TABLE} masq4 { type ipv4_addr; flags interval; comment "subnets whose egress is masqueraded"; }
add set ${TABLE} masq6 { type ipv6_addr; flags interval; comment "subnets whose egress is masqueraded"; }
add set ${TABLE} endpoints4 { type ipv4_addr . ifname; comment "sandbox address . its bridge"; }
add set ${TABLE} endpoints6 { type ipv6_addr . ifname; comment "sandbox address . its bridge"; }
add chain ${TABLE} forward { type filter hook forward priority filter; policy accept; }
add chain ${TABLE} postrouting { type nat hook postrouting priority srcnat; policy accept; }
flush chain ${TABLE} forward
flush chain ${TABLE} postrouting
add rule ${TABLE} forward ct state established,related accept
add rule ${TABLE} forward iifname @bridges ip saddr . iifname != @endpoints4 counter drop comment "spoofed source"
add rule ${TABLE} forward iifname @bridges ip6 saddr . iifname != @endpoints6 counter drop comment "spoofed source"
add rule ${TABLE} forward iifname . oifname @bridge_pairs accept
add rule ${TABLE} forward iifname @internal_bridges counter drop comment "internal network: no way out"
add rule ${TABLE} forward oifname @internal_bridges counter drop comment "internal network: no way in"
add rule ${TABLE} forward iifname @bridges oifname @bridges counter drop comment "networks are isolated from each other"
add rule ${TABLE} postrouting ip saddr @masq4 oifname != @bridges counter masquerade
add rule ${TABLE} postrouting ip6 saddr @masq6 oifname != @bridges counter masquerade
`;
}

type Verb = 'add' | 'delete';

export function networkElements(verb: Verb, n: NetworkFacts): string[] {
  const lines = [
    `${verb} element ${TABLE} bridges { ${q(n.bridge)} }`,
    `${verb} element ${TABLE} bridge_pairs { ${q(n.bridge)} . ${q(n.bridge)} }`,
  ];
  if (n.internal) lines.push(`${verb} element ${TABLE} internal_bridges { ${q(n.bridge)} }`);
  else for (const s of n.subnets) lines.push(`${verb} element ${TABLE} masq${s.family} { ${s.cidr} }`);
  return lines;
}

export function endpointElements(verb: Verb, e: EndpointFacts): string[] {
  return e.addresses.map((a) => `${verb} element ${TABLE} endpoints${a.family} { ${a.ip} . ${q(e.bridge)} }`);
}

/** Adds the table if missing, then deletes it: succeeds whether or not it existed. */
export function dropTableScript(): string {
  return `add table ${TABLE}\ndelete table ${TABLE}\n`;
}

/** The whole table from scratch, atomically replacing whatever is there (used by gc). */
export function fullScript(networks: readonly NetworkFacts[], endpoints: readonly EndpointFacts[]): string {
  if (networks.length === 0) return dropTableScript();
  return [
    dropTableScript().trimEnd(),
    baseScript().trimEnd(),
    ...networks.flatMap((n) => networkElements('add', n)),
    ...endpoints.flatMap((e) => endpointElements('add', e)),
  ].join('\n') + '\n';
}
