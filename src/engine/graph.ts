// The live topology as plain data (`ctnet graph`): this host (and, in a cluster, the other hosts'
// sandboxes on shared overlay networks), its networks with their devices, its sandboxes with their
// interfaces, addresses and host-side veths, published ports, and each policy rule as edges between
// the sandboxes (or world, host, CIDR) its selectors stand for now. The records come from the store;
// every device is looked up in the kernel, so a node says whether it is really there.
import { hostname } from 'node:os';
import type { LinkInfo } from '../kernel/backend.ts';
import type { Netns } from '../model/netns.ts';
import type { ChangeEvent } from '../store/events.ts';
import { parseAddr } from '../model/cidr.ts';
import { formatPortFilter, formatSelector, resolve, type PolicyWorld, type Selector } from '../model/policy.ts';
import { formatPortSpec } from '../model/ports.ts';
import type { Ctx } from './context.ts';
import { policyWorld, toRule } from './policy.ts';
import { defaultCarrier, existingNetwork, sandboxNetns } from './records.ts';

export interface GraphInterface {
  readonly ifname: string;
  readonly network: string;
  readonly mac: string;
  readonly addresses: string[];
  /** The host's end of the veth, on the network's bridge. */
  readonly hostVeth: string;
  /** Both ends exist in the kernel (false: gc has something to repair). */
  readonly present: boolean;
  /** It carries the sandbox's default route (IPv4 or IPv6). */
  readonly defaultRoute: boolean;
}

export interface GraphSandbox {
  readonly name: string;
  readonly host: string;
  readonly state: string;
  readonly labels: Record<string, string>;
  readonly interfaces: GraphInterface[];
  /** Published ports, as given (8080:80/tcp). */
  readonly ports: string[];
}

export interface GraphNetwork {
  readonly name: string;
  readonly driver: string;
  /** Its bridge; present: the kernel has it. */
  readonly device: { readonly name: string; readonly present: boolean };
  readonly subnets: string[];
  readonly internal: boolean;
  readonly isolate: boolean;
  readonly hostAccess: boolean;
  readonly egress: string[];
  readonly overlay?: {
    readonly vni: number;
    readonly subnet: string;
    readonly vxlan: { readonly name: string; readonly present: boolean };
    readonly peers: { readonly host: string; readonly subnet: string; readonly underlay: string }[];
  } | undefined;
}

/** Another host's sandbox on an overlay network this host has a side of (from etcd's directory). */
export interface GraphRemoteSandbox {
  readonly name: string;
  readonly host: string;
  readonly networks: string[];
  readonly addresses: string[];
  readonly labels: Record<string, string>;
}

export interface GraphRule {
  readonly id: number;
  readonly name: string;
  readonly action: 'allow' | 'deny';
  readonly from: string;
  readonly to: string;
  /** 80/tcp, 5000-5010/udp, icmp; "any" for every protocol and port. */
  readonly port: string;
  /** The pairs it covers now, in (from, to) order: sandbox names, or "world", "host", "cidr:TEXT". */
  readonly edges: GraphEdge[];
}

export interface GraphEdge {
  readonly from: string;
  readonly to: string;
}

const byText = (a: string, b: string) => (a < b ? -1 : a > b ? 1 : 0);
const byEdge = (a: GraphEdge, b: GraphEdge) => byText(a.from, b.from) || byText(a.to, b.to);
const edgeKey = (e: GraphEdge) => `${e.from}\n${e.to}`;

/** Two lists in (from, to) order as one. */
function mergeEdges(a: readonly GraphEdge[], b: readonly GraphEdge[]): GraphEdge[] {
  const out: GraphEdge[] = [];
  let i = 0;
  let j = 0;
  while (i < a.length && j < b.length) out.push(byEdge(a[i]!, b[j]!) <= 0 ? a[i++]! : b[j++]!);
  while (i < a.length) out.push(a[i++]!);
  while (j < b.length) out.push(b[j++]!);
  return out;
}

export interface Graph {
  readonly host: { readonly name: string; readonly underlay: string | null; readonly cluster: boolean };
  readonly networks: GraphNetwork[];
  readonly sandboxes: GraphSandbox[];
  readonly remoteSandboxes: GraphRemoteSandbox[];
  readonly policy: GraphRule[];
}

/**
 * Where each host-side veth's peer lives, as seen from ctnet's namespace: undefined for a link with
 * no peer elsewhere, else the /run/netns name its namespace id has (null: an id with no name).
 */
export function peerNamespaces(
  hostLinks: readonly Pick<LinkInfo, 'ifname' | 'link_netnsid'>[],
  ids: readonly { readonly nsid: number; readonly name?: string }[],
): Map<string, string | null> {
  const nsName = new Map(ids.map((x) => [x.nsid, x.name]));
  return new Map(hostLinks.flatMap((l) => (l.link_netnsid === undefined ? [] : [[l.ifname, nsName.get(l.link_netnsid) ?? null] as const])));
}

/**
 * What the host side says of a veth attachment: 'there' when its peer is in the sandbox's
 * namespace (both ends exist), 'gone' when the host end or its peer is gone, 'ask-inside' when
 * the peer's namespace cannot be named from here (only a read inside the sandbox can tell).
 */
export function hostSide(hostVeth: string, ns: Netns, peers: ReadonlyMap<string, string | null>): 'there' | 'gone' | 'ask-inside' {
  const name = peers.get(hostVeth);
  if (name === undefined) return 'gone';
  return 'name' in ns && ns.name === name ? 'there' : 'ask-inside';
}

/** The sandboxes (or pseudo nodes) a selector stands for now. */
function members(sel: Selector, w: PolicyWorld, only: ReadonlySet<string> | undefined): string[] {
  if (sel.kind === 'world') return ['world'];
  if (sel.kind === 'host') return ['host'];
  const ranges = [...resolve(sel, w, 4).map((r) => ({ f: 4, r })), ...resolve(sel, w, 6).map((r) => ({ f: 6, r }))];
  // Sorted (this host's come so from the store, other hosts' after them): a rule's edges are then
  // in (from, to) order, which a delta of its edges keeps (applyGraphDelta merges in that order).
  const names = w.sandboxes
    .filter((s) => (!only || only.has(s.name)) && s.addresses.some((a) => ranges.some(({ f, r }) => f === a.family && r[0] <= a.n && a.n <= r[1])))
    .map((s) => s.name)
    .sort(byText);
  if (sel.kind === 'cidr' && names.length === 0) return [`cidr:${sel.text}`];
  return names;
}

export async function buildGraph(ctx: Ctx, options: { network?: string | undefined } = {}): Promise<Graph> {
  return build(ctx, options, undefined);
}

/**
 * The graph after a change, from the graph before it: the sandboxes the change touched (by name)
 * are read again from the store and the kernel, the others are taken from prev as they were; the
 * networks, other hosts' sandboxes and policy edges, which are cheap store reads and two kernel
 * reads whatever the size, are built again. What only the kernel changed (a veth deleted by hand)
 * shows in an untouched sandbox at the next full build, not here.
 */
export async function updateGraph(ctx: Ctx, prev: Graph, touched: ReadonlySet<string>): Promise<Graph> {
  return build(ctx, {}, { prev: new Map(prev.sandboxes.map((s) => [s.name, s])), touched });
}

async function build(ctx: Ctx, options: { network?: string | undefined }, reuse: { prev: ReadonlyMap<string, GraphSandbox>; touched: ReadonlySet<string> } | undefined): Promise<Graph> {
  const { store, kernel } = ctx;
  if (options.network !== undefined) existingNetwork(store, options.network);
  // One read of the host's links (and of the namespace ids their peers live in) stands for every
  // sandbox: a host veth whose peer is in the sandbox's namespace is both ends there, so 500
  // sandboxes cost two ip runs, not 500 (bench/graph.ts). Only what cannot be told from the host
  // side (a macvlan/ipvlan interface, a peer in a namespace with no /run/netns name other than the
  // sandbox's) is read in the sandbox's namespace.
  const [hostLinks, ids] = await Promise.all([kernel.links(), kernel.netnsIds()]);
  const links = new Set(hostLinks.map((l) => l.ifname));
  const peers = peerNamespaces(hostLinks, ids);
  const m = store.member();
  const self = m?.host ?? hostname().split('.')[0]!;
  const nets = store.networks().filter((n) => options.network === undefined || n.name === options.network);
  const networks = nets.map((n): GraphNetwork => {
    const o = store.overlay(n.name);
    return {
      name: n.name, driver: n.driver, device: { name: n.bridge, present: links.has(n.bridge) },
      subnets: store.subnets(n.name).map((s) => s.cidr), internal: n.internal, isolate: n.isolate, hostAccess: n.hostAccess,
      egress: store.networkEgress(n.name).map((e) => e.ip),
      overlay: o && {
        vni: o.vni, subnet: o.cidr, vxlan: { name: o.device, present: links.has(o.device) },
        peers: store.peers(n.name).map((p) => ({ host: p.host, subnet: p.subnet, underlay: p.underlay })),
      },
    };
  });
  const shown = new Set(nets.map((n) => n.name));
  const lower = new Set(store.networks().filter((n) => n.lower).map((n) => n.name));
  const sandboxes: GraphSandbox[] = [];
  for (const s of store.sandboxes()) {
    const kept = reuse && !reuse.touched.has(s.name) ? reuse.prev.get(s.name) : undefined;
    if (kept) {
      sandboxes.push(kept);
      continue;
    }
    const attachments = store.attachments({ sandbox: s.name }).filter((a) => shown.has(a.network));
    if (attachments.length === 0 && options.network !== undefined) continue;
    const present = kernel.isNetns(s.netns);
    const ns = sandboxNetns(s);
    let inner: Promise<Set<string>> | undefined;
    const innerLinks = () => (inner ??= present ? kernel.links(ns).then((ls) => new Set(ls.map((l) => l.ifname))) : Promise.resolve(new Set<string>()));
    const there = async (a: { network: string; ifname: string; hostVeth: string }): Promise<boolean> => {
      if (!present) return false;
      if (lower.has(a.network)) return (await innerLinks()).has(a.ifname); // no host end
      const seen = hostSide(a.hostVeth, ns, peers);
      return seen === 'ask-inside' ? (await innerLinks()).has(a.ifname) : seen === 'there';
    };
    const carriers = new Set(([4, 6] as const).map((f) => defaultCarrier(store, s.name, f)));
    const addrs = store.addresses({ sandbox: s.name });
    const interfaces: GraphInterface[] = [];
    for (const a of attachments) {
      interfaces.push({
        ifname: a.ifname, network: a.network, mac: a.mac, hostVeth: a.hostVeth,
        addresses: addrs.filter((x) => x.network === a.network).map((x) => x.ip),
        present: await there(a),
        defaultRoute: carriers.has(a.network),
      });
    }
    sandboxes.push({
      name: s.name, host: self, state: s.state,
      labels: Object.fromEntries(store.labels(s.name).map((l) => [l.key, l.value])),
      interfaces,
      ports: store.ports({ sandbox: s.name }).map(formatPortSpec),
    });
  }
  const remoteSandboxes = store.remoteSandboxes()
    .filter((r) => r.networks.some((n) => shown.has(n)))
    .map((r) => ({ name: r.name, host: r.host, networks: [...r.networks], addresses: [...r.addresses], labels: { ...r.labels } }));
  const world = policyWorld(store);
  const visible = options.network === undefined ? undefined : new Set([...sandboxes.map((s) => s.name), ...remoteSandboxes.map((r) => r.name)]);
  const policy = store.policies().map((row): GraphRule => {
    const r = toRule(row);
    const from = members(r.from, world, visible);
    const to = members(r.to, world, visible);
    return {
      id: r.id, name: r.name, action: r.action, from: formatSelector(r.from), to: formatSelector(r.to), port: r.port ? formatPortFilter(r.port) : 'any',
      edges: from.flatMap((a) => to.filter((b) => b !== a).map((b) => ({ from: a, to: b }))),
    };
  }).filter((r) => options.network === undefined || r.edges.length > 0);
  return { host: { name: self, underlay: m?.underlay ?? null, cluster: m !== undefined }, networks, sandboxes, remoteSandboxes, policy };
}

/**
 * What differs between two graphs, for the live page: whole nodes (a sandbox, a rule) that are new
 * or changed, the names and ids that went away, and the small lists (networks, other hosts'
 * sandboxes, the host) whole when they changed. applyGraphDelta(prev, graphDelta(prev, next))
 * equals next.
 */
export interface GraphDelta {
  readonly host?: Graph['host'];
  readonly networks?: GraphNetwork[];
  readonly remoteSandboxes?: GraphRemoteSandbox[];
  readonly sandboxes: GraphSandbox[];
  readonly removed: string[];
  readonly policy: GraphRule[];
  /**
   * Rules whose selectors stayed and whose pairs changed, when the pairs that came and went are
   * fewer than the rule's pairs: a sandbox that joins a label rule's selector at 500 sandboxes
   * adds ~170 pairs to its 55,000 (3.4 MB of JSON per event when the rule went whole).
   */
  readonly policyEdges?: GraphEdgeDelta[];
  readonly removedPolicy: number[];
}

export interface GraphEdgeDelta {
  readonly id: number;
  /** In (from, to) order. */
  readonly added: GraphEdge[];
  readonly removed: GraphEdge[];
}

/** A rule's change as pairs that came and went, or undefined when sending it whole is as small (or its pairs repeat). */
function edgeDelta(prev: GraphRule, next: GraphRule): GraphEdgeDelta | undefined {
  if (prev.name !== next.name || prev.action !== next.action || prev.from !== next.from || prev.to !== next.to || prev.port !== next.port) return undefined;
  const a = prev.edges;
  const b = next.edges;
  if (!ordered(a) || !ordered(b)) return undefined;
  // One walk of both lists in (from, to) order: sets of 55,000 string keys per rule took 200 ms.
  const added: GraphEdge[] = [];
  const removed: GraphEdge[] = [];
  for (let i = 0, j = 0; i < a.length || j < b.length;) {
    const c = i >= a.length ? 1 : j >= b.length ? -1 : byEdge(a[i]!, b[j]!);
    if (c === 0) {
      i++;
      j++;
    } else if (c < 0) removed.push(a[i++]!);
    else added.push(b[j++]!);
    if (added.length + removed.length >= b.length) return undefined;
  }
  return { id: next.id, added, removed };
}

/** In strict (from, to) order: no pair twice. */
const ordered = (edges: readonly GraphEdge[]) => edges.every((e, i) => i === 0 || byEdge(edges[i - 1]!, e) < 0);

const same = (a: unknown, b: unknown) => JSON.stringify(a) === JSON.stringify(b);

/** Rules compared field by field: a label rule at 500 sandboxes has 55,000 edges, too many to stringify per change. */
function sameRule(a: GraphRule | undefined, b: GraphRule): boolean {
  if (!a || a.name !== b.name || a.action !== b.action || a.from !== b.from || a.to !== b.to || a.port !== b.port || a.edges.length !== b.edges.length) return false;
  return a.edges.every((e, i) => e.from === b.edges[i]!.from && e.to === b.edges[i]!.to);
}

export function graphDelta(prev: Graph, next: Graph): GraphDelta {
  const before = new Map(prev.sandboxes.map((s) => [s.name, s]));
  const rulesBefore = new Map(prev.policy.map((r) => [r.id, r]));
  const names = new Set(next.sandboxes.map((s) => s.name));
  const ids = new Set(next.policy.map((r) => r.id));
  const policy: GraphRule[] = [];
  const policyEdges: GraphEdgeDelta[] = [];
  for (const r of next.policy) {
    const b = rulesBefore.get(r.id);
    if (b === r || sameRule(b, r)) continue;
    const e = b && edgeDelta(b, r);
    if (e) policyEdges.push(e);
    else policy.push(r);
  }
  return {
    ...(same(prev.host, next.host) ? {} : { host: next.host }),
    ...(same(prev.networks, next.networks) ? {} : { networks: next.networks }),
    ...(same(prev.remoteSandboxes, next.remoteSandboxes) ? {} : { remoteSandboxes: next.remoteSandboxes }),
    // A kept node is the same object (updateGraph): no need to compare it.
    sandboxes: next.sandboxes.filter((s) => { const b = before.get(s.name); return b !== s && !same(b, s); }),
    removed: prev.sandboxes.filter((s) => !names.has(s.name)).map((s) => s.name),
    policy,
    ...(policyEdges.length ? { policyEdges } : {}),
    removedPolicy: prev.policy.filter((r) => !ids.has(r.id)).map((r) => r.id),
  };
}

/** prev with delta applied: what the page does (page.html applyDelta), in the store's order (names, ids). */
export function applyGraphDelta(prev: Graph, d: GraphDelta): Graph {
  const byName = new Map(prev.sandboxes.map((s) => [s.name, s]));
  for (const n of d.removed) byName.delete(n);
  for (const s of d.sandboxes) byName.set(s.name, s);
  const byId = new Map(prev.policy.map((r) => [r.id, r]));
  for (const id of d.removedPolicy) byId.delete(id);
  for (const r of d.policy) byId.set(r.id, r);
  for (const e of d.policyEdges ?? []) {
    const r = byId.get(e.id);
    if (!r) throw new Error(`the delta changes the pairs of rule ${e.id}, which the graph does not have`);
    const gone = new Set(e.removed.map(edgeKey));
    byId.set(e.id, { ...r, edges: mergeEdges(r.edges.filter((x) => !gone.has(edgeKey(x))), e.added) });
  }
  return {
    host: d.host ?? prev.host,
    networks: d.networks ?? prev.networks,
    sandboxes: [...byName.values()].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0)),
    remoteSandboxes: d.remoteSandboxes ?? prev.remoteSandboxes,
    policy: [...byId.values()].sort((a, b) => a.id - b.id),
  };
}

/** The sandboxes a batch of changes touches, by name; 'all' when it touches every node (the host's name). */
export function touchedSandboxes(events: readonly ChangeEvent[]): Set<string> | 'all' {
  const names = new Set<string>();
  for (const e of events) {
    if (e.kind === 'member') return 'all';
    if (e.kind === 'sandbox') names.add(e.data.name);
    else if ('sandbox' in e.data && typeof e.data.sandbox === 'string') names.add(e.data.sandbox);
  }
  return names;
}

/** Addresses sort numerically in the renderings (10.0.0.10 after 10.0.0.9). */
export function addressKey(ip: string): bigint {
  try {
    return parseAddr('address', ip).n;
  } catch {
    return 0n;
  }
}
