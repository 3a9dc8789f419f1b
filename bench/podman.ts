// Benchmark: wall time of `podman run --rm IMAGE true` (podman 4.3, rootful, in a lab host) with
// no network, with the reference CNI chain (bridge + host-local + portmap), with netavark, and
// with ctnet's CNI plugin, in one lab, interleaved round by round. See bench/README.md.
//
//   scripts/node bench/podman.ts [--runs N] [--sides none,reference,netavark,ctnet] [--json]
import { mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { cpus, release, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { table } from '../src/cli/table.ts';
import { Lab, ROOT } from '../src/lab/lab.ts';
import { IMAGE, Podman, REFERENCE_PLUGINS, referenceConflist } from '../test/lab/podman.ts';
import { exec, execOk, intOption, optionsOrExit, progress, quantile, round, type Stats, stats, timed, trapSignals } from './lib.ts';

const DEFAULT_RUNS = 10;
const SIDES = ['none', 'reference', 'netavark', 'ctnet'] as const;
type SideName = (typeof SIDES)[number];

// One subnet per side; every side has its own bridge in the one lab host.
const REF = { network: 'refbench', subnet: '10.231.0.0/24', bridge: 'cni-bench0' };
const NAV = { network: 'navbench', subnet: '10.232.0.0/24' };
const CT = { network: 'ctbench', subnet: '10.233.0.0/24' };

// ---------------------------------------------------------------------------------------------
// Options

interface Options {
  readonly runs: number;
  readonly sides: readonly SideName[];
  readonly json: boolean;
}

const USAGE = `usage: scripts/node bench/podman.ts [--runs N] [--sides LIST] [--json]
  --runs N      timed runs per side (default ${DEFAULT_RUNS})
  --sides LIST  comma-separated, from ${SIDES.join(',')} (default: all; none is always measured)
  --json        print the results as JSON instead of a table`;

function parseOptions(argv: readonly string[]): Options | 'help' {
  const { values } = parseArgs({
    args: [...argv],
    options: {
      runs: { type: 'string' },
      sides: { type: 'string' },
      json: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
    strict: true,
    allowPositionals: false,
  });
  if (values.help) return 'help';
  const runs = intOption('runs', values.runs, DEFAULT_RUNS, 1, 1000);
  const asked = (values.sides ?? SIDES.join(',')).split(',').map((s) => s.trim()).filter(Boolean);
  for (const s of asked) {
    if (!(SIDES as readonly string[]).includes(s)) throw new Error(`--sides: unknown side ${JSON.stringify(s)} (known: ${SIDES.join(', ')})`);
  }
  // none is the baseline every overhead is measured against.
  const sides = SIDES.filter((s) => s === 'none' || asked.includes(s));
  return { runs, sides, json: values.json };
}

// ---------------------------------------------------------------------------------------------
// The sides: one podman harness each (own storage, own containers.conf, own image).

interface Side {
  readonly name: SideName;
  readonly what: string;
  readonly pm: Podman;
  /** The --network value. */
  readonly network: string;
}

/** Makes a side's harness and network; the harness is pushed to `made` first, so it is cleaned up even if the network step fails. */
async function makeSide(name: SideName, lab: Lab, tmp: string, made: Podman[]): Promise<Side> {
  const dir = join(tmp, name);
  mkdirSync(dir);
  const track = (pm: Podman) => (made.push(pm), pm);
  switch (name) {
    case 'none': {
      // The CNI backend with an empty config dir: podman has no plugin to ask VERSION of.
      const pm = track(await Podman.create(lab, { backend: 'cni', networkConfigDir: join(dir, 'conf') }));
      return { name, what: '--network none', pm, network: 'none' };
    }
    case 'reference': {
      const pm = track(await Podman.create(lab, { backend: 'cni', cniPluginDirs: [REFERENCE_PLUGINS], networkConfigDir: join(dir, 'conf') }));
      pm.writeConflist(REF.network, referenceConflist({ name: REF.network, subnet: REF.subnet, bridge: REF.bridge, dataDir: join(dir, 'ipam') }));
      return { name, what: 'CNI: bridge + host-local + portmap', pm, network: REF.network };
    }
    case 'netavark': {
      const pm = track(await Podman.create(lab, { backend: 'netavark', networkConfigDir: join(dir, 'conf') }));
      await pm.createNetwork(NAV.network, NAV.subnet);
      return { name, what: 'netavark (podman network create)', pm, network: NAV.network };
    }
    case 'ctnet': {
      await lab.ctnetOk(['network', 'create', CT.network, '--subnet', CT.subnet]);
      const bin = join(dir, 'bin');
      const conf = join(dir, 'conf');
      await lab.ctnetOk(['cni', 'install', '--bin-dir', bin, '--conf-dir', conf, '--network', CT.network]);
      const pm = track(await Podman.create(lab, { backend: 'cni', cniPluginDirs: [bin, REFERENCE_PLUGINS], networkConfigDir: conf }));
      return { name, what: 'CNI: ctnet (ctnet cni install)', pm, network: CT.network };
    }
  }
}

/** Exactly what is timed: one `podman run --rm` from spawn to exit. */
async function runOnce(side: Side): Promise<void> {
  await execOk(side.pm.argv(['run', '--rm', '--network', side.network, IMAGE, 'true']), { env: side.pm.env });
}

// ---------------------------------------------------------------------------------------------
// Statistics


interface Machine {
  readonly kernel: string;
  readonly node: string;
  readonly cpu: string;
  readonly ctnet: string;
  readonly podman: string;
  readonly netavark: string;
  readonly runc: string;
  readonly cniPlugins: string;
}

async function machine(): Promise<Machine> {
  const cpu = cpus();
  const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string };
  const first = async (argv: string[], re: RegExp) => (await exec(argv)).stdout.match(re)?.[1] ?? 'unknown';
  // Debian's plugins are built without a version string, so ask the package manager.
  const plugins = await exec(['dpkg-query', '-W', '-f', '${Version}', 'containernetworking-plugins']);
  return {
    kernel: release(),
    node: process.version,
    cpu: `${cpu.length} x ${cpu[0]?.model.trim() ?? 'unknown'}`,
    ctnet: pkg.version,
    podman: await first(['podman', '--version'], /version (\S+)/),
    netavark: await first(['/usr/lib/podman/netavark', '--version'], /netavark (\S+)/),
    runc: await first(['runc', '--version'], /runc version (\S+)/),
    cniPlugins: plugins.code === 0 && plugins.stdout ? plugins.stdout : 'unknown',
  };
}


type Results = Map<SideName, { side: Side; stats: Stats }>;

async function measure(sides: readonly Side[], opts: Options, signal: AbortSignal): Promise<Results> {
  // One untimed run per side: the first one also creates the bridge (reference, netavark) and
  // starts ctnet's daemon; none of that is what a steady `podman run` costs.
  for (const side of sides) {
    signal.throwIfAborted();
    progress(`warm-up: ${side.name}`);
    await runOnce(side);
  }
  const times = new Map<SideName, number[]>(sides.map((s) => [s.name, []]));
  for (let i = 0; i < opts.runs; i++) {
    progress(`round ${i + 1} of ${opts.runs}`);
    // Rotate the order every round so drift in machine load hits every side alike.
    const order = sides.map((_, k) => sides[(k + i) % sides.length]!);
    for (const side of order) {
      signal.throwIfAborted();
      times.get(side.name)!.push(await timed(() => runOnce(side)));
    }
  }
  return new Map(sides.map((s) => [s.name, { side: s, stats: stats(times.get(s.name)!) }]));
}

function render(r: Results, info: Machine, opts: Options): string {
  const ms = (n: number) => n.toFixed(1);
  const none = r.get('none')!.stats;
  const over = (s: Stats, q: 'p50' | 'p95') => (s === none ? '-' : `${s[q] >= none[q] ? '+' : ''}${ms(s[q] - none[q])}`);
  const rows = [...r.values()].map(({ side, stats: s }) => [side.name, side.what, ms(s.p50), ms(s.p95), over(s, 'p50'), over(s, 'p95')]);
  const lines = [
    `podman run --rm ${IMAGE} true: wall time in ms, ${opts.runs} runs per side, sides interleaved`,
    `kernel ${info.kernel}, node ${info.node}, ${info.cpu}, podman ${info.podman}, runc ${info.runc}, netavark ${info.netavark}, ` +
      `containernetworking-plugins ${info.cniPlugins}, ctnet ${info.ctnet}`,
    '',
    table(['side', 'network', 'p50', 'p95', 'over none p50', 'over none p95'], rows),
  ];
  const ct = r.get('ctnet')?.stats;
  if (ct) {
    const ratios: string[][] = [];
    for (const peer of ['reference', 'netavark'] as const) {
      const p = r.get(peer)?.stats;
      if (!p) continue;
      // An overhead at or below zero (noise larger than the network's cost) has no meaningful ratio.
      const x = (a: number, b: number) => (a > 0 && b > 0 ? `${(a / b).toFixed(2)}x` : 'n/a');
      ratios.push([`ctnet/${peer}`, x(ct.p50, p.p50), x(ct.p95, p.p95), x(ct.p50 - none.p50, p.p50 - none.p50)]);
    }
    if (ratios.length > 0) lines.push('', table(['ratio', 'p50', 'p95', 'overhead p50'], ratios));
  }
  return lines.join('\n') + '\n';
}

function toJson(r: Results, info: Machine, opts: Options): string {
  const none = r.get('none')!.stats;
  const ct = r.get('ctnet')?.stats;
  const ratio = (peer: SideName) => {
    const p = r.get(peer)?.stats;
    if (!ct || !p) return undefined;
    const [a, b] = [ct.p50 - none.p50, p.p50 - none.p50];
    return { p50: round(ct.p50 / p.p50), p95: round(ct.p95 / p.p95), overheadP50: a > 0 && b > 0 ? round(a / b) : null };
  };
  return JSON.stringify({
    benchmark: 'podman',
    date: new Date().toISOString(),
    machine: info,
    runs: opts.runs,
    sides: Object.fromEntries([...r.values()].map(({ side, stats: s }) => [side.name, {
      network: side.what,
      p50Ms: round(s.p50), p95Ms: round(s.p95),
      overNoneP50Ms: round(s.p50 - none.p50), overNoneP95Ms: round(s.p95 - none.p95),
      samplesMs: s.samples.map(round),
    }])),
    ratios: { ctnetToReference: ratio('reference'), ctnetToNetavark: ratio('netavark') },
  }, null, 2) + '\n';
}

async function main(): Promise<number> {
  const opts = optionsOrExit(parseOptions, USAGE);
  if (typeof opts === 'number') return opts;

  const { abort, interrupted: signalled } = trapSignals();

  const info = await machine();
  if (abort.signal.aborted) return signalled();
  progress('creating a lab');
  const lab = await Lab.create(); // removes what it made if it fails itself
  const tmp = mkdtempSync(join(tmpdir(), `ctbench-podman-${lab.id}-`));
  const made: Podman[] = [];
  let code = 0;
  try {
    const sides: Side[] = [];
    for (const name of opts.sides) {
      abort.signal.throwIfAborted();
      progress(`setting up ${name}`);
      sides.push(await makeSide(name, lab, tmp, made));
    }
    const results = await measure(sides, opts, abort.signal);
    process.stdout.write(opts.json ? toJson(results, info, opts) : render(results, info, opts));
  } catch (e) {
    process.stderr.write(`bench: ${(e as Error).message}\n`);
    code = signalled() || 1;
  } finally {
    progress('cleaning up');
    // Podman first: its teardown runs in the lab host, which must still exist.
    for (const pm of made) {
      try {
        await pm.cleanup();
      } catch (e) {
        process.stderr.write(`bench: ${(e as Error).message}\n`);
        code ||= 1;
      }
    }
    await lab.destroy();
    rmSync(tmp, { recursive: true, force: true });
  }
  return code;
}

process.exitCode = await main();
