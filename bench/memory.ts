// Benchmark: ctnetd's memory (issue 20, point 5). ctnetd's resident set (VmRSS, and its peak VmHWM,
// from /proc/PID/status) idle in a fresh lab, then loaded, each load in a fresh lab of its own:
//   - attachments: N CNI ADDs through ctnet's plugin (bench/cni.ts's ctnet side), N at the end,
//   - policy:      `ctnet policy apply` of a file of N allow rules (as bench/policy.ts builds it),
//                  then one `ctnet create` + `rm` handed to ctnetd, which meets the rules,
//   - ports:       one sandbox publishing a range of N ports with one `ctnet port add` (as
//                  bench/ports-lookup.ts builds it), handed to ctnetd,
//   - cycles:      the leak test: N ADD/DEL cycles of a new container through the plugin, the RSS
//                  sampled (after a settle) every --every cycles; growth is last - first.
// A size of 0 leaves its stage out. See bench/README.md.
//
//   scripts/node bench/memory.ts [--attachments N] [--rules N] [--ports N] [--cycles N] [--every N]
//                                [--settle MS] [--parallel N] [--max-minutes M] [--json]
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, release, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { table } from '../src/cli/table.ts';
import { Lab, ROOT } from '../src/lab/lab.ts';
import { CtnetSide } from './cni.ts';
import { checkout, destroyAll, execOk, intOption, loadAverage, optionsOrExit, progress, timed, trapSignals } from './lib.ts';

/** The network of every stage, as bench/cni.ts's ctnet side names it (CtnetSide makes it itself). */
const NETWORK = 'bench';
const SUBNET = '10.200.0.0/16';
/** The ports stage publishes FIRST_PORT.. on both sides of the mapping, as bench/ports-lookup.ts does. */
const FIRST_PORT = 20000;
const RULE_PORT = 80;
/** bench/policy.ts's decoy sources: one /32 per rule, outside every lab subnet. */
const decoySource = (i: number) => `10.${128 + (i >> 16)}.${(i >> 8) & 255}.${i & 255}/32`;

interface Options {
  readonly attachments: number;
  readonly rules: number;
  readonly ports: number;
  readonly cycles: number;
  readonly every: number;
  readonly settleMs: number;
  readonly parallel: number;
  /** The leak test stops at its first sample after this many minutes (0: no limit). */
  readonly maxMinutes: number;
  readonly json: boolean;
}

const USAGE = `usage: scripts/node bench/memory.ts [--attachments N] [--rules N] [--ports N] [--cycles N] [--every N] [--settle MS] [--parallel N] [--json]
  --attachments N   CNI attachments in the attachments stage (default 1000; 0 leaves the stage out)
  --rules N         policy rules in the policy stage (default 10000; 0 leaves it out)
  --ports N         published ports in the ports stage (default 10000, at most ${65535 - FIRST_PORT + 1}; 0 leaves it out)
  --cycles N        ADD/DEL cycles of the leak test (default 10000; 0 leaves it out)
  --every N         cycles between two RSS samples of the leak test (default 1000)
  --settle MS       wait before each RSS reading, so deferred work and GC can run (default 3000)
  --parallel N      ADD chains at once while adding the attachments (default 8)
  --max-minutes M   end the leak test at its first sample after M minutes, and say so (default 0: no limit)
  --json            print the results as JSON`;

function parseOptions(argv: readonly string[]): Options | 'help' {
  const { values } = parseArgs({
    args: [...argv],
    options: {
      attachments: { type: 'string' }, rules: { type: 'string' }, ports: { type: 'string' }, cycles: { type: 'string' },
      every: { type: 'string' }, settle: { type: 'string' }, parallel: { type: 'string' }, 'max-minutes': { type: 'string' },
      json: { type: 'boolean', default: false }, help: { type: 'boolean', short: 'h', default: false },
    },
    strict: true,
    allowPositionals: false,
  });
  if (values.help) return 'help';
  const cycles = intOption('cycles', values.cycles, 10_000, 0, 1_000_000);
  const every = intOption('every', values.every, 1000, 1, 1_000_000);
  if (cycles > 0 && every > cycles) throw new Error(`--every (${every}) must not exceed --cycles (${cycles})`);
  return {
    attachments: intOption('attachments', values.attachments, 1000, 0, 10_000),
    rules: intOption('rules', values.rules, 10_000, 0, 100_000),
    ports: intOption('ports', values.ports, 10_000, 0, 65535 - FIRST_PORT + 1),
    cycles,
    every,
    settleMs: intOption('settle', values.settle, 3000, 0, 60_000),
    parallel: intOption('parallel', values.parallel, 8, 1, 64),
    maxMinutes: intOption('max-minutes', values['max-minutes'], 0, 0, 24 * 60),
    json: values.json,
  };
}

// ---------------------------------------------------------------------------------------------
// Reading ctnetd's memory

/** ctnetd's resident set and its peak, KiB, from /proc/PID/status. */
interface Rss {
  readonly pid: number;
  readonly rssKiB: number;
  readonly hwmKiB: number;
}

/** Reads the memory of the lab's ctnetd (its pid from STATE_DIR/ctnetd.pid), after `settleMs`. */
async function daemonRss(lab: Lab, settleMs: number, signal: AbortSignal): Promise<Rss> {
  await new Promise((r) => setTimeout(r, settleMs));
  signal.throwIfAborted();
  const pid = Number(readFileSync(join(lab.stateDir, 'ctnetd.pid'), 'utf8').trim());
  let status: string;
  try {
    status = readFileSync(`/proc/${pid}/status`, 'utf8');
  } catch {
    throw new Error(`ctnetd (pid ${pid}, from ${lab.stateDir}/ctnetd.pid) is not running: see ${lab.stateDir}/ctnetd.log`);
  }
  const kib = (field: string): number => {
    const m = new RegExp(`^${field}:\\s+(\\d+) kB$`, 'm').exec(status);
    if (!m) throw new Error(`/proc/${pid}/status has no ${field}`);
    return Number(m[1]);
  };
  return { pid, rssKiB: kib('VmRSS'), hwmKiB: kib('VmHWM') };
}

/** The same ctnetd must have served the whole stage: a restart would hide its memory. */
function samePid(stage: string, a: Rss, b: Rss): void {
  if (a.pid !== b.pid) throw new Error(`${stage}: ctnetd changed from pid ${a.pid} to ${b.pid} during the stage (see ctnetd.log)`);
}

/** Lines of ctnetd.log that say it ran `ctnet WORDS...` itself and it exited 0. */
function servedByDaemon(lab: Lab, words: string): boolean {
  const log = readFileSync(join(lab.stateDir, 'ctnetd.log'), 'utf8');
  return log.split('\n').some((l) => l.includes(`: ctnet ${words}`) && / exit 0 in /.test(l));
}

// ---------------------------------------------------------------------------------------------
// The stages

interface StageResult {
  readonly stage: 'attachments' | 'policy' | 'ports';
  readonly size: number;
  readonly idle: Rss;
  /** Named readings after the idle one, in order. */
  readonly loaded: readonly { readonly what: string; readonly rss: Rss }[];
  readonly notes: readonly string[];
}

interface CyclesResult {
  /** Cycles done: fewer than asked when --max-minutes ended the test. */
  readonly cycles: number;
  readonly asked: number;
  readonly every: number;
  readonly idle: Rss;
  /** The reading before the first cycle (after one warm-up ADD/DEL) and after every `every` cycles. */
  readonly samples: readonly { readonly cycle: number; readonly rss: Rss }[];
  readonly wallMs: number;
}

/** What a stage made besides its lab, for the cleanup. */
interface Cleanup {
  readonly labs: Lab[];
  readonly sides: CtnetSide[];
}

/** A fresh lab with ctnet's CNI plugin installed and ctnetd started (before any request): the idle reading. */
async function cniLab(opts: Options, signal: AbortSignal, made: Cleanup): Promise<{ lab: Lab; side: CtnetSide; idle: Rss }> {
  const lab = await Lab.create();
  made.labs.push(lab);
  progress(`lab host ${lab.host}, container namespaces ctbench-${lab.id}-*`);
  const side = new CtnetSide(lab, 'ctnet');
  made.sides.push(side);
  await side.setup(); // the network and `ctnet cni install`
  await lab.startDaemon(); // as the plugin would; the plugin then finds it running
  return { lab, side, idle: await daemonRss(lab, opts.settleMs, signal) };
}

/** A fresh lab with the network made and ctnetd started: the idle reading. */
async function plainLab(opts: Options, signal: AbortSignal, made: Cleanup): Promise<{ lab: Lab; idle: Rss }> {
  const lab = await Lab.create();
  made.labs.push(lab);
  progress(`lab host ${lab.host}`);
  await lab.ctnetOk(['network', 'create', NETWORK, '--subnet', SUBNET]);
  await lab.startDaemon(); // so the front end hands the hot commands (create, rm, port add) to it
  return { lab, idle: await daemonRss(lab, opts.settleMs, signal) };
}

async function attachments(opts: Options, signal: AbortSignal, made: Cleanup): Promise<StageResult> {
  const { lab, side, idle } = await cniLab(opts, signal, made);
  progress(`attachments: ${opts.attachments} CNI ADDs, ${opts.parallel} at a time`);
  const fillMs = await side.fill(opts.attachments, opts.parallel, signal);
  const seen = side.attached(await side.census());
  const full = await daemonRss(lab, opts.settleMs, signal);
  samePid('attachments', idle, full);
  progress(`attachments: DEL of all ${opts.attachments}`);
  for (const name of [...side.live.keys()]) {
    signal.throwIfAborted();
    await side.del(name);
  }
  const emptied = await daemonRss(lab, opts.settleMs, signal);
  samePid('attachments', idle, emptied);
  return {
    stage: 'attachments', size: opts.attachments, idle,
    loaded: [{ what: `${opts.attachments} attachments`, rss: full }, { what: 'all DELeted again', rss: emptied }],
    notes: [`${opts.attachments} ADDs in ${(fillMs / 1000).toFixed(1)} s, ${seen ?? '?'} veths on ctnet bridges after them`],
  };
}

async function policy(opts: Options, signal: AbortSignal, made: Cleanup): Promise<StageResult> {
  const { lab, idle } = await plainLab(opts, signal, made);
  const file = join(tmpdir(), `ctbench-${lab.id}-rules.txt`);
  let applyMs: number;
  try {
    const lines = Array.from({ length: opts.rules }, (_, i) => `allow --from ${decoySource(i)} --to net:${NETWORK} --port ${RULE_PORT}/tcp`);
    writeFileSync(file, lines.join('\n') + '\n');
    progress(`policy: ctnet policy apply of ${opts.rules} rules`);
    applyMs = await timed(() => lab.ctnetOk(['policy', 'apply', file]));
  } finally {
    rmSync(file, { force: true });
  }
  const applied = await daemonRss(lab, opts.settleMs, signal);
  samePid('policy', idle, applied);
  // `policy apply` runs in its own process; a sandbox created through ctnetd meets the rules there.
  progress('policy: ctnet create + rm of one sandbox, through ctnetd');
  await lab.ctnetOk(['create', 'probe', '--network', NETWORK]);
  await lab.ctnetOk(['rm', 'probe']);
  const notes = [`policy apply took ${(applyMs / 1000).toFixed(1)} s (in the ctnet process, not ctnetd)`];
  if (!servedByDaemon(lab, 'create probe')) notes.push('warning: ctnetd.log does not show that ctnetd ran `ctnet create probe`');
  const used = await daemonRss(lab, opts.settleMs, signal);
  samePid('policy', idle, used);
  return {
    stage: 'policy', size: opts.rules, idle,
    loaded: [{ what: `${opts.rules} rules applied`, rss: applied }, { what: 'then one create + rm', rss: used }],
    notes,
  };
}

async function ports(opts: Options, signal: AbortSignal, made: Cleanup): Promise<StageResult> {
  const { lab, idle } = await plainLab(opts, signal, made);
  await lab.ctnetOk(['create', 'others', '--network', NETWORK]);
  const one = await daemonRss(lab, opts.settleMs, signal);
  const last = FIRST_PORT + opts.ports - 1;
  const range = `${FIRST_PORT}-${last}:${FIRST_PORT}-${last}`;
  progress(`ports: ctnet port add others ${range}`);
  const addMs = await timed(() => lab.ctnetOk(['port', 'add', 'others', range]));
  const published = await daemonRss(lab, opts.settleMs, signal);
  samePid('ports', idle, published);
  const listed = JSON.parse(await execOk(['nsenter', `--net=/run/netns/${lab.host}`, 'nft', '-j', 'list', 'map', 'inet', 'ctnet', 'ports4_any'])) as
    { nftables: { map?: { elem?: unknown[] } }[] };
  const elements = listed.nftables.find((o) => o.map)?.map?.elem?.length ?? 0;
  const notes = [`port add took ${(addMs / 1000).toFixed(1)} s; map ports4_any holds ${elements} elements`];
  if (elements !== opts.ports) notes.push(`warning: expected ${opts.ports} elements in ports4_any`);
  if (!servedByDaemon(lab, 'port add others')) notes.push('warning: ctnetd.log does not show that ctnetd ran `ctnet port add`');
  return {
    stage: 'ports', size: opts.ports, idle,
    loaded: [{ what: 'one sandbox', rss: one }, { what: `${opts.ports} ports published`, rss: published }],
    notes,
  };
}

async function cycles(opts: Options, signal: AbortSignal, made: Cleanup): Promise<CyclesResult> {
  const { lab, side, idle } = await cniLab(opts, signal, made);
  // One cycle first, so the first sample is not the code's first load.
  await side.add('warmup');
  await side.del('warmup');
  const samples = [{ cycle: 0, rss: await daemonRss(lab, opts.settleMs, signal) }];
  progress(`cycles: ${opts.cycles} ADD/DEL cycles, RSS every ${opts.every}: ${samples[0]!.rss.rssKiB} KiB at 0`);
  const start = performance.now();
  let settling = 0;
  let done = 0;
  for (let i = 1; i <= opts.cycles; i++) {
    signal.throwIfAborted();
    const name = `cycle-${i}`;
    await side.add(name);
    await side.del(name);
    if (i % opts.every === 0 || i === opts.cycles) {
      const t = performance.now();
      const rss = await daemonRss(lab, opts.settleMs, signal);
      settling += performance.now() - t;
      samePid('cycles', idle, rss);
      samples.push({ cycle: i, rss });
      progress(`cycles: ${rss.rssKiB} KiB after ${i}`);
    }
    done = i;
    if (opts.maxMinutes > 0 && i % opts.every === 0 && performance.now() - start > opts.maxMinutes * 60_000) {
      progress(`cycles: --max-minutes ${opts.maxMinutes} reached, stopping after ${i} of ${opts.cycles} cycles`);
      break;
    }
  }
  return { cycles: done, asked: opts.cycles, every: opts.every, idle, samples, wallMs: performance.now() - start - settling };
}

// ---------------------------------------------------------------------------------------------
// Output

interface Machine {
  readonly kernel: string;
  readonly node: string;
  readonly cpu: string;
  readonly ctnet: string;
  readonly commit: string;
  readonly bundle: boolean;
  readonly loadStart: string;
  loadEnd: string;
}

const mib = (kib: number) => (kib / 1024).toFixed(1);
const delta = (kib: number) => `${kib >= 0 ? '+' : ''}${mib(kib)}`;

function render(stages: readonly StageResult[], cyc: CyclesResult | undefined, info: Machine, opts: Options): string {
  const out = [
    `ctnetd memory (VmRSS, peak VmHWM, MiB; each stage in a fresh lab, read after a ${opts.settleMs} ms settle)`,
    `kernel ${info.kernel}, node ${info.node}, ${info.cpu}, ctnet ${info.ctnet} (${info.commit}, ${info.bundle ? 'bundle' : 'sources'}), ` +
      `load ${info.loadStart} at the start, ${info.loadEnd} at the end`,
  ];
  if (stages.length > 0) {
    const rows: string[][] = [];
    for (const s of stages) {
      rows.push([s.stage, 'idle (fresh lab, ctnetd just started)', mib(s.idle.rssKiB), mib(s.idle.hwmKiB), '']);
      for (const l of s.loaded) rows.push(['', l.what, mib(l.rss.rssKiB), mib(l.rss.hwmKiB), delta(l.rss.rssKiB - s.idle.rssKiB)]);
    }
    out.push('', table(['stage', 'state', 'RSS', 'peak', 'RSS - idle'], rows));
    for (const s of stages) for (const n of s.notes) out.push(`  ${s.stage}: ${n}`);
  }
  if (cyc) {
    const first = cyc.samples[0]!.rss.rssKiB;
    const firstSampled = cyc.samples[1]?.rss.rssKiB ?? first;
    const last = cyc.samples[cyc.samples.length - 1]!.rss.rssKiB;
    const cut = cyc.cycles < cyc.asked ? ` (of ${cyc.asked} asked: --max-minutes ended it)` : '';
    out.push('', `leak test: ${cyc.cycles} CNI ADD/DEL cycles${cut} (one new container each), RSS every ${cyc.every}; ` +
      `idle ${mib(cyc.idle.rssKiB)} MiB before a warm-up cycle`,
    table(['cycles', 'RSS', 'peak', 'RSS - at 0'], cyc.samples.map((s) => [String(s.cycle), mib(s.rss.rssKiB), mib(s.rss.hwmKiB), delta(s.rss.rssKiB - first)])));
    out.push(`  growth: ${delta(last - first)} MiB from cycle 0 to ${cyc.cycles}, ${delta(last - firstSampled)} MiB from cycle ` +
      `${cyc.samples[1]?.cycle ?? 0} to ${cyc.cycles}; ${(cyc.wallMs / cyc.cycles).toFixed(1)} ms per cycle (settles left out)`);
  }
  return out.join('\n') + '\n';
}

function toJson(stages: readonly StageResult[], cyc: CyclesResult | undefined, info: Machine, opts: Options): string {
  return JSON.stringify({ benchmark: 'memory', date: new Date().toISOString(), machine: info, options: opts, stages, cycles: cyc }, null, 2) + '\n';
}

async function main(): Promise<number> {
  const opts = optionsOrExit(parseOptions, USAGE);
  if (typeof opts === 'number') return opts;
  const { abort, interrupted } = trapSignals();
  const cpu = cpus();
  const co = await checkout(ROOT);
  const info: Machine = {
    kernel: release(), node: process.version, cpu: `${cpu.length} x ${cpu[0]?.model.trim() ?? 'unknown'}`,
    ctnet: co.version, commit: co.commit, bundle: co.bundle, loadStart: loadAverage(), loadEnd: '',
  };
  const stages: StageResult[] = [];
  let cyc: CyclesResult | undefined;
  let code = 0;
  const made: Cleanup = { labs: [], sides: [] };
  // One fresh lab per stage, removed before the next one starts (and all of them on any exit).
  const stage = async <T>(name: string, run: () => Promise<T>): Promise<T> => {
    abort.signal.throwIfAborted();
    progress(`${name}: creating a lab`);
    try {
      return await run();
    } finally {
      const failed = (await destroyAll(made.sides.splice(0))) + (await destroyAll(made.labs.splice(0)));
      if (failed > 0) code = 1;
    }
  };
  try {
    if (opts.attachments > 0) stages.push(await stage('attachments', () => attachments(opts, abort.signal, made)));
    if (opts.rules > 0) stages.push(await stage('policy', () => policy(opts, abort.signal, made)));
    if (opts.ports > 0) stages.push(await stage('ports', () => ports(opts, abort.signal, made)));
    if (opts.cycles > 0) cyc = await stage('cycles', () => cycles(opts, abort.signal, made));
    info.loadEnd = loadAverage();
    process.stdout.write(opts.json ? toJson(stages, cyc, info, opts) : render(stages, cyc, info, opts));
  } catch (e) {
    process.stderr.write(`bench: ${(e as Error).message}\n`);
    code = interrupted() || 1;
  } finally {
    progress('cleaning up');
    const failed = (await destroyAll(made.sides)) + (await destroyAll(made.labs));
    if (failed > 0) code ||= 1;
  }
  return code;
}

process.exitCode = await main();
