// Use cases for the published ports of a live sandbox: `ctnet port add` and `ctnet port rm`.
import { formatPortSpec, type PortMapping } from '../model/ports.ts';
import type { Ctx } from './context.ts';
import { applyPorts, findPort, portFacts, portTargets, readHost, recordPorts, unapplyPorts, type PublishRequest } from './ports.ts';
import { getSandbox } from './sandbox.ts';
import { transaction } from './undo.ts';

export async function publish(ctx: Ctx, sandbox: string, req: PublishRequest): Promise<void> {
  const { store, runner } = ctx;
  getSandbox(ctx, sandbox);
  const host = await readHost(ctx, req);
  const rows = store.write(() => recordPorts(store, sandbox, req, host), { rollback: runner.dryRun });
  const targets = portTargets(store, sandbox);
  await transaction(async (undo) => {
    await applyPorts(ctx, rows.map((mapping) => ({ mapping, targets })), undo);
  }, ctx.warn).catch((e) => {
    if (!runner.dryRun) store.write(() => rows.forEach((r) => store.deletePort(r)));
    throw e;
  });
}

export async function unpublish(ctx: Ctx, sandbox: string, mappings: readonly PortMapping[]): Promise<void> {
  const { store, runner } = ctx;
  getSandbox(ctx, sandbox);
  const all = store.ports({ sandbox });
  const bySpec = new Map(all.map((r) => [formatPortSpec(r), r]));
  const rows = mappings.map((m) => bySpec.get(formatPortSpec(m)) ?? findPort(store, sandbox, m, all));
  const chosen = new Set(rows.map((r) => `${r.proto} ${r.hostIp} ${r.hostPort}`));
  const facts = portFacts(store, sandbox).filter((f) => chosen.has(`${f.mapping.proto} ${f.mapping.hostIp} ${f.mapping.hostPort}`));
  await unapplyPorts(ctx, facts);
  if (!runner.dryRun) store.write(() => rows.forEach((r) => store.deletePort(r)));
}
