// The store's records as the rest of the engine uses them: lookups that fail with a clear error,
// and networks and attachments in the shape drivers plan from.
import { CtnetError } from '../errors.ts';
import type { DriverAttachment, DriverNetwork } from '../drivers/driver.ts';
import { driverFor } from '../drivers/index.ts';
import type { NetworkDriver } from '../drivers/driver.ts';
import { netnsOf, type Netns } from '../model/netns.ts';
import type { AddressRow, AttachmentRow, NetworkRow, SandboxRow, Store } from '../store/store.ts';

export function sandboxNetns(s: Pick<SandboxRow, 'netns'>): Netns {
  return netnsOf(s.netns);
}

/** A sandbox that exists and is not in the middle of an operation. */
export function readySandbox(store: Store, name: string): SandboxRow {
  const s = store.sandbox(name);
  if (!s) throw new CtnetError('NOT_FOUND', `no sandbox named ${name}`, 'list sandboxes with "ctnet ls"');
  if (s.state !== 'ready') {
    throw new CtnetError('STATE', `sandbox ${name} is ${s.state}`, 'wait for the operation on it to finish, or run "ctnet gc" if it was interrupted');
  }
  return s;
}

/** A network that exists (in any state). */
export function existingNetwork(store: Store, name: string): NetworkRow {
  const n = store.network(name);
  if (!n) throw new CtnetError('NOT_FOUND', `no network named ${name}`, 'list networks with "ctnet network ls"');
  return n;
}

/** A network that exists and is not in the middle of an operation. */
export function readyNetwork(store: Store, name: string): NetworkRow {
  const n = store.network(name);
  if (!n) throw new CtnetError('NOT_FOUND', `no network named ${name}`, `create it with "ctnet network create ${name} --subnet CIDR"`);
  if (n.state !== 'ready') throw new CtnetError('STATE', `network ${name} is ${n.state}`, 'run "ctnet gc" if an operation on it was interrupted');
  return n;
}

export function driverNetwork(store: Store, n: NetworkRow): DriverNetwork {
  const o = store.overlay(n.name);
  return {
    name: n.name, device: n.bridge, mac: n.mac, internal: n.internal, isolate: n.isolate, hostAccess: n.hostAccess, dns: n.dns, mtu: n.mtu, lower: n.lower,
    subnets: store.subnets(n.name).map((s) => ({ family: s.family, cidr: s.cidr, gateway: s.gateway })),
    egress: store.networkEgress(n.name).map((e) => ({ family: e.family, ip: e.ip })),
    overlay: o && {
      vni: o.vni, port: o.port, device: o.device, vtepMac: o.vtepMac, cidrs: [o.cidr], underlay: { ip: o.underlayIp, dev: o.underlayDev },
      peers: store.peers(n.name).map((p) => ({ host: p.host, subnet: p.subnet, underlay: p.underlay, vtepMac: p.vtepMac })),
    },
  };
}

export function driverOf(n: NetworkRow): NetworkDriver {
  return driverFor(n.driver);
}

/** A recorded attachment as its driver plans it; defaults: the families whose default route it carries. */
export function driverAttachment(store: Store, s: Pick<SandboxRow, 'netns'>, a: Pick<AttachmentRow, 'sandbox' | 'network' | 'ifname' | 'hostVeth' | 'mac'>,
  addresses: readonly AddressRow[], defaults: readonly (4 | 6)[]): DriverAttachment {
  const subnets = store.subnets(a.network);
  return {
    sandbox: a.sandbox, ifname: a.ifname, hostVeth: a.hostVeth, mac: a.mac, netns: sandboxNetns(s),
    addresses: addresses.map((x) => ({ family: x.family, ip: x.ip, cidr: x.cidr })),
    defaults: defaults.flatMap((f) => {
      const gw = subnets.find((x) => x.family === f)?.gateway;
      return gw ? [{ family: f, via: gw }] : [];
    }),
  };
}

/**
 * True when this attachment should carry the sandbox's default route for a family: the first
 * network with a way out has it; with none, the first --internal one (its egress is dropped by
 * nft, but policy may allow traffic to other networks, and replies need a route back).
 */
export function carriesDefault(store: Store, sandbox: string, network: NetworkRow, family: 4 | 6, earlier: readonly string[]): boolean {
  // A network the sandbox chose (--default-route, ctnet route) carries it whenever it has the family.
  const chosen = store.defaultRoute(sandbox);
  if (chosen && store.subnets(chosen).some((s) => s.family === family)) {
    if (chosen === network.name) return true;
    if (earlier.includes(chosen) || store.attachments({ sandbox }).some((a) => a.network === chosen)) return false;
    // Not attached yet (later in this request): the usual rule until it takes the route over.
  }
  const others = [...store.attachments({ sandbox }).map((a) => a.network), ...earlier].filter((n) => n !== network.name);
  const has = (o: string, internal: boolean | undefined) => {
    const n = store.network(o);
    return n !== undefined && (internal === undefined || n.internal === internal) && store.subnets(o).some((s) => s.family === family);
  };
  if (!network.internal) return !others.some((o) => has(o, false));
  return !others.some((o) => has(o, undefined));
}

/** The network that carries a sandbox's default route: the one it chose, else as carriesDefault chose it (in ifname order). */
export function defaultCarrier(store: Store, sandbox: string, family: 4 | 6): string | undefined {
  const withFamily = store.attachments({ sandbox }).filter((a) => store.subnets(a.network).some((s) => s.family === family));
  const chosen = store.defaultRoute(sandbox);
  if (chosen && withFamily.some((a) => a.network === chosen)) return chosen;
  return (withFamily.find((a) => store.network(a.network)?.internal === false) ?? withFamily[0])?.network;
}

/** The default route a sandbox has now for a family (via its carrier), if any. */
export function currentDefault(store: Store, sandbox: string, family: 4 | 6): { via: string; dev: string } | undefined {
  const carrier = defaultCarrier(store, sandbox, family);
  if (!carrier) return undefined;
  const a = store.attachments({ sandbox }).find((x) => x.network === carrier);
  const gw = store.subnets(carrier).find((x) => x.family === family)?.gateway;
  return a && gw ? { via: gw, dev: a.ifname } : undefined;
}
