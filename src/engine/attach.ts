// Deciding attachments: interface names, MACs, addresses and default routes of a sandbox on one or
// more networks, recorded while the store's write lock is held (so no address is handed out twice).
import { CtnetError } from '../errors.ts';
import type { DriverAttachment } from '../drivers/driver.ts';
import { contains, parseSubnet } from '../model/cidr.ts';
import { allocate } from '../model/ipam.ts';
import { randomMac } from '../model/mac.ts';
import type { Netns } from '../model/netns.ts';
import type { AttachSpec, IpRequest } from '../model/spec.ts';
import { sandboxEgressElements } from '../nft/ruleset.ts';
import type { Step } from '../plan/plan.ts';
import type { AddressRow, AttachmentRow, NetworkRow, Store } from '../store/store.ts';
import type { Recorder } from './applier.ts';
import { nextIfname, vethName } from './naming.ts';
import { addressHolder } from './services.ts';
import { carriesDefault, currentDefault, driverNetwork, driverOf, readyNetwork } from './records.ts';

/** One attachment as decided: its record, its network, its addresses and the default routes it carries. */
export interface PlannedAttachment {
  readonly row: Omit<AttachmentRow, 'owner'>;
  readonly network: NetworkRow;
  readonly addresses: readonly AddressRow[];
  readonly defaults: DriverAttachment['defaults'];
}

function checkRequestedIps(store: Store, networks: readonly string[], ips: readonly IpRequest[]): void {
  const subnets = networks.flatMap((n) => store.subnets(n));
  const inSubnet = new Map<string, IpRequest>();
  for (const r of ips) {
    const s = subnets.find((x) => contains(parseSubnet('subnet', x.cidr), r.family, r.n));
    if (!s) {
      throw new CtnetError('INVALID_ARGUMENT', `--ip ${r.text} is outside the subnets of ${networks.join(', ')} (${subnets.map((x) => x.cidr).join(', ')})`,
        'choose an address inside one of them');
    }
    // One address per subnet: a second one would be silently ignored.
    const other = inSubnet.get(s.cidr);
    if (other) {
      throw new CtnetError('INVALID_ARGUMENT', `--ip ${other.text} and --ip ${r.text} are both in subnet ${s.cidr} of network ${s.network}`,
        'a sandbox gets one address per subnet: give one of them');
    }
    inSubnet.set(s.cidr, r);
  }
}

/** Default routes a namespace has, by family, as the kernel lists them. */
export type KernelDefaults = ReadonlyMap<4 | 6, { readonly via: string; readonly dev: string }>;

export function kernelDefaults(routes: readonly { dst: string; gateway?: string | undefined; dev?: string | undefined }[]): KernelDefaults {
  const out = new Map<4 | 6, { via: string; dev: string }>();
  for (const r of routes) if (r.dst === 'default' && r.gateway && r.dev) out.set(r.gateway.includes(':') ? 6 : 4, { via: r.gateway, dev: r.dev });
  return out;
}

/**
 * Decides and records attachments of SANDBOX to NETWORKS (call while deciding). ifname fixes the
 * (single) attachment's interface name, as a CNI runtime does; usedIfnames are taken already.
 * foreign: the default routes someone else's namespace has now (another plugin's), which an
 * attachment that takes a default over must put back when it is undone.
 */
export function recordAttachments(rec: Recorder, sandbox: string, networks: readonly string[], spec: Pick<AttachSpec, 'ips' | 'mac'> & Partial<Pick<AttachSpec, 'aliases'>>,
  usedIfnames: string[], ifname?: string, foreign?: KernelDefaults): PlannedAttachment[] {
  const { store } = rec;
  checkRequestedIps(store, networks, spec.ips);
  // The default route each family has now; an attachment that takes it over undoes to it.
  const now = (f: 4 | 6) => currentDefault(store, sandbox, f) ?? foreign?.get(f);
  const current = new Map<4 | 6, { via: string; dev: string } | undefined>([[4, now(4)], [6, now(6)]]);
  const planned: PlannedAttachment[] = [];
  for (const [i, name] of networks.entries()) {
    const network = readyNetwork(store, name);
    if (store.attachments({ sandbox }).some((a) => a.network === name)) {
      throw new CtnetError('CONFLICT', `sandbox ${sandbox} is already connected to network ${name}`);
    }
    if (ifname !== undefined && usedIfnames.includes(ifname)) {
      throw new CtnetError('CONFLICT', `sandbox ${sandbox} has an interface ${ifname} already`, 'choose another interface name');
    }
    const chosen = ifname ?? nextIfname(usedIfnames);
    usedIfnames.push(chosen);
    let hostVeth = vethName();
    while (store.hostVethTaken(hostVeth)) hostVeth = vethName();
    const row = {
      sandbox, network: name, ifname: chosen, hostVeth,
      mac: (i === 0 ? spec.mac : undefined) ?? randomMac(), state: 'creating' as const,
    };
    rec.record({ kind: 'attachment.insert', row });
    recordAliases(rec, sandbox, name, spec.aliases ?? []);
    const addresses = store.subnets(name).map((lease): AddressRow => {
      // A macvlan/ipvlan network's host shim holds an address of its subnet too; so does a service's VIP.
      const a = allocate(name, lease, spec.ips, (ip) => (ip === network.lower?.shimIp ? `(the host shim of network ${name})` : addressHolder(store, ip)));
      if (a.cursor !== undefined) rec.record({ kind: 'cursor.set', network: name, cidr: lease.cidr, ip: a.cursor });
      const address = { ip: a.ip, family: a.family, cidr: a.cidr, network: name, sandbox };
      rec.record({ kind: 'address.insert', row: address });
      return address;
    });
    const defaults = ([4, 6] as const).filter((f) =>
      addresses.some((a) => a.family === f) && carriesDefault(store, sandbox, network, f, networks.slice(0, i))).map((f) => {
      const via = store.subnets(name).find((s) => s.family === f)!.gateway;
      const previous = current.get(f);
      current.set(f, { via, dev: chosen });
      return { family: f, via, previous };
    });
    planned.push({ row, network, addresses, defaults });
  }
  return planned;
}

/**
 * A sandbox's names on a network (DNS, services/dns/): its own and its aliases. An alias may be
 * shared by several sandboxes (round robin), but never be another sandbox's name there, nor the
 * other way round: a name answers for one sandbox, or for the sandboxes sharing an alias.
 */
function recordAliases(rec: Recorder, sandbox: string, network: string, aliases: readonly string[]): void {
  const { store } = rec;
  const lower = sandbox.toLowerCase();
  const others = store.attachments({ network }).filter((a) => a.sandbox !== sandbox).map((a) => a.sandbox.toLowerCase());
  const taken = store.aliases({ network }).find((a) => a.alias === lower && a.sandbox !== sandbox);
  if (taken) {
    throw new CtnetError('CONFLICT', `sandbox name ${sandbox} is an alias of ${taken.sandbox} on network ${network}`,
      `choose another sandbox name, or remove ${taken.sandbox}`);
  }
  for (const alias of aliases) {
    if (others.includes(alias)) {
      throw new CtnetError('CONFLICT', `--alias ${alias} is the name of another sandbox on network ${network}`, 'choose another alias');
    }
    rec.record({ kind: 'alias.insert', row: { sandbox, network, alias } });
  }
}

/** The driver's plan that plugs a decided attachment in. */
export function attachSteps(store: Store, ns: Netns, p: PlannedAttachment, extraNft?: { add: readonly string[]; del: readonly string[] }): Step[] {
  const a: DriverAttachment = {
    sandbox: p.row.sandbox, ifname: p.row.ifname, hostVeth: p.row.hostVeth, mac: p.row.mac, netns: ns,
    addresses: p.addresses.map((x) => ({ family: x.family, ip: x.ip, cidr: x.cidr })), defaults: p.defaults,
  };
  const egress = egressLines(store, p.row.sandbox, p.network, p.addresses);
  const extra = { add: [...(extraNft?.add ?? []), ...egress.add], del: [...(extraNft?.del ?? []), ...egress.del] };
  return driverOf(p.network).planAttach(driverNetwork(store, p.network), a, extra);
}

/** The sandbox's --egress-ip elements for its addresses on one network (none on an --internal one). */
export function egressLines(store: Store, sandbox: string, network: Pick<NetworkRow, 'internal'>, addresses: readonly { family: 4 | 6; ip: string }[]): { add: string[]; del: string[] } {
  const egress = network.internal ? [] : store.sandboxEgress(sandbox);
  return { add: sandboxEgressElements('add', addresses, egress), del: sandboxEgressElements('delete', addresses, egress) };
}
