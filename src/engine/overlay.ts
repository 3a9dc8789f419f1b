// Use cases of an overlay network's peers on this host: program the peers the control plane lists
// (syncPeers), and say which recorded peers the kernel holds (peerStatus). The control plane (the
// etcd watch in ctnetd) calls these with plain data; nothing here knows where the peers came from.
import { CtnetError } from '../errors.ts';
import { checkPeers, entriesOf, entryText, localVtep, observePeers, planPeerEntries } from '../drivers/vxlan/peers.ts';
import type { Peer } from '../model/overlay.ts';
import type { StoreChange } from '../store/changes.ts';
import type { Ctx } from './context.ts';
import { driverNetwork, readyNetwork } from './records.ts';

export interface PeerSync {
  /** Hosts whose entries were written (new, or changed: another subnet, underlay address or VTEP MAC). */
  readonly programmed: readonly string[];
  /** Hosts recorded before and not listed now: their entries were removed. */
  readonly removed: readonly string[];
  /** Peers left out, and why. */
  readonly refused: readonly { readonly host: string; readonly reason: string }[];
  /** Kernel and nft operations applied (0 when everything was right already). */
  readonly operations: number;
}

function overlayNetwork(ctx: Ctx, network: string) {
  const n = readyNetwork(ctx.store, network);
  const dn = driverNetwork(ctx.store, n);
  if (!dn.overlay) throw new CtnetError('INVALID_ARGUMENT', `network ${network} is not an overlay network`, 'peers belong to networks made with --driver vxlan');
  return dn;
}

/**
 * Makes this host's kernel and store hold exactly `want` as the network's peers (this host, if
 * listed, is left out). Compares with what the kernel holds, not with what was recorded, so entries
 * lost or changed behind ctnet's back are put right, and entries that are right are not touched:
 * calling it again with the same peers changes nothing. A peer whose record would take this
 * host's own routes is refused (and reported), not programmed.
 */
export async function syncPeers(ctx: Ctx, network: string, want: readonly Peer[]): Promise<PeerSync> {
  const { store, kernel, applier } = ctx;
  const dn = overlayNetwork(ctx, network);
  const o = dn.overlay!;
  const local = localVtep(dn);
  const { usable, refused } = checkPeers(dn, local, want);
  const wanted = usable as readonly Peer[];
  const seen = await observePeers(kernel, dn);
  // nft's known VTEPs as recorded (the tables are written from the store), the rest as the kernel has it.
  const have = [...o.peers.flatMap((p) => entriesOf(p).filter((e) => e.kind === 'vtep')), ...seen.entries];
  const plan = planPeerEntries(dn, local, wanted, have);
  const held = new Set(have.map(entryText));
  const programmed = wanted.filter((p) => entriesOf(p).some((e) => !held.has(entryText(e)))).map((p) => p.host);
  const removed = o.peers.filter((p) => !wanted.some((w) => w.host === p.host)).map((p) => p.host);

  await applier.transaction(async (tx) => {
    tx.decide((rec) => {
      const changes: StoreChange[] = [
        ...wanted.filter((p) => {
          const was = o.peers.find((x) => x.host === p.host);
          return !was || was.subnet !== p.subnet || was.underlay !== p.underlay || was.vtepMac !== p.vtepMac;
        }).map((p): StoreChange => ({ kind: 'peer.set', row: { network, host: p.host, subnet: p.subnet, underlay: p.underlay, vtepMac: p.vtepMac } })),
        ...removed.map((host): StoreChange => ({ kind: 'peer.delete', network, host })),
      ];
      rec.record(...changes);
    });
    // Deletions are of entries just read from the kernel, and ctnetd is their one writer: one gone
    // meanwhile fails the call (undone whole; the next sync reads again).
    await tx.run(plan);
    tx.commit();
  });
  return {
    programmed, removed, refused: refused.map((r) => ({ host: 'host' in r.peer ? (r.peer as Peer).host : r.peer.underlay, reason: r.reason })),
    operations: plan.flatMap((s) => s.lanes.flat()).length,
  };
}

export interface PeerStatus extends Peer {
  /** Its three kernel entries, each as the kernel holds it (true: there and right). */
  readonly neigh: boolean;
  readonly fdb: boolean;
  readonly route: boolean;
}

/** The recorded peers of an overlay network, each with which of its three entries the kernel holds. */
export async function peerStatus(ctx: Ctx, network: string): Promise<PeerStatus[]> {
  const dn = overlayNetwork(ctx, network);
  const held = new Set((await observePeers(ctx.kernel, dn)).entries.map(entryText));
  return dn.overlay!.peers.map((p) => {
    const has = (kind: string) => entriesOf(p).filter((e) => e.kind === kind).every((e) => held.has(entryText(e)));
    return { ...p, neigh: has('neigh'), fdb: has('fdb'), route: has('route') };
  });
}
