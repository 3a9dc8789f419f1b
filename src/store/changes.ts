// Changes to the store, as plain values: what a use case records, and (computed as each is made)
// what undoes it. The applier keeps these inverses in the same undo log as the kernel's, so one
// rollback puts store and kernel back together.
import type { Shape } from '../model/shape.ts';
import type { OwnedKind, OwnedRow, AddressRow, AliasRow, AttachmentRow, CniRow, NetworkRow, OverlayRow, PeerRow, PolicyState, PortRow, SandboxRow, ServiceRow, State, Store, SubnetRow } from './store.ts';

export type StoreChange =
  | {
    readonly kind: 'network.insert'; readonly row: Omit<NetworkRow, 'created' | 'owner'>; readonly subnets: readonly Omit<SubnetRow, 'network' | 'cursor'>[];
    /** An overlay network's side on this host (vxlan driver). */
    readonly overlay?: OverlayRow | undefined;
  }
  | { readonly kind: 'peer.set'; readonly row: PeerRow }
  | { readonly kind: 'peer.delete'; readonly network: string; readonly host: string }
  | { readonly kind: 'network.state'; readonly name: string; readonly state: State }
  | { readonly kind: 'network.delete'; readonly name: string }
  | { readonly kind: 'network.mac'; readonly name: string; readonly mac: string }
  | { readonly kind: 'network.mtu'; readonly name: string; readonly mtu: number | null }
  | { readonly kind: 'sandbox.insert'; readonly row: Omit<SandboxRow, 'created' | 'owner'> }
  | { readonly kind: 'sandbox.state'; readonly name: string; readonly state: State }
  | { readonly kind: 'sandbox.delete'; readonly name: string }
  | { readonly kind: 'attachment.insert'; readonly row: Omit<AttachmentRow, 'owner'> }
  | { readonly kind: 'attachment.state'; readonly sandbox: string; readonly network: string; readonly state: State }
  | { readonly kind: 'attachment.delete'; readonly sandbox: string; readonly network: string }
  | { readonly kind: 'address.insert'; readonly row: AddressRow }
  | { readonly kind: 'alias.insert'; readonly row: AliasRow }
  | { readonly kind: 'cursor.set'; readonly network: string; readonly cidr: string; readonly ip: string | null }
  | { readonly kind: 'port.insert'; readonly row: PortRow }
  | { readonly kind: 'port.delete'; readonly row: PortRow }
  | { readonly kind: 'label.set'; readonly sandbox: string; readonly key: string; readonly value: string }
  | { readonly kind: 'label.delete'; readonly sandbox: string; readonly key: string }
  | { readonly kind: 'cni.insert'; readonly row: Omit<CniRow, 'created'> }
  | { readonly kind: 'policy.delete'; readonly id: number }
  | { readonly kind: 'policy.mirror'; readonly sets: ReadonlyMap<string, readonly string[]> }
  /** The policy sets' mirror with its index (every element's box and owner, every rule's boxes), whole. */
  | { readonly kind: 'policy.state'; readonly state: PolicyState }
  | { readonly kind: 'meta.set'; readonly key: string; readonly value: string | null }
  | { readonly kind: 'egress.set'; readonly scope: 'network' | 'sandbox'; readonly name: string; readonly family: 4 | 6; readonly ip: string | null }
  | { readonly kind: 'default-route.set'; readonly sandbox: string; readonly network: string | null }
  /** A topology file takes (or gives up) an object: `down` and `--prune` touch only what it owns. */
  | { readonly kind: 'owner.set'; readonly row: OwnedRow }
  | { readonly kind: 'owner.delete'; readonly what: OwnedKind; readonly name: string }
  /** The shaping of one attachment; null: not shaped. */
  | { readonly kind: 'shaping.set'; readonly sandbox: string; readonly network: string; readonly shape: Shape | null }
  | { readonly kind: 'service.insert'; readonly row: Omit<ServiceRow, 'created'> }
  | { readonly kind: 'service.delete'; readonly name: string }
  | { readonly kind: 'service.backends'; readonly name: string; readonly backends: readonly string[] }
  | { readonly kind: 'service.state'; readonly name: string; readonly state: 'creating' | 'ready' | 'removing' };

/**
 * Makes a change (inside a store transaction) and returns what undoes it, or undefined where
 * nothing can: a deletion that cascades, which a use case only records once its kernel work is done.
 */
export function applyChange(store: Store, c: StoreChange): StoreChange | undefined {
  switch (c.kind) {
    case 'network.insert':
      store.insertNetwork(c.row, c.subnets);
      if (c.overlay) store.insertOverlay(c.overlay);
      return { kind: 'network.delete', name: c.row.name }; // its overlay and peers go with it (cascade)
    case 'peer.set': {
      const was = store.peers(c.row.network).find((p) => p.host === c.row.host);
      store.setPeer(c.row);
      return was ? { kind: 'peer.set', row: was } : { kind: 'peer.delete', network: c.row.network, host: c.row.host };
    }
    case 'peer.delete': {
      const was = store.peers(c.network).find((p) => p.host === c.host);
      store.deletePeer(c.network, c.host);
      return was && { kind: 'peer.set', row: was };
    }
    case 'network.state': {
      const was = store.network(c.name)?.state;
      store.setNetworkState(c.name, c.state);
      return was && { kind: 'network.state', name: c.name, state: was };
    }
    case 'network.delete':
      store.deleteNetwork(c.name);
      return undefined;
    case 'network.mac': {
      const was = store.network(c.name)?.mac;
      store.setNetworkMac(c.name, c.mac);
      return was ? { kind: 'network.mac', name: c.name, mac: was } : undefined;
    }
    case 'network.mtu': {
      const was = store.network(c.name);
      store.setNetworkMtu(c.name, c.mtu);
      return was && { kind: 'network.mtu', name: c.name, mtu: was.mtu };
    }
    case 'sandbox.insert':
      store.insertSandbox(c.row);
      return { kind: 'sandbox.delete', name: c.row.name };
    case 'sandbox.state': {
      const was = store.sandbox(c.name)?.state;
      store.setSandboxState(c.name, c.state);
      return was && { kind: 'sandbox.state', name: c.name, state: was };
    }
    case 'sandbox.delete':
      store.deleteSandbox(c.name);
      return undefined;
    case 'attachment.insert':
      store.insertAttachment(c.row);
      return { kind: 'attachment.delete', sandbox: c.row.sandbox, network: c.row.network };
    case 'attachment.state': {
      const was = store.attachments({ sandbox: c.sandbox }).find((a) => a.network === c.network)?.state;
      store.setAttachmentState(c.sandbox, c.network, c.state);
      return was && { kind: 'attachment.state', sandbox: c.sandbox, network: c.network, state: was };
    }
    case 'attachment.delete':
      store.deleteAttachment(c.sandbox, c.network);
      return undefined;
    // An address goes with its attachment (cascade); alone, it is deleted with the row's key.
    case 'address.insert':
      store.insertAddress(c.row);
      return undefined;
    case 'alias.insert':
      store.insertAlias(c.row);
      return undefined; // goes with its attachment (cascade), undone first
    case 'cursor.set': {
      const was = store.subnets(c.network).find((s) => s.cidr === c.cidr)?.cursor ?? null;
      store.setCursor(c.network, c.cidr, c.ip);
      return { kind: 'cursor.set', network: c.network, cidr: c.cidr, ip: was };
    }
    case 'port.insert':
      store.insertPort(c.row);
      return { kind: 'port.delete', row: c.row };
    case 'port.delete':
      store.deletePort(c.row);
      return { kind: 'port.insert', row: c.row };
    case 'label.set': {
      const was = store.labels(c.sandbox).find((l) => l.key === c.key);
      store.setLabel(c.sandbox, c.key, c.value);
      return was ? { kind: 'label.set', sandbox: c.sandbox, key: c.key, value: was.value } : { kind: 'label.delete', sandbox: c.sandbox, key: c.key };
    }
    case 'label.delete': {
      const was = store.labels(c.sandbox).find((l) => l.key === c.key);
      store.deleteLabel(c.sandbox, c.key);
      return was && { kind: 'label.set', sandbox: c.sandbox, key: c.key, value: was.value };
    }
    case 'cni.insert':
      store.insertCniAttachment(c.row);
      return undefined; // goes with its attachment (cascade)
    case 'policy.delete':
      store.deletePolicy(c.id);
      return undefined;
    case 'meta.set': {
      const was = store.meta(c.key) ?? null;
      store.setMeta(c.key, c.value);
      return { kind: 'meta.set', key: c.key, value: was };
    }
    case 'shaping.set': {
      const was = store.shaping(c.sandbox, c.network) ?? null;
      if (c.shape) store.setShaping(c.sandbox, c.network, c.shape);
      else store.deleteShaping(c.sandbox, c.network);
      return { kind: 'shaping.set', sandbox: c.sandbox, network: c.network, shape: was };
    }
    case 'egress.set': {
      const was = (c.scope === 'network' ? store.networkEgress(c.name) : store.sandboxEgress(c.name)).find((e) => e.family === c.family)?.ip ?? null;
      store.setEgress(c.scope, c.name, c.family, c.ip);
      return { ...c, ip: was };
    }
    case 'default-route.set': {
      const was = store.defaultRoute(c.sandbox) ?? null;
      store.setDefaultRoute(c.sandbox, c.network);
      return { kind: 'default-route.set', sandbox: c.sandbox, network: was };
    }
    case 'service.insert':
      store.insertService(c.row);
      return { kind: 'service.delete', name: c.row.name };
    case 'service.delete': {
      const was = store.service(c.name);
      store.deleteService(c.name);
      return was && { kind: 'service.insert', row: was };
    }
    case 'service.state': {
      const was = store.service(c.name)?.state ?? 'ready';
      store.setServiceState(c.name, c.state);
      return { kind: 'service.state', name: c.name, state: was };
    }
    case 'service.backends': {
      const was = store.service(c.name)?.backends;
      store.setServiceBackends(c.name, c.backends);
      return was && { kind: 'service.backends', name: c.name, backends: was };
    }
    case 'policy.mirror':
    case 'policy.state': {
      const state = store.policyState();
      const was = state ? undefined : store.policyMirror();
      if (c.kind === 'policy.mirror') store.setPolicyMirror(c.sets);
      else store.setPolicyState(c.state);
      return state ? { kind: 'policy.state', state } : { kind: 'policy.mirror', sets: new Map([...was!].map(([k, v]) => [k, [...v]])) };
    }
    case 'owner.set': {
      const was = store.owner(c.row.kind, c.row.name);
      store.setOwner(c.row);
      return was ? { kind: 'owner.set', row: was } : { kind: 'owner.delete', what: c.row.kind, name: c.row.name };
    }
    case 'owner.delete': {
      const was = store.owner(c.what, c.name);
      store.deleteOwner(c.what, c.name);
      return was && { kind: 'owner.set', row: was };
    }
  }
}
