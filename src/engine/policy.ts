// Use cases for network policy: rules (allow/deny between selectors), labels, and keeping the
// kernel's policy sets equal to what the rules say about the sandboxes that exist now.
import ipaddr from 'ipaddr.js';
import { CtnetError } from '../errors.ts';
import { addrToBigint, parseAddr, parseSubnet, type Family } from '../model/cidr.ts';
import { parseName } from '../model/names.ts';
import {
  boxText, checkRuleSelectors, compile, decide, formatPortFilter, formatSelector, hostBoxText, parsePortFilter, parseSelector, PROTO_NUMBERS,
  type Action, type Box, type Decision, type PolicyRule, type PolicySandbox, type PolicyTarget, type PolicyWorld, type Selector,
} from '../model/policy.ts';
import { POLICY_SET_NAMES, policyLines, TABLE, type PolicyElements } from '../nft/ruleset.ts';
import { step } from '../plan/plan.ts';
import type { PolicyRow, Store } from '../store/store.ts';
import type { Transaction } from './applier.ts';
import type { Ctx } from './context.ts';
import { syncServices } from './services.ts';

const rangeOf = (cidr: string) => {
  const sub = parseSubnet('subnet', cidr);
  const bits = sub.family === 4 ? 32 : 128;
  return { family: sub.family, start: sub.network, end: sub.network + (1n << BigInt(bits - sub.prefix)) - 1n };
};

/**
 * The networks and sandboxes as the policy model sees them (plain data): this host's, and the other
 * hosts' sandboxes on overlay networks (the directory's mirror, services/directory.ts), so labels
 * and sandbox names select them too. An overlay network stands for its whole subnet (every host's
 * lease), not only this host's: net:NAME and the same-network default cover the sandboxes of
 * every host on it.
 */
export function policyWorld(store: Store): PolicyWorld {
  const labels = store.labels();
  const overlays = store.overlays().map((o) => ({ network: o.network, range: rangeOf(o.cidr) }));
  const remote = store.remoteSandboxes().map((r): PolicySandbox => ({
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
      ...store.sandboxes().map((s) => ({
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
  return { key, action: m[2]!.toLowerCase() as Action, family: Number(m[3]) as 4 | 6, target: (m[1] ? 'host' : 'forward') as PolicyTarget };
});

function compiled(store: Store) {
  const rules = store.policies().map(toRule);
  const world = policyWorld(store);
  return SETS.map((s) => ({ ...s, set: POLICY_SET_NAMES[s.key], boxes: compile(rules, s.action, world, s.family, s.target) }));
}

/** The elements of every policy set, for the rules and sandboxes in the store now. */
export function policyElements(store: Store): PolicyElements {
  const text = (c: ReturnType<typeof compiled>[number]) => c.boxes.map((b) => (c.target === 'host' ? hostBoxText : boxText)(b.box, c.family));
  return Object.fromEntries(compiled(store).map((c) => [c.key, text(c)])) as unknown as PolicyElements;
}

export function elementsBySet(e: PolicyElements): Map<string, readonly string[]> {
  return new Map(Object.entries(POLICY_SET_NAMES).map(([k, name]) => [name, e[k as keyof PolicyElements]]));
}

/**
 * Brings the kernel's policy sets to `want` in one nft transaction (no packet sees half a policy),
 * sending only the difference from the mirror in the store. If the kernel no longer matches the
 * mirror (its table was flushed), the difference fails and every set is rewritten instead.
 * Call inside store.writeAsync, which serialises this with every other ctnet process.
 */
async function applyPolicy(ctx: Ctx, want: PolicyElements): Promise<void> {
  const { store, applier } = ctx;
  const have = store.policyMirror();
  const target = elementsBySet(want);
  const lines: string[] = [];
  const batch = (verb: string, set: string, elements: string[]) => {
    for (let i = 0; i < elements.length; i += 500) lines.push(`${verb} element ${TABLE} ${set} { ${elements.slice(i, i + 500).join(', ')} }`);
  };
  // Deleting interval elements costs the kernel time in proportion to the set size, each: past a
  // few dozen, flushing and refilling the set is faster (10,000 elements: ~1 s against ~70 s).
  const adds: [string, string[]][] = [];
  for (const [set, elements] of target) {
    const had = have.get(set) ?? new Set<string>();
    const wanted = new Set(elements);
    const gone = [...had].filter((e) => !wanted.has(e));
    if (gone.length > 32) {
      lines.push(`flush set ${TABLE} ${set}`);
      adds.push([set, [...elements]]);
    } else {
      batch('delete', set, gone);
      adds.push([set, elements.filter((e) => !had.has(e))]);
    }
  }
  for (const [set, elements] of adds) batch('add', set, elements);
  if (lines.length === 0) return;
  try {
    await applier.apply([step([{ kind: 'nft', lines }], 'policy: update the policy sets')]);
  } catch {
    await applier.apply([step([{ kind: 'nft', lines: policyLines(want) }], 'policy: the sets differ from the record; rewrite them whole')]);
  }
  store.setPolicyMirror(target);
}

/** Brings the policy sets up to date with the store; with cut, connections now denied end. */
export async function syncPolicy(ctx: Ctx, options: { cut?: boolean; tx?: Transaction } = {}): Promise<void> {
  // Inside an operation's transaction: if it fails later, the sets are derived again from the
  // store as its rollback leaves it.
  options.tx?.recompute.push(() => syncPolicy(ctx));
  const { store, applier } = ctx;
  // Services' backends are derived from the same sandboxes and labels: kept up to date alongside.
  await syncServices(ctx);
  if (store.policies().length === 0 && store.policyMirror().size === 0) return; // nothing to keep up
  await store.writeAsync(() => applyPolicy(ctx, policyElements(store)), { rollback: applier.dryRun });
  if (options.cut) await cutDeniedFlows(ctx);
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
  const { store, applier } = ctx;
  const parsed = reqs.map((req) => {
    const from = parseSelector('--from', req.from);
    const to = parseSelector('--to', req.to);
    checkRuleSelectors(from, to);
    const port = req.port === undefined ? undefined : parsePortFilter(req.port);
    const name = req.name === undefined ? undefined : parseName('policy', req.name);
    if (name !== undefined && /^rule-\d+$/.test(name)) throw new CtnetError('INVALID_ARGUMENT', `policy name ${name} is reserved for unnamed rules`, 'choose another --name');
    if (name !== undefined && /^\d+$/.test(name)) throw new CtnetError('INVALID_ARGUMENT', `policy name ${name} would read as a rule ID`, 'choose a name with a letter in it');
    return { from, to, row: { action: req.action, from: formatSelector(from), to: formatSelector(to), port: port ? formatPortFilter(port) : null, name } };
  });
  // Rules and kernel change in one store transaction: if nft fails, the rules were never added.
  const rows = await store.writeAsync(async () => {
    const names = new Set(store.policies().map((p) => p.name));
    const rows = parsed.map(({ from, to, row }) => {
      checkSelector(store, '--from', from);
      checkSelector(store, '--to', to);
      if (row.name !== undefined && names.has(row.name)) {
        throw new CtnetError('CONFLICT', `a policy rule named ${row.name} exists already`, `choose another --name, or remove it with "ctnet policy rm ${row.name}"`);
      }
      if (row.name !== undefined) names.add(row.name);
      return store.insertPolicy(row);
    });
    for (const row of rows) applier.note(`policy ${row.name}: ${row.action} ${row.from} -> ${row.to} ${row.port ?? 'any'}`);
    await applyPolicy(ctx, policyElements(store));
    return rows;
  }, { rollback: applier.dryRun });
  await cutDeniedFlows(ctx);
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
  const rows = store.policies();
  const row = rows.find((p) => p.name === nameOrId) ?? (/^\d+$/.test(nameOrId) ? rows.find((p) => p.id === Number(nameOrId)) : undefined);
  if (!row) {
    throw new CtnetError('NOT_FOUND', `no policy rule named ${nameOrId}`, rows.length ? 'list rules with "ctnet policy ls"' : 'there are no policy rules');
  }
  return row;
}

/** Removes rules (by name or ID) in one transaction; connections only they allowed are cut. */
export async function removePolicies(ctx: Ctx, namesOrIds: readonly string[]): Promise<void> {
  const { store, applier } = ctx;
  const all = store.policies();
  const byName = new Map(all.map((p) => [p.name, p]));
  const byId = new Map(all.map((p) => [String(p.id), p]));
  const rows = namesOrIds.map((n) => byName.get(n) ?? byId.get(n) ?? findPolicy(store, n));
  await store.writeAsync(async () => {
    for (const row of rows) {
      store.deletePolicy(row.id);
      applier.note(`policy ${row.name}: remove`);
    }
    await applyPolicy(ctx, policyElements(store));
  }, { rollback: applier.dryRun });
  await cutDeniedFlows(ctx);
}

export interface PolicyView extends PolicyRow {
  readonly hits: { packets: number; bytes: number };
}

/** Every rule with its hit counter (new connections it decided), read from the element counters. */
export async function listPolicies(ctx: Ctx): Promise<PolicyView[]> {
  const { store, kernel } = ctx;
  const rows = store.policies();
  const owner = new Map<string, number>();
  for (const c of compiled(store)) for (const b of c.boxes) owner.set(`${c.set}|${boxKey(b.box)}`, b.rule);
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

const boxKey = (b: Box) => b.map(([s, e]) => `${s}-${e}`).join('|');

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
 */
export function checkPolicy(ctx: Ctx, from: string, to: string, portText: string | undefined): CheckResult[] {
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
      const decision = decide(rules, world, { family: s.family, src: s.n, dst: d.n, proto, port: port?.start ?? 0, toHost });
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
  applier.record(...set.map((l) => ({ kind: 'label.set' as const, sandbox, key: l.key, value: l.value })),
    ...remove.map((key) => ({ kind: 'label.delete' as const, sandbox, key })));
  await syncPolicy(ctx, { cut: true });
}
