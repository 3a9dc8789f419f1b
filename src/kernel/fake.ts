// An in-memory kernel for unit tests of the engine: namespaces, links (bridges, veth pairs, VXLAN
// devices with their fdb), addresses, default and gateway routes, neighbour entries, sysctls, ctnet's nft table (sets and maps as the element text ctnet sends), conntrack
// flows and the processes of a namespace. It fails as the kernel does (a KernelError with the kind the
// exec backend would decide), and test hooks make any operation fail: failAt(n) makes the n-th
// operation from now on throw, before or after taking effect, so a test can check that every failure
// is undone. No I/O: nothing here needs root or touches the real kernel.
import ipaddr from 'ipaddr.js';
import { KernelError, type KernelErrorKind } from '../errors.ts';
import { addrToBigint, formatAddr } from '../model/cidr.ts';
import { netnsPath, type Netns } from '../model/netns.ts';
import { pickFlows, type Flow, type FlowFilter } from '../plan/flows.ts';
import { resolvText, type Op } from '../plan/ops.ts';
import { renderOp, shellLine, tcCommands } from '../plan/render.ts';
import { countsOfNftJson, type NftCounts } from './nftcounts.ts';
import type { AddrInfo, FdbInfo, KernelBackend, LinkInfo, LinkStats, Listener, NeighInfo, NftChain, ProbeResult, RouteInfo, TraceMonitor } from './backend.ts';

/** The key of ctnet's own (the host's) namespace in the model and in snapshots. */
export const HOST = 'host';
const TABLE = 'inet ctnet';
/**
 * ctnet's bridge-family table (per-port identity). The fake keeps its sets and chains with those of
 * the inet table, named "bridge:NAME"; deleting the inet table takes both (ctnet drops them together).
 */
const BRIDGE = 'bridge ctnet';
const TABLES = `(?:${TABLE}|${BRIDGE})`;

type Family = 4 | 6;

interface FakeLink {
  ifindex: number;
  name: string;
  kind: 'bridge' | 'veth' | 'loopback' | 'ether' | 'vxlan' | 'ifb' | 'macvlan' | 'ipvlan';
  master: string | undefined;
  up: boolean;
  hairpin: boolean;
  mac: string;
  mtu: number;
  /** The other end of a veth: the namespace key and its name there. */
  peer: { ns: string; name: string } | undefined;
  /** CIDRs, e.g. 10.1.0.1/24, in the order added. */
  addrs: string[];
  /** Per-interface sysctls (net/ipv4/conf/NAME/KEY as KEY, net/ipv6/conf/NAME/KEY as ipv6/KEY), host links only; they go with the link. */
  sysctls: Map<string, string>;
  /** A VXLAN device's settings. */
  vxlan: { vni: number; local: string; dev: string; port: number } | undefined;
  /** A VXLAN device's own fdb: MAC -> the VTEP address frames to it go to. */
  fdb: Map<string, string>;
  /** tc: the root qdisc as the tc commands that made it (undefined: the default), and the ingress redirect's target. */
  qdisc: string | undefined;
  redirect: string | undefined;
}

interface FakeRoute {
  dst: string;
  via: string;
  dev: string;
  onlink: boolean;
}

interface FakeNs {
  id: number;
  links: Map<string, FakeLink>;
  defaults: Map<Family, { via: string; dev: string }>;
  /** Routes to a destination other than default (route.replace), by destination. */
  routes: Map<string, FakeRoute>;
  /** Neighbour entries, by "DEV ADDR": the MAC. */
  neighs: Map<string, string>;
  /** Routes seeded by a test (a host's LAN routes); reported as they are. */
  extraRoutes: RouteInfo[];
  pids: number[];
}

interface NftSet {
  kind: 'set' | 'map';
  /** Key text -> value text (maps) or null (sets). */
  elements: Map<string, string | null>;
}

interface NftChainState {
  spec: string | undefined;
  rules: string[];
}

interface NftState {
  sets: Map<string, NftSet>;
  chains: Map<string, NftChainState>;
}

export interface FailAtOptions {
  /** The operation takes effect and then throws (a batch that half happened). Default: false. */
  readonly after?: boolean;
}

/** The model as plain JSON-comparable data (sorted), for equality checks. */
export interface FakeSnapshot {
  readonly namespaces: Record<string, {
    readonly links: Record<string, {
      readonly ifindex: number; readonly kind: string; readonly master: string | null; readonly up: boolean; readonly hairpin: boolean;
      readonly mac: string; readonly mtu: number; readonly peer: string | null; readonly addrs: string[]; readonly sysctls: Record<string, string>;
      readonly vxlan?: string; readonly fdb?: string[]; readonly qdisc?: string; readonly redirect?: string;
    }>;
    readonly defaults: Record<string, string>;
    /** "DST via GW dev DEV [onlink]", sorted (present when there are any). */
    readonly routes?: string[];
    /** "ADDR lladdr MAC dev DEV", sorted (present when there are any). */
    readonly neigh?: string[];
    readonly pids: number[];
  }>;
  readonly sysctls: Record<string, string>;
  readonly nft: null | {
    readonly sets: Record<string, { readonly kind: string; readonly elements: string[] }>;
    readonly chains: Record<string, { readonly spec: string | null; readonly rules: string[] }>;
  };
  readonly flows: Flow[];
}

/** Per-link settings of host links: IPv4's by their name, IPv6's as ipv6/NAME (a link's defaults). */
const PER_LINK_SYSCTLS = { route_localnet: '0', forwarding: '0', 'ipv6/accept_ra': '1' } as const;
const CHAIN_PRIORITIES: Record<string, number> = { raw: -300, mangle: -150, dstnat: -100, filter: 0, security: 50, srcnat: 100 };

/** A sysctl key in slash form (keys naming an interface are written with slashes, as sysctl allows). */
const slashKey = (key: string) => (key.includes('/') ? key : key.replaceAll('.', '/'));

const familyOf = (addr: string): Family => (addr.includes(':') ? 6 : 4);

/** The network of a CIDR with host bits, e.g. 10.1.0.1/24 -> 10.1.0.0/24. */
function networkOf(cidr: string): string {
  const [addr, len] = ipaddr.parseCIDR(cidr);
  const f: Family = addr.kind() === 'ipv4' ? 4 : 6;
  const host = BigInt((f === 4 ? 32 : 128) - len);
  return `${formatAddr(f, (addrToBigint(addr) >> host) << host)}/${len}`;
}

function inSubnet(cidr: string, ip: string): boolean {
  const [addr, len] = ipaddr.parseCIDR(cidr);
  const other = ipaddr.parse(ip);
  return addr.kind() === other.kind() && other.match(addr, len);
}

/** Splits "{ a, b }" element text into the elements. Element texts ctnet sends hold no commas. */
const splitElements = (text: string) => text.split(',').map((e) => e.trim()).filter((e) => e !== '');
const keyOf = (element: string) => element.split(' : ')[0]!.trim();

/** A failure inside the model, turned into a KernelError naming the operation by apply(). */
class Failure extends Error {
  readonly kind: KernelErrorKind;
  readonly stderr: string;
  constructor(kind: KernelErrorKind, stderr: string) {
    super(stderr);
    this.kind = kind;
    this.stderr = stderr;
  }
}

export class FakeKernel implements KernelBackend {
  readonly #ns = new Map<string, FakeNs>();
  readonly #sysctls = new Map<string, string>([
    ['net/ipv4/ip_forward', '0'],
    ['net/ipv6/conf/all/forwarding', '0'],
    ['net/ipv4/conf/all/route_localnet', '0'],
  ]);
  #nft: NftState | undefined;
  #flows: Flow[] = [];
  #nextIfindex = 1;
  #nextNsId = 0;
  #nextMac = 1;
  #count = 0;
  #failAt: { at: number; kind: KernelErrorKind; after: boolean }[] = [];
  #failWhen: { when: (op: Op) => boolean; kind: KernelErrorKind } | undefined;

  /** Every operation that took effect, in order (failed ones are not logged). */
  readonly opsApplied: Op[] = [];
  /** Listening sockets ss would show; a test may seed them. */
  readonly listening: Listener[] = [];
  /** Chains of other tables (Docker's, a firewall's) nft would list besides ctnet's. */
  readonly foreignChains: NftChain[] = [];
  /** ctnet's accepts in the host's shared FORWARD chains ("FAMILY [legacy] BRIDGE"). */
  readonly forwardAccepts: string[] = [];
  /** /etc/netns/NAME/resolv.conf as written (resolv.write). */
  readonly resolvFiles = new Map<string, string>();
  /** systemd-resolved, when a test says it runs here (resolvedRunning): its links' DNS servers and domains. */
  resolvedRunning = false;
  readonly resolvedLinks = new Map<string, { dns: string[]; domains: string[] }>();

  /**
   * host: seed the host's own interfaces (lo, and eth0 with 192.0.2.10/24 and a default route via
   * 192.0.2.1), as a machine has them. Default true.
   */
  constructor(options: { host?: boolean } = {}) {
    const host = this.#newNs(HOST);
    if (options.host ?? true) {
      const lo = this.#newLink(host, 'lo', 'loopback', '00:00:00:00:00:00', 65536);
      lo.up = true;
      lo.addrs.push('127.0.0.1/8', '::1/128');
      const eth0 = this.#newLink(host, 'eth0', 'ether', '52:54:00:12:34:56', 1500);
      eth0.up = true;
      eth0.addrs.push('192.0.2.10/24');
      host.defaults.set(4, { via: '192.0.2.1', dev: 'eth0' });
    }
  }

  // ---- test hooks ----

  /** Operations apply() has been asked to apply so far (applied or failed): what failAt counts. */
  get opCount(): number {
    return this.#count;
  }

  /**
   * The n-th operation applied from now on (0-based, counting every operation of every apply call)
   * throws a KernelError of this kind instead of taking effect (or, with after, once it took effect).
   * One shot: the hook is disarmed when it fires. Calls add up: failAt(0); failAt(1) fails two.
   */
  failAt(n: number, kind: KernelErrorKind = 'failed', options: FailAtOptions = {}): void {
    this.#failAt.push({ at: this.#count + n, kind, after: options.after ?? false });
  }

  /**
   * Every operation matching when fails with this kind instead of taking effect, from now until
   * failWhen(undefined): an operation that keeps failing, retries and all.
   */
  failWhen(when: ((op: Op) => boolean) | undefined, kind: KernelErrorKind = 'failed'): void {
    this.#failWhen = when && { when, kind };
  }

  /** True while a failAt has not fired yet. */
  get failArmed(): boolean {
    return this.#failAt.length > 0;
  }

  /** Declares a namespace file made by someone else (a container runtime's), with its lo. */
  addForeignNetns(path: string): void {
    if (this.#ns.has(path)) throw new Error(`netns ${path} exists already in the fake`);
    const ns = this.#newNs(path);
    this.#newLink(ns, 'lo', 'loopback', '00:00:00:00:00:00', 65536);
  }

  /** Removes a namespace as its owner would (the container stopped); its veth ends go with it. */
  removeNetns(path: string): void {
    this.#deleteNs(path);
  }

  /** Conntrack entries the kernel tracks (appended). */
  seedFlows(...flows: Flow[]): void {
    this.#flows.push(...flows);
  }

  /** Processes living in a namespace (by its Netns). */
  seedPids(ns: Netns, ...pids: number[]): void {
    this.#nsOrThrow(netnsPath(ns)).pids.push(...pids);
  }

  /** A route of the host (or of a namespace) that ctnet did not make, e.g. a LAN route. */
  addRoute(route: RouteInfo, ns?: Netns): void {
    this.#nsOrThrow(ns ? netnsPath(ns) : HOST).extraRoutes.push(route);
  }

  /** A sysctl of the host, set (or made to exist) behind ctnet's back, as an admin or a module would. */
  setSysctl(key: string, value: string): void {
    const k = slashKey(key);
    const perLink = this.#perLinkSysctl(k);
    if (perLink) perLink.link.sysctls.set(perLink.setting, value);
    else this.#sysctls.set(k, value);
  }

  /** The elements of a set or map of ctnet's table ("k" or "k : v"), sorted; undefined when absent. */
  elements(set: string): string[] | undefined {
    const s = this.#nft?.sets.get(set);
    return s && [...s.elements].map(([k, v]) => (v === null ? k : `${k} : ${v}`)).sort();
  }

  /** The whole model as plain, sorted data: two snapshots are deepEqual when the kernels are equal. */
  snapshot(): FakeSnapshot {
    const namespaces: Record<string, FakeSnapshot['namespaces'][string]> = {};
    for (const key of [...this.#ns.keys()].sort()) {
      const ns = this.#ns.get(key)!;
      const links: Record<string, FakeSnapshot['namespaces'][string]['links'][string]> = {};
      for (const name of [...ns.links.keys()].sort()) {
        const l = ns.links.get(name)!;
        links[name] = {
          ifindex: l.ifindex, kind: l.kind, master: l.master ?? null, up: l.up, hairpin: l.hairpin, mac: l.mac, mtu: l.mtu,
          peer: l.peer ? `${l.peer.ns}:${l.peer.name}` : null, addrs: [...l.addrs].sort(),
          sysctls: Object.fromEntries([...l.sysctls].sort(([a], [b]) => a.localeCompare(b))),
          // Only VXLAN devices carry these, so snapshots of everything else keep their shape.
          ...(l.vxlan ? {
            vxlan: `id ${l.vxlan.vni} local ${l.vxlan.local} dev ${l.vxlan.dev} dstport ${l.vxlan.port}`,
            fdb: [...l.fdb].map(([mac, dst]) => `${mac} dst ${dst}`).sort(),
          } : {}),
          // Only shaped links carry these, so other snapshots keep their shape.
          ...(l.qdisc !== undefined ? { qdisc: l.qdisc } : {}),
          ...(l.redirect !== undefined ? { redirect: l.redirect } : {}),
        };
      }
      const defaults = Object.fromEntries([...ns.defaults].sort(([a], [b]) => a - b).map(([f, r]) => [`ipv${f}`, `via ${r.via} dev ${r.dev}`]));
      const routes = [...ns.routes.values()].map((r) => `${r.dst} via ${r.via} dev ${r.dev}${r.onlink ? ' onlink' : ''}`).sort();
      const neigh = [...ns.neighs].map(([k, mac]) => `${k.split(' ')[1]} lladdr ${mac} dev ${k.split(' ')[0]}`).sort();
      namespaces[key] = { links, defaults, ...(routes.length ? { routes } : {}), ...(neigh.length ? { neigh } : {}), pids: [...ns.pids].sort((a, b) => a - b) };
    }
    const nft = this.#nft && {
      sets: Object.fromEntries([...this.#nft.sets.keys()].sort().map((name) => [name, { kind: this.#nft!.sets.get(name)!.kind, elements: this.elements(name)! }])),
      chains: Object.fromEntries([...this.#nft.chains.keys()].sort().map((name) => {
        const c = this.#nft!.chains.get(name)!;
        return [name, { spec: c.spec ?? null, rules: [...c.rules] }];
      })),
    };
    return {
      namespaces,
      sysctls: Object.fromEntries([...this.#sysctls].sort(([a], [b]) => a.localeCompare(b))),
      nft: nft ?? null,
      flows: structuredClone(this.#flows),
    };
  }

  // ---- changes ----

  async apply(ops: readonly Op[]): Promise<void> {
    for (const op of ops) {
      const index = this.#count++;
      let fail: { kind: KernelErrorKind; after: boolean } | undefined = this.#failAt.find((f) => f.at === index);
      if (fail) this.#failAt = this.#failAt.filter((f) => f !== fail);
      else if (this.#failWhen?.when(op)) fail = { kind: this.#failWhen.kind, after: false };
      if (!fail || fail.after) {
        try {
          await this.#applyOne(op);
        } catch (e) {
          if (e instanceof Failure) throw this.#error(op, e.kind, e.stderr);
          throw e;
        }
        this.opsApplied.push(op);
      }
      if (fail) throw this.#error(op, fail.kind, `injected failure (fake kernel, operation ${index}${fail.after ? ', after it took effect' : ''})`);
      // Lanes of a step run side by side: let another lane's operation in between, as processes would.
      await Promise.resolve();
    }
  }

  #error(op: Op, kind: KernelErrorKind, stderr: string): KernelError {
    return new KernelError({ kind, op: op.kind, command: renderOp(op).join('\n'), stderr, exitCode: kind === 'not-found' ? 1 : 2 });
  }

  #applyOne(op: Op): void | Promise<void> {
    switch (op.kind) {
      case 'netns.add': {
        const key = netnsPath({ name: op.name });
        if (this.#ns.has(key)) throw new Failure('exists', `Cannot create namespace file "${key}": File exists`);
        const ns = this.#newNs(key);
        this.#newLink(ns, 'lo', 'loopback', '00:00:00:00:00:00', 65536);
        return;
      }
      case 'netns.del': {
        const key = netnsPath({ name: op.name });
        if (!this.#ns.has(key)) throw new Failure('not-found', `Cannot remove namespace file "${key}": No such file or directory`);
        this.#deleteNs(key);
        return;
      }
      case 'netns.kill': {
        // ip netns pids of a missing namespace lists nothing: nothing to kill.
        const ns = this.#ns.get(netnsPath(op.netns));
        if (ns) ns.pids = [];
        return;
      }
      case 'link.add.bridge': {
        const host = this.#host();
        if (host.links.has(op.name)) throw new Failure('exists', 'RTNETLINK answers: File exists');
        this.#newLink(host, op.name, 'bridge', op.mac, op.mtu ?? 1500);
        return;
      }
      case 'link.add.vxlan': {
        const host = this.#host();
        if (host.links.has(op.name)) throw new Failure('exists', 'RTNETLINK answers: File exists');
        if (!host.links.has(op.dev)) throw new Failure('not-found', `Cannot find device "${op.dev}"`);
        if ([...host.links.values()].some((l) => l.vxlan && l.vxlan.vni === op.vni && l.vxlan.port === op.port)) {
          throw new Failure('exists', 'Error: A VXLAN device with the specified VNI already exists.');
        }
        const link = this.#newLink(host, op.name, 'vxlan', op.mac, op.mtu ?? 1500);
        link.vxlan = { vni: op.vni, local: op.local, dev: op.dev, port: op.port };
        return;
      }
      case 'neigh.replace': {
        this.#linkOf(undefined, op.dev);
        this.#host().neighs.set(`${op.dev} ${op.addr}`, op.lladdr);
        return;
      }
      case 'neigh.del': {
        this.#linkOf(undefined, op.dev);
        if (!this.#host().neighs.delete(`${op.dev} ${op.addr}`)) throw new Failure('not-found', 'RTNETLINK answers: No such file or directory');
        return;
      }
      case 'fdb.replace': {
        const link = this.#linkOf(undefined, op.dev);
        if (link.kind !== 'vxlan') throw new Failure('failed', 'RTNETLINK answers: Operation not supported');
        link.fdb.set(op.mac, op.dst);
        return;
      }
      case 'fdb.del': {
        const link = this.#linkOf(undefined, op.dev);
        if (link.fdb.get(op.mac) !== op.dst) throw new Failure('not-found', 'RTNETLINK answers: No such file or directory');
        link.fdb.delete(op.mac);
        return;
      }
      case 'route.replace': {
        const ns = this.#host();
        const link = this.#linkOf(undefined, op.dev);
        // onlink: the kernel takes the gateway as on the link, but only on a device that is up;
        // otherwise it wants the gateway in a connected subnet.
        if (op.onlink ? !link.up : !link.up || !link.addrs.some((c) => familyOf(c) === familyOf(op.via) && inSubnet(c, op.via))) {
          throw new Failure('failed', op.onlink ? 'Error: Nexthop device is not up.' : 'Error: Nexthop has invalid gateway.');
        }
        networkOf(op.dst); // a malformed destination throws, as ip would refuse it
        ns.routes.set(op.dst, { dst: op.dst, via: op.via, dev: op.dev, onlink: op.onlink });
        return;
      }
      case 'route.del': {
        const ns = this.#host();
        const r = ns.routes.get(op.dst);
        if (!r || r.via !== op.via || r.dev !== op.dev) throw new Failure('not-found', 'RTNETLINK answers: No such process');
        ns.routes.delete(op.dst);
        return;
      }
      case 'link.add.veth': {
        const key = this.#key(op.netns);
        const ns = this.#nsOf(op.netns);
        const peerKey = netnsPath(op.peerNetns);
        const peerNs = this.#ns.get(peerKey);
        if (!peerNs) throw new Failure('not-found', `Invalid "netns" value "${'name' in op.peerNetns ? op.peerNetns.name : op.peerNetns.path}"`);
        if (ns.links.has(op.name) || peerNs.links.has(op.peer) || (key === peerKey && op.name === op.peer)) {
          throw new Failure('exists', 'RTNETLINK answers: File exists');
        }
        const a = this.#newLink(ns, op.name, 'veth', this.#mac(), op.mtu ?? 1500);
        const b = this.#newLink(peerNs, op.peer, 'veth', op.peerMac ?? this.#mac(), op.mtu ?? 1500);
        a.peer = { ns: peerKey, name: op.peer };
        b.peer = { ns: key, name: op.name };
        return;
      }
      case 'link.del': {
        const key = this.#key(op.netns);
        this.#linkOf(op.netns, op.name);
        this.#deleteLink(key, op.name);
        return;
      }
      case 'link.set.master': {
        const link = this.#linkOf(undefined, op.name);
        const master = this.#host().links.get(op.master);
        if (!master) throw new Failure('not-found', `Error: argument "${op.master}" is wrong: Device does not exist`);
        if (master.kind !== 'bridge') throw new Failure('failed', 'RTNETLINK answers: Operation not supported');
        link.master = op.master;
        return;
      }
      case 'link.set.hairpin': {
        const link = this.#linkOf(undefined, op.name);
        if (!link.master) throw new Failure('failed', 'RTNETLINK answers: Operation not supported');
        link.hairpin = true;
        return;
      }
      case 'link.set.mtu': {
        const link = this.#linkOf(op.netns, op.name);
        if (op.mtu < 68 || op.mtu > 65535) throw new Failure('failed', `Error: mtu ${op.mtu} out of range`);
        link.mtu = op.mtu;
        return;
      }
      case 'link.set.up': {
        const link = this.#linkOf(op.netns, op.name);
        link.up = true;
        return;
      }
      case 'addr.add': {
        const link = this.#linkOf(op.netns, op.dev);
        const local = op.cidr.split('/')[0]!;
        // The kernel's words; the exec backend's classify() does not read them as "exists" (it says failed).
        if (link.addrs.some((c) => c.split('/')[0] === local)) throw new Failure('exists', `Error: ipv${familyOf(local)}: Address already assigned.`);
        networkOf(op.cidr); // a malformed CIDR throws here, as ip would refuse it
        link.addrs.push(op.cidr);
        return;
      }
      case 'addr.del': {
        const link = this.#linkOf(op.netns, op.dev);
        const i = link.addrs.indexOf(op.cidr);
        if (i < 0) throw new Failure('not-found', `Error: ipv${familyOf(op.cidr)}: Address not found.`);
        link.addrs.splice(i, 1);
        return;
      }
      case 'route.replace.default': {
        const ns = this.#nsOf(op.netns);
        const link = this.#linkOf(op.netns, op.dev);
        // The kernel wants the gateway on a connected route: an address of that subnet on an up link.
        if (!link.up || !link.addrs.some((c) => familyOf(c) === familyOf(op.via) && inSubnet(c, op.via))) {
          throw new Failure('failed', 'Error: Nexthop has invalid gateway.');
        }
        ns.defaults.set(familyOf(op.via), { via: op.via, dev: op.dev });
        return;
      }
      case 'route.del.default': {
        const ns = this.#nsOf(op.netns);
        const f = familyOf(op.via);
        const r = ns.defaults.get(f);
        if (!r || r.via !== op.via || r.dev !== op.dev) throw new Failure('not-found', 'RTNETLINK answers: No such process');
        ns.defaults.delete(f);
        return;
      }
      case 'sysctl.set': {
        const key = slashKey(op.key);
        const perLink = this.#perLinkSysctl(key);
        if (perLink) {
          perLink.link.sysctls.set(perLink.setting, op.value);
          return;
        }
        if (!this.#sysctls.has(key)) {
          if (op.ifExists) return;
          throw new Failure('not-found', `ENOENT: no such file or directory, open '/proc/sys/${key}'`);
        }
        this.#sysctls.set(key, op.value);
        return;
      }
      case 'nft':
        this.#nftTransaction(op.lines);
        return;
      case 'nft.delete': {
        // As the exec backend does: one transaction; when it fails, each line alone, gone ones ignored.
        if (op.lines.length === 0) return;
        try {
          this.#nftTransaction(op.lines);
        } catch (e) {
          if (!(e instanceof Failure)) throw e;
          for (const line of op.lines) {
            try {
              this.#nftTransaction([line]);
            } catch (e2) {
              if (!(e2 instanceof Failure && e2.kind === 'not-found')) throw e2;
            }
          }
        }
        return;
      }
      case 'conntrack.forget':
        return this.#forget(op.filter);
      case 'conntrack.drain':
        return; // the fake's flows are not connections that end by themselves: nothing to wait for
      case 'link.add.lower': {
        const host = this.#host();
        const parent = host.links.get(op.parent);
        if (!parent) throw new Failure('not-found', `Cannot find device "${op.parent}"`);
        const ns = op.netns ? this.#nsOf(op.netns) : host;
        if (ns.links.has(op.name)) throw new Failure('exists', 'RTNETLINK answers: File exists');
        this.#newLink(ns, op.name, op.type, op.mac ?? (op.type === 'ipvlan' ? parent.mac : this.#mac()), op.mtu ?? parent.mtu);
        return;
      }
      case 'link.add.ifb': {
        const host = this.#host();
        // An ifb of that name counts as made (as the exec backend does: it is a deletion's inverse).
        const have = host.links.get(op.name);
        if (have?.kind === 'ifb') return;
        if (have) throw new Failure('exists', 'RTNETLINK answers: File exists');
        this.#newLink(host, op.name, 'ifb', this.#mac(), 1500).up = true;
        return;
      }
      case 'qdisc.shape': {
        const link = this.#linkOf(undefined, op.dev);
        link.qdisc = (tcCommands(op) ?? []).map((c) => c.slice(4).join(' ')).join('; ');
        return;
      }
      case 'qdisc.del': {
        const link = this.#linkOf(undefined, op.dev);
        if (op.parent === 'root') {
          if (link.qdisc === undefined) throw new Failure('not-found', 'Error: Cannot delete qdisc with handle of zero.');
          link.qdisc = undefined;
        } else {
          if (link.redirect === undefined) throw new Failure('not-found', 'Error: Cannot find specified qdisc on specified device.');
          link.redirect = undefined;
        }
        return;
      }
      case 'filter.redirect': {
        const link = this.#linkOf(undefined, op.dev);
        const to = this.#linkOf(undefined, op.to);
        link.redirect = to.name;
        return;
      }
      case 'resolv.write':
        this.resolvFiles.set(op.netns, resolvText(op.nameservers, op.search));
        return;
      case 'resolved.link':
        if (!this.resolvedRunning) throw new Failure('failed', 'Failed to connect to bus: No such file or directory');
        this.#linkOf(undefined, op.dev);
        this.resolvedLinks.set(op.dev, { dns: [...op.dns], domains: [`~${op.domain}`] });
        return;
      case 'resolved.revert':
        this.resolvedLinks.delete(op.dev);
        return;
      case 'resolv.remove':
        this.resolvFiles.delete(op.netns);
        return;
      case 'forward.accept': {
        const rule = `${op.target.family}${op.target.legacy ? ' legacy' : ''} ${op.bridge}`;
        this.forwardAccepts.push(rule);
        return;
      }
      case 'forward.unaccept': {
        const rule = `${op.target.family}${op.target.legacy ? ' legacy' : ''} ${op.bridge}`;
        const i = this.forwardAccepts.indexOf(rule);
        if (i < 0) throw new Failure('not-found', 'iptables: Bad rule (does a matching rule exist in that chain?).');
        this.forwardAccepts.splice(i, 1);
        return;
      }
    }
  }

  async #forget(filter: FlowFilter): Promise<void> {
    const local = async () => new Set(this.#addrsOf(this.#host()).flatMap((a) => a.addr_info.map((x) => x.local)));
    const gone = new Set(await pickFlows(filter, this.#flows, local));
    this.#flows = this.#flows.filter((f) => !gone.has(f));
  }

  // ---- nft ----

  #nftTransaction(lines: readonly string[]): void {
    const work: NftState | undefined = this.#nft && {
      sets: new Map([...this.#nft.sets].map(([k, s]) => [k, { kind: s.kind, elements: new Map(s.elements) }])),
      chains: new Map([...this.#nft.chains].map(([k, c]) => [k, { spec: c.spec, rules: [...c.rules] }])),
    };
    let state = work;
    const missing = (line: string) => new Failure('not-found', `Error: Could not process rule: No such file or directory\n${line}`);
    const table = (line: string) => {
      if (!state) throw new Failure('not-found', `Error: No such file or directory\n${line}`);
      return state;
    };
    const setOf = (line: string, name: string) => {
      const s = table(line).sets.get(name);
      if (!s) throw new Failure('not-found', `Error: No such file or directory\n${line}`);
      return s;
    };
    for (const raw of lines) {
      const line = raw.trim();
      if (line === '' || line.startsWith('#')) continue;
      let m: RegExpExecArray | null;
      // Names in the bridge table carry its prefix.
      const ns = (name: string) => (line.includes(` ${BRIDGE} `) || line.endsWith(` ${BRIDGE}`) ? `bridge:${name}` : name);
      if (line === `add table ${TABLE}` || line === `add table ${BRIDGE}`) {
        state ??= { sets: new Map(), chains: new Map() };
      } else if (line === `delete table ${TABLE}`) {
        if (!state) throw missing(line);
        state = undefined;
      } else if (line === `delete table ${BRIDGE}`) {
        if (!state) throw missing(line);
        for (const k of [...state.sets.keys()]) if (k.startsWith('bridge:')) state.sets.delete(k);
        for (const k of [...state.chains.keys()]) if (k.startsWith('bridge:')) state.chains.delete(k);
      } else if (line === `flush table ${TABLE}`) {
        for (const s of table(line).sets.values()) s.elements.clear();
        for (const c of table(line).chains.values()) c.rules = [];
      } else if ((m = new RegExp(`^add (set|map) ${TABLES} ([\\w.-]+) \\{.*\\}$`).exec(line))) {
        const t = table(line);
        const existing = t.sets.get(ns(m[2]!));
        if (existing && existing.kind !== m[1]) throw new Failure('exists', `Error: Could not process rule: File exists\n${line}`);
        if (!existing) t.sets.set(ns(m[2]!), { kind: m[1] as 'set' | 'map', elements: new Map() });
      } else if ((m = new RegExp(`^add chain ${TABLES} ([\\w.-]+)(?: \\{ (.*) \\})?$`).exec(line))) {
        const t = table(line);
        if (!t.chains.has(ns(m[1]!))) t.chains.set(ns(m[1]!), { spec: m[2], rules: [] });
      } else if ((m = new RegExp(`^delete chain ${TABLES} ([\\w.-]+)$`).exec(line))) {
        // A chain a map element still jumps to cannot go (the kernel says EBUSY).
        const t = table(line);
        if (!t.chains.has(ns(m[1]!))) throw missing(line);
        for (const set of t.sets.values()) {
          if ([...set.elements.values()].some((v) => v === `goto ${m![1]}` || v === `jump ${m![1]}`)) throw new Failure('busy', `Error: Could not process rule: Device or resource busy\n${line}`);
        }
        t.chains.delete(ns(m[1]!));
      } else if ((m = new RegExp(`^flush chain ${TABLES} ([\\w.-]+)$`).exec(line))) {
        const c = table(line).chains.get(ns(m[1]!));
        if (!c) throw missing(line);
        c.rules = [];
      } else if ((m = new RegExp(`^add rule ${TABLES} ([\\w.-]+) (.+)$`).exec(line))) {
        const c = table(line).chains.get(ns(m[1]!));
        if (!c) throw missing(line);
        // A rule naming a missing set fails (@th,OFFSET,LEN is a raw payload field, not a set).
        for (const ref of m[2]!.matchAll(/@([A-Za-z_][\w.-]*)(?![\w.,-])/g)) setOf(line, ns(ref[1]!));
        c.rules.push(m[2]!);
      } else if ((m = new RegExp(`^flush (?:set|map) ${TABLES} ([\\w.-]+)$`).exec(line))) {
        setOf(line, ns(m[1]!)).elements.clear();
      } else if ((m = new RegExp(`^(add|delete) element ${TABLES} ([\\w.-]+) \\{(.*)\\}$`).exec(line))) {
        const s = setOf(line, ns(m[2]!));
        for (const element of splitElements(m[3]!)) {
          const key = keyOf(element);
          if (m[1] === 'delete') {
            if (!s.elements.has(key)) throw missing(line);
            s.elements.delete(key);
            continue;
          }
          const value = element.includes(' : ') ? element.slice(element.indexOf(' : ') + 3).trim() : null;
          if ((s.kind === 'map') !== (value !== null)) throw new Failure('failed', `Error: syntax error (a ${s.kind} element)\n${line}`);
          const had = s.elements.get(key);
          // add of an element that exists is no error; a map key with another value is.
          if (had !== undefined && had !== value) throw new Failure('exists', `Error: Could not process rule: File exists\n${line}`);
          s.elements.set(key, value);
        }
      } else {
        throw new Failure('failed', `Error: syntax error (the fake kernel does not know this line)\n${line}`);
      }
    }
    this.#nft = state;
  }

  // ---- namespaces and links ----

  #newNs(key: string): FakeNs {
    const ns: FakeNs = { id: this.#nextNsId++, links: new Map(), defaults: new Map(), routes: new Map(), neighs: new Map(), extraRoutes: [], pids: [] };
    this.#ns.set(key, ns);
    return ns;
  }

  #deleteNs(key: string): void {
    const ns = this.#ns.get(key);
    if (!ns) return;
    // Its veths die with it, and so do their other ends.
    for (const name of [...ns.links.keys()]) if (ns.links.has(name)) this.#deleteLink(key, name);
    this.#ns.delete(key);
  }

  #newLink(ns: FakeNs, name: string, kind: FakeLink['kind'], mac: string, mtu: number): FakeLink {
    const link: FakeLink = {
      ifindex: this.#nextIfindex++, name, kind, master: undefined, up: false, hairpin: false, mac, mtu, peer: undefined, addrs: [],
      sysctls: new Map(ns === this.#ns.get(HOST) ? Object.entries(PER_LINK_SYSCTLS) : []), vxlan: undefined, fdb: new Map(),
      qdisc: undefined, redirect: undefined,
    };
    ns.links.set(name, link);
    return link;
  }

  #deleteLink(key: string, name: string): void {
    const ns = this.#ns.get(key);
    const link = ns?.links.get(name);
    if (!ns || !link) return;
    ns.links.delete(name);
    if (key === this.#key(undefined)) this.resolvedLinks.delete(name); // resolved forgets a link that is gone
    for (const [f, r] of ns.defaults) if (r.dev === name) ns.defaults.delete(f);
    // Its routes and neighbour entries go with it.
    for (const [dst, r] of ns.routes) if (r.dev === name) ns.routes.delete(dst);
    for (const k of [...ns.neighs.keys()]) if (k.startsWith(`${name} `)) ns.neighs.delete(k);
    // A bridge's ports stay, detached.
    if (link.kind === 'bridge') for (const l of ns.links.values()) if (l.master === name) l.master = undefined;
    if (link.peer) this.#deleteLink(link.peer.ns, link.peer.name);
  }

  #mac(): string {
    const n = this.#nextMac++;
    return `02:fa:00:${((n >> 16) & 0xff).toString(16).padStart(2, '0')}:${((n >> 8) & 0xff).toString(16).padStart(2, '0')}:${(n & 0xff).toString(16).padStart(2, '0')}`;
  }

  #host(): FakeNs {
    return this.#ns.get(HOST)!;
  }

  #key(ns: Netns | undefined): string {
    return ns ? netnsPath(ns) : HOST;
  }

  #nsOrThrow(key: string): FakeNs {
    const ns = this.#ns.get(key);
    if (!ns) throw new Error(`the fake kernel has no namespace ${key}`);
    return ns;
  }

  /** The namespace an operation runs in; ip -n / nsenter fail when it is gone. */
  #nsOf(ns: Netns | undefined): FakeNs {
    const found = this.#ns.get(this.#key(ns));
    if (!found) {
      throw new Failure('not-found', ns && 'name' in ns
        ? `Cannot open network namespace "${ns.name}": No such file or directory`
        : `nsenter: cannot open ${this.#key(ns)}: No such file or directory`);
    }
    return found;
  }

  #linkOf(ns: Netns | undefined, name: string): FakeLink {
    const link = this.#nsOf(ns).links.get(name);
    if (!link) throw new Failure('not-found', `Cannot find device "${name}"`);
    return link;
  }

  #perLinkSysctl(key: string): { link: FakeLink; setting: string } | undefined {
    const m = /^net\/ipv([46])\/conf\/([^/]+)\/([^/]+)$/.exec(key);
    if (!m || m[2] === 'all' || m[2] === 'default') return undefined;
    const link = this.#host().links.get(m[2]!);
    if (!link) return undefined;
    const setting = m[1] === '4' ? m[3]! : `ipv6/${m[3]}`;
    return link.sysctls.has(setting) ? { link, setting } : undefined;
  }

  // ---- reads ----

  #readNs(op: string, argv: string[], ns: Netns | undefined): FakeNs {
    const found = this.#ns.get(this.#key(ns));
    if (!found) {
      throw new KernelError({ kind: 'not-found', op, command: shellLine(argv), stderr: `Cannot open network namespace: No such file or directory`, exitCode: 1 });
    }
    return found;
  }

  #linkInfo(key: string, l: FakeLink): LinkInfo {
    const peer = l.peer && this.#ns.get(l.peer.ns)?.links.get(l.peer.name);
    const lowerUp = l.up && (l.kind !== 'veth' || (peer?.up ?? false));
    return {
      ifindex: l.ifindex, ifname: l.name,
      ...(peer ? { link_index: peer.ifindex } : {}),
      ...(peer && l.peer!.ns !== key ? { link_netnsid: this.#ns.get(l.peer!.ns)!.id } : {}),
      ...(l.master ? { master: l.master } : {}),
      operstate: l.kind === 'loopback' ? (l.up ? 'UNKNOWN' : 'DOWN') : lowerUp ? 'UP' : l.up && l.kind === 'veth' ? 'LOWERLAYERDOWN' : 'DOWN',
      address: l.mac, mtu: l.mtu,
      flags: [l.kind === 'loopback' ? 'LOOPBACK' : 'BROADCAST', 'MULTICAST', ...(l.up ? ['UP'] : []), ...(lowerUp ? ['LOWER_UP'] : [])],
      ...(['bridge', 'veth', 'ifb', 'macvlan', 'ipvlan'].includes(l.kind) ? { linkinfo: { info_kind: l.kind } } : {}),
      ...(l.vxlan ? { linkinfo: { info_kind: 'vxlan', info_data: { id: l.vxlan.vni, local: l.vxlan.local, link: l.vxlan.dev, port: l.vxlan.port, learning: false } } } : {}),
    };
  }

  async netnsIds(): Promise<{ nsid: number; name?: string }[]> {
    return [...this.#ns.entries()].filter(([k]) => k !== HOST).map(([k, n]) => {
      const m = /^\/run\/netns\/([^/]+)$/.exec(k);
      return { nsid: n.id, ...(m ? { name: m[1]! } : {}) };
    });
  }

  async links(ns?: Netns): Promise<LinkInfo[]> {
    const key = this.#key(ns);
    const n = this.#readNs('link.list', ['ip', '-j', '-d', 'link', 'show'], ns);
    return [...n.links.values()].sort((a, b) => a.ifindex - b.ifindex).map((l) => this.#linkInfo(key, l));
  }

  async link(name: string, ns?: Netns): Promise<LinkInfo | undefined> {
    const n = this.#ns.get(this.#key(ns));
    const l = n?.links.get(name);
    return l && this.#linkInfo(this.#key(ns), l);
  }

  /** The fake carries no traffic: every link's counters are zero. */
  async linkStats(ns?: Netns): Promise<LinkStats[]> {
    return (await this.links(ns)).map((l) => ({ ifname: l.ifname, rx: { bytes: 0, packets: 0 }, tx: { bytes: 0, packets: 0 } }));
  }

  async linksOf(bridge: string): Promise<LinkInfo[]> {
    const host = this.#host();
    if (!host.links.has(bridge)) {
      throw new KernelError({ kind: 'not-found', op: 'link.list', command: shellLine(['ip', '-j', 'link', 'show', 'master', bridge]),
        stderr: `Error: argument "${bridge}" is wrong: Device does not exist`, exitCode: 255 });
    }
    return [...host.links.values()].filter((l) => l.master === bridge).sort((a, b) => a.ifindex - b.ifindex).map((l) => this.#linkInfo(HOST, l));
  }

  #addrsOf(n: FakeNs): AddrInfo[] {
    return [...n.links.values()].sort((a, b) => a.ifindex - b.ifindex).map((l) => ({
      ifname: l.name,
      addr_info: l.addrs.map((c) => {
        const [local, len] = c.split('/');
        return { family: familyOf(local!) === 4 ? 'inet' : 'inet6', local: local!, prefixlen: Number(len), scope: l.kind === 'loopback' ? 'host' : 'global' };
      }),
    }));
  }

  async addrs(ns?: Netns): Promise<AddrInfo[]> {
    return this.#addrsOf(this.#readNs('addr.list', ['ip', '-j', 'addr', 'show'], ns));
  }

  async routes(ns?: Netns): Promise<RouteInfo[]> {
    const n = this.#readNs('route.list', ['ip', '-j', 'route', 'show'], ns);
    const out: RouteInfo[] = [];
    for (const f of [4, 6] as const) {
      const d = n.defaults.get(f);
      if (d) out.push({ dst: 'default', gateway: d.via, dev: d.dev });
      // Connected routes of up links (the loopback's live in the local table).
      for (const l of [...n.links.values()].sort((a, b) => a.ifindex - b.ifindex)) {
        if (!l.up || l.kind === 'loopback') continue;
        for (const c of l.addrs.filter((x) => familyOf(x) === f)) {
          out.push({ dst: networkOf(c), dev: l.name, protocol: 'kernel', scope: 'link', ...(f === 4 ? { prefsrc: c.split('/')[0]! } : {}) });
        }
      }
      for (const r of [...n.routes.values()].filter((x) => familyOf(x.via) === f)) {
        out.push({ dst: r.dst, gateway: r.via, dev: r.dev, ...(r.onlink ? { flags: ['onlink'] } : {}) });
      }
      out.push(...n.extraRoutes.filter((r) => (r.gateway ?? r.dst).includes(':') === (f === 6)));
    }
    return out;
  }

  async neighbours(ns?: Netns): Promise<NeighInfo[]> {
    const n = this.#readNs('neigh.list', ['ip', '-j', 'neigh', 'show'], ns);
    return [...n.neighs].map(([k, mac]) => ({ dst: k.split(' ')[1]!, dev: k.split(' ')[0]!, lladdr: mac, state: ['PERMANENT'] }));
  }

  async fdb(_bridge: string): Promise<FdbInfo[]> {
    return [];
  }

  async fdbOf(dev: string): Promise<FdbInfo[]> {
    const link = this.#host().links.get(dev);
    if (!link) {
      throw new KernelError({ kind: 'not-found', op: 'fdb.list', command: shellLine(['bridge', '-j', 'fdb', 'show', 'dev', dev]),
        stderr: `Cannot find device "${dev}"`, exitCode: 255 });
    }
    return [...link.fdb].map(([mac, dst]) => ({ mac, dst, flags: ['self'], state: 'permanent' }));
  }

  /** nft -j list table inet ctnet, in the shape listPolicies and the labs read: sets' elem are texts, maps' [key, value]. */
  async nftTable(family: 'inet' | 'bridge' = 'inet', options: { readonly terse?: boolean } = {}): Promise<unknown[] | undefined> {
    const t = this.#nft;
    if (!t) return undefined;
    // The bridge table's names carry "bridge:" here (see BRIDGE).
    const mine = (name: string) => (family === 'bridge') === name.startsWith('bridge:');
    const bare = (name: string) => name.replace(/^bridge:/, '');
    if (family === 'bridge' && ![...t.sets.keys(), ...t.chains.keys()].some(mine)) return undefined;
    return [
      { table: { family, name: 'ctnet' } },
      ...[...t.sets].filter(([name]) => mine(name)).map(([name, s]) => (options.terse // nft -t: no elements
        ? { [s.kind]: { family, table: 'ctnet', name: bare(name) } }
        : s.kind === 'set'
        ? { set: { family, table: 'ctnet', name: bare(name), elem: [...s.elements.keys()] } }
        : { map: { family, table: 'ctnet', name: bare(name), elem: [...s.elements].map(([k, v]) => [k, v]) } })),
      ...[...t.chains].filter(([name]) => mine(name)).flatMap(([name, c]) => [
        { chain: { family, table: 'ctnet', name: bare(name) } },
        ...c.rules.map((expr) => ({ rule: { family, table: 'ctnet', chain: bare(name), expr } })),
      ]),
    ];
  }

  async nftCounts(): Promise<NftCounts> {
    const [inet, bridge] = await Promise.all([this.nftTable('inet'), this.nftTable('bridge')]);
    return { inet: inet && countsOfNftJson(inet), bridge: bridge && countsOfNftJson(bridge) };
  }

  async nftTableText(): Promise<string | undefined> {
    const t = this.#nft;
    if (!t) return undefined;
    const out = [`table ${TABLE} {`];
    for (const [name, s] of t.sets) {
      out.push(`\t${s.kind} ${name} {`);
      if (s.elements.size) out.push(`\t\telements = { ${[...s.elements].map(([k, v]) => (v === null ? k : `${k} : ${v}`)).join(', ')} }`);
      out.push('\t}');
    }
    for (const [name, c] of t.chains) {
      out.push(`\tchain ${name} {`);
      if (c.spec) out.push(`\t\t${c.spec}`);
      for (const r of c.rules) out.push(`\t\t${r}`);
      out.push('\t}');
    }
    out.push('}');
    return out.join('\n') + '\n';
  }

  #chainList(): NftChain[] {
    return [...(this.#nft?.chains ?? [])].map(([name, c]) => {
      const m = /type \w+ hook (\w+) priority ([\w-]+); policy (\w+);/.exec(c.spec ?? '');
      if (!m) return { family: 'inet', table: 'ctnet', name };
      const prio = CHAIN_PRIORITIES[m[2]!] ?? Number(m[2]);
      return { family: 'inet', table: 'ctnet', name, hook: m[1]!, prio, policy: m[3]! };
    });
  }

  async nftChains(): Promise<NftChain[]> {
    return [...this.foreignChains, ...this.#chainList()];
  }

  async flows(): Promise<Flow[]> {
    return structuredClone(this.#flows);
  }

  async listeners(sctp: boolean): Promise<Listener[]> {
    return this.listening.filter((l) => sctp || l.proto !== 'sctp');
  }

  sysctl(key: string): string | undefined {
    const k = slashKey(key);
    const perLink = this.#perLinkSysctl(k);
    return perLink ? perLink.link.sysctls.get(perLink.setting) : this.#sysctls.get(k);
  }

  resolvNames(): string[] {
    return [...this.resolvFiles.keys()];
  }
  async resolvedHere(): Promise<boolean> {
    return this.resolvedRunning;
  }
  async resolvedLink(dev: string): Promise<{ dns: string[]; domains: string[] } | undefined> {
    if (!this.resolvedRunning || !this.#host().links.has(dev)) return undefined;
    return this.resolvedLinks.get(dev) ?? { dns: [], domains: [] };
  }
  netnsNames(): string[] {
    return [...this.#ns.keys()].filter((k) => /^\/run\/netns\/[^/]+$/.test(k)).map((k) => k.slice('/run/netns/'.length)).sort();
  }

  isNetns(path: string): boolean {
    return path !== HOST && this.#ns.has(path);
  }

  netnsPids(ns: Netns): number[] {
    return [...(this.#ns.get(netnsPath(ns))?.pids ?? [])];
  }

  async toolVersion(tool: 'ip' | 'nft' | 'conntrack'): Promise<string | undefined> {
    return { ip: 'ip utility, iproute2-6.1.0 (fake)', nft: 'nftables v1.0.6 (fake)', conntrack: 'conntrack v1.4.7 (fake)' }[tool];
  }

  async nftTables(): Promise<{ family: string; table: string }[]> {
    return [...new Set((await this.nftChains()).map((c) => `${c.family} ${c.table}`))].map((k) => ({ family: k.split(' ')[0]!, table: k.split(' ')[1]! }));
  }
  // A fake kernel carries no packets: trace needs the real one.
  traceMonitor(): Promise<TraceMonitor> {
    return Promise.reject(new Error('the fake kernel carries no packets: ctnet trace needs the real kernel'));
  }
  probe(): Promise<ProbeResult> {
    return Promise.reject(new Error('the fake kernel carries no packets: ctnet trace needs the real kernel'));
  }
  async routeGet(): Promise<{ dst: string }[]> {
    return [];
  }
  async legacyForward(): Promise<string | undefined> {
    return undefined;
  }
}
