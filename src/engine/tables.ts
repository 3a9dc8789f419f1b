// ctnet's nft tables as the store says they must be: written whole (gc, and ctnetd's table guard
// after someone flushed or changed them), and compared with what the kernel holds.
import type { KernelBackend } from '../kernel/backend.ts';
import { BRIDGE_TABLE, fullScript, POLICY_SET_NAMES, TABLE, type PolicyElements } from '../nft/ruleset.ts';
import type { Op } from '../plan/ops.ts';
import { step } from '../plan/plan.ts';
import type { Store } from '../store/store.ts';
import { overlayFacts } from '../drivers/vxlan/vxlan.ts';
import type { Ctx } from './context.ts';
import { driverNetwork } from './records.ts';
import { portFacts } from './ports.ts';
import { fullPolicyState, policyElements, type FullPolicyState } from './policy.ts';
import { serviceFacts } from './services.ts';

/** Both tables from scratch, from the store (one nft transaction replaces whatever is there). */
export function tablesScript(store: Store, policy: PolicyElements = policyElements(fullPolicyState(store))): string[] {
  // A macvlan/ipvlan network has nothing in the tables: its sandboxes' packets never pass them.
  const nets = store.networks().filter((n) => !n.lower);
  const endpoints = store.attachments().flatMap((a) => {
    const n = nets.find((x) => x.name === a.network);
    const addresses = store.addresses({ sandbox: a.sandbox }).filter((x) => x.network === a.network);
    // A sandbox's egress address applies to its addresses on networks that masquerade.
    const egress = n && !n.internal ? store.sandboxEgress(a.sandbox) : [];
    return n ? [{ bridge: n.bridge, addresses, port: { name: a.hostVeth, mac: a.mac }, egress }] : [];
  });
  const ports = store.sandboxes().flatMap((s) => portFacts(store, s.name));
  const facts = nets.map((n) => (store.overlay(n.name)
    ? overlayFacts(driverNetwork(store, n))
    : { bridge: n.bridge, internal: n.internal, isolate: n.isolate, hostAccess: n.hostAccess, dns: n.dns, subnets: store.subnets(n.name), egress: store.networkEgress(n.name) }));
  // Services as recorded (their backends are what the record says the kernel holds).
  const services = store.services().map((s) => serviceFacts(s));
  return fullScript(facts, endpoints, ports, policy, services).trimEnd().split('\n');
}

/** Rewrites both tables from the store (with `also`, e.g. forwarding sysctls, in the same step). */
export async function restoreTables(ctx: Ctx, also: readonly Op[] = [], note?: string): Promise<void> {
  const { store, applier } = ctx;
  const policy = fullPolicyState(store);
  await applier.apply([step([...also, { kind: 'nft', lines: tablesScript(store, policyElements(policy)) }], note)]);
  // With no network there is no table, and nothing in its sets.
  applier.record(store.networks().length ? { kind: 'policy.state', state: policy.state } : { kind: 'policy.mirror', sets: new Map() });
}

interface Shape {
  /** Per table: whether it exists. */
  readonly tables: Map<string, boolean>;
  /** "TABLE SET" -> number of elements. */
  readonly sets: Map<string, number>;
  /** "TABLE CHAIN" -> number of rules. */
  readonly rules: Map<string, number>;
}

const emptyShape = (): Shape => ({ tables: new Map([[TABLE, false], [BRIDGE_TABLE, false]]), sets: new Map(), rules: new Map() });

/** The shape a script leaves the tables in (the script ctnet writes: add/delete/flush, elements in braces). */
function scriptShape(lines: readonly string[]): Shape {
  const s = emptyShape();
  const T = `(${TABLE}|${BRIDGE_TABLE})`;
  for (const line of lines) {
    let m: RegExpExecArray | null;
    if ((m = new RegExp(`^add table ${T}$`).exec(line))) s.tables.set(m[1]!, true);
    else if ((m = new RegExp(`^delete table ${T}$`).exec(line))) {
      s.tables.set(m[1]!, false);
      for (const map of [s.sets, s.rules]) for (const k of [...map.keys()]) if (k.startsWith(`${m[1]} `)) map.delete(k);
    } else if ((m = new RegExp(`^add (?:set|map) ${T} (\\S+) `).exec(line))) s.sets.set(`${m[1]} ${m[2]}`, s.sets.get(`${m[1]} ${m[2]}`) ?? 0);
    else if ((m = new RegExp(`^flush (?:set|map) ${T} (\\S+)$`).exec(line))) s.sets.set(`${m[1]} ${m[2]}`, 0);
    else if ((m = new RegExp(`^add chain ${T} (\\S+)`).exec(line))) s.rules.set(`${m[1]} ${m[2]}`, s.rules.get(`${m[1]} ${m[2]}`) ?? 0);
    else if ((m = new RegExp(`^flush chain ${T} (\\S+)$`).exec(line))) s.rules.set(`${m[1]} ${m[2]}`, 0);
    else if ((m = new RegExp(`^add rule ${T} (\\S+) `).exec(line))) s.rules.set(`${m[1]} ${m[2]}`, (s.rules.get(`${m[1]} ${m[2]}`) ?? 0) + 1);
    else if ((m = new RegExp(`^add element ${T} (\\S+) \\{ (.*) \\}$`).exec(line))) {
      s.sets.set(`${m[1]} ${m[2]}`, (s.sets.get(`${m[1]} ${m[2]}`) ?? 0) + m[3]!.split(', ').length);
    }
  }
  return s;
}

/** The shape the kernel's tables have now (counted, not listed: a plan waits for it). */
async function kernelShape(kernel: KernelBackend): Promise<Shape> {
  const s = emptyShape();
  const counts = await kernel.nftCounts();
  for (const [table, c] of [[TABLE, counts.inet], [BRIDGE_TABLE, counts.bridge]] as const) {
    if (!c) continue;
    s.tables.set(table, true);
    for (const [set, n] of c.sets) s.sets.set(`${table} ${set}`, n);
    for (const [chain, n] of c.chains) s.rules.set(`${table} ${chain}`, n);
  }
  return s;
}

/**
 * How the kernel's tables differ from what the store says they must hold: missing tables, chains
 * with other rules, sets with another number of elements. Empty when they agree.
 */
export async function tableDrift(ctx: Pick<Ctx, 'store' | 'kernel'>, options: { fromMirror?: boolean } = {}): Promise<string[]> {
  // fromMirror: the policy sets as last written (the store's mirror) instead of compiling every
  // rule again, which costs seconds with many rules and sandboxes; they differ only while a write is
  // under way. gc and doctor compile; a plan (ctnet diff, apply) takes the mirror.
  let want: Shape;
  if (options.fromMirror) {
    // Only the number of elements is compared: the policy sets' are counted in the store, and the
    // script is made without them (thousands of elements read, written out and split again otherwise).
    want = scriptShape(tablesScript(ctx.store, NO_POLICY));
    if (want.tables.get(TABLE)) for (const [set, n] of ctx.store.policyMirrorCounts()) want.sets.set(`${TABLE} ${set}`, (want.sets.get(`${TABLE} ${set}`) ?? 0) + n);
  } else {
    want = scriptShape(tablesScript(ctx.store));
  }
  const have = await kernelShape(ctx.kernel);
  const out: string[] = [];
  for (const [t, exists] of want.tables) {
    if (exists && !have.tables.get(t)) out.push(`table ${t} is missing`);
    if (!exists && have.tables.get(t)) out.push(`table ${t} exists with no network to serve`);
  }
  for (const [k, n] of want.rules) {
    const got = have.rules.get(k);
    if (have.tables.get(k.split(' ').slice(0, 2).join(' ')) && got !== n) out.push(got === undefined ? `chain ${k} is missing` : `chain ${k} has ${got} rules, not ${n}`);
  }
  for (const [k, n] of want.sets) {
    const got = have.sets.get(k);
    if (have.tables.get(k.split(' ').slice(0, 2).join(' ')) && got !== n) out.push(got === undefined ? `set ${k} is missing` : `set ${k} has ${got} elements, not ${n}`);
  }
  return out;
}

const NO_POLICY = Object.fromEntries(Object.keys(POLICY_SET_NAMES).map((key) => [key, []])) as unknown as PolicyElements;

/**
 * Which of ctnet's two loopback guards the kernel holds: the inet table's `guard` chain and the
 * bridge table's port4 rule (reached from the identity chain). Each keeps sandboxes off the host's
 * 127.0.0.0/8, which route_localnet on a bridge would otherwise let them reach.
 */
export async function loopbackGuards(kernel: KernelBackend): Promise<{ inet: boolean; bridge: boolean }> {
  type Item = { rule?: { chain?: string; expr?: unknown } };
  const rulesOf = (items: Item[] | undefined, chain: string) =>
    (items ?? []).flatMap((i) => (i.rule?.chain === chain ? [JSON.stringify(i.rule.expr)] : []));
  const dropsLoopback = (rule: string) => rule.includes('127.0.0.0') && rule.includes('daddr') && rule.includes('drop');
  const inet = (await kernel.nftTable('inet')) as Item[] | undefined;
  const bridge = (await kernel.nftTable('bridge')) as Item[] | undefined;
  return {
    inet: rulesOf(inet, 'guard').some(dropsLoopback),
    bridge: rulesOf(bridge, 'port4').some(dropsLoopback) && rulesOf(bridge, 'identity').some((r) => r.includes('port4')),
  };
}
