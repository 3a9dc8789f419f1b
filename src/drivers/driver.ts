// A network driver turns a network and its attachments into kernel plans. The use cases (create,
// connect, disconnect, rm, gc) speak only this interface; `bridge` is the first driver, `vxlan` (an
// overlay across hosts) the second. Plans are data (src/plan/), so a driver does no I/O except in observe().
import type { KernelBackend } from '../kernel/backend.ts';
import type { Netns } from '../model/netns.ts';
import type { Shape } from '../model/shape.ts';
import type { LowerDevice } from '../store/store.ts';
import type { Peer } from '../model/overlay.ts';
import type { Step } from '../plan/plan.ts';

/** A network as a driver sees it (from the store's record). */
export interface DriverNetwork {
  readonly name: string;
  /** The host interface sandboxes attach to (the bridge's name). */
  readonly device: string;
  /** The device's MAC, fixed when the network is made; null for records from before it was kept. */
  readonly mac: string | null;
  readonly internal: boolean;
  readonly isolate: boolean;
  readonly hostAccess: boolean;
  /** ctnetd answers DNS on its gateways: sandboxes may reach their gateway's port 53, whatever else is closed. */
  readonly dns: boolean;
  readonly mtu: number | null;
  /** Its subnets on this host (an overlay network's: this host's lease), each with its gateway. */
  readonly subnets: readonly { readonly family: 4 | 6; readonly cidr: string; readonly gateway: string }[];
  /** An overlay network's side on this host (vxlan driver); absent for a bridge network. */
  readonly overlay?: DriverOverlay | undefined;
  /** A macvlan/ipvlan network's parent, mode and shim (device: the shim's name). */
  readonly lower?: LowerDevice | undefined;
  /** `--egress-ip`: the host address its egress leaves from, per family (none: masquerade's choice). */
  readonly egress?: readonly { readonly family: 4 | 6; readonly ip: string }[] | undefined;
}

/** What the vxlan driver needs beyond a bridge network: the VTEP and the peers this host programs. */
export interface DriverOverlay {
  readonly vni: number;
  readonly port: number;
  /** The VXLAN device (ctov-...). */
  readonly device: string;
  /** Its MAC, fixed when the network is made: peers' neighbour and fdb entries name it. */
  readonly vtepMac: string;
  /** The overlay's whole subnets: every host's lease lies in one. */
  readonly cidrs: readonly string[];
  /** This host's underlay address and the interface that has it. */
  readonly underlay: { readonly ip: string; readonly dev: string };
  /** The peers this host has programmed, as recorded. */
  readonly peers: readonly Peer[];
}

/** One sandbox interface on a network, with everything decided (names, MAC, addresses, routes). */
export interface DriverAttachment {
  readonly sandbox: string;
  readonly ifname: string;
  readonly hostVeth: string;
  readonly mac: string;
  /** The sandbox's namespace. */
  readonly netns: Netns;
  readonly addresses: readonly { readonly family: 4 | 6; readonly ip: string; readonly cidr: string }[];
  /** Default routes this attachment carries, with the one each replaces (another network's), if any. */
  readonly defaults: readonly { readonly family: 4 | 6; readonly via: string; readonly previous?: { via: string; dev: string } | undefined }[];
}

/** An attachment as shaping sees it: the host veth and the ifb device its egress goes through. */
export interface ShapedAttachment {
  readonly sandbox: string;
  readonly hostVeth: string;
  readonly ifb: string;
}

/** What the host has that a new network must not collide with. */
export interface HostView {
  readonly interfaces: ReadonlySet<string>;
  /** The devices of ctnet's networks (bridges): never a macvlan/ipvlan parent. */
  readonly bridges?: ReadonlySet<string> | undefined;
  /** Routes not made by ctnet: destination CIDR and what it goes through. */
  readonly routes: readonly { readonly dst: string; readonly via: string }[];
}

/** What is out of place in the kernel for a network, found by observe(); gc repairs it. */
export type Drift =
  | { readonly kind: 'device-missing' }
  | { readonly kind: 'port-missing'; readonly sandbox: string; readonly hostVeth: string }
  | { readonly kind: 'port-detached'; readonly sandbox: string; readonly hostVeth: string }
  /** An overlay network's VXLAN device is gone (with every peer's entries). */
  | { readonly kind: 'vtep-missing' }
  /** A recorded peer lacks some of its three entries (or they point elsewhere). */
  | { readonly kind: 'peer-missing'; readonly peer: Peer }
  /** A sysctl of the device that is not what the driver sets (changed by someone, or made by an older ctnet). */
  | { readonly kind: 'setting'; readonly key: string; readonly have: string; readonly want: string; readonly why: string };

export interface NetworkDriver {
  readonly name: string;
  /** Checks a new network against the host; throws a CtnetError that says what to change. */
  validate(n: DriverNetwork, host: HostView): void;
  /** Makes the network's device and its nft elements. */
  planCreate(n: DriverNetwork): Step[];
  /** Plugs one sandbox in. extraNft: more element lines (published ports) for the same nft transaction. */
  planAttach(n: DriverNetwork, a: DriverAttachment, extraNft?: { add: readonly string[]; del: readonly string[] }): Step[];
  /** Unplugs one sandbox (a teardown plan: idempotent). */
  planDetach(n: DriverNetwork, a: Pick<DriverAttachment, 'sandbox' | 'ifname' | 'hostVeth' | 'mac' | 'addresses'> & { readonly netns?: Netns | undefined }, extraDel?: readonly string[]): Step[];
  /** Removes the network's device and elements (a teardown plan). */
  planRemove(n: DriverNetwork): Step[];
  /** Puts right what observe() found (a missing port is plugged in again by the use case, with planAttach). */
  planRepair(n: DriverNetwork, drift: Drift): Step[];
  /**
   * Changes one attachment's shaping from `have` to `want` (undefined: not shaped); absent for a
   * driver that cannot shape. ifb: the device its egress is shaped on.
   */
  planShape?(n: DriverNetwork, a: ShapedAttachment, want: Shape | undefined, have: Shape | undefined): Step[];
  /** What the kernel lacks of this network and its attachments. */
  observe(kernel: KernelBackend, n: DriverNetwork, attachments: readonly { sandbox: string; hostVeth: string }[]): Promise<Drift[]>;
}
