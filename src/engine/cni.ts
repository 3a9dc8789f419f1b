// CNI use cases on the same engine and store as the CLI: an ADD is a connect of the runtime's
// namespace (recorded as a sandbox, so `ctnet ls` shows it), a DEL a disconnect found from the
// store alone, GC a DEL of every attachment the runtime no longer lists.
import { createHash } from 'node:crypto';
import { statSync } from 'node:fs';
import type { CniResult, NetConf } from '../model/cni.ts';
import { CtnetError, KernelError } from '../errors.ts';
import { isAlive } from '../kernel/proc.ts';
import type { Netns } from '../model/netns.ts';
import { formatPortSpec } from '../model/ports.ts';
import type { AttachmentRow, CniRow, NetworkRow, Store } from '../store/store.ts';
import type { Ctx } from './context.ts';
import { attachSteps, type PlannedAttachment } from './attach.ts';
import { recordShape, shapeSteps } from './shape.ts';
import { kernelDefaults, recordAttachments } from './attach.ts';
import { ensureOverlaySide } from './overlay-network.ts';
import { syncSandboxPolicy } from './policy.ts';
import { portFacts, portLines, portMoveLines, portsMoved, portTargets, readHost, recordPorts } from './ports.ts';
import { sandboxNetns } from './records.ts';
import { disconnect, movedFlowSteps } from './sandbox.ts';
import { step } from '../plan/plan.ts';

export interface CniRequest {
  readonly containerId: string;
  readonly netns: string;
  readonly ifname: string;
  readonly conf: NetConf;
}

/** The network an ADD may use: it exists, is ready, and agrees with what the config claims. */
function usableNetwork(store: Store, conf: NetConf): NetworkRow {
  const n = store.network(conf.network);
  if (!n) {
    throw new CtnetError('NOT_FOUND', `network ${conf.network} is not a ctnet network (state directory ${store.dir})`,
      `create it with "ctnet network create ${conf.network} --subnet CIDR", or set "network" in the config to an existing one (ctnet network ls)`);
  }
  if (n.state !== 'ready') {
    const live = n.owner !== null && isAlive(n.owner);
    throw new CtnetError('STATE', `network ${n.name} is ${n.state}`, live ? 'try again when that operation finishes' : 'an interrupted ctnet left it so: run "ctnet gc"');
  }
  const c = conf.claims;
  const fix = `leave the key out: the ctnet network ${n.name} decides it`;
  if (c.bridge !== undefined && c.bridge !== n.bridge) throw unsupportedClaim('bridge', c.bridge, `network ${n.name} uses bridge ${n.bridge}`, fix);
  if (c.ipMasq !== undefined && c.ipMasq === n.internal) {
    throw unsupportedClaim('ipMasq', c.ipMasq, n.internal ? `network ${n.name} is --internal: nothing leaves it` : `network ${n.name} masquerades its traffic out`, fix);
  }
  if (c.isGateway === false) throw unsupportedClaim('isGateway', false, `the bridge of network ${n.name} is always its gateway`, fix);
  if (c.hairpinMode === false) throw unsupportedClaim('hairpinMode', false, 'ctnet turns hairpin on for published ports to reach their own sandbox', fix);
  if (c.mtu !== undefined && c.mtu !== (n.mtu ?? 1500)) throw unsupportedClaim('mtu', c.mtu, `network ${n.name} has MTU ${n.mtu ?? 1500}`, fix);
  return n;
}

const unsupportedClaim = (key: string, value: unknown, why: string, fix: string) =>
  new CtnetError('UNSUPPORTED', `${key}=${JSON.stringify(value)} cannot be honoured: ${why}`, fix);

/** CNI_NETNS must be a network namespace that exists (GONE when it is gone, INVALID_TARGET when it is something else). */
function checkNetns(ctx: Ctx, path: string): void {
  try {
    statSync(path);
  } catch {
    throw new CtnetError('GONE', `CNI_NETNS ${path} does not exist`, 'the container\'s network namespace is gone; start the container again');
  }
  if (!ctx.kernel.isNetns(path)) {
    throw new CtnetError('INVALID_TARGET', `CNI_NETNS ${path} is not a network namespace`, 'give a netns file such as /run/netns/NAME or /proc/PID/ns/net');
  }
}

/** A sandbox name for a container: its id's first 12 characters, or a hash when those are taken. */
function sandboxNameFor(store: Store, containerId: string, netns: string): string {
  const mine = store.cniAttachments({ containerId })[0];
  if (mine) {
    const s = store.sandbox(mine.sandbox);
    if (s && s.netns !== netns) {
      throw new CtnetError('INVALID_TARGET', `container ${containerId} is attached already with another namespace (${s.netns})`,
        'DEL its earlier attachments first');
    }
    return mine.sandbox;
  }
  const base = `cni-${containerId.slice(0, 12)}`;
  if (!store.sandbox(base)) return base;
  return `cni-${createHash('sha256').update(containerId).digest('hex').slice(0, 24)}`;
}

/** The bridge's MAC: recorded with the network; read from the kernel only for networks made before that. */
async function bridgeMac(ctx: Ctx, n: NetworkRow): Promise<string | undefined> {
  return n.mac ?? (await ctx.kernel.link(n.bridge))?.address;
}

/**
 * A runtime's aliases that are another sandbox's name on the network are left out with a warning:
 * a container must start even when a ctnet sandbox already has its name.
 */
function usableAliases(ctx: Ctx, network: string, sandbox: string, aliases: readonly string[]): string[] {
  const names = new Set(ctx.store.attachments({ network }).filter((a) => a.sandbox !== sandbox).map((a) => a.sandbox.toLowerCase()));
  return aliases.filter((a) => {
    if (!names.has(a)) return true;
    ctx.warn(`alias ${a} is left out: it is the name of sandbox ${a} on network ${network}`);
    return false;
  });
}

/** The result of one attachment, as the reference bridge plugin shapes it. */
function resultOf(store: Store, plan: PlannedAttachment, bridge: string, brMac: string | undefined, netns: string, conf: NetConf): CniResult {
  const subnets = store.subnets(plan.row.network);
  const gw = (cidr: string) => subnets.find((s) => s.cidr === cidr)!.gateway;
  return {
    interfaces: [
      { name: bridge, ...(brMac ? { mac: brMac } : {}) },
      { name: plan.row.hostVeth },
      { name: plan.row.ifname, mac: plan.row.mac, sandbox: netns },
    ],
    ips: plan.addresses.map((a) => ({ address: `${a.ip}/${a.cidr.split('/')[1]}`, gateway: gw(a.cidr), interface: 2 })),
    routes: plan.defaults.map((d) => ({ dst: d.family === 4 ? '0.0.0.0/0' : '::/0', gw: d.via })),
    dns: conf.dns ?? ctnetDns(store, plan.row.network),
  };
}

/**
 * The DNS a runtime should give the container when the configuration says none (runtimeConfig.dns
 * and the config's dns win): ctnetd on the network's gateways (IPv4 first), the network as search
 * domain (services/dns/). None for a network with DNS off.
 */
function ctnetDns(store: Store, network: string): CniResult['dns'] {
  if (!store.network(network)?.dns) return {};
  const subnets = store.subnets(network).sort((a, b) => a.family - b.family);
  return { nameservers: subnets.map((s) => s.gateway), search: [network] };
}

export async function cniAdd(ctx: Ctx, req: CniRequest): Promise<CniResult> {
  const { store, applier } = ctx;
  const { conf } = req;
  await ensureOverlaySide(ctx, conf.network);
  const network = usableNetwork(store, conf);
  checkNetns(ctx, req.netns);
  if (store.cniAttachments({ containerId: req.containerId }).some((c) => c.ifname === req.ifname && c.cniNetwork === conf.name)) {
    throw new CtnetError('INVALID_TARGET', `container ${req.containerId} already has ${req.ifname} on network ${conf.name}`,
      'ADD once per container and interface; DEL it before adding it again');
  }
  // The runtime holds published host ports open itself (podman's conmon): never refuse for a listener.
  const host = await readHost(ctx, { mappings: conf.portMappings, force: true });
  const sandbox = sandboxNameFor(store, req.containerId, req.netns);
  const ns = sandboxNetns({ netns: req.netns });
  const foreign = kernelDefaults(await ctx.kernel.routes(ns));
  const before = portFacts(store, sandbox);
  let plan!: PlannedAttachment;
  try {
    await applier.transaction(async (tx) => {
      const p = tx.decide((rec) => {
        if (!store.sandbox(sandbox)) rec.record({ kind: 'sandbox.insert', row: { name: sandbox, netns: req.netns, owned: false, state: 'ready' } });
        const used = store.attachments({ sandbox }).map((a) => a.ifname);
        // The runtime's choice of the network that carries the default routes (the bridge plugin's key).
        if (conf.claims.isDefaultGateway === true && !network.internal) rec.record({ kind: 'default-route.set', sandbox, network: network.name });
        const [a] = recordAttachments(rec, sandbox, [network.name], { ips: conf.ips, mac: conf.mac, aliases: usableAliases(ctx, network.name, sandbox, conf.aliases) }, used, req.ifname, foreign);
        rec.record({ kind: 'cni.insert', row: { containerId: req.containerId, ifname: req.ifname, cniNetwork: conf.name, sandbox, network: network.name } },
          ...conf.labels.map((l) => ({ kind: 'label.set' as const, sandbox, key: l.key, value: l.value })));
        // A container on several networks gets the same portMappings on each: publish them once.
        const have = new Set(store.ports({ sandbox }).map(formatPortSpec));
        const fresh = conf.portMappings.filter((m) => !have.has(formatPortSpec(m)));
        const rows = recordPorts(rec, sandbox, { mappings: fresh, force: true }, host);
        if (conf.bandwidth) recordShape(rec, sandbox, network.name, conf.bandwidth);
        return { attachment: a!, ports: rows };
      });
      plan = p.attachment;
      // New mappings go in the attachment's own nft transaction; so do the sandbox's earlier ones
      // when this attachment is the first with a way out and they move to it.
      const after = portFacts(store, sandbox);
      const targets = portTargets(store, sandbox);
      const facts = p.ports.map((mapping) => ({ mapping, targets }));
      const move = portsMoved(before, after);
      await tx.run([
        ...attachSteps(store, ns, p.attachment, move ? portMoveLines(before, after) : { add: portLines('add', facts), del: portLines('delete', facts) }),
        ...(move ? movedFlowSteps(before, after) : facts.length ? [step([{ kind: 'conntrack.forget', filter: { kind: 'stale', ports: facts } }])] : []),
        // The runtime's bandwidth capability: ctnet shapes the attachment itself (no chained plugin).
        ...(conf.bandwidth ? shapeSteps(store, p.attachment.row, conf.bandwidth, undefined) : []),
      ]);
      await syncSandboxPolicy(ctx, sandbox, { tx });
      tx.commit({ kind: 'attachment.state', sandbox, network: network.name, state: 'ready' });
    });
  } catch (e) {
    throw await explainAttachFailure(ctx, e, ns, req);
  }
  return resultOf(store, plan, network.bridge, await bridgeMac(ctx, network), req.netns, conf);
}

/** An ADD that failed because CNI_IFNAME exists in the namespace says so (ADD is not idempotent). */
async function explainAttachFailure(ctx: Ctx, e: unknown, ns: Netns, req: CniRequest): Promise<unknown> {
  if (!(e instanceof KernelError && e.isExists)) return e;
  const inside = await ctx.kernel.links(ns).catch(() => []);
  if (!inside.some((l) => l.ifname === req.ifname)) return e;
  return new CtnetError('INVALID_TARGET', `CNI_IFNAME ${req.ifname} exists already in ${req.netns}`,
    'choose another CNI_IFNAME, or DEL the attachment that made it first');
}

/**
 * Removes one attachment and everything it made, found from the store; missing is success. Without
 * the CNI network's name (a configuration DEL could not read), the container's only attachment on
 * that interface is the one.
 */
export async function cniDel(ctx: Ctx, key: { containerId: string; ifname: string; cniNetwork: string | undefined }): Promise<boolean> {
  const rows = ctx.store.cniAttachments({ containerId: key.containerId }).filter((c) => c.ifname === key.ifname);
  const row = key.cniNetwork === undefined ? (rows.length === 1 ? rows[0] : undefined) : rows.find((c) => c.cniNetwork === key.cniNetwork);
  if (!row) return false;
  await removeCniAttachment(ctx, row);
  return true;
}

/**
 * disconnect removes the veth (both ends go with the host end, even when the netns is gone), the nft
 * elements, ports, flows and addresses, and the sandbox with its last attachment.
 */
const removeCniAttachment = (ctx: Ctx, row: CniRow) => disconnect(ctx, row.network, row.sandbox);

/** GC: DELs every attachment of this CNI network that the runtime no longer lists. */
export async function cniGc(ctx: Ctx, cniNetwork: string, valid: readonly { containerId: string; ifname: string }[]): Promise<string[]> {
  const keep = new Set(valid.map((v) => `${v.containerId}\u0000${v.ifname}`));
  const removed: string[] = [];
  for (const row of ctx.store.cniAttachments({ cniNetwork })) {
    if (keep.has(`${row.containerId}\u0000${row.ifname}`)) continue;
    await removeCniAttachment(ctx, row);
    removed.push(`${row.containerId}/${row.ifname}`);
  }
  return removed;
}

/** CHECK: the live interface, addresses and routes still match the store and prevResult. */
export async function cniCheck(ctx: Ctx, req: CniRequest): Promise<void> {
  const { store, kernel } = ctx;
  const { conf } = req;
  usableNetwork(store, conf);
  checkNetns(ctx, req.netns);
  const row = store.cniAttachments({ containerId: req.containerId }).find((c) => c.ifname === req.ifname && c.cniNetwork === conf.name);
  if (!row) throw new CtnetError('GONE', `container ${req.containerId} has no ${req.ifname} on network ${conf.name}`, 'ADD it first');
  const s = store.sandbox(row.sandbox)!;
  const a = store.attachments({ sandbox: s.name }).find((x) => x.network === row.network) as AttachmentRow;
  const addresses = store.addresses({ sandbox: s.name }).filter((x) => x.network === row.network);
  const fail = (what: string) => new CtnetError('MISMATCH', `CHECK failed for ${req.containerId}/${req.ifname}: ${what}`, 'DEL and ADD the attachment again, or run "ctnet gc"');
  if (s.netns !== req.netns) throw fail(`it was added in ${s.netns}, not ${req.netns}`);
  const ns = sandboxNetns(s);
  const links = await kernel.links(ns);
  const link = links.find((l) => l.ifname === req.ifname);
  if (!link) throw fail(`interface ${req.ifname} is missing`);
  if (link.address !== a.mac) throw fail(`interface ${req.ifname} has MAC ${link.address}, expected ${a.mac}`);
  const hostLink = await kernel.link(a.hostVeth);
  const network = store.network(row.network)!;
  if (!hostLink) throw fail(`host interface ${a.hostVeth} is missing`);
  if (hostLink.master !== network.bridge) throw fail(`host interface ${a.hostVeth} is not on bridge ${network.bridge}`);
  const live = (await kernel.addrs(ns)).find((l) => l.ifname === req.ifname)?.addr_info ?? [];
  for (const x of addresses) {
    if (!live.some((l) => l.local === x.ip)) throw fail(`address ${x.ip} is missing from ${req.ifname}`);
  }
  const prev = conf.prevResult;
  if (prev) {
    const ips = Array.isArray(prev.ips) ? (prev.ips as { address?: string }[]) : [];
    for (const ip of ips) {
      const addr = String(ip.address ?? '').split('/')[0]!;
      if (addr && !live.some((l) => l.local === addr)) throw fail(`prevResult address ${ip.address} is not on ${req.ifname}`);
    }
    const routes = await kernel.routes(ns);
    const prevRoutes = Array.isArray(prev.routes) ? (prev.routes as { dst?: string; gw?: string }[]) : [];
    for (const r of prevRoutes) {
      const dst = r.dst === '0.0.0.0/0' || r.dst === '::/0' ? 'default' : r.dst;
      if (!routes.some((x) => x.dst === dst && (r.gw === undefined || x.gateway === r.gw))) {
        throw fail(`prevResult route ${r.dst}${r.gw ? ` via ${r.gw}` : ''} is missing`);
      }
    }
    const ifs = Array.isArray(prev.interfaces) ? (prev.interfaces as { name?: string; mac?: string; sandbox?: string }[]) : [];
    const mineInPrev = ifs.find((i) => i.name === req.ifname && i.sandbox);
    if (mineInPrev?.mac && mineInPrev.mac !== link.address) throw fail(`prevResult says ${req.ifname} has MAC ${mineInPrev.mac}, it has ${link.address}`);
  }
}

/** STATUS: ready for ADDs (code 50 when not), existing attachments connected (51 when not). */
export async function cniStatus(ctx: Ctx, conf: NetConf): Promise<void> {
  const { store, kernel } = ctx;
  const n = store.network(conf.network);
  if (!n) {
    throw new CtnetError('NOT_FOUND', `network ${conf.network} is not a ctnet network (state directory ${store.dir})`,
      `create it with "ctnet network create ${conf.network} --subnet CIDR"`);
  }
  if (n.state !== 'ready') throw new CtnetError('STATE', `network ${n.name} is ${n.state}`, 'wait for it, or run "ctnet gc"');
  const [bridge, table] = await Promise.all([kernel.link(n.bridge).then((l) => l !== undefined), kernel.nftCounts().then((c) => c.inet !== undefined)]);
  if (!bridge || !table) {
    const what = !table ? 'the nftables table inet ctnet is missing' : `bridge ${n.bridge} is missing`;
    throw new CtnetError(store.attachments({ network: n.name }).length ? 'DEGRADED' : 'UNAVAILABLE',
      `network ${n.name} is broken: ${what}`, 'run "ctnet gc" to rebuild it from the state');
  }
}
