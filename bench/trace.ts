// ctnet trace end to end (issue 16: goal p50 under a second): `ctnet trace a b:7000` between two
// sandboxes on one network (answered), and `ctnet trace a c:7000` across isolated networks (dropped:
// the probe waits out its timeout, --timeout 500 here), N times each, in one lab. Beside it, in the
// same run, what a person does by hand for the answered case: `ip netns exec a nc -z` alone (the
// probe without any tracing), so the ratio says what the tracing costs.
//
// `ctnet ls` beside them is the floor every command pays (a process start and the store's open).
// --baseline CTNET adds `trace answered` run by another ctnet executable (an older checkout's
// bin/ctnet) against the same lab, so a change to trace is measured against what it replaces in
// the same run.
//
// As root: scripts/node bench/trace.ts [--repeat 20] [--baseline /path/to/old/bin/ctnet]
import { execFile } from 'node:child_process';
import { parseArgs } from 'node:util';
import { Lab } from '../src/lab/lab.ts';
import { intOption, loadAverage, quantile, timed } from './lib.ts';

const { values } = parseArgs({ options: { repeat: { type: 'string' }, baseline: { type: 'string' } } });
const repeat = intOption('repeat', values.repeat, 20, 1, 500);
const lab = await Lab.create();
/** trace's own timings (--json), per phase: ms from trace's start, not the process's. */
const phases: Record<string, number[]> = {};
const baseline = (args: string[]) => new Promise<void>((resolve, reject) => execFile('nsenter', [`--net=/run/netns/${lab.host}`, values.baseline!, ...args],
  { env: { ...process.env, CTNET_STATE_DIR: lab.stateDir } }, (e) => (e ? reject(e) : resolve())));
try {
  await lab.ctnetOk(['network', 'create', 'front', '--subnet', '10.87.1.0/24']);
  await lab.ctnetOk(['network', 'create', 'back', '--subnet', '10.87.2.0/24']);
  for (const [n, net] of [['a', 'front'], ['b', 'front'], ['c', 'back']]) {
    await lab.ctnetOk(['run', '-d', '--name', n!, '--network', net!, '--', ...Lab.serverArgv(n!, { tcp: 7000 })]);
  }
  const b = (JSON.parse(await lab.ctnetOk(['inspect', 'b', '--json'])) as { interfaces: { addresses: string[] }[] }).interfaces[0]!.addresses[0]!.split('/')[0]!;
  await new Promise((r) => setTimeout(r, 1000));
  const sides: Record<string, () => Promise<unknown>> = {
    'trace answered': async () => {
      const r = JSON.parse(await lab.ctnetOk(['trace', 'a', 'b:7000', '--json'])) as { outcome: string; timings: Record<string, number> };
      if (r.outcome !== 'answered') throw new Error(`trace a b:7000: ${r.outcome}`);
      for (const [k, v] of Object.entries(r.timings)) (phases[k] ??= []).push(v);
    },
    ...(values.baseline ? { 'trace answered (--baseline)': () => baseline(['trace', 'a', 'b:7000']) } : {}),
    'trace dropped (--timeout 500)': () => lab.ctnetOk(['trace', 'a', 'c:7000', '--timeout', '500']),
    'nc alone (ctnet exec)': () => lab.ctnetOk(['exec', 'a', '--', 'nc', '-z', '-n', '-w', '1', b, '7000']),
    'ctnet ls (the floor)': () => lab.ctnetOk(['ls']),
  };
  const samples = new Map(Object.keys(sides).map((k) => [k, [] as number[]]));
  for (let r = 0; r < repeat; r++) for (const [k, f] of Object.entries(sides)) samples.get(k)!.push(await timed(f));
  console.log(`bench/trace.ts --repeat ${repeat} (load ${loadAverage()})`);
  const p50 = (k: string) => quantile([...samples.get(k)!].sort((x, y) => x - y), 0.5);
  for (const k of Object.keys(sides)) console.log(`${k.padEnd(32)} p50 ${p50(k).toFixed(0).padStart(5)} ms   p90 ${quantile([...samples.get(k)!].sort((x, y) => x - y), 0.9).toFixed(0).padStart(5)} ms`);
  console.log(`trace answered / nc alone: ${(p50('trace answered') / p50('nc alone (ctnet exec)')).toFixed(2)}`);
  console.log(`trace answered - ctnet ls (trace's own work): ${(p50('trace answered') - p50('ctnet ls (the floor)')).toFixed(0)} ms`);
  console.log(`inside trace (p50, ms from its start): ${Object.entries(phases).map(([k, xs]) => `${k} ${quantile([...xs].sort((x, y) => x - y), 0.5).toFixed(0)}`).join(', ')}`);
  if (values.baseline) console.log(`trace answered / baseline: ${(p50('trace answered') / p50('trace answered (--baseline)')).toFixed(2)}`);
} finally {
  await lab.destroy();
}
