// Shaping an attachment on its host veth, for the drivers whose sandboxes hang off one (bridge,
// vxlan). Pure.
//
// Into the sandbox: the host veth's egress queue (tbf for the rate; netem, as tbf's child, for delay
// and loss). Out of the sandbox: a veth's ingress has no queue, so everything it receives is
// redirected (u32 match-all, mirred) to an ifb device whose egress queue is shaped the same way.
// The other way to limit ingress, a policer, drops what exceeds the rate instead of queueing it:
// TCP then backs off below the limit (and this kernel has no act_police); queueing on the ifb
// gives the same accuracy both ways.
import { directions, type DirShape, type Shape } from '../model/shape.ts';
import type { Op } from '../plan/ops.ts';
import { step, type Step } from '../plan/plan.ts';
import type { ShapedAttachment } from './driver.ts';

const same = (a: DirShape | undefined, b: DirShape | undefined) => JSON.stringify(a ?? null) === JSON.stringify(b ?? null);

/** The steps that take an attachment's qdiscs from `have` to `want` (undefined: unshaped). */
export function hostShapeSteps(a: ShapedAttachment, want: Shape | undefined, have: Shape | undefined): Step[] {
  const w = want ? directions(want) : {};
  const h = have ? directions(have) : {};
  const ops: Op[] = [];
  // Into the sandbox: the host veth's root qdisc.
  if (w.in && !same(w.in, h.in)) ops.push({ kind: 'qdisc.shape', dev: a.hostVeth, shape: w.in, previous: h.in });
  else if (!w.in && h.in) ops.push({ kind: 'qdisc.del', dev: a.hostVeth, parent: 'root', previous: h.in });
  if (w.out && !h.out) {
    // The ifb is shaped before anything is redirected to it.
    ops.push(
      { kind: 'link.add.ifb', name: a.ifb },
      { kind: 'qdisc.shape', dev: a.ifb, shape: w.out },
      { kind: 'filter.redirect', dev: a.hostVeth, to: a.ifb },
    );
  } else if (w.out && !same(w.out, h.out)) {
    ops.push({ kind: 'qdisc.shape', dev: a.ifb, shape: w.out, previous: h.out });
  } else if (!w.out && h.out) {
    // The redirect goes first: redirected to a deleted device, the sandbox's packets would be
    // dropped. Each removal knows what it removes, so a rollback makes it all again.
    ops.push(
      { kind: 'qdisc.del', dev: a.hostVeth, parent: 'ingress', previous: a.ifb },
      { kind: 'qdisc.del', dev: a.ifb, parent: 'root', previous: h.out },
      { kind: 'link.del', name: a.ifb, ifb: true },
    );
  }
  const what = want ? describe(want) : 'unshaped';
  return ops.length ? [step(ops, `${a.sandbox}: ${a.hostVeth} ${what}`)] : [];
}

function describe(s: Shape): string {
  const parts = [
    s.rateIn !== undefined ? `in ${s.rateIn} bit/s` : '',
    s.rateOut !== undefined ? `out ${s.rateOut} bit/s (through ifb)` : '',
    s.latencyMs !== undefined ? `+${s.latencyMs} ms in` : '',
    s.lossPct !== undefined ? `${s.lossPct}% loss in` : '',
  ].filter(Boolean);
  return `shaped: ${parts.join(', ')}`;
}
