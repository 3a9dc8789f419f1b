// Reconciles the kernel with the store after a crash: finishes or undoes interrupted operations,
// recreates what a ready record says must exist, removes ctnet-marked objects nobody records, and
// rewrites ctnet's nft table from the store.
import { addrAdd, linkAddBridge, linkDel, linkList, linkSetUp, netnsAdd, netnsDel, runIp } from '../kernel/ip.ts';
import { nftApply } from '../kernel/nft.ts';
import { isAlive } from '../kernel/proc.ts';
import { isNetnsFile, netnsKillAll, netnsNames } from '../kernel/netns.ts';
import { sysctlEnsure, sysctlRead } from '../kernel/sysctl.ts';
import { randomMac } from '../model/mac.ts';
import { fullScript } from '../nft/ruleset.ts';
import type { Ctx } from './context.ts';
import { BRIDGE_PREFIX, netnsPrefix, VETH_PREFIX } from './naming.ts';
import { bridgeSysctls, networkFacts, teardownNetwork } from './network.ts';
import { attachCommands, defaultCarrier, sandboxNetns, teardownAttachment, teardownSandbox } from './sandbox.ts';
import { ignoreMissing } from './undo.ts';
import { portFacts } from './ports.ts';
import { elementsBySet, policyElements } from './policy.ts';

/** Rows another live ctnet process is working on right now are left to it. */
const interrupted = (r: { state: string; owner: string | null }) => r.state !== 'ready' && !(r.owner && isAlive(r.owner));

export async function gc(ctx: Ctx): Promise<string[]> {
  const { store, runner } = ctx;
  const done: string[] = [];

  // 1. Interrupted operations are rolled back: their records go, with their addresses.
  for (const s of store.sandboxes().filter(interrupted)) {
    await teardownSandbox(ctx, s);
    if (!runner.dryRun) store.write(() => store.deleteSandbox(s.name));
    done.push(`removed sandbox ${s.name} (${s.state} when its ctnet stopped)`);
  }
  for (const a of store.attachments().filter(interrupted)) {
    await teardownAttachment(ctx, a, store.addresses({ sandbox: a.sandbox }).filter((x) => x.network === a.network));
    if (!runner.dryRun) store.write(() => store.deleteAttachment(a.sandbox, a.network));
    done.push(`removed ${a.sandbox}'s attachment to ${a.network} (${a.state} when its ctnet stopped)`);
  }
  // A namespace someone else made is only a sandbox while ctnet networks it (CNI, connect --netns).
  for (const s of store.sandboxes().filter((x) => !x.owned && x.state === 'ready' && store.attachments({ sandbox: x.name }).length === 0)) {
    if (!runner.dryRun) store.write(() => store.deleteSandbox(s.name));
    done.push(`forgot sandbox ${s.name} (someone else's namespace, no longer attached)`);
  }
  for (const n of store.networks().filter(interrupted)) {
    for (const a of store.attachments({ network: n.name })) {
      await teardownAttachment(ctx, a, store.addresses({ sandbox: a.sandbox }).filter((x) => x.network === n.name));
      if (!runner.dryRun) store.write(() => store.deleteAttachment(a.sandbox, n.name));
    }
    await teardownNetwork(ctx, n);
    if (!runner.dryRun) store.write(() => store.deleteNetwork(n.name));
    done.push(`removed network ${n.name} (${n.state} when its ctnet stopped)`);
  }

  // 2. Ready records whose kernel objects went missing are rebuilt.
  const ready = store.networks().filter((n) => n.state === 'ready');
  // Forwarding is what every network needs; someone may have turned it off.
  if (ready.length > 0) {
    for (const [key, need] of [['net.ipv4.ip_forward', true], ['net.ipv6.conf.all.forwarding', store.subnets().some((s) => s.family === 6)]] as const) {
      if (need && sysctlRead(key) !== '1') {
        sysctlEnsure(runner, key, '1');
        done.push(`turned ${key} on again`);
      }
    }
  }
  let links = await linkList(runner);
  for (const n of ready) {
    const subnets = store.subnets(n.name);
    if (links.some((l) => l.ifname === n.bridge)) {
      bridgeSysctls(ctx, n.bridge, subnets.some((s) => s.family === 4)); // bridges made before ctnet set it
      continue;
    }
    sysctlEnsure(runner, 'net.ipv4.ip_forward', '1');
    if (subnets.some((s) => s.family === 6)) sysctlEnsure(runner, 'net.ipv6.conf.all.forwarding', '1');
    await runIp(runner, [
      linkAddBridge(n.bridge, { address: randomMac(), mtu: n.mtu ?? undefined }),
      ...subnets.map((s) => addrAdd(`${s.gateway}/${s.cidr.split('/')[1]}`, n.bridge)),
      linkSetUp(n.bridge),
    ]);
    bridgeSysctls(ctx, n.bridge, subnets.some((s) => s.family === 4));
    done.push(`recreated bridge ${n.bridge} of network ${n.name}`);
  }
  links = await linkList(runner);
  for (const s of store.sandboxes().filter((x) => x.state === 'ready')) {
    const ns = sandboxNetns(s);
    if (!isNetnsFile(s.netns)) {
      if (!s.owned || !('name' in ns)) continue; // someone else's namespace is gone: nothing to rebuild in
      await runIp(runner, [netnsAdd(ns.name)]);
      await runIp(runner, [linkSetUp('lo', ns)]);
      done.push(`recreated network namespace of sandbox ${s.name}`);
      links = links.filter((l) => !store.attachments({ sandbox: s.name }).some((a) => a.hostVeth === l.ifname));
    }
    for (const a of store.attachments({ sandbox: s.name }).filter((x) => x.state === 'ready')) {
      if (links.some((l) => l.ifname === a.hostVeth)) continue;
      const network = store.network(a.network)!;
      const addresses = store.addresses({ sandbox: s.name }).filter((x) => x.network === a.network);
      const inner = await linkList(runner, ns);
      if (inner.some((l) => l.ifname === a.ifname)) await ignoreMissing(() => runIp(runner, [linkDel(a.ifname, ns)]));
      const defaults = ([4, 6] as const).filter((f) => addresses.some((x) => x.family === f) && defaultCarrier(store, s.name, f) === a.network);
      const { host, inside } = attachCommands(ctx, ns, { attachment: a, network, addresses, defaults });
      await runIp(runner, [...host, ...inside]);
      done.push(`reattached ${s.name} to network ${a.network}`);
    }
  }

  // 3. ctnet-marked objects that no record owns.
  const bridges = new Set(store.networks().map((n) => n.bridge));
  const veths = new Set(store.attachments().map((a) => a.hostVeth));
  for (const l of await linkList(runner)) {
    const orphanBridge = l.ifname.startsWith(BRIDGE_PREFIX) && l.linkinfo?.info_kind === 'bridge' && !bridges.has(l.ifname);
    const orphanVeth = l.ifname.startsWith(VETH_PREFIX) && l.linkinfo?.info_kind === 'veth' && !veths.has(l.ifname);
    if (orphanBridge || orphanVeth) {
      await ignoreMissing(() => runIp(runner, [linkDel(l.ifname)]));
      done.push(`removed ${l.ifname}, which no record owns`);
    }
  }
  const prefix = netnsPrefix(store.instance);
  const known = new Set(store.sandboxes().map((s) => s.netns));
  for (const name of netnsNames()) {
    if (!name.startsWith(prefix) || known.has(`/run/netns/${name}`)) continue;
    if (runner.willChange(`ip netns pids ${name} | xargs -r kill -KILL`)) netnsKillAll({ name });
    await ignoreMissing(() => runIp(runner, [netnsDel(name)]));
    done.push(`removed netns ${name}, which no record owns`);
  }

  // 4. The nft table, rewritten from the store in one transaction.
  const nets = store.networks();
  const endpoints = store.attachments().flatMap((a) => {
    const n = nets.find((x) => x.name === a.network);
    return n ? [{ bridge: n.bridge, addresses: store.addresses({ sandbox: a.sandbox }).filter((x) => x.network === a.network) }] : [];
  });
  const ports = store.sandboxes().flatMap((s) => portFacts(store, s.name));
  const policy = policyElements(store);
  await nftApply(runner, fullScript(nets.map((n) => networkFacts(ctx, n)), endpoints, ports, policy));
  if (!runner.dryRun) store.write(() => store.setPolicyMirror(nets.length ? elementsBySet(policy) : new Map()));
  return done;
}
