// A topology file, parsed: what the file says, typed and checked against itself (names, references,
// addresses inside their subnets), before anything is compared with the store or the kernel.
import type { OverlaySpec } from '../cluster/pool.ts';
import type { PortMapping } from '../model/ports.ts';
import type { IpRequest, NetworkSpec } from '../model/spec.ts';
import type { ServiceCheck, ServicePublish } from '../model/service.ts';
import type { Shape } from '../model/shape.ts';

/** Where a value is in its file, as FILE:LINE:COLUMN (1-based), for messages. */
export type Where = string;

export interface TopoNetwork {
  readonly name: string;
  /** The same spec `ctnet network create` builds from its flags. */
  readonly spec: NetworkSpec;
  /**
   * driver: vxlan: the cluster's definition (as `network create --driver vxlan` takes it). Then spec
   * holds the local options (host_access, mtu, dns) and, as its one subnet, the whole overlay subnet
   * (for the overlap checks); this host's share is leased from the cluster when it is made.
   */
  readonly overlay?: OverlaySpec | undefined;
  readonly at: Where;
}

export interface TopoAttach {
  readonly network: string;
  /** Fixed addresses on this network (at most one per family); none: IPAM chooses. */
  readonly ips: readonly IpRequest[];
}

export interface TopoSandbox {
  readonly name: string;
  /** In order: the first is eth0 (and carries the default route), then eth1, ... */
  readonly networks: readonly TopoAttach[];
  readonly labels: Readonly<Record<string, string>>;
  readonly ports: readonly PortMapping[];
  /** Runs detached in the sandbox's namespace; `apply` starts it again when it is not running. */
  readonly command: readonly string[] | undefined;
  /** More DNS names of the sandbox, on each of its networks (sorted). */
  readonly aliases: readonly string[];
  /** The host addresses its egress leaves from (egress_ip), at most one per family. */
  readonly egress: readonly { readonly family: 4 | 6; readonly ip: string }[];
  /** The network that carries its default routes (default_route); undefined: ctnet's rule. */
  readonly defaultRoute: string | undefined;
  /** Shaping of every interface it has (rate_in, rate_out, burst, latency, loss). */
  readonly shape: Shape | undefined;
  readonly at: Where;
}

export interface TopoPolicy {
  readonly name: string;
  readonly action: 'allow' | 'deny';
  /** Canonical selector text (as `policy ls` shows it), so it compares with the store's. */
  readonly from: string;
  readonly to: string;
  /** Canonical port filter text, or null for every protocol and port. */
  readonly port: string | null;
  readonly at: Where;
}

export interface TopoService {
  readonly name: string;
  readonly network: string;
  /** Canonical texts, as `service create` takes them: `80/tcp`, `label:tier=web:8080`. */
  readonly port: string;
  readonly to: string;
  /** A fixed VIP; undefined: IPAM chooses one (and a re-apply keeps whatever it chose). */
  readonly vip: string | undefined;
  readonly affinity: 'none' | 'client-ip';
  /** `publish: "[HOST_IP:]HOST_PORT"` and `check: tcp|http:PATH` with `check_interval`, as their flags. */
  readonly publish: ServicePublish | undefined;
  readonly check: ServiceCheck | undefined;
  readonly at: Where;
}

export interface Topology {
  /** The path it was read from, as given. */
  readonly file: string;
  /** Owns every object the file makes. */
  readonly name: string;
  readonly networks: readonly TopoNetwork[];
  readonly sandboxes: readonly TopoSandbox[];
  readonly policy: readonly TopoPolicy[];
  readonly services: readonly TopoService[];
}
