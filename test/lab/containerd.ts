// A containerd of its own for a lab (Debian's containerd 1.6; its CRI plugin is compiled in): every
// path in a temp dir (root, state, sockets, opt, runc's state, the pods' netns files), the daemon
// and its shims inside the lab host's network namespace (nsenter --net only), and the CRI plugin's
// CNI config pointing at the directories a test fills (ctnet's conflist and plugin only, plus the
// loopback plugin containerd always runs for `lo`). Used by test/lab/cri.test.ts and ctr.test.ts.
//
//   const ctd = await Containerd.start(lab, { cniBinDir, cniConfDir, sandboxImage });
//   try { ... ctd.cri ... await ctd.ctr(['run', ...]) ... } finally { await ctd.stop(); await lab.destroy(); }
//
// What it cannot keep private (containerd 1.6.20, runc 1.1.5): each shim's socket in
// /run/containerd/s (the shim removes it when it exits), ctr's /run/containerd/fifo for commands
// other than `run` (which gets --fifo-dir), and the cgroups runc makes for containers,
// /sys/fs/cgroup/*/NAMESPACE/ID for the CRI's pods (namespace k8s.io; runc removes the ID level).
// stop() removes those directories again when they did not exist before and are empty.
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, openSync, closeSync, readdirSync, readFileSync, rmdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Lab, Result } from '../../src/lab/lab.ts';
import { CriClient } from './cri.ts';

export interface ContainerdOptions {
  /** The CRI plugin's CNI bin_dir and conf_dir (max_conf_num 1: the first conflist by name). */
  readonly cniBinDir: string;
  readonly cniConfDir: string;
  /** The pause image every pod runs (the CRI plugin pulls it itself). */
  readonly sandboxImage: string;
}

export interface CtrOptions {
  /** containerd namespace (default ctnet-test). */
  readonly ns?: string;
  /** For `ctr run --cni`: the directories ctr must see as /etc/cni/net.d and /opt/cni/bin. */
  readonly cni?: { readonly confDir: string; readonly binDir: string };
  readonly timeoutMs?: number;
}

function run(argv: readonly string[], timeoutMs = 60_000): Promise<Result> {
  return new Promise((resolve) => {
    execFile(argv[0]!, argv.slice(1), { timeout: timeoutMs, maxBuffer: 64 << 20 }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === 'number' ? err.code : 1) : 0;
      resolve({ code, stdout, stderr: err && err.killed ? `${stderr}\n(killed after ${timeoutMs} ms)` : stderr });
    });
  });
}

const toml = (s: string): string => JSON.stringify(s);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Mount points at or below dir, deepest first (from /proc/self/mountinfo). */
export function mountsUnder(dir: string): string[] {
  const unescape = (s: string) => s.replace(/\\([0-7]{3})/g, (_m, o: string) => String.fromCharCode(parseInt(o, 8)));
  return readFileSync('/proc/self/mountinfo', 'utf8').split('\n')
    .map((l) => unescape(l.split(' ')[4] ?? ''))
    .filter((m) => m === dir || m.startsWith(`${dir}/`))
    .sort((a, b) => b.length - a.length);
}

/** PIDs whose command line contains every one of words. */
function pidsWith(words: readonly string[]): number[] {
  const pids: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry) || Number(entry) === process.pid) continue;
    try {
      const argv = readFileSync(`/proc/${entry}/cmdline`, 'utf8').split('\0');
      if (words.every((w) => argv.includes(w))) pids.push(Number(entry));
    } catch {
      // exited while we looked
    }
  }
  return pids;
}

/** Directories outside the temp dir that containerd and runc may create (see the header). */
function sharedDirs(namespaces: readonly string[]): string[] {
  let controllers: string[] = [];
  try {
    controllers = readdirSync('/sys/fs/cgroup').map((c) => join('/sys/fs/cgroup', c));
  } catch {
    // no cgroup fs
  }
  return [...namespaces.flatMap((ns) => controllers.map((c) => join(c, ns))), '/run/containerd/s', '/run/containerd/fifo', '/run/containerd'];
}

export class Containerd {
  readonly lab: Lab;
  /** The temp dir holding everything of this containerd. */
  readonly dir: string;
  readonly socket: string;
  /** runc's state for the CRI's containers and for ctr's (ctr() passes --runc-root). */
  readonly runcRoot: string;
  readonly cri: CriClient;
  /** The namespaces whose cgroup directories stop() may remove ('k8s.io' is the CRI's). */
  readonly #namespaces = new Set(['k8s.io']);
  #existedBefore = new Set<string>();
  #daemon: ChildProcess | undefined;
  #stopped = false;

  private constructor(lab: Lab) {
    this.lab = lab;
    this.dir = mkdtempSync(join(tmpdir(), `ctcontainerd-${lab.id}-`));
    this.socket = join(this.dir, 'containerd.sock');
    this.runcRoot = join(this.dir, 'runc');
    this.cri = new CriClient(this.socket);
  }

  /** Starts the daemon in the lab host and waits until it answers. On failure it cleans up and rethrows. */
  static async start(lab: Lab, o: ContainerdOptions): Promise<Containerd> {
    for (const [what, path] of [['containerd', '/usr/bin/containerd'], ['containerd (ctr)', '/usr/bin/ctr'], ['runc', '/usr/sbin/runc']]) {
      if (!existsSync(path!)) throw new Error(`containerd tests need ${what} (${path}): not installed. Run scripts/install.sh (as root) first.`);
    }
    const c = new Containerd(lab);
    c.#existedBefore = new Set(sharedDirs(['k8s.io', 'ctnet-test']).filter((d) => existsSync(d)));
    try {
      c.#writeConfig(o);
      await c.#startDaemon();
    } catch (e) {
      await c.stop().catch(() => {});
      throw e;
    }
    return c;
  }

  #writeConfig(o: ContainerdOptions): void {
    const d = this.dir;
    const cri = 'plugins."io.containerd.grpc.v1.cri"';
    writeFileSync(join(d, 'config.toml'), [
      'version = 2',
      `root = ${toml(join(d, 'root'))}`,
      `state = ${toml(join(d, 'state'))}`,
      // Snapshotters this machine cannot use, and tracing: only noise in the log.
      'disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]',
      '[grpc]',
      `  address = ${toml(this.socket)}`,
      '[ttrpc]',
      `  address = ${toml(`${this.socket}.ttrpc`)}`,
      '[plugins."io.containerd.internal.v1.opt"]',
      `  path = ${toml(join(d, 'opt'))}`,
      `[${cri}]`,
      `  sandbox_image = ${toml(o.sandboxImage)}`,
      '  netns_mounts_under_state_dir = true   # the pods\' netns files in the state dir, not /run/netns',
      '  restrict_oom_score_adj = true         # a pod\'s -998 needs CAP_SYS_RESOURCE, which these VMs lack',
      '  stream_server_address = "127.0.0.1"',
      `[${cri}.cni]`,
      `  bin_dir = ${toml(o.cniBinDir)}`,
      `  conf_dir = ${toml(o.cniConfDir)}`,
      '  max_conf_num = 1',
      `[${cri}.containerd]`,
      '  snapshotter = "native"                # plain copies: no overlay mounts to undo',
      '  default_runtime_name = "runc"',
      `[${cri}.containerd.runtimes.runc]`,
      '  runtime_type = "io.containerd.runc.v2"',
      `[${cri}.containerd.runtimes.runc.options]`,
      `  Root = ${toml(this.runcRoot)}`,
      '  SystemdCgroup = false                 # no systemd here',
      '',
    ].join('\n'));
  }

  async #startDaemon(): Promise<void> {
    const log = openSync(join(this.dir, 'containerd.log'), 'a');
    try {
      this.#daemon = spawn('nsenter', [`--net=/run/netns/${this.lab.host}`, 'containerd', '--config', join(this.dir, 'config.toml')],
        { stdio: ['ignore', log, log], detached: true });
    } finally {
      closeSync(log);
    }
    this.#daemon.unref();
    const end = Date.now() + 30_000;
    for (;;) {
      if (this.#daemon.exitCode !== null) throw new Error(`containerd exited (${this.#daemon.exitCode}) at start: ${this.log().slice(-2000)}`);
      if (existsSync(this.socket) && (await this.ctr(['version'])).code === 0) return;
      if (Date.now() > end) throw new Error(`containerd did not answer on ${this.socket} within 30 s: ${this.log().slice(-2000)}`);
      await sleep(100);
    }
  }

  /** containerd's log so far. */
  log(): string {
    try {
      return readFileSync(join(this.dir, 'containerd.log'), 'utf8');
    } catch {
      return '';
    }
  }

  /**
   * `ctr ARGS` against this containerd, in the lab host, in namespace o.ns (default ctnet-test),
   * with the native snapshotter. `run` gets --runc-root and --fifo-dir, so runc's state and the
   * task's IO fifos stay in the temp dir.
   * With o.cni, ctr runs in a private mount namespace where o.cni.confDir is /etc/cni/net.d and
   * o.cni.binDir is /opt/cni/bin: `ctr run --cni` reads its CNI config only from there, and it is
   * ctr itself (not containerd) that execs the plugin.
   */
  ctr(args: readonly string[], o: CtrOptions = {}): Promise<Result> {
    const ns = o.ns ?? 'ctnet-test';
    this.#namespaces.add(ns);
    const a = args[0] === 'run' ? ['run', '--runc-root', this.runcRoot, '--fifo-dir', join(this.dir, 'fifo'), ...args.slice(1)] : args;
    const ctr = ['env', 'CONTAINERD_SNAPSHOTTER=native', 'ctr', '--address', this.socket, '--namespace', ns, ...a];
    const argv = o.cni
      ? ['unshare', '--mount', '--propagation', 'private', '--', 'sh', '-ec',
        // mount -n: no /run/mount/utab entries. A tmpfs over /opt (only in this mount namespace)
        // gives /opt/cni/bin a place to be without creating it on the machine.
        'mount -n --bind "$1" /etc/cni/net.d; mount -n -t tmpfs -o size=1m,mode=0755 ctnet-ctr /opt; mkdir -p /opt/cni/bin; mount -n --bind "$2" /opt/cni/bin; shift 2; exec "$@"',
        'sh', o.cni.confDir, o.cni.binDir, ...ctr]
      : ctr;
    return run(['nsenter', `--net=/run/netns/${this.lab.host}`, ...argv], o.timeoutMs ?? 120_000);
  }

  /** Like ctr(), but throws with ctr's stderr on failure; returns stdout. */
  async ctrOk(args: readonly string[], o: CtrOptions = {}): Promise<string> {
    const r = await this.ctr(args, o);
    if (r.code !== 0) throw new Error(`ctr ${args.join(' ')} failed (${r.code}): ${r.stderr.trim()}`);
    return r.stdout;
  }

  /**
   * Stops every pod (through the CRI, so the CNI plugin gets its DELs) and every ctr task, stops
   * containerd, then sweeps what survived: shims, runc containers, mounts, the temp dir, and the
   * shared directories it made. Call it before lab.destroy(). Safe to call twice; throws, after
   * doing all it can, naming what it had to sweep.
   */
  async stop(): Promise<void> {
    if (this.#stopped) return;
    this.#stopped = true;
    const problems: string[] = [];
    try {
      if (this.#daemon && this.#daemon.exitCode === null) {
        try {
          for (const id of await this.cri.listPodSandboxes()) {
            await this.cri.stopPodSandbox(id).catch((e: Error) => problems.push(`StopPodSandbox ${id.slice(0, 12)}: ${e.message}`));
            await this.cri.removePodSandbox(id).catch((e: Error) => problems.push(`RemovePodSandbox ${id.slice(0, 12)}: ${e.message}`));
          }
        } catch (e) {
          problems.push(`ListPodSandbox: ${(e as Error).message}`);
        }
        for (const ns of this.#namespaces) {
          if (ns === 'k8s.io') continue;
          for (const id of (await this.ctr(['tasks', 'ls', '-q'], { ns })).stdout.split('\n').filter(Boolean)) {
            await this.ctr(['tasks', 'kill', '-s', 'SIGKILL', id], { ns });
            await this.ctr(['tasks', 'delete', '--force', id], { ns });
          }
          for (const id of (await this.ctr(['containers', 'ls', '-q'], { ns })).stdout.split('\n').filter(Boolean)) {
            await this.ctr(['containers', 'delete', id], { ns });
          }
        }
        this.cri.close();
        await this.#terminate();
      }
      // What containerd did not take down: shims (they outlive the daemon by design), runc
      // containers, their processes.
      for (const pid of pidsWith(['-address', this.socket])) {
        problems.push(`shim ${pid} outlived containerd`);
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          // gone
        }
      }
      if (existsSync(this.runcRoot)) {
        for (const id of (await run(['runc', '--root', this.runcRoot, 'list', '-q'])).stdout.split('\n').filter(Boolean)) {
          problems.push(`runc container ${id.slice(0, 12)} outlived containerd`);
          await run(['runc', '--root', this.runcRoot, 'kill', id, 'KILL']);
          await run(['runc', '--root', this.runcRoot, 'delete', '--force', id]);
        }
      }
    } finally {
      for (const m of mountsUnder(this.dir)) {
        const r = await run(['umount', m]);
        if (r.code !== 0) await run(['umount', '-l', m]);
      }
      rmSync(this.dir, { recursive: true, force: true });
      for (const d of sharedDirs([...this.#namespaces])) {
        if (this.#existedBefore.has(d)) continue;
        try {
          rmdirSync(d); // empty only: another containerd's entries are never touched
        } catch {
          // not empty, or not there
        }
      }
    }
    if (problems.length > 0) throw new Error(`containerd cleanup had to sweep up:\n  ${problems.join('\n  ')}`);
  }

  async #terminate(): Promise<void> {
    const d = this.#daemon!;
    const exited = new Promise<void>((r) => (d.exitCode !== null ? r() : d.once('exit', () => r())));
    d.kill('SIGTERM');
    const timer = setTimeout(() => d.kill('SIGKILL'), 15_000);
    await exited;
    clearTimeout(timer);
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.stop();
  }
}
