// The live topology as plain data (`ctnet graph`): this host (and, in a cluster, the other hosts'
// sandboxes on shared overlay networks), its networks with their devices, its sandboxes with their
// interfaces, addresses and host-side veths, published ports, and each policy rule as edges between
// the sandboxes (or world, host, CIDR) its selectors stand for now. The records come from the store;
// every device is looked up in the kernel, so a node says whether it is really there.
import { hostname } from 'node:os';
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
  /** The pairs it covers now: sandbox names, or "world", "host", "cidr:TEXT". */
  readonly edges: { readonly from: string; readonly to: string }[];
}

export interface Graph {
  readonly host: { readonly name: string; readonly underlay: string | null; readonly cluster: boolean };
  readonly networks: GraphNetwork[];
  readonly sandboxes: GraphSandbox[];
  readonly remoteSandboxes: GraphRemoteSandbox[];
  readonly policy: GraphRule[];
}

/** The sandboxes (or pseudo nodes) a selector stands for now. */
function members(sel: Selector, w: PolicyWorld, only: ReadonlySet<string> | undefined): string[] {
  if (sel.kind === 'world') return ['world'];
  if (sel.kind === 'host') return ['host'];
  const ranges = [...resolve(sel, w, 4).map((r) => ({ f: 4, r })), ...resolve(sel, w, 6).map((r) => ({ f: 6, r }))];
  const names = w.sandboxes
    .filter((s) => (!only || only.has(s.name)) && s.addresses.some((a) => ranges.some(({ f, r }) => f === a.family && r[0] <= a.n && a.n <= r[1])))
    .map((s) => s.name);
  if (sel.kind === 'cidr' && names.length === 0) return [`cidr:${sel.text}`];
  return names;
}

/**
 * inner: false reads only ctnet's own namespace (one `ip link` in all), not each sandbox's: a veth's
 * two ends live and die together, so its host end stands for both. The live page rebuilds the
 * graph on every change, and a read per sandbox namespace costs seconds at 500 sandboxes. A
 * sandbox on a macvlan/ipvlan network (no host end) is still looked at inside.
 */
export async function buildGraph(ctx: Ctx, options: { network?: string | undefined; inner?: boolean } = {}): Promise<Graph> {
  const { store, kernel } = ctx;
  if (options.network !== undefined) existingNetwork(store, options.network);
  const links = new Set((await kernel.links()).map((l) => l.ifname));
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
  const sandboxes: GraphSandbox[] = [];
  for (const s of store.sandboxes()) {
    const attachments = store.attachments({ sandbox: s.name }).filter((a) => shown.has(a.network));
    if (attachments.length === 0 && options.network !== undefined) continue;
    const present = kernel.isNetns(s.netns);
    const lowerOnly = new Set(attachments.filter((a) => store.network(a.network)?.lower).map((a) => a.network));
    const look = options.inner !== false || lowerOnly.size > 0;
    const inner = present && look ? new Set((await kernel.links(sandboxNetns(s))).map((l) => l.ifname)) : new Set<string>();
    const there = (a: { network: string; hostVeth: string; ifname: string }) => (options.inner === false
      ? (lowerOnly.has(a.network) ? inner.has(a.ifname) : present && links.has(a.hostVeth))
      : links.has(a.hostVeth) && inner.has(a.ifname));
    const carriers = new Set(([4, 6] as const).map((f) => defaultCarrier(store, s.name, f)));
    sandboxes.push({
      name: s.name, host: self, state: s.state,
      labels: Object.fromEntries(store.labels(s.name).map((l) => [l.key, l.value])),
      interfaces: attachments.map((a) => ({
        ifname: a.ifname, network: a.network, mac: a.mac, hostVeth: a.hostVeth,
        addresses: store.addresses({ sandbox: s.name }).filter((x) => x.network === a.network).map((x) => x.ip),
        present: there(a),
        defaultRoute: carriers.has(a.network),
      })),
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

/** Addresses sort numerically in the renderings (10.0.0.10 after 10.0.0.9). */
export function addressKey(ip: string): bigint {
  try {
    return parseAddr('address', ip).n;
  } catch {
    return 0n;
  }
}
