// Use cases for network policy: rules (allow/deny between selectors), labels, and keeping the
// kernel's policy sets equal to what the rules say about the sandboxes that exist now.
import ipaddr from 'ipaddr.js';
import { CtnetError } from '../errors.ts';
import { addrToBigint, parseAddr, parseSubnet, type Family } from '../model/cidr.ts';
import { parseName } from '../model/names.ts';
import {
  boxText, checkRuleSelectors, compile, decide, formatPortFilter, formatSelector, hostBoxText, parsePortFilter, parseSelector, PROTO_NUMBERS, ruleBoxes, ruleBoxesTouching,
  type Action, type Box, type CompiledBox, type Decision, type PolicyRule, type PolicySandbox, type PolicyTarget, type PolicyWorld, type Selector,
} from '../model/policy.ts';
import { boxKey, recompile, ruleBoxChange, type JudgedBox, type PolicyRegion, type RuleBoxChange } from '../model/policy-inc.ts';
import { POLICY_SET_NAMES, policyLines, TABLE, type PolicyElements } from '../nft/ruleset.ts';
import { step } from '../plan/plan.ts';
import type { PolicyBoxRow, PolicyElementRow, PolicyRow, PolicyState, Store } from '../store/store.ts';
import type { Transaction } from './applier.ts';
import type { Ctx } from './context.ts';
import { syncServices } from './services.ts';

const rangeOf = (cidr: string) => {
  const sub = parseSubnet('subnet', cidr);
  const bits = sub.family === 4 ? 32 : 128;
  return { family: sub.family, start: sub.network, end: sub.network + (1n << BigInt(bits - sub.prefix)) - 1n };
};

/**
 * The networks and sandboxes (without sandboxes: the networks only, what net:, world and the
 * defaults need) as the policy model sees them (plain data): this host's, and the other
 * hosts' sandboxes on overlay networks (the directory's mirror, services/directory.ts), so labels
 * and sandbox names select them too. An overlay network stands for its whole subnet (every host's
 * lease), not only this host's: net:NAME and the same-network default cover the sandboxes of
 * every host on it.
 */
export function policyWorld(store: Store, options: { sandboxes?: boolean } = {}): PolicyWorld {
  const withSandboxes = options.sandboxes ?? true;
  const labels = withSandboxes ? store.labels() : [];
  const overlays = store.overlays().map((o) => ({ network: o.network, range: rangeOf(o.cidr) }));
  const remote = (withSandboxes ? store.remoteSandboxes() : []).map((r): PolicySandbox => ({
    name: r.name,
    labels: r.labels,
    addresses: r.addresses.flatMap((ip) => {
      let a;
      try {
        a = parseAddr('address', ip);
      } catch {
        return []; // the mirror holds what keys.ts checked; an odd row selects nothing rather than failing every policy
      }
      // The network by the overlay that holds the address (one this host has a side of), else its first.
      const network = overlays.find((o) => o.range.family === a.family && o.range.start <= a.n && a.n <= o.range.end)?.network ?? r.networks[0] ?? '';
      return [{ family: a.family, n: a.n, network }];
    }),
  }));
  return {
    networks: store.networks().map((n) => {
      const overlay = overlays.find((o) => o.network === n.name);
      return {
        name: n.name, internal: n.internal, isolate: n.isolate, hostAccess: n.hostAccess,
        subnets: overlay ? [overlay.range] : store.subnets(n.name).map((s) => rangeOf(s.cidr)),
      };
    }),
    sandboxes: [
      ...(withSandboxes ? store.sandboxes() : []).map((s) => ({
        name: s.name,
        labels: Object.fromEntries(labels.filter((l) => l.sandbox === s.name).map((l) => [l.key, l.value])),
        addresses: store.addresses({ sandbox: s.name }).map((a) => ({ family: a.family, n: parseAddr('address', a.ip).n, network: a.network })),
      })),
      ...remote,
    ],
  };
}

export function toRule(r: PolicyRow): PolicyRule {
  return {
    id: r.id, name: r.name, action: r.action,
    from: parseSelector('from', r.from), to: parseSelector('to', r.to),
    port: r.port === null ? undefined : parsePortFilter(r.port),
  };
}

/** Each policy set: which rules (action, target) fill it, for which family. */
const SETS = (Object.keys(POLICY_SET_NAMES) as (keyof PolicyElements)[]).map((key) => {
  const m = /^(host)?(allow|deny)([46])$/i.exec(key)!;
  return {
    key, set: POLICY_SET_NAMES[key],
    action: m[2]!.toLowerCase() as Action, family: Number(m[3]) as 4 | 6, target: (m[1] ? 'host' : 'forward') as PolicyTarget,
  };
});
type SetDef = (typeof SETS)[number];

const elementText = (s: SetDef, box: Box) => (s.target === 'host' ? hostBoxText : boxText)(box, s.family);

/** Every rule compiled from scratch: each set's elements with their boxes and owners, and every rule's boxes. */
export interface FullPolicyState {
  readonly state: PolicyState;
}

export function fullPolicyState(store: Store, parsed?: ReadonlyMap<number, PolicyRule | undefined>): FullPolicyState {
  const rules = store.policies().map((r) => parsed?.get(r.id) ?? toRule(r));
  const world = policyWorld(store);
  const compiled = new Map<string, PolicyElementRow[]>();
  const raw = new Map<string, PolicyBoxRow[]>();
  for (const s of SETS) {
    const r: CompiledBox[] = [];
    compiled.set(s.set, compile(rules, s.action, world, s.family, s.target, r).map((b) => ({ ...b, element: elementText(s, b.box) })));
    raw.set(s.set, r);
  }
  return { state: { compiled, raw } };
}

/** The elements of every policy set, for the rules and sandboxes in the store now. */
export function policyElements(full: FullPolicyState): PolicyElements {
  return Object.fromEntries(SETS.map((s) => [s.key, (full.state.compiled.get(s.set) ?? []).map((b) => b.element)])) as unknown as PolicyElements;
}

/**
 * The policy sets' elements as last written to the kernel (the store's mirror), without compiling
 * a rule: what ctnet's tables hold now, unless a write is under way or they were changed behind
 * ctnet's back. A full compile of 10,000 rules takes a few hundred ms; this reads one table.
 */
export function mirrorElements(store: Store): PolicyElements {
  const mirror = store.policyMirrorLists();
  return Object.fromEntries(SETS.map((s) => [s.key, mirror.get(s.set) ?? []])) as unknown as PolicyElements;
}

export function elementsBySet(e: PolicyElements): Map<string, readonly string[]> {
  return new Map(Object.entries(POLICY_SET_NAMES).map(([k, name]) => [name, e[k as keyof PolicyElements]]));
}

/** Adds nft lines for elements of a set, 500 to a line. */
function elementLines(lines: string[], verb: 'add' | 'delete', set: string, elements: readonly string[]): void {
  for (let i = 0; i < elements.length; i += 500) lines.push(`${verb} element ${TABLE} ${set} { ${elements.slice(i, i + 500).join(', ')} }`);
}

/**
 * Deleting interval elements costs the kernel time in proportion to the set size, each: past a
 * few dozen, flushing and refilling the set is faster (10,000 elements: ~1 s against ~70 s).
 */
const MAX_DELETES = 32;

/**
 * Brings the kernel's policy sets to a full compile's state in one nft transaction (no packet sees
 * half a policy), sending only the difference from the mirror in the store. If the kernel no
 * longer matches the mirror (its table was flushed), the difference fails and every set is
 * rewritten instead. Call inside store.writeAsync, which serialises this with every other ctnet process.
 */
async function applyFull(ctx: Ctx, full: FullPolicyState = fullPolicyState(ctx.store)): Promise<void> {
  const { store } = ctx;
  const have = store.policyMirror();
  const target = elementsBySet(policyElements(full));
  const lines: string[] = [];
  const adds: [string, string[]][] = [];
  for (const [set, elements] of target) {
    const had = have.get(set) ?? new Set<string>();
    const wanted = new Set(elements);
    const gone = [...had].filter((e) => !wanted.has(e));
    if (gone.length > MAX_DELETES) {
      lines.push(`flush set ${TABLE} ${set}`);
      adds.push([set, [...elements]]);
    } else {
      elementLines(lines, 'delete', set, gone);
      adds.push([set, elements.filter((e) => !had.has(e))]);
    }
  }
  for (const [set, elements] of adds) elementLines(lines, 'add', set, elements);
  await sendPolicy(ctx, lines, () => full);
  store.setPolicyState(full.state);
}

/** Applies policy lines; if they fail (the kernel's sets differ from the mirror), rewrites every set from a full compile. */
async function sendPolicy(ctx: Ctx, lines: readonly string[], full: () => FullPolicyState): Promise<void> {
  if (lines.length === 0) return;
  try {
    await ctx.applier.apply([step([{ kind: 'nft', lines: [...lines] }], 'policy: update the policy sets')]);
  } catch {
    const f = full();
    await ctx.applier.apply([step([{ kind: 'nft', lines: policyLines(policyElements(f)) }], 'policy: the sets differ from the record; rewrite them whole')]);
    ctx.store.setPolicyState(f.state);
  }
}

/**
 * Whether looking up what `changed` rules touch beats compiling every rule: a few rules always do;
 * a rules file does while it is small next to the rules there are (each changed box costs a few
 * index queries, a full compile a few tens of µs per rule).
 */
const incremental = (changed: number, rules: () => number) => changed <= 64 || changed * 4 <= rules();

/** Addresses by family (a sandbox's, before and after a change). */
export type AddressPoints = ReadonlyMap<Family, readonly bigint[]>;

/** Where a change may have moved a policy decision: the freed regions of the sets it touched. */
export type PolicyRegions = readonly PolicyRegion[];

/**
 * The incremental path: the rules in `changed` were added, removed (undefined) or now resolve to
 * other addresses; only the boxes they touch are recomputed (model/policy-inc.ts), through the
 * index in the store, and only the difference goes to the kernel, in one nft transaction.
 * With `touching`, only the rules' boxes through those addresses are compared (a sandbox's change).
 * Returns the regions whose decisions may have changed, or undefined after a full compile (every
 * decision may have). Call inside store.writeAsync.
 */
async function applyChanged(ctx: Ctx, changed: ReadonlyMap<number, PolicyRule | undefined>, touching?: AddressPoints): Promise<PolicyRegions | undefined> {
  const { store } = ctx;
  if (changed.size === 0) return [];
  if (!store.policyIndexReady() || !incremental(changed.size, () => store.policyCount())) { // count(*) reads every row: only for a rules file
    await applyFull(ctx, fullPolicyState(store, changed));
    return undefined;
  }
  const world = lazyWorld(store);
  const lines: string[] = [];
  const adds: string[] = [];
  const regions: PolicyRegion[] = [];
  for (const s of SETS) {
    const mine = new Map<number, RuleBoxChange>();
    for (const [id, rule] of changed) {
      const points = touching?.get(s.family) ?? [];
      const selects = rule !== undefined && rule.action === s.action;
      // With `touching`, both sides only through those addresses: nothing else of the rule moved.
      const now = !selects ? [] : touching ? ruleBoxesTouching(rule, world(rule), s.family, s.target, points) : ruleBoxes(rule, world(rule), s.family, s.target);
      const was = (touching ? store.policyRawTouching(s.set, id, points) : store.policyBoxesOf('raw', s.set, id)).map((r) => r.box);
      const change = ruleBoxChange(was, now);
      if (change.removed.length === 0 && change.added.length === 0) continue;
      // Only the rows that changed: a label rule at 500 sandboxes has ~55,000 boxes, and a new
      // member adds a few hundred (rewriting them all took seconds per create).
      if (now.length === 0 && !touching) store.deletePolicyRaw(s.set, id);
      else for (const box of change.removed) store.deletePolicyRawBox(s.set, id, box);
      for (const box of change.added) store.insertPolicyRaw(s.set, { rule: id, box });
      mine.set(id, change);
    }
    if (mine.size === 0) continue;
    const delta = recompile({
      compiledMeeting: (b) => store.policyBoxesMeeting('compiled', s.set, b),
      ownedBy: (rule) => store.policyBoxesOf('compiled', s.set, rule),
      rawMeeting: (b) => store.policyBoxesMeeting('raw', s.set, b),
    }, mine);
    const gone = delta.remove.map((c) => elementText(s, c.box));
    const added = delta.add.map((c) => ({ ...c, element: elementText(s, c.box) }));
    for (const e of gone) store.deletePolicyElement(s.set, e);
    for (const c of added) store.insertPolicyElement(s.set, c.element, c);
    if (gone.length > MAX_DELETES) {
      lines.push(`flush set ${TABLE} ${s.set}`);
      elementLines(adds, 'add', s.set, store.policySetElements(s.set));
    } else {
      elementLines(lines, 'delete', s.set, gone);
      elementLines(adds, 'add', s.set, added.map((c) => c.element));
    }
    for (const box of delta.region) regions.push({ family: s.family, target: s.target, box });
  }
  await sendPolicy(ctx, [...lines, ...adds], () => fullPolicyState(store));
  return regions;
}

/**
 * The world a rule's selectors resolve against, read once and only if needed: CIDRs need nothing,
 * net: and world the networks, sandbox names and labels the sandboxes too.
 */
function lazyWorld(store: Store): (r: PolicyRule) => PolicyWorld {
  let networks: PolicyWorld | undefined;
  let whole: PolicyWorld | undefined;
  const needs = (sel: Selector) => (sel.kind === 'sandbox' || sel.kind === 'label' ? 2 : sel.kind === 'net' || sel.kind === 'world' ? 1 : 0);
  return (r) => {
    const need = Math.max(needs(r.from), needs(r.to));
    if (need === 2) return (whole ??= policyWorld(store));
    if (need === 1) return whole ?? (networks ??= policyWorld(store, { sandboxes: false }));
    return EMPTY_WORLD;
  };
}
const EMPTY_WORLD: PolicyWorld = { networks: [], sandboxes: [] };

/** Brings the policy sets up to date with the store (every rule compiled); with cut, connections now denied end. */
export async function syncPolicy(ctx: Ctx, options: { cut?: boolean; tx?: Transaction } = {}): Promise<void> {
  // Inside an operation's transaction: if it fails later, the sets are derived again from the
  // store as its rollback leaves it.
  options.tx?.recompute.push(() => syncPolicy(ctx));
  const { store, applier } = ctx;
  // Services' backends are derived from the same sandboxes and labels: kept up to date alongside.
  await syncServices(ctx);
  if (store.policyCount() === 0 && store.policyMirror().size === 0) return; // nothing to keep up
  await store.writeAsync(() => applyFull(ctx), { rollback: applier.dryRun });
  if (options.cut) await cutDeniedFlows(ctx);
}

/**
 * Brings the policy sets up to date after a sandbox's records changed (created, attached,
 * detached, removed): only rules that select it by name or by one of its labels resolve to other
 * addresses (net:, world and CIDRs do not depend on sandboxes), so only they are recomputed, as a
 * label change does, and of each only the boxes through its addresses. `was`: its labels and
 * addresses before the change, when its records are (partly) gone already. A full
 * compile here cost seconds per `ctnet create` at 500 sandboxes under two label rules, in
 * ctnetd's one thread (the live page's update waited behind it). Connections are not cut: this
 * is called where syncPolicy without `cut` was.
 */
export async function syncSandboxPolicy(ctx: Ctx, sandbox: string, options: { tx?: Transaction; was?: SandboxPolicyFacts } = {}): Promise<void> {
  options.tx?.recompute.push(() => syncPolicy(ctx));
  const { store, applier } = ctx;
  await syncServices(ctx);
  const now = sandboxPolicyFacts(store, sandbox);
  const labels = [...now.labels, ...(options.was?.labels ?? [])];
  const rules = store.policiesBySelector([sandbox, ...labels.map((l) => `label:${l.key}=${l.value}`)]);
  if (rules.length === 0) return;
  const points = new Map<Family, bigint[]>([[4, []], [6, []]]);
  for (const ip of new Set([...now.addresses, ...(options.was?.addresses ?? [])])) {
    const a = parseAddr('address', ip);
    points.get(a.family)!.push(a.n);
  }
  await store.writeAsync(() => applyChanged(ctx, new Map(rules.map((r) => [r.id, toRule(r)])), points), { rollback: applier.dryRun });
}

/** What of a sandbox its policy depends on: its labels and addresses (taken before its records go). */
export interface SandboxPolicyFacts {
  readonly labels: readonly { key: string; value: string }[];
  readonly addresses: readonly string[];
}
export function sandboxPolicyFacts(store: Store, sandbox: string): SandboxPolicyFacts {
  return { labels: store.labels(sandbox), addresses: store.addresses({ sandbox }).map((a) => a.ip) };
}

/**
 * Brings the policy sets up to date after the rules in `ids` changed how they resolve (a label),
 * recomputing only what they touch; connections the change now denies end.
 */
async function syncRules(ctx: Ctx, ids: readonly number[]): Promise<void> {
  const { store, applier } = ctx;
  const regions = await store.writeAsync(async () => {
    const changed = new Map(ids.map((id) => {
      const row = store.policy(id);
      return [id, row && toRule(row)] as const;
    }));
    return applyChanged(ctx, changed);
  }, { rollback: applier.dryRun });
  await cutFlowsIn(ctx, regions);
}

/**
 * Ends tracked connections the policy now denies among those a change may have judged differently
 * (regions: the parts of the sets it recomputed; undefined: all of them).
 */
async function cutFlowsIn(ctx: Ctx, regions: PolicyRegions | undefined): Promise<void> {
  if (regions === undefined) return cutDeniedFlows(ctx);
  if (regions.length === 0 || ctx.applier.dryRun) return;
  const { store } = ctx;
  const boxes: JudgedBox[] = [];
  const seen = new Set<string>();
  for (const r of regions) {
    for (const s of SETS.filter((x) => x.family === r.family && x.target === r.target)) {
      for (const b of store.policyBoxesMeeting('compiled', s.set, r.box)) {
        const key = `${s.set}|${boxKey(b.box)}`;
        if (seen.has(key)) continue;
        seen.add(key);
        boxes.push({ family: s.family, target: s.target, action: s.action, box: b.box, rule: b.rule });
      }
    }
  }
  await ctx.applier.apply([step([{ kind: 'conntrack.forget', filter: { kind: 'judged', regions, boxes, world: policyWorld(store, { sandboxes: false }) } }])]);
}

/** Ends tracked connections through ctnet's forward path that the current policy (and isolation) denies. */
export async function cutDeniedFlows(ctx: Ctx): Promise<void> {
  const { store, applier } = ctx;
  if (applier.dryRun) return; // which flows depends on the moment: nothing to print ahead
  await applier.apply([step([{ kind: 'conntrack.forget', filter: { kind: 'denied', rules: store.policies().map(toRule), world: policyWorld(store) } }])]);
}

function checkSelector(store: Store, flag: string, s: Selector): void {
  if (s.kind === 'net' && !store.network(s.name)) {
    throw new CtnetError('NOT_FOUND', `${flag} net:${s.name}: no network named ${s.name}`, 'list networks with "ctnet network ls"');
  }
  if (s.kind === 'sandbox' && !store.sandbox(s.name) && store.remoteSandboxes({ name: s.name }).length === 0) {
    throw new CtnetError('NOT_FOUND', `${flag} ${s.name}: no sandbox named ${s.name} on this host or, on an overlay network, on another`,
      'name an existing sandbox (ctnet ls --all), or select by label (label:KEY=VALUE) to cover sandboxes made later');
  }
}

export interface PolicyRequest {
  readonly action: Action;
  readonly from: string;
  readonly to: string;
  readonly port: string | undefined;
  readonly name: string | undefined;
}

export async function addPolicy(ctx: Ctx, req: PolicyRequest): Promise<PolicyRow> {
  return (await addPolicies(ctx, [req]))[0]!;
}

/** Adds rules together: one store transaction, one nft transaction (all or nothing). */
export async function addPolicies(ctx: Ctx, reqs: readonly PolicyRequest[]): Promise<PolicyRow[]> {
  return changePolicies(ctx, [], reqs);
}

/**
 * Removes some rules and adds others in one store transaction and one nft transaction: no packet
 * sees a policy half changed (a topology file's rule that changes is its old row out, its new one in).
 */
export async function changePolicies(ctx: Ctx, remove: readonly PolicyRow[], reqs: readonly PolicyRequest[]): Promise<PolicyRow[]> {
  const { store, applier } = ctx;
  const parsed = reqs.map((req) => {
    const from = parseSelector('--from', req.from);
    const to = parseSelector('--to', req.to);
    checkRuleSelectors(from, to);
    const port = req.port === undefined ? undefined : parsePortFilter(req.port);
    const name = req.name === undefined ? undefined : parseName('policy', req.name);
    if (name !== undefined && /^rule-\d+$/.test(name)) throw new CtnetError('INVALID_ARGUMENT', `policy name ${name} is reserved for unnamed rules`, 'choose another --name');
    if (name !== undefined && /^\d+$/.test(name)) throw new CtnetError('INVALID_ARGUMENT', `policy name ${name} would read as a rule ID`, 'choose a name with a letter in it');
    return { from, to, port, row: { action: req.action, from: formatSelector(from), to: formatSelector(to), port: port ? formatPortFilter(port) : null, name } };
  });
  // Rules and kernel change in one store transaction: if nft fails, the rules were never added.
  const { rows, regions } = await store.writeAsync(async () => {
    for (const row of remove) {
      store.deletePolicy(row.id);
      applier.note(`policy ${row.name}: remove`);
    }
    const names = new Set<string>();
    const checked = new Set<string>(); // a rules file names the same few networks and sandboxes many times
    const check = (flag: string, sel: Selector) => {
      const key = `${flag} ${formatSelector(sel)}`;
      if (checked.has(key)) return;
      checkSelector(store, flag, sel);
      checked.add(key);
    };
    const rules: PolicyRule[] = [];
    const rows = parsed.map(({ from, to, port, row }) => {
      check('--from', from);
      check('--to', to);
      if (row.name !== undefined && (names.has(row.name) || store.policyByName(row.name))) {
        throw new CtnetError('CONFLICT', `a policy rule named ${row.name} exists already`, `choose another --name, or remove it with "ctnet policy rm ${row.name}"`);
      }
      if (row.name !== undefined) names.add(row.name);
      const inserted = store.insertPolicy(row);
      // The rule as parsed above: toRule(row) would parse its selectors a second time.
      rules.push({ id: inserted.id, name: inserted.name, action: inserted.action, from, to, port });
      return inserted;
    });
    for (const row of rows) applier.note(`policy ${row.name}: ${row.action} ${row.from} -> ${row.to} ${row.port ?? 'any'}`);
    const changed = new Map<number, PolicyRule | undefined>([...remove.map((r) => [r.id, undefined] as const), ...rules.map((r) => [r.id, r] as const)]);
    const regions = await applyChanged(ctx, changed);
    return { rows, regions };
  }, { rollback: applier.dryRun });
  // New allow rules (and removed denies) only widen what passes: nothing open can be denied now.
  if (rows.some((r) => r.action === 'deny') || remove.some((r) => r.action === 'allow')) await cutFlowsIn(ctx, regions);
  return rows;
}

/**
 * Reads a rules file: one rule per line, as on the command line without "ctnet policy"
 * ("allow --from net:web --to label:tier=api --port 8080 --name web-api"); # starts a comment.
 */
export function parseRulesFile(file: string, text: string): PolicyRequest[] {
  const reqs: PolicyRequest[] = [];
  for (const [i, raw] of text.split('\n').entries()) {
    const line = raw.replace(/#.*/, '').trim();
    if (!line) continue;
    const where = `${file}:${i + 1}`;
    const [action, ...words] = line.split(/\s+/);
    if (action !== 'allow' && action !== 'deny') throw new CtnetError('INVALID_ARGUMENT', `${where}: a rule starts with allow or deny, not ${JSON.stringify(action)}`);
    const opts: Record<string, string> = {};
    for (let j = 0; j < words.length; j += 2) {
      const key = words[j]!;
      if (!['--from', '--to', '--port', '--name'].includes(key) || words[j + 1] === undefined || key in opts) {
        throw new CtnetError('INVALID_ARGUMENT', `${where}: ${JSON.stringify(key)} is not one of --from, --to, --port, --name with a value (each once)`);
      }
      opts[key] = words[j + 1]!;
    }
    if (!opts['--from'] || !opts['--to']) throw new CtnetError('INVALID_ARGUMENT', `${where}: a rule needs --from and --to`);
    reqs.push({ action, from: opts['--from'], to: opts['--to'], port: opts['--port'], name: opts['--name'] });
  }
  return reqs;
}

export function findPolicy(store: Store, nameOrId: string): PolicyRow {
  const row = store.policyByName(nameOrId) ?? (/^\d+$/.test(nameOrId) ? store.policy(Number(nameOrId)) : undefined);
  if (!row) {
    throw new CtnetError('NOT_FOUND', `no policy rule named ${nameOrId}`, store.policyCount() ? 'list rules with "ctnet policy ls"' : 'there are no policy rules');
  }
  return row;
}

/** Removes rules (by name or ID) in one transaction; connections only they allowed are cut. */
export async function removePolicies(ctx: Ctx, namesOrIds: readonly string[]): Promise<void> {
  const { store, applier } = ctx;
  const rows = [...new Map(namesOrIds.map((n) => findPolicy(store, n)).map((r) => [r.id, r])).values()];
  const regions = await store.writeAsync(async () => {
    for (const row of rows) {
      store.deletePolicy(row.id);
      applier.note(`policy ${row.name}: remove`);
    }
    return applyChanged(ctx, new Map(rows.map((r) => [r.id, undefined])));
  }, { rollback: applier.dryRun });
  // Removing deny rules only widens what passes: nothing open can be denied now.
  if (rows.some((r) => r.action === 'allow')) await cutFlowsIn(ctx, regions);
}

export interface PolicyView extends PolicyRow {
  readonly hits: { packets: number; bytes: number };
}

/** Every rule with its hit counter (new connections it decided), read from the element counters. */
export async function listPolicies(ctx: Ctx): Promise<PolicyView[]> {
  const { store, kernel } = ctx;
  const rows = store.policies();
  const owner = new Map<string, number>();
  if (rows.length) {
    const state = store.policyState() ?? fullPolicyState(store).state;
    for (const [set, boxes] of state.compiled) for (const b of boxes) owner.set(`${set}|${boxKey(b.box)}`, b.rule);
  }
  const hits = new Map<number, { packets: number; bytes: number }>(rows.map((r) => [r.id, { packets: 0, bytes: 0 }]));
  const table = rows.length ? (await kernel.nftTable()) ?? [] : [];
  for (const item of table as { set?: { name: string; elem?: unknown[] } }[]) {
    const m = /^policy_(host_)?(allow|deny)([46])$/.exec(item.set?.name ?? '');
    if (!m) continue;
    for (const e of item.set!.elem ?? []) {
      const el = (e as { elem?: { val: unknown; counter?: { packets: number; bytes: number } } }).elem;
      if (!el?.counter) continue;
      const box = parseElement(el.val, Number(m[3]) as Family, m[1] !== undefined);
      const rule = box && owner.get(`${item.set!.name}|${boxKey(box)}`);
      const h = rule === undefined ? undefined : hits.get(rule);
      if (h) {
        h.packets += el.counter.packets;
        h.bytes += el.counter.bytes;
      }
    }
  }
  return rows.map((r) => ({ ...r, hits: hits.get(r.id)! }));
}


/** nft's JSON for one field of an element: a value, a range, or a prefix. */
function parseField(v: unknown, kind: 'addr' | 'proto' | 'port', family: Family): [bigint, bigint] | undefined {
  const one = (x: unknown): bigint | undefined => {
    if (kind === 'addr') return typeof x === 'string' ? addrToBigint(ipaddr.parse(x)) : undefined;
    if (typeof x === 'number') return BigInt(x);
    if (typeof x === 'string' && kind === 'proto') {
      const n = PROTO_NUMBERS[x] ?? (x === 'ipv6-icmp' ? 58 : undefined);
      return n === undefined ? undefined : BigInt(n);
    }
    return undefined;
  };
  if (v && typeof v === 'object' && 'range' in v) {
    const [a, b] = (v as { range: unknown[] }).range;
    const s = one(a);
    const e = one(b);
    return s === undefined || e === undefined ? undefined : [s, e];
  }
  if (v && typeof v === 'object' && 'prefix' in v) {
    const { addr, len } = (v as { prefix: { addr: string; len: number } }).prefix;
    const host = BigInt((family === 4 ? 32 : 128) - len);
    const s = addrToBigint(ipaddr.parse(addr));
    return [s, s + (1n << host) - 1n];
  }
  const n = one(v);
  return n === undefined ? undefined : [n, n];
}

/** A set element as a box; a host set's element (source . protocol . port) gets the host's destination. */
function parseElement(val: unknown, family: Family, host: boolean): Box | undefined {
  const fields = (val as { concat?: unknown[] })?.concat;
  const kinds = host ? (['addr', 'proto', 'port'] as const) : (['addr', 'addr', 'proto', 'port'] as const);
  if (!fields || fields.length !== kinds.length) return undefined;
  const parts = fields.map((f, i) => parseField(f, kinds[i]!, family));
  if (!parts.every((p) => p !== undefined)) return undefined;
  return (host ? [parts[0], [0n, 0n], parts[1], parts[2]] : parts) as unknown as Box;
}

/**
 * Resolves FROM/TO (sandbox names or addresses) for `policy check`. A name is this host's sandbox,
 * else every other host's of that name in the directory (NAME@HOST in the result).
 */
function endpoints(store: Store, what: string, text: string): { family: Family; n: bigint; label: string; host?: string }[] {
  const s = store.sandbox(text);
  if (s) return store.addresses({ sandbox: text }).map((a) => ({ family: a.family, n: parseAddr(what, a.ip).n, label: `${text} (${a.ip})` }));
  const remote = store.remoteSandboxes({ name: text });
  if (remote.length) return remote.flatMap((r) => r.addresses.map((ip) => ({ ...parseAddr(what, ip), label: `${text}@${r.host} (${ip})`, host: r.host })));
  try {
    const a = parseAddr(what, text);
    return [{ ...a, label: text }];
  } catch {
    throw new CtnetError('NOT_FOUND', `${what} ${JSON.stringify(text)} is neither a sandbox nor an address`, 'name a sandbox (ctnet ls) or give an IP address');
  }
}

export interface CheckResult extends Decision {
  readonly from: string;
  readonly to: string;
  readonly port: string;
  /**
   * The other host whose sandbox this is (from the directory): the connection crosses its forward
   * chain too, judged by its own rules, so it passes only if that host allows it as well.
   */
  readonly alsoJudgedBy?: string;
}

/**
 * What the kernel does with a new connection FROM -> TO (each address pair of the same family).
 * TO may be `host`: the host itself, as the sandbox reaches it (at its gateway, or any host address).
 * published: the connection reached TO through a published port (DNAT; trace knows when).
 */
export function checkPolicy(ctx: Ctx, from: string, to: string, portText: string | undefined, opts: { published?: boolean } = {}): CheckResult[] {
  const { store } = ctx;
  const port = portText === undefined ? undefined : parsePortFilter(portText);
  const src = endpoints(store, 'FROM', from);
  const toHost = to === 'host';
  const gateways = toHost ? store.networks().flatMap((n) => store.subnets(n.name)) : [];
  const dst = toHost ? [] : endpoints(store, 'TO', to);
  const rules = store.policies().map(toRule);
  const world = policyWorld(store);
  const out: CheckResult[] = [];
  for (const s of src) {
    const targets = toHost
      ? [{ family: s.family, n: 0n, label: `host${gatewayOf(gateways, s) ? ` (${gatewayOf(gateways, s)})` : ''}` }]
      : dst.filter((x) => x.family === s.family);
    for (const d of targets) {
      const proto = port ? (port.proto === 'icmp' ? (s.family === 4 ? 1 : 58) : PROTO_NUMBERS[port.proto]!) : 6;
      const decision = decide(rules, world, { family: s.family, src: s.n, dst: d.n, proto, port: port?.start ?? 0, toHost, ...(opts.published ? { published: true } : {}) });
      const other = s.host ?? ('host' in d ? d.host : undefined);
      out.push({ from: s.label, to: d.label, port: port ? formatPortFilter(port) : 'any/tcp', ...decision, ...(other ? { alsoJudgedBy: other } : {}) });
    }
  }
  if (out.length === 0) {
    throw new CtnetError('INVALID_ARGUMENT', `${from} and ${to} have no addresses of the same family`, 'check them with "ctnet inspect"');
  }
  return out;
}

/** The gateway of the subnet an address is in: where the sandbox reaches the host. */
function gatewayOf(subnets: readonly { cidr: string; family: Family; gateway: string }[], a: { family: Family; n: bigint }): string | undefined {
  return subnets.find((s) => {
    if (s.family !== a.family) return false;
    const sub = parseSubnet('subnet', s.cidr);
    return a.n >> BigInt((s.family === 4 ? 32 : 128) - sub.prefix) === sub.network >> BigInt((s.family === 4 ? 32 : 128) - sub.prefix);
  })?.gateway;
}

/** Sets and removes labels of a sandbox, then brings the policy sets up to date. */
export async function changeLabels(ctx: Ctx, sandbox: string, set: readonly { key: string; value: string }[], remove: readonly string[]): Promise<void> {
  const { store, applier } = ctx;
  if (!store.sandbox(sandbox)) {
    const elsewhere = store.remoteSandboxes({ name: sandbox }).map((r) => r.host);
    throw new CtnetError('NOT_FOUND', `no sandbox named ${sandbox} on this host${elsewhere.length ? ` (it runs on ${elsewhere.join(', ')})` : ''}`,
      elsewhere.length ? 'set its labels on its own host: they reach every host through the cluster\'s directory' : 'list sandboxes with "ctnet ls"');
  }
  // The rules that select by a label this changes (its old value or its new): only they resolve differently.
  const keys = new Set([...set.map((l) => l.key), ...remove]);
  const selectors = [
    ...store.labels(sandbox).filter((l) => keys.has(l.key)).map((l) => `label:${l.key}=${l.value}`),
    ...set.map((l) => `label:${l.key}=${l.value}`),
  ];
  applier.record(...set.map((l) => ({ kind: 'label.set' as const, sandbox, key: l.key, value: l.value })),
    ...remove.map((key) => ({ kind: 'label.delete' as const, sandbox, key })));
  await syncServices(ctx); // services select by label too
  const rules = store.policiesBySelector(selectors);
  if (rules.length) await syncRules(ctx, rules.map((r) => r.id));
}
