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
// `trace cross-host` (unless --local-only): a second lab host and etcd (as test/lab/trace-overlay.test.ts
// has them), `ctnet trace x y:7000` from a sandbox on h1 to one on h2 over an overlay network, with
// h2's half traced by h2's ctnetd on request through etcd; beside the local `trace answered` of the
// same run.
//
// As root: scripts/node bench/trace.ts [--repeat 20] [--baseline /path/to/old/bin/ctnet] [--local-only]
import { execFile } from 'node:child_process';
import { parseArgs } from 'node:util';
import { EtcdLab } from '../src/lab/etcd.ts';
import { Lab } from '../src/lab/lab.ts';
import { intOption, loadAverage, quantile, timed } from './lib.ts';

const { values } = parseArgs({ options: { repeat: { type: 'string' }, baseline: { type: 'string' }, 'local-only': { type: 'boolean' } } });
const repeat = intOption('repeat', values.repeat, 20, 1, 500);
const lab = await Lab.create();
let etcd: EtcdLab | undefined;
let h2: Lab | undefined;
/** trace's own timings (--json), per phase: ms from trace's start, not the process's. */
const phases: Record<string, number[]> = {};
const crossPhases: Record<string, number[]> = {};
const baseline = (args: string[]) => new Promise<void>((resolve, reject) => execFile('nsenter', [`--net=/run/netns/${lab.host}`, values.baseline!, ...args],
  { env: { ...process.env, CTNET_STATE_DIR: lab.stateDir } }, (e) => (e ? reject(e) : resolve())));
try {
  await lab.ctnetOk(['network', 'create', 'front', '--subnet', '10.87.1.0/24']);
  await lab.ctnetOk(['network', 'create', 'back', '--subnet', '10.87.2.0/24']);
  for (const [n, net] of [['a', 'front'], ['b', 'front'], ['c', 'back']]) {
    await lab.ctnetOk(['run', '-d', '--name', n!, '--network', net!, '--', ...Lab.serverArgv(n!, { tcp: 7000 })]);
  }
  const b = (JSON.parse(await lab.ctnetOk(['inspect', 'b', '--json'])) as { interfaces: { addresses: string[] }[] }).interfaces[0]!.addresses[0]!.split('/')[0]!;
  let y = '';
  if (!values['local-only']) {
    etcd = await EtcdLab.create();
    h2 = await Lab.create();
    await etcd.connect(lab.host);
    await etcd.connect(h2.host);
    for (const [l, name] of [[lab, 'h1'], [h2, 'h2']] as const) await l.ctnetOk(['cluster', 'join', '--etcd', etcd.url, '--underlay', 'underlay0', '--host-name', name]);
    await lab.ctnetOk(['network', 'create', 'ov', '--driver', 'vxlan', '--subnet', '10.88.0.0/16']);
    await lab.ctnetOk(['run', '-d', '--name', 'x', '--network', 'ov', '--', ...Lab.serverArgv('x', { tcp: 7000 })]);
    await h2.ctnetOk(['run', '-d', '--name', 'y', '--network', 'ov', '--', ...Lab.serverArgv('y', { tcp: 7000 })]);
    y = (JSON.parse(await h2.ctnetOk(['inspect', 'y', '--json'])) as { interfaces: { addresses: string[] }[] }).interfaces[0]!.addresses[0]!.split('/')[0]!;
    // Until each host's ctnetd has the other's lease, there is no way across (a bound for a hung setup only).
    const start = performance.now();
    while ((await lab.ctnet(['exec', 'x', '--', ...Lab.probeArgv('tcp', y, 7000, 1000)])).code !== 0) {
      if (performance.now() - start > 120_000) throw new Error('x never reached y across the overlay');
      await new Promise((r) => setTimeout(r, 200));
    }
  }
  await new Promise((r) => setTimeout(r, 1000));
  const sides: Record<string, () => Promise<unknown>> = {
    'trace answered': async () => {
      const r = JSON.parse(await lab.ctnetOk(['trace', 'a', 'b:7000', '--json'])) as { outcome: string; timings: Record<string, number> };
      if (r.outcome !== 'answered') throw new Error(`trace a b:7000: ${r.outcome}`);
      for (const [k, v] of Object.entries(r.timings)) (phases[k] ??= []).push(v);
    },
    ...(values.baseline ? { 'trace answered (--baseline)': () => baseline(['trace', 'a', 'b:7000']) } : {}),
    ...(y ? { 'trace cross-host answered': async () => {
      const r = JSON.parse(await lab.ctnetOk(['trace', 'x', `${y}:7000`, '--json'])) as { outcome: string; remote?: { outcome?: string; error?: string }; timings: Record<string, number> };
      if (r.outcome !== 'answered' || r.remote?.outcome !== 'answered') throw new Error(`trace x ${y}:7000: ${r.outcome}, h2: ${JSON.stringify(r.remote)}`);
      for (const [k, v] of Object.entries(r.timings)) (crossPhases[k] ??= []).push(v);
    } } : {}),
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
  if (y) {
    console.log(`trace cross-host answered / trace answered: ${(p50('trace cross-host answered') / p50('trace answered')).toFixed(2)}`);
    console.log(`inside cross-host trace (p50, ms from its start): ${Object.entries(crossPhases).map(([k, xs]) => `${k} ${quantile([...xs].sort((x, y) => x - y), 0.5).toFixed(0)}`).join(', ')}`);
  }
  if (values.baseline) console.log(`trace answered / baseline: ${(p50('trace answered') / p50('trace answered (--baseline)')).toFixed(2)}`);
} finally {
  await h2?.destroy();
  await lab.destroy();
  await etcd?.destroy();
}
