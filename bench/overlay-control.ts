// Benchmark: the overlay's control plane (issue 14), in one run, on etcd and three lab hosts:
//   1. convergence: from `cluster join` + the first `create` on a new host (h3) until the other
//      hosts' sandboxes reach the new sandbox (ping probes every 50 ms), over leave/join rounds; and
//      from a `create` on a member that holds a lease already until the peers reach it;
//   2. kernel entries on the VXLAN device per remote host, and etcd requests per `create` (etcd's
//      own /metrics, read before and after), with 1 and with --level sandboxes per host;
//   3. `ctnet create` and CNI ADD on the overlay network against a bridge network on the same host,
//      samples taken in turn, p50/p95 and the ratio.
// What the numbers are compared with (flannel's watch and lease TTL) is in bench/README.md.
//
//   scripts/node bench/overlay-control.ts [--parts P,...] [--repeats N] [--samples N] [--level N] [--batch N] [--creates N] [--json]
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DatabaseSync } from 'node:sqlite';
import { parseArgs } from 'node:util';
import { table } from '../src/cli/table.ts';
import { EtcdLab } from '../src/lab/etcd.ts';
import { Lab, ROOT } from '../src/lab/lab.ts';
import {
  check, checkout, describeCheckout, destroyAll, exec, execOk, intOption, loadAverage, optionsOrExit, progress, round, sampleOrder, type Stats, stats,
  trapSignals,
} from './lib.ts';

const OV = 'ov';
const OV_SUBNET = '10.50.0.0/16';
const BR = 'br';
const BR_SUBNET = '10.60.0.0/16';
/** ctnet's default lease TTL: renewals (keepalives) every 20 s run in the background of every window. */
const TTL = 60;
const PROBE_EVERY_MS = 50;
const REACH_TIMEOUT_MS = 60_000;
const CNI_PATH = '/usr/lib/cni';
// Every namespace this script adds itself starts with this (the labs' own are ctlab-/ctnet-).
const NETNS_PREFIX = 'ctbench-';

type Part = 'latency' | 'convergence' | 'entries';
const PARTS: readonly Part[] = ['latency', 'convergence', 'entries'];

interface Options {
  readonly parts: readonly Part[];
  readonly repeats: number;
  readonly samples: number;
  readonly level: number;
  readonly batch: number;
  readonly creates: number;
  readonly json: boolean;
}

const USAGE = `usage: scripts/node bench/overlay-control.ts [--parts P,...] [--repeats N] [--samples N] [--level N] [--batch N] [--creates N] [--json]
  --parts P,... any of latency, convergence, entries (default all three)
  --repeats N   convergence rounds: h3 leaves and joins again, and creates on a member (default 5)
  --samples N   timed \`ctnet create\` and CNI ADD per side, overlay and bridge in turn (default 30)
  --level N     sandboxes per host for the second count of kernel entries and etcd requests (default 200)
  --batch N     CNI ADDs run at once per host while filling up to --level, untimed (default 4)
  --creates N   creates per etcd count (requests per create = the difference / N; default 10)
  --json        print the results as JSON instead of tables`;

function parseOptions(argv: readonly string[]): Options | 'help' {
  const { values } = parseArgs({
    args: [...argv],
    options: {
      parts: { type: 'string' }, repeats: { type: 'string' }, samples: { type: 'string' }, level: { type: 'string' }, batch: { type: 'string' },
      creates: { type: 'string' }, json: { type: 'boolean', default: false }, help: { type: 'boolean', short: 'h', default: false },
    },
    strict: true,
    allowPositionals: false,
  });
  if (values.help) return 'help';
  const parts = values.parts === undefined ? PARTS : values.parts.split(',').map((p) => p.trim());
  for (const p of parts) if (!PARTS.includes(p as Part)) throw new Error(`--parts takes ${PARTS.join(', ')}, got ${JSON.stringify(p)}`);
  return {
    parts: PARTS.filter((p) => parts.includes(p)),
    repeats: intOption('repeats', values.repeats, 5, 1, 50),
    samples: intOption('samples', values.samples, 30, 1, 500),
    level: intOption('level', values.level, 200, 2, 250), // a /24 lease holds 253 sandboxes
    batch: intOption('batch', values.batch, 4, 1, 32),
    creates: intOption('creates', values.creates, 10, 1, 100),
    json: values.json,
  };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

// ---------------------------------------------------------------------------------------------
// Reading the lab

/** A lab host's ctnet instance (it marks the netns files of its sandboxes: ctnet-INSTANCE-NAME). */
function instanceOf(lab: Lab): string {
  const db = new DatabaseSync(join(lab.stateDir, 'ctnet.db'), { readOnly: true });
  try {
    const row = db.prepare("SELECT value FROM meta WHERE key = 'instance'").get() as { value: string } | undefined;
    if (!row) throw new Error(`${lab.host}: no ctnet instance in ${lab.stateDir}`);
    return row.value;
  } finally {
    db.close();
  }
}

/** The IPv4 address of a sandbox, read in its namespace (a few ms; `ctnet inspect` is a Node start). */
async function addressIn(netns: string): Promise<string> {
  const out = await execOk(['nsenter', `--net=/run/netns/${netns}`, 'ip', '-j', '-4', 'addr', 'show', 'scope', 'global']);
  const addr = (JSON.parse(out) as { addr_info: { local: string }[] }[]).flatMap((l) => l.addr_info)[0]?.local;
  if (!addr) throw new Error(`no IPv4 address in ${netns}`);
  return addr;
}

/** One ICMP echo from a namespace: a new process, so a new ICMP id and a new conntrack entry each time. */
async function ping(netns: string, to: string): Promise<boolean> {
  return (await exec(['nsenter', `--net=/run/netns/${netns}`, 'ping', '-n', '-q', '-c', '1', '-W', '1', to])).code === 0;
}

/** When a source's first probe was launched, when its first answered one was, and how many went unanswered before it. */
interface Reach {
  readonly firstMs: number;
  readonly reachedMs: number;
  readonly missed: number;
}

/**
 * Launches a ping from every source every PROBE_EVERY_MS until each source has had one answered
 * (times in ms after `since`). A probe is one packet sent at launch, so an answer means the path
 * both ways was there then; probes launched before it that got no answer are counted.
 */
async function pollReach(sources: readonly { label: string; netns: string }[], to: string, since: number, signal: AbortSignal): Promise<Record<string, Reach>> {
  const launched = new Map<string, number[]>(sources.map((s) => [s.label, []]));
  const answered = new Map<string, number>(); // source -> index of its first answered probe
  const running = new Set<Promise<void>>();
  const start = performance.now();
  try {
    while (answered.size < sources.length) {
      signal.throwIfAborted();
      if (performance.now() - start > REACH_TIMEOUT_MS) {
        throw new Error(`${sources.filter((s) => !answered.has(s.label)).map((s) => s.label).join(', ')} did not reach ${to} within ${REACH_TIMEOUT_MS / 1000} s`);
      }
      const now = performance.now() - since;
      for (const s of sources) {
        if (answered.has(s.label)) continue;
        const mine = launched.get(s.label)!;
        const index = mine.push(now) - 1;
        const p: Promise<void> = ping(s.netns, to).then((ok) => {
          if (ok && (answered.get(s.label) ?? Infinity) > index) answered.set(s.label, index);
        }).finally(() => running.delete(p));
        running.add(p);
      }
      await sleep(PROBE_EVERY_MS);
    }
  } finally {
    await Promise.all(running); // no probe outlives the measurement
  }
  // A later probe may have been answered first; the earliest answered one counts.
  return Object.fromEntries(sources.map((s) => {
    const mine = launched.get(s.label)!;
    const i = answered.get(s.label)!;
    return [s.label, { firstMs: mine[0]!, reachedMs: mine[i]!, missed: i }];
  }));
}

/** etcd's request counters: RPCs started by method, mvcc operations, lease operations. */
type Counters = Record<string, number>;

async function etcdCounters(etcd: EtcdLab): Promise<Counters> {
  const text = await execOk(['nsenter', `--net=/run/netns/${etcd.netns}`, 'curl', '-sf', '--max-time', '5', `${etcd.url}/metrics`]);
  const c: Counters = {};
  for (const line of text.split('\n')) {
    let m = /^grpc_server_started_total\{grpc_method="(\w+)".*\} (\S+)$/.exec(line);
    if (m) {
      c[`rpc ${m[1]}`] = (c[`rpc ${m[1]}`] ?? 0) + Number(m[2]);
      continue;
    }
    m = /^grpc_server_msg_received_total\{grpc_method="(LeaseKeepAlive|Watch)".*\} (\S+)$/.exec(line);
    if (m) {
      c[`rpc ${m[1]} messages`] = (c[`rpc ${m[1]} messages`] ?? 0) + Number(m[2]);
      continue;
    }
    m = /^etcd_mvcc_(put|range|txn|delete)_total (\S+)$/.exec(line) ?? /^etcd_debugging_lease_(granted|renewed|revoked)_total (\S+)$/.exec(line);
    if (m) c[line.startsWith('etcd_mvcc') ? `mvcc ${m[1]}` : `lease ${m[1]}`] = Number(m[2]);
  }
  if (c['mvcc range'] === undefined) throw new Error('etcd /metrics has no etcd_mvcc_range_total: another etcd version?');
  return c;
}

/** The counters that changed, by how much. */
function minus(after: Counters, before: Counters): Counters {
  const d: Counters = {};
  for (const k of new Set([...Object.keys(before), ...Object.keys(after)])) {
    const v = (after[k] ?? 0) - (before[k] ?? 0);
    if (v !== 0) d[k] = v;
  }
  return d;
}

/** The VXLAN device's entries on a host, and the peers the host's ctnet says it has. */
interface Entries {
  readonly sandboxes: number;
  readonly peers: number;
  readonly neigh: number;
  readonly fdb: number;
  readonly routes: number;
}

async function entriesOn(lab: Lab): Promise<Entries> {
  const dev = `ctov-${OV}`;
  const json = async (argv: string[]) => JSON.parse(check(argv, await lab.inHost(argv)) || '[]') as Record<string, unknown>[];
  const neigh = await json(['ip', '-j', 'neigh', 'show', 'dev', dev]);
  // Only entries that send to a VTEP (dst): the device's own multicast entries are not peers'.
  const fdb = (await json(['bridge', '-j', 'fdb', 'show', 'dev', dev])).filter((e) => typeof e.dst === 'string');
  const routes = await json(['ip', '-j', 'route', 'show', 'dev', dev]);
  const ports = await json(['ip', '-j', 'link', 'show', 'master', `ctbr-${OV}`]);
  const v = JSON.parse(await lab.ctnetOk(['network', 'inspect', OV, '--json'])) as { overlay: { peers: unknown[] } };
  return { sandboxes: ports.length, peers: v.overlay.peers.length, neigh: neigh.length, fdb: fdb.length, routes: routes.length };
}

// ---------------------------------------------------------------------------------------------
// The cluster

interface Host {
  readonly name: string;
  readonly lab: Lab;
}

class Cluster {
  readonly etcd: EtcdLab;
  readonly hosts: Host[] = [];
  readonly #tmp = mkdtempSync(join(tmpdir(), `${NETNS_PREFIX}overlay-control-`));
  readonly #netns = new Set<string>();

  private constructor(etcd: EtcdLab) {
    this.etcd = etcd;
  }

  static async create(names: readonly string[]): Promise<Cluster> {
    const c = new Cluster(await EtcdLab.create());
    try {
      for (const name of names) {
        const lab = await Lab.create({ name });
        c.hosts.push({ name, lab });
        await c.etcd.connect(lab.host);
      }
    } catch (e) {
      await c.destroy();
      throw e;
    }
    return c;
  }

  host(name: string): Lab {
    const h = this.hosts.find((x) => x.name === name);
    if (!h) throw new Error(`no host ${name}`);
    return h.lab;
  }

  join(name: string): Promise<string> {
    return this.host(name).ctnetOk(['cluster', 'join', '--etcd', this.etcd.url, '--underlay', 'underlay0', '--host-name', name, '--lease-ttl', String(TTL)]);
  }

  /** The netns of sandbox `sandbox` on host `name`. */
  netns(name: string, sandbox: string): string {
    return `ctnet-${instanceOf(this.host(name))}-${sandbox}`;
  }

  get tmp(): string {
    return this.#tmp;
  }

  /** A namespace of this run's own (a runtime's, for CNI ADD); removed by destroy() if not before. */
  async addNetns(name: string): Promise<string> {
    const ns = `${NETNS_PREFIX}${this.hosts[0]!.lab.id}-${name}`;
    await execOk(['ip', 'netns', 'add', ns]);
    this.#netns.add(ns);
    return ns;
  }

  async delNetns(ns: string): Promise<void> {
    await execOk(['ip', 'netns', 'del', ns]);
    this.#netns.delete(ns);
  }

  async destroy(): Promise<void> {
    const errors: string[] = [];
    // Runtime namespaces first (hundreds after a fill: 8 at a time), then the hosts, then etcd.
    const left = [...this.#netns];
    await Promise.all(Array.from({ length: 8 }, async () => {
      for (let ns = left.pop(); ns !== undefined; ns = left.pop()) {
        const r = await exec(['ip', 'netns', 'del', ns]);
        if (r.code !== 0 && !/No such file/.test(r.stderr)) errors.push(`ip netns del ${ns}: ${r.stderr.trim()}`);
        else this.#netns.delete(ns);
      }
    }));
    for (const h of this.hosts) await h.lab.destroy().catch((e: Error) => errors.push(e.message));
    await this.etcd.destroy().catch((e: Error) => errors.push(e.message));
    rmSync(this.#tmp, { recursive: true, force: true });
    if (errors.length > 0) throw new Error(`cleanup: ${errors.join('; ')}`);
  }
}

// ---------------------------------------------------------------------------------------------
// Running ctnet's CNI plugin as a runtime does (bench/cni.ts does the same)

type Kind = 'overlay' | 'bridge';
const KINDS: readonly Kind[] = ['overlay', 'bridge'];
const networkOf = (k: Kind) => (k === 'overlay' ? OV : BR);

interface Conflist {
  readonly cniVersion: string;
  readonly name: string;
  readonly plugins: readonly ({ type: string } & Record<string, unknown>)[];
}

/** `ctnet cni install` on a host for these networks; the conflists as a runtime reads them (each names the host's state dir). */
async function installCni(c: Cluster, host: string, kinds: readonly Kind[]): Promise<{ bin: string; lists: Partial<Record<Kind, Conflist>> }> {
  const bin = join(c.tmp, host, 'bin');
  const conf = join(c.tmp, host, 'conf');
  const lists: Partial<Record<Kind, Conflist>> = {};
  for (const k of kinds) {
    const written = (await c.host(host).ctnetOk(['cni', 'install', '--bin-dir', bin, '--conf-dir', conf, '--network', networkOf(k)])).trim().split('\n');
    const path = written.find((f) => f.endsWith('.conflist'));
    if (!path) throw new Error(`ctnet cni install --network ${networkOf(k)} on ${host} wrote no conflist: ${written.join(', ')}`);
    lists[k] = JSON.parse(readFileSync(path, 'utf8')) as Conflist;
  }
  return { bin, lists };
}

/** Runs a conflist's plugins for ADD (in order) or DEL (reversed), as libcni does; returns the wall time. */
async function cniChain(lab: Lab, bin: string, list: Conflist, command: 'ADD' | 'DEL', id: string, netns: string, prev?: object): Promise<{ ms: number; result?: object }> {
  const plugins = command === 'ADD' ? list.plugins : [...list.plugins].reverse();
  let result = prev;
  const start = performance.now();
  for (const p of plugins) {
    const conf = { ...p, cniVersion: list.cniVersion, name: list.name, ...(result ? { prevResult: result } : {}) };
    const dir = p.type === 'ctnet' ? bin : CNI_PATH;
    const argv = ['nsenter', `--net=/run/netns/${lab.host}`, join(dir, p.type)];
    const r = await exec(argv, {
      input: JSON.stringify(conf),
      env: { CNI_COMMAND: command, CNI_CONTAINERID: id, CNI_NETNS: `/run/netns/${netns}`, CNI_IFNAME: 'eth0', CNI_PATH: `${bin}:${CNI_PATH}`, CTNET_STATE_DIR: lab.stateDir },
    });
    const out = check(argv, r);
    if (command === 'ADD') result = JSON.parse(out) as object;
  }
  return { ms: performance.now() - start, ...(result ? { result } : {}) };
}

// ---------------------------------------------------------------------------------------------
// 1. Convergence

/** One convergence sample: times in ms. */
interface Round {
  /** `cluster join` (new host only). */
  readonly joinMs?: number;
  readonly createMs: number;
  /** From `create` returning until the first probe was launched (reading the address, spawning). */
  readonly firstProbeMs: number;
  /** From `create` returning until the first probe that every other host's sandbox had answered was launched. */
  readonly afterCreateMs: number;
  /** Probes launched before that and not answered (0: reached at the first probe). */
  readonly missed: number;
  /** join + create + afterCreate. */
  readonly totalMs: number;
}

interface JoinRound extends Round {
  readonly joinMs: number;
  /** From `network rm` (which gives back h3's lease at its end) returning until h1 and h2 no longer route h3's lease. */
  readonly removedMs: number;
  readonly etcd: { readonly join: Counters; readonly create: Counters };
}

function round_(joinMs: number | undefined, createMs: number, reached: Record<string, Reach>): Round {
  const r = Object.values(reached);
  const after = Math.max(...r.map((x) => x.reachedMs));
  return {
    ...(joinMs !== undefined ? { joinMs } : {}), createMs, firstProbeMs: Math.max(...r.map((x) => x.firstMs)), afterCreateMs: after,
    missed: r.reduce((n, x) => n + x.missed, 0), totalMs: (joinMs ?? 0) + createMs + after,
  };
}

async function routesTo(lab: Lab, prefix: string): Promise<boolean> {
  return (await lab.inHost(['ip', 'route', 'show', 'dev', `ctov-${OV}`])).stdout.includes(prefix);
}

/** h3 joins, creates its first sandbox on ov (which makes its side: a lease); h1's and h2's sandboxes poll it; then h3 leaves. */
async function joinRound(c: Cluster, i: number, signal: AbortSignal): Promise<JoinRound> {
  const h3 = c.host('h3');
  const sources = [{ label: 'h1', netns: c.netns('h1', 'a1') }, { label: 'h2', netns: c.netns('h2', 'b1') }];
  const name = `c${i}`;
  const e0 = await etcdCounters(c.etcd);
  const t0 = performance.now();
  await c.join('h3');
  const joinMs = performance.now() - t0;
  const e1 = await etcdCounters(c.etcd);
  const t1 = performance.now();
  await h3.ctnetOk(['create', name, '--network', OV]);
  const tCreate = performance.now();
  const addr = await addressIn(c.netns('h3', name));
  const reached = await pollReach(sources, addr, tCreate, signal);
  const e2 = await etcdCounters(c.etcd);
  // Leave as the docs say: the sandbox, this host's side of the network (its lease), the cluster.
  await h3.ctnetOk(['rm', name]);
  await h3.ctnetOk(['network', 'rm', OV]); // gives back the lease, at its end
  const tRm = performance.now();
  await h3.ctnetOk(['cluster', 'leave']);
  const prefix = addr.split('.').slice(0, 3).join('.') + '.0/';
  for (;;) {
    signal.throwIfAborted();
    if (!(await routesTo(c.host('h1'), prefix)) && !(await routesTo(c.host('h2'), prefix))) break;
    if (performance.now() - tRm > REACH_TIMEOUT_MS) throw new Error(`h1 or h2 still routes ${prefix} ${REACH_TIMEOUT_MS / 1000} s after h3 left`);
    await sleep(PROBE_EVERY_MS);
  }
  return { ...round_(joinMs, tCreate - t1, reached), joinMs, removedMs: performance.now() - tRm, etcd: { join: minus(e1, e0), create: minus(e2, e1) } };
}

/**
 * h3 joins and makes its side, then its ctnetd is SIGKILLed (a host that dies): how long until h1 and
 * h2 drop its entries (its etcd lease expires with nobody renewing it). One sample: it takes a TTL.
 */
async function deadHost(c: Cluster, signal: AbortSignal): Promise<{ goneMs: number }> {
  const h3 = c.host('h3');
  await c.join('h3');
  await h3.ctnetOk(['create', 'dead', '--network', OV]);
  const addr = await addressIn(c.netns('h3', 'dead'));
  await pollReach([{ label: 'h1', netns: c.netns('h1', 'a1') }, { label: 'h2', netns: c.netns('h2', 'b1') }], addr, performance.now(), signal);
  const pid = Number(/pid (\d+)/.exec(await h3.ctnetOk(['daemon', 'status']))?.[1]);
  if (!Number.isInteger(pid) || pid <= 1) throw new Error('ctnet daemon status on h3 gave no pid');
  const prefix = addr.split('.').slice(0, 3).join('.') + '.0/';
  process.kill(pid, 'SIGKILL'); // this run's own ctnetd (cluster join started it)
  const t0 = performance.now();
  for (;;) {
    signal.throwIfAborted();
    if (!(await routesTo(c.host('h1'), prefix)) && !(await routesTo(c.host('h2'), prefix))) break;
    if (performance.now() - t0 > (TTL + 30) * 1000) throw new Error(`h1 or h2 still routes ${prefix} ${TTL + 30} s after h3's ctnetd died`);
    await sleep(PROBE_EVERY_MS);
  }
  return { goneMs: performance.now() - t0 };
}

/** A sandbox made on h1, whose lease exists: how long until h2's sandbox reaches it. */
async function createRound(c: Cluster, name: string, signal: AbortSignal): Promise<Round> {
  const h1 = c.host('h1');
  const t0 = performance.now();
  await h1.ctnetOk(['create', name, '--network', OV]);
  const tCreate = performance.now();
  const addr = await addressIn(c.netns('h1', name));
  return round_(undefined, tCreate - t0, await pollReach([{ label: 'h2', netns: c.netns('h2', 'b1') }], addr, tCreate, signal));
}

// ---------------------------------------------------------------------------------------------
// 2. Entries and etcd requests per create

interface LevelCount {
  readonly level: number;
  readonly entries: Record<string, Entries>;
  /** Per create, over --creates creates on h1 one after another. */
  readonly perCreate: Counters;
  /** The same span of time with no create (background: lease renewals, the watches), divided alike. */
  readonly idle: Counters;
  readonly windowMs: number;
}

async function countLevel(c: Cluster, level: number, creates: number, tag: string): Promise<LevelCount> {
  const entries: Record<string, Entries> = {};
  for (const h of ['h1', 'h2']) entries[h] = await entriesOn(c.host(h));
  const h1 = c.host('h1');
  const e0 = await etcdCounters(c.etcd);
  const t0 = performance.now();
  const names: string[] = [];
  for (let i = 0; i < creates; i++) {
    names.push(`e${tag}-${i}`);
    await h1.ctnetOk(['create', names[i]!, '--network', OV]);
  }
  const windowMs = performance.now() - t0;
  const e1 = await etcdCounters(c.etcd);
  await sleep(windowMs);
  const e2 = await etcdCounters(c.etcd);
  await h1.ctnetOk(['rm', ...names]); // back to the level
  const per = (d: Counters) => Object.fromEntries(Object.entries(d).map(([k, v]) => [k, v / creates]));
  return { level, entries, perCreate: per(minus(e1, e0)), idle: per(minus(e2, e1)), windowMs };
}

/**
 * Fills h1 and h2 up to `level` sandboxes on ov each, untimed: CNI ADDs of namespaces of this run's
 * own (through each host's ctnetd: no Node start per sandbox, so the fill takes minutes, not tens),
 * `batch` at once per host. Returns the wall time and the ADDs made.
 */
async function fill(c: Cluster, level: number, batch: number, signal: AbortSignal): Promise<{ ms: number; adds: number }> {
  const start = performance.now();
  let adds = 0;
  let failed: { error: unknown } | undefined;
  // Every worker finishes its current ADD before this returns (or throws), so cleanup never races one.
  const settled = await Promise.allSettled(['h1', 'h2'].map(async (h) => {
    const lab = c.host(h);
    const { bin, lists } = await installCni(c, h, ['overlay']);
    const have = (await entriesOn(lab)).sandboxes;
    const names = Array.from({ length: Math.max(0, level - have) }, (_, i) => `${h}-f${i}`);
    let next = 0;
    const worker = async () => {
      while (!failed && next < names.length) {
        const n = names[next++]!;
        try {
          signal.throwIfAborted();
          await cniChain(lab, bin, lists.overlay!, 'ADD', n, await c.addNetns(n));
          adds++;
        } catch (e) {
          failed ??= { error: e };
        }
      }
    };
    await Promise.all(Array.from({ length: batch }, worker));
  }));
  for (const r of settled) if (r.status === 'rejected') failed ??= { error: r.reason };
  if (failed) throw failed.error;
  return { ms: performance.now() - start, adds };
}

// ---------------------------------------------------------------------------------------------
// 3. create and CNI ADD: overlay against bridge on h1

/** ctnetd's own account of one request (see bench/cni.ts). */
interface DaemonLine {
  readonly totalMs: number;
  readonly toolsMs: number;
  readonly spawns: number;
  readonly engineMs: number;
}

function daemonLines(lab: Lab, command: 'ADD' | 'DEL'): Map<string, DaemonLine> {
  const found = new Map<string, DaemonLine>();
  const re = /ctnetd\[\d+\]: (ADD|DEL) (\S+) \S*: exit 0 in ([\d.]+) ms \(tools ([\d.]+) ms in (\d+) spawns(?:, netlink [\d.]+ ms in \d+ calls)?, engine (-?[\d.]+) ms\)/;
  for (const file of [join(lab.stateDir, 'ctnetd.log.1'), join(lab.stateDir, 'ctnetd.log')]) {
    let text = '';
    try {
      text = readFileSync(file, 'utf8');
    } catch {
      continue;
    }
    for (const l of text.split('\n')) {
      const m = re.exec(l);
      if (m && m[1] === command) found.set(m[2]!, { totalMs: Number(m[3]), toolsMs: Number(m[4]), spawns: Number(m[5]), engineMs: Number(m[6]) });
    }
  }
  return found;
}

interface LatencyResult {
  readonly create: Record<Kind, Stats>;
  readonly add: Record<Kind, Stats>;
  readonly del: Record<Kind, Stats>;
  /** ctnetd's log for the sampled ADDs: p50 of its total, tools time, spawns and engine time. */
  readonly daemonAdd: Record<Kind, { totalMs: number; toolsMs: number; spawns: number; engineMs: number; found: number }>;
}

async function latency(c: Cluster, samples: number, signal: AbortSignal): Promise<LatencyResult> {
  const h1 = c.host('h1');
  const create: Record<Kind, number[]> = { overlay: [], bridge: [] };
  const made: string[] = [];
  // One untimed create per side first (the first in a process-cold state dir is slower for both).
  for (const k of KINDS) {
    await h1.ctnetOk(['create', `w-${k}`, '--network', networkOf(k)]);
    made.push(`w-${k}`);
  }
  progress(`create: ${samples} per side on h1, overlay and bridge in turn`);
  for (let i = 0; i < samples; i++) {
    for (const k of sampleOrder(KINDS, i)) {
      signal.throwIfAborted();
      const name = `l${k[0]}${i}`;
      const t = performance.now();
      await h1.ctnetOk(['create', name, '--network', networkOf(k)]);
      create[k].push(performance.now() - t);
      made.push(name);
    }
  }
  await h1.ctnetOk(['rm', ...made]);

  progress(`CNI ADD and DEL: ${samples} per side on h1, overlay and bridge in turn`);
  const { bin, lists: l } = await installCni(c, 'h1', KINDS);
  const lists = l as Record<Kind, Conflist>;
  const add: Record<Kind, number[]> = { overlay: [], bridge: [] };
  const del: Record<Kind, number[]> = { overlay: [], bridge: [] };
  const ids: Record<Kind, string[]> = { overlay: [], bridge: [] };
  const one = async (k: Kind, id: string, timed: boolean) => {
    const ns = await c.addNetns(id);
    const a = await cniChain(h1, bin, lists[k], 'ADD', id, ns);
    const d = await cniChain(h1, bin, lists[k], 'DEL', id, ns, a.result);
    await c.delNetns(ns);
    if (timed) {
      add[k].push(a.ms);
      del[k].push(d.ms);
      ids[k].push(id);
    }
  };
  for (const k of KINDS) await one(k, `warm-${k}`, false);
  for (let i = 0; i < samples; i++) {
    for (const k of sampleOrder(KINDS, i)) {
      signal.throwIfAborted();
      await one(k, `cni-${k}-${i}`, true);
    }
  }
  const logged = daemonLines(h1, 'ADD');
  const p50 = (xs: number[]) => (xs.length ? stats(xs).p50 : NaN);
  const daemonAdd = {} as LatencyResult['daemonAdd'];
  for (const k of KINDS) {
    const lines = ids[k].map((id) => logged.get(id)).filter((x): x is DaemonLine => x !== undefined);
    daemonAdd[k] = {
      found: lines.length, totalMs: p50(lines.map((l) => l.totalMs)), toolsMs: p50(lines.map((l) => l.toolsMs)),
      spawns: p50(lines.map((l) => l.spawns)), engineMs: p50(lines.map((l) => l.engineMs)),
    };
  }
  const st = (r: Record<Kind, number[]>) => ({ overlay: stats(r.overlay), bridge: stats(r.bridge) });
  return { create: st(create), add: st(add), del: st(del), daemonAdd };
}

// ---------------------------------------------------------------------------------------------
// The run

interface Result {
  readonly date: string;
  readonly commit: string;
  readonly runs: string;
  readonly etcdVersion: string;
  readonly load: { readonly start: string; readonly end: string };
  readonly options: Options;
  readonly latency?: LatencyResult;
  readonly joins?: readonly JoinRound[];
  /** Creates on a member whose lease exists, by sandboxes per host. */
  readonly creates?: Record<string, readonly Round[]>;
  readonly levels?: readonly LevelCount[];
  /** A host whose ctnetd died: until the others dropped it. */
  readonly dead?: { readonly goneMs: number };
  /** Filling h1 and h2 up to --level by CNI ADD: wall time, ADDs, etcd requests per ADD (background included). */
  readonly fill?: { readonly ms: number; readonly adds: number; readonly perAdd: Counters };
}

type Measured = Pick<Result, 'latency' | 'joins' | 'creates' | 'levels' | 'dead' | 'fill'>;

async function run(c: Cluster, opts: Options, signal: AbortSignal): Promise<Measured> {
  const has = (p: Part) => opts.parts.includes(p);
  progress('h1 and h2 join; h1 defines ov (vxlan) and makes br (bridge); a1 on h1, b1 on h2');
  await c.join('h1');
  await c.join('h2');
  const h1 = c.host('h1');
  const h2 = c.host('h2');
  await h1.ctnetOk(['network', 'create', OV, '--driver', 'vxlan', '--subnet', OV_SUBNET]);
  await h1.ctnetOk(['network', 'create', BR, '--subnet', BR_SUBNET]);
  await h1.ctnetOk(['create', 'a1', '--network', OV]);
  await h2.ctnetOk(['create', 'b1', '--network', OV]);
  await c.host('h3').ctnetOk(['network', 'ls']); // h3's state dir and instance, so its netns names are known
  await pollReach([{ label: 'h1', netns: c.netns('h1', 'a1') }], await addressIn(c.netns('h2', 'b1')), performance.now(), signal);
  const out: { -readonly [K in keyof Measured]: Measured[K] } = {};

  if (has('latency')) out.latency = await latency(c, opts.samples, signal);

  const creates: Record<string, Round[]> = {};
  const createRounds = async (level: number, tag: string) => {
    progress(`convergence: ${opts.repeats} creates on h1 (its lease exists) at ${level} per host, reached from h2`);
    const rounds: Round[] = [];
    for (let i = 0; i < opts.repeats; i++) rounds.push(await createRound(c, `${tag}${i}`, signal));
    await h1.ctnetOk(['rm', ...rounds.map((_, i) => `${tag}${i}`)]);
    creates[String(level)] = rounds;
  };
  if (has('convergence')) {
    progress(`convergence: ${opts.repeats} rounds of h3 joining, creating its first sandbox and leaving`);
    const joins: JoinRound[] = [];
    for (let i = 0; i < opts.repeats; i++) joins.push(await joinRound(c, i, signal));
    out.joins = joins;
    await createRounds(1, 'x');
    out.creates = creates;
    progress(`convergence: h3 joins again and its ctnetd is killed; waiting for its lease to expire (TTL ${TTL} s)`);
    out.dead = await deadHost(c, signal);
  }
  if (has('entries')) {
    progress(`entries and etcd requests at 1 sandbox per host (${opts.creates} creates on h1)`);
    const levels = [await countLevel(c, 1, opts.creates, 'a')];
    progress(`filling h1 and h2 to ${opts.level} sandboxes each by CNI ADD, ${opts.batch} at once per host`);
    const e0 = await etcdCounters(c.etcd);
    const f = await fill(c, opts.level, opts.batch, signal);
    const d = minus(await etcdCounters(c.etcd), e0);
    out.fill = { ...f, perAdd: Object.fromEntries(Object.entries(d).map(([k, v]) => [k, v / Math.max(1, f.adds)])) };
    progress(`filled in ${(f.ms / 1000).toFixed(1)} s; entries and etcd requests at ${opts.level} per host`);
    levels.push(await countLevel(c, opts.level, opts.creates, 'b'));
    out.levels = levels;
    if (has('convergence')) await createRounds(opts.level, 'y');
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Output

function avg(cs: readonly Counters[]): Counters {
  const out: Counters = {};
  for (const c of cs) for (const [k, v] of Object.entries(c)) out[k] = (out[k] ?? 0) + v / cs.length;
  return out;
}

function render(r: Result): string {
  const ms = (n: number) => n.toFixed(0);
  const ms1 = (n: number) => n.toFixed(1);
  const p50 = (xs: readonly number[]) => stats(xs).p50;
  const span = (xs: readonly number[]) => `${ms(p50(xs))} (${ms(Math.min(...xs))}-${ms(Math.max(...xs))})`;
  const out: string[] = [
    `overlay control plane: etcd ${r.etcdVersion} and lab hosts h1, h2, h3 (each its own ctnetd), lease TTL ${TTL} s; ctnet ${r.commit}, ${r.runs}`,
    `load average ${r.load.start} at the start, ${r.load.end} at the end (2 cores; other sessions share the machine)`,
  ];
  if (r.joins && r.creates) {
    const j = r.joins;
    out.push('', `1. convergence, ms, p50 (min-max) of ${r.options.repeats}; probes: one ping each, launched every ${PROBE_EVERY_MS} ms from the other hosts' sandboxes until answered`);
    const row = (what: string, xs: readonly Round[]) => [what, xs[0]?.joinMs === undefined ? '-' : span(xs.map((x) => x.joinMs!)), span(xs.map((x) => x.createMs)),
      span(xs.map((x) => x.firstProbeMs)), span(xs.map((x) => x.afterCreateMs)), String(xs.reduce((n, x) => n + x.missed, 0)), span(xs.map((x) => x.totalMs))];
    out.push(table(['what', 'join', 'create', 'first probe', 'answered probe', 'unanswered (all rounds)', 'total'], [
      row('h3 joins; its first create (claims a lease)', j),
      ...Object.entries(r.creates).map(([level, cs]) => row(`create on h1 (lease held), ${level}/host`, cs)),
    ]));
    out.push('  first probe / answered probe: launched that long after `create` returned (the first answered one, from every other host)');
    out.push(`  h3 leaving (network rm, cluster leave): its route gone from h1 and h2 ${span(j.map((x) => x.removedMs))} ms after \`network rm\` returned (the 3 s peer grace included)`);
    if (r.dead) out.push(`  h3's ctnetd SIGKILLed (no leave): its route gone from h1 and h2 after ${(r.dead.goneMs / 1000).toFixed(1)} s (lease TTL ${TTL} s, renewed every ${TTL / 3} s; the grace included)`);
  }
  if (r.levels) {
    out.push('', '2. kernel entries on ctov-ov, per host, and etcd requests');
    const erows: string[][] = [];
    for (const l of r.levels) {
      for (const [h, e] of Object.entries(l.entries)) {
        const per = e.peers > 0 ? `${e.neigh / e.peers} + ${e.fdb / e.peers} + ${e.routes / e.peers}` : '-';
        erows.push([String(l.level), h, String(e.sandboxes), String(e.peers), String(e.neigh), String(e.fdb), String(e.routes), per]);
      }
    }
    out.push(table(['level', 'host', 'sandboxes on ov', 'peers', 'neigh', 'fdb', 'routes', 'per peer: neigh + fdb + route'], erows));
    const cols: [string, Counters][] = [
      ...(r.joins ? [['h3 join', avg(r.joins.map((x) => x.etcd.join))], ['h3 first create', avg(r.joins.map((x) => x.etcd.create))]] as [string, Counters][] : []),
      ...r.levels.flatMap((l): [string, Counters][] => [[`create at ${l.level}/host`, l.perCreate], ['idle, as long', l.idle]]),
      ...(r.fill ? [[`CNI ADD, fill to ${r.options.level}`, r.fill.perAdd]] as [string, Counters][] : []),
    ];
    const keys = [...new Set(cols.flatMap(([, c]) => Object.keys(c)))].filter((k) => cols.some(([, c]) => (c[k] ?? 0) !== 0)).sort();
    const num = (n: number) => (Number.isInteger(n) ? String(n) : n.toFixed(2));
    out.push(`etcd requests, from its /metrics (grpc_server_started_total by method; messages on streams; mvcc and lease counters). h3 join and first create: ` +
      `mean per round (the first create's window runs until the probes are answered); create: the difference over ${r.options.creates} creates on h1, / ${r.options.creates}; ` +
      `idle: as long again right after, with no create, / the same; CNI ADD: the difference over the fill / its ${r.fill?.adds ?? 0} ADDs`);
    out.push(table(['counter', ...cols.map(([h]) => h)], keys.map((k) => [k, ...cols.map(([, c]) => num(c[k] ?? 0))])));
    if (r.fill) out.push(`filling h1 and h2 from 1 to ${r.options.level} sandboxes each (${r.fill.adds} CNI ADDs, ${r.options.batch} at once per host) took ${(r.fill.ms / 1000).toFixed(1)} s`);
  }
  if (r.latency) {
    const L = r.latency;
    out.push('', `3. on h1, ${r.options.samples} samples per side, overlay and bridge in turn, ms`);
    const lrows = (['create', 'add', 'del'] as const).map((op) => {
      const o = L[op].overlay;
      const b = L[op].bridge;
      return [{ create: 'ctnet create', add: 'CNI ADD (C plugin -> ctnetd)', del: 'CNI DEL' }[op], `${ms1(o.p50)} / ${ms1(o.p95)}`, `${ms1(b.p50)} / ${ms1(b.p95)}`,
        `${(o.p50 / b.p50).toFixed(2)}x (${(o.p95 / b.p95).toFixed(2)}x)`];
    });
    out.push(table(['operation', 'overlay p50 / p95', 'bridge p50 / p95', 'overlay/bridge p50 (p95)'], lrows));
    const d = L.daemonAdd;
    const side = (x: LatencyResult['daemonAdd'][Kind]) => `${ms1(x.totalMs)} ms (tools ${ms1(x.toolsMs)} ms in ${x.spawns} spawns, engine ${ms1(x.engineMs)} ms; ${x.found} logged)`;
    out.push(`inside ctnetd, ADD p50 from ctnetd.log: overlay ${side(d.overlay)}, bridge ${side(d.bridge)}`);
  }
  return out.join('\n') + '\n';
}

function toJson(r: Result): string {
  const st = (s: Stats) => ({ p50Ms: round(s.p50), p95Ms: round(s.p95), samplesMs: s.samples.map(round) });
  const both = (x: Record<Kind, Stats>) => ({ overlay: st(x.overlay), bridge: st(x.bridge), ratioP50: round(x.overlay.p50 / x.bridge.p50), ratioP95: round(x.overlay.p95 / x.bridge.p95) });
  const rd = (x: Round) => Object.fromEntries(Object.entries(x).map(([k, v]) => [k, typeof v === 'number' && k.endsWith('Ms') ? round(v) : v]));
  return JSON.stringify({
    benchmark: 'overlay-control', date: r.date, commit: r.commit, runs: r.runs, etcd: r.etcdVersion, load: r.load, options: r.options, leaseTtlS: TTL,
    ...(r.joins && r.creates ? {
      convergence: {
        probeEveryMs: PROBE_EVERY_MS, join: r.joins.map(rd),
        create: Object.fromEntries(Object.entries(r.creates).map(([k, v]) => [k, v.map(rd)])),
      },
    } : {}),
    ...(r.dead ? { deadHost: { goneMs: round(r.dead.goneMs) } } : {}),
    ...(r.levels ? { levels: r.levels.map((l) => ({ ...l, windowMs: round(l.windowMs) })) } : {}),
    ...(r.fill ? { fill: { ...r.fill, ms: round(r.fill.ms) } } : {}),
    ...(r.latency ? { latency: { create: both(r.latency.create), cniAdd: both(r.latency.add), cniDel: both(r.latency.del), daemonAdd: r.latency.daemonAdd } } : {}),
  }, null, 2) + '\n';
}

async function main(): Promise<number> {
  const opts = optionsOrExit(parseOptions, USAGE);
  if (typeof opts === 'number') return opts;
  const { abort, interrupted } = trapSignals();
  const here = await checkout(ROOT);
  progress(describeCheckout('ctnet', here));
  const version = (await exec(['etcd', '--version'])).stdout.split('\n')[0]?.replace('etcd Version: ', '') ?? 'unknown';
  const load = loadAverage();
  let c: Cluster | undefined;
  let code = 0;
  try {
    progress('etcd and three lab hosts on its underlay');
    c = await Cluster.create(['h1', 'h2', 'h3']);
    const r = await run(c, opts, abort.signal);
    const result: Result = {
      date: new Date().toISOString(), commit: here.commit, runs: here.bundle ? 'bin/ctnet runs the bundle' : 'bin/ctnet runs the sources',
      etcdVersion: version, load: { start: load, end: loadAverage() }, options: opts, ...r,
    };
    process.stdout.write(opts.json ? toJson(result) : render(result));
  } catch (e) {
    process.stderr.write(`bench: ${(e as Error).message}\n`);
    code = interrupted() || 1;
  } finally {
    progress('cleaning up');
    if (c) code ||= await destroyAll([c]);
  }
  return code;
}

process.exitCode = await main();
