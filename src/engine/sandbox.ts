// Use cases for sandboxes: create (a netns of ctnet's own), connect (to more networks, or a netns
// someone else made), disconnect, remove.
import { CtnetError } from '../errors.ts';
import type { AttachSpec, IpRequest } from '../model/spec.ts';
import { formatPortSpec } from '../model/ports.ts';
import type { PortFacts } from '../nft/ruleset.ts';
import type { Op } from '../plan/ops.ts';
import { fuseRemovals, step, type Step } from '../plan/plan.ts';
import type { AttachmentRow, SandboxRow, Store } from '../store/store.ts';
import { checkHostAddresses, type EgressAddress } from './egress.ts';
import type { Ctx } from './context.ts';
import { attachSteps, egressLines, kernelDefaults, recordAttachments } from './attach.ts';
import { ensureOverlaySides } from './overlay-network.ts';
import { netnsName } from './naming.ts';
import { portFacts, portLines, portMoveLines, portsMoved, publishSteps, readHost, recordPorts, unpublishSteps, type PublishRequest } from './ports.ts';
import { currentDefault, defaultCarrier, driverNetwork, driverOf, existingNetwork, readySandbox, sandboxNetns } from './records.ts';
import { sandboxPolicyFacts, syncSandboxPolicy } from './policy.ts';
import { syncServices } from './services.ts';
import { recordShape, shapeSteps } from './shape.ts';
import type { Shape } from '../model/shape.ts';

const NO_PORTS: PublishRequest = { mappings: [], force: false };

export async function createSandbox(ctx: Ctx, name: string, spec: AttachSpec, publish: PublishRequest = NO_PORTS,
  labels: readonly { key: string; value: string }[] = [], egress: readonly EgressAddress[] = [], shape?: Shape): Promise<SandboxRow> {
  const { store, kernel, applier } = ctx;
  await ensureOverlaySides(ctx, spec.networks);
  await checkHostAddresses(ctx, '--egress-ip', egress);
  const host = await readHost(ctx, publish);
  const nsName = netnsName(store.instance, name);
  const ns = { name: nsName };
  const row = { name, netns: `/run/netns/${nsName}`, owned: true, state: 'creating' as const };
  await applier.transaction(async (tx) => {
    const p = tx.decide((rec) => {
      if (store.sandbox(name)) throw new CtnetError('CONFLICT', `sandbox ${name} exists already`, `choose another name, or remove it with "ctnet rm ${name}"`);
      if (kernel.isNetns(row.netns)) {
        throw new CtnetError('CONFLICT', `netns ${nsName} exists already but ctnet has no record of it`, 'run "ctnet gc" to remove what an interrupted ctnet left behind');
      }
      rec.record({ kind: 'sandbox.insert', row }, ...labels.map((l) => ({ kind: 'label.set' as const, sandbox: name, key: l.key, value: l.value })));
      checkSandboxEgress(store, spec.networks, egress);
      if (spec.defaultRoute) {
        checkRouteNetwork(store, spec.defaultRoute);
        rec.record({ kind: 'default-route.set', sandbox: name, network: spec.defaultRoute });
      }
      rec.record(...egress.map((e) => ({ kind: 'egress.set' as const, scope: 'sandbox' as const, name, family: e.family, ip: e.ip })));
      const attachments = recordAttachments(rec, name, spec.networks, spec, []);
      // Every interface it gets is shaped alike (ctnet shape --network changes one).
      if (shape) for (const a of attachments) recordShape(rec, name, a.row.network, shape);
      recordPorts(rec, name, publish, host);
      return { attachments, ports: portFacts(store, name) };
    });
    await tx.run([
      ...withNetns(name, nsName, p.attachments.flatMap((a) => attachSteps(store, ns, a))),
      ...(shape ? p.attachments.flatMap((a) => shapeSteps(store, a.row, shape, undefined)) : []),
      ...publishSteps(p.ports),
      ...resolvSteps(store, nsName, spec.networks),
    ]);
    await syncSandboxPolicy(ctx, name, { tx });
    tx.commit(...p.attachments.map((a) => ({ kind: 'attachment.state' as const, sandbox: name, network: a.row.network, state: 'ready' as const })),
      { kind: 'sandbox.state', name, state: 'ready' });
  });
  return { ...row, state: 'ready', owner: null, created: new Date().toISOString() };
}

/**
 * A new sandbox's namespace and its loopback, joined to the attach steps to save two tool runs
 * (each spawn costs more than the work): `ip netns add` goes first in the lane that makes the first
 * veth in the host (one `ip -batch`), `lo up` first in the first step that runs only in the new
 * namespace (one `ip -n NS -batch` with eth0's address and route). Without such steps (no
 * networks, another driver's plan), each is a step of its own. Pure.
 */
export function withNetns(sandbox: string, nsName: string, attach: readonly Step[]): Step[] {
  const add: Op = { kind: 'netns.add', name: nsName };
  const lo: Op = { kind: 'link.set.up', name: 'lo', netns: { name: nsName } };
  const note = `sandbox ${sandbox}: network namespace ${nsName}`;
  const steps = [...attach];
  const hostLane = steps[0]?.lanes.findIndex((l) => l[0]?.kind === 'link.add.veth' && l[0].netns === undefined) ?? -1;
  const inNs = (o: Op) => 'netns' in o && typeof o.netns === 'object' && o.netns !== null && 'name' in o.netns && o.netns.name === nsName;
  const nsStep = steps.findIndex((s, i) => i > 0 && s.lanes.length === 1 && s.lanes[0]!.every(inNs));
  if (hostLane < 0 || nsStep < 0) return [step([add], note), step([lo]), ...steps];
  const first = steps[0]!;
  // Both notes stay: --explain prints them as two comment lines.
  steps[0] = { note: first.note ? `${note}\n# ${first.note}` : note, lanes: first.lanes.map((l, i) => (i === hostLane ? [add, ...l] : l)) };
  steps[nsStep] = { ...steps[nsStep]!, lanes: [[lo, ...steps[nsStep]!.lanes[0]!]] };
  return steps;
}

/** A sandbox's egress address needs a network of its family that has a way out. */
function checkSandboxEgress(store: Store, networks: readonly string[], egress: readonly EgressAddress[]): void {
  for (const e of egress) {
    const out = networks.filter((n) => store.network(n)?.internal === false && store.subnets(n).some((s) => s.family === e.family));
    if (out.length === 0) {
      throw new CtnetError('INVALID_ARGUMENT', `--egress-ip ${e.ip}: none of ${networks.join(', ')} has IPv${e.family} egress (an IPv${e.family} subnet, not --internal)`, 'leave --egress-ip out, or add such a --network');
    }
  }
}

/** A default route through an --internal network leads nowhere. */
export function checkRouteNetwork(store: Store, network: string): void {
  if (store.network(network)?.internal) {
    throw new CtnetError('INVALID_ARGUMENT', `network ${network} is --internal: a default route through it leads nowhere`, 'choose a network with a way out');
  }
}

/** Connects an existing sandbox to one more network (defaultRoute: it takes the default routes over). */
export async function connect(ctx: Ctx, network: string, sandbox: string, ips: readonly IpRequest[], defaultRoute = false, aliases: readonly string[] = []): Promise<void> {
  const s = readySandbox(ctx.store, sandbox);
  await ensureOverlaySides(ctx, [network]);
  await attachOne(ctx, s, network, ips, aliases, false, false, defaultRoute);
}

/**
 * Connects a network namespace made by someone else (a container's), recorded as sandbox NAME.
 * ctnet never deletes that namespace; removing the sandbox only removes what ctnet added.
 */
export async function connectExternal(ctx: Ctx, network: string, netnsPath: string, name: string, ips: readonly IpRequest[], aliases: readonly string[] = []): Promise<void> {
  const { store, kernel } = ctx;
  if (!kernel.isNetns(netnsPath)) {
    throw new CtnetError('INVALID_ARGUMENT', `${netnsPath} is not a network namespace`, 'give a netns file such as /run/netns/NAME or /proc/PID/ns/net');
  }
  const existing = store.sandbox(name);
  if (existing && (existing.owned || existing.netns !== netnsPath)) {
    throw new CtnetError('CONFLICT', `sandbox ${name} exists already with another namespace`, 'choose another --name');
  }
  const s = existing ?? { name, netns: netnsPath, owned: false, state: 'ready' as const, owner: null, created: '' };
  await ensureOverlaySides(ctx, [network]);
  await attachOne(ctx, s, network, ips, aliases, true, !existing);
}

async function attachOne(ctx: Ctx, s: SandboxRow, network: string, ips: readonly IpRequest[], aliases: readonly string[], readNames: boolean, isNew = false, defaultRoute = false): Promise<void> {
  const { store, kernel, applier } = ctx;
  const ns = sandboxNetns(s);
  // In someone else's namespace any interface may exist; in ours, the store knows them all.
  const used = readNames ? (await kernel.links(ns)).map((l) => l.ifname) : [];
  const foreign = readNames ? kernelDefaults(await kernel.routes(ns)) : undefined;
  const before = portFacts(store, s.name);
  await applier.transaction(async (tx) => {
    const { planned, after } = tx.decide((rec) => {
      if (isNew) rec.record({ kind: 'sandbox.insert', row: { name: s.name, netns: s.netns, owned: false, state: 'ready' } });
      if (defaultRoute) {
        checkRouteNetwork(store, network);
        rec.record({ kind: 'default-route.set', sandbox: s.name, network });
      }
      used.push(...store.attachments({ sandbox: s.name }).map((a) => a.ifname));
      const [a] = recordAttachments(rec, s.name, [network], { ips, mac: undefined, aliases }, used, undefined, foreign);
      return { planned: a!, after: portFacts(store, s.name) };
    });
    // This network may be the first with a way out: the published ports move to it, in the
    // attachment's own nft transaction (undone with it).
    const moved = portsMoved(before, after);
    await tx.run([
      ...attachSteps(store, ns, planned, moved ? portMoveLines(before, after) : undefined),
      ...(moved ? movedFlowSteps(before, after) : []),
    ]);
    await syncSandboxPolicy(ctx, s.name, { tx });
    tx.commit({ kind: 'attachment.state', sandbox: s.name, network, state: 'ready' });
  });
}

/** After mappings moved: flows still DNATed to the old targets end, and flows that predate the new ones. */
export function movedFlowSteps(before: readonly PortFacts[], after: readonly PortFacts[]): Step[] {
  return [step([
    { kind: 'conntrack.forget', filter: { kind: 'unpublished', ports: before } },
    ...(after.length ? [{ kind: 'conntrack.forget', filter: { kind: 'stale', ports: after } } as const] : []),
  ])];
}

/** The teardown plan of one attachment: its link, its nft elements (and extraDel), its flows. */
function detachSteps(ctx: Ctx, a: AttachmentRow, extraDel: readonly string[] = []): Step[] {
  const { store } = ctx;
  const n = store.network(a.network);
  const addresses = store.addresses({ sandbox: a.sandbox }).filter((x) => x.network === a.network);
  if (!n) return [step([{ kind: 'link.del', name: a.hostVeth }], `${a.sandbox}: remove ${a.ifname}`)];
  // Shaping first: its ifb outlives the veth otherwise (the qdiscs would go with the veth).
  const egress = egressLines(store, a.sandbox, n, addresses).del;
  const shaped = store.shaping(a.sandbox, a.network);
  return [...(shaped ? shapeSteps(store, a, undefined, shaped) : []), ...driverOf(n).planDetach(driverNetwork(store, n), { sandbox: a.sandbox, ifname: a.ifname, hostVeth: a.hostVeth, mac: a.mac, addresses, netns: sandboxNetnsOf(store, a.sandbox) }, [...extraDel, ...egress])];
}

/** The namespace of a recorded sandbox (undefined when it has no record left). */
function sandboxNetnsOf(store: Ctx['store'], name: string) {
  const s = store.sandbox(name);
  return s ? sandboxNetns(s) : undefined;
}

/** Removes one attachment's kernel objects; idempotent. */
export async function teardownAttachment(ctx: Ctx, a: AttachmentRow): Promise<void> {
  await ctx.applier.teardown(detachSteps(ctx, a));
}

export async function disconnect(ctx: Ctx, network: string, sandbox: string): Promise<void> {
  const { store, applier } = ctx;
  const s = store.sandbox(sandbox);
  if (!s) throw new CtnetError('NOT_FOUND', `no sandbox named ${sandbox}`, 'list sandboxes with "ctnet ls"');
  existingNetwork(store, network);
  const a = store.attachments({ sandbox }).find((x) => x.network === network);
  if (!a) return; // not connected: nothing to undo
  applier.record({ kind: 'attachment.state', sandbox, network, state: 'removing' });
  const was = sandboxPolicyFacts(store, sandbox); // its addresses on this network go, and its labels with a sandbox ctnet did not make
  await syncServices(ctx); // it leaves the network's services before its interface goes
  const addresses = store.addresses({ sandbox }).filter((x) => x.network === network);
  const before = portFacts(store, sandbox);
  const wasTarget = before.length > 0 && before[0]!.targets.some((t) => addresses.some((x) => x.ip === t.ip));
  const carried = ([4, 6] as const).filter((f) => defaultCarrier(store, sandbox, f) === network);
  // The ports' map elements go in the same nft transaction as the endpoint's.
  await applier.teardown([
    ...(wasTarget ? [step([], `unpublish ${before.map((f) => formatPortSpec(f.mapping)).join(', ')}`)] : []),
    ...detachSteps(ctx, a, wasTarget ? portLines('delete', before) : []),
    ...(wasTarget ? [step([{ kind: 'conntrack.forget', filter: { kind: 'unpublished', ports: before } }] as Op[])] : []),
  ]);
  if (applier.dryRun) return;
  // A namespace someone else made is only a sandbox while ctnet networks it.
  const last = !s.owned && store.attachments({ sandbox }).length === 1;
  applier.record({ kind: 'attachment.delete', sandbox, network }, ...(last ? [{ kind: 'sandbox.delete' as const, name: sandbox }] : []),
    ...(!last && store.defaultRoute(sandbox) === network ? [{ kind: 'default-route.set' as const, sandbox, network: null }] : []));
  if (!last) {
    await handOverDefault(ctx, s, carried);
    if (wasTarget) await applier.apply(publishSteps(portFacts(store, sandbox)));
  }
  await syncSandboxPolicy(ctx, sandbox, { was });
}

/** The default routes the removed attachment carried move to the sandbox's next carrier, if any. */
async function handOverDefault(ctx: Ctx, s: SandboxRow, families: readonly (4 | 6)[]): Promise<void> {
  if (families.length === 0 || !ctx.kernel.isNetns(s.netns)) return;
  const ns = sandboxNetns(s);
  const ops = families.flatMap((f): Op[] => {
    const next = currentDefault(ctx.store, s.name, f);
    return next ? [{ kind: 'route.replace.default', via: next.via, dev: next.dev, netns: ns }] : [];
  });
  if (ops.length > 0) await ctx.applier.apply([step(ops, `${s.name}: the default route moves to the next network`)]);
}

/** Removes a sandbox: its processes, interfaces, nft elements, netns (if ctnet's) and addresses. */
export async function removeSandbox(ctx: Ctx, name: string): Promise<boolean> {
  const { store, applier } = ctx;
  const s = store.sandbox(name);
  if (!s) return false;
  applier.record({ kind: 'sandbox.state', name, state: 'removing' },
    ...store.attachments({ sandbox: name }).map((a) => ({ kind: 'attachment.state' as const, sandbox: name, network: a.network, state: 'removing' as const })));
  // It leaves its services first: new connections go elsewhere while it still answers its own.
  await syncServices(ctx);
  const was = sandboxPolicyFacts(store, name); // gone with its records
  await teardownSandbox(ctx, s);
  applier.record({ kind: 'sandbox.delete', name });
  // Its addresses leave the policy sets before IPAM can hand them to another sandbox.
  await syncSandboxPolicy(ctx, name, { was });
  return true;
}

/** Kernel side of removing a sandbox; idempotent. Order: processes, published ports, interfaces, netns. */
export async function teardownSandbox(ctx: Ctx, s: SandboxRow): Promise<void> {
  const { store, kernel, applier } = ctx;
  const ns = sandboxNetns(s);
  const ours = s.owned && 'name' in ns;
  await applier.teardown([
    ...(ours && kernel.netnsPids(ns).length > 0 ? [step([{ kind: 'netns.kill', netns: ns }], `sandbox ${s.name}: stop its processes`)] : []),
    ...fuseRemovals([...unpublishSteps(portFacts(store, s.name)), ...store.attachments({ sandbox: s.name }).flatMap((a) => detachSteps(ctx, a))]),
    ...(ours ? [step([{ kind: 'netns.del', name: ns.name }], `sandbox ${s.name}: remove its network namespace`)] : []),
    ...(ours ? [step([{ kind: 'resolv.remove', netns: ns.name }], `sandbox ${s.name}: remove its resolv.conf`)] : []),
  ]);
}

/**
 * `ctnet route NAME --via NET`: NET carries the sandbox's default routes from now on, for each
 * family it has an address of (the others stay where they are); live, one replace per family.
 */
export async function moveDefaultRoute(ctx: Ctx, sandbox: string, network: string): Promise<void> {
  const { store, applier } = ctx;
  const s = readySandbox(store, sandbox);
  existingNetwork(store, network);
  const a = store.attachments({ sandbox }).find((x) => x.network === network);
  if (!a) throw new CtnetError('INVALID_ARGUMENT', `sandbox ${sandbox} is not on network ${network}`, `connect it first: ctnet connect ${network} ${sandbox} --default-route`);
  checkRouteNetwork(store, network);
  const ns = sandboxNetns(s);
  await applier.transaction(async (tx) => {
    const ops = tx.decide((rec) => {
      const before = new Map(([4, 6] as const).map((f) => [f, currentDefault(store, sandbox, f)]));
      rec.record({ kind: 'default-route.set', sandbox, network });
      return ([4, 6] as const).flatMap((f): Op[] => {
        const now = currentDefault(store, sandbox, f);
        const was = before.get(f);
        return now && (now.via !== was?.via || now.dev !== was?.dev) ? [{ kind: 'route.replace.default', via: now.via, dev: now.dev, netns: ns, previous: was }] : [];
      });
    });
    await tx.run([step(ops, `${sandbox}: default route${ops.length > 1 ? 's' : ''} via network ${network}`)]);
    tx.commit();
  });
}

/**
 * The sandbox's resolv.conf (/etc/netns/NETNS/, bound over /etc/resolv.conf by ctnet exec/run):
 * ctnetd on the gateways of its networks with DNS, in the order joined (IPv4 first: every
 * resolver speaks it), and those networks as search domains, so NAME resolves as NAME.NETWORK.
 * None when no network has DNS: the host's resolv.conf stays, as before.
 */
function resolvSteps(store: Store, nsName: string, networks: readonly string[]): Step[] {
  const withDns = networks.filter((n) => store.network(n)?.dns);
  if (withDns.length === 0) return [];
  const gateways = withDns.flatMap((n) => store.subnets(n)).sort((a, b) => a.family - b.family).map((s) => s.gateway);
  return [step([{ kind: 'resolv.write', netns: nsName, nameservers: gateways, search: withDns }], `${nsName}: its resolv.conf names ctnetd on ${withDns.join(', ')}`)];
}
