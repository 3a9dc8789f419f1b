// Use cases for services: a virtual address (VIP) on a network, balanced by the kernel over the
// sandboxes a label selects (docs/services.md). The backends are derived from the store like the
// policy sets: every change to sandboxes or labels brings them up to date (syncServices).
import { CtnetError } from '../errors.ts';
import { allocate } from '../model/ipam.ts';
import { formatAddr, parseAddr } from '../model/cidr.ts';
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
  readonly vip: string | undefined;
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
export function serviceBackends(store: Store, s: Pick<ServiceRow, 'network' | 'selector' | 'unready'>): string[] {
  const out = new Set(s.unready ?? []);
  return serviceCandidates(store, s).filter((ip) => !out.has(ip));
}

/**
 * The addresses a service's selector picks: the IPv4 address, on the service's network, of each
 * sandbox with the label. A sandbox (or its attachment) being removed has left already, so its
 * new connections go elsewhere while its old ones drain.
 */
export function serviceCandidates(store: Store, s: Pick<ServiceRow, 'network' | 'selector'>): string[] {
  const selected = new Set(store.labels().filter((l) => l.key === s.selector.key && l.value === s.selector.value).map((l) => l.sandbox));
  const leaving = new Set(store.sandboxes().filter((x) => x.state === 'removing').map((x) => x.name));
  const detaching = new Set(store.attachments({ network: s.network }).filter((a) => a.state === 'removing').map((a) => a.sandbox));
  return store.addresses({ network: s.network })
    .filter((a) => a.family === 4 && selected.has(a.sandbox) && !leaving.has(a.sandbox) && !detaching.has(a.sandbox))
    .map((a) => a.ip).sort(byAddress);
}

/** Who holds an address of a subnet: a sandbox, or a service's VIP (ipam never hands either out again). */
export function addressHolder(store: Store, ip: string): string | undefined {
  const sandbox = store.addressHolder(ip);
  if (sandbox) return `sandbox ${sandbox}`;
  const service = store.serviceByVip(ip);
  return service && `service ${service} (its VIP)`;
}

export const serviceFacts = (s: ServiceRow, backends: readonly string[] = s.backends): ServiceFacts => ({
  name: s.name, vip: s.vip, proto: s.proto, port: s.port, targetPort: s.targetPort, affinity: s.affinity, backends, publish: s.publish,
});

/** The conntrack filter for a service's flows to BACKENDS (through its VIP or its published host port). */
const flowsOf = (s: ServiceRow, backends: readonly string[]) =>
  ({ kind: 'service' as const, vip: s.vip, proto: s.proto, port: s.port, backends, publish: s.publish });

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

/** The VIP as an address of the network's bridge: the host answers ARP for it and takes it in. */
const vipOp = (store: Store, s: Pick<ServiceRow, 'network' | 'vip'>): Op => ({ kind: 'addr.add', cidr: `${s.vip}/32`, dev: store.network(s.network)!.bridge });

export async function createService(ctx: Ctx, req: ServiceRequest): Promise<ServiceRow> {
  const { store, applier } = ctx;
  // Everything that can be checked without the store, before anything changes.
  const name = parseName('service', req.name);
  const port = parseServicePort(req.port);
  const target = parseServiceTarget(req.to);
  const affinity = parseAffinity(req.affinity);
  const vip = req.vip === undefined ? undefined : parseAddr('--vip', req.vip);
  if (vip && vip.family !== 4) throw new CtnetError('INVALID_ARGUMENT', `--vip ${req.vip}: services have IPv4 VIPs for now`, 'give an IPv4 address of the network, or leave --vip out');
  const publish = req.publish === undefined ? undefined : parseServicePublish(req.publish);
  const check = parseServiceCheck(req.check, req.checkInterval);
  const host = publish ? await readHost(ctx, { mappings: [publishMapping(publish, port.proto, port.port)], force: false }) : undefined;
  return applier.transaction(async (tx) => {
    const row = tx.decide((rec) => {
      if (store.service(name)) throw new CtnetError('CONFLICT', `a service named ${name} exists already`, `choose another name, or remove it with "ctnet service rm ${name}"`);
      const n = store.network(req.network);
      if (!n) throw new CtnetError('NOT_FOUND', `--network ${req.network}: no network named ${req.network}`, 'list networks with "ctnet network ls"');
      if (n.lower) throw new CtnetError('INVALID_ARGUMENT', `--network ${n.name} is a ${n.lower.kind} network: its sandboxes' packets never pass ctnet's tables`, 'use a bridge network');
      if (store.overlay(n.name)) throw new CtnetError('INVALID_ARGUMENT', `--network ${n.name} is an overlay network: services on overlays are not supported yet`, 'use a bridge network');
      const lease = store.subnets(n.name).find((s) => s.family === 4);
      if (!lease) throw new CtnetError('INVALID_ARGUMENT', `--network ${n.name} has no IPv4 subnet: services have IPv4 VIPs for now`);
      if (publish) checkPublish(store, publish, port.proto, target.targetPort ?? port.port, host!);
      const requested = vip ? [{ family: 4 as const, n: vip.n, text: formatAddr(4, vip.n) }] : [];
      let a;
      try {
        a = allocate(n.name, lease, requested, (ip) => addressHolder(store, ip));
      } catch (e) {
        throw e instanceof CtnetError ? new CtnetError(e.code, e.message.replace(/^--ip /, '--vip '), e.hint?.replace('--ip', '--vip')) : e;
      }
      if (vip && parseAddr('--vip', a.ip).n !== vip.n) {
        throw new CtnetError('INVALID_ARGUMENT', `--vip ${req.vip} is not in network ${n.name}'s subnet ${lease.cidr}`, 'give an address of the network, or leave --vip out to get a free one');
      }
      if (a.cursor !== undefined) rec.record({ kind: 'cursor.set', network: n.name, cidr: lease.cidr, ip: a.cursor });
      const draft = {
        name, network: n.name, vip: a.ip, cidr: lease.cidr, proto: port.proto, port: port.port,
        selector: target.selector, targetPort: target.targetPort ?? port.port, affinity, backends: [] as string[], publish, check,
      };
      const r = { ...draft, backends: serviceBackends(store, draft) };
      rec.record({ kind: 'service.insert', row: r });
      return r;
    });
    const facts = serviceFacts({ ...row, created: '' });
    await tx.run([
      step([vipOp(store, row)], `service ${name}: VIP ${row.vip} on network ${row.network}'s bridge`),
      step([{ kind: 'nft', lines: serviceLines('add', facts), undo: serviceLines('delete', facts) }],
        `service ${name}: ${row.vip}:${row.port}/${row.proto}${publish ? ` and host ${formatPublish(publish)}` : ''} -> ${formatTarget(row.selector, row.targetPort)} (${row.backends.length} backends now)`),
      // Flows that reached the host port before it was published would keep going to the host.
      ...(publish ? [step([{ kind: 'conntrack.forget' as const, filter: { kind: 'stale' as const, ports: [{ mapping: publishMapping(publish, port.proto, row.targetPort), targets: [] }] } }])] : []),
    ]);
    tx.commit();
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

/** Removes a service: its elements and chain, its VIP, its connections; idempotent. */
export async function removeService(ctx: Ctx, name: string): Promise<boolean> {
  const { store, applier } = ctx;
  parseName('service', name);
  const s = store.service(name);
  if (!s) return false;
  const facts = serviceFacts(s);
  const bridge = store.network(s.network)?.bridge;
  await applier.teardown([
    step([{ kind: 'nft.delete', lines: serviceLines('delete', facts) }], `service ${name}: remove`),
    ...(bridge ? [step([{ kind: 'addr.del', cidr: `${s.vip}/32`, dev: bridge }])] : []),
    step([{ kind: 'conntrack.forget', filter: flowsOf(s, s.backends) }]),
  ]);
  if (applier.dryRun) return true;
  applier.record({ kind: 'service.delete', name });
  return true;
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
export async function syncServices(ctx: Ctx): Promise<void> {
  const { store, applier } = ctx;
  if (store.services().length === 0) return;
  const leaving = await store.writeAsync(async () => {
    // A backend the checks took out is gone already: its connections are cut at once, not waited for.
    const changed = store.services().flatMap((s) => {
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
export async function setServiceHealth(ctx: Ctx, name: string, unready: readonly string[]): Promise<void> {
  const { store } = ctx;
  const s = store.service(name);
  if (!s) return;
  const now = [...unready].sort(byAddress);
  if (JSON.stringify(now) !== JSON.stringify(s.unready ?? [])) store.write(() => store.setServiceUnready(name, now));
  await syncServices(ctx);
}

export interface ServiceView extends ServiceRow {
  readonly to: string;
  /** Selected backends the health checks took out. */
  readonly notReady: readonly string[];
  /** New connections the service's rule sent to a backend (its counter). */
  readonly connections: number;
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
      if (c) counts.set(chain, c.packets);
    }
  }
  return rows.map((s) => {
    const candidates = new Set(serviceCandidates(store, s));
    return {
      ...s, to: formatTarget(s.selector, s.targetPort), notReady: (s.unready ?? []).filter((ip) => candidates.has(ip)),
      connections: counts.get(serviceChain(s.name)) ?? 0,
    };
  });
}

