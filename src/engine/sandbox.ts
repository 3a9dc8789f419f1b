// Use cases for sandboxes: create (a netns of ctnet's own), connect (to more networks, or a netns
// someone else made), disconnect, remove.
import { CtnetError } from '../errors.ts';
import {
  addrAdd, linkAddVeth, linkDel, linkList, linkSetHairpin, linkSetMaster, linkSetUp, netnsAdd, netnsDel,
  netnsOf, routeSetDefault, runIp, type IpCommand, type Netns,
} from '../kernel/ip.ts';
import { nftApply } from '../kernel/nft.ts';
import { isNetnsFile, netnsKillAll, netnsPids } from '../kernel/netns.ts';
import { contains, formatAddr, hostRange, parseAddr, parseSubnet } from '../model/cidr.ts';
import { nextFree } from '../model/ipam.ts';
import { randomMac } from '../model/mac.ts';
import type { AttachSpec, IpRequest } from '../model/spec.ts';
import { endpointElements } from '../nft/ruleset.ts';
import type { AddressRow, AttachmentRow, NetworkRow, SandboxRow, Store } from '../store/store.ts';
import type { Ctx } from './context.ts';
import { netnsName, nextIfname, vethName } from './naming.ts';
import { applyNftDelete } from './nftops.ts';
import { crashPoint, ignoreMissing, transaction, type UndoStack } from './undo.ts';
import { applyPorts, forgetAddresses, forgetUnpublished, portFacts, portLines, readHost, recordPorts, unapplyPorts, type PublishRequest } from './ports.ts';
import { formatPortSpec } from '../model/ports.ts';
import type { PortFacts } from '../nft/ruleset.ts';
import { syncPolicy } from './policy.ts';

const NO_PORTS: PublishRequest = { mappings: [], force: false };

export function sandboxNetns(s: Pick<SandboxRow, 'netns'>): Netns {
  return netnsOf(s.netns);
}

export function getSandbox(ctx: Ctx, name: string): SandboxRow {
  const s = ctx.store.sandbox(name);
  if (!s) throw new CtnetError('NOT_FOUND', `no sandbox named ${name}`, 'list sandboxes with "ctnet ls"');
  if (s.state !== 'ready') {
    throw new CtnetError('STATE', `sandbox ${name} is ${s.state}`, 'wait for the operation on it to finish, or run "ctnet gc" if it was interrupted');
  }
  return s;
}

export function readyNetwork(store: Store, name: string): NetworkRow {
  const n = store.network(name);
  if (!n) throw new CtnetError('NOT_FOUND', `no network named ${name}`, `create it with "ctnet network create ${name} --subnet CIDR"`);
  if (n.state !== 'ready') throw new CtnetError('STATE', `network ${name} is ${n.state}`, 'run "ctnet gc" if an operation on it was interrupted');
  return n;
}

/** Picks (or checks the requested) addresses of one attachment; call inside store.write. */
function allocate(store: Store, network: string, sandbox: string, requested: readonly IpRequest[]): AddressRow[] {
  const rows: AddressRow[] = [];
  for (const sub of store.subnets(network)) {
    const subnet = parseSubnet('subnet', sub.cidr);
    const gateway = parseAddr('gateway', sub.gateway).n;
    const want = requested.find((r) => contains(subnet, r.family, r.n));
    let ip: string;
    if (want) {
      const { first, last } = hostRange(subnet);
      if (want.n < first || want.n > last) throw new CtnetError('INVALID_ARGUMENT', `--ip ${want.text} is the network or broadcast address of ${sub.cidr}`, 'choose a host address');
      if (want.n === gateway) throw new CtnetError('CONFLICT', `--ip ${want.text} is the gateway of network ${network}`, 'choose another address');
      const holder = store.addressHolder(want.text);
      if (holder) throw new CtnetError('CONFLICT', `--ip ${want.text} is taken by sandbox ${holder}`, 'choose another address, or leave --ip out to get a free one');
      ip = want.text;
    } else {
      const cursor = sub.cursor === null ? undefined : parseAddr('cursor', sub.cursor).n;
      const n = nextFree(subnet, cursor, (x) => x === gateway || store.addressHolder(formatAddr(subnet.family, x)) !== undefined);
      ip = formatAddr(subnet.family, n);
      store.setCursor(network, sub.cidr, ip);
    }
    const row = { ip, family: sub.family, cidr: sub.cidr, network, sandbox };
    store.insertAddress(row);
    rows.push(row);
  }
  return rows;
}

function checkRequestedIps(store: Store, networks: readonly string[], ips: readonly IpRequest[]): void {
  const subnets = networks.flatMap((n) => store.subnets(n));
  for (const r of ips) {
    if (!subnets.some((s) => contains(parseSubnet('subnet', s.cidr), r.family, r.n))) {
      throw new CtnetError('INVALID_ARGUMENT', `--ip ${r.text} is outside the subnets of ${networks.join(', ')} (${subnets.map((s) => s.cidr).join(', ')})`,
        'choose an address inside one of them');
    }
  }
}

/**
 * True when this attachment should carry the sandbox's default route for a family: the first
 * network with a way out has it; with none, the first --internal one (its egress is dropped by
 * nft, but policy may allow traffic to other networks, and replies need a route back).
 */
export function carriesDefault(store: Store, sandbox: string, network: NetworkRow, family: 4 | 6, earlier: readonly string[]): boolean {
  const others = [...store.attachments({ sandbox }).map((a) => a.network), ...earlier].filter((n) => n !== network.name);
  const has = (o: string, internal: boolean | undefined) => {
    const n = store.network(o);
    return n !== undefined && (internal === undefined || n.internal === internal) && store.subnets(o).some((s) => s.family === family);
  };
  if (!network.internal) return !others.some((o) => has(o, false));
  return !others.some((o) => has(o, undefined));
}

/** The network that carries a sandbox's default route (as carriesDefault chose it, in ifname order). */
export function defaultCarrier(store: Store, sandbox: string, family: 4 | 6): string | undefined {
  const withFamily = store.attachments({ sandbox }).filter((a) => store.subnets(a.network).some((s) => s.family === family));
  return (withFamily.find((a) => store.network(a.network)?.internal === false) ?? withFamily[0])?.network;
}

export interface AttachPlan {
  readonly attachment: Omit<AttachmentRow, 'owner'>;
  readonly network: NetworkRow;
  readonly addresses: readonly AddressRow[];
  readonly defaults: readonly (4 | 6)[];
}

/** The kernel commands of one attachment, host side then sandbox side. */
export function attachCommands(ctx: Ctx, ns: Netns, p: AttachPlan): { host: IpCommand[]; inside: IpCommand[] } {
  const { attachment: a, network } = p;
  const subnets = ctx.store.subnets(network.name);
  const prefixOf = (cidr: string) => cidr.split('/')[1];
  return {
    host: [
      linkAddVeth({ name: a.hostVeth, peer: a.ifname, peerNetns: ns, peerAddress: a.mac, mtu: network.mtu ?? undefined }),
      linkSetMaster(a.hostVeth, network.bridge),
      linkSetHairpin(a.hostVeth),
      linkSetUp(a.hostVeth),
    ],
    inside: [
      ...p.addresses.map((x) => addrAdd(`${x.ip}/${prefixOf(x.cidr)}`, a.ifname, ns)),
      linkSetUp(a.ifname, ns),
      ...p.defaults.map((f) => routeSetDefault(subnets.find((s) => s.family === f)!.gateway, a.ifname, ns)),
    ],
  };
}

/** extra: more nft element lines (published ports) to add in the same nft transaction. */
export async function applyAttach(ctx: Ctx, ns: Netns, p: AttachPlan, undo: UndoStack,
  extra: { add: readonly string[]; del: readonly string[] } = { add: [], del: [] }): Promise<void> {
  const { runner } = ctx;
  const { host, inside } = attachCommands(ctx, ns, p);
  runner.note(`${p.attachment.sandbox}: ${p.attachment.ifname} on network ${p.network.name} (${p.addresses.map((a) => a.ip).join(', ')}), host side ${p.attachment.hostVeth}`);
  const facts = { bridge: p.network.bridge, addresses: p.addresses };
  const script = [...endpointElements('add', facts), ...extra.add].join('\n') + '\n';
  // Deleting the host end removes both ends of the pair.
  undo.push(`veth ${p.attachment.hostVeth}`, () => ignoreMissing(() => runIp(runner, [linkDel(p.attachment.hostVeth)])));
  undo.push(`nft elements of ${p.attachment.sandbox}`, () => applyNftDelete(runner, [...endpointElements('delete', facts), ...extra.del]));
  // The nft elements name the bridge and addresses, not the veth: they go in side by side with the
  // host's half of the link (both undone, whichever failed). --explain prints them in call order.
  await settleAll([runIp(runner, host), nftApply(runner, script)]);
  crashPoint();
  await runIp(runner, inside);
  crashPoint();
}

/** Like Promise.all, but waits for every promise before throwing the first failure (nothing runs on after a rollback). */
async function settleAll(ps: readonly Promise<unknown>[]): Promise<void> {
  const results = await Promise.allSettled(ps);
  const failed = results.find((r) => r.status === 'rejected');
  if (failed) throw (failed as PromiseRejectedResult).reason;
}

/**
 * Plans attachments inside a store transaction: interface names, MACs, addresses, default routes.
 * ifname fixes the (single) attachment's interface name, as a CNI runtime does.
 */
export function planAttachments(store: Store, sandbox: string, networks: readonly string[], spec: Pick<AttachSpec, 'ips' | 'mac'>,
  usedIfnames: string[], ifname?: string): AttachPlan[] {
  checkRequestedIps(store, networks, spec.ips);
  const plans: AttachPlan[] = [];
  for (const [i, name] of networks.entries()) {
    const network = readyNetwork(store, name);
    if (store.attachments({ sandbox }).some((a) => a.network === name)) {
      throw new CtnetError('CONFLICT', `sandbox ${sandbox} is already connected to network ${name}`);
    }
    if (ifname !== undefined && usedIfnames.includes(ifname)) {
      throw new CtnetError('CONFLICT', `sandbox ${sandbox} has an interface ${ifname} already`, 'choose another interface name');
    }
    const chosen = ifname ?? nextIfname(usedIfnames);
    usedIfnames.push(chosen);
    let hostVeth = vethName();
    while (store.hostVethTaken(hostVeth)) hostVeth = vethName();
    const attachment = {
      sandbox, network: name, ifname: chosen, hostVeth,
      mac: (i === 0 ? spec.mac : undefined) ?? randomMac(), state: 'creating' as const,
    };
    store.insertAttachment(attachment);
    const addresses = allocate(store, name, sandbox, spec.ips);
    const defaults = ([4, 6] as const).filter((f) =>
      addresses.some((a) => a.family === f) && carriesDefault(store, sandbox, network, f, networks.slice(0, i)));
    plans.push({ attachment, network, addresses, defaults });
  }
  return plans;
}

export async function createSandbox(ctx: Ctx, name: string, spec: AttachSpec, publish: PublishRequest = NO_PORTS,
  labels: readonly { key: string; value: string }[] = []): Promise<SandboxRow> {
  const { store, runner } = ctx;
  const host = await readHost(ctx, publish);
  const nsName = netnsName(store.instance, name);
  const row: SandboxRow = { name, netns: `/run/netns/${nsName}`, owned: true, state: 'creating', owner: null, created: new Date().toISOString() };
  const plans = store.write(() => {
    if (store.sandbox(name)) throw new CtnetError('CONFLICT', `sandbox ${name} exists already`, `choose another name, or remove it with "ctnet rm ${name}"`);
    store.insertSandbox(row);
    for (const l of labels) store.setLabel(name, l.key, l.value);
    const attachments = planAttachments(store, name, spec.networks, spec, []);
    recordPorts(store, name, publish, host);
    return { attachments, ports: portFacts(store, name) };
  }, { rollback: runner.dryRun });
  if (isNetnsFile(row.netns) && !runner.dryRun) {
    store.write(() => store.deleteSandbox(name));
    throw new CtnetError('CONFLICT', `netns ${nsName} exists already but ctnet has no record of it`, 'run "ctnet gc" to remove what an interrupted ctnet left behind');
  }
  crashPoint();
  const ns = { name: nsName };
  await transaction(async (undo) => {
    runner.note(`sandbox ${name}: network namespace ${nsName}`);
    undo.push(`netns ${nsName}`, () => ignoreMissing(() => runIp(runner, [netnsDel(nsName)])));
    await runIp(runner, [netnsAdd(nsName)]);
    crashPoint();
    await runIp(runner, [linkSetUp('lo', ns)]);
    for (const p of plans.attachments) await applyAttach(ctx, ns, p, undo);
    await applyPorts(ctx, plans.ports, undo);
    if (!runner.dryRun) {
      store.write(() => {
        for (const p of plans.attachments) store.setAttachmentState(name, p.attachment.network, 'ready');
        store.setSandboxState(name, 'ready');
      });
    }
  }, ctx.warn).catch((e) => {
    if (!runner.dryRun) store.write(() => store.deleteSandbox(name));
    throw e;
  });
  await syncPolicy(ctx);
  return { ...row, state: 'ready' };
}

/** Connects an existing sandbox to one more network. */
export async function connect(ctx: Ctx, network: string, sandbox: string, ips: readonly IpRequest[]): Promise<void> {
  const s = getSandbox(ctx, sandbox);
  await attachOne(ctx, s, network, ips, false);
}

/**
 * Connects a network namespace made by someone else (a container's), recorded as sandbox NAME.
 * ctnet never deletes that namespace; removing the sandbox only removes what ctnet added.
 */
export async function connectExternal(ctx: Ctx, network: string, netnsPath: string, name: string, ips: readonly IpRequest[]): Promise<void> {
  const { store, runner } = ctx;
  if (!isNetnsFile(netnsPath)) {
    throw new CtnetError('INVALID_ARGUMENT', `${netnsPath} is not a network namespace`, 'give a netns file such as /run/netns/NAME or /proc/PID/ns/net');
  }
  const existing = store.sandbox(name);
  if (existing && (existing.owned || existing.netns !== netnsPath)) {
    throw new CtnetError('CONFLICT', `sandbox ${name} exists already with another namespace`, 'choose another --name');
  }
  if (!existing) {
    readyNetwork(store, network);
    const row = { name, netns: netnsPath, owned: false, state: 'ready' as const };
    if (!runner.dryRun) store.write(() => store.insertSandbox(row));
  }
  const s = store.sandbox(name) ?? { name, netns: netnsPath, owned: false, state: 'ready' as const, owner: null, created: '' };
  try {
    await attachOne(ctx, s, network, ips, true);
  } catch (e) {
    if (!existing && !runner.dryRun) store.write(() => store.deleteSandbox(name));
    throw e;
  }
}

async function attachOne(ctx: Ctx, s: SandboxRow, network: string, ips: readonly IpRequest[], readNames: boolean): Promise<void> {
  const { store, runner } = ctx;
  const ns = sandboxNetns(s);
  // In someone else's namespace any interface may exist; in ours, the store knows them all.
  const used = readNames ? (await linkList(runner, ns)).map((l) => l.ifname) : [];
  const before = portFacts(store, s.name);
  const [plan] = store.write(() => {
    used.push(...store.attachments({ sandbox: s.name }).map((a) => a.ifname));
    return planAttachments(store, s.name, [network], { ips, mac: undefined }, used);
  }, { rollback: runner.dryRun });
  crashPoint();
  await transaction(async (undo) => {
    await applyAttach(ctx, ns, plan!, undo);
    if (!runner.dryRun) store.write(() => store.setAttachmentState(s.name, network, 'ready'));
  }, ctx.warn).catch((e) => {
    if (!runner.dryRun) store.write(() => store.deleteAttachment(s.name, network));
    throw e;
  });
  await retargetPorts(ctx, s.name, before);
  await syncPolicy(ctx);
}

/** Moves published ports when the network they lead to changed (a connect or a disconnect). */
export async function retargetPorts(ctx: Ctx, sandbox: string, before: readonly PortFacts[]): Promise<void> {
  const after = portFacts(ctx.store, sandbox);
  const key = (f: readonly PortFacts[]) => JSON.stringify(f[0]?.targets ?? []);
  if (key(before) === key(after)) return;
  await unapplyPorts(ctx, before);
  await applyPorts(ctx, after, undefined);
}

/** Removes one attachment's kernel objects; idempotent. */
export async function teardownAttachment(ctx: Ctx, a: AttachmentRow, addresses: readonly AddressRow[], extraDel: readonly string[] = []): Promise<void> {
  const { runner, store } = ctx;
  const n = store.network(a.network);
  runner.note(`${a.sandbox}: remove ${a.ifname} from network ${a.network}`);
  // The host end: deleting it removes the container end too.
  const unlink = () => ignoreMissing(() => runIp(runner, [linkDel(a.hostVeth)]));
  const unlist = () => applyNftDelete(runner, [...(n ? endpointElements('delete', { bridge: n.bridge, addresses }) : []), ...extraDel]);
  // Independent, and each idempotent: the veth deletion (the kernel's slowest step) and the nft
  // transaction run side by side.
  await settleAll([unlink(), unlist()]);
  crashPoint();
  await forgetAddresses(ctx, addresses.map((x) => x.ip));
}

export async function disconnect(ctx: Ctx, network: string, sandbox: string): Promise<void> {
  const { store, runner } = ctx;
  const s = store.sandbox(sandbox);
  if (!s) throw new CtnetError('NOT_FOUND', `no sandbox named ${sandbox}`, 'list sandboxes with "ctnet ls"');
  if (!store.network(network)) throw new CtnetError('NOT_FOUND', `no network named ${network}`, 'list networks with "ctnet network ls"');
  const a = store.attachments({ sandbox }).find((x) => x.network === network);
  if (!a) return; // not connected: nothing to undo
  if (!runner.dryRun) store.write(() => store.setAttachmentState(sandbox, network, 'removing'));
  crashPoint();
  const addresses = store.addresses({ sandbox }).filter((x) => x.network === network);
  const before = portFacts(store, sandbox);
  const wasTarget = before.length > 0 && before[0]!.targets.some((t) => addresses.some((x) => x.ip === t.ip));
  const carried = ([4, 6] as const).filter((f) => defaultCarrier(store, sandbox, f) === network);
  // The ports' map elements go in the same nft transaction as the endpoint's.
  if (wasTarget) ctx.runner.note(`unpublish ${before.map((f) => formatPortSpec(f.mapping)).join(', ')}`);
  await teardownAttachment(ctx, a, addresses, wasTarget ? portLines('delete', before) : []);
  if (wasTarget) await forgetUnpublished(ctx, before);
  if (runner.dryRun) return;
  store.write(() => {
    store.deleteAttachment(sandbox, network);
    // A namespace someone else made is only a sandbox while ctnet networks it.
    if (!s.owned && store.attachments({ sandbox }).length === 0) store.deleteSandbox(sandbox);
  });
  if (store.sandbox(sandbox)) await handOverDefault(ctx, s, carried);
  if (wasTarget && store.sandbox(sandbox)) await applyPorts(ctx, portFacts(store, sandbox), undefined);
  await syncPolicy(ctx);
}

/** The default routes the removed attachment carried move to the sandbox's next carrier, if any. */
async function handOverDefault(ctx: Ctx, s: SandboxRow, families: readonly (4 | 6)[]): Promise<void> {
  if (families.length === 0 || !isNetnsFile(s.netns)) return;
  const ns = sandboxNetns(s);
  const cmds = families.flatMap((f) => {
    const next = defaultCarrier(ctx.store, s.name, f);
    const a = next && ctx.store.attachments({ sandbox: s.name }).find((x) => x.network === next);
    const gw = next && ctx.store.subnets(next).find((x) => x.family === f)?.gateway;
    return a && gw ? [routeSetDefault(gw, a.ifname, ns)] : [];
  });
  if (cmds.length === 0) return;
  ctx.runner.note(`${s.name}: the default route moves to the next network`);
  await runIp(ctx.runner, cmds);
}

/** Removes a sandbox: its processes, interfaces, nft elements, netns (if ctnet's) and addresses. */
export async function removeSandbox(ctx: Ctx, name: string): Promise<boolean> {
  const { store, runner } = ctx;
  const s = store.sandbox(name);
  if (!s) return false;
  if (!runner.dryRun) {
    store.write(() => {
      store.setSandboxState(name, 'removing');
      for (const a of store.attachments({ sandbox: name })) store.setAttachmentState(name, a.network, 'removing');
    });
  }
  crashPoint();
  await teardownSandbox(ctx, s);
  if (!runner.dryRun) store.write(() => store.deleteSandbox(name));
  // Its addresses leave the policy sets before IPAM can hand them to another sandbox.
  await syncPolicy(ctx);
  return true;
}

/** Kernel side of removing a sandbox; idempotent. Order: processes, interfaces, rules, netns. */
export async function teardownSandbox(ctx: Ctx, s: SandboxRow): Promise<void> {
  const { runner, store } = ctx;
  const ns = sandboxNetns(s);
  if (s.owned && 'name' in ns) {
    runner.note(`sandbox ${s.name}: stop its processes`);
    if (netnsPids(ns).length > 0 && runner.willChange(`ip netns pids ${ns.name} | xargs -r kill -KILL`)) netnsKillAll(ns);
  }
  await unapplyPorts(ctx, portFacts(store, s.name));
  const addresses = store.addresses({ sandbox: s.name });
  for (const a of store.attachments({ sandbox: s.name })) {
    await teardownAttachment(ctx, a, addresses.filter((x) => x.network === a.network));
  }
  if (s.owned && 'name' in ns) {
    runner.note(`sandbox ${s.name}: remove its network namespace`);
    await ignoreMissing(() => runIp(runner, [netnsDel(ns.name)]));
    crashPoint();
  }
}
