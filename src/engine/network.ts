// Use cases for networks: create and remove a bridge network.
import { CtnetError } from '../errors.ts';
import { addrAdd, linkAddBridge, linkDel, linkList, linkSetUp, routeList, runIp } from '../kernel/ip.ts';
import { nftApply } from '../kernel/nft.ts';
import { ipv4ConfKey, sysctlEnsure } from '../kernel/sysctl.ts';
import { overlaps, parseSubnet } from '../model/cidr.ts';
import { randomMac } from '../model/mac.ts';
import type { NetworkSpec } from '../model/spec.ts';
import { baseScript, dropTableScript, networkElements, type NetworkFacts } from '../nft/ruleset.ts';
import type { NetworkRow } from '../store/store.ts';
import type { Ctx } from './context.ts';
import { bridgeName } from './naming.ts';
import { applyNftDelete } from './nftops.ts';
import { crashPoint, ignoreMissing, transaction } from './undo.ts';
import { disconnect } from './sandbox.ts';
import { syncPolicy } from './policy.ts';

export function networkFacts(ctx: Ctx, n: NetworkRow): NetworkFacts {
  return { bridge: n.bridge, internal: n.internal, isolate: n.isolate, subnets: ctx.store.subnets(n.name) };
}

/**
 * Published ports reached at 127.0.0.1 are DNATed to a sandbox behind this bridge: the kernel only
 * routes a loopback source out of an interface with route_localnet (the guard chain keeps sandboxes
 * themselves off the host's loopback).
 */
export function bridgeSysctls(ctx: Ctx, bridge: string, ipv4: boolean): void {
  if (ipv4) sysctlEnsure(ctx.runner, ipv4ConfKey(bridge, 'route_localnet'), '1');
}

export async function createNetwork(ctx: Ctx, spec: NetworkSpec): Promise<NetworkRow> {
  const { store, runner } = ctx;
  const bridge = spec.bridge ?? bridgeName(spec.name);
  // Read the kernel before deciding: an interface or route already there is a conflict.
  const links = await linkList(runner);
  const routes = await routeList(runner);
  const ours = new Set(store.networks().map((n) => n.bridge));

  const row = store.write(() => {
    if (store.network(spec.name)) {
      throw new CtnetError('CONFLICT', `network ${spec.name} exists already`, `choose another name, or remove it with "ctnet network rm ${spec.name}"`);
    }
    const holder = store.networkByBridge(bridge);
    if (holder) throw new CtnetError('CONFLICT', `bridge ${bridge} belongs to network ${holder.name}`, 'choose another --bridge');
    if (links.some((l) => l.ifname === bridge)) {
      throw new CtnetError('CONFLICT', `an interface named ${bridge} exists already`, 'choose another --bridge (or network name)');
    }
    for (const s of spec.subnets) {
      for (const other of store.subnets()) {
        if (overlaps(s.subnet, parseSubnet('subnet', other.cidr))) {
          throw new CtnetError('CONFLICT', `subnet ${s.cidr} overlaps ${other.cidr} of network ${other.network}`, 'choose a subnet that no other network uses');
        }
      }
      for (const r of routes) {
        if (r.dst === 'default' || !r.dst || (r.dev && ours.has(r.dev))) continue;
        const dst = r.dst.includes('/') ? r.dst : `${r.dst}/${r.dst.includes(':') ? 128 : 32}`;
        let routed;
        try {
          routed = parseSubnet('route', normalise(dst));
        } catch {
          continue; // multicast, link-local and such: not something a subnet competes with
        }
        if (overlaps(s.subnet, routed)) {
          throw new CtnetError('CONFLICT', `subnet ${s.cidr} overlaps ${r.dst}, routed via ${r.dev ?? r.gateway} on this host`, 'choose a subnet this host does not already reach');
        }
      }
    }
    const n = { name: spec.name, bridge, internal: spec.internal, isolate: spec.isolate, mtu: spec.mtu ?? null, state: 'creating' as const };
    store.insertNetwork(n, spec.subnets.map((s) => ({ cidr: s.cidr, family: s.subnet.family, gateway: s.gateway })));
    return { ...n, owner: null, created: new Date().toISOString() };
  }, { rollback: runner.dryRun });
  crashPoint();

  await transaction(async (undo) => {
    runner.note(`network ${spec.name}: bridge ${bridge} with ${spec.subnets.map((s) => `${s.cidr} (gateway ${s.gateway})`).join(', ')}`);
    sysctlEnsure(runner, 'net.ipv4.ip_forward', '1');
    if (spec.subnets.some((s) => s.subnet.family === 6)) sysctlEnsure(runner, 'net.ipv6.conf.all.forwarding', '1');
    await nftApply(runner, baseScript());
    crashPoint();
    undo.push(`bridge ${bridge}`, () => ignoreMissing(() => runIp(runner, [linkDel(bridge)])));
    await runIp(runner, [
      // A fixed MAC: otherwise the bridge takes its lowest port's and changes as sandboxes come and go.
      linkAddBridge(bridge, { address: randomMac(), mtu: spec.mtu }),
      ...spec.subnets.map((s) => addrAdd(`${s.gateway}/${s.subnet.prefix}`, bridge)),
      linkSetUp(bridge),
    ]);
    bridgeSysctls(ctx, bridge, spec.subnets.some((s) => s.subnet.family === 4));
    crashPoint();
    const facts = { bridge, internal: spec.internal, isolate: spec.isolate, subnets: spec.subnets.map((s) => ({ family: s.subnet.family, cidr: s.cidr })) };
    undo.push(`nft elements of ${bridge}`, () => applyNftDelete(runner, networkElements('delete', facts)));
    await nftApply(runner, networkElements('add', facts).join('\n') + '\n');
    crashPoint();
    if (!runner.dryRun) store.write(() => store.setNetworkState(spec.name, 'ready'));
  }, ctx.warn).catch((e) => {
    if (!runner.dryRun) store.write(() => store.deleteNetwork(spec.name));
    throw e;
  });
  await syncPolicy(ctx); // "world" and net: selectors depend on the networks
  return { ...row, state: 'ready' };
}

/** Routes print host routes without a prefix and IPv4 networks unpadded (10/8); make a CIDR. */
function normalise(dst: string): string {
  const [addr, len] = dst.split('/');
  if (!addr!.includes(':') && addr!.split('.').length < 4) {
    return `${[...addr!.split('.'), '0', '0', '0'].slice(0, 4).join('.')}/${len}`;
  }
  return dst;
}

export function getNetwork(ctx: Ctx, name: string): NetworkRow {
  const n = ctx.store.network(name);
  if (!n) throw new CtnetError('NOT_FOUND', `no network named ${name}`, 'list networks with "ctnet network ls"');
  return n;
}

export async function removeNetwork(ctx: Ctx, name: string, options: { force: boolean }): Promise<void> {
  const { store, runner } = ctx;
  const n = store.network(name);
  if (!n) return; // already gone: removing it again succeeds
  const attached = store.attachments({ network: name });
  if (attached.length > 0 && !options.force) {
    throw new CtnetError('IN_USE', `network ${name} is in use by ${attached.map((a) => a.sandbox).join(', ')}`,
      `disconnect or remove them first, or use "ctnet network rm --force ${name}"`);
  }
  for (const a of attached) await disconnect(ctx, name, a.sandbox);
  if (!runner.dryRun) store.write(() => store.setNetworkState(name, 'removing'));
  crashPoint();
  await teardownNetwork(ctx, n);
  if (!runner.dryRun) store.write(() => store.deleteNetwork(name));
  if (store.networks().length > 0) await syncPolicy(ctx);
}

/** Removes a network's kernel objects; idempotent. Also drops ctnet's table with the last network. */
export async function teardownNetwork(ctx: Ctx, n: NetworkRow): Promise<void> {
  const { runner, store } = ctx;
  runner.note(`remove network ${n.name}`);
  await applyNftDelete(runner, networkElements('delete', networkFacts(ctx, n)));
  crashPoint();
  await ignoreMissing(() => runIp(runner, [linkDel(n.bridge)]));
  crashPoint();
  if (store.networks().every((o) => o.name === n.name)) {
    await nftApply(runner, dropTableScript());
    if (!runner.dryRun) store.write(() => store.setPolicyMirror(new Map()));
  }
}
