// Traffic counters for the live page (`ctnet ui`): each sandbox interface's bytes and packets, read
// from its host-side veth, and the hit counters of ctnet's nft rules that count (policy deny/allow,
// published ports, isolation drops...). Two reads in all, whatever the number of sandboxes: one
// `ip -s link` in ctnet's namespace (every host veth is there) and one `nft -j list table`.
// Policy sets and port maps carry no per-element counters, so a rule's counter covers every policy
// rule (or published port) it looks up; the page says so rather than inventing per-rule numbers.
import type { Ctx } from './context.ts';

export interface Traffic {
  readonly bytes: number;
  readonly packets: number;
}

export interface InterfaceCounters {
  readonly sandbox: string;
  readonly network: string;
  readonly hostVeth: string;
  /** What the sandbox sent (the host veth received it) and what it received. */
  readonly sent: Traffic;
  readonly received: Traffic;
}

export interface RuleCounter {
  readonly chain: string;
  /** The rule's comment ("policy: deny", "published port", ...). */
  readonly rule: string;
  readonly packets: number;
  readonly bytes: number;
}

export interface Counters {
  /** When they were read (ms since the epoch): rates are differences over it. */
  readonly at: number;
  readonly interfaces: InterfaceCounters[];
  readonly rules: RuleCounter[];
}

interface NftRule {
  readonly rule?: { readonly chain: string; readonly comment?: string; readonly expr?: readonly Record<string, unknown>[] };
}

/** Rules of `nft -j list table` that carry a counter and a comment. */
export function ruleCounters(table: readonly unknown[]): RuleCounter[] {
  const out = new Map<string, RuleCounter>();
  for (const item of table as readonly NftRule[]) {
    const r = item.rule;
    const c = r?.expr?.find((e) => 'counter' in e)?.counter as Traffic | undefined;
    if (!r || !c || !r.comment) continue;
    // The IPv4 and IPv6 rules of one purpose share a comment: one counter for both.
    const key = `${r.chain}\u0000${r.comment}`;
    const had = out.get(key);
    out.set(key, { chain: r.chain, rule: r.comment, packets: (had?.packets ?? 0) + c.packets, bytes: (had?.bytes ?? 0) + c.bytes });
  }
  return [...out.values()];
}

export async function readCounters(ctx: Ctx): Promise<Counters> {
  const { store, kernel } = ctx;
  // Terse: the rules and their counters, not the policy sets' elements (megabytes at 500 sandboxes,
  // parsed every 2 s while a page is open: most of ctnetd's CPU and heap, docs/ui.md).
  const [links, table] = await Promise.all([kernel.linkStats(), kernel.nftTable('inet', { terse: true })]);
  const at = Date.now();
  const byName = new Map(links.map((l) => [l.ifname, l]));
  const interfaces: InterfaceCounters[] = [];
  for (const a of store.attachments()) {
    const l = byName.get(a.hostVeth);
    if (!l) continue; // a lower (macvlan) attachment has no host veth; a missing one has no counters
    interfaces.push({ sandbox: a.sandbox, network: a.network, hostVeth: a.hostVeth, sent: l.rx, received: l.tx });
  }
  return { at, interfaces, rules: table ? ruleCounters(table) : [] };
}
