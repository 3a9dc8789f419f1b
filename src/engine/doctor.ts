// `ctnet doctor`: what in this host keeps ctnet's networks from working as configured. Reads only;
// every finding says what breaks and what to do.
import { Applier } from './applier.ts';
import type { Ctx } from './context.ts';
import { gc } from './gc.ts';
import { droppingChains, forwardTargets } from './forward.ts';
import type { ForwardTarget } from '../plan/ops.ts';
import { loopbackGuards, tableDrift } from './tables.ts';
import { resolvedFindings } from './resolved.ts';

export interface Finding {
  readonly check: string;
  readonly status: 'ok' | 'warn' | 'fail';
  readonly detail: string;
  readonly hint?: string;
}

/** daemonPid: the pid of the ctnetd serving this state directory, if one runs (the caller asks the daemon layer). */
export async function doctor(ctx: Ctx, daemonPid: number | undefined): Promise<Finding[]> {
  const { store, kernel } = ctx;
  const read = (key: string) => kernel.sysctl(key);
  const out: Finding[] = [];
  const networks = store.networks();
  const v6 = store.subnets().some((s) => s.family === 6);

  for (const tool of ['ip', 'nft', 'conntrack'] as const) {
    const version = await kernel.toolVersion(tool);
    out.push(version !== undefined
      ? { check: tool, status: 'ok', detail: version }
      : { check: tool, status: 'fail', detail: `${tool} is not installed`, hint: 'run scripts/install.sh' });
  }

  if (networks.length > 0) {
    const fwd = read('net/ipv4/ip_forward');
    out.push(fwd === '1'
      ? { check: 'ip_forward', status: 'ok', detail: 'IPv4 forwarding is on' }
      : { check: 'ip_forward', status: 'fail', detail: 'net.ipv4.ip_forward is 0: no sandbox traffic leaves its bridge', hint: 'run "ctnet gc" (it turns it on again)' });
    if (v6) {
      const f6 = read('net/ipv6/conf/all/forwarding');
      out.push(f6 === '1'
        ? { check: 'ipv6 forwarding', status: 'ok', detail: 'IPv6 forwarding is on' }
        : { check: 'ipv6 forwarding', status: 'fail', detail: 'net.ipv6.conf.all.forwarding is 0: IPv6 sandbox traffic does not leave its bridge', hint: 'run "ctnet gc"' });
    }
  }

  const chains = await kernel.nftChains();
  if (networks.length > 0) {
    const drift = await tableDrift(ctx);
    out.push(drift.length === 0
      ? { check: 'nft table', status: 'ok', detail: 'tables inet ctnet and bridge ctnet hold what the store says' }
      : { check: 'nft table', status: 'fail', detail: `ctnet's tables differ from the store (flushed or changed by someone): ${drift.join('; ')}: isolation, policy, identity or published ports may not hold`, hint: 'run "ctnet gc" to rewrite them from the state (a running ctnetd does it by itself)' });
  }
  out.push(...await hostExposure(ctx));
  out.push(...await lowerReach(ctx));

  // A drop in another table's forward hook wins over ctnet's accept (every base chain must accept).
  const consented = forwardTargets(store);
  const covered = (t: ForwardTarget) => consented.some((c) => c.family === t.family && c.legacy === t.legacy);
  const { fixable, other } = droppingChains(chains);
  for (const t of fixable) {
    const name = `${t.family === 4 ? 'ip' : 'ip6'} filter FORWARD`;
    out.push(covered(t)
      ? { check: 'forward policy', status: 'ok', detail: `chain ${name} drops forwarded packets by default; ctnet's bridges are accepted in it (doctor --fix)` }
      : {
        check: 'forward policy', status: networks.length ? 'fail' : 'warn',
        detail: `chain ${name} drops forwarded packets by default (Docker sets iptables' FORWARD so): egress and published ports of ctnet sandboxes are dropped there`,
        hint: 'run "ctnet doctor --fix": each network then accepts its own bridge in that chain (marked ctnet, removed with the network)',
      });
  }
  for (const c of other) {
    out.push({
      check: 'forward policy', status: networks.length ? 'fail' : 'warn',
      detail: `chain ${c.family} ${c.table} ${c.name} drops forwarded packets by default: egress and published ports of ctnet sandboxes are dropped there`,
      hint: `accept ctnet's bridges in it (ctnet does not edit that table), e.g. nft insert rule ${c.family} ${c.table} ${c.name} iifname "ctbr*" accept; and oifname "ctbr*"`,
    });
  }
  if (fixable.length + other.length === 0) out.push({ check: 'forward policy', status: 'ok', detail: 'no other table drops forwarded packets by default' });
  const legacy = await kernel.legacyForward();
  if (legacy !== undefined && /^-P FORWARD DROP/m.test(legacy)) {
    out.push(covered({ family: 4, legacy: true })
      ? { check: 'iptables-legacy', status: 'ok', detail: 'iptables-legacy FORWARD drops by default; ctnet\'s bridges are accepted in it (doctor --fix)' }
      : { check: 'iptables-legacy', status: networks.length ? 'fail' : 'warn', detail: 'iptables-legacy FORWARD policy is DROP: ctnet\'s sandboxes cannot forward through it',
        hint: 'run "ctnet doctor --fix": each network then accepts its own bridge in that chain (marked ctnet, removed with the network)' });
  }

  const needsBridgeNf = networks.some((n) => n.isolate) || store.policies().length > 0;
  const bnf = read('net/bridge/bridge-nf-call-iptables');
  const bnf6 = read('net/bridge/bridge-nf-call-ip6tables');
  if (bnf === '1' && (bnf6 === '1' || !v6)) {
    out.push({ check: 'br_netfilter', status: 'ok', detail: 'bridged packets pass nftables: same-network policy and --isolate apply' });
  } else {
    out.push({
      check: 'br_netfilter', status: needsBridgeNf ? 'fail' : 'warn',
      detail: bnf === undefined ? 'br_netfilter is not loaded: traffic between sandboxes of one network bypasses nftables' : 'bridge-nf-call-iptables/ip6tables is off: traffic between sandboxes of one network bypasses nftables',
      hint: needsBridgeNf ? 'modprobe br_netfilter; sysctl -w net.bridge.bridge-nf-call-iptables=1 net.bridge.bridge-nf-call-ip6tables=1 (policy rules within one network and --isolate need it)'
        : 'only needed for policy rules within one network and --isolate',
    });
  }

  // What gc would do, done as a dry run: the store and the kernel disagree exactly there.
  const pending = await gc({ ...ctx, applier: new Applier({ backend: kernel, store, dryRun: true, warn: ctx.warn }) });
  out.push(pending.length === 0
    ? { check: 'state', status: 'ok', detail: 'store and kernel agree' }
    : { check: 'state', status: 'warn', detail: `store and kernel disagree: ${pending.join('; ')}`, hint: 'run "ctnet gc"' });

  // ctnetd's fail-closed tables (services/tableguard.ts): while it runs, ctnet's own tables being
  // flushed lets nothing through that they would have checked.
  const failsafe = chains.some((c) => c.table === 'ctnetd' && (c.family === 'inet' || c.family === 'bridge'));
  if (!daemonPid) out.push({ check: 'ctnetd', status: 'ok', detail: 'not running (the CNI plugin starts it on demand; while it runs, it restores ctnet\'s tables when someone flushes them)' });
  else if (failsafe || networks.length === 0) out.push({ check: 'ctnetd', status: 'ok', detail: `runs as pid ${daemonPid}${failsafe ? '; its fail-closed tables (inet and bridge ctnetd) are in place' : ''}` });
  else {
    out.push({
      check: 'ctnetd', status: 'warn', detail: `runs as pid ${daemonPid}, without its fail-closed tables (inet and bridge ctnetd): while ctnet's tables are gone, sandbox traffic passes unchecked until it restores them`,
      hint: `read why in ${ctx.store.dir}/ctnetd.log ("fail-closed"); tables owned by a process need Linux 5.12 or later and an nft that knows "flags owner"`,
    });
  }
  // DNS (services/dns/) is ctnetd's: without it, the resolv.conf of a sandbox names a server that is not there.
  const named = ctx.store.networks().filter((n) => n.dns).map((n) => n.name);
  if (named.length && !daemonPid) {
    out.push({
      check: 'dns', status: 'warn', detail: `network${named.length > 1 ? 's' : ''} ${named.join(', ')} ha${named.length > 1 ? 've' : 's'} DNS on, but ctnetd is not running: their names are not answered`,
      hint: 'start it: ctnet daemon (the CNI plugin and cluster join start it too)',
    });
  } else if (named.length) {
    out.push({ check: 'dns', status: 'ok', detail: `ctnetd answers DNS on the gateways of ${named.join(', ')}` });
  }
  out.push(...await resolvedFindings(ctx));
  return out;
}

/**
 * macvlan/ipvlan networks: whether the host can reach their sandboxes. The kernel hands a frame
 * from a macvlan/ipvlan child to the wire (or to a sibling), never up to the parent's own stack,
 * and the parent's replies never come back down to a child: without a shim, a child of its own on
 * the parent, the host cannot talk to its own sandboxes on that segment, whatever its routes say.
 */
async function lowerReach(ctx: Ctx): Promise<Finding[]> {
  const out: Finding[] = [];
  for (const n of ctx.store.networks().filter((x) => x.lower)) {
    const l = n.lower!;
    const subnet = ctx.store.subnets(n.name)[0]?.cidr ?? '?';
    if (!(await ctx.kernel.link(l.parent))) {
      out.push({ check: `${l.kind} ${n.name}`, status: 'fail', detail: `parent ${l.parent} of network ${n.name} is gone: its sandboxes' interfaces went with it`, hint: `bring ${l.parent} back, then reconnect the sandboxes (ctnet disconnect/connect)` });
    } else if (!l.shimIp) {
      out.push({
        check: `${l.kind} ${n.name}`, status: 'warn',
        detail: `this host cannot reach the sandboxes of network ${n.name} (${subnet} on ${l.parent}): the kernel never passes traffic between a ${l.kind} parent and its children, so packets to them from the host through ${l.parent} go out to the wire and their answers never come back up (the rest of the segment reaches them)`,
        hint: `recreate the network with --host-shim: the host then gets a ${l.kind} of its own on ${l.parent} (${n.bridge}) with an address of ${subnet}, and talks to the sandboxes child to child`,
      });
    } else {
      const shim = await ctx.kernel.link(n.bridge);
      out.push(shim
        ? { check: `${l.kind} ${n.name}`, status: 'ok', detail: `the host reaches the sandboxes of network ${n.name} through its shim ${n.bridge} (${l.shimIp})` }
        : { check: `${l.kind} ${n.name}`, status: 'fail', detail: `host shim ${n.bridge} of network ${n.name} is missing: the host cannot reach its sandboxes`, hint: 'run "ctnet gc" (it makes the shim again)' });
    }
  }
  return out;
}

/**
 * Settings of a network's device (the host's side of its sandboxes' link) that open the host to
 * its sandboxes: accepting their router advertisements, and route_localnet without the rules that
 * keep them off the host's loopback.
 */
async function hostExposure(ctx: Ctx): Promise<Finding[]> {
  const { store, kernel } = ctx;
  const networks = store.networks();
  const ra: Finding[] = [];
  const loopback: Finding[] = [];
  const guards = networks.length ? await loopbackGuards(kernel) : { inet: true, bridge: true };
  for (const n of networks.filter((x) => !x.lower)) {
    const dev = n.bridge;
    const accept = kernel.sysctl(`net/ipv6/conf/${dev}/accept_ra`);
    const forwarding = kernel.sysctl(`net/ipv6/conf/${dev}/forwarding`) === '1';
    // The kernel takes RAs on a link that does not forward when accept_ra is not 0, and on one
    // that forwards when it is 2.
    if (accept !== undefined && accept !== '0') {
      const now = forwarding ? accept === '2' : true;
      ra.push({
        check: 'ra acceptance', status: now ? 'fail' : 'warn',
        detail: now
          ? `bridge ${dev} of network ${n.name} accepts router advertisements (accept_ra=${accept}${forwarding ? '' : ', IPv6 forwarding off'}): a sandbox's RA would give the host an address and a default route through it`
          : `bridge ${dev} of network ${n.name} has accept_ra=${accept}: ignored while it forwards IPv6, but a sandbox's RA would reach the host as soon as forwarding is off`,
        hint: `run "ctnet gc" (it sets accept_ra=0 on ctnet's bridges again), or: sysctl -w net.ipv6.conf.${dev}.accept_ra=0`,
      });
    }
    if (kernel.sysctl(`net/ipv4/conf/${dev}/route_localnet`) === '1' && !(guards.inet && guards.bridge)) {
      const neither = !guards.inet && !guards.bridge;
      loopback.push({
        check: 'loopback guard', status: neither ? 'fail' : 'warn',
        detail: neither
          ? `route_localnet is on for bridge ${dev} of network ${n.name} and both of ctnet's loopback guards are gone (chain guard of inet ctnet, chain port4 of bridge ctnet): its sandboxes can reach services bound to the host's 127.0.0.1`
          : `route_localnet is on for bridge ${dev} of network ${n.name} and only one loopback guard holds (${guards.inet ? 'inet ctnet\'s guard chain' : 'bridge ctnet\'s port4 rule'}): one more flush and its sandboxes reach the host's 127.0.0.1`,
        hint: 'run "ctnet gc" to write the guards again, or start ctnetd ("ctnet daemon"): its table guard restores them by itself',
      });
    }
  }
  return [
    ...(ra.length ? ra : [{ check: 'ra acceptance', status: 'ok' as const, detail: 'no ctnet bridge accepts router advertisements from sandboxes' }]),
    ...(loopback.length ? loopback : [{ check: 'loopback guard', status: 'ok' as const, detail: 'sandboxes are kept off the host\'s loopback (route_localnet is on only where both guards hold)' }]),
  ];
}
