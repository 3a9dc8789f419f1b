// A podman of its own for a lab: private storage, private config, a local busybox image, and
// every podman command run inside the lab host's network namespace (nsenter --net only), so the
// bridges, veths and firewall rules the network backend makes land in the lab, never on the
// machine. Used by test/lab/podman.test.ts and bench/podman.ts. Needs root, podman, runc, conmon
// and busybox-static (scripts/install.sh); see ../shared/docs/real-cni-runtimes.md.
//
//   const pm = await Podman.create(lab, { backend: 'cni', cniPluginDirs: [bin, '/usr/lib/cni'], networkConfigDir: conf });
//   try { await pm.ok(['run', '-d', '--network', 'net', IMAGE, 'httpd', '-f', '-p', '80', '-h', '/www']); }
//   finally { await pm.cleanup(); await lab.destroy(); }   // cleanup first: podman tears down in the lab
//
// What stays private and what cannot (observed with podman 4.3.1, netavark 1.4, runc 1.1.5):
// - storage (vfs driver: no overlay mounts), libpod's database, locks (lock_type "file" instead of
//   /dev/shm/libpod_lock), events, exit files and temp files live in this harness's temp dir;
// - network configs live in networkConfigDir (default: the temp dir);
// - `podman import` writes a blob-info cache to /var/lib/containers/cache whatever the config says,
//   so the one import runs in a private mount namespace with a tmpfs over /var/lib;
// - rootful podman keeps these machine-wide paths whatever the config says: each container's netns
//   at /run/netns/netns-UUID, runc's state in /run/runc/ID, the CNI backend's result cache in
//   /var/lib/cni/results, netavark's IPAM database in /run/containers/networks/ipam.db, the dnsname
//   plugin's dnsmasq files in /run/containers/cni/dnsname/NETWORK (gone with the network's last
//   container), and `podman pod create` (building the pause image) writes the blob-info cache. The
//   entries go with each container; cleanup() sweeps what a failed run left and removes those
//   directories (and the database and cache files) again when podman made them for us.
import { execFile } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmdirSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Lab, Result } from '../../src/lab/lab.ts';
import { isNetnsFile, netnsKillAll, netnsNames } from '../../src/kernel/netns.ts';
import { BUSYBOX, busyboxRootfs, INDEX_HTML, tarOf, type RootfsOptions } from './images.ts';

/** The image every harness imports: busybox (sh, httpd, wget, nc, ip, sleep, true), /www/index.html says hello. */
export const IMAGE = 'localhost/busybox';
export { INDEX_HTML };
export const REFERENCE_PLUGINS = '/usr/lib/cni';
const NETAVARK = '/usr/lib/podman/netavark';

export type Backend = 'cni' | 'netavark';

export interface PodmanOptions {
  /** podman's network backend (default 'cni'). */
  readonly backend?: Backend;
  /** cni_plugin_dirs: where the CNI backend looks for plugin binaries, first match wins (default [/usr/lib/cni]). */
  readonly cniPluginDirs?: readonly string[];
  /** network_config_dir: CNI *.conflist files, or netavark's NAME.json (default: a dir in the harness's temp dir). */
  readonly networkConfigDir?: string;
  /** The name the busybox image is imported as (default IMAGE). */
  readonly image?: string;
  /** More files in the image (see busyboxRootfs). */
  readonly imageFiles?: RootfsOptions['files'];
}

/**
 * Throws, naming what is missing and how to get it, unless podman and what it needs here are
 * installed. Tests call it (through create()) so that a machine without podman fails loudly
 * instead of skipping.
 */
export function requirePodman(backend: Backend = 'cni'): void {
  const need: [string, string][] = [['podman', '/usr/bin/podman'], ['runc', '/usr/sbin/runc'], ['conmon', '/usr/bin/conmon'], ['busybox-static', BUSYBOX]];
  if (backend === 'netavark') need.push(['netavark', NETAVARK]);
  if (backend === 'cni') need.push(['containernetworking-plugins', join(REFERENCE_PLUGINS, 'bridge')]);
  const missing = need.filter(([, path]) => !existsSync(path)).map(([pkg, path]) => `${pkg} (${path})`);
  if (missing.length > 0) {
    throw new Error(`podman tests need ${missing.join(', ')}: not installed. Run scripts/install.sh (as root) first.`);
  }
}

/**
 * A conflist of the reference plugins: bridge (gateway, masquerade, hairpin) with host-local IPAM
 * keeping its leases in dataDir (not /var/lib/cni/networks), then portmap for `podman run -p`.
 */
export function referenceConflist(o: { name: string; subnet: string; bridge: string; dataDir: string }): object {
  return {
    cniVersion: '1.0.0',
    name: o.name,
    plugins: [
      {
        type: 'bridge', bridge: o.bridge, isGateway: true, ipMasq: true, hairpinMode: true,
        ipam: { type: 'host-local', ranges: [[{ subnet: o.subnet }]], routes: [{ dst: '0.0.0.0/0' }], dataDir: o.dataDir },
      },
      // snat (the default) is what makes 127.0.0.1:HOSTPORT work: it masquerades connections from
      // 127.0.0.1 and sets route_localnet on the bridge.
      { type: 'portmap', capabilities: { portMappings: true }, snat: true },
    ],
  };
}

function run(argv: readonly string[], env: NodeJS.ProcessEnv, timeoutMs: number): Promise<Result> {
  return new Promise((resolve) => {
    execFile(argv[0]!, argv.slice(1), { env: { ...process.env, ...env }, timeout: timeoutMs, maxBuffer: 64 << 20 },
      (err, stdout, stderr) => {
        const code = err ? (typeof err.code === 'number' ? err.code : 1) : 0;
        resolve({ code, stdout, stderr: err && err.killed ? `${stderr}\n(killed after ${timeoutMs} ms)` : stderr });
      });
  });
}

const toml = (s: string): string => JSON.stringify(s); // a TOML basic string is a JSON string for these paths

// ---------------------------------------------------------------------------------------------
// Machine-wide paths rootful podman uses whatever its config says (see the header). The first
// harness of this process notes which exist; when the last one is cleaned up, those that did not
// exist are removed again if empty (rmdir only: another podman's entries are never touched).

const SHARED_DIRS = ['/run/runc', '/var/lib/cni/results', '/var/lib/cni', '/run/containers/networks',
  '/run/containers/cni/dnsname', '/run/containers/cni', '/run/containers', '/var/lib/containers/cache', '/var/lib/containers'];
const NETAVARK_DB = '/run/containers/networks/ipam.db';
/** containers/image's blob-info cache: `podman pod create` writes it when it builds the pause image. */
const BLOB_INFO_CACHE = '/var/lib/containers/cache/blob-info-cache-v1.boltdb';
let live = 0;
let existedBefore = new Set<string>();

function noteSharedDirs(): void {
  if (live++ === 0) existedBefore = new Set(SHARED_DIRS.filter((d) => existsSync(d)));
}

function sweepSharedDirs(): void {
  if (--live > 0) return;
  // netavark never deletes its database. Ours only if podman made its directory for us and no
  // podman container namespace (ours are gone by now: anyone else's) exists on the machine.
  if (!existedBefore.has('/run/containers/networks') && !netnsNames().some((n) => n.startsWith('netns-'))) {
    rmSync(NETAVARK_DB, { force: true });
  }
  if (!existedBefore.has('/var/lib/containers/cache')) rmSync(BLOB_INFO_CACHE, { force: true });
  for (const d of SHARED_DIRS) {
    if (existedBefore.has(d)) continue;
    try {
      rmdirSync(d);
    } catch {
      // not empty (someone else's entries) or gone
    }
  }
}

/** Mount points at or below dir, deepest first (from /proc/self/mountinfo; \040 etc. decoded). */
function mountsUnder(dir: string): string[] {
  const unescape = (s: string) => s.replace(/\\([0-7]{3})/g, (_m, o: string) => String.fromCharCode(parseInt(o, 8)));
  return readFileSync('/proc/self/mountinfo', 'utf8').split('\n')
    .map((l) => unescape(l.split(' ')[4] ?? ''))
    .filter((m) => m === dir || m.startsWith(`${dir}/`))
    .sort((a, b) => b.length - a.length);
}

export class Podman {
  readonly lab: Lab;
  readonly backend: Backend;
  /** The harness's temp dir: storage, config, podman's tmp_dir, the image's rootfs. */
  readonly dir: string;
  readonly networkConfigDir: string;
  readonly cniPluginDirs: readonly string[];
  /** CONTAINERS_CONF, CONTAINERS_STORAGE_CONF and TMPDIR: what makes a `podman` this harness's. */
  readonly env: Readonly<Record<string, string>>;
  /** Every container netns path podman reported, so cleanup() can sweep one a failed rm left. */
  readonly #netns = new Set<string>();
  #cleaned = false;

  private constructor(lab: Lab, opts: PodmanOptions) {
    this.lab = lab;
    this.backend = opts.backend ?? 'cni';
    this.dir = mkdtempSync(join(tmpdir(), `ctpodman-${lab.id}-`));
    this.networkConfigDir = opts.networkConfigDir ?? join(this.dir, 'networks');
    this.cniPluginDirs = opts.cniPluginDirs ?? [REFERENCE_PLUGINS];
    this.env = {
      CONTAINERS_CONF: join(this.dir, 'containers.conf'),
      CONTAINERS_STORAGE_CONF: join(this.dir, 'storage.conf'),
      TMPDIR: join(this.dir, 'tmp'),
    };
  }

  /** A harness with its image imported. On failure it removes what it made and rethrows. */
  static async create(lab: Lab, opts: PodmanOptions = {}): Promise<Podman> {
    requirePodman(opts.backend ?? 'cni');
    const pm = new Podman(lab, opts);
    noteSharedDirs();
    try {
      pm.#writeConfig();
      await pm.#importImage(opts.image ?? IMAGE, opts.imageFiles);
    } catch (e) {
      await pm.cleanup().catch(() => {});
      throw e;
    }
    return pm;
  }

  #writeConfig(): void {
    const d = this.dir;
    for (const sub of ['graph', 'run', 'tmp', 'libpod']) mkdirSync(join(d, sub));
    mkdirSync(this.networkConfigDir, { recursive: true });
    writeFileSync(this.env.CONTAINERS_STORAGE_CONF!, [
      '[storage]',
      'driver = "vfs"', // plain directories: no overlay mounts to undo, and the image is 2 MB
      `graphroot = ${toml(join(d, 'graph'))}`,
      `runroot = ${toml(join(d, 'run'))}`,
      '',
    ].join('\n'));
    writeFileSync(this.env.CONTAINERS_CONF!, [
      '[containers]',
      'default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]  # no CAP_SYS_RESOURCE on these VMs',
      '[network]',
      `network_backend = ${toml(this.backend)}`,
      `cni_plugin_dirs = [${this.cniPluginDirs.map(toml).join(', ')}]`,
      `network_config_dir = ${toml(this.networkConfigDir)}`,
      '[engine]',
      'cgroup_manager = "cgroupfs"  # no systemd',
      'events_logger = "file"       # no journald',
      'runtime = "runc"             # crun refuses this cgroup layout',
      'lock_type = "file"           # not the machine-wide /dev/shm/libpod_lock',
      `tmp_dir = ${toml(join(d, 'libpod'))}`,
      `image_copy_tmp_dir = ${toml(join(d, 'tmp'))}`,
      '',
    ].join('\n'));
  }

  /** Builds the busybox rootfs and imports it once (~0.2 s). */
  async #importImage(image: string, files: RootfsOptions['files']): Promise<void> {
    const root = join(this.dir, 'rootfs');
    await busyboxRootfs(root, { files });
    const tar = join(this.dir, 'rootfs.tar');
    await tarOf(root, tar);
    // A private mount namespace whose /var/lib is an empty tmpfs keeps the blob-info cache that
    // `podman import` insists on writing (/var/lib/containers/cache) off the machine.
    // mount -n: no /run/mount/utab either.
    const r = await run(['unshare', '--mount', '--propagation', 'private', '--', 'sh', '-c',
      'mount -n -t tmpfs -o size=8m,mode=0700 ctpodman /var/lib && exec "$@"', 'sh',
      ...this.#argv(['import', '--change', 'CMD ["/bin/sh"]', tar, image])], this.env, 60_000);
    if (r.code !== 0) throw new Error(`podman import failed (${r.code}): ${r.stderr.trim()}`);
    rmSync(root, { recursive: true, force: true });
    rmSync(tar, { force: true });
  }

  #argv(args: readonly string[], netns = `/run/netns/${this.lab.host}`): string[] {
    return ['nsenter', `--net=${netns}`, 'podman', ...args];
  }

  /** argv of `podman ARGS` in the lab host; run it with env (what benchmarks time themselves). */
  argv(args: readonly string[]): string[] {
    return this.#argv(args);
  }

  /** `podman ARGS` in the lab host, with this harness's config and storage. Never rejects. */
  podman(args: readonly string[], timeoutMs = 120_000): Promise<Result> {
    return run(this.#argv(args), this.env, timeoutMs);
  }

  /** Like podman(), but a failure throws with podman's stderr; returns stdout. */
  async ok(args: readonly string[], timeoutMs?: number): Promise<string> {
    const r = await this.podman(args, timeoutMs);
    if (r.code !== 0) throw new Error(`podman ${args.join(' ')} failed (${r.code}): ${r.stderr.trim()}`);
    return r.stdout;
  }

  /** The container's network namespace file (/run/netns/netns-UUID), or '' with --network none/host. */
  async netnsOf(container: string): Promise<string> {
    const path = (await this.ok(['inspect', '--format', '{{.NetworkSettings.SandboxKey}}', container])).trim();
    if (path) this.#netns.add(path);
    return path;
  }

  /** The container's IPv4 address on a network. */
  async ipOf(container: string, network: string): Promise<string> {
    const out = await this.ok(['inspect', '--format', `{{with index .NetworkSettings.Networks ${JSON.stringify(network)}}}{{.IPAddress}}{{end}}`, container]);
    const ip = out.trim();
    if (!ip) throw new Error(`container ${container} has no address on ${network}`);
    return ip;
  }

  /** netavark only: a bridge network with a fixed subnet and no DNS (aardvark-dns is not installed). */
  async createNetwork(name: string, subnet: string): Promise<void> {
    await this.ok(['network', 'create', '--disable-dns', '--subnet', subnet, name]);
  }

  /** Writes NAME.conflist into the network config dir (the CNI backend reads it on every command). */
  writeConflist(name: string, conflist: object): string {
    const path = join(this.networkConfigDir, `${name}.conflist`);
    writeFileSync(path, JSON.stringify(conflist, null, 2));
    return path;
  }

  /** Retries probe every 100 ms until it returns true or timeoutMs passes; returns the last answer. */
  static async until(probe: () => Promise<boolean>, timeoutMs = 10_000): Promise<boolean> {
    const end = Date.now() + timeoutMs;
    for (;;) {
      if (await probe()) return true;
      if (Date.now() >= end) return false;
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  /**
   * Removes every container (tearing its network down through the backend, in the lab host), the
   * storage, the config and the temp dir; then sweeps what a failed removal left: runc state,
   * container processes, netns files, mounts under the temp dir. Call it before lab.destroy(): if
   * the lab host is gone already, podman runs in a scratch namespace instead, so a teardown never
   * touches the machine. Safe to call twice; throws, after doing all it can, if something stayed.
   */
  async cleanup(): Promise<void> {
    if (this.#cleaned) return;
    this.#cleaned = true;
    const problems: string[] = [];
    let scratch: string | undefined;
    try {
      let netns = `/run/netns/${this.lab.host}`;
      if (!isNetnsFile(netns)) {
        scratch = `ctpodman-${this.lab.id}-${process.pid}`;
        const r = await run(['ip', 'netns', 'add', scratch], {}, 10_000);
        netns = r.code === 0 ? `/run/netns/${scratch}` : '';
      }
      const podman = (args: readonly string[]) => (netns ? run(this.#argv(args, netns), this.env, 120_000) : Promise.resolve({ code: 1, stdout: '', stderr: 'no namespace to run podman in' }));
      const ids = existsSync(join(this.dir, 'graph', 'libpod'))
        ? (await podman(['ps', '-a', '-q', '--no-trunc'])).stdout.split('\n').filter(Boolean)
        : [];
      if (ids.length > 0) {
        const keys = await podman(['inspect', '--format', '{{.NetworkSettings.SandboxKey}}', ...ids]);
        for (const k of keys.stdout.split('\n')) if (k.trim()) this.#netns.add(k.trim());
        const rm = await podman(['rm', '--all', '--force', '--time', '0']);
        if (rm.code !== 0) problems.push(`podman rm --all --force: ${rm.stderr.trim()}`);
      }
      // What podman could not remove: its runc containers, their processes, their netns files.
      for (const id of ids) {
        if (!existsSync(join('/run/runc', id))) continue;
        problems.push(`runc container ${id.slice(0, 12)} survived podman rm`);
        await run(['runc', 'kill', id, 'KILL'], {}, 10_000);
        await run(['runc', 'delete', '--force', id], {}, 10_000);
      }
      for (const path of this.#netns) {
        if (!existsSync(path)) continue;
        if (isNetnsFile(path)) {
          problems.push(`netns ${path} survived podman rm`);
          netnsKillAll({ path });
          await run(['umount', path], {}, 10_000);
        }
        try {
          unlinkSync(path);
        } catch {
          // gone
        }
      }
    } finally {
      if (scratch) {
        netnsKillAll({ name: scratch });
        await run(['ip', 'netns', 'del', scratch], {}, 10_000);
      }
      // With vfs the only mounts are each container's /dev/shm tmpfs (userdata/shm): gone with
      // the container, but a failed rm leaves them, and rm -rf cannot pass a mount point.
      for (const m of mountsUnder(this.dir)) await run(['umount', '-l', m], {}, 10_000);
      rmSync(this.dir, { recursive: true, force: true });
      sweepSharedDirs();
    }
    if (problems.length > 0) throw new Error(`podman cleanup had to sweep up after podman:\n  ${problems.join('\n  ')}`);
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.cleanup();
  }
}
