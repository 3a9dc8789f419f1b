// Benchmark: what the CNI plugin executable costs, by design. The same VERSION, ADD and DEL go
// through (1) the C client + ctnetd (what `ctnet cni install` installs), (2) the smallest Node
// client + the same ctnetd (bench/node-client.mjs), (3) `ctnet cni exec`, the whole engine in a
// fresh Node process with no daemon. Timed: one plugin exec, from spawn to exit, in a lab.
//
//   scripts/node bench/cni-client.ts [--samples N] [--json]
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { table } from '../src/cli/table.ts';
import { Lab, ROOT } from '../src/lab/lab.ts';
import { exec, execOk, intOption, quantile, timed } from './lib.ts';

const { values } = parseArgs({ options: { samples: { type: 'string' }, json: { type: 'boolean', default: false } } });
const samples = intOption('samples', values.samples, 20, 1, 1000);

const NODE = join(ROOT, 'scripts', 'node');
const clients = (bin: string): Record<string, string[]> => ({
  'C client + ctnetd': [bin],
  'Node client + ctnetd': ['env', '-u', 'NODE_EXTRA_CA_CERTS', NODE, join(ROOT, 'bench', 'node-client.mjs')],
  'ctnet cni exec (no daemon)': [join(ROOT, 'bin', 'ctnet'), 'cni', 'exec'],
});

const lab = await Lab.create();
const dir = mkdtempSync(join(tmpdir(), 'ctbench-client-'));
const netns = `ctbench-${lab.id}-c`;
const stop = async () => {
  await exec(['ip', 'netns', 'del', netns]);
  await lab.destroy();
  rmSync(dir, { recursive: true, force: true });
};
process.once('SIGINT', () => void stop().then(() => process.exit(130)));
process.once('SIGTERM', () => void stop().then(() => process.exit(143)));
try {
  await lab.ctnetOk(['network', 'create', 'bench', '--subnet', '10.202.0.0/16']);
  const [bin, conflist] = (await lab.ctnetOk(['cni', 'install', '--bin-dir', join(dir, 'bin'), '--conf-dir', join(dir, 'conf'), '--network', 'bench'])).trim().split('\n');
  const list = JSON.parse(readFileSync(conflist!, 'utf8')) as { cniVersion: string; name: string; plugins: Record<string, unknown>[] };
  const conf = JSON.stringify({ ...list.plugins[0], cniVersion: list.cniVersion, name: list.name });
  await execOk(['ip', 'netns', 'add', netns]);
  const env = (command: string) => ({
    CNI_COMMAND: command, CNI_CONTAINERID: 'bench1', CNI_NETNS: `/run/netns/${netns}`, CNI_IFNAME: 'eth0', CNI_PATH: '/usr/lib/cni',
    CTNET_STATE_DIR: lab.stateDir,
  });
  const run = (argv: string[], command: string) => execOk(['nsenter', `--net=/run/netns/${lab.host}`, ...argv], { input: conf, env: env(command) });
  // Warm-up: starts ctnetd and fills the caches of every path once.
  for (const argv of Object.values(clients(bin!))) {
    await run(argv, 'ADD');
    await run(argv, 'DEL');
  }
  const results: Record<string, Record<string, number[]>> = {};
  for (let i = 0; i < samples; i++) {
    const order = Object.entries(clients(bin!));
    if (i % 2) order.reverse();
    for (const [name, argv] of order) {
      const r = (results[name] ??= { VERSION: [], ADD: [], DEL: [] });
      for (const command of ['VERSION', 'ADD', 'DEL']) r[command]!.push(await timed(() => run(argv, command)));
    }
  }
  const rows = Object.entries(results).map(([name, r]) => {
    const q = (c: string, p: number) => quantile([...r[c]!].sort((a, b) => a - b), p);
    return { name, ...Object.fromEntries(['VERSION', 'ADD', 'DEL'].flatMap((c) => [[`${c} p50`, q(c, 0.5)], [`${c} p95`, q(c, 0.95)]])) } as Record<string, string | number>;
  });
  if (values.json) console.log(JSON.stringify(rows, null, 2));
  else {
    const cols = ['VERSION p50', 'VERSION p95', 'ADD p50', 'ADD p95', 'DEL p50', 'DEL p95'];
    console.log(`${samples} samples each, ms (one plugin exec, spawn to exit, through nsenter)`);
    console.log(table(['client', ...cols], rows.map((r) => [String(r.name), ...cols.map((c) => (r[c] as number).toFixed(1))])));
  }
} finally {
  await stop();
}
