// `ctnet graph` at scale (issue 16): wall time of `ctnet graph --json` with 10 and then 500
// sandboxes (made with one `ctnet apply -f`, on two networks), in one lab. Beside it, in the same
// run: `ctnet ls --json` (the same process start and store read, no kernel reads: the floor), and
// one `ip -n NS -j link` per sandbox namespace (the reads graph made before it read the host's side
// once: what a person does by hand, and what 500 namespaces cost that way).
//
// As root: scripts/node bench/graph.ts [--repeat 5] [--sandboxes 10,500]
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { Lab } from '../src/lab/lab.ts';
import { exec, execOk, intOption, loadAverage, quantile, timed } from './lib.ts';

const { values } = parseArgs({ options: { repeat: { type: 'string' }, sandboxes: { type: 'string' } } });
const repeat = intOption('repeat', values.repeat, 5, 1, 100);
const sizes = (values.sandboxes ?? '10,500').split(',').map((x) => intOption('sandboxes', x, 10, 1, 2000));

function topologyFile(n: number): string {
  const lines = ['name: graph', 'networks:', '  g0: { subnets: [10.70.0.0/21] }', '  g1: { subnets: [10.70.8.0/21] }', 'sandboxes:'];
  for (let i = 0; i < n; i++) lines.push(`  s${i}: { networks: [g${i % 2}], labels: { g: "${i % 10}" } }`);
  lines.push('policy:', '  - { name: r0, action: allow, from: "label:g=0", to: "label:g=1", port: 80/tcp }');
  return lines.join('\n') + '\n';
}

const dir = mkdtempSync(join(tmpdir(), 'ctnet-bench-graph-'));
const lab = await Lab.create();
const stop = () => void lab.destroy().then(() => process.exit(130));
process.once('SIGINT', stop).once('SIGTERM', stop);
const ctnet = (args: string[]) => execOk(['nsenter', `--net=/run/netns/${lab.host}`, lab.ctnetBin, ...args], { env: { CTNET_STATE_DIR: lab.stateDir } });
const p50 = (xs: number[]) => quantile([...xs].sort((a, b) => a - b), 0.5);
try {
  console.log(`bench/graph.ts --repeat ${repeat} (load ${loadAverage()})`);
  for (const n of sizes) {
    const file = join(dir, `graph-${n}.yaml`);
    writeFileSync(file, topologyFile(n));
    await ctnet(['apply', '-f', file, '--yes']);
    const g = JSON.parse(await ctnet(['graph', '--json'])) as { sandboxes: { name: string; interfaces: { present: boolean }[] }[] };
    const missing = g.sandboxes.filter((s) => s.interfaces.some((i) => !i.present)).length;
    if (g.sandboxes.length !== n || missing) throw new Error(`graph shows ${g.sandboxes.length} sandboxes (${missing} with a missing interface), want ${n}`);
    const namespaces = (JSON.parse(await ctnet(['ls', '--json'])) as { netns: string }[]).map((s) => s.netns);
    const sides: Record<string, () => Promise<unknown>> = {
      'ctnet graph --json': () => ctnet(['graph', '--json']),
      'ctnet ls --json (floor)': () => ctnet(['ls', '--json']),
      'ip -n NS link, per sandbox': async () => {
        for (const ns of namespaces) {
          const argv = ns.startsWith('/run/netns/') ? ['ip', '-n', ns.slice('/run/netns/'.length), '-j', 'link'] : ['nsenter', `--net=${ns}`, 'ip', '-j', 'link'];
          // Once again on a failure: on a loaded machine a spawn now and then fails (EAGAIN).
          const r = (await exec(argv)).code === 0 ? undefined : await exec(argv);
          if (r && r.code !== 0) throw new Error(`${argv.join(' ')} failed (${r.code}): ${r.stderr}`);
        }
      },
    };
    const samples = new Map(Object.keys(sides).map((k) => [k, [] as number[]]));
    for (let r = 0; r < repeat; r++) for (const [k, f] of Object.entries(sides)) samples.get(k)!.push(await timed(f));
    console.log(`${n} sandboxes:`);
    for (const [k, xs] of samples) console.log(`  ${k.padEnd(30)} p50 ${p50(xs).toFixed(0).padStart(6)} ms   p90 ${quantile([...xs].sort((a, b) => a - b), 0.9).toFixed(0).padStart(6)} ms`);
    console.log(`  graph / ls: ${(p50(samples.get('ctnet graph --json')!) / p50(samples.get('ctnet ls --json (floor)')!)).toFixed(2)}`);
  }
} finally {
  await lab.destroy();
  rmSync(dir, { recursive: true, force: true });
}
