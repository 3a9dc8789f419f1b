// Benchmark: what ctnet's network policy costs per new connection with 10 and with 10,000 rules
// installed (nftables interval sets with concatenated keys: one lookup whatever the number of
// rules), next to the same rules as a linear iptables FORWARD chain, on both iptables backends
// (nft and legacy) when the machine has them. A client sandbox on network A opens TCP connections
// one after another to a server sandbox on network B, so each connection is forwarded through the
// filter and allowed by exactly one rule: the last one created. See bench/README.md.
//
//   scripts/node bench/policy.ts [--rules N] [--count N] [--warmup N] [--rounds N] [--batch N]
//                                [--no-legacy] [--json]
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, loadavg, release, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { table } from '../src/cli/table.ts';
import { Lab, ROOT } from '../src/lab/lab.ts';
import { check, exec, execOk, type Exit, intOption, optionsOrExit, progress, quantile, timed, trapSignals } from './lib.ts';

const SMALL = 10;
const DEFAULT_RULES = 10_000;
const DEFAULT_COUNT = 2000;
const DEFAULT_WARMUP = 100;
/** Client runs per setup: short rounds, interleaved, spread load drift over every setup. */
const DEFAULT_ROUNDS = 20;
/** Rules per install step: BATCH - 1 in one command, then one more on its own (timed apart). */
const DEFAULT_BATCH = 1000;
const PORT = 8080;
/**
 * The same addresses in every lab (each lab is its own namespace, so they never meet). The client
 * and server get fixed addresses so the iptables rules and ctnet's rules name the same things.
 */
const NET_A = { name: 'a', subnet: '10.210.0.0/24', gateway: '10.210.0.1', prefix: 24, client: '10.210.0.10' } as const;
const NET_B = { name: 'b', subnet: '10.211.0.0/24', gateway: '10.211.0.1', prefix: 24, server: '10.211.0.10' } as const;
const NODE = join(ROOT, 'scripts', 'node');
const CLIENT = join(ROOT, 'bench', 'policy-client.ts');
/** Namespaces this script adds itself (the reference side's client and server) start with this. */
const NETNS_PREFIX = 'ctpolicy-';

// ---------------------------------------------------------------------------------------------
// Options

interface Options {
  /** The big level; the small one is always SMALL. */
  readonly rules: number;
  /** Timed connections per setup, over all rounds. */
  readonly count: number;
  /** Untimed connections at the start of every client run. */
  readonly warmup: number;
  readonly rounds: number;
  readonly batch: number;
  readonly legacy: boolean;
  readonly json: boolean;
}

const USAGE = `usage: scripts/node bench/policy.ts [--rules N] [--count N] [--warmup N] [--rounds N] [--batch N] [--no-legacy] [--json]
  --rules N     rules in the big level (default ${DEFAULT_RULES}; the small level is ${SMALL})
  --count N     timed connections per side and level (default ${DEFAULT_COUNT})
  --warmup N    untimed connections before each client run (default ${DEFAULT_WARMUP})
  --rounds N    client runs per side and level, interleaved (default ${DEFAULT_ROUNDS})
  --batch N     install N-1 rules per command, then one with its own command (default ${DEFAULT_BATCH};
                1 adds every rule with its own command: about an hour for ctnet at 10,000)
  --no-legacy   skip iptables-legacy even if it is installed
  --json        print the results as JSON instead of tables`;


function parseOptions(argv: readonly string[]): Options | 'help' {
  const { values } = parseArgs({
    args: [...argv],
    options: {
      rules: { type: 'string' }, count: { type: 'string' }, warmup: { type: 'string' },
      rounds: { type: 'string' }, batch: { type: 'string' },
      'no-legacy': { type: 'boolean', default: false },
      json: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
    strict: true,
    allowPositionals: false,
  });
  if (values.help) return 'help';
  return {
    // Decoy sources are 10.128.0.0 and up, one /32 each: 100,000 stays inside 10.128-10.129.
    rules: intOption('rules', values.rules, DEFAULT_RULES, SMALL + 1, 100_000),
    count: intOption('count', values.count, DEFAULT_COUNT, 1, 100_000),
    warmup: intOption('warmup', values.warmup, DEFAULT_WARMUP, 0, 10_000),
    rounds: intOption('rounds', values.rounds, DEFAULT_ROUNDS, 1, 1000),
    batch: intOption('batch', values.batch, DEFAULT_BATCH, 1, 100_000),
    legacy: !values['no-legacy'],
    json: values.json,
  };
}

// ---------------------------------------------------------------------------------------------
// Processes

const inNetns = (netns: string, argv: readonly string[]): string[] => ['nsenter', `--net=/run/netns/${netns}`, ...argv];


const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

// ---------------------------------------------------------------------------------------------
// The rules. Decoy i allows a /32 source that never sends anything to network B's port: each is
// a distinct rule the filter must hold (a set element, a chain rule), and none matches the
// measured connection, so the measured rule is always the one that decides.

const decoySource = (i: number) => `10.${128 + (i >> 16)}.${(i >> 8) & 255}.${i & 255}/32`;
const MEASURED = -1;
type RuleIndex = number; // a decoy's index, or MEASURED

// ---------------------------------------------------------------------------------------------
// The setups: one lab each, so no setup's rules are in another's path.

type SideName = 'ctnet' | 'iptables-nft' | 'iptables-legacy';

interface ClientRun {
  readonly count: number;
  readonly elapsedMs: number;
  readonly latenciesUs: readonly number[];
}

interface Setup {
  readonly side: SideName;
  readonly rules: number;
  readonly lab: Lab;
  /** Networks, sandboxes, the server; the filter's defaults (not timed). */
  prepare(): Promise<void>;
  /** Rules [first, first + n) in one command. */
  addBatch(first: number, n: number): Promise<void>;
  /** One rule with its own command, as a user adds one. */
  addOne(rule: RuleIndex): Promise<void>;
  /**
   * The side's cheapest command (ctnet --help, iptables -V): what starting its process costs, timed
   * next to every one-rule command, so the rest of that command's time is known.
   */
  noop(): Promise<void>;
  /** What must follow the rules (iptables: the final DROP). */
  finish(): Promise<void>;
  /** Runs the client in the client namespace; argv after the client script. */
  client(args: readonly string[]): Promise<Exit>;
  /** The hit counter of the measured rule: new connections it allowed. */
  hits(): Promise<number>;
  removeMeasured(): Promise<void>;
  destroy(): Promise<void>;
}

const label = (s: Setup) => `${s.side}/${s.rules}`;

/** ctnet end to end: networks, sandboxes and rules made with the ctnet CLI, as a user does. */
class CtnetSetup implements Setup {
  readonly side = 'ctnet';
  readonly rules: number;
  readonly lab: Lab;
  readonly #tmp: string;

  constructor(lab: Lab, rules: number, tmp: string) {
    this.lab = lab;
    this.rules = rules;
    this.#tmp = tmp;
  }

  async prepare(): Promise<void> {
    for (const n of [NET_A, NET_B]) await this.lab.ctnetOk(['network', 'create', n.name, '--subnet', n.subnet]);
    await this.lab.ctnetOk(['create', 'client', '--network', NET_A.name, '--ip', NET_A.client]);
    await this.lab.ctnetOk(['run', '-d', '--name', 'server', '--network', NET_B.name, '--ip', NET_B.server, '--',
      ...Lab.serverArgv('server', { tcp: PORT })]);
  }

  #ruleArgs(rule: RuleIndex): string[] {
    return rule === MEASURED
      ? ['--from', 'client', '--to', 'server', '--port', `${PORT}/tcp`, '--name', 'measured']
      : ['--from', decoySource(rule), '--to', `net:${NET_B.name}`, '--port', `${PORT}/tcp`];
  }

  async addBatch(first: number, n: number): Promise<void> {
    // `ctnet policy apply FILE`: one store transaction and one nft transaction for all of them.
    const file = join(this.#tmp, `${this.lab.id}-rules.txt`);
    const lines = Array.from({ length: n }, (_, k) => `allow ${this.#ruleArgs(first + k).join(' ')}`);
    writeFileSync(file, lines.join('\n') + '\n');
    await this.lab.ctnetOk(['policy', 'apply', file]);
  }

  async addOne(rule: RuleIndex): Promise<void> {
    await this.lab.ctnetOk(['policy', 'allow', ...this.#ruleArgs(rule)]);
  }

  async noop(): Promise<void> {
    await this.lab.ctnetOk(['--help']);
  }

  async finish(): Promise<void> {
    // Nothing: networks are isolated from each other by default.
  }

  async client(args: readonly string[]): Promise<Exit> {
    return this.lab.ctnet(['exec', 'client', '--', ...args]);
  }

  async hits(): Promise<number> {
    const rows = JSON.parse(await this.lab.ctnetOk(['policy', 'ls', '--json'])) as { name: string; hits: { packets: number } }[];
    const row = rows.find((r) => r.name === 'measured');
    if (!row) throw new Error(`${label(this)}: ctnet policy ls has no rule named measured`);
    return row.hits.packets;
  }

  async removeMeasured(): Promise<void> {
    await this.lab.ctnetOk(['policy', 'rm', 'measured']);
  }

  async destroy(): Promise<void> {
    // The lab's teardown removes ctnet's namespaces and kills the server in them.
  }
}

/**
 * The reference: what a shell script does without ctnet. Two bridges and two veths made with `ip`
 * in the lab host, client and server namespaces of its own, and one iptables rule per policy rule
 * in a linear FORWARD chain: "established" first, the rules in order, then a DROP between the
 * bridges. The namespaces live in /run/netns like ctnet's, so this class deletes them itself.
 */
class IptablesSetup implements Setup {
  readonly side: SideName;
  readonly rules: number;
  readonly lab: Lab;
  readonly #iptables: string;
  readonly #restore: string;
  readonly #clientNs: string;
  readonly #serverNs: string;
  /** Namespaces added (or being added) and not yet deleted. */
  readonly #netns = new Set<string>();
  #server: ChildProcess | undefined;

  constructor(lab: Lab, rules: number, backend: 'nft' | 'legacy') {
    this.lab = lab;
    this.rules = rules;
    this.side = `iptables-${backend}`;
    this.#iptables = `iptables-${backend}`;
    this.#restore = `iptables-${backend}-restore`;
    this.#clientNs = `${NETNS_PREFIX}${lab.id}-client`; // the lab id keeps parallel runs apart
    this.#serverNs = `${NETNS_PREFIX}${lab.id}-server`;
  }

  async #ip(netns: string, ...args: string[]): Promise<void> {
    await execOk(['ip', '-n', netns, ...args]);
  }

  /** A namespace on a bridge of the lab host, as ctnet makes a sandbox: veth, address, route. */
  async #endpoint(netns: string, hostIf: string, bridge: string, ip: string, net: { gateway: string; prefix: number }): Promise<void> {
    this.#netns.add(netns); // before the command, so an interrupted add is still cleaned up
    await execOk(['ip', 'netns', 'add', netns]);
    await this.#ip(this.lab.host, 'link', 'add', hostIf, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', netns);
    await this.#ip(this.lab.host, 'link', 'set', hostIf, 'master', bridge, 'up');
    await this.#ip(netns, 'link', 'set', 'lo', 'up');
    await this.#ip(netns, 'addr', 'add', `${ip}/${net.prefix}`, 'dev', 'eth0');
    await this.#ip(netns, 'link', 'set', 'eth0', 'up');
    await this.#ip(netns, 'route', 'add', 'default', 'via', net.gateway);
  }

  async prepare(): Promise<void> {
    const host = this.lab.host;
    for (const [bridge, n] of [['refa', NET_A], ['refb', NET_B]] as const) {
      await this.#ip(host, 'link', 'add', bridge, 'type', 'bridge');
      await this.#ip(host, 'addr', 'add', `${n.gateway}/${n.prefix}`, 'dev', bridge);
      await this.#ip(host, 'link', 'set', bridge, 'up');
    }
    // Per network namespace, like every net.* sysctl: this is the lab host's, not the machine's.
    check(['sysctl'], await this.lab.inHost(['sysctl', '-qw', 'net.ipv4.ip_forward=1']));
    await this.#endpoint(this.#clientNs, 'vclient', 'refa', NET_A.client, NET_A);
    await this.#endpoint(this.#serverNs, 'vserver', 'refb', NET_B.server, NET_B);
    this.#server = spawn('nsenter', [`--net=/run/netns/${this.#serverNs}`, ...Lab.serverArgv('server', { tcp: PORT })], { stdio: 'ignore', detached: true });
    this.#server.unref();
    // Replies and the rest of each connection pass here, as in ctnet's forward chain: only the
    // first packet of a connection walks the rules.
    await this.#iptablesOk(['-A', 'FORWARD', '-m', 'conntrack', '--ctstate', 'ESTABLISHED,RELATED', '-j', 'ACCEPT']);
  }

  #ruleSpec(rule: RuleIndex): string[] {
    return rule === MEASURED
      ? ['-s', `${NET_A.client}/32`, '-d', `${NET_B.server}/32`, '-p', 'tcp', '--dport', String(PORT), '-j', 'ACCEPT']
      : ['-s', decoySource(rule), '-d', NET_B.subnet, '-p', 'tcp', '--dport', String(PORT), '-j', 'ACCEPT'];
  }

  #iptablesOk(args: readonly string[]): Promise<string> {
    return this.#hostOk([this.#iptables, '-w', ...args]);
  }

  async #hostOk(argv: readonly string[], input = ''): Promise<string> {
    return execOk(inNetns(this.lab.host, argv), { input });
  }

  async addBatch(first: number, n: number): Promise<void> {
    // iptables-restore --noflush: appends to the live chain in one commit.
    const lines = Array.from({ length: n }, (_, k) => `-A FORWARD ${this.#ruleSpec(first + k).join(' ')}`);
    await this.#hostOk([this.#restore, '-w', '--noflush'], `*filter\n${lines.join('\n')}\nCOMMIT\n`);
  }

  async addOne(rule: RuleIndex): Promise<void> {
    await this.#iptablesOk(['-A', 'FORWARD', ...this.#ruleSpec(rule)]);
  }

  async noop(): Promise<void> {
    await this.#hostOk([this.#iptables, '-V']);
  }

  async finish(): Promise<void> {
    // What ctnet does by default: networks do not reach each other.
    await this.#iptablesOk(['-A', 'FORWARD', '-i', 'refa', '-o', 'refb', '-j', 'DROP']);
    await this.#iptablesOk(['-A', 'FORWARD', '-i', 'refb', '-o', 'refa', '-j', 'DROP']);
  }

  client(args: readonly string[]): Promise<Exit> {
    return exec(inNetns(this.#clientNs, args));
  }

  async hits(): Promise<number> {
    const out = await this.#iptablesOk(['-L', 'FORWARD', '-v', '-x', '-n']);
    // pkts bytes target prot opt in out source destination ...
    const row = out.split('\n').map((l) => l.trim().split(/\s+/)).find((f) => f[2] === 'ACCEPT' && f[7] === NET_A.client && f[8] === NET_B.server);
    if (!row) throw new Error(`${label(this)}: the measured rule is not in the FORWARD chain`);
    return Number(row[0]);
  }

  async removeMeasured(): Promise<void> {
    await this.#iptablesOk(['-D', 'FORWARD', ...this.#ruleSpec(MEASURED)]);
  }

  /**
   * Kills the server this class started (by its pid) and deletes the namespaces it added; keeps
   * going past errors and throws them together. The bridges, veths and iptables rules go with the
   * lab host.
   */
  async destroy(): Promise<void> {
    const errors: string[] = [];
    if (this.#server?.pid !== undefined && this.#server.exitCode === null && this.#server.signalCode === null) {
      try {
        process.kill(this.#server.pid, 'SIGKILL');
      } catch {
        // gone already
      }
    }
    for (const netns of this.#netns) {
      const r = await exec(['ip', 'netns', 'del', netns]);
      if (r.code === 0 || /No such file or directory/.test(r.stderr)) this.#netns.delete(netns);
      else errors.push(`ip netns del ${netns}: ${r.stderr.trim()}`);
    }
    if (errors.length > 0) throw new Error(`reference cleanup left namespaces behind:\n  ${errors.join('\n  ')}`);
  }
}

// ---------------------------------------------------------------------------------------------
// Installing: the same steps on every side, each command timed.

interface Install {
  /** Every install command together, wall time. */
  readonly totalMs: number;
  readonly batches: readonly { readonly rules: number; readonly ms: number }[];
  /** Single-rule adds: how many rules were there before it, its wall time, and the side's no-op command's right after. */
  readonly singles: readonly { readonly before: number; readonly ms: number; readonly noopMs: number }[];
  readonly finishMs: number;
}

/**
 * rules - 1 decoys then the measured rule, last. In steps of `batch`: batch - 1 rules with one
 * command, then one with its own, so the one-rule cost is sampled as the rule count grows.
 */
async function install(s: Setup, batch: number, signal: AbortSignal): Promise<Install> {
  const batches: { rules: number; ms: number }[] = [];
  const singles: { before: number; ms: number; noopMs: number }[] = [];
  for (let start = 0; start < s.rules; start += batch) {
    signal.throwIfAborted();
    const size = Math.min(batch, s.rules - start);
    if (size > 1) batches.push({ rules: size - 1, ms: await timed(() => s.addBatch(start, size - 1)) });
    const last = start + size - 1;
    const rule = last === s.rules - 1 ? MEASURED : last;
    const ms = await timed(() => s.addOne(rule));
    singles.push({ before: last, ms, noopMs: await timed(() => s.noop()) });
    if (batch === 1 && (last + 1) % 500 === 0) progress(`${label(s)}: ${last + 1} rules`);
  }
  const finishMs = await timed(() => s.finish());
  const totalMs = [...batches.map((b) => b.ms), ...singles.map((x) => x.ms), finishMs].reduce((a, b) => a + b, 0);
  return { totalMs, batches, singles, finishMs };
}

/**
 * The wall time of adding every rule with its own command, estimated from the sampled single adds
 * (linear between samples, flat beyond them): what a user adding rules one by one would wait.
 * Each sample follows a batch command, which makes it slower than in a one-by-one run, so this
 * overstates (bench/README.md compares it with a real one-by-one run).
 */
function oneByOneEstimateMs(samples: readonly { before: number; ms: number }[], rules: number): number {
  const pts = [...samples].sort((a, b) => a.before - b.before);
  if (pts.length === 0) return NaN;
  let total = 0;
  let j = 0;
  for (let k = 0; k < rules; k++) {
    while (j + 1 < pts.length && pts[j + 1]!.before <= k) j++;
    const a = pts[j]!;
    const b = pts[j + 1];
    if (k <= a.before || b === undefined) total += a.ms;
    else total += a.ms + ((b.ms - a.ms) * (k - a.before)) / (b.before - a.before);
  }
  return total;
}

// ---------------------------------------------------------------------------------------------
// Connections

/** One connection from client to server, with a short timeout: does the filter let it through? */
async function reaches(s: Setup): Promise<boolean> {
  return (await s.client(Lab.probeArgv('tcp', NET_B.server, PORT, 1000))).code === 0;
}

async function waitForServer(s: Setup): Promise<void> {
  // From the lab host: its own traffic to a sandbox is not forwarded, so no rule is needed.
  for (let i = 0; i < 100; i++) {
    if ((await s.lab.inHost(Lab.probeArgv('tcp', NET_B.server, PORT, 500))).code === 0) return;
    await sleep(100);
  }
  throw new Error(`${label(s)}: the server at ${NET_B.server}:${PORT} did not answer within 10 s`);
}

/** How many connections the lab host's conntrack table holds now. */
async function trackedFlows(s: Setup): Promise<number> {
  return Number(check(['conntrack', '-C'], await s.lab.inHost(['conntrack', '-C'])).trim());
}

async function runClient(s: Setup, count: number, warmup: number): Promise<ClientRun> {
  const argv = [NODE, CLIENT, NET_B.server, String(PORT), String(count), String(warmup)];
  const r = await s.client(argv);
  const out = check([`${label(s)}:`, ...argv], r);
  const parsed = JSON.parse(out.trim().split('\n').pop()!) as { elapsedMs: number; latenciesUs: number[] };
  return { count, elapsedMs: parsed.elapsedMs, latenciesUs: parsed.latenciesUs };
}

// ---------------------------------------------------------------------------------------------
// Statistics


interface ConnStats {
  readonly count: number;
  /** Timed connections over the time the timed loops took, all rounds together. */
  readonly ratePerS: number;
  readonly p50Us: number;
  readonly p90Us: number;
  readonly p99Us: number;
  readonly maxUs: number;
  /** The median of the per-round rates: less moved by one round that other work on the machine slowed. */
  readonly roundMedianRatePerS: number;
  readonly rounds: readonly { readonly count: number; readonly elapsedMs: number; readonly ratePerS: number; readonly p50Us: number }[];
}

function connStats(runs: readonly ClientRun[]): ConnStats {
  const sorted = runs.flatMap((r) => r.latenciesUs).sort((a, b) => a - b);
  const count = runs.reduce((a, r) => a + r.count, 0);
  const ms = runs.reduce((a, r) => a + r.elapsedMs, 0);
  return {
    count,
    ratePerS: (count / ms) * 1000,
    p50Us: quantile(sorted, 0.5),
    p90Us: quantile(sorted, 0.9),
    p99Us: quantile(sorted, 0.99),
    maxUs: sorted[sorted.length - 1]!,
    roundMedianRatePerS: quantile(runs.map((r) => (r.count / r.elapsedMs) * 1000).sort((a, b) => a - b), 0.5),
    rounds: runs.map((r) => ({
      count: r.count, elapsedMs: r.elapsedMs, ratePerS: (r.count / r.elapsedMs) * 1000,
      p50Us: quantile([...r.latenciesUs].sort((a, b) => a - b), 0.5),
    })),
  };
}

// ---------------------------------------------------------------------------------------------
// The run

interface SetupResult {
  readonly side: SideName;
  readonly rules: number;
  readonly install: Install;
  readonly conn: ConnStats;
  /** The measured rule's counter, and the connections the client made through it. */
  readonly hits: number;
  readonly expectedHits: number;
  readonly removeMeasuredMs: number;
  /**
   * Connections the lab host still tracked when the rule was removed (most of them closed, waiting
   * to expire): ctnet's `policy rm` looks for flows to cut among them, so its time depends on it.
   */
  readonly trackedAtRemove: number;
  /** After removing the measured rule, a new connection was dropped (as it must be). */
  readonly blockedAfterRemove: boolean;
}

interface Machine {
  readonly kernel: string;
  readonly node: string;
  readonly cpu: string;
  readonly ctnet: string;
  readonly nft: string;
  /** What plain `iptables` is here (Debian's alternatives pick the backend). */
  readonly iptables: string;
  readonly iptablesNft: string | undefined;
  readonly iptablesLegacy: string | undefined;
  /** 1-minute load average when the run started and when it ended: other work on the machine. */
  loadStart: number;
  loadEnd: number;
}

async function version(argv: readonly string[]): Promise<string | undefined> {
  const r = await exec(argv);
  return r.code === 0 ? r.stdout.trim() : undefined;
}

async function machine(): Promise<Machine> {
  const cpu = cpus();
  const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string };
  return {
    kernel: release(),
    node: process.version,
    cpu: `${cpu.length} x ${cpu[0]?.model.trim() ?? 'unknown'}`,
    ctnet: pkg.version,
    nft: (await version(['nft', '-v'])) ?? 'unknown',
    // The reference names its backend explicitly (iptables-nft, iptables-legacy); plain
    // `iptables` is recorded too, to say which one a user of this machine gets.
    iptables: (await version(['iptables', '-V'])) ?? 'not installed',
    iptablesNft: await version(['iptables-nft', '-V']),
    iptablesLegacy: await version(['iptables-legacy', '-V']),
    loadStart: loadavg()[0]!,
    loadEnd: NaN,
  };
}

/** The client runs per setup, split as evenly as the count allows. */
function roundCounts(count: number, rounds: number): number[] {
  return Array.from({ length: rounds }, (_, r) => Math.floor(count / rounds) + (r < count % rounds ? 1 : 0)).filter((n) => n > 0);
}

async function measure(setups: readonly Setup[], opts: Options, signal: AbortSignal): Promise<SetupResult[]> {
  for (const s of setups) {
    signal.throwIfAborted();
    progress(`${label(s)}: preparing`);
    await s.prepare();
    await waitForServer(s);
  }

  const installs = new Map<Setup, Install>();
  for (const s of setups) {
    progress(`${label(s)}: installing ${s.rules} rules`);
    const done = await install(s, opts.batch, signal);
    installs.set(s, done);
    progress(`${label(s)}: installed in ${(done.totalMs / 1000).toFixed(1)} s`);
    // The measured rule must be what lets the connection through; stop if it does not.
    if (!(await reaches(s))) throw new Error(`${label(s)}: client cannot reach the server with the measured rule installed`);
  }

  // Interleaved rounds, each starting one setup later, so drift in machine load hits all alike.
  const counts = roundCounts(opts.count, opts.rounds);
  const runs = new Map<Setup, ClientRun[]>(setups.map((s) => [s, []]));
  for (const [r, n] of counts.entries()) {
    progress(`round ${r + 1}/${counts.length}: ${n} connections per setup`);
    for (let k = 0; k < setups.length; k++) {
      signal.throwIfAborted();
      const s = setups[(r + k) % setups.length]!;
      runs.get(s)!.push(await runClient(s, n, opts.warmup));
    }
  }

  const results: SetupResult[] = [];
  for (const s of setups) {
    signal.throwIfAborted();
    const hits = await s.hits();
    // The probe after installing, then every warm-up and timed connection.
    const expectedHits = 1 + counts.length * opts.warmup + opts.count;
    const trackedAtRemove = await trackedFlows(s);
    const removeMeasuredMs = await timed(() => s.removeMeasured());
    const blockedAfterRemove = !(await reaches(s));
    results.push({ side: s.side, rules: s.rules, install: installs.get(s)!, conn: connStats(runs.get(s)!), hits, expectedHits, removeMeasuredMs, trackedAtRemove, blockedAfterRemove });
  }
  return results;
}

// ---------------------------------------------------------------------------------------------
// Output

const SIDES: readonly SideName[] = ['ctnet', 'iptables-nft', 'iptables-legacy'];

function ratios(results: readonly SetupResult[], big: number) {
  return SIDES.flatMap((side) => {
    const small = results.find((r) => r.side === side && r.rules === SMALL);
    const large = results.find((r) => r.side === side && r.rules === big);
    if (!small || !large) return [];
    return [{
      side, rate: large.conn.ratePerS / small.conn.ratePerS,
      roundMedianRate: large.conn.roundMedianRatePerS / small.conn.roundMedianRatePerS,
      p50: large.conn.p50Us / small.conn.p50Us, p99: large.conn.p99Us / small.conn.p99Us }];
  });
}

function oneByOne(results: readonly SetupResult[], big: number) {
  return SIDES.flatMap((side) => {
    const samples = results.filter((r) => r.side === side).flatMap((r) => r.install.singles);
    return samples.length ? [{ side, rules: big, estimateMs: oneByOneEstimateMs(samples, big) }] : [];
  });
}

/** ctnet against iptables-nft at each level: p50 of the one-rule commands, and the largest batch command. */
function oneRuleRatios(results: readonly SetupResult[]) {
  const p50 = (xs: readonly number[]) => quantile([...xs].sort((a, b) => a - b), 0.5);
  const peer = 'iptables-nft';
  return [...new Set(results.map((r) => r.rules))].flatMap((rules) => {
    const c = results.find((r) => r.side === 'ctnet' && r.rules === rules);
    const p = results.find((r) => r.side === peer && r.rules === rules);
    if (!c || !p) return [];
    const biggest = (r: SetupResult) => [...r.install.batches].sort((a, b) => b.rules - a.rules)[0];
    const cb = biggest(c);
    const pb = biggest(p);
    return [{
      rules, peer, oneRule: p50(c.install.singles.map((x) => x.ms)) / p50(p.install.singles.map((x) => x.ms)),
      batch: cb && pb ? cb.ms / pb.ms : undefined,
    }];
  });
}

/** At most n items, evenly spaced, always the first and the last (--batch 1 samples every rule). */
function spread<T>(items: readonly T[], n: number): T[] {
  if (items.length <= n) return [...items];
  return Array.from({ length: n }, (_, k) => items[Math.round((k * (items.length - 1)) / (n - 1))]!);
}

function render(results: readonly SetupResult[], info: Machine, opts: Options): string {
  const n0 = (x: number) => x.toFixed(0);
  const s1 = (ms: number) => (ms / 1000).toFixed(1);
  const conn = table(['side', 'rules', 'conn/s', 'round median conn/s', 'p50 us', 'p90 us', 'p99 us', 'hits/expected', 'blocked after rm'],
    results.map((r) => [r.side, String(r.rules), n0(r.conn.ratePerS), n0(r.conn.roundMedianRatePerS), n0(r.conn.p50Us), n0(r.conn.p90Us), n0(r.conn.p99Us),
      `${r.hits}/${r.expectedHits}`, r.blockedAfterRemove ? 'yes' : 'NO']));
  const ratio = table(['side', `rate ${opts.rules}/${SMALL}`, `round median rate ${opts.rules}/${SMALL}`, `p50 ${opts.rules}/${SMALL}`, `p99 ${opts.rules}/${SMALL}`],
    ratios(results, opts.rules).map((r) => [r.side, r.rate.toFixed(3), r.roundMedianRate.toFixed(3), r.p50.toFixed(3), r.p99.toFixed(3)]));
  const inst = table(['side', 'rules', 'install s', 'batch cmds s', 'one-rule cmds s', 'last one-rule ms', 'rm measured ms', 'tracked flows then'],
    results.map((r) => [r.side, String(r.rules), s1(r.install.totalMs), s1(r.install.batches.reduce((a, b) => a + b.ms, 0)),
      s1(r.install.singles.reduce((a, b) => a + b.ms, 0)), n0(r.install.singles[r.install.singles.length - 1]!.ms), n0(r.removeMeasuredMs),
      String(r.trackedAtRemove)]));
  const p50 = (xs: readonly number[]) => quantile([...xs].sort((a, b) => a - b), 0.5);
  const one = table(['side', 'rules', 'one-rule p50 ms', 'no-op p50 ms', '(one-rule - no-op) p50 ms', 'largest batch: rules', 'largest batch s'],
    results.map((r) => {
      const big = [...r.install.batches].sort((a, b) => b.rules - a.rules)[0];
      return [r.side, String(r.rules), n0(p50(r.install.singles.map((x) => x.ms))), n0(p50(r.install.singles.map((x) => x.noopMs))),
        n0(p50(r.install.singles.map((x) => x.ms - x.noopMs))), big ? String(big.rules) : '-', big ? s1(big.ms) : '-'];
    }));
  const vsPeer = oneRuleRatios(results).map((x) => `${x.rules} rules: one-rule p50 ctnet/${x.peer} ${x.oneRule.toFixed(2)}, ` +
    `largest batch ctnet/${x.peer} ${x.batch === undefined ? '-' : x.batch.toFixed(2)}`);
  const curve = SIDES.flatMap((side) => {
    const pts = spread(results.filter((r) => r.side === side).flatMap((r) => r.install.singles).sort((a, b) => a.before - b.before), 12);
    return pts.length ? [`${side}: ${pts.map((p) => `${p.before}:${n0(p.ms)}`).join(' ')}`] : [];
  });
  const est = oneByOne(results, opts.rules).map((e) => `${e.side}: ${s1(e.estimateMs)} s (${(e.estimateMs / 3_600_000).toFixed(2)} h)`);
  return [
    `policy filter: new TCP connections A -> B allowed by the last of N rules; ${opts.count} timed connections per setup ` +
      `(${roundCounts(opts.count, opts.rounds).length} interleaved rounds, ${opts.warmup} warm-up each); ` +
      `install batch ${opts.batch}`,
    `kernel ${info.kernel}, node ${info.node}, ${info.cpu}, ctnet ${info.ctnet}, ${info.nft}`,
    `iptables -V: ${info.iptables}; iptables-nft -V: ${info.iptablesNft}; iptables-legacy -V: ${info.iptablesLegacy ?? 'not installed'}`,
    `load average (1 min): ${info.loadStart.toFixed(2)} at the start, ${info.loadEnd.toFixed(2)} at the end`,
    '',
    conn,
    '',
    ratio,
    '',
    inst,
    '',
    'one-rule commands (no-op: ctnet --help, iptables -V, right after each: the process start in them), and the largest batch command:',
    one,
    ...vsPeer,
    '',
    'one-rule command wall time in ms, by rules already installed (before:ms; at most 12 shown, --json has all):',
    ...curve,
    '',
    `every rule with its own command, estimated from those samples (linear between them), ${opts.rules} rules:`,
    ...est,
    '',
  ].join('\n');
}

function toJson(results: readonly SetupResult[], info: Machine, opts: Options): string {
  const r2 = (x: number) => Math.round(x * 100) / 100;
  const r3 = (x: number) => Math.round(x * 1000) / 1000;
  return JSON.stringify({
    benchmark: 'policy',
    date: new Date().toISOString(),
    machine: info,
    options: { ...opts, rounds: roundCounts(opts.count, opts.rounds).length },
    setups: results.map((r) => ({
      side: r.side,
      rules: r.rules,
      connections: {
        count: r.conn.count, ratePerS: r2(r.conn.ratePerS), roundMedianRatePerS: r2(r.conn.roundMedianRatePerS), p50Us: r2(r.conn.p50Us), p90Us: r2(r.conn.p90Us),
        p99Us: r2(r.conn.p99Us), maxUs: r2(r.conn.maxUs),
        rounds: r.conn.rounds.map((x) => ({ count: x.count, elapsedMs: r2(x.elapsedMs), ratePerS: r2(x.ratePerS), p50Us: r2(x.p50Us) })),
      },
      hits: r.hits,
      expectedHits: r.expectedHits,
      install: {
        totalMs: r2(r.install.totalMs), finishMs: r2(r.install.finishMs),
        batches: r.install.batches.map((b) => ({ rules: b.rules, ms: r2(b.ms) })),
        singles: r.install.singles.map((x) => ({ before: x.before, ms: r2(x.ms), noopMs: r2(x.noopMs) })),
      },
      removeMeasuredMs: r2(r.removeMeasuredMs),
      trackedAtRemove: r.trackedAtRemove,
      blockedAfterRemove: r.blockedAfterRemove,
    })),
    ratios: ratios(results, opts.rules).map((x) => ({ side: x.side, rate: r3(x.rate), roundMedianRate: r3(x.roundMedianRate), p50: r3(x.p50), p99: r3(x.p99) })),
    oneRuleVsPeer: oneRuleRatios(results).map((x) => ({ rules: x.rules, peer: x.peer, oneRule: r3(x.oneRule), batch: x.batch === undefined ? null : r3(x.batch) })),
    oneByOneEstimateMs: oneByOne(results, opts.rules).map((e) => ({ side: e.side, rules: e.rules, ms: Math.round(e.estimateMs) })),
  }, null, 2) + '\n';
}

// ---------------------------------------------------------------------------------------------
// Main

/** One lab per side and level; returns the setups made so far even if a later lab fails. */
async function createSetups(opts: Options, legacy: boolean, tmp: string, made: Setup[], signal: AbortSignal): Promise<void> {
  const backends = legacy ? (['nft', 'legacy'] as const) : (['nft'] as const);
  for (const rules of [SMALL, opts.rules]) {
    signal.throwIfAborted();
    made.push(new CtnetSetup(await Lab.create(), rules, tmp));
    for (const b of backends) {
      signal.throwIfAborted();
      made.push(new IptablesSetup(await Lab.create(), rules, b));
    }
  }
}

async function main(): Promise<number> {
  const opts = optionsOrExit(parseOptions, USAGE);
  if (typeof opts === 'number') return opts;

  const { abort, interrupted: signalled } = trapSignals();

  const info = await machine();
  if (info.iptablesNft === undefined) {
    process.stderr.write('bench: iptables-nft is not installed\n');
    return 1;
  }
  const legacy = opts.legacy && info.iptablesLegacy !== undefined;
  const tmp = mkdtempSync(join(tmpdir(), NETNS_PREFIX));
  const setups: Setup[] = [];
  let code = 0;
  try {
    progress(`creating ${legacy ? 6 : 4} labs`);
    await createSetups(opts, legacy, tmp, setups, abort.signal);
    const results = await measure(setups, opts, abort.signal);
    info.loadEnd = loadavg()[0]!;
    process.stdout.write(opts.json ? toJson(results, info, opts) : render(results, info, opts));
  } catch (e) {
    process.stderr.write(`bench: ${(e as Error).message}\n`);
    code = signalled() || 1;
  } finally {
    progress('cleaning up');
    for (const s of setups) {
      try {
        await s.destroy();
      } catch (e) {
        process.stderr.write(`bench: ${(e as Error).message}\n`);
        code ||= 1;
      }
      await s.lab.destroy();
    }
    rmSync(tmp, { recursive: true, force: true });
  }
  return code;
}

process.exitCode = await main();
