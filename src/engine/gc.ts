// Reconciles the kernel with the store after a crash: finishes or undoes interrupted operations,
// rewrites ctnet's nft table from the store, rebuilds what a ready record says must exist (through
// each network's driver), and removes ctnet-marked objects nobody records.
import { isAlive } from '../kernel/proc.ts';
import { deadTraceTables } from './trace.ts';
import { randomMac } from '../model/mac.ts';
import type { Op } from '../plan/ops.ts';
import { step } from '../plan/plan.ts';
import type { NetworkRow, SandboxRow } from '../store/store.ts';
import type { Ctx } from './context.ts';
import { BRIDGE_PREFIX, IFB_PREFIX, ifbName, netnsPrefix, SHIM_PREFIX, VETH_PREFIX, VXLAN_PREFIX } from './naming.ts';
import { shapeSteps } from './shape.ts';
import { repairResolved } from './resolved.ts';
import { MADE_NETWORKS, teardownNetwork } from './network.ts';
import { reconcileOverlays } from './overlay-network.ts';
import { cutDeniedFlows } from './policy.ts';
import { restoreTables, tableDrift } from './tables.ts';
import { egressLines } from './attach.ts';
import { defaultCarrier, driverAttachment, driverNetwork, driverOf, sandboxNetns } from './records.ts';
import { removeSandbox, teardownAttachment, teardownSandbox } from './sandbox.ts';
import { removeService, syncServices, vipOps } from './services.ts';

/** Rows another live ctnet process is working on right now are left to it. */
const interrupted = (r: { state: string; owner: string | null }) => r.state !== 'ready' && !(r.owner && isAlive(r.owner));

export async function gc(ctx: Ctx): Promise<string[]> {
  const { store, kernel, applier } = ctx;
  const done: string[] = [];

  // 1. Interrupted operations are rolled back: their records go, with their addresses.
  for (const s of store.sandboxes().filter(interrupted)) {
    await teardownSandbox(ctx, s);
    applier.record({ kind: 'sandbox.delete', name: s.name });
    done.push(`removed sandbox ${s.name} (${s.state} when its ctnet stopped)`);
  }
  // A `service rm` that stopped midway is finished (its chain may be half gone: nothing to keep); a
  // `service create` is finished too (a recorded service is whole after gc: the table rewrite below
  // makes its chain and elements, the VIP is put back, its backends derived).
  for (const s of store.services().filter((x) => interrupted({ state: x.state ?? 'ready', owner: x.owner ?? null }))) {
    if (s.state === 'removing') {
      await removeService(ctx, s.name, { mirror: true });
      done.push(`removed service ${s.name} (removing when its ctnet stopped)`);
    } else {
      applier.record({ kind: 'service.state', name: s.name, state: 'ready' });
      done.push(`finished service ${s.name} (creating when its ctnet stopped)`);
    }
  }
  for (const a of store.attachments().filter(interrupted)) {
    await teardownAttachment(ctx, a);
    applier.record({ kind: 'attachment.delete', sandbox: a.sandbox, network: a.network });
    done.push(`removed ${a.sandbox}'s attachment to ${a.network} (${a.state} when its ctnet stopped)`);
  }
  // A namespace someone else made is only a sandbox while ctnet networks it (CNI, connect --netns).
  for (const s of store.sandboxes().filter((x) => !x.owned && x.state === 'ready' && store.attachments({ sandbox: x.name }).length === 0)) {
    applier.record({ kind: 'sandbox.delete', name: s.name });
    done.push(`forgot sandbox ${s.name} (someone else's namespace, no longer attached)`);
  }
  // Someone else's namespace that is gone (a container killed without a DEL, as ctr does for a
  // detached task): nothing can use its attachments again, so they go, and their addresses with them.
  for (const s of store.sandboxes().filter((x) => !x.owned && x.state === 'ready' && !kernel.isNetns(x.netns))) {
    await removeSandbox(ctx, s.name);
    done.push(`removed sandbox ${s.name}: its network namespace ${s.netns} is gone (its addresses are free again)`);
  }
  for (const n of store.networks().filter(interrupted)) {
    for (const a of store.attachments({ network: n.name })) {
      await teardownAttachment(ctx, a);
      applier.record({ kind: 'attachment.delete', sandbox: a.sandbox, network: n.name });
    }
    await teardownNetwork(ctx, n);
    applier.record({ kind: 'network.delete', name: n.name });
    done.push(`removed network ${n.name} (${n.state} when its ctnet stopped)`);
  }

  // 2. Forwarding (someone may have turned it off), and the nft table rewritten from the store in
  //    one transaction (the repairs below add elements that are then there already).
  const ready = store.networks().filter((n) => n.state === 'ready');
  const fix: Op[] = [];
  if (ready.length > 0) {
    for (const [key, need] of [['net.ipv4.ip_forward', true], ['net.ipv6.conf.all.forwarding', store.subnets().some((s) => s.family === 6)]] as const) {
      if (need && kernel.sysctl(key) !== '1') {
        fix.push({ kind: 'sysctl.set', key, value: '1' });
        done.push(`turned ${key} on again`);
      }
    }
  }
  // A store that never made a network did not make what the kernel holds: it may add, not take away.
  const trusted = store.meta(MADE_NETWORKS) === '1' || store.networks().length > 0;
  const drift = await tableDrift(ctx);
  if (!trusted && drift.length) {
    done.push(`left ctnet's nft tables alone: this state directory (${store.dir}) has never made a network, so they are another's, or those of a state database that was lost; restore that database, or remove the tables by hand (nft delete table inet ctnet; nft delete table bridge ctnet) if they are garbage`);
  } else {
    await restoreTables(ctx, fix);
  }
  if (trusted && drift.length) {
    done.push(`rewrote ctnet's nft tables from the store (${drift.join('; ')})`);
    await cutDeniedFlows(ctx); // flows begun while the tables were gone are established: end those they deny
  }

  // 3. Ready records whose kernel objects went missing are rebuilt, as their drivers see it.
  for (const n of ready) done.push(...await repairNetwork(ctx, n));
  for (const s of store.sandboxes().filter((x) => x.state === 'ready' && x.owned)) done.push(...await repairNetns(ctx, s));

  // Services: each VIP on its network's bridge (a rebuilt bridge, or a create killed before it
  // added it: a recorded service is finished, not undone), and backends as the store says now.
  const have = store.services().length === 0 ? new Set<string>()
    : new Set((await kernel.addrs()).flatMap((l) => (l.addr_info ?? []).map((a) => `${a.local} ${l.ifname}`)));
  for (const s of store.services()) {
    if (s.ownerHost) continue; // another host's service: its VIP is on that host's bridge
    const bridge = store.network(s.network)?.bridge;
    if (!bridge) continue;
    const missing = vipOps(bridge, s).filter((op) => op.kind === 'addr.add' && !have.has(`${op.cidr.split('/')[0]} ${bridge}`));
    if (missing.length === 0) continue;
    await applier.apply([step(missing)]);
    done.push(`put VIP ${missing.map((op) => (op.kind === 'addr.add' ? op.cidr.split('/')[0] : '')).join(' and ')} of service ${s.name} back on bridge ${bridge}`);
  }
  await syncServices(ctx);
  // systemd-resolved's registration of each network with DNS (it restarted, or someone reverted a link).
  done.push(...await repairResolved(ctx));

  // 4. ctnet-marked objects that no record owns.
  const bridges = new Set(store.networks().map((n) => n.bridge));
  const veths = new Set(store.attachments().map((a) => a.hostVeth));
  const vxlans = new Set(store.overlays().map((o) => o.device));
  const ifbs = new Set(store.attachments().filter((a) => store.shaping(a.sandbox, a.network)?.rateOut !== undefined).map((a) => ifbName(a.hostVeth)));
  for (const l of await kernel.links()) {
    const orphanBridge = l.ifname.startsWith(BRIDGE_PREFIX) && l.linkinfo?.info_kind === 'bridge' && !bridges.has(l.ifname);
    const orphanVeth = l.ifname.startsWith(VETH_PREFIX) && l.linkinfo?.info_kind === 'veth' && !veths.has(l.ifname);
    const orphanVxlan = l.ifname.startsWith(VXLAN_PREFIX) && l.linkinfo?.info_kind === 'vxlan' && !vxlans.has(l.ifname);
    const orphanIfb = l.ifname.startsWith(IFB_PREFIX) && l.linkinfo?.info_kind === 'ifb' && !ifbs.has(l.ifname);
    const orphanShim = l.ifname.startsWith(SHIM_PREFIX) && ['macvlan', 'ipvlan'].includes(l.linkinfo?.info_kind ?? '') && !bridges.has(l.ifname);
    if ((orphanBridge || orphanVeth || orphanVxlan || orphanIfb || orphanShim) && !trusted) {
      done.push(`left ${l.ifname} alone: ctnet-marked, but this state directory has never made a network (another state directory's, or its lost database's); remove it by hand if it is garbage`);
    } else if (orphanBridge || orphanVeth || orphanVxlan || orphanIfb || orphanShim) {
      await applier.teardown([step([{ kind: 'link.del', name: l.ifname }])]);
      done.push(`removed ${l.ifname}, which no record owns`);
    }
  }
  const prefix = netnsPrefix(store.instance);
  const known = new Set(store.sandboxes().map((s) => s.netns));
  for (const name of kernel.netnsNames()) {
    if (!name.startsWith(prefix) || known.has(`/run/netns/${name}`)) continue;
    await applier.teardown([step([{ kind: 'netns.kill', netns: { name } }, { kind: 'netns.del', name }])]);
    done.push(`removed netns ${name}, which no record owns`);
  }
  // A sandbox's resolv.conf outlives it only when ctnet died between removing the netns and it.
  for (const name of kernel.resolvNames()) {
    if (!name.startsWith(prefix) || known.has(`/run/netns/${name}`)) continue;
    await applier.teardown([step([{ kind: 'resolv.remove', netns: name }])]);
    done.push(`removed /etc/netns/${name}, which no record owns`);
  }
  // 5. Temporary tables of a `ctnet trace` that was killed before it removed them.
  for (const t of deadTraceTables(await kernel.nftTables())) {
    await applier.teardown([step([{ kind: 'nft.delete', lines: [`delete table ${t.family} ${t.table}`] }])]);
    done.push(`removed ${t.family} table ${t.table} (a ctnet trace that did not finish)`);
  }
  // 6. A member of a cluster: its leases in etcd and its overlay sides agree.
  done.push(...await reconcileOverlays(ctx));
  return done;
}

/**
 * Rebuilds what a ready network's driver finds missing or out of place (observe, planRepair), and
 * plugs its attachments in again where needed; says what it did. gc and `ctnet apply` (drift) use it.
 */
export async function repairNetwork(ctx: Ctx, n: NetworkRow): Promise<string[]> {
  const { store, kernel, applier } = ctx;
  const done: string[] = [];
  const dn = driverNetwork(store, n);
  const driver = driverOf(n);
  const attached = store.attachments({ network: n.name }).filter((a) => a.state === 'ready');
  const drift = await driver.observe(kernel, dn, attached);
  if (drift.some((d) => d.kind === 'device-missing') && !dn.mac) {
    // Made before ctnet recorded the MAC: the rebuilt device gets a new one, recorded from now on.
    const mac = randomMac();
    applier.record({ kind: 'network.mac', name: n.name, mac });
    Object.assign(dn, { mac });
  }
  for (const d of drift) {
    await applier.apply(driver.planRepair(dn, d));
    if (d.kind === 'device-missing') done.push(`recreated bridge ${n.bridge} of network ${n.name}`);
    if (d.kind === 'port-detached') done.push(`put ${d.sandbox}'s ${d.hostVeth} back on bridge ${n.bridge}`);
    if (d.kind === 'vtep-missing') done.push(`recreated VXLAN device ${dn.overlay?.device} of network ${n.name}, with its ${dn.overlay?.peers.length ?? 0} peers' entries`);
    if (d.kind === 'peer-missing') done.push(`rewrote the entries of peer ${d.peer.host} (${d.peer.subnet} at ${d.peer.underlay}) on network ${n.name}`);
    if (d.kind === 'setting') done.push(`set ${d.key} to ${d.want} again (was ${d.have}: ${d.why})`);
  }
  // A recreated device has no ports: every attachment is plugged in again below.
  // (A macvlan/ipvlan network's device is only the host's shim: its sandboxes hang off the parent.)
  if (drift.some((d) => d.kind === 'device-missing') && !n.lower) {
    for (const a of attached) await replug(ctx, a.sandbox, a.network, done, true);
  } else {
    for (const d of drift) if (d.kind === 'port-missing') await replug(ctx, d.sandbox, n.name, done, false);
  }
  return done;
}

/** Recreates a ready sandbox's own network namespace if it is gone, and plugs its attachments in again. */
export async function repairNetns(ctx: Ctx, s: SandboxRow): Promise<string[]> {
  const { store, kernel, applier } = ctx;
  const done: string[] = [];
  const ns = sandboxNetns(s);
  if (!s.owned || kernel.isNetns(s.netns) || !('name' in ns)) return done;
  await applier.apply([step([{ kind: 'netns.add', name: ns.name }]), step([{ kind: 'link.set.up', name: 'lo', netns: ns }])]);
  done.push(`recreated network namespace of sandbox ${s.name}`);
  for (const a of store.attachments({ sandbox: s.name }).filter((x) => x.state === 'ready')) await replug(ctx, s.name, a.network, done, true);
  return done;
}

/**
 * Plugs a recorded attachment in again: its veth (with its addresses and default routes) in a
 * namespace that still exists. The sandbox's end, if left over, goes first.
 */
async function replug(ctx: Ctx, sandbox: string, network: string, done: string[], always: boolean): Promise<void> {
  const { store, kernel, applier } = ctx;
  const s = store.sandbox(sandbox);
  const a = store.attachments({ sandbox }).find((x) => x.network === network);
  const n = store.network(network);
  if (!s || !a || !n || !kernel.isNetns(s.netns)) return; // someone else's namespace is gone: nothing to rebuild in
  if (!always && (await kernel.link(a.hostVeth))) return;
  const ns = sandboxNetns(s);
  await applier.teardown([step([{ kind: 'link.del', name: a.hostVeth }]), step([{ kind: 'link.del', name: a.ifname, netns: ns }])]);
  const addresses = store.addresses({ sandbox }).filter((x) => x.network === network);
  const defaults = ([4, 6] as const).filter((f) => addresses.some((x) => x.family === f) && defaultCarrier(store, sandbox, f) === network);
  await applier.apply(driverOf(n).planAttach(driverNetwork(store, n), driverAttachment(store, s, a, addresses, defaults), egressLines(store, sandbox, n, addresses)));
  // A new veth has no qdiscs: the recorded shaping goes on again (its ifb is made anew).
  const shaped = store.shaping(sandbox, network);
  if (shaped) {
    if (shaped.rateOut !== undefined) await applier.teardown([step([{ kind: 'link.del', name: ifbName(a.hostVeth) }])]);
    await applier.apply(shapeSteps(store, a, shaped, undefined));
  }
  done.push(`reattached ${sandbox} to network ${network}`);
}
