// A plan: kernel operations in steps. A step is one unit of progress (a crash point follows it);
// its lanes run side by side (independent work, e.g. the host end of a veth and its nft elements),
// the operations of a lane in order. Pure.
import { removes, type Op } from './ops.ts';
import { renderOp } from './render.ts';

export interface Step {
  /** What the step does, for people (--explain prints it as a comment). */
  readonly note?: string | undefined;
  readonly lanes: readonly (readonly Op[])[];
}

export type Plan = readonly Step[];

/** One step whose operations run in order. */
export const step = (ops: readonly Op[], note?: string): Step => ({ note, lanes: [ops] });

/** One step whose lanes run side by side. */
export const sideBySide = (lanes: readonly (readonly Op[])[], note?: string): Step => ({ note, lanes: lanes.filter((l) => l.length > 0) });

/** Drops empty steps (a plan builder may produce some). */
export const compact = (plan: readonly Step[]): Plan => plan.filter((s) => s.lanes.some((l) => l.length > 0) || s.note !== undefined);

/** The plan as the shell commands that do the same, in order (what --dry-run prints). */
export function renderPlan(plan: Plan): string[] {
  return plan.flatMap((s) => [...(s.note ? [`# ${s.note}`] : []), ...s.lanes.flat().flatMap(renderOp)]);
}

/**
 * Removals of independent objects (a sandbox's ports and interfaces, all going) in two steps
 * instead of two or three each: every nft element deletion in one transaction, side by side with
 * the other removals in their order (consecutive `ip` ones run as one batch); then every flow to
 * forget, from one listing of the flows. Flows are forgotten after the elements are gone, as each
 * step did alone, so no new packet brings them back. A plan with anything but removals is returned
 * as it is. Pure.
 */
export function fuseRemovals(plan: Plan): Plan {
  const ops = plan.flatMap((s) => s.lanes.flat());
  if (ops.length === 0 || !ops.every(removes)) return plan;
  const notes = plan.flatMap((s) => (s.note ? [s.note] : []));
  const lines = ops.flatMap((o) => (o.kind === 'nft.delete' ? o.lines : []));
  const rest = ops.filter((o) => o.kind !== 'nft.delete' && o.kind !== 'conntrack.forget');
  const forget = ops.filter((o) => o.kind === 'conntrack.forget');
  return compact([
    sideBySide([rest, lines.length ? [{ kind: 'nft.delete', lines }] : []], notes.length ? notes.join('\n# ') : undefined),
    step(forget),
  ]);
}
