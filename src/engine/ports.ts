// Published ports: checks against the store and the host, the map elements a sandbox's mappings
// make, and the conntrack entries that must go when a mapping (or an address) goes.
import { CtnetError } from '../errors.ts';
import type { Listener } from '../kernel/backend.ts';
import { collides, formatPortSpec, hostIpFamilies, isWildcard, type PortMapping } from '../model/ports.ts';
import { formatPublish, publishMapping } from '../model/service.ts';
import { portElements, type PortFacts } from '../nft/ruleset.ts';
import { step, type Step } from '../plan/plan.ts';
import type { PortRow, Store } from '../store/store.ts';
import type { Recorder } from './applier.ts';
import type { Ctx } from './context.ts';

export interface PublishRequest {
  readonly mappings: readonly PortMapping[];
  /** Publish even when a host process listens on the port (CNI runtimes hold it open themselves). */
  readonly force: boolean;
}

/** What the host looks like, read before the store transaction that decides. */
export interface HostView {
  readonly addresses: ReadonlySet<string>;
  readonly listeners: readonly Listener[];
}

export async function readHost(ctx: Ctx, req: PublishRequest): Promise<HostView> {
  const { kernel } = ctx;
  if (req.mappings.length === 0) return { addresses: new Set(), listeners: [] };
  // The host's addresses only matter to check a mapping that names one.
  const addresses = req.mappings.every((m) => isWildcard(m.hostIp))
    ? new Set<string>()
    : new Set((await kernel.addrs()).flatMap((l) => (l.addr_info ?? []).map((a) => a.local)));
  const sctp = req.mappings.some((m) => m.proto === 'sctp');
  let found: Listener[] = [];
  if (!req.force) {
    try {
      const only = (proto: string, port: number) => req.mappings.some((m) => m.proto === proto && port >= m.hostPort && port < m.hostPort + m.count);
      found = await kernel.listeners(sctp, only);
    } catch {
      found = sctp ? await kernel.listeners(false) : []; // a kernel without SCTP: ss -S fails
    }
  }
  return { addresses, listeners: found };
}

/** The sandbox addresses published ports lead to: those on its first network with a way out. */
export function portTargets(store: Store, sandbox: string): { family: 4 | 6; ip: string }[] {
  for (const a of store.attachments({ sandbox })) {
    const n = store.network(a.network);
    // A macvlan/ipvlan sandbox is reached on its segment directly, never through the host's DNAT.
    if (!n || n.internal || n.lower) continue;
    return store.addresses({ sandbox }).filter((x) => x.network === a.network).map((x) => ({ family: x.family, ip: x.ip }));
  }
  return [];
}

export function portFacts(store: Store, sandbox: string): PortFacts[] {
  const targets = portTargets(store, sandbox);
  return store.ports({ sandbox }).map((mapping) => ({ mapping, targets }));
}

export const portLines = (verb: 'add' | 'delete', facts: readonly PortFacts[]) => facts.flatMap((f) => portElements(verb, f));

/** The host socket that listens on a mapping's host port, if any. */
export const busyListener = (host: HostView, m: PortMapping): Listener | undefined => host.listeners.find((l) => listenerCovers(l, m));

const listenerCovers = (l: Listener, m: PortMapping): boolean => {
  if (l.proto !== m.proto || l.port < m.hostPort || l.port >= m.hostPort + m.count) return false;
  // A socket on [::] usually takes IPv4 too (V6ONLY off), so it counts for both families.
  const wild = l.address === '*' || l.address === '0.0.0.0' || l.address === '::';
  const lf: (4 | 6)[] = l.address === '0.0.0.0' ? [4] : wild ? [4, 6] : [l.address.includes(':') ? 6 : 4];
  if (!hostIpFamilies(m.hostIp).some((f) => lf.includes(f))) return false;
  return wild || isWildcard(m.hostIp) || l.address === m.hostIp;
};

/**
 * Checks mappings for SANDBOX and records them; call while deciding, after its attachments are
 * recorded. Throws (changing nothing) on a collision, a foreign host address, or a busy port.
 */
export function recordPorts(rec: Recorder, sandbox: string, req: PublishRequest, host: HostView): PortRow[] {
  const { store } = rec;
  const rows: PortRow[] = [];
  const targets = portTargets(store, sandbox);
  const existing = store.ports(); // read once: checking each mapping against a fresh read is n^2
  const services = store.services().filter((x) => x.publish);
  for (const m of req.mappings) {
    const spec = formatPortSpec(m);
    if (!isWildcard(m.hostIp) && !host.addresses.has(m.hostIp)) {
      throw new CtnetError('INVALID_ARGUMENT', `-p ${spec}: ${m.hostIp} is not an address of this host`,
        `use one of ${[...host.addresses].join(', ')}, or leave the address out to publish on all of them`);
    }
    if (targets.length === 0) {
      throw new CtnetError('INVALID_ARGUMENT', `-p ${spec}: sandbox ${sandbox} is on no network with a way out (only --internal, macvlan or ipvlan ones)`,
        'connect it to a bridge network that is not --internal; a macvlan/ipvlan sandbox is reached at its own address on its segment');
    }
    if (!hostIpFamilies(m.hostIp).some((f) => targets.some((t) => t.family === f))) {
      throw new CtnetError('INVALID_ARGUMENT', `-p ${spec}: sandbox ${sandbox} has no IPv${hostIpFamilies(m.hostIp)[0]} address to publish to`,
        'publish on a host address of a family its network has');
    }
    const mine = rows.find((r) => collides(r, m));
    if (mine) throw new CtnetError('CONFLICT', `-p ${spec} overlaps -p ${formatPortSpec(mine)} in the same request`, 'give each host port once');
    const taken = existing.find((r) => collides(r, m));
    if (taken) {
      throw new CtnetError('CONFLICT', `-p ${spec}: the host port is already published by sandbox ${taken.sandbox} (${formatPortSpec(taken)})`,
        `choose another host port, or remove that mapping with "ctnet port rm ${taken.sandbox} ${formatPortSpec(taken)}"`);
    }
    const service = services.find((x) => collides(publishMapping(x.publish!, x.proto, x.targetPort), m));
    if (service) {
      throw new CtnetError('CONFLICT', `-p ${spec}: the host port is taken by service ${service.name} (--publish ${formatPublish(service.publish!)})`,
        `choose another host port, or remove the service with "ctnet service rm ${service.name}"`);
    }
    const busy = host.listeners.find((l) => listenerCovers(l, m));
    if (busy) {
      const who = busy.processes.length ? busy.processes.join(', ') : 'a process ctnet cannot name';
      throw new CtnetError('CONFLICT', `-p ${spec}: ${busy.proto} port ${busy.port} on ${busy.address} is in use on this host by ${who}`,
        'choose another host port, stop that process, or use --force to publish anyway (the sandbox then gets the traffic, not the process)');
    }
    const row = { ...m, sandbox };
    rec.record({ kind: 'port.insert', row });
    rows.push(row);
  }
  return rows;
}

/** Adds the map elements of these mappings and ends flows to their host ports made before them. */
export function publishSteps(facts: readonly PortFacts[]): Step[] {
  if (facts.every((f) => portElements('add', f).length === 0)) return [];
  return [
    step([{ kind: 'nft', lines: portLines('add', facts), undo: portLines('delete', facts) }],
      `publish ${facts.map((f) => formatPortSpec(f.mapping)).join(', ')} -> ${facts[0]!.targets.map((t) => t.ip).join(', ')}`),
    step([{ kind: 'conntrack.forget', filter: { kind: 'stale', ports: facts } }]),
  ];
}

/**
 * The nft lines that move a sandbox's mappings from their old targets to their new ones (an attachment
 * changed which network they lead to), for the attachment's own nft transaction, with their undo.
 * A map key cannot be added while it holds another value: the old elements go first.
 */
export function portMoveLines(before: readonly PortFacts[], after: readonly PortFacts[]): { add: string[]; del: string[] } {
  return {
    add: [...portLines('delete', before), ...portLines('add', after)],
    del: [...portLines('delete', after), ...portLines('add', before)],
  };
}

/** True when a sandbox had mappings and the addresses they lead to changed. */
export const portsMoved = (before: readonly PortFacts[], after: readonly PortFacts[]): boolean =>
  before.length > 0 && JSON.stringify(before[0]!.targets) !== JSON.stringify(after[0]?.targets ?? []);

/** Removes the map elements of these mappings and the flows still DNATed through them (a teardown). */
export function unpublishSteps(facts: readonly PortFacts[]): Step[] {
  const del = portLines('delete', facts);
  if (del.length === 0) return [];
  return [
    step([{ kind: 'nft.delete', lines: del }], `unpublish ${facts.map((f) => formatPortSpec(f.mapping)).join(', ')}`),
    step([{ kind: 'conntrack.forget', filter: { kind: 'unpublished', ports: facts } }]),
  ];
}

/** Finds the recorded mapping a `port rm` names (its canonical text must match). */
export function findPort(store: Store, sandbox: string, m: PortMapping, rows: readonly PortRow[] = store.ports({ sandbox })): PortRow {
  const spec = formatPortSpec(m);
  const row = rows.find((r) => formatPortSpec(r) === spec);
  if (!row) {
    throw new CtnetError('NOT_FOUND', `sandbox ${sandbox} has no mapping ${spec}`,
      rows.length ? `its mappings are: ${rows.slice(0, 20).map(formatPortSpec).join(', ')}${rows.length > 20 ? ', ...' : ''}` : `it publishes no ports; see "ctnet port ${sandbox}"`);
  }
  return row;
}
