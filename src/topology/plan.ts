// The plan: what `apply` would do to make the store and the kernel hold what the file says, as data
// a person reads first (diff) and apply carries out. Computed from the file, the store (records and
// which topology owns what) and the kernel (drivers' observe, the nft tables, live commands).
import { CtnetError } from '../errors.ts';
import { overlayDefDiff, overlayDefinition, otherLeaseHolders } from '../engine/overlay-network.ts';
import { driverNetwork, driverOf } from '../engine/records.ts';
import type { Ctx } from '../engine/context.ts';
import { bridgeName, shimName } from '../engine/naming.ts';
import { commandRunning } from '../engine/process.ts';
import { tableDrift } from '../engine/tables.ts';
import { withLinkSnapshot } from '../kernel/snapshot.ts';
import { overlaps, parseSubnet } from '../model/cidr.ts';
import { formatCheck, formatPublish, formatTarget } from '../model/service.ts';
import type { Shape } from '../model/shape.ts';
import { formatPortSpec, type PortMapping } from '../model/ports.ts';
import type { OwnedKind, PolicyRow } from '../store/store.ts';
import type { TopoAttach, TopoNetwork, TopoPolicy, TopoSandbox, TopoService, Topology } from './model.ts';

export type Op = 'create' | 'change' | 'replace' | 'remove' | 'repair';
type Egress = { readonly family: 4 | 6; readonly ip: string };
const egressText = (e: readonly Egress[]) => e.map((x) => x.ip).join(', ') || 'masquerade';
const sameEgress = (a: readonly Egress[], b: readonly Egress[]) => egressText([...a].sort((x, y) => x.family - y.family)) === egressText([...b].sort((x, y) => x.family - y.family));
/** A shape as text, its settings in one order (equal shapes, equal text). */
export const shapeText = (s: Shape | undefined): string => (s ? Object.entries(s).filter(([, v]) => v !== undefined).sort(([a], [b]) => a.localeCompare(b)).map(([k, v]) => `${k} ${v}`).join(', ') : '') || 'none';

/** One thing that can be done, in the order apply does things (see PHASES in apply.ts). */
export type Action =
  | { readonly do: 'repair.tables' }
  | { readonly do: 'repair.network'; readonly name: string }
  | { readonly do: 'repair.netns'; readonly name: string }
  | { readonly do: 'sandbox.remove'; readonly name: string }
  | { readonly do: 'network.remove'; readonly name: string }
  | { readonly do: 'network.replace'; readonly net: TopoNetwork; readonly reattach: readonly string[] }
  | { readonly do: 'network.create'; readonly net: TopoNetwork }
  | { readonly do: 'network.mtu'; readonly name: string; readonly mtu: number | undefined; readonly was: number | undefined }
  | { readonly do: 'sandbox.replace'; readonly sbx: TopoSandbox }
  | { readonly do: 'sandbox.create'; readonly sbx: TopoSandbox }
  | { readonly do: 'disconnect'; readonly sandbox: string; readonly network: string }
  | { readonly do: 'connect'; readonly sandbox: string; readonly attach: TopoAttach }
  | { readonly do: 'labels'; readonly sandbox: string; readonly set: readonly { key: string; value: string }[]; readonly remove: readonly string[] }
  | { readonly do: 'ports'; readonly sandbox: string; readonly add: readonly PortMapping[]; readonly remove: readonly PortMapping[] }
  | { readonly do: 'command'; readonly sandbox: string; readonly argv: readonly string[] | undefined }
  | { readonly do: 'egress'; readonly scope: 'network' | 'sandbox'; readonly name: string; readonly egress: readonly Egress[]; readonly was: readonly Egress[] }
  | { readonly do: 'route'; readonly sandbox: string; readonly network: string }
  | { readonly do: 'shape'; readonly sandbox: string; readonly shape: Shape | undefined; readonly was: Shape | undefined }
  | { readonly do: 'policy'; readonly remove: readonly PolicyRow[]; readonly add: readonly TopoPolicy[] }
  // A service cannot change in place: a replace is a remove (before networks change) and a create (after).
  | { readonly do: 'service.remove'; readonly name: string }
  | { readonly do: 'service.create'; readonly svc: TopoService };

export interface Change {
  readonly op: Op;
  readonly kind: OwnedKind | 'tables';
  readonly name: string;
  /** What a person needs to know: the attributes of a new object, old -> new, the reason for a replace, the drift. */
  readonly details: readonly string[];
}

export interface Plan {
  readonly topology: string;
  readonly file: string;
  readonly changes: readonly Change[];
  readonly actions: readonly Action[];
  /** Objects this topology owns that the file no longer has, kept because --prune was not given. */
  readonly kept: readonly { kind: OwnedKind; name: string }[];
}

export const SYMBOL: Record<Op, string> = { create: '+', change: '~', replace: '-/+', remove: '-', repair: '!' };

export function summary(p: Plan): Record<Op, number> {
  const n = (op: Op) => p.changes.filter((c) => c.op === op).length;
  return { create: n('create'), change: n('change'), replace: n('replace'), remove: n('remove'), repair: n('repair') };
}

const sameList = (a: readonly string[], b: readonly string[]) => a.length === b.length && a.every((x, i) => x === b[i]);
const labelText = (l: Readonly<Record<string, string>>) => Object.entries(l).map(([k, v]) => `${k}=${v}`).join(',') || 'none';
export const networkText = (n: TopoNetwork): string[] => [
  n.overlay ? `overlay ${n.overlay.subnet} (vxlan${n.overlay.vni !== undefined ? ` vni ${n.overlay.vni}` : ''}, port ${n.overlay.port}, a /${n.overlay.hostPrefix} per host)` : `subnets ${n.spec.subnets.map((s) => s.cidr).join(', ')}`,
  ...(n.spec.internal ? ['internal'] : []), ...(n.spec.isolate ? ['isolate'] : []), ...(n.spec.hostAccess ? ['host_access'] : []),
  ...(n.spec.mtu !== undefined ? [`mtu ${n.spec.mtu}`] : []),
  ...(n.spec.dns ? (n.spec.dnsForward.length ? [`dns forwarding to ${n.spec.dnsForward.join(', ')}`] : []) : ['dns off']),
  ...(n.spec.lower ? [`${n.spec.lower.kind} on ${n.spec.lower.parent} (mode ${n.spec.lower.mode}${n.spec.lower.hostShim ? ', host shim' : ''})`] : []),
  ...(n.spec.egress?.length ? [`egress from ${egressText(n.spec.egress)}`] : []),
];
const attachText = (a: TopoAttach) => (a.ips.length ? `${a.network} (${a.ips.map((i) => i.text).join(', ')})` : a.network);
export const sandboxText = (s: TopoSandbox): string[] => [
  `networks ${s.networks.map(attachText).join(', ')}`,
  ...(Object.keys(s.labels).length ? [`labels ${labelText(s.labels)}`] : []),
  ...(s.ports.length ? [`ports ${s.ports.map(formatPortSpec).join(', ')}`] : []),
  ...(s.command ? [`command ${s.command.join(' ')}`] : []),
  ...(s.aliases.length ? [`aliases ${s.aliases.join(', ')}`] : []),
  ...(s.egress.length ? [`egress from ${egressText(s.egress)}`] : []),
  ...(s.defaultRoute ? [`default route via ${s.defaultRoute}`] : []),
  ...(s.shape ? [`shaped: ${shapeText(s.shape)}`] : []),
];
const policyText = (p: { action: string; from: string; to: string; port: string | null }) => `${p.action} ${p.from} -> ${p.to} ${p.port ?? 'any'}`;
export const serviceText = (v: TopoService): string[] => [
  `on ${v.network}`, `port ${v.port}`, `to ${v.to}`, ...(v.vip ? [`vip ${v.vip}`] : []), ...(v.affinity !== 'none' ? [`affinity ${v.affinity}`] : []),
  ...(v.publish ? [`published on ${formatPublish(v.publish)}`] : []), ...(v.check ? [`check ${formatCheck(v.check)}`] : []),
];

/** Compares the file with the store and the kernel. Throws (before anything changes) on a conflict. */
export async function computePlan(ctx: Ctx, topo: Topology, options: { prune: boolean }): Promise<Plan> {
  const { store } = ctx;
  const changes: Change[] = [];
  const actions: Action[] = [];
  const ownedRows = store.owned({ topology: topo.name });
  const owns = (kind: OwnedKind, name: string) => ownedRows.some((o) => o.kind === kind && o.name === name);
  const claim = (kind: OwnedKind, name: string, at: string) => {
    const o = store.owner(kind, name);
    if (o && o.topology !== topo.name) {
      throw new CtnetError('CONFLICT', `${at}: ${kind} ${name} belongs to topology ${o.topology} (${o.file})`, `rename it in this file; two files share a host only with different object names`);
    }
    if (!o) {
      throw new CtnetError('CONFLICT', `${at}: ${kind} ${name} exists already and was not made by this file`,
        `rename it in the file, or remove it (it was made by hand or by another tool) and apply again`);
    }
  };
  const fileNets = new Set(topo.networks.map((n) => n.name));
  const fileSbx = new Set(topo.sandboxes.map((s) => s.name));
  const filePol = new Set(topo.policy.map((p) => p.name));
  const fileSvc = new Set(topo.services.map((v) => v.name));
  const kept: { kind: OwnedKind; name: string }[] = [];
  const ruleNames = new Set(store.policies().map((p) => p.name));
  const live = (o: { kind: OwnedKind; name: string }) => (o.kind === 'network' ? store.network(o.name) : o.kind === 'sandbox' ? store.sandbox(o.name) : o.kind === 'service' ? store.service(o.name) : ruleNames.has(o.name));
  const liveOwned = ownedRows.filter(live);
  const inFile = { network: fileNets, sandbox: fileSbx, policy: filePol, service: fileSvc } as const;
  const gone = liveOwned.filter((o) => !inFile[o.kind].has(o.name));
  // The kernel is read in a few calls, at once, and compared in memory: ctnet's nft tables (two nft
  // processes), and every host link (one ip process) for the drift checks of the networks, instead
  // of two ip processes per network. A no-op apply of a large file is then mostly a file and a store read.
  const tablesP = liveOwned.length > 0 && store.networks().length > 0 ? tableDrift(ctx, { fromMirror: true }) : Promise.resolve([]);
  tablesP.catch(() => {}); // awaited below; not an unhandled rejection if the plan fails first
  const kernel = await withLinkSnapshot(ctx.kernel);

  // ---- networks ----
  // An overlay network needs this host in a cluster (its definition and this host's share are the cluster's).
  const firstOverlay = topo.networks.find((n) => n.overlay);
  if (firstOverlay && store.member()?.state !== 'ready') {
    throw new CtnetError('INVALID_ARGUMENT', `${firstOverlay.at}: network ${firstOverlay.name} is an overlay network (driver: vxlan): it needs this host in a cluster, and this host is not a member of one`,
      'join one first (ctnet cluster join --etcd http://ETCD:2379), or make it a network of this host only (leave driver: vxlan out)');
  }
  const replacedNets = new Set<string>();
  const removedNets = new Set(options.prune ? gone.filter((o) => o.kind === 'network').map((o) => o.name) : []);
  for (const net of topo.networks) {
    const row = store.network(net.name);
    if (!row) {
      // A new network must not overlap a network it does not replace (the engine checks again).
      for (const sub of store.subnets()) {
        if (removedNets.has(sub.network) || topo.networks.some((n) => n.name === sub.network)) continue;
        const mine = net.spec.subnets.find((s) => overlaps(s.subnet, parseSubnet('subnet', sub.cidr)));
        if (mine) throw new CtnetError('CONFLICT', `${net.at}: subnet ${mine.cidr} of network ${net.name} overlaps ${sub.cidr} of network ${sub.network}`, 'choose a subnet that no other network uses');
      }
      const details = networkText(net);
      if (net.overlay) {
        // Another host may have defined it (the same file applied there first): this host joins it.
        const def = await overlayDefinition(ctx, net.name);
        const diff = def ? overlayDefDiff(def, net.overlay) : [];
        if (diff.length) {
          throw new CtnetError('CONFLICT', `${net.at}: overlay network ${net.name} is defined in the cluster otherwise: ${diff.join('; ')}`,
            'make the file say what the cluster has, or remove the network on every host that has it (ctnet down, ctnet network rm) first');
        }
        details.push(def ? `joins the cluster's network (vni ${def.vni}): this host leases its share` : 'defined in the cluster; this host leases its share');
      }
      changes.push({ op: 'create', kind: 'network', name: net.name, details });
      actions.push({ do: 'network.create', net });
      continue;
    }
    claim('network', net.name, net.at);
    const why: string[] = [];
    const have = store.subnets(net.name);
    const want = net.spec.subnets;
    const ov = row.driver === 'vxlan' ? store.overlay(net.name) : undefined;
    let clusterWhy: string[] = [];
    if (net.overlay && ov) {
      // What the cluster defines (internal and isolate are compared below, with every driver's).
      const lease = have.find((x) => x.family === 4);
      const def = { subnet: ov.cidr, hostPrefix: lease ? parseSubnet('subnet', lease.cidr).prefix : net.overlay.hostPrefix, vni: ov.vni, port: ov.port, internal: net.overlay.internal, isolate: net.overlay.isolate };
      clusterWhy = overlayDefDiff(def, net.overlay);
      if (row.internal !== net.spec.internal || row.isolate !== net.spec.isolate) clusterWhy.push('internal/isolate');
      why.push(...overlayDefDiff(def, net.overlay));
      if (net.spec.mtu !== undefined && row.mtu !== net.spec.mtu) why.push(`mtu ${row.mtu ?? 'default'} -> ${net.spec.mtu} (an overlay's MTU is set when it is made)`);
    } else if (net.overlay || ov) {
      why.push(`driver ${row.driver} -> ${net.overlay ? 'vxlan' : net.spec.lower?.kind ?? 'bridge'}`);
      if (ov) clusterWhy = ['driver'];
      if (!sameList(have.map((s) => s.cidr).sort(), want.map((s) => s.cidr).sort())) why.push(`subnets ${ov ? ov.cidr : have.map((s) => s.cidr).join(', ')} -> ${want.map((s) => s.cidr).join(', ')}`);
    } else {
      if (!sameList(have.map((s) => s.cidr).sort(), want.map((s) => s.cidr).sort())) why.push(`subnets ${have.map((s) => s.cidr).join(', ')} -> ${want.map((s) => s.cidr).join(', ')}`);
      else for (const w of want) { const h = have.find((s) => s.cidr === w.cidr)!; if (h.gateway !== w.gateway) why.push(`gateway ${h.gateway} -> ${w.gateway}`); }
      const driver = net.spec.lower?.kind ?? 'bridge';
      if (row.driver !== driver) why.push(`driver ${row.driver} -> ${driver}`);
      else if (net.spec.lower && JSON.stringify({ p: row.lower?.parent, m: row.lower?.mode, s: (row.lower?.shimIp ?? null) !== null }) !== JSON.stringify({ p: net.spec.lower.parent, m: net.spec.lower.mode, s: net.spec.lower.hostShim })) {
        why.push(`${driver} ${row.lower?.parent} (mode ${row.lower?.mode}) -> ${net.spec.lower.parent} (mode ${net.spec.lower.mode})${net.spec.lower.hostShim !== ((row.lower?.shimIp ?? null) !== null) ? `, host shim ${net.spec.lower.hostShim ? 'on' : 'off'}` : ''}`);
      }
    }
    if (row.internal !== net.spec.internal) why.push(`internal ${row.internal} -> ${net.spec.internal}`);
    if (row.isolate !== net.spec.isolate) why.push(`isolate ${row.isolate} -> ${net.spec.isolate}`);
    if (row.hostAccess !== net.spec.hostAccess) why.push(`host_access ${row.hostAccess} -> ${net.spec.hostAccess}`);
    // DNS settings are the network's record: no live change yet, so a change replaces the network.
    if (row.dns !== net.spec.dns) why.push(`dns ${row.dns ? 'on' : 'off'} -> ${net.spec.dns ? 'on' : 'off'}`);
    if (!sameList(row.dnsForward, net.spec.dnsForward)) why.push(`dns_forward ${row.dnsForward.join(', ') || 'the host\'s resolvers'} -> ${net.spec.dnsForward.join(', ') || 'the host\'s resolvers'}`);
    const bridge = net.spec.lower ? shimName(net.name) : net.spec.bridge ?? bridgeName(net.name);
    if (!net.overlay && !ov && row.bridge !== bridge) why.push(`bridge ${row.bridge} -> ${bridge}`);
    if (why.length && ov && clusterWhy.length) {
      // The cluster's definition goes only with the last host's share: others must let go first.
      const others = await otherLeaseHolders(ctx, net.name);
      if (others.length) {
        throw new CtnetError('CONFLICT', `${net.at}: overlay network ${net.name} must be replaced (${why.join('; ')}), but hosts ${others.join(', ')} have it too`,
          `remove it there first (ctnet down -f FILE, or ctnet network rm ${net.name}), then apply here and there`);
      }
    }
    if (why.length) {
      const attached = store.attachments({ network: net.name }).map((a) => a.sandbox);
      const foreign = attached.filter((s) => !owns('sandbox', s));
      if (foreign.length) {
        throw new CtnetError('CONFLICT', `${net.at}: network ${net.name} must be replaced (${why.join('; ')}), but sandboxes this file does not own are on it: ${foreign.join(', ')}`,
          'disconnect them first, or leave the network as it is');
      }
      const reattach = topo.sandboxes.filter((x) => attached.includes(x.name) && x.networks.some((a) => a.network === net.name)).map((x) => x.name);
      changes.push({ op: 'replace', kind: 'network', name: net.name, details: [...why, ...(reattach.length ? [`re-attaches ${reattach.join(', ')}`] : [])] });
      actions.push({ do: 'network.replace', net, reattach });
      replacedNets.add(net.name);
      continue;
    }
    const egressNow = store.networkEgress(net.name).map((e) => ({ family: e.family, ip: e.ip }));
    if (!net.overlay && !sameEgress(egressNow, net.spec.egress ?? [])) {
      changes.push({ op: 'change', kind: 'network', name: net.name, details: [`egress ${egressText(egressNow)} -> ${egressText(net.spec.egress ?? [])} (new connections)`] });
      actions.push({ do: 'egress', scope: 'network', name: net.name, egress: net.spec.egress ?? [], was: egressNow });
    }
    if (!net.overlay && (row.mtu ?? undefined) !== net.spec.mtu) {
      changes.push({ op: 'change', kind: 'network', name: net.name, details: [`mtu ${row.mtu ?? 'default'} -> ${net.spec.mtu ?? 'default'} (bridge and its sandboxes' interfaces)`] });
      actions.push({ do: 'network.mtu', name: net.name, mtu: net.spec.mtu, was: row.mtu ?? undefined });
    }
    const drift = await driverOf(row).observe(kernel, driverNetwork(store, row), store.attachments({ network: net.name }).filter((a) => a.state === 'ready'));
    if (drift.length) {
      changes.push({ op: 'repair', kind: 'network', name: net.name, details: drift.map((d) => driftText(row.bridge, d)) });
      actions.push({ do: 'repair.network', name: net.name });
    }
  }

  // ---- sandboxes ----
  for (const sbx of topo.sandboxes) {
    const row = store.sandbox(sbx.name);
    if (!row) {
      changes.push({ op: 'create', kind: 'sandbox', name: sbx.name, details: sandboxText(sbx) });
      actions.push({ do: 'sandbox.create', sbx });
      continue;
    }
    claim('sandbox', sbx.name, sbx.at);
    const atts = store.attachments({ sandbox: sbx.name });
    const addrs = store.addresses({ sandbox: sbx.name });
    const recorded = atts.map((a) => a.network);
    const wanted = sbx.networks.map((a) => a.network);
    const why: string[] = [];
    const keptNets = recorded.filter((n) => wanted.includes(n));
    const added = wanted.filter((n) => !recorded.includes(n));
    const dropped = recorded.filter((n) => !wanted.includes(n));
    // In place: networks dropped anywhere, added after those kept, the kept ones in the same order.
    const inPlace = sameList(keptNets, wanted.filter((n) => recorded.includes(n))) && sameList(wanted.slice(0, keptNets.length), keptNets);
    if (!inPlace) why.push(`networks ${recorded.join(', ')} -> ${wanted.join(', ')} (the order decides eth0, eth1, ...)`);
    for (const a of sbx.networks) {
      if (!recorded.includes(a.network) || replacedNets.has(a.network)) continue;
      const on = addrs.filter((x) => x.network === a.network).map((x) => x.ip);
      for (const ip of a.ips) if (!on.includes(ip.text)) why.push(`address on ${a.network}: ${on.join(', ') || 'none'} -> ${ip.text}`);
    }
    // Aliases are recorded per attachment: no live change yet, so a change replaces the sandbox.
    const aliasesNow = [...new Set(store.aliases({ sandbox: sbx.name }).map((x) => x.alias))].sort();
    if (!sameList(aliasesNow, sbx.aliases)) why.push(`aliases ${aliasesNow.join(', ') || 'none'} -> ${sbx.aliases.join(', ') || 'none'}`);
    if (why.length) {
      changes.push({ op: 'replace', kind: 'sandbox', name: sbx.name, details: why });
      actions.push({ do: 'sandbox.replace', sbx });
      continue;
    }
    if (!kernel.isNetns(row.netns)) {
      changes.push({ op: 'repair', kind: 'sandbox', name: sbx.name, details: [`network namespace ${row.netns} is gone`] });
      actions.push({ do: 'repair.netns', name: sbx.name });
    }
    const details: string[] = [];
    for (const n of dropped) { details.push(`disconnect from ${n}`); actions.push({ do: 'disconnect', sandbox: sbx.name, network: n }); }
    for (const n of added) { const a = sbx.networks.find((x) => x.network === n)!; details.push(`connect to ${attachText(a)}`); actions.push({ do: 'connect', sandbox: sbx.name, attach: a }); }
    const labels = Object.fromEntries(store.labels(sbx.name).map((l) => [l.key, l.value]));
    const set = Object.entries(sbx.labels).filter(([k, v]) => labels[k] !== v).map(([key, value]) => ({ key, value }));
    const remove = Object.keys(labels).filter((k) => !(k in sbx.labels));
    if (set.length || remove.length) {
      details.push(`labels ${labelText(labels)} -> ${labelText(sbx.labels)}`);
      actions.push({ do: 'labels', sandbox: sbx.name, set, remove });
    }
    const havePorts = store.ports({ sandbox: sbx.name });
    const wantSpecs = sbx.ports.map(formatPortSpec);
    const haveSpecs = havePorts.map(formatPortSpec);
    const addP = sbx.ports.filter((m) => !haveSpecs.includes(formatPortSpec(m)));
    const rmP = havePorts.filter((m) => !wantSpecs.includes(formatPortSpec(m)));
    if (addP.length || rmP.length) {
      details.push(`ports ${haveSpecs.join(', ') || 'none'} -> ${wantSpecs.join(', ') || 'none'}`);
      actions.push({ do: 'ports', sandbox: sbx.name, add: addP, remove: rmP });
    }
    const egressNow = store.sandboxEgress(sbx.name).map((e) => ({ family: e.family, ip: e.ip }));
    if (!sameEgress(egressNow, sbx.egress)) {
      details.push(`egress ${egressText(egressNow)} -> ${egressText(sbx.egress)} (new connections)`);
      actions.push({ do: 'egress', scope: 'sandbox', name: sbx.name, egress: sbx.egress, was: egressNow });
    }
    // default_route left out keeps whatever carries it now (ctnet's rule, or a choice made by hand).
    const routeNow = store.defaultRoute(sbx.name);
    if (sbx.defaultRoute !== undefined && routeNow !== sbx.defaultRoute) {
      details.push(`default route via ${routeNow ?? 'the first network with a way out'} -> ${sbx.defaultRoute}`);
      actions.push({ do: 'route', sandbox: sbx.name, network: sbx.defaultRoute });
    }
    // One shape for every interface: compared with the first one's (ctnet shape changes them all alike).
    const shapeNow = atts.length ? store.shaping(sbx.name, atts[0]!.network) : undefined;
    if (shapeText(shapeNow) !== shapeText(sbx.shape)) {
      details.push(`shaping ${shapeText(shapeNow)} -> ${shapeText(sbx.shape)}`);
      actions.push({ do: 'shape', sandbox: sbx.name, shape: sbx.shape, was: shapeNow });
    }
    const cmd = store.command(sbx.name);
    if (!sameList(cmd?.argv ?? [], sbx.command ?? [])) {
      details.push(sbx.command ? `command ${cmd ? `${cmd.argv.join(' ')} -> ` : ''}${sbx.command.join(' ')} (restarts it)` : `command ${cmd!.argv.join(' ')} stops`);
      actions.push({ do: 'command', sandbox: sbx.name, argv: sbx.command });
    } else if (sbx.command && !commandRunning(ctx, sbx.name) && !details.length) {
      changes.push({ op: 'repair', kind: 'sandbox', name: sbx.name, details: [`command ${sbx.command.join(' ')} is not running${cmd?.process ? ` (pid ${cmd.process.split(':')[0]} exited)` : ''}`] });
      actions.push({ do: 'command', sandbox: sbx.name, argv: sbx.command });
    } else if (sbx.command && !commandRunning(ctx, sbx.name)) {
      details.push(`command ${sbx.command.join(' ')} is not running: start it`);
      actions.push({ do: 'command', sandbox: sbx.name, argv: sbx.command });
    }
    if (details.length) changes.push({ op: 'change', kind: 'sandbox', name: sbx.name, details });
  }

  // ---- policy: by name ----
  const rules = store.policies();
  const rmRules: PolicyRow[] = [];
  const addRules: TopoPolicy[] = [];
  for (const p of topo.policy) {
    const row = rules.find((r) => r.name === p.name);
    if (!row) {
      changes.push({ op: 'create', kind: 'policy', name: p.name, details: [policyText(p)] });
      addRules.push(p);
      continue;
    }
    claim('policy', p.name, p.at);
    if (row.action !== p.action || row.from !== p.from || row.to !== p.to || (row.port ?? null) !== p.port) {
      changes.push({ op: 'change', kind: 'policy', name: p.name, details: [`${policyText(row)} -> ${policyText(p)}`] });
      rmRules.push(row);
      addRules.push(p);
    }
  }

  // ---- what the topology owns and the file no longer has ----
  for (const o of gone) {
    if (!options.prune) { kept.push({ kind: o.kind, name: o.name }); continue; }
    changes.push({ op: 'remove', kind: o.kind, name: o.name, details: ['not in the file'] });
    if (o.kind === 'policy') rmRules.push(rules.find((r) => r.name === o.name)!);
    else actions.push({ do: `${o.kind}.remove`, name: o.name });
  }
  for (const n of removedNets) {
    const foreign = store.attachments({ network: n }).map((a) => a.sandbox).filter((x) => !owns('sandbox', x));
    if (foreign.length) {
      throw new CtnetError('CONFLICT', `network ${n} is to be removed (--prune), but sandboxes this file does not own are on it: ${foreign.join(', ')}`,
        'disconnect them first, or keep the network in the file');
    }
  }
  if (rmRules.length || addRules.length) actions.push({ do: 'policy', remove: rmRules, add: addRules });

  // ---- services: by name; any difference replaces one (a VIP left out keeps the one it has) ----
  for (const v of topo.services) {
    const row = store.service(v.name);
    if (!row) {
      changes.push({ op: 'create', kind: 'service', name: v.name, details: serviceText(v) });
      actions.push({ do: 'service.create', svc: v });
      continue;
    }
    claim('service', v.name, v.at);
    const why: string[] = [];
    if (row.network !== v.network) why.push(`network ${row.network} -> ${v.network}`);
    else if (replacedNets.has(v.network)) why.push(`its network ${v.network} is replaced`);
    if (`${row.port}/${row.proto}` !== v.port) why.push(`port ${row.port}/${row.proto} -> ${v.port}`);
    const to = formatTarget(row.selector, row.targetPort);
    if (to !== v.to) why.push(`to ${to} -> ${v.to}`);
    if (v.vip !== undefined && row.vip !== v.vip) why.push(`vip ${row.vip} -> ${v.vip}`);
    if (row.affinity !== v.affinity) why.push(`affinity ${row.affinity} -> ${v.affinity}`);
    const pubText = (x: typeof v.publish) => (x ? formatPublish(x) : 'none');
    if (pubText(row.publish) !== pubText(v.publish)) why.push(`publish ${pubText(row.publish)} -> ${pubText(v.publish)}`);
    const checkText = (x: typeof v.check) => (x ? formatCheck(x) : 'none');
    if (checkText(row.check) !== checkText(v.check)) why.push(`check ${checkText(row.check)} -> ${checkText(v.check)}`);
    if (!why.length) continue;
    changes.push({ op: 'replace', kind: 'service', name: v.name, details: why });
    actions.push({ do: 'service.remove', name: v.name }, { do: 'service.create', svc: v.vip !== undefined || row.network !== v.network ? v : { ...v, vip: row.vip } });
  }
  // A network this apply replaces or removes must carry no service it does not own.
  for (const n of [...replacedNets, ...removedNets]) {
    // The file's own services are replaced with it (above), those it dropped go with --prune; any other blocks it.
    const blocking = store.services({ network: n }).map((x) => x.name).filter((x) => !(owns('service', x) && (fileSvc.has(x) || options.prune)));
    if (blocking.length) {
      throw new CtnetError('CONFLICT', `network ${n} is to be ${replacedNets.has(n) ? 'replaced' : 'removed (--prune)'}, but services this apply does not remove are on it: ${blocking.join(', ')}`,
        `remove them first (ctnet service rm ${blocking.join(' ')}), apply with --prune, or leave the network as it is`);
    }
  }

  // ---- ctnet's tables (everything the file owns relies on them) ----
  {
    const drift = await tablesP;
    if (drift.length) {
      changes.unshift({ op: 'repair', kind: 'tables', name: 'inet ctnet', details: drift });
      actions.unshift({ do: 'repair.tables' });
    }
  }
  return { topology: topo.name, file: topo.file, changes, actions, kept };
}

function driftText(bridge: string, d: { kind: string } & Record<string, unknown>): string {
  switch (d.kind) {
    case 'device-missing': return `bridge ${bridge} is missing`;
    case 'port-missing': return `sandbox ${String(d.sandbox)}'s interface ${String(d.hostVeth)} is missing`;
    case 'port-detached': return `sandbox ${String(d.sandbox)}'s interface ${String(d.hostVeth)} is not on bridge ${bridge}`;
    case 'setting': return `${String(d.key)} is ${String(d.have)}, should be ${String(d.want)}`;
    default: return d.kind;
  }
}

/** The plan as a person reads it (diff, apply). Ends with the summary line. */
export function renderPlan(p: Plan): string {
  const lines: string[] = [];
  if (p.changes.length === 0) {
    lines.push(`No changes: the store and the kernel hold what ${p.file} (${p.topology}) says.`);
  } else {
    lines.push(`Plan for ${p.topology} (${p.file}):`);
    for (const c of p.changes) {
      lines.push(`  ${SYMBOL[c.op].padEnd(3)} ${c.kind} ${c.name}${c.details.length ? `: ${c.details.join('; ')}` : ''}`);
    }
  }
  if (p.kept.length) lines.push(`Not in the file, kept (apply --prune removes them): ${p.kept.map((k) => `${k.kind} ${k.name}`).join(', ')}`);
  const s = summary(p);
  if (p.changes.length) lines.push(`Plan: ${s.create} to add, ${s.change} to change, ${s.replace} to replace, ${s.remove} to remove${s.repair ? `, ${s.repair} to repair` : ''}.`);
  return lines.join('\n');
}

export function planJson(p: Plan): object {
  const s = summary(p);
  return { topology: p.topology, file: p.file, changes: p.changes, kept: p.kept, summary: { add: s.create, change: s.change, replace: s.replace, remove: s.remove, repair: s.repair } };
}
