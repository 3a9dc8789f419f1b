// Which tracked connections (conntrack flows) an operation ends, as data: a filter is planned, and
// applied to the flows the kernel tracks at the moment the plan runs. Pure.
import ipaddr from 'ipaddr.js';
import { addrToBigint } from '../model/cidr.ts';
import { decide, PROTO_NUMBERS, type PolicyRule, type PolicyWorld } from '../model/policy.ts';
import { inRegions, judgeInRegions, type JudgedBox, type PolicyRegion } from '../model/policy-inc.ts';
import { hostIpFamilies, isWildcard, type PortMapping } from '../model/ports.ts';

export interface Tuple {
  readonly src: string;
  readonly dst: string;
  readonly sport: number | undefined;
  readonly dport: number | undefined;
}

export interface Flow {
  readonly proto: string;
  /** TCP's state (ESTABLISHED, TIME_WAIT, ...); undefined for other protocols. */
  readonly state: string | undefined;
  readonly family: 4 | 6;
  readonly orig: Tuple;
  readonly reply: Tuple;
}

export interface PortTarget {
  readonly mapping: PortMapping;
  readonly targets: readonly { readonly family: 4 | 6; readonly ip: string }[];
}

export type FlowFilter =
  /** Every flow from, to or DNATed to these addresses (they are being released). */
  | { readonly kind: 'addresses'; readonly ips: readonly string[] }
  /** Flows still DNATed through these mappings (they are being removed or moved). */
  | { readonly kind: 'unpublished'; readonly ports: readonly PortTarget[] }
  /**
   * Flows that hit these host ports before the mappings existed: an un-NATed UDP entry would keep
   * its packets away from the sandbox for as long as the client keeps sending.
   */
  | { readonly kind: 'stale'; readonly ports: readonly PortTarget[] }
  /**
   * Connections through a service (VIP . protocol . port, or its published host port) DNATed to
   * backends that left it.
   */
  | { readonly kind: 'service'; readonly vip: string; readonly vip6?: string; readonly proto: string; readonly port: number; readonly backends: readonly string[];
    readonly publish?: { readonly hostIp: string; readonly hostPort: number } | undefined }
  /** Forwarded connections the policy now denies. */
  | { readonly kind: 'denied'; readonly rules: readonly PolicyRule[]; readonly world: PolicyWorld }
  /**
   * Connections inside the regions a policy change recomputed that the policy now denies: judged by
   * the compiled boxes meeting those regions (every rule's say there), not by every rule.
   */
  | { readonly kind: 'judged'; readonly regions: readonly PolicyRegion[]; readonly boxes: readonly JudgedBox[]; readonly world: PolicyWorld };

/** A TCP connection still open (not TIME_WAIT or CLOSE): what a draining backend waits for. */
export const openConnection = (x: Flow): boolean => x.proto === 'tcp' && x.state !== undefined && x.state !== 'TIME_WAIT' && x.state !== 'CLOSE';

/** A line for --explain: what the filter picks (which flows is known only when it runs). */
export function describeFilter(f: FlowFilter): string {
  switch (f.kind) {
    case 'addresses': return `flows of ${f.ips.join(', ')}`;
    case 'unpublished': return `flows through published ports ${f.ports.map((p) => `${p.mapping.proto}/${p.mapping.hostPort}`).join(', ')}`;
    case 'stale': return `flows that reached host ports ${f.ports.map((p) => `${p.mapping.proto}/${p.mapping.hostPort}`).join(', ')} before they were published`;
    case 'service': return `flows through service ${f.vip}${f.vip6 ? ` and ${f.vip6}` : ''} ${f.proto}/${f.port}${f.publish ? ` (and host port ${f.publish.hostIp}:${f.publish.hostPort})` : ''} to ${f.backends.join(', ')}`;
    case 'denied': return 'flows (forwarded, or to the host) the policy now denies';
    case 'judged': return 'flows (forwarded, or to the host) in the changed part of the policy that it now denies';
  }
}

/**
 * The flows a filter picks. local() lists the host's own addresses; it is called only when the
 * filter needs them and a candidate exists (listing them costs a process at scale).
 */
export async function pickFlows(f: FlowFilter, flows: readonly Flow[], local: () => Promise<ReadonlySet<string>>): Promise<Flow[]> {
  switch (f.kind) {
    case 'addresses': {
      const set = new Set(f.ips);
      return flows.filter((x) => set.has(x.orig.src) || set.has(x.orig.dst) || set.has(x.reply.src) || set.has(x.reply.dst));
    }
    case 'unpublished':
      return flows.filter((x) => f.ports.some(({ mapping: m, targets }) =>
        x.proto === m.proto && targets.some((t) => t.ip === x.reply.src) && x.orig.dst !== x.reply.src &&
        x.reply.sport !== undefined && x.reply.sport >= m.containerPort && x.reply.sport < m.containerPort + m.count));
    case 'stale': {
      const candidates = flows.filter((x) => x.reply.src === x.orig.dst && f.ports.some(({ mapping: m }) =>
        x.proto === m.proto && x.orig.dport !== undefined && x.orig.dport >= m.hostPort && x.orig.dport < m.hostPort + m.count &&
        (isWildcard(m.hostIp) || x.orig.dst === m.hostIp) && hostIpFamilies(m.hostIp).includes(x.family)));
      if (candidates.length === 0) return []; // the usual case: no need to list the host's addresses
      const mine = await local();
      // Only flows to the host itself: a forwarded flow to that port elsewhere is not ours to end.
      return candidates.filter((x) => mine.has(x.orig.dst));
    }
    case 'service': {
      const gone = new Set(f.backends);
      const p = f.publish;
      const viaVip = (x: Flow) => (x.orig.dst === f.vip || (f.vip6 !== undefined && x.orig.dst === f.vip6)) && x.orig.dport === f.port;
      // Through the host port: DNATed (the reply comes from the backend, not the address asked).
      const viaHost = (x: Flow) => p !== undefined && x.orig.dport === p.hostPort && x.orig.dst !== x.reply.src &&
        (isWildcard(p.hostIp) || x.orig.dst === p.hostIp);
      return flows.filter((x) => x.proto === f.proto && gone.has(x.reply.src) && (viaVip(x) || viaHost(x)));
    }
    case 'denied':
    case 'judged': {
      let live = flows.filter((x) => x.state !== 'TIME_WAIT' && x.state !== 'CLOSE'); // closed: nothing to cut
      // After one rule's change, only flows inside the regions it recomputed can be judged
      // differently, whichever way the host's addresses would place them (to the host or through
      // it): usually none is, and then the host's addresses (one more process) are not listed.
      if (f.kind === 'judged') live = live.filter((x) => [false, true].some((dstLocal) => {
        const p = packetOf(x, dstLocal);
        return p !== undefined && inRegions(f.regions, p);
      }));
      if (live.length === 0) return [];
      const mine = await local();
      return live.filter((x) => {
        const p = flowPacket(x, mine);
        if (p === undefined) return false;
        return f.kind === 'denied' ? !decide(f.rules, f.world, p).allowed : judgeInRegions(f.regions, f.boxes, f.world, p) === false;
      });
    }
  }
}

/** The packet ctnet's forward or input chain judged for a flow; undefined for the host's own traffic. */
function flowPacket(f: Flow, local: ReadonlySet<string>) {
  if (local.has(f.orig.src)) return undefined; // from the host: output path, not forwarded
  return packetOf(f, local.has(f.orig.dst));
}

/** The packet of a flow not from the host; dstLocal: its destination is one of the host's addresses. */
function packetOf(f: Flow, dstLocal: boolean) {
  const dnat = f.reply.src !== f.orig.dst;
  // To the host itself: its input path, judged by the rules --to host and the host defaults.
  const toHost = !dnat && dstLocal;
  const dst = dnat ? f.reply.src : f.orig.dst;
  const port = dnat ? f.reply.sport : f.orig.dport;
  try {
    return {
      family: f.family, src: addrToBigint(ipaddr.parse(f.orig.src)), dst: addrToBigint(ipaddr.parse(dst)),
      proto: PROTO_NUMBERS[f.proto] ?? -1, port: port ?? 0, published: dnat, toHost,
    };
  } catch {
    return undefined;
  }
}
