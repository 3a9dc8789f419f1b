// The kernel operations ctnet performs, as plain values. A use case computes a list of them (a
// plan); the applier (src/engine/applier.ts) runs it through a kernel backend. Each operation that
// can be undone knows its inverse, so rollback, --explain, --dry-run and the fake backend all work
// from the same data. Pure: no I/O here.
import type { Netns } from '../model/netns.ts';
import type { DirShape } from '../model/shape.ts';
import type { FlowFilter } from './flows.ts';

export type Op =
  /** ip netns add NAME */
  | { readonly kind: 'netns.add'; readonly name: string }
  /** ip netns del NAME */
  | { readonly kind: 'netns.del'; readonly name: string }
  /** ip netns pids NS | xargs kill -KILL: every process in a namespace ctnet owns. */
  | { readonly kind: 'netns.kill'; readonly netns: Netns }
  /** ip link add NAME address MAC [mtu N] type bridge */
  | { readonly kind: 'link.add.bridge'; readonly name: string; readonly mac: string; readonly mtu?: number | undefined }
  /**
   * [ip -n NS] ip link add NAME [mtu N] type veth peer name PEER [address MAC] netns PEER_NS: the
   * peer is made in place, with its final name.
   */
  | {
    readonly kind: 'link.add.veth'; readonly name: string; readonly netns?: Netns | undefined; readonly peer: string; readonly peerNetns: Netns;
    readonly peerMac?: string | undefined; readonly mtu?: number | undefined;
  }
  /**
   * ip link add NAME address MAC [mtu N] type vxlan id VNI local IP dev DEV dstport PORT nolearning:
   * a VTEP whose forwarding entries ctnet writes (nolearning: no flooding, no learning from packets).
   */
  | {
    readonly kind: 'link.add.vxlan'; readonly name: string; readonly mac: string; readonly vni: number; readonly local: string;
    readonly dev: string; readonly port: number; readonly mtu?: number | undefined;
  }
  /**
   * ip link add link PARENT name NAME [netns NS] [address MAC] [mtu N] type macvlan|ipvlan mode MODE:
   * a sandbox's interface straight on the parent's segment (made in its namespace, with its final name),
   * or (no netns) the host's shim. ipvlan shares the parent's MAC: it takes none.
   */
  | {
    readonly kind: 'link.add.lower'; readonly type: 'macvlan' | 'ipvlan'; readonly name: string; readonly parent: string; readonly mode: string;
    readonly netns?: Netns | undefined; readonly mac?: string | undefined; readonly mtu?: number | undefined;
  }
  /** ip link add NAME up type ifb: the device a sandbox's egress is redirected through to be shaped. */
  | { readonly kind: 'link.add.ifb'; readonly name: string }
  /**
   * tc qdisc replace dev DEV root handle 1: tbf rate R burst B latency 100ms, then its child
   * (netem with delay/loss, else a plain fifo), or netem alone at the root when there is no rate.
   * `previous` is the shaping it replaces, which its inverse puts back.
   */
  | { readonly kind: 'qdisc.shape'; readonly dev: string; readonly shape: DirShape; readonly previous?: DirShape | undefined }
  /**
   * tc qdisc del dev DEV root|ingress (the device's default comes back; filters go with ingress).
   * previous: the shaping (root) or redirect target (ingress) it removes, which its inverse puts back.
   */
  | { readonly kind: 'qdisc.del'; readonly dev: string; readonly parent: 'root' | 'ingress'; readonly previous?: DirShape | string | undefined }
  /**
   * tc qdisc replace dev DEV handle ffff: ingress; tc filter replace dev DEV parent ffff: ... u32
   * match u32 0 0 action mirred egress redirect dev TO: everything DEV receives leaves through TO.
   */
  | { readonly kind: 'filter.redirect'; readonly dev: string; readonly to: string }
  /** ip [-n NS] link del NAME. ifb: it is an ifb device, which its inverse makes again (an ifb has no other state). */
  | { readonly kind: 'link.del'; readonly name: string; readonly netns?: Netns | undefined; readonly ifb?: true | undefined }
  /** ip link set NAME master BRIDGE */
  | { readonly kind: 'link.set.master'; readonly name: string; readonly master: string }
  /** ip link set NAME type bridge_slave hairpin on */
  | { readonly kind: 'link.set.hairpin'; readonly name: string }
  /** ip [-n NS] link set NAME mtu N. `previous`: the MTU it had, which its inverse puts back. */
  | { readonly kind: 'link.set.mtu'; readonly name: string; readonly mtu: number; readonly netns?: Netns | undefined; readonly previous?: number | undefined }
  /** ip [-n NS] link set NAME up */
  | { readonly kind: 'link.set.up'; readonly name: string; readonly netns?: Netns | undefined }
  /** ip [-n NS] addr add CIDR dev DEV (nodad for IPv6: usable at once) */
  | { readonly kind: 'addr.add'; readonly cidr: string; readonly dev: string; readonly netns?: Netns | undefined }
  /** ip [-n NS] addr del CIDR dev DEV */
  | { readonly kind: 'addr.del'; readonly cidr: string; readonly dev: string; readonly netns?: Netns | undefined }
  /**
   * ip [-n NS] [-6] route replace default via GW dev DEV. `previous` is the default route it
   * replaces (another network's), which its inverse puts back.
   */
  | {
    readonly kind: 'route.replace.default'; readonly via: string; readonly dev: string; readonly netns?: Netns | undefined;
    readonly previous?: { readonly via: string; readonly dev: string } | undefined;
  }
  /** ip [-n NS] [-6] route del default via GW dev DEV */
  | { readonly kind: 'route.del.default'; readonly via: string; readonly dev: string; readonly netns?: Netns | undefined }
  /**
   * ip neigh replace ADDR lladdr MAC dev DEV nud permanent. `previous` is the MAC the entry had,
   * which its inverse puts back.
   */
  | { readonly kind: 'neigh.replace'; readonly addr: string; readonly lladdr: string; readonly dev: string; readonly previous?: { readonly lladdr: string } | undefined }
  /** ip neigh del ADDR dev DEV. `lladdr`: the MAC it had, which its inverse puts back. */
  | { readonly kind: 'neigh.del'; readonly addr: string; readonly dev: string; readonly lladdr?: string | undefined }
  /**
   * bridge fdb replace MAC dev DEV dst IP self permanent: frames to MAC go to the VTEP at IP.
   * `previous` is the destination the entry had, which its inverse puts back.
   */
  | { readonly kind: 'fdb.replace'; readonly mac: string; readonly dev: string; readonly dst: string; readonly previous?: { readonly dst: string } | undefined }
  /** bridge fdb del MAC dev DEV dst IP self (its inverse puts it back) */
  | { readonly kind: 'fdb.del'; readonly mac: string; readonly dev: string; readonly dst: string }
  /**
   * ip route replace DST via GW dev DEV [onlink]. `previous` is the route to DST it replaces,
   * which its inverse puts back.
   */
  | {
    readonly kind: 'route.replace'; readonly dst: string; readonly via: string; readonly dev: string; readonly onlink: boolean;
    readonly previous?: { readonly via: string; readonly dev: string; readonly onlink: boolean } | undefined;
  }
  /** ip route del DST via GW dev DEV (its inverse puts it back, onlink as it was) */
  | { readonly kind: 'route.del'; readonly dst: string; readonly via: string; readonly dev: string; readonly onlink?: boolean | undefined }
  /**
   * sysctl -w KEY=VALUE in ctnet's namespace; nothing is done when it holds VALUE already.
   * ifExists: nothing either when the key does not exist (an IPv6 setting where IPv6 is off).
   */
  | { readonly kind: 'sysctl.set'; readonly key: string; readonly value: string; readonly ifExists?: true }
  /**
   * nft -f: these lines as one atomic transaction. `undo` lines (element deletes) are its inverse,
   * applied as nft.delete is.
   */
  | { readonly kind: 'nft'; readonly lines: readonly string[]; readonly undo?: readonly string[] | undefined }
  /**
   * Element deletes where one already gone counts as deleted (nft 1.0.6 has no `destroy`); as the
   * inverse of a step that moved map elements, it may also add back what the step removed.
   * `undo` lines (element adds) are its inverse, applied the same way.
   */
  | { readonly kind: 'nft.delete'; readonly lines: readonly string[]; readonly undo?: readonly string[] | undefined }
  /**
   * conntrack -D of the tracked flows a filter picks at the moment it runs: which flows those are
   * is not known when planning, so --dry-run prints only what would be picked.
   */
  | { readonly kind: 'conntrack.forget'; readonly filter: FlowFilter }
  /**
   * Waits until no open TCP connection (a state other than TIME_WAIT and CLOSE) among the flows a
   * filter picks is left, or timeoutMs passed: a backend leaving a service finishes what it has
   * begun (a conntrack.forget of the same filter then cuts what is left). Changes nothing.
   */
  | { readonly kind: 'conntrack.drain'; readonly filter: FlowFilter; readonly timeoutMs: number }
  /**
   * iptables -I FORWARD -i BRIDGE -j ACCEPT and -o BRIDGE: a network's narrow accept in the host's
   * shared FORWARD chain, where its policy is DROP (Docker's) and the user consented (doctor --fix).
   * Marked with the comment "ctnet" so it is recognisably ctnet's.
   */
  | { readonly kind: 'forward.accept'; readonly target: ForwardTarget; readonly bridge: string }
  /** Removes what forward.accept inserted (missing counts as removed). */
  | { readonly kind: 'forward.unaccept'; readonly target: ForwardTarget; readonly bridge: string }
  /**
   * Writes /etc/netns/NETNS/resolv.conf: what `ip netns exec` (and so `ctnet exec/run`) binds over
   * /etc/resolv.conf for commands in the sandbox (ctnetd's DNS on its networks' gateways).
   */
  | { readonly kind: 'resolv.write'; readonly netns: string; readonly nameservers: readonly string[]; readonly search: readonly string[] }
  /** Removes /etc/netns/NETNS/resolv.conf and the directory when nothing else is in it (missing counts as removed). */
  | { readonly kind: 'resolv.remove'; readonly netns: string }
  /**
   * Registers a network's DNS with systemd-resolved, on its bridge: the gateways as the link's DNS
   * servers, ~DOMAIN as its routing-only domain, not a default route. Equivalent to:
   * resolvectl dns DEV GW...; resolvectl domain DEV ~DOMAIN; resolvectl default-route DEV false
   */
  | { readonly kind: 'resolved.link'; readonly dev: string; readonly dns: readonly string[]; readonly domain: string }
  /** Forgets a link's settings in systemd-resolved (a link that is gone counts as done). Equivalent to: resolvectl revert DEV */
  | { readonly kind: 'resolved.revert'; readonly dev: string };

/** The resolvectl commands of a resolved.link (the exec backend runs them; --explain prints them). */
export function resolvedArgvs(op: { readonly dev: string; readonly dns: readonly string[]; readonly domain: string }): string[][] {
  return [['resolvectl', 'dns', op.dev, ...op.dns], ['resolvectl', 'domain', op.dev, `~${op.domain}`], ['resolvectl', 'default-route', op.dev, 'false']];
}

/** The text of a sandbox's resolv.conf (glibc reads at most 3 nameservers and 6 search domains). */
export function resolvText(nameservers: readonly string[], search: readonly string[]): string {
  return ['# written by ctnet: ctnetd answers DNS on the gateways of the sandbox\'s networks',
    ...nameservers.slice(0, 3).map((n) => `nameserver ${n}`), ...(search.length ? [`search ${search.slice(0, 6).join(' ')}`] : []), ''].join('\n');
}

/** A shared FORWARD chain ctnet may add its accept to: iptables (nft-based) or iptables-legacy, per family. */
export interface ForwardTarget {
  readonly family: 4 | 6;
  readonly legacy: boolean;
}

export type OpKind = Op['kind'];

/**
 * The operation that undoes op, or undefined when nothing needs undoing (its effect goes with the
 * link or namespace whose creation is undone, or it is a deletion or a one-way setting such as
 * forwarding). Inverses tolerate absence: the applier runs an inverse also for a step that failed
 * half way, so what it undoes may never have happened.
 */
export function inverse(op: Op): Op | undefined {
  switch (op.kind) {
    case 'netns.add': return { kind: 'netns.del', name: op.name };
    // Deleting the host end of a veth removes its peer too.
    case 'link.add.bridge': return { kind: 'link.del', name: op.name };
    case 'link.add.veth': return { kind: 'link.del', name: op.name, netns: op.netns };
    case 'link.add.vxlan': return { kind: 'link.del', name: op.name };
    case 'link.add.ifb': return { kind: 'link.del', name: op.name };
    case 'link.add.lower': return { kind: 'link.del', name: op.name, netns: op.netns };
    case 'qdisc.shape':
      return op.previous ? { kind: 'qdisc.shape', dev: op.dev, shape: op.previous } : { kind: 'qdisc.del', dev: op.dev, parent: 'root' };
    case 'filter.redirect': return { kind: 'qdisc.del', dev: op.dev, parent: 'ingress' };
    case 'qdisc.del':
      if (op.previous === undefined) return undefined;
      return typeof op.previous === 'string'
        ? { kind: 'filter.redirect', dev: op.dev, to: op.previous }
        : { kind: 'qdisc.shape', dev: op.dev, shape: op.previous };
    case 'neigh.replace':
      return op.previous
        ? { kind: 'neigh.replace', addr: op.addr, lladdr: op.previous.lladdr, dev: op.dev }
        : { kind: 'neigh.del', addr: op.addr, dev: op.dev };
    case 'fdb.replace':
      // The entry is keyed by MAC: putting the old destination back replaces the new one.
      return op.previous ? { kind: 'fdb.replace', mac: op.mac, dev: op.dev, dst: op.previous.dst } : { kind: 'fdb.del', mac: op.mac, dev: op.dev, dst: op.dst };
    case 'route.replace':
      return op.previous
        ? { kind: 'route.replace', dst: op.dst, via: op.previous.via, dev: op.previous.dev, onlink: op.previous.onlink }
        : { kind: 'route.del', dst: op.dst, via: op.via, dev: op.dev };
    case 'addr.add': return { kind: 'addr.del', cidr: op.cidr, dev: op.dev, netns: op.netns };
    case 'route.replace.default':
      return op.previous
        ? { kind: 'route.replace.default', via: op.previous.via, dev: op.previous.dev, netns: op.netns }
        : { kind: 'route.del.default', via: op.via, dev: op.dev, netns: op.netns };
    case 'nft': return op.undo && op.undo.length > 0 ? { kind: 'nft.delete', lines: op.undo } : undefined;
    case 'forward.accept': return { kind: 'forward.unaccept', target: op.target, bridge: op.bridge };
    case 'resolv.write': return { kind: 'resolv.remove', netns: op.netns };
    case 'resolved.link': return { kind: 'resolved.revert', dev: op.dev };
    // A peer's entries are deleted knowing what they held, so a failed change puts them back.
    case 'neigh.del': return op.lladdr ? { kind: 'neigh.replace', addr: op.addr, lladdr: op.lladdr, dev: op.dev } : undefined;
    case 'fdb.del': return { kind: 'fdb.replace', mac: op.mac, dev: op.dev, dst: op.dst };
    case 'route.del': return { kind: 'route.replace', dst: op.dst, via: op.via, dev: op.dev, onlink: op.onlink ?? false };
    case 'nft.delete': return op.undo && op.undo.length > 0 ? { kind: 'nft.delete', lines: op.undo } : undefined;
    case 'link.set.mtu': return op.previous === undefined ? undefined : { kind: 'link.set.mtu', name: op.name, mtu: op.previous, netns: op.netns, previous: op.mtu };
    case 'link.del': return op.ifb ? { kind: 'link.add.ifb', name: op.name } : undefined;
    // Link settings vanish with their link; a sysctl this ctnet turned on (forwarding) stays on,
    // as other networks may rely on it; deletions and flows cannot be brought back.
    case 'link.set.master':
    case 'link.set.hairpin':
    case 'link.set.up':
    case 'sysctl.set':
    case 'netns.del':
    case 'netns.kill':
    case 'addr.del':
    case 'route.del.default':
    case 'conntrack.forget':
    case 'conntrack.drain':
    case 'forward.unaccept':
    case 'resolv.remove':
    case 'resolved.revert':
      return undefined;
  }
}

/** True for operations that remove something: in a teardown, "already gone" is success. */
export function removes(op: Op): boolean {
  return ['netns.del', 'netns.kill', 'link.del', 'addr.del', 'route.del.default', 'neigh.del', 'fdb.del', 'route.del', 'nft.delete', 'conntrack.forget', 'forward.unaccept', 'qdisc.del', 'resolv.remove', 'resolved.revert']
    .includes(op.kind);
}
