// An overlay network's peers as kernel entries (flannel's L3 model): for each remote host exactly
// three entries on the local VXLAN device, whatever the number of sandboxes on either side:
//   neigh  PEER_VTEP_ADDR lladdr PEER_VTEP_MAC    the next hop's MAC, so the kernel never ARPs over VXLAN
//   fdb    PEER_VTEP_MAC dst PEER_UNDERLAY        where frames to that MAC are sent, encapsulated
//   route  PEER_SUBNET via PEER_VTEP_ADDR onlink  the peer's whole lease, through the device
// plus the peer's underlay address in nft's set of known VTEPs (VXLAN from anyone else is dropped).
// Pure but for observePeers(), which reads the kernel.
import type { KernelBackend, NeighInfo } from '../../kernel/backend.ts';
import { overlaps, parseSubnet } from '../../model/cidr.ts';
import { insideOverlay, vtepAddress, type Peer, type PeerDatapath } from '../../model/overlay.ts';
import { vtepElements } from '../../nft/ruleset.ts';
import type { Op } from '../../plan/ops.ts';
import { step, type Step } from '../../plan/plan.ts';
import { normalise } from '../bridge/bridge.ts';
import type { DriverNetwork, DriverOverlay } from '../driver.ts';

/** One entry a peer needs; `vtep` is its element in nft's set of known VTEPs, the others the kernel's. */
export type PeerEntry =
  | { readonly kind: 'neigh'; readonly addr: string; readonly mac: string }
  | { readonly kind: 'fdb'; readonly mac: string; readonly dst: string }
  | { readonly kind: 'route'; readonly subnet: string; readonly via: string }
  | { readonly kind: 'vtep'; readonly underlay: string };

/** This host's own record on an overlay network, as it publishes it to the other hosts. */
export interface LocalVtep {
  readonly underlay: string;
  readonly vtepMac: string;
  /** This host's lease. */
  readonly subnet: string;
}

/** A VXLAN network's overlay facts; throws for a network without them (a bridge network's). */
export function overlayOf(n: DriverNetwork): DriverOverlay {
  if (!n.overlay) throw new Error(`network ${n.name} has no overlay record`);
  return n.overlay;
}

/** The lease of this host on an overlay network: its one IPv4 subnet. */
export function leaseOf(n: DriverNetwork): { cidr: string; gateway: string } {
  const lease = n.subnets.find((s) => s.family === 4);
  if (!lease) throw new Error(`overlay network ${n.name} has no IPv4 lease`);
  return lease;
}

export function localVtep(n: DriverNetwork): LocalVtep {
  const o = overlayOf(n);
  return { underlay: o.underlay.ip, vtepMac: o.vtepMac, subnet: leaseOf(n).cidr };
}

/** The four entries of one peer. */
export function entriesOf(p: PeerDatapath): PeerEntry[] {
  const via = vtepAddress(p.subnet);
  const mac = p.vtepMac.toLowerCase();
  return [
    { kind: 'vtep', underlay: p.underlay },
    { kind: 'neigh', addr: via, mac },
    { kind: 'fdb', mac, dst: p.underlay },
    { kind: 'route', subnet: p.subnet, via },
  ];
}

/** An entry's identity in the kernel: the kernel holds one entry per key. */
function keyOf(e: PeerEntry): string {
  switch (e.kind) {
    case 'neigh': return `neigh ${e.addr}`;
    case 'fdb': return `fdb ${e.mac}`;
    case 'route': return `route ${e.subnet}`;
    case 'vtep': return `vtep ${e.underlay}`;
  }
}

function valueOf(e: PeerEntry): string {
  switch (e.kind) {
    case 'neigh': return e.mac;
    case 'fdb': return e.dst;
    case 'route': return e.via;
    case 'vtep': return '';
  }
}

/** An entry as one comparable string (its key and value). */
export const entryText = (e: PeerEntry): string => `${keyOf(e)} ${valueOf(e)}`;

export interface PeerCheck {
  readonly usable: readonly PeerDatapath[];
  /** Peers left out, and why (a control plane's bad record must not take the host's own routes). */
  readonly refused: readonly { readonly peer: PeerDatapath; readonly reason: string }[];
}

/**
 * The peers that can be programmed: this host itself is left out (a control plane lists every
 * host), and a peer is refused whose subnet lies outside the overlay, overlaps this host's lease
 * (its route would replace the bridge's own) or another peer's, or whose VTEP MAC is taken.
 */
export function checkPeers(n: DriverNetwork, local: LocalVtep, want: readonly PeerDatapath[]): PeerCheck {
  const o = overlayOf(n);
  const usable: PeerDatapath[] = [];
  const refused: { peer: PeerDatapath; reason: string }[] = [];
  const mine = parseSubnet('lease', local.subnet);
  for (const p of want) {
    if (p.underlay === local.underlay) continue; // this host (a control plane lists every host)
    const s = parseSubnet('peer subnet', p.subnet);
    const clash = usable.find((u) => overlaps(parseSubnet('peer subnet', u.subnet), s));
    let reason: string | undefined;
    if (!insideOverlay(o.cidrs, p.subnet)) reason = `its subnet ${p.subnet} is outside the overlay's ${o.cidrs.join(', ')}`;
    else if (overlaps(mine, s)) reason = `its subnet ${p.subnet} overlaps this host's lease ${local.subnet}`;
    else if (clash) reason = `its subnet ${p.subnet} overlaps ${clash.subnet} of the peer at ${clash.underlay}`;
    else if (p.vtepMac.toLowerCase() === local.vtepMac.toLowerCase()) reason = `its VTEP MAC ${p.vtepMac} is this host's`;
    else if (usable.some((u) => u.vtepMac.toLowerCase() === p.vtepMac.toLowerCase())) reason = `its VTEP MAC ${p.vtepMac} is another peer's`;
    if (reason) refused.push({ peer: p, reason });
    else usable.push(p);
  }
  return { usable, refused };
}

const named = (p: PeerDatapath) => ('host' in p ? `${(p as Peer).host} ` : '') + `(${p.subnet} at ${p.underlay})`;

/**
 * The steps that make the kernel hold exactly `want`'s entries when it holds `have`'s: a new or
 * changed entry is written with a replace verb (its inverse puts back what it replaced), an entry
 * no wanted peer has is deleted; an entry that is right already is not touched, so re-applying
 * changes nothing and no peer's traffic ever sees its entries flushed and re-added.
 * At most two steps: additions and replacements (known VTEP first, then neigh and fdb, the route
 * last: a route whose next hop has no neighbour entry would make the kernel ARP over VXLAN), then
 * removals (route first, for the same reason). Deletions carry what they delete, so a failure
 * puts back every entry, removed ones included.
 */
export function planPeers(n: DriverNetwork, local: LocalVtep, want: readonly PeerDatapath[], have: readonly PeerDatapath[]): Step[] {
  return planPeerEntries(n, local, want, have.flatMap(entriesOf));
}

/** planPeers against the entries found (observePeers), stray ones included. */
export function planPeerEntries(n: DriverNetwork, local: LocalVtep, want: readonly PeerDatapath[], have: readonly PeerEntry[]): Step[] {
  const o = overlayOf(n);
  const dev = o.device;
  const { usable } = checkPeers(n, local, want);
  const held = new Map(have.map((e) => [keyOf(e), e]));
  const wanted = new Map<string, PeerEntry>();
  for (const e of usable.flatMap(entriesOf)) if (!wanted.has(keyOf(e))) wanted.set(keyOf(e), e);

  const writes: PeerEntry[] = [];
  for (const [k, e] of wanted) {
    const h = held.get(k);
    if (!h || valueOf(h) !== valueOf(e)) writes.push(e);
  }
  const gone = [...held].filter(([k]) => !wanted.has(k)).map(([, e]) => e);

  const write = (e: PeerEntry): Op | undefined => {
    const h = held.get(keyOf(e));
    switch (e.kind) {
      case 'neigh': return { kind: 'neigh.replace', addr: e.addr, lladdr: e.mac, dev, previous: h?.kind === 'neigh' ? { lladdr: h.mac } : undefined };
      case 'fdb': return { kind: 'fdb.replace', mac: e.mac, dev, dst: e.dst, previous: h?.kind === 'fdb' ? { dst: h.dst } : undefined };
      case 'route':
        return { kind: 'route.replace', dst: e.subnet, via: e.via, dev, onlink: true, previous: h?.kind === 'route' ? { via: h.via, dev, onlink: true } : undefined };
      case 'vtep': return undefined; // one nft transaction for all of them
    }
  };
  const remove = (e: PeerEntry): Op | undefined => {
    switch (e.kind) {
      case 'neigh': return { kind: 'neigh.del', addr: e.addr, dev, lladdr: e.mac };
      case 'fdb': return { kind: 'fdb.del', mac: e.mac, dev, dst: e.dst };
      case 'route': return { kind: 'route.del', dst: e.subnet, via: e.via, dev, onlink: true };
      case 'vtep': return undefined;
    }
  };
  const ofKind = (es: readonly PeerEntry[], kind: PeerEntry['kind']) => es.filter((e) => e.kind === kind);
  const underlays = (es: readonly PeerEntry[]) => es.flatMap((e) => (e.kind === 'vtep' ? [e.underlay] : []));

  const steps: Step[] = [];
  if (writes.length > 0) {
    const newVteps = underlays(writes);
    const ops: Op[] = [
      ...(newVteps.length ? [{ kind: 'nft', lines: vtepElements('add', o, newVteps), undo: vtepElements('delete', o, newVteps) } as const] : []),
      ...(['neigh', 'fdb', 'route'] as const).flatMap((k) => ofKind(writes, k).map(write).filter((x) => x !== undefined)),
    ];
    const changed = usable.filter((p) => entriesOf(p).some((e) => writes.some((w) => keyOf(w) === keyOf(e))));
    steps.push(step(ops, `network ${n.name}: program peer${changed.length === 1 ? '' : 's'} ${changed.map(named).join(', ')} on ${dev}`));
  }
  if (gone.length > 0) {
    const oldVteps = underlays(gone);
    const ops: Op[] = [
      ...(['route', 'neigh', 'fdb'] as const).flatMap((k) => ofKind(gone, k).map(remove).filter((x) => x !== undefined)),
      ...(oldVteps.length ? [{ kind: 'nft.delete', lines: vtepElements('delete', o, oldVteps), undo: vtepElements('add', o, oldVteps) } as const] : []),
    ];
    steps.push(step(ops, `network ${n.name}: remove ${gone.length} entr${gone.length === 1 ? 'y' : 'ies'} of peers no longer there from ${dev}`));
  }
  return steps;
}

export interface ObservedPeers {
  /** Every neigh, fdb and route entry of the VXLAN device (nft's known VTEPs are the tables' business). */
  readonly entries: readonly PeerEntry[];
  /** The peers whose three entries are all there and agree (route via X, neigh X -> MAC, fdb MAC -> underlay). */
  readonly peers: readonly PeerDatapath[];
}

/** Reads the VXLAN device's entries: which peers the kernel holds (nothing when the device is gone). */
export async function observePeers(kernel: KernelBackend, n: DriverNetwork): Promise<ObservedPeers> {
  const dev = overlayOf(n).device;
  if (!(await kernel.link(dev))) return { entries: [], peers: [] };
  const [neighs, fdb, routes] = await Promise.all([kernel.neighbours(), kernel.fdbOf(dev), kernel.routes()]);
  // Entries the kernel makes itself (no MAC: incomplete, failed) are not ctnet's.
  const withMac = (x: NeighInfo): x is NeighInfo & { lladdr: string } => x.dev === dev && typeof x.lladdr === 'string';
  const entries: PeerEntry[] = [
    ...neighs.filter(withMac).map((x): PeerEntry => ({ kind: 'neigh', addr: x.dst, mac: x.lladdr.toLowerCase() })),
    ...fdb.filter((f) => f.dst).map((f): PeerEntry => ({ kind: 'fdb', mac: f.mac.toLowerCase(), dst: f.dst! })),
    ...routes.filter((r) => r.dev === dev && r.gateway && r.dst !== 'default').map((r): PeerEntry => ({ kind: 'route', subnet: normalise(r.dst), via: r.gateway! })),
  ];
  const macOf = new Map(entries.flatMap((e) => (e.kind === 'neigh' ? [[e.addr, e.mac] as const] : [])));
  const dstOf = new Map(entries.flatMap((e) => (e.kind === 'fdb' ? [[e.mac, e.dst] as const] : [])));
  const peers = entries.flatMap((e): PeerDatapath[] => {
    if (e.kind !== 'route') return [];
    const mac = macOf.get(e.via);
    const dst = mac && dstOf.get(mac);
    return mac && dst && e.via === vtepAddress(e.subnet) ? [{ subnet: e.subnet, underlay: dst, vtepMac: mac }] : [];
  });
  return { entries, peers };
}
