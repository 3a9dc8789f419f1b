// Use cases for the published ports of a live sandbox: `ctnet port add` and `ctnet port rm`.
import { formatPortSpec, type PortMapping } from '../model/ports.ts';
import type { Ctx } from './context.ts';
import { findPort, portFacts, portTargets, publishSteps, readHost, recordPorts, unpublishSteps, type PublishRequest } from './ports.ts';
import { readySandbox } from './records.ts';

export async function publish(ctx: Ctx, sandbox: string, req: PublishRequest): Promise<void> {
  const { store, applier } = ctx;
  readySandbox(store, sandbox);
  const host = await readHost(ctx, req);
  await applier.transaction(async (tx) => {
    const rows = tx.decide((rec) => recordPorts(rec, sandbox, req, host));
    const targets = portTargets(store, sandbox);
    await tx.run(publishSteps(rows.map((mapping) => ({ mapping, targets }))));
    tx.commit();
  });
}

export async function unpublish(ctx: Ctx, sandbox: string, mappings: readonly PortMapping[]): Promise<void> {
  const { store, applier } = ctx;
  readySandbox(store, sandbox);
  const all = store.ports({ sandbox });
  const bySpec = new Map(all.map((r) => [formatPortSpec(r), r]));
  const rows = mappings.map((m) => bySpec.get(formatPortSpec(m)) ?? findPort(store, sandbox, m, all));
  const chosen = new Set(rows.map((r) => `${r.proto} ${r.hostIp} ${r.hostPort}`));
  const facts = portFacts(store, sandbox).filter((f) => chosen.has(`${f.mapping.proto} ${f.mapping.hostIp} ${f.mapping.hostPort}`));
  await applier.teardown(unpublishSteps(facts));
  applier.record(...rows.map((row) => ({ kind: 'port.delete' as const, row })));
}
