// What a CNI request asks of ctnet and what it answers, as plain data: parsed from the wire by
import type { Shape } from './shape.ts';
// src/cni/protocol.ts, used by the engine's CNI use cases (src/engine/cni.ts), rendered by protocol.ts
// in the config's version.
import type { PortMapping } from './ports.ts';
import type { IpRequest } from './spec.ts';

export interface Dns {
  readonly nameservers?: string[];
  readonly domain?: string;
  readonly search?: string[];
  readonly options?: string[];
}

/** Keys of the reference bridge plugin that ctnet's network decides; honoured when they agree. */
export interface NetworkClaims {
  readonly bridge?: string;
  readonly ipMasq?: boolean;
  readonly isGateway?: boolean;
  readonly isDefaultGateway?: boolean;
  readonly hairpinMode?: boolean;
  readonly mtu?: number;
}

export interface NetConf {
  readonly cniVersion: string;
  /** The CNI network name (the conflist's name); attachments are recorded under it. */
  readonly name: string;
  /** The ctnet network to attach to ("network", default: name). */
  readonly network: string;
  readonly claims: NetworkClaims;
  readonly portMappings: readonly PortMapping[];
  /** runtimeConfig.bandwidth (the `bandwidth` capability), as ctnet's shaping of this attachment. */
  readonly bandwidth?: Shape | undefined;
  readonly ips: readonly IpRequest[];
  readonly mac: string | undefined;
  readonly labels: readonly { key: string; value: string }[];
  readonly dns: Dns | undefined;
  /** DNS names of the sandbox on the network (runtimeConfig.aliases). */
  readonly aliases: readonly string[];
  readonly prevResult: Record<string, unknown> | undefined;
  /** GC: the attachments the runtime still uses; undefined when the key is absent. */
  readonly validAttachments: readonly { containerId: string; ifname: string }[] | undefined;
}

// ---- results ----

export interface CniInterface {
  readonly name: string;
  readonly mac?: string;
  readonly sandbox?: string;
}
export interface CniIp {
  readonly address: string;
  readonly gateway?: string;
  readonly interface: number;
}
export interface CniRoute {
  readonly dst: string;
  readonly gw?: string;
}
export interface CniResult {
  readonly interfaces: readonly CniInterface[];
  readonly ips: readonly CniIp[];
  readonly routes: readonly CniRoute[];
  readonly dns: Dns;
}
