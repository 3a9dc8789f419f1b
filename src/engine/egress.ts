// Egress source addresses (issue 18, point 1): a network's, or one sandbox's, egress leaves from a
// host address the user chose instead of whatever address masquerade picks for the route. The
// kernel side is two nft maps keyed by source (egress_network: subnet intervals; egress_sandbox:
// addresses), looked up once per new connection before the masquerade rule, so a thousand networks
// with their own address cost the same per packet as one.
import { CtnetError, invalid } from '../errors.ts';
import { formatAddr, parseAddr } from '../model/cidr.ts';
import { networkEgressElements, sandboxEgressElements } from '../nft/ruleset.ts';
import { step } from '../plan/plan.ts';
import type { NetworkRow, Store } from '../store/store.ts';
import type { Ctx } from './context.ts';
import { existingNetwork, readySandbox } from './records.ts';

export interface EgressAddress {
  readonly family: 4 | 6;
  readonly ip: string;
}

/** `--egress-ip` values: addresses, at most one per family. */
export function parseEgress(flag: string, raw: readonly string[] | undefined): EgressAddress[] {
  const out: EgressAddress[] = [];
  for (const text of raw ?? []) {
    const a = parseAddr(flag, text);
    if (out.some((e) => e.family === a.family)) throw invalid(`${flag} is given twice for IPv${a.family}`, 'give at most one IPv4 and one IPv6 address');
    out.push({ family: a.family, ip: formatAddr(a.family, a.n) });
  }
  return out;
}

/**
 * `--egress-ip A` (repeatable) or `--no-egress-ip` of an update command: commander folds both into one
 * option, false for the negation; undefined when neither was given.
 */
export function egressUpdate(raw: readonly string[] | false | undefined): EgressAddress[] {
  if (raw === undefined) throw invalid('nothing to change', 'give --egress-ip ADDR or --no-egress-ip');
  return raw === false ? [] : parseEgress('--egress-ip', raw);
}

/** Each address must be one of the host's own: SNAT to another would send replies nowhere. */
export async function checkHostAddresses(ctx: Ctx, flag: string, egress: readonly EgressAddress[]): Promise<void> {
  if (egress.length === 0) return;
  const mine = (await ctx.kernel.addrs()).flatMap((i) => i.addr_info.map((a) => ({ ifname: i.ifname, ip: a.local })));
  for (const e of egress) {
    if (mine.some((m) => m.ip === e.ip)) continue;
    const same = mine.filter((m) => m.ip.includes(':') === (e.family === 6) && !m.ip.startsWith('127.') && m.ip !== '::1' && !m.ip.startsWith('fe80:'));
    throw new CtnetError('INVALID_ARGUMENT', `${flag} ${e.ip} is not an address of this host`,
      `give one of its addresses${same.length ? ` (${same.slice(0, 6).map((m) => `${m.ip} on ${m.ifname}`).join(', ')})` : ''}, or add ${e.ip} to an interface first`);
  }
}

/** A network's egress addresses must match its subnets' families, and it must have a way out. */
export function checkNetworkEgress(n: { name: string; internal: boolean; subnets: readonly { family: 4 | 6 }[] }, egress: readonly EgressAddress[], flag = '--egress-ip'): void {
  if (egress.length === 0) return;
  if (n.internal) throw invalid(`${flag}: network ${n.name} is --internal, nothing leaves it`, `leave ${flag} out`);
  for (const e of egress) {
    if (!n.subnets.some((s) => s.family === e.family)) throw invalid(`${flag} ${e.ip}: network ${n.name} has no IPv${e.family} subnet`, `give an IPv${n.subnets[0]?.family ?? 4} address`);
  }
}

/** The nft lines that move a network's egress from `was` to `now` (deletes first, one transaction). */
function networkLines(store: Store, n: NetworkRow, was: readonly EgressAddress[], now: readonly EgressAddress[]): { lines: string[]; undo: string[] } {
  const subnets = store.subnets(n.name);
  const del = (e: readonly EgressAddress[]) => networkEgressElements('delete', subnets, e);
  const add = (e: readonly EgressAddress[]) => networkEgressElements('add', subnets, e);
  return { lines: [...del(was), ...add(now)], undo: [...del(now), ...add(was)] };
}

function sandboxLines(store: Store, sandbox: string, was: readonly EgressAddress[], now: readonly EgressAddress[]): { lines: string[]; undo: string[] } {
  const addresses = store.addresses({ sandbox }).filter((a) => store.network(a.network)?.internal === false);
  const del = (e: readonly EgressAddress[]) => sandboxEgressElements('delete', addresses, e);
  const add = (e: readonly EgressAddress[]) => sandboxEgressElements('add', addresses, e);
  return { lines: [...del(was), ...add(now)], undo: [...del(now), ...add(was)] };
}

/**
 * Sets (or, with an empty list, clears) the egress addresses of a network or a sandbox. New
 * connections take the new address; established ones keep theirs (conntrack holds their NAT).
 */
export async function setEgress(ctx: Ctx, scope: 'network' | 'sandbox', name: string, egress: readonly EgressAddress[]): Promise<void> {
  const { store, applier } = ctx;
  const flag = '--egress-ip';
  if (scope === 'network') {
    const n = existingNetwork(store, name);
    checkNetworkEgress({ name, internal: n.internal, subnets: store.subnets(name) }, egress);
  } else {
    readySandbox(store, name);
  }
  await checkHostAddresses(ctx, flag, egress);
  await applier.transaction(async (tx) => {
    const plan = tx.decide((rec) => {
      const was = scope === 'network' ? store.networkEgress(name) : store.sandboxEgress(name);
      for (const f of [4, 6] as const) {
        const ip = egress.find((e) => e.family === f)?.ip ?? null;
        if ((was.find((e) => e.family === f)?.ip ?? null) !== ip) rec.record({ kind: 'egress.set', scope, name, family: f, ip });
      }
      return scope === 'network' ? networkLines(store, existingNetwork(store, name), was, egress) : sandboxLines(store, name, was, egress);
    });
    if (plan.lines.length) await tx.run([step([{ kind: 'nft', lines: plan.lines, undo: plan.undo }], `${scope} ${name}: egress ${egress.length ? `from ${egress.map((e) => e.ip).join(', ')}` : 'masqueraded'}`)]);
    tx.commit();
  });
}
