// Benchmark, in process (no root, no kernel: the fake one): what one `ctnet create` costs ctnetd
// when the live page is open, at N sandboxes on two networks with ui.ts's two label rules. Per
// sample: the create itself (store, policy, the fake kernel's plans), then the page's part of the
// change: updateGraph (the touched sandbox read again, the policy edges), graphDelta and the
// delta's JSON (what goes out as the event), and the process's RSS after it. The peer is the same
// code with another commit's tree (--root DIR): a copy of that commit (git archive) with
// node_modules linked in.
//
//   scripts/node bench/ui-update.ts [--sandboxes 500] [--samples 5] [--root DIR]
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { intOption, loadAverage, round, stats } from './lib.ts';

const { values } = parseArgs({ options: { sandboxes: { type: 'string' }, samples: { type: 'string' }, root: { type: 'string' } } });
const n = intOption('sandboxes', values.sandboxes, 500, 1, 5000);
const samples = intOption('samples', values.samples, 5, 1, 50);
const root = resolve(values.root ?? join(import.meta.dirname, '..'));

const { Applier } = await import(`${root}/src/engine/applier.ts`);
const { createNetwork } = await import(`${root}/src/engine/network.ts`);
const { addPolicies } = await import(`${root}/src/engine/policy.ts`);
const { createSandbox } = await import(`${root}/src/engine/sandbox.ts`);
const { buildGraph, updateGraph, graphDelta } = await import(`${root}/src/engine/graph.ts`);
const { FakeKernel } = await import(`${root}/src/kernel/fake.ts`);
const { parseAttachSpec, parseNetworkSpec } = await import(`${root}/src/model/spec.ts`);
const { Store } = await import(`${root}/src/store/store.ts`);

const dir = mkdtempSync(join('/dev/shm', 'ctnet-ui-update-'));
const store = new Store(dir);
const kernel = new FakeKernel();
const ctx = { store, kernel, warn: () => {}, applier: new Applier({ backend: kernel, store, warn: () => {} }) };
try {
  console.log(`ui-update: ${root}, ${n} sandboxes, ${samples} samples, load ${loadAverage()}`);
  await createNetwork(ctx, parseNetworkSpec({ name: 'n0', subnet: ['10.210.0.0/16'] }));
  await createNetwork(ctx, parseNetworkSpec({ name: 'n1', subnet: ['10.211.0.0/16'] }));
  for (let i = 0; i < n; i++) await createSandbox(ctx, `s${i}`, parseAttachSpec({ network: [`n${i % 2}`] }), undefined, [{ key: 'tier', value: i % 3 === 0 ? 'a' : 'b' }]);
  // The rules after the sandboxes, as ui.ts's topology file applies them.
  await addPolicies(ctx, [{ action: 'allow', from: 'label:tier=a', to: 'label:tier=b', port: '80', name: 'a-to-b' }, { action: 'deny', from: 'label:tier=b', to: 'label:tier=a', port: undefined, name: 'b-not-a' }]);
  let graph = await buildGraph(ctx);
  const rows = { create: [] as number[], update: [] as number[], delta: [] as number[], json: [] as number[], bytes: [] as number[], rssMiB: [] as number[] };
  for (let k = 0; k < samples; k++) {
    const name = `new${k}`;
    const t0 = performance.now();
    await createSandbox(ctx, name, parseAttachSpec({ network: [`n${k % 2}`] }), undefined, [{ key: 'tier', value: k % 2 ? 'a' : 'b' }]);
    const t1 = performance.now();
    const next = await updateGraph(ctx, graph, new Set([name]));
    const t2 = performance.now();
    const d = graphDelta(graph, next);
    const t3 = performance.now();
    const json = JSON.stringify(d);
    const t4 = performance.now();
    graph = next;
    rows.create.push(t1 - t0);
    rows.update.push(t2 - t1);
    rows.delta.push(t3 - t2);
    rows.json.push(t4 - t3);
    rows.bytes.push(json.length);
    rows.rssMiB.push(process.memoryUsage().rss / 2 ** 20);
  }
  for (const [what, xs] of Object.entries(rows)) {
    const s = stats(xs);
    console.log(`  ${what.padEnd(8)} p50 ${round(s.p50)}  p95 ${round(s.p95)}  (${xs.map((x) => round(x)).join(', ')})`);
  }
  console.log(`  load ${loadAverage()}`);
} finally {
  store.close();
  rmSync(dir, { recursive: true, force: true });
}
