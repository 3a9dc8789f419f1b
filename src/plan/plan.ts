// A plan: kernel operations in steps. A step is one unit of progress (a crash point follows it);
// its lanes run side by side (independent work, e.g. the host end of a veth and its nft elements),
// the operations of a lane in order. Pure.
import type { Op } from './ops.ts';
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
