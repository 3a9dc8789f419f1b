// Use case: shaping a sandbox's attachments (rates, bursts, delay, loss), live. The recorded shape
// is the truth; the driver plans the change from it to the new one, so --explain prints it and a
// failure puts both the qdiscs and the record back.
import { CtnetError } from '../errors.ts';
import type { ShapedAttachment } from '../drivers/driver.ts';
import { isEmpty, mergeShape, type Shape } from '../model/shape.ts';
import type { Step } from '../plan/plan.ts';
import type { AttachmentRow, Store } from '../store/store.ts';
import type { Recorder } from './applier.ts';
import type { Ctx } from './context.ts';
import { ifbName } from './naming.ts';
import { driverNetwork, driverOf, existingNetwork, readySandbox } from './records.ts';

export const shapedAttachment = (a: Pick<AttachmentRow, 'sandbox' | 'hostVeth'>): ShapedAttachment =>
  ({ sandbox: a.sandbox, hostVeth: a.hostVeth, ifb: ifbName(a.hostVeth) });

/** The steps that take attachment a from its recorded shape (have) to want; throws if its driver cannot shape. */
export function shapeSteps(store: Store, a: Pick<AttachmentRow, 'sandbox' | 'network' | 'hostVeth'>, want: Shape | undefined, have: Shape | undefined): Step[] {
  const n = existingNetwork(store, a.network);
  const driver = driverOf(n);
  if (!driver.planShape) {
    throw new CtnetError('UNSUPPORTED', `network ${n.name} (driver ${n.driver}) cannot shape its sandboxes' traffic`, 'shape on a bridge or vxlan network');
  }
  return driver.planShape(driverNetwork(store, n), shapedAttachment(a), want, have);
}

/** Records a new shape for an attachment (call while deciding); returns the shape it had. */
export function recordShape(rec: Recorder, sandbox: string, network: string, want: Shape | undefined): Shape | undefined {
  const have = rec.store.shaping(sandbox, network);
  rec.record({ kind: 'shaping.set', sandbox, network, shape: want ?? null });
  return have;
}

/**
 * Changes the shaping of a sandbox's attachment to NETWORK (every attachment when network is
 * undefined): each setting given replaces its own, the others stay; 'clear' removes all of it.
 */
export async function shapeSandbox(ctx: Ctx, sandbox: string, network: string | undefined, change: Shape | 'clear'): Promise<void> {
  const { store, applier } = ctx;
  readySandbox(store, sandbox);
  const all = store.attachments({ sandbox });
  const targets = network === undefined ? all : all.filter((a) => a.network === network);
  if (network !== undefined && targets.length === 0) {
    existingNetwork(store, network);
    throw new CtnetError('NOT_FOUND', `sandbox ${sandbox} is not connected to network ${network}`, `its networks: ${all.map((a) => a.network).join(', ') || 'none'}`);
  }
  if (targets.length === 0) throw new CtnetError('NOT_FOUND', `sandbox ${sandbox} has no network to shape`);
  await applier.transaction(async (tx) => {
    const plan = tx.decide((rec) => targets.flatMap((a) => {
      const have = store.shaping(sandbox, a.network);
      const merged = change === 'clear' ? undefined : mergeShape(have, change);
      const want = merged && !isEmpty(merged) ? merged : undefined;
      recordShape(rec, sandbox, a.network, want);
      return shapeSteps(store, a, want, have);
    }));
    await tx.run(plan);
    tx.commit();
  });
}
