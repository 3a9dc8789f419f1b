// Benchmark: the kernel's floor under a policy change (issue 20, point 1). One element added to and
// deleted from a set shaped as ctnet's policy sets (source . destination . protocol . port, interval,
// counter: the kernel's pipapo set), with 10 and with 10,000 elements present, by `nft -f` in a lab
// host: no ctnet in the way. What grows here with the element count grows in ctnet's `policy allow`
// and `policy rm` too, whatever ctnet does. See bench/README.md.
//
//   scripts/node bench/set-cost.ts [--elements 10000] [--samples 20] [--json]
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { table } from '../src/cli/table.ts';
import { Lab } from '../src/lab/lab.ts';
import { intOption, loadAverage, progress, round, stats, timed, trapSignals } from './lib.ts';

const { values } = parseArgs({ options: { elements: { type: 'string' }, samples: { type: 'string' }, json: { type: 'boolean', default: false } } });
const ELEMENTS = intOption('elements', values.elements, 10_000, 20, 100_000);
const SAMPLES = intOption('samples', values.samples, 20, 3, 1000);

const ip = (x: number) => [24, 16, 8, 0].map((s) => (x >>> s) & 255).join('.');
/** Element K: a /29 of 10.0.0.0/8 . 172.16.0.0/16 . tcp . a port (disjoint from every other and from the measured one). */
const element = (k: number) => `${ip((10 << 24) | (k << 3))}-${ip((10 << 24) | (k << 3) | 7)} . 172.16.0.0-172.16.255.255 . tcp . ${1000 + (k % 50_000)}`;
const MEASURED = '192.168.1.0-192.168.1.255 . 172.17.0.1 . tcp . 80';

const { interrupted } = trapSignals();
const tmp = mkdtempSync(join(tmpdir(), 'ctnet-bench-'));
let lab: Lab | undefined;
const results: { elements: number; addP50: number; deleteP50: number; addP95: number; deleteP95: number }[] = [];
try {
  progress(`load average ${loadAverage()}`);
  lab = await Lab.create();
  const l = lab;
  const nft = async (file: string) => {
    const r = await l.inHost(['nft', '-f', file]);
    if (r.code !== 0) throw new Error(`nft -f ${file}: ${r.stderr}`);
  };
  const write = (name: string, text: string) => {
    const f = join(tmp, name);
    writeFileSync(f, text);
    return f;
  };
  await nft(write('table.nft', 'table inet bench { set s { type ipv4_addr . ipv4_addr . inet_proto . inet_service; flags interval; counter; }; }\n'));
  const add = write('add.nft', `add element inet bench s { ${MEASURED} }\n`);
  const del = write('del.nft', `delete element inet bench s { ${MEASURED} }\n`);
  let have = 0;
  for (const level of [10, ELEMENTS]) {
    if (interrupted()) break;
    const lines: string[] = [];
    for (let k = have; k < level; k += 500) lines.push(`add element inet bench s { ${Array.from({ length: Math.min(500, level - k) }, (_, i) => element(k + i)).join(', ')} }`);
    await nft(write('fill.nft', `${lines.join('\n')}\n`));
    have = level;
    progress(`${level} elements; sampling (load ${loadAverage()})`);
    const adds: number[] = [];
    const dels: number[] = [];
    for (let i = 0; i < SAMPLES && !interrupted(); i++) {
      adds.push(await timed(() => nft(add)));
      dels.push(await timed(() => nft(del)));
    }
    const [a, d] = [stats(adds), stats(dels)];
    results.push({ elements: level, addP50: round(a.p50), deleteP50: round(d.p50), addP95: round(a.p95), deleteP95: round(d.p95) });
  }
  progress(`done (load ${loadAverage()})`);
  if (values.json) console.log(JSON.stringify({ samples: SAMPLES, results }, null, 2));
  else {
    console.log(table(['elements', 'nft add element p50 / p95 ms', 'nft delete element p50 / p95 ms'],
      results.map((r) => [String(r.elements), `${r.addP50} / ${r.addP95}`, `${r.deleteP50} / ${r.deleteP95}`])));
  }
} finally {
  await lab?.destroy();
  rmSync(tmp, { recursive: true, force: true });
}
