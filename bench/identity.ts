// Benchmark: what per-port identity (the bridge ctnet table) costs traffic between two sandboxes on
// one bridge: TCP throughput (iperf3) and new TCP connections per second (bench/connrate.ts), with
// the identity rules on, and off (the lab host's identity chain flushed; `ctnet gc` puts it back),
// at a few numbers of sandboxes on the network. Every frame from either sandbox passes the chain.
//
//   scripts/node bench/identity.ts [--levels 10,1000] [--seconds N] [--repeat N] [--json]
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { table } from '../src/cli/table.ts';
import { Lab, ROOT } from '../src/lab/lab.ts';
import { destroyAll, intOption, levelsAndBaseline, optionsOrExit, progress, trapSignals } from './lib.ts';

const NODE = join(ROOT, 'scripts', 'node');
const CONNRATE = join(ROOT, 'bench', 'connrate.ts');
const CONN_PORT = 7000;
const PARALLEL = 8;

interface Options {
  readonly levels: number[];
  readonly seconds: number;
  readonly repeat: number;
  readonly json: boolean;
}

const USAGE = `usage: scripts/node bench/identity.ts [--levels L,L,...] [--seconds N] [--repeat N] [--json]
  --levels L,...  sandboxes on the network, ascending, at least 2 (default 10,1000)
  --seconds N     length of each throughput and connection-rate test (default 3)
  --repeat N      tests per mode, on and off taken in turn; the median is reported (default 3)
  --json          print the results as JSON instead of a table`;

function parseOptions(argv: readonly string[]): Options | 'help' {
  const { values } = parseArgs({
    args: [...argv],
    options: {
      levels: { type: 'string' }, seconds: { type: 'string' }, repeat: { type: 'string' },
      json: { type: 'boolean', default: false }, help: { type: 'boolean', short: 'h', default: false },
    },
    strict: true,
    allowPositionals: false,
  });
  if (values.help) return 'help';
  const { levels } = levelsAndBaseline(values, [10, 1000], 5000);
  if (levels[0]! < 2) throw new Error('--levels: the two sandboxes measured count, so at least 2');
  return { levels, seconds: intOption('seconds', values.seconds, 3, 1, 30), repeat: intOption('repeat', values.repeat, 3, 1, 20), json: values.json };
}

const median = (xs: readonly number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

interface Sample { readonly gbps: number; readonly connPerSec: number }
interface LevelResult { readonly sandboxes: number; readonly on: Sample; readonly off: Sample }

async function ok(r: Promise<{ code: number; stdout: string; stderr: string }>, what: string): Promise<string> {
  const x = await r;
  if (x.code !== 0) throw new Error(`${what} failed (${x.code}): ${x.stderr.trim()}`);
  return x.stdout;
}

async function setMode(lab: Lab, on: boolean): Promise<void> {
  if (on) await lab.ctnetOk(['gc']); // rewrites both of ctnet's tables from the store
  else await ok(lab.inHost(['nft', 'flush', 'chain', 'bridge', 'ctnet', 'identity']), 'flushing the identity chain');
  const rules = await ok(lab.inHost(['nft', 'list', 'chain', 'bridge', 'ctnet', 'identity']), 'listing the identity chain');
  if (/spoofed/.test(rules) !== on) throw new Error(`the identity chain is not ${on ? 'on' : 'off'}`);
}

async function sample(lab: Lab, server: string, seconds: number): Promise<Sample> {
  const iperf = JSON.parse(await ok(lab.ctnet(['exec', 'cli', '--', 'iperf3', '-c', server, '-t', String(seconds), '-J']), 'iperf3')) as
    { end: { sum_received: { bits_per_second: number } } };
  const rate = JSON.parse(await ok(lab.ctnet(['exec', 'cli', '--', NODE, CONNRATE, 'connect', server, String(CONN_PORT), String(seconds), String(PARALLEL)]), 'connrate')) as
    { connections: number; seconds: number };
  return { gbps: iperf.end.sum_received.bits_per_second / 1e9, connPerSec: rate.connections / rate.seconds };
}

async function main(): Promise<number> {
  const opts = optionsOrExit(parseOptions, USAGE);
  if (typeof opts === 'number') return opts;
  const { abort, interrupted } = trapSignals();
  const lab = await Lab.create();
  let code = 0;
  try {
    await lab.ctnetOk(['network', 'create', 'bench', '--subnet', '10.200.0.0/16']);
    await lab.ctnetOk(['run', '-d', '--name', 'srv', '--network', 'bench', '--ip', '10.200.0.2', '--',
      'sh', '-c', `iperf3 -s -D && exec ${NODE} ${CONNRATE} serve ${CONN_PORT}`]);
    await lab.ctnetOk(['create', 'cli', '--network', 'bench']);
    const server = '10.200.0.2';
    // Until the server listens: a one-second connection test succeeds.
    for (let i = 0; i < 50 && (await lab.ctnet(['exec', 'cli', '--', NODE, CONNRATE, 'connect', server, String(CONN_PORT), '1', '1'])).code !== 0; i++) {
      await new Promise((r) => setTimeout(r, 100));
    }
    const results: LevelResult[] = [];
    let count = 2;
    for (const level of opts.levels) {
      progress(`filling to ${level} sandboxes`);
      for (; count < level; count++) {
        if (abort.signal.aborted) return interrupted();
        await lab.ctnetOk(['create', `idle${count}`, '--network', 'bench']);
      }
      const on: Sample[] = [];
      const off: Sample[] = [];
      for (let r = 0; r < opts.repeat; r++) {
        for (const mode of r % 2 === 0 ? [true, false] : [false, true]) {
          if (abort.signal.aborted) return interrupted();
          progress(`${level} sandboxes: identity ${mode ? 'on' : 'off'}, test ${r + 1} of ${opts.repeat}`);
          await setMode(lab, mode);
          (mode ? on : off).push(await sample(lab, server, opts.seconds));
        }
      }
      await setMode(lab, true);
      const med = (xs: Sample[]): Sample => ({ gbps: median(xs.map((x) => x.gbps)), connPerSec: median(xs.map((x) => x.connPerSec)) });
      results.push({ sandboxes: level, on: med(on), off: med(off) });
    }
    if (opts.json) process.stdout.write(JSON.stringify({ seconds: opts.seconds, repeat: opts.repeat, results }, null, 2) + '\n');
    else {
      const f = (x: number, d = 2) => x.toFixed(d);
      process.stdout.write(`per-port identity: sandbox -> sandbox on one bridge, iperf3 TCP and new TCP connections (${PARALLEL} at a time), ${opts.seconds} s per test, median of ${opts.repeat}\n`);
      process.stdout.write(table(['sandboxes', 'Gbit/s on', 'Gbit/s off', 'on/off', 'conn/s on', 'conn/s off', 'on/off'],
        results.map((r) => [String(r.sandboxes), f(r.on.gbps), f(r.off.gbps), f(r.on.gbps / r.off.gbps, 3), f(r.on.connPerSec, 0), f(r.off.connPerSec, 0),
          f(r.on.connPerSec / r.off.connPerSec, 3)])) + '\n');
    }
  } catch (e) {
    process.stderr.write(`bench: ${(e as Error).message}\n`);
    code = interrupted() || 1;
  } finally {
    progress('cleaning up');
    code ||= await destroyAll([lab]);
  }
  return code;
}

process.exitCode = await main();
