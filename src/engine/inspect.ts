// Read-only views that join the store's records with what the kernel holds now.
import type { LinkInfo } from '../kernel/backend.ts';
import type { SandboxRow } from '../store/store.ts';
import type { Ctx } from './context.ts';
import { peerStatus } from './overlay.ts';
import { existingNetwork, readySandbox, sandboxNetns } from './records.ts';
import { portFacts } from './ports.ts';
import { describeMapping, formatPortSpec, hostIpFamilies, type Proto } from '../model/ports.ts';
import type { Store } from '../store/store.ts';
import { describeShape } from '../model/shape.ts';

export interface PublishedView {
  readonly spec: string;
  readonly proto: Proto;
  readonly hostIp: string;
  readonly hostPort: number;
  readonly containerPort: number;
  readonly count: number;
  /** The sandbox addresses it leads to; empty while the sandbox has no network with a way out. */
  readonly to: string[];
  /** Docker's form: 80/tcp -> 0.0.0.0:8080, one line per family. */
  readonly bindings: string[];
}

export function publishedPorts(store: Store, sandbox: string): PublishedView[] {
  return portFacts(store, sandbox).map(({ mapping: m, targets }) => ({
    spec: formatPortSpec(m), proto: m.proto, hostIp: m.hostIp, hostPort: m.hostPort, containerPort: m.containerPort,
    count: m.count, to: targets.filter((t) => hostIpFamilies(m.hostIp).includes(t.family)).map((t) => t.ip), bindings: describeMapping(m, targets.map((t) => t.family)),
  }));
}

export interface InterfaceView {
  readonly ifname: string;
  readonly network: string;
  readonly ifindex: number | null;
  readonly mac: string;
  readonly state: string;
  readonly addresses: string[];
  readonly hostPeer: { readonly ifname: string; readonly ifindex: number | null; readonly bridge: string | null };
  /** The recorded shaping (ctnet shape): rates, bursts in bytes, latency, loss; absent when unshaped. */
  readonly shaping?: Record<string, string | number> | undefined;
  /** Its DNS aliases on the network (--alias, or a runtime's CNI aliases). */
  readonly aliases: string[];
}

export interface SandboxView {
  readonly name: string;
  readonly netns: string;
  readonly owned: boolean;
  readonly state: string;
  readonly created: string;
  readonly present: boolean;
  readonly pids: number[];
  readonly labels: Record<string, string>;
  /** --egress-ip: the host addresses its egress leaves from (else its networks'). */
  readonly egress: string[];
  /** The network it chose to carry its default routes (ctnet route), if it chose one. */
  readonly defaultRoute: string | null;
  /** CNI attachments: the runtime's container id and interface, and the CNI network name. */
  readonly cni: { containerId: string; ifname: string; cniNetwork: string }[];
  readonly interfaces: InterfaceView[];
  readonly ports: PublishedView[];
  readonly routes: { dst: string; gateway?: string; dev?: string; scope?: string }[];
  readonly neighbours: { dst: string; dev: string; lladdr?: string; state?: string[] }[];
}

export function sandboxSummary(ctx: Ctx, s: SandboxRow) {
  return {
    name: s.name,
    state: s.state,
    networks: ctx.store.attachments({ sandbox: s.name }).map((a) => a.network),
    addresses: ctx.store.addresses({ sandbox: s.name }).map((a) => a.ip),
    ports: ctx.store.ports({ sandbox: s.name }).map(formatPortSpec),
    labels: Object.fromEntries(ctx.store.labels(s.name).map((l) => [l.key, l.value])),
    netns: s.netns,
    owned: s.owned,
    // Attachments a CNI runtime made: which container and interface, under which CNI network name.
    ...(s.owned ? {} : { cni: ctx.store.cniAttachments({ sandbox: s.name }).map((c) => ({ containerId: c.containerId, ifname: c.ifname, cniNetwork: c.cniNetwork })) }),
  };
}

export async function inspectSandbox(ctx: Ctx, name: string): Promise<SandboxView> {
  const { kernel, store } = ctx;
  const s = store.sandbox(name) ?? readySandbox(store, name);
  const ns = sandboxNetns(s);
  const present = kernel.isNetns(s.netns);
  const inner: LinkInfo[] = present ? await kernel.links(ns) : [];
  const host = await kernel.links();
  const addrs = present ? await kernel.addrs(ns) : [];
  const attachments = store.attachments({ sandbox: name });
  return {
    name: s.name,
    netns: s.netns,
    owned: s.owned,
    state: s.state,
    created: s.created,
    present,
    pids: present && 'name' in ns ? kernel.netnsPids(ns) : [],
    interfaces: attachments.map((a) => {
      const link = inner.find((l) => l.ifname === a.ifname);
      const peer = host.find((l) => l.ifname === a.hostVeth);
      return {
        ifname: a.ifname,
        network: a.network,
        ifindex: link?.ifindex ?? null,
        mac: link?.address ?? a.mac,
        state: link?.operstate ?? 'missing',
        addresses: (addrs.find((x) => x.ifname === a.ifname)?.addr_info ?? [])
          .filter((x) => x.scope !== 'link').map((x) => `${x.local}/${x.prefixlen}`),
        hostPeer: { ifname: a.hostVeth, ifindex: peer?.ifindex ?? null, bridge: peer?.master ?? null },
        ...shapingOf(store, a.sandbox, a.network),
        aliases: store.aliases({ sandbox: name }).filter((x) => x.network === a.network).map((x) => x.alias),
      };
    }),
    labels: Object.fromEntries(store.labels(name).map((l) => [l.key, l.value])),
    egress: store.sandboxEgress(name).map((e) => e.ip),
    defaultRoute: store.defaultRoute(name) ?? null,
    cni: store.cniAttachments({ sandbox: name }).map((c) => ({ containerId: c.containerId, ifname: c.ifname, cniNetwork: c.cniNetwork })),
    ports: publishedPorts(store, name),
    routes: present ? (await kernel.routes(ns)).map((r) => ({ dst: r.dst, gateway: r.gateway, dev: r.dev, scope: r.scope })) : [],
    neighbours: present ? (await kernel.neighbours(ns)).map((n) => ({ dst: n.dst, dev: n.dev, lladdr: n.lladdr, state: n.state })) : [],
  };
}

function shapingOf(store: Store, sandbox: string, network: string): { shaping?: Record<string, string | number> } {
  const shape = store.shaping(sandbox, network);
  return shape ? { shaping: describeShape(shape) } : {};
}

export interface NetworkView {
  readonly name: string;
  readonly state: string;
  readonly internal: boolean;
  /** ctnetd's DNS on the gateways, and where other names go (empty: the host's resolvers; --internal: nowhere). */
  readonly dns: { enabled: boolean; forward: string[] };
  readonly created: string;
  readonly subnets: { cidr: string; gateway: string }[];
  /** --egress-ip: the host addresses its egress leaves from (empty: masqueraded). */
  readonly egress: string[];
  readonly bridge: { ifname: string; ifindex: number | null; mac: string | null; mtu: number | null; state: string; addresses: string[] };
  readonly ports: { ifname: string; ifindex: number; state: string; sandbox: string | null }[];
  readonly fdb: { mac: string; port: string; sandbox: string | null }[];
  readonly sandboxes: { name: string; ifname: string; mac: string; addresses: string[]; aliases: string[] }[];
  /** An overlay (vxlan) network's side on this host: its VXLAN device, and each peer with its three entries. */
  readonly overlay?: {
    vni: number; port: number; subnet: string; lease: string; device: string; vtepMac: string; underlay: string;
    deviceState: string;
    peers: { host: string; subnet: string; underlay: string; vtepMac: string; neigh: boolean; fdb: boolean; route: boolean }[];
  } | undefined;
}

export function networkSummary(ctx: Ctx, name: string) {
  const n = existingNetwork(ctx.store, name);
  return {
    name: n.name,
    bridge: n.bridge,
    subnets: ctx.store.subnets(name).map((s) => s.cidr),
    internal: n.internal,
    sandboxes: ctx.store.attachments({ network: name }).length,
    state: n.state,
  };
}

export async function inspectNetwork(ctx: Ctx, name: string): Promise<NetworkView> {
  const { kernel, store } = ctx;
  const n = existingNetwork(store, name);
  const bridge = await kernel.link(n.bridge);
  const ports = bridge ? await kernel.linksOf(n.bridge) : [];
  const attachments = store.attachments({ network: name });
  const bySandboxVeth = new Map(attachments.map((a) => [a.hostVeth, a.sandbox]));
  const byMac = new Map(attachments.map((a) => [a.mac, a.sandbox]));
  const fdb = bridge ? await kernel.fdb(n.bridge) : [];
  const addrs = bridge ? (await kernel.addrs()).find((a) => a.ifname === n.bridge)?.addr_info ?? [] : [];
  return {
    name: n.name,
    state: n.state,
    internal: n.internal,
    dns: { enabled: n.dns, forward: [...n.dnsForward] },
    created: n.created,
    subnets: store.subnets(name).map((s) => ({ cidr: s.cidr, gateway: s.gateway })),
    egress: store.networkEgress(name).map((e) => e.ip),
    bridge: {
      ifname: n.bridge,
      ifindex: bridge?.ifindex ?? null,
      mac: bridge?.address ?? null,
      mtu: bridge?.mtu ?? null,
      state: bridge?.operstate ?? 'missing',
      addresses: addrs.filter((x) => x.scope !== 'link').map((x) => `${x.local}/${x.prefixlen}`),
    },
    ports: ports.map((p) => ({ ifname: p.ifname, ifindex: p.ifindex, state: p.operstate ?? '', sandbox: bySandboxVeth.get(p.ifname) ?? null })),
    // Learned entries only: the permanent ones are the bridge's and its ports' own addresses.
    fdb: fdb.filter((f) => f.state !== 'permanent' && f.ifname && f.ifname !== n.bridge)
      .map((f) => ({ mac: f.mac, port: f.ifname!, sandbox: byMac.get(f.mac) ?? null })),
    sandboxes: attachments.map((a) => ({
      name: a.sandbox,
      ifname: a.ifname,
      mac: a.mac,
      addresses: store.addresses({ sandbox: a.sandbox }).filter((x) => x.network === name).map((x) => x.ip),
      aliases: store.aliases({ sandbox: a.sandbox }).filter((x) => x.network === name).map((x) => x.alias),
    })),
    overlay: await overlayView(ctx, name),
  };
}

async function overlayView(ctx: Ctx, name: string): Promise<NetworkView['overlay']> {
  const o = ctx.store.overlay(name);
  if (!o) return undefined;
  const dev = await ctx.kernel.link(o.device);
  return {
    vni: o.vni, port: o.port, subnet: o.cidr, lease: ctx.store.subnets(name).find((s) => s.family === 4)?.cidr ?? '-',
    device: o.device, vtepMac: o.vtepMac, underlay: `${o.underlayIp} (${o.underlayDev})`, deviceState: dev ? (dev.operstate ?? 'present') : 'missing',
    peers: (await peerStatus(ctx, name).catch(() => [])).map((p) => ({ host: p.host, subnet: p.subnet, underlay: p.underlay, vtepMac: p.vtepMac, neigh: p.neigh, fdb: p.fdb, route: p.route })),
  };
}
