// Use cases for services: a virtual address (VIP) on a network, balanced by the kernel over the
// sandboxes a label selects (docs/services.md). The backends are derived from the store like the
// policy sets: every change to sandboxes or labels brings them up to date (syncServices).
import { CtnetError } from '../errors.ts';
import { allocate } from '../model/ipam.ts';
import { contains, formatAddr, parseAddr, parseSubnet } from '../model/cidr.ts';
import { serviceKey, decodeEntry, type ServiceValue } from '../cluster/keys.ts';
import { etcdOf } from './cluster.ts';
import { parseName } from '../model/names.ts';
import { collides, formatPortSpec } from '../model/ports.ts';
import { formatPublish, formatSelector, formatTarget, parseAffinity, parseServiceCheck, parseServicePort, parseServicePublish, parseServiceTarget, publishMapping, type ServicePublish } from '../model/service.ts';
import { serviceBackendLines, serviceChain, serviceLines, type ServiceFacts } from '../nft/ruleset.ts';
import type { Op } from '../plan/ops.ts';
import { step } from '../plan/plan.ts';
import type { ServiceRow, Store } from '../store/store.ts';
import type { Ctx } from './context.ts';
import { busyListener, readHost, type HostView } from './ports.ts';

export interface ServiceRequest {
  readonly name: string;
  readonly network: string;
  readonly port: string;
  readonly to: string;
  /** `--vip`: at most one address of each family (IPv6: on a dual-stack network). */
  readonly vip: string | readonly string[] | undefined;
  readonly affinity: string | undefined;
  /** `--publish [HOST_IP:]HOST_PORT`. */
  readonly publish?: string | undefined;
  /** `--check tcp|http:PATH` and `--check-interval DURATION`. */
  readonly check?: string | undefined;
  readonly checkInterval?: string | undefined;
}

const byAddress = (a: string, b: string) => {
  const x = parseAddr('address', a).n;
  const y = parseAddr('address', b).n;
  return x < y ? -1 : x > y ? 1 : 0;
};

/**
 * The addresses a service balances over now: its candidates but those its health checks took out.
 */
export function serviceBackends(store: Store, s: Pick<ServiceRow, 'network' | 'selector' | 'unready' | 'vip6'>): string[] {
  const out = new Set(s.unready ?? []);
  return serviceCandidates(store, s).filter((ip) => !out.has(ip));
}

/**
 * The addresses a service's selector picks: the IPv4 address (and, with an IPv6 VIP, the IPv6 one),
 * on the service's network, of each sandbox with the label; IPv4 first. A sandbox (or its attachment) being removed has left already, so its
 * new connections go elsewhere while its old ones drain.
 */
export function serviceCandidates(store: Store, s: Pick<ServiceRow, 'network' | 'selector' | 'vip6'>): string[] {
  const selected = new Set(store.labels().filter((l) => l.key === s.selector.key && l.value === s.selector.value).map((l) => l.sandbox));
  const leaving = new Set(store.sandboxes().filter((x) => x.state === 'removing').map((x) => x.name));
  const detaching = new Set(store.attachments({ network: s.network }).filter((a) => a.state === 'removing').map((a) => a.sandbox));
  const local = store.addresses({ network: s.network })
    .filter((a) => (a.family === 4 || s.vip6 !== undefined) && selected.has(a.sandbox) && !leaving.has(a.sandbox) && !detaching.has(a.sandbox))
    .map((a) => a.ip);
  return [...new Set([...local, ...remoteCandidates(store, s)])].sort(byAddress);
}

/**
 * On an overlay network, the selected sandboxes of the other hosts too: their IPv4 addresses in the
 * overlay's subnet, from the directory's mirror (services/directory.ts). A sandbox removed or
 * relabelled there leaves when its entry changes in etcd, which its host writes as the change
 * commits (after its own copy of the service stopped sending it new connections).
 */
function remoteCandidates(store: Store, s: Pick<ServiceRow, 'network' | 'selector'>): string[] {
  const ov = store.overlay(s.network);
  if (!ov) return [];
  const subnet = parseSubnet('overlay subnet', ov.cidr);
  return store.remoteSandboxes()
    .filter((r) => r.networks.includes(s.network) && r.labels[s.selector.key] === s.selector.value)
    .flatMap((r) => r.addresses)
    .filter((ip) => {
      const a = parseAddr('address', ip);
      return a.family === 4 && contains(subnet, 4, a.n);
    });
}

/** Who holds an address of a subnet: a sandbox, or a service's VIP (ipam never hands either out again). */
export function addressHolder(store: Store, ip: string): string | undefined {
  const sandbox = store.addressHolder(ip);
  if (sandbox) return `sandbox ${sandbox}`;
  const service = store.serviceByVip(ip);
  return service && `service ${service} (its VIP)`;
}

export const serviceFacts = (s: ServiceRow, backends: readonly string[] = s.backends): ServiceFacts => ({
  name: s.name, vip: s.vip, vip6: s.vip6, proto: s.proto, port: s.port, targetPort: s.targetPort, affinity: s.affinity, backends, publish: s.publish,
});

/** The conntrack filter for a service's flows to BACKENDS (through its VIP or its published host port). */
const flowsOf = (s: ServiceRow, backends: readonly string[]) =>
  ({ kind: 'service' as const, vip: s.vip, ...(s.vip6 ? { vip6: s.vip6 } : {}), proto: s.proto, port: s.port, backends, publish: s.publish });

/**
 * Checks a service's `--publish` against the host and the store: the address is the host's, and no
 * sandbox's `-p`, other service or host process has the port. Throws CONFLICT (changing nothing).
 */
function checkPublish(store: Store, p: ServicePublish, proto: 'tcp' | 'udp', targetPort: number, host: HostView): void {
  const flag = `--publish ${formatPublish(p)}`;
  if (p.hostIp !== '0.0.0.0' && !host.addresses.has(p.hostIp)) {
    throw new CtnetError('INVALID_ARGUMENT', `${flag}: ${p.hostIp} is not an address of this host`,
      'give one of the host\'s IPv4 addresses, or leave the address out to publish on all of them');
  }
  const m = publishMapping(p, proto, targetPort);
  const port = store.ports().find((r) => collides(r, m));
  if (port) {
    throw new CtnetError('CONFLICT', `${flag}: ${proto} port ${p.hostPort} is taken by sandbox ${port.sandbox}'s -p ${formatPortSpec(port)}`,
      `choose another host port, or remove that mapping with "ctnet port rm ${port.sandbox} ${formatPortSpec(port)}"`);
  }
  const other = store.services().find((x) => x.publish && collides(publishMapping(x.publish, x.proto, x.targetPort), m));
  if (other) {
    throw new CtnetError('CONFLICT', `${flag}: ${proto} port ${p.hostPort} is taken by service ${other.name} (--publish ${formatPublish(other.publish!)})`,
      'choose another host port');
  }
  const busy = busyListener(host, m);
  if (busy) {
    const who = busy.processes.length ? busy.processes.join(', ') : 'a process ctnet cannot name';
    throw new CtnetError('CONFLICT', `${flag}: ${busy.proto} port ${busy.port} on ${busy.address} is in use on this host by ${who}`,
      'choose another host port, or stop that process');
  }
}

/** The VIPs as addresses of the network's bridge: the host answers ARP (and NDP) for them and takes them in. */
export const vipOps = (bridge: string, s: Pick<ServiceRow, 'vip' | 'vip6'>): Op[] => [
  { kind: 'addr.add', cidr: `${s.vip}/32`, dev: bridge },
  ...(s.vip6 ? [{ kind: 'addr.add' as const, cidr: `${s.vip6}/128`, dev: bridge }] : []),
];

/** `--vip` given once or twice: at most one address per family. */
function parseVips(given: string | readonly string[] | undefined): { v4?: { n: bigint; text: string }; v6?: { n: bigint; text: string } } {
  const out: { v4?: { n: bigint; text: string }; v6?: { n: bigint; text: string } } = {};
  for (const text of given === undefined ? [] : typeof given === 'string' ? [given] : given) {
    const a = parseAddr('--vip', text);
    const key = a.family === 4 ? 'v4' : 'v6';
    if (out[key]) throw new CtnetError('INVALID_ARGUMENT', `--vip ${text}: --vip ${out[key].text} is an IPv${a.family} VIP already`, 'give at most one VIP of each family');
    out[key] = { n: a.n, text };
  }
  return out;
}

/**
 * A service on an overlay network is one name in the whole cluster: etcd's services/NAME says
 * whether another host has it (this host's own stale key is its ctnetd's to withdraw). Throws
 * CONFLICT; an unreachable etcd is an error too (nothing changed).
 */
async function checkClusterName(ctx: Ctx, name: string): Promise<void> {
  const m = ctx.store.member();
  if (!m) return;
  const kv = await etcdOf(m).get(serviceKey(name));
  if (!kv) return;
  const e = decodeEntry(kv.key, kv.value);
  const host = e.kind === 'service' ? e.value.host : undefined;
  if (host === m.host) return;
  throw new CtnetError('CONFLICT', `a service named ${name} exists already in the cluster${host ? `, on host ${host}` : ` (etcd's ${kv.key} does not read: ${e.kind === 'bad' ? e.reason : e.kind})`}`,
    'service names are one namespace across the hosts of a cluster: choose another name');
}

const n0 = (store: Store, network: string) => store.network(network)!.bridge;

export async function createService(ctx: Ctx, req: ServiceRequest): Promise<ServiceRow> {
  const { store, applier } = ctx;
  // Everything that can be checked without the store, before anything changes.
  const name = parseName('service', req.name);
  const port = parseServicePort(req.port);
  const target = parseServiceTarget(req.to);
  const affinity = parseAffinity(req.affinity);
  const vips = parseVips(req.vip);
  const vip = vips.v4;
  const publish = req.publish === undefined ? undefined : parseServicePublish(req.publish);
  const check = parseServiceCheck(req.check, req.checkInterval);
  const overlay = store.overlay(req.network) !== undefined;
  if (overlay && publish) {
    throw new CtnetError('INVALID_ARGUMENT', `--publish ${req.publish}: services on overlay network ${req.network} are not published on host ports yet`,
      'publish a service on a bridge network, or reach this one through its VIP from the overlay\'s hosts and sandboxes');
  }
  if (overlay) await checkClusterName(ctx, name);
  const host = publish ? await readHost(ctx, { mappings: [publishMapping(publish, port.proto, port.port)], force: false }) : undefined;
  return applier.transaction(async (tx) => {
    const row = tx.decide((rec) => {
      const had = store.service(name);
      if (had) {
        throw new CtnetError('CONFLICT', `a service named ${name} exists already${had.ownerHost ? ` in the cluster, on host ${had.ownerHost}` : ''}`,
          had.ownerHost ? 'service names are one namespace across the hosts of a cluster: choose another name' : `choose another name, or remove it with "ctnet service rm ${name}"`);
      }
      const n = store.network(req.network);
      if (!n) throw new CtnetError('NOT_FOUND', `--network ${req.network}: no network named ${req.network}`, 'list networks with "ctnet network ls"');
      if (n.lower) throw new CtnetError('INVALID_ARGUMENT', `--network ${n.name} is a ${n.lower.kind} network: its sandboxes' packets never pass ctnet's tables`, 'use a bridge network');
      // On an overlay network the network's IPv4 subnet is this host's lease: a VIP from it is
      // unique in the cluster (no other host allocates from it), and routed here by every peer.
      const lease = store.subnets(n.name).find((s) => s.family === 4);
      if (!lease) throw new CtnetError('INVALID_ARGUMENT', `--network ${n.name} has no IPv4 subnet: a service has an IPv4 VIP, and an IPv6 one on a dual-stack network`, 'use a network with an IPv4 subnet');
      // A dual-stack network's service gets a VIP of each family, as its sandboxes get an address of
      // each: a client that prefers IPv6 (RFC 6724) and resolves NAME to both reaches it either way.
      // Not on an overlay yet: its other hosts' copies are IPv4 only.
      const lease6 = overlay ? undefined : store.subnets(n.name).find((s) => s.family === 6);
      if (vips.v6 && !lease6) {
        throw new CtnetError('INVALID_ARGUMENT', `--vip ${vips.v6.text}: network ${n.name} has no IPv6 subnet${overlay ? ' (services on overlay networks have IPv4 VIPs for now)' : ''}`,
          'give an IPv4 VIP, or use a dual-stack network');
      }
      if (publish) checkPublish(store, publish, port.proto, target.targetPort ?? port.port, host!);
      const requested = vip ? [{ family: 4 as const, n: vip.n, text: formatAddr(4, vip.n) }] : [];
      let a;
      try {
        a = allocate(n.name, lease, requested, (ip) => addressHolder(store, ip));
      } catch (e) {
        throw e instanceof CtnetError ? new CtnetError(e.code, e.message.replace(/^--ip /, '--vip '), e.hint?.replace('--ip', '--vip')) : e;
      }
      if (vip && parseAddr('--vip', a.ip).n !== vip.n) {
        throw new CtnetError('INVALID_ARGUMENT', `--vip ${vip.text} is not in network ${n.name}'s subnet ${lease.cidr}`, 'give an address of the network, or leave --vip out to get a free one');
      }
      if (a.cursor !== undefined) rec.record({ kind: 'cursor.set', network: n.name, cidr: lease.cidr, ip: a.cursor });
      let vip6: string | undefined;
      if (lease6) {
        const requested6 = vips.v6 ? [{ family: 6 as const, n: vips.v6.n, text: formatAddr(6, vips.v6.n) }] : [];
        let a6;
        try {
          a6 = allocate(n.name, lease6, requested6, (ip) => addressHolder(store, ip));
        } catch (e) {
          throw e instanceof CtnetError ? new CtnetError(e.code, e.message.replace(/^--ip /, '--vip '), e.hint?.replace('--ip', '--vip')) : e;
        }
        if (vips.v6 && parseAddr('--vip', a6.ip).n !== vips.v6.n) {
          throw new CtnetError('INVALID_ARGUMENT', `--vip ${vips.v6.text} is not in network ${n.name}'s subnet ${lease6.cidr}`, 'give an address of the network, or leave --vip out to get a free one');
        }
        if (a6.cursor !== undefined) rec.record({ kind: 'cursor.set', network: n.name, cidr: lease6.cidr, ip: a6.cursor });
        vip6 = a6.ip;
      }
      const draft = {
        name, network: n.name, vip: a.ip, ...(vip6 ? { vip6 } : {}), cidr: lease.cidr, proto: port.proto, port: port.port,
        selector: target.selector, targetPort: target.targetPort ?? port.port, affinity, backends: [] as string[], publish, check,
      };
      // With --check every backend waits for its first passed probe (pendingChecks).
      const withChecks = check ? { ...draft, unready: serviceCandidates(store, draft) } : draft;
      // 'creating' until its chain is there: another process's syncServices (a label, ctnetd's first
      // health check) must not replace the rule of a chain not made yet.
      const r = { ...withChecks, backends: serviceBackends(store, withChecks), state: 'creating' as const };
      rec.record({ kind: 'service.insert', row: r });
      return r;
    });
    const facts = serviceFacts({ ...row, created: '' });
    await tx.run([
      step(vipOps(n0(store, row.network), row), `service ${name}: VIP ${row.vip}${row.vip6 ? ` and ${row.vip6}` : ''} on network ${row.network}'s bridge`),
      step([{ kind: 'nft', lines: serviceLines('add', facts), undo: serviceLines('delete', facts) }],
        `service ${name}: ${row.vip}${row.vip6 ? ` and [${row.vip6}]` : ''}:${row.port}/${row.proto}${publish ? ` and host ${formatPublish(publish)}` : ''} -> ${formatTarget(row.selector, row.targetPort)} (${row.backends.length} backends now)`),
      // Flows that reached the host port before it was published would keep going to the host.
      ...(publish ? [step([{ kind: 'conntrack.forget' as const, filter: { kind: 'stale' as const, ports: [{ mapping: publishMapping(publish, port.proto, row.targetPort), targets: [] }] } }])] : []),
    ]);
    tx.commit({ kind: 'service.state', name, state: 'ready' });
    return store.service(name) ?? { ...row, created: new Date().toISOString() };
  });
}

export function findService(store: Store, name: string): ServiceRow {
  const s = store.service(name);
  if (!s) {
    throw new CtnetError('NOT_FOUND', `no service named ${name}`, store.services().length ? 'list services with "ctnet service ls"' : 'there are no services');
  }
  return s;
}

/**
 * Removes a service: its elements and chain, its VIP, its connections; idempotent. Another host's
 * service (mirrored from etcd) is that host's to remove, unless MIRROR (the mirror following etcd).
 */
export async function removeService(ctx: Ctx, name: string, options: { mirror?: boolean } = {}): Promise<boolean> {
  const { store, applier } = ctx;
  parseName('service', name);
  const s = store.service(name);
  if (!s) return false;
  if (s.ownerHost && !options.mirror) {
    throw new CtnetError('INVALID_ARGUMENT', `service ${name} belongs to host ${s.ownerHost}: its VIP ${s.vip} is from that host's lease of network ${s.network}, and that host's store records it`,
      `run "ctnet service rm ${name}" on host ${s.ownerHost}: it is removed from every host from there`);
  }
  const facts = serviceFacts(s);
  // Recorded before the chain goes: ctnetd's table guard, seeing the chain missing while the store
  // has the service, waits for this process instead of putting it back (gc finishes it if we die).
  if (s.state !== 'removing') applier.record({ kind: 'service.state', name, state: 'removing' });
  // Only the owner has the VIP on its bridge (it is in the owner's lease; the others route to it).
  const bridge = s.ownerHost ? undefined : store.network(s.network)?.bridge;
  await applier.teardown([
    step([{ kind: 'nft.delete', lines: serviceLines('delete', facts) }], `service ${name}: remove`),
    ...(bridge ? [step([{ kind: 'addr.del', cidr: `${s.vip}/32`, dev: bridge }, ...(s.vip6 ? [{ kind: 'addr.del' as const, cidr: `${s.vip6}/128`, dev: bridge }] : [])])] : []),
    step([{ kind: 'conntrack.forget', filter: flowsOf(s, s.backends) }]),
  ]);
  if (applier.dryRun) return true;
  applier.record({ kind: 'service.delete', name });
  return true;
}

/** What this host publishes in etcd: its own services on overlay networks (services/NAME). */
export function ownServiceEntries(store: Store, self: string): Map<string, ServiceValue> {
  const out = new Map<string, ServiceValue>();
  for (const s of store.services()) {
    if (s.ownerHost || !store.overlay(s.network)) continue;
    out.set(s.name, {
      host: self, network: s.network, vip: s.vip, proto: s.proto, port: s.port, selector: s.selector, targetPort: s.targetPort, affinity: s.affinity,
      ...(s.check ? { check: s.check } : {}),
    });
  }
  return out;
}

const sameAsValue = (s: ServiceRow, v: ServiceValue) => s.ownerHost === v.host && s.network === v.network && s.vip === v.vip && s.proto === v.proto &&
  s.port === v.port && s.selector.key === v.selector.key && s.selector.value === v.selector.value && s.targetPort === v.targetPort && s.affinity === v.affinity &&
  JSON.stringify(s.check ?? null) === JSON.stringify(v.check ?? null);

/**
 * Makes this host's copies of other hosts' services what etcd says (WANT: every services/NAME entry
 * of another host): a copy whose entry went (removed there, or its host left the cluster) or changed
 * is removed, and an entry on an overlay network this host has a side of is installed (chain,
 * elements; no VIP on the bridge: the VIP is in the owner's lease, and a packet to it is DNATed
 * here before it is routed). Its backends are every host's selected sandboxes (serviceCandidates).
 * Returns what it did, and entries it could not take (a local service of the same name, a VIP
 * outside the overlay).
 */
export async function mirrorServices(ctx: Ctx, want: ReadonlyMap<string, ServiceValue>): Promise<{ said: string[]; refused: string[] }> {
  const { store, applier } = ctx;
  const said: string[] = [];
  const refused: string[] = [];
  for (const s of store.services().filter((x) => x.ownerHost)) {
    const w = want.get(s.name);
    if (w && sameAsValue(s, w)) continue;
    await removeService(ctx, s.name, { mirror: true });
    said.push(`${s.name} (of ${s.ownerHost}) ${w ? 'changed' : 'removed'}`);
  }
  for (const [name, w] of want) {
    const have = store.service(name);
    if (have) {
      if (!have.ownerHost) refused.push(`${name} of host ${w.host}: this host has a service of that name`);
      continue;
    }
    const ov = store.overlay(w.network);
    if (!ov || store.network(w.network)?.state !== 'ready') continue; // no side of that network here (yet)
    if (!contains(parseSubnet('overlay subnet', ov.cidr), 4, parseAddr('vip', w.vip).n)) {
      refused.push(`${name} of host ${w.host}: VIP ${w.vip} is outside overlay ${w.network}'s subnet ${ov.cidr}`);
      continue;
    }
    await applier.transaction(async (tx) => {
      const row = tx.decide((rec) => {
        const draft = {
          name, network: w.network, vip: w.vip, cidr: ov.cidr, proto: w.proto, port: w.port, selector: w.selector,
          targetPort: w.targetPort, affinity: w.affinity, backends: [] as string[], ownerHost: w.host, check: w.check,
        };
        // With a check, this host's own health checks take each backend in once a probe of theirs passed.
        const withChecks = w.check ? { ...draft, unready: serviceCandidates(store, draft) } : draft;
        const r = { ...withChecks, backends: serviceBackends(store, withChecks), state: 'creating' as const };
        rec.record({ kind: 'service.insert', row: r });
        return r;
      });
      const facts = serviceFacts({ ...row, created: '' });
      await tx.run([step([{ kind: 'nft', lines: serviceLines('add', facts), undo: serviceLines('delete', facts) }],
        `service ${name} of host ${w.host}: ${row.vip}:${row.port}/${row.proto} -> ${formatTarget(row.selector, row.targetPort)} (${row.backends.length} backends now)`)]);
      tx.commit({ kind: 'service.state', name, state: 'ready' });
    });
    said.push(`${name} (of ${w.host}) added`);
  }
  return { said, refused };
}

/** How long a backend that leaves a service has to finish its open connections before they are cut. */
export const DRAIN_MS = 10_000;

/**
 * Brings every service's backends up to date with the store, in one nft transaction: only the
 * services whose backends changed get their rule replaced. A backend that left gets no new
 * connection from then on; the connections it has open through the service may finish (up to
 * DRAIN_MS, outside the store's write lock), then what is left is cut. Call after the store says
 * who the backends are (and, for a removal, before the sandbox's interfaces go, so new
 * connections go elsewhere while it still answers).
 */
/**
 * A service with health checks takes a backend in only once a probe passed: a candidate that is
 * neither in its rule nor judged yet (new, relabelled, connected) is put on the unready list,
 * which ctnetd's first probe of it clears (services/health.ts). As Kubernetes does with a readiness
 * probe: a sandbox labelled before its server listens (`run -d --label`) gets no connection it
 * would refuse. Returns the list with them, or undefined when nothing is new.
 */
function pendingChecks(store: Store, s: ServiceRow, judged: ReadonlySet<string> = new Set()): string[] | undefined {
  if (!s.check) return undefined;
  const known = new Set([...s.backends, ...(s.unready ?? []), ...judged]);
  const fresh = serviceCandidates(store, s).filter((ip) => !known.has(ip));
  return fresh.length ? [...(s.unready ?? []), ...fresh].sort(byAddress) : undefined;
}

export async function syncServices(ctx: Ctx, judged?: { readonly service: string; readonly ips: ReadonlySet<string>; readonly unready?: readonly string[] }): Promise<void> {
  const { store, applier } = ctx;
  if (store.services().length === 0) return;
  const leaving = await store.writeAsync(async () => {
    // A health verdict goes in the same store transaction as the rule it changes: if the nft step
    // fails, the verdict is not recorded either, and the next round (seeing it differ) tries again.
    if (judged?.unready && store.service(judged.service)) store.setServiceUnready(judged.service, judged.unready);
    for (const s of store.services()) {
      const pending = pendingChecks(store, s, judged?.service === s.name ? judged.ips : undefined);
      if (pending) store.setServiceUnready(s.name, pending);
    }
    // A backend the checks took out is gone already: its connections are cut at once, not waited for.
    // A service being made or removed is left to its `service create` or `rm` (its chain is not there yet, or going).
    const changed = store.services().filter((s) => (s.state ?? 'ready') === 'ready').flatMap((s) => {
      const now = serviceBackends(store, s);
      return JSON.stringify(now) === JSON.stringify(s.backends) ? [] : [{ s, now, gone: s.backends.filter((b) => !now.includes(b)) }];
    });
    if (changed.length === 0) return [];
    const lines = changed.flatMap(({ s, now }) => serviceBackendLines(serviceFacts(s, now)));
    await applier.apply([
      step([{ kind: 'nft', lines }], `services: backends of ${changed.map(({ s, now }) => `${s.name} (${now.length})`).join(', ')}`),
    ]);
    for (const { s, now } of changed) store.setServiceBackends(s.name, now);
    return changed.filter((c) => c.gone.length > 0);
  }, { rollback: applier.dryRun });
  if (leaving.length === 0) return;
  const draining = leaving.map(({ s, gone }) => ({ s, gone: gone.filter((ip) => !(s.unready ?? []).includes(ip)) })).filter((d) => d.gone.length > 0);
  await applier.apply([
    ...(draining.length ? [step(draining.map(({ s, gone }) => ({ kind: 'conntrack.drain' as const, filter: flowsOf(s, gone), timeoutMs: DRAIN_MS })),
      `services: ${draining.map(({ s, gone }) => `${s.name}'s ${gone.join(', ')}`).join('; ')} finish their open connections (new ones go elsewhere)`)] : []),
    step(leaving.map(({ s, gone }) => ({ kind: 'conntrack.forget' as const, filter: flowsOf(s, gone) }))),
  ]);
}

/**
 * What a service's health checks say (services/health.ts): UNREADY, the selected backends that
 * failed, are out of its rule; the others are in. Then the rule follows (syncServices).
 */
export async function setServiceHealth(ctx: Ctx, name: string, unready: readonly string[], judged?: readonly string[]): Promise<void> {
  const { store } = ctx;
  const s = store.service(name);
  if (!s || (s.state ?? 'ready') !== 'ready') return; // its create or rm is under way: judged again next round
  const now = [...unready].sort(byAddress);
  // JUDGED (the addresses this round probed; default: every candidate) are not new to the checks.
  await syncServices(ctx, { service: name, ips: new Set(judged ?? serviceCandidates(store, s)), unready: now });
}

export interface ServiceView extends ServiceRow {
  readonly to: string;
  /** Selected backends the health checks took out. */
  readonly notReady: readonly string[];
  /** New connections the service's rule sent to a backend (its counter). */
  readonly connections: number;
  /** On an overlay network, the host that owns it (this one's name for its own); else absent. */
  readonly host?: string | undefined;
}

/** Every service with its rule's counter (new connections balanced). */
export async function listServices(ctx: Ctx, name?: string): Promise<ServiceView[]> {
  const { store, kernel } = ctx;
  const rows = name === undefined ? store.services() : [findService(store, name)];
  const counts = new Map<string, number>();
  if (rows.length) {
    for (const item of ((await kernel.nftTable('inet', { terse: true })) ?? []) as { rule?: { chain?: string; expr?: { counter?: { packets: number } }[] } }[]) {
      const chain = item.rule?.chain;
      if (!chain?.startsWith('svc_')) continue;
      const expr = item.rule!.expr;
      const c = Array.isArray(expr) ? expr.find((e) => e.counter)?.counter : undefined; // the fake kernel's rules are text
      if (c) counts.set(chain, (counts.get(chain) ?? 0) + c.packets); // a dual-stack service has a rule per family
    }
  }
  const self = store.member()?.host;
  return rows.map((s) => {
    const candidates = new Set(serviceCandidates(store, s));
    return {
      ...s, to: formatTarget(s.selector, s.targetPort), notReady: (s.unready ?? []).filter((ip) => candidates.has(ip)),
      connections: counts.get(serviceChain(s.name)) ?? 0,
      ...(s.ownerHost ? { host: s.ownerHost } : store.overlay(s.network) && self ? { host: self } : {}),
    };
  });
}

