// The seam between ctnet and the kernel. Everything above it passes plain data: plans of operations
// (src/plan/ops.ts) to apply, and typed views of what the kernel holds. Implementations: exec/
// (iproute2, nft, conntrack processes), fake.ts (in memory, for unit tests of the engine). Every
// failure is a KernelError with its kind decided here, so nothing above matches error text.
import type { Netns } from '../model/netns.ts';
import type { Flow } from '../plan/flows.ts';
import type { Op } from '../plan/ops.ts';
import type { NftCounts } from './nftcounts.ts';

export interface LinkInfo {
  readonly ifindex: number;
  readonly ifname: string;
  readonly link_index?: number;
  readonly link_netnsid?: number;
  readonly master?: string;
  readonly operstate?: string;
  readonly address?: string;
  readonly mtu?: number;
  readonly flags?: string[];
  readonly linkinfo?: {
    info_kind?: string;
    /** A VXLAN device's settings (ip -d). */
    info_data?: { id?: number; local?: string; link?: string; port?: number; learning?: boolean };
  };
}

/** A link's traffic counters (ip -s): rx is what the link received, tx what it sent. */
export interface LinkStats {
  readonly ifname: string;
  readonly rx: { readonly bytes: number; readonly packets: number };
  readonly tx: { readonly bytes: number; readonly packets: number };
}

export interface AddrInfo {
  readonly ifname: string;
  readonly addr_info: { family: string; local: string; prefixlen: number; scope: string }[];
}

export interface RouteInfo {
  readonly dst: string;
  readonly gateway?: string;
  readonly dev?: string;
  readonly protocol?: string;
  readonly scope?: string;
  readonly prefsrc?: string;
  /** e.g. onlink */
  readonly flags?: string[];
}

export interface NeighInfo {
  readonly dst: string;
  readonly dev: string;
  readonly lladdr?: string;
  readonly state?: string[];
}

export interface FdbInfo {
  readonly mac: string;
  readonly ifname?: string;
  readonly master?: string;
  readonly state?: string;
  readonly flags?: string[];
  readonly vlan?: number;
  /** A VXLAN device's entry: the remote VTEP a MAC is reached at. */
  readonly dst?: string;
}

export interface NftChain {
  readonly family: string;
  readonly table: string;
  readonly name: string;
  readonly hook?: string;
  readonly policy?: string;
  readonly prio?: number;
}

export interface Listener {
  readonly proto: 'tcp' | 'udp' | 'sctp';
  /** The bound address; '*' , 0.0.0.0 and :: mean every address. */
  readonly address: string;
  readonly port: number;
  /** "name (pid N)" of the processes holding it, when ss could see them. */
  readonly processes: string[];
}

/** One probe of `ctnet trace`: a new flow from a namespace with a fixed source port. */
export interface ProbeSpec {
  readonly proto: 'tcp' | 'udp' | 'icmp';
  readonly dst: string;
  readonly port: number;
  readonly sport: number;
  readonly timeoutMs: number;
}
export interface ProbeResult {
  /** The tool succeeded: TCP connected, ICMP answered, UDP sent. */
  readonly ok: boolean;
  /** Something came back (UDP: a datagram). */
  readonly answered: boolean;
  /** TCP refused (an RST), or ICMP unreachable. */
  readonly refused?: boolean;
  readonly detail: string;
}
/**
 * A datagram ctnet sends itself (to 127.0.0.1:port, payload token as hex) once the probe is done,
 * marked for tracing by a rule of the trace table: the kernel queues trace events in order, so
 * when the marker's event is in, so is every event of the probe's packets, and the monitor can
 * stop at once instead of waiting for a quiet moment.
 */
export interface TraceMarker {
  readonly port: number;
  /** 16 hex digits, the first not 0 (nft prints the payload without leading zeros). */
  readonly token: string;
}

export interface TraceMonitor {
  /**
   * Ends the monitor; its `trace id ...` lines. marker: send the marker (its rule is in) and end
   * when its event is in; onMarked runs once it is sent (the trace table may go then).
   */
  stop(opts?: { readonly marker?: boolean; readonly onMarked?: () => void }): Promise<string[]>;
}

export interface KernelBackend {
  /**
   * Applies operations in order, stopping at the first failure (a KernelError). Consecutive
   * operations may be sent as one batch, so on failure any of them may have happened: the applier
   * registers inverses before it calls this.
   */
  apply(ops: readonly Op[]): Promise<void>;

  // ---- reads (never printed by --explain) ----
  /** Equivalent to: ip -j -d [-n NS] link show */
  links(ns?: Netns): Promise<LinkInfo[]>;
  /** Equivalent to: ip -j [-n NS] link show dev NAME; undefined when there is no such link. */
  link(name: string, ns?: Netns): Promise<LinkInfo | undefined>;
  /** Equivalent to: ip -j -s link show (every link's counters, one read: the live page's counters) */
  linkStats(ns?: Netns): Promise<LinkStats[]>;
  /** Equivalent to: ip -j link show master BRIDGE */
  linksOf(bridge: string): Promise<LinkInfo[]>;
  /** Equivalent to: ip -j [-n NS] addr show */
  addrs(ns?: Netns): Promise<AddrInfo[]>;
  /** Equivalent to: ip -j [-n NS] -4 route show; ip -j [-n NS] -6 route show */
  routes(ns?: Netns): Promise<RouteInfo[]>;
  /** Equivalent to: ip -j [-n NS] neigh show */
  neighbours(ns?: Netns): Promise<NeighInfo[]>;
  /** Equivalent to: bridge -j fdb show br BRIDGE */
  fdb(bridge: string): Promise<FdbInfo[]>;
  /** Equivalent to: bridge -j fdb show dev DEV (a VXLAN device's own entries and the rest) */
  fdbOf(dev: string): Promise<FdbInfo[]>;
  /**
   * Equivalent to: nft -j list table FAMILY ctnet (inet by default); undefined when it does not
   * exist. terse: nft -t, the sets and maps without their elements, for a reader of rules and their
   * counters: with 500 sandboxes under label policy the elements are 14.7 MB of JSON, the rest 32 KB.
   */
  nftTable(family?: 'inet' | 'bridge', options?: { readonly terse?: boolean }): Promise<unknown[] | undefined>;
  /**
   * How many rules each chain and elements each named set of `inet ctnet` and `bridge ctnet` hold
   * (what `nft -j list table` would show, counted, without listing the elements).
   */
  nftCounts(): Promise<NftCounts>;
  /** Equivalent to: nft list table inet ctnet (text, for humans); undefined when it does not exist. */
  nftTableText(): Promise<string | undefined>;
  /** Equivalent to: nft -j list chains; every chain of every table. */
  nftChains(): Promise<NftChain[]>;
  /** Equivalent to: nft -j list tables; every table, with its family. */
  nftTables(): Promise<{ family: string; table: string }[]>;
  /** Equivalent to: conntrack -L (both families). */
  flows(): Promise<Flow[]>;
  /**
   * Equivalent to: ss -Hlnp -t -u [--sctp]. With `only`, a backend may answer [] without asking ss
   * when no socket of this namespace has a protocol and port it accepts (a cheaper read first).
   */
  listeners(sctp: boolean, only?: (proto: 'tcp' | 'udp', port: number) => boolean): Promise<Listener[]>;
  /** A sysctl of ctnet's namespace; undefined when the key does not exist. */
  sysctl(key: string): string | undefined;
  /** Names of the netns files in /run/netns (ip netns list). */
  netnsNames(): string[];
  /** Names in /etc/netns that hold a resolv.conf (ctnet writes one per sandbox with DNS). */
  resolvNames(): string[];
  /**
   * Does systemd-resolved serve this network namespace (it runs, ctnet runs in the init network
   * namespace where it lives, and resolvectl is there)? Only then do networks register with it: a
   * lab's namespaces must never name their links to the host's resolver.
   */
  resolvedHere(): Promise<boolean>;
  /** A link's DNS servers and domains in systemd-resolved (routing-only ones with their ~); undefined when it has no such link. */
  resolvedLink(dev: string): Promise<{ readonly dns: readonly string[]; readonly domains: readonly string[] } | undefined>;
  /** True when PATH is a network namespace file. */
  isNetns(path: string): boolean;
  /**
   * Equivalent to: ip -j netns list. The ids ctnet's namespace gives the namespaces named in
   * /run/netns (a veth's link_netnsid), one per name that has an id. Not `ip netns list-id`: with
   * iproute2 6.1 it returns only the first 134 ids however many there are (300 here), so a graph
   * of more sandboxes read inside each sandbox whose id was left out (docs/ui.md).
   */
  netnsIds(): Promise<{ readonly nsid: number; readonly name?: string }[]>;
  /** PIDs of the processes in a namespace. */
  netnsPids(ns: Netns): number[];
  /** The first line of TOOL's version, or undefined when it is not installed (ctnet doctor). */
  toolVersion(tool: 'ip' | 'nft' | 'conntrack'): Promise<string | undefined>;
  /** Equivalent to: iptables-legacy -S FORWARD; undefined when there is none (ctnet doctor). */
  legacyForward(): Promise<string | undefined>;

  // ---- ctnet trace: observation with a real probe (src/kernel/exec/trace.ts) ----
  /** Equivalent to: nft monitor trace (in ctnet's namespace), until stop(). */
  traceMonitor(marker?: TraceMarker): Promise<TraceMonitor>;
  /** Sends one probe from NS (ctnet's own namespace when undefined): nc with a fixed source port, or ping. */
  probe(ns: Netns | undefined, p: ProbeSpec): Promise<ProbeResult>;
  /** Equivalent to: ip [-n NS] -j route get DST */
  routeGet(ns: Netns | undefined, dst: string): Promise<{ dst: string; gateway?: string; dev?: string; prefsrc?: string; type?: string }[]>;
}
