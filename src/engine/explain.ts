// "How was this built?": the plan that makes one recorded object, computed from its records as
// the use cases compute it (driver plans, port elements, policy elements), and rendered as the
// equivalent ip/nft commands, exactly as --explain prints them. Nothing is applied: the live page
// shows it when an object is selected (GET /api/explain?object=KIND:NAME).
import { CtnetError, invalid } from '../errors.ts';
import { TABLE } from '../nft/ruleset.ts';
import { renderPlan, step, type Plan, type Step } from '../plan/plan.ts';
import { egressLines } from './attach.ts';
import type { Ctx } from './context.ts';
import { forwardSteps } from './forward.ts';
import { findPolicy, fullPolicyState } from './policy.ts';
import { portFacts, publishSteps } from './ports.ts';
import { defaultCarrier, driverAttachment, driverNetwork, driverOf, existingNetwork, sandboxNetns } from './records.ts';

export const EXPLAIN_KINDS = ['network', 'sandbox', 'policy'] as const;
export interface ObjectRef {
  readonly kind: (typeof EXPLAIN_KINDS)[number];
  readonly name: string;
}

/** KIND:NAME (network:front, sandbox:web, policy:api-to-db or policy:3). */
export function parseObjectRef(text: string): ObjectRef {
  const m = /^([a-z]+):(.+)$/.exec(text);
  if (!m || !(EXPLAIN_KINDS as readonly string[]).includes(m[1]!)) {
    throw invalid(`object ${JSON.stringify(text)} is not KIND:NAME`, `KIND is ${EXPLAIN_KINDS.join(', ')}: e.g. sandbox:web, network:front, policy:api-to-db`);
  }
  return { kind: m[1] as ObjectRef['kind'], name: m[2]! };
}

function networkPlan(ctx: Ctx, name: string): Plan {
  const { store } = ctx;
  const n = existingNetwork(store, name);
  return [...driverOf(n).planCreate(driverNetwork(store, n)), ...(n.lower ? [] : forwardSteps(store, n.bridge, 'add'))];
}

function sandboxPlan(ctx: Ctx, name: string): Plan {
  const { store } = ctx;
  const s = store.sandbox(name);
  if (!s) throw new CtnetError('NOT_FOUND', `no sandbox named ${name}`, 'list sandboxes with "ctnet ls --all"');
  const ns = sandboxNetns(s);
  const steps: Step[] = [];
  if (s.owned && 'name' in ns) steps.push(step([{ kind: 'netns.add', name: ns.name }], `sandbox ${name}: network namespace ${ns.name}`), step([{ kind: 'link.set.up', name: 'lo', netns: ns }]));
  for (const a of store.attachments({ sandbox: name })) {
    const n = store.network(a.network);
    if (!n) continue;
    const addresses = store.addresses({ sandbox: name }).filter((x) => x.network === a.network);
    const defaults = ([4, 6] as const).filter((f) => addresses.some((x) => x.family === f) && defaultCarrier(store, name, f) === a.network);
    steps.push(...driverOf(n).planAttach(driverNetwork(store, n), driverAttachment(store, s, a, addresses, defaults), egressLines(store, name, n, addresses)));
  }
  steps.push(...publishSteps(portFacts(store, name)));
  return steps;
}

function policyPlan(ctx: Ctx, nameOrId: string): Plan {
  const row = findPolicy(ctx.store, nameOrId);
  const lines: string[] = [];
  for (const [set, boxes] of fullPolicyState(ctx.store).state.compiled) {
    const mine = boxes.filter((b) => b.rule === row.id).map((b) => b.element);
    if (mine.length) lines.push(`add element ${TABLE} ${set} { ${mine.join(', ')} }`);
  }
  const note = `policy rule #${row.id} ${row.name}: its elements of the policy sets (where rules overlap, the oldest rule holds the part)`;
  return lines.length ? [step([{ kind: 'nft', lines, undo: [] }], note)] : [step([], `${note}: none, it selects nothing now`)];
}

export function explainObject(ctx: Ctx, ref: ObjectRef): { object: string; lines: string[] } {
  const plan = ref.kind === 'network' ? networkPlan(ctx, ref.name) : ref.kind === 'sandbox' ? sandboxPlan(ctx, ref.name) : policyPlan(ctx, ref.name);
  return { object: `${ref.kind}:${ref.name}`, lines: renderPlan(plan) };
}
