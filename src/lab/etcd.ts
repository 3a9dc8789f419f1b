// etcd for multi-host labs: a namespace of its own (ctlab-ID-etcd) holding an underlay bridge
// (under0, 192.0.2.1/24, a documentation range) and etcd listening only on that address, its data
// in a temp dir. connect() joins a lab host to the underlay with a veth (underlay0 inside the host),
// so lab hosts reach etcd, and each other, without touching the machine's own network. destroy()
// stops etcd and removes the namespace (and with it every veth), the data and the logs.
//
// The bridge lives in the etcd namespace; the kernel layer applies bridge and master operations in
// the namespace of the process, so those run in a child entered into it (this file, as a script).
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ExecBackend } from '../kernel/exec/backend.ts';
import { netnsKillAll } from '../kernel/netns.ts';
import type { Op } from '../plan/ops.ts';
import { ROOT, type Result } from './lab.ts';

const NODE = join(ROOT, 'scripts', 'node');
// The source file, not import.meta.url: in the bundle (build/ctnet.mjs, which `ctnet demo cluster`
// runs) that is the bundle, whose argv[2] would be read as a ctnet command.
const SELF = join(ROOT, 'src', 'lab', 'etcd.ts');

/** The underlay: TEST-NET-1 (RFC 5737), never a real destination. */
export const UNDERLAY = { prefix: 24, etcd: '192.0.2.1', first: 10 } as const;
export const ETCD_PORT = 2379;
const BRIDGE = 'under0';

function run(argv: readonly string[], timeoutMs = 30_000): Promise<Result> {
  return new Promise((resolve) => {
    execFile(argv[0]!, argv.slice(1), { timeout: timeoutMs }, (err, stdout, stderr) => {
      resolve({ code: err ? (typeof err.code === 'number' ? err.code : 1) : 0, stdout, stderr });
    });
  });
}

export interface Connected {
  /** The host's underlay address (on underlay0 in the host's namespace). */
  readonly address: string;
  readonly ifname: string;
}

export class EtcdLab {
  readonly id: string;
  /** The namespace etcd and the underlay bridge live in. */
  readonly netns: string;
  readonly dir: string;
  readonly url = `http://${UNDERLAY.etcd}:${ETCD_PORT}`;
  readonly #kernel = new ExecBackend();
  #etcd: ChildProcess | undefined;
  #hosts = 0;
  #destroyed = false;

  private constructor(id: string) {
    this.id = id;
    this.netns = `ctlab-${id}-etcd`;
    this.dir = mkdtempSync(join(tmpdir(), `ctlab-${id}-etcd-`));
  }

  /** Makes the namespace and the underlay bridge, starts etcd and waits until it answers. */
  static async create(): Promise<EtcdLab> {
    const lab = new EtcdLab(randomBytes(3).toString('hex'));
    try {
      await lab.#build();
    } catch (e) {
      await lab.destroy();
      throw e;
    }
    return lab;
  }

  async #build(): Promise<void> {
    await this.#kernel.apply([{ kind: 'netns.add', name: this.netns }]);
    await this.#inside([
      { kind: 'link.set.up', name: 'lo' },
      { kind: 'link.add.bridge', name: BRIDGE, mac: '02:00:c0:00:02:01' },
      { kind: 'addr.add', cidr: `${UNDERLAY.etcd}/${UNDERLAY.prefix}`, dev: BRIDGE },
      { kind: 'link.set.up', name: BRIDGE },
    ]);
    this.start();
    await this.waitReady();
  }

  /** Applies ops in the etcd namespace (those without a namespace of their own, too). */
  async #inside(ops: readonly Op[]): Promise<void> {
    const r = await run(['nsenter', `--net=/run/netns/${this.netns}`, NODE, SELF, 'apply', JSON.stringify(ops)]);
    if (r.code !== 0) throw new Error(`lab: applying ${ops.map((o) => o.kind).join(', ')} in ${this.netns} failed: ${r.stderr.trim()}`);
  }

  /** Starts etcd (again, after stop(): with the same data). */
  start(): void {
    const log = openSync(join(this.dir, 'etcd.log'), 'a');
    const peer = 'http://127.0.0.1:2380'; // the namespace's own loopback: no one else's
    this.#etcd = spawn('nsenter', [`--net=/run/netns/${this.netns}`, 'etcd',
      '--name', 'lab', '--data-dir', join(this.dir, 'data'),
      '--listen-client-urls', this.url, '--advertise-client-urls', this.url,
      '--listen-peer-urls', peer, '--initial-advertise-peer-urls', peer, '--initial-cluster', `lab=${peer}`,
    ], { stdio: ['ignore', log, log] });
    closeSync(log);
  }

  /** Waits until etcd answers (etcdctl endpoint health), at most timeoutMs. */
  async waitReady(timeoutMs = 30_000): Promise<void> {
    const until = Date.now() + timeoutMs;
    while (Date.now() < until) {
      if ((await this.etcdctl(['endpoint', 'health'])).code === 0) return;
      if (this.#etcd?.exitCode !== null && this.#etcd?.exitCode !== undefined) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    throw new Error(`lab: etcd did not start: ${this.log().split('\n').slice(-5).join('\n')}`);
  }

  /** etcd's pid (nsenter execs it). */
  get pid(): number | undefined {
    return this.#etcd?.pid;
  }

  /** SIGSTOP / SIGCONT: etcd keeps its connections but answers nothing (a hung etcd). */
  pause(): void {
    this.#etcd?.kill('SIGSTOP');
  }
  resume(): void {
    this.#etcd?.kill('SIGCONT');
  }

  /** Stops etcd (SIGKILL) and waits for it to go. */
  async stop(): Promise<void> {
    const p = this.#etcd;
    if (!p || p.exitCode !== null || p.signalCode !== null) return;
    const gone = new Promise((r) => p.once('exit', r));
    p.kill('SIGCONT');
    p.kill('SIGKILL');
    await gone;
  }

  log(): string {
    try {
      return readFileSync(join(this.dir, 'etcd.log'), 'utf8');
    } catch {
      return '';
    }
  }

  /** etcdctl ARGS against this etcd, from inside its namespace. */
  etcdctl(args: readonly string[]): Promise<Result> {
    return run(['nsenter', `--net=/run/netns/${this.netns}`, 'env', 'ETCDCTL_API=3', 'etcdctl', '--endpoints', this.url, '--dial-timeout', '2s', '--command-timeout', '5s', ...args]);
  }

  /**
   * Connects a lab host's namespace to the underlay: a veth (underlay0 in the host, the next
   * address of 192.0.2.0/24), its peer a port of the bridge. The host reaches etcd at `url`.
   */
  async connect(hostNetns: string, ifname = 'underlay0'): Promise<Connected> {
    const n = this.#hosts++;
    const address = `192.0.2.${UNDERLAY.first + n}`;
    const peer = `uh${n}`;
    const host = { name: hostNetns };
    await this.#kernel.apply([
      { kind: 'link.add.veth', name: ifname, netns: host, peer, peerNetns: { name: this.netns } },
      { kind: 'addr.add', cidr: `${address}/${UNDERLAY.prefix}`, dev: ifname, netns: host },
      { kind: 'link.set.up', name: ifname, netns: host },
    ]);
    await this.#inside([{ kind: 'link.set.master', name: peer, master: BRIDGE }, { kind: 'link.set.up', name: peer }]);
    return { address, ifname };
  }

  /** Stops etcd and removes the namespace (its bridge and every veth to the hosts), data and logs. */
  async destroy(): Promise<void> {
    if (this.#destroyed) return;
    this.#destroyed = true;
    await this.stop().catch(() => {});
    netnsKillAll({ name: this.netns });
    try {
      await this.#kernel.apply([{ kind: 'netns.del', name: this.netns }]);
    } catch {
      // never made, or gone already
    }
    rmSync(this.dir, { recursive: true, force: true });
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.destroy();
  }
}

// As a script, inside the etcd namespace: `etcd.ts apply OPS_JSON` applies ops there.
if (process.argv[1] === SELF && fileURLToPath(import.meta.url) === SELF && process.argv[2] === 'apply') {
  await new ExecBackend().apply(JSON.parse(process.argv[3]!) as Op[]);
}
