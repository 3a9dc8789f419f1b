// Incremental policy compilation, pure. A change to a few rules (added, removed, or resolving to
// other addresses since a label or sandbox changed) recomputes only the part of a policy set those
// rules cover, and yields the boxes to remove and to add: the difference the kernel is sent.
//
// The invariant (what compile() in policy.ts makes from scratch): a set's compiled boxes are
// disjoint, and each point in them belongs to the oldest rule whose boxes cover it. Only points a
// changed rule stopped or started covering can change owner, so this frees
//   - every box a changed rule owned that meets a box it no longer covers, and
//   - every box of a younger rule that a changed rule's added boxes meet (the changed rule is
//     older, so it takes those points), and the parts of the added boxes nobody owns,
// and gives each freed point to the oldest rule covering it now. Boxes that come back exactly as
// they were are left alone, so their kernel elements (and hit counters) stay.
import type { Family } from './cidr.ts';
import { BoxIndex, decide, intersection, intersects, subtract, type Action, type Box, type CompiledBox, type Packet, type PolicyTarget, type PolicyWorld } from './policy.ts';

/**
 * One policy set as the incremental compiler reads it (the store answers with an index; tests with
 * arrays). compiled* read the set before the change; raw* read every rule's boxes after it.
 */
export interface PolicySetView {
  /** The compiled boxes meeting box. */
  compiledMeeting(box: Box): readonly CompiledBox[];
  /** The compiled boxes a rule owns. */
  ownedBy(rule: number): readonly CompiledBox[];
  /** Every rule's boxes (not yet made disjoint) meeting box, the changed rules' as they are now. */
  rawMeeting(box: Box): readonly CompiledBox[];
}

export interface PolicySetDelta {
  readonly remove: readonly CompiledBox[];
  readonly add: readonly CompiledBox[];
  /** The freed region, as disjoint boxes: only connections inside it may be judged differently now. */
  readonly region: readonly Box[];
}

export const boxKey = (b: Box): string => b.map(([s, e]) => `${s}-${e}`).join('|');
const compiledKey = (c: CompiledBox): string => `${c.rule}|${boxKey(c.box)}`;

const minus = (parts: readonly Box[], b: Box): Box[] => parts.flatMap((p) => (intersects(p, b) ? subtract(p, b) : [p]));

/**
 * How one rule's boxes in a set changed: the boxes it no longer covers and the boxes it covers
 * now and did not (its unchanged boxes are left out: a sandbox that joins a label selecting 300
 * others adds 300 boxes to a rule of 50,000, and only those 300 are work).
 */
export interface RuleBoxChange {
  readonly removed: readonly Box[];
  readonly added: readonly Box[];
}

/** The difference between a rule's boxes before and after (by value; order does not matter). */
export function ruleBoxChange(was: readonly Box[], now: readonly Box[]): RuleBoxChange {
  const wasKeys = new Set(was.map(boxKey));
  const nowKeys = new Set(now.map(boxKey));
  return { removed: was.filter((b) => !nowKeys.has(boxKey(b))), added: now.filter((b) => !wasKeys.has(boxKey(b))) };
}

/**
 * Past this many removed boxes, one read of everything a rule owns beats one index probe per box
 * (a rule of many boxes removed). A sandbox removed at 500 loses a label rule a few hundred boxes
 * of its 55,000: probed. Both ways free the same points; tests pass
 * 0 to take the second always.
 */
const PROBE_REMOVED = 1024;

/**
 * The change to one set when the rules in `changed` lost and gained the given boxes (a removed
 * rule lost all of them). Cost: the boxes that changed and the boxes they meet, not the size of
 * the set nor of the rules.
 */
export function recompile(view: PolicySetView, changed: ReadonlyMap<number, RuleBoxChange>, probeRemoved = PROBE_REMOVED): PolicySetDelta {
  const removed = new Map<string, CompiledBox>();
  const free = (c: CompiledBox) => removed.set(compiledKey(c), c);
  // What a rule owned inside a box it no longer covers may go to another rule (or to nobody).
  // Every owned box lies inside one of its own rule's boxes, so freeing those that meet a removed
  // box frees all such points (and maybe more, which are given back below as they were).
  for (const [rule, { removed: lost }] of changed) {
    if (lost.length > probeRemoved) {
      for (const c of view.ownedBy(rule)) free(c);
    } else {
      for (const b of lost) for (const c of view.compiledMeeting(b)) if (c.rule === rule) free(c);
    }
  }
  // The region, disjoint: the freed boxes (disjoint already), then the parts of the new boxes that
  // no compiled box that stays covers and no earlier part of the region does.
  const region: Box[] = [];
  const index = new BoxIndex();
  const take = (b: Box) => {
    region.push(b);
    index.add(b);
  };
  const stays: CompiledBox[][] = [];
  for (const [rule, { added: boxes }] of changed) {
    for (const b of boxes) {
      const met = view.compiledMeeting(b);
      for (const c of met) if (c.rule > rule) free(c);
      stays.push([...met]);
    }
  }
  for (const c of removed.values()) take(c.box);
  let k = 0;
  for (const { added: boxes } of changed.values()) {
    for (const b of boxes) {
      let parts: Box[] = [b];
      for (const c of stays[k++]!) if (!removed.has(compiledKey(c))) parts = minus(parts, c.box);
      for (const r of index.candidates(b)) {
        if (parts.length === 0) break;
        parts = minus(parts, r);
      }
      for (const p of parts) take(p);
    }
  }
  // Each freed part goes to the oldest rule covering it.
  const add: CompiledBox[] = [];
  for (const f of region) {
    const claimers = [...view.rawMeeting(f)].sort((a, b) => a.rule - b.rule);
    let parts: Box[] = [f];
    for (const c of claimers) {
      if (parts.length === 0) break;
      const next: Box[] = [];
      for (const p of parts) {
        if (!intersects(p, c.box)) next.push(p);
        else {
          add.push({ box: intersection(p, c.box), rule: c.rule });
          next.push(...subtract(p, c.box));
        }
      }
      parts = next;
    }
  }
  // What comes back as it was stays in the kernel untouched.
  const added = new Map(add.map((c) => [compiledKey(c), c]));
  const remove = [...removed].filter(([key]) => !added.delete(key)).map(([, c]) => c);
  return { remove, add: [...added.values()], region };
}

/** A PolicySetView over arrays (tests; small sets). */
export function arrayView(compiled: readonly CompiledBox[], raw: readonly CompiledBox[]): PolicySetView {
  return {
    compiledMeeting: (b) => compiled.filter((c) => intersects(c.box, b)),
    ownedBy: (rule) => compiled.filter((c) => c.rule === rule),
    rawMeeting: (b) => raw.filter((c) => intersects(c.box, b)),
  };
}

/**
 * Whether two sets of compiled boxes say the same thing: each is disjoint, and every point has the
 * same owner in both (their pieces may be cut differently). For tests: exact box arithmetic.
 */
export function sameOwnership(a: readonly CompiledBox[], b: readonly CompiledBox[]): string | undefined {
  for (const [name, s] of [['first', a], ['second', b]] as const) {
    for (let i = 0; i < s.length; i++) {
      for (let j = i + 1; j < s.length; j++) {
        if (intersects(s[i]!.box, s[j]!.box)) return `${name}: boxes ${boxKey(s[i]!.box)} (rule ${s[i]!.rule}) and ${boxKey(s[j]!.box)} (rule ${s[j]!.rule}) overlap`;
      }
    }
  }
  const covered = (x: readonly CompiledBox[], y: readonly CompiledBox[], what: string): string | undefined => {
    for (const c of x) {
      let parts: Box[] = [c.box];
      for (const d of y) if (d.rule === c.rule) parts = minus(parts, d.box);
      if (parts.length) return `${what}: ${boxKey(parts[0]!)} is rule ${c.rule}'s in one and not in the other`;
    }
    return undefined;
  };
  return covered(a, b, 'first') ?? covered(b, a, 'second');
}

// ---- judging connections inside a changed region (which flows a change must cut) ----

/** A freed region of one policy set (see PolicySetDelta.region). */
export interface PolicyRegion {
  readonly family: Family;
  readonly target: PolicyTarget;
  readonly box: Box;
}

/** A compiled box of the deny or allow set of a family and target, as a change left it. */
export interface JudgedBox {
  readonly family: Family;
  readonly target: PolicyTarget;
  readonly action: Action;
  readonly box: Box;
  /** The rule's ID. */
  readonly rule: number;
}

/** The point a packet is in the policy sets' space (a host box has the host's one destination, 0). */
function point(p: Packet): { target: PolicyTarget; at: readonly bigint[] } {
  const target: PolicyTarget = p.toHost ? 'host' : 'forward';
  return { target, at: [p.src, p.toHost ? 0n : p.dst, BigInt(p.proto), BigInt(p.port)] };
}
const contains = (b: Box, at: readonly bigint[]) => b.every((r, i) => r[0] <= at[i]! && at[i]! <= r[1]);

/** Whether the packet is inside one of the regions (a change may have judged it differently). */
export function inRegions(regions: readonly PolicyRegion[], p: Packet): boolean {
  const { target, at } = point(p);
  return regions.some((r) => r.family === p.family && r.target === target && contains(r.box, at));
}

/**
 * What ctnet's chains decide for a packet inside one of the regions (undefined outside them: the
 * change did not touch its decision). boxes must hold every compiled box meeting the regions, of
 * both actions: deny first, then allow, then the defaults (decide with no rules).
 */
export function judgeInRegions(regions: readonly PolicyRegion[], boxes: readonly JudgedBox[], w: PolicyWorld, p: Packet): boolean | undefined {
  const { target, at } = point(p);
  const mine = (x: { family: Family; target: PolicyTarget }) => x.family === p.family && x.target === target;
  if (!inRegions(regions, p)) return undefined;
  const hit = (action: Action) => boxes.some((b) => b.action === action && mine(b) && contains(b.box, at));
  if (hit('deny')) return false;
  if (hit('allow')) return true;
  return decide([], w, p).allowed;
}
