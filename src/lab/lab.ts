// A lab: a throwaway "host" namespace where ctnet runs (entered with nsenter --net only) and a
// "world" namespace behind its uplink standing in for the internet. Used by every kernel test,
// the demo and the benchmarks, so nothing ever touches the machine's own network.
import { execFile, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { closeSync, mkdtempSync, openSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { DatabaseSync } from 'node:sqlite';
import { ExecBackend } from '../kernel/exec/backend.ts';
import { netnsKillAll, netnsNames } from '../kernel/netns.ts';
import type { Op } from '../plan/ops.ts';
import { ROOT } from '../root.ts';

export { ROOT };
const CTNET = join(ROOT, 'bin', 'ctnet');
const NODE = join(ROOT, 'scripts', 'node');
const NETCHECK = join(ROOT, 'src', 'lab', 'netcheck.ts');

/** Documentation addresses (RFC 5737, RFC 3849): never a real destination. */
export const UPLINK = {
  host4: '198.51.100.2', world4: '198.51.100.1', prefix4: 24,
  host6: '2001:db8:100::2', world6: '2001:db8:100::1', prefix6: 64,
  /** A "remote server" address in the world, reached through the uplink. */
  remote4: '203.0.113.10', remote6: '2001:db8:203::10',
} as const;

export interface Result {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

function run(argv: readonly string[], env: NodeJS.ProcessEnv = {}, timeoutMs = 60_000): Promise<Result> {
  return new Promise((resolve) => {
    execFile(argv[0]!, argv.slice(1), { env: { ...process.env, ...env }, timeout: timeoutMs, maxBuffer: 64 << 20 },
      (err, stdout, stderr) => {
        const code = err ? (typeof err.code === 'number' ? err.code : 1) : 0;
        resolve({ code, stdout, stderr });
      });
  });
}

export interface LabOptions {
  /** The ctnet executable that ctnet() and scriptEnv run (default: this checkout's bin/ctnet). */
  readonly ctnet?: string;
  /** The lab's id (default: random); hosts of one cluster lab share it (src/lab/cluster-lab.ts). */
  readonly id?: string;
  /** The host's name within its lab: its namespaces are ctlab-ID-NAME and ctlab-ID-NAME-world (default: host, world). */
  readonly name?: string;
}

export class Lab {
  readonly id: string;
  readonly host: string;
  readonly world: string;
  readonly stateDir: string;
  /** The ctnet executable this lab runs. */
  readonly ctnetBin: string;
  readonly #kernel = new ExecBackend();
  #destroyed = false;

  private constructor(id: string, ctnetBin: string, name: string | undefined) {
    this.id = id;
    this.ctnetBin = ctnetBin;
    this.host = `ctlab-${id}-${name ?? 'host'}`;
    this.world = name ? `ctlab-${id}-${name}-world` : `ctlab-${id}-world`;
    this.stateDir = mkdtempSync(join(tmpdir(), `ctlab-${id}-${name ? `${name}-` : ''}`));
  }

  static async create(opts: LabOptions = {}): Promise<Lab> {
    const lab = new Lab(opts.id ?? randomBytes(3).toString('hex'), opts.ctnet ?? CTNET, opts.name);
    try {
      await lab.#build();
    } catch (e) {
      await lab.destroy();
      throw e;
    }
    return lab;
  }

  async #build(): Promise<void> {
    const h = { name: this.host };
    const w = { name: this.world };
    const up = (name: string, netns: typeof h): Op => ({ kind: 'link.set.up', name, netns });
    const addr = (cidr: string, dev: string, netns: typeof h): Op => ({ kind: 'addr.add', cidr, dev, netns });
    const route = (via: string, netns: typeof h): Op => ({ kind: 'route.replace.default', via, dev: 'uplink0', netns });
    await this.#kernel.apply([{ kind: 'netns.add', name: this.host }, { kind: 'netns.add', name: this.world }]);
    await this.#kernel.apply([
      { kind: 'link.add.veth', name: 'uplink0', netns: h, peer: 'wan0', peerNetns: w },
      up('lo', h), up('uplink0', h),
      addr(`${UPLINK.host4}/${UPLINK.prefix4}`, 'uplink0', h),
      addr(`${UPLINK.host6}/${UPLINK.prefix6}`, 'uplink0', h),
      route(UPLINK.world4, h),
      route(UPLINK.world6, h),
      up('lo', w), up('wan0', w),
      addr(`${UPLINK.world4}/${UPLINK.prefix4}`, 'wan0', w),
      addr(`${UPLINK.world6}/${UPLINK.prefix6}`, 'wan0', w),
      addr(`${UPLINK.remote4}/32`, 'lo', w),
      addr(`${UPLINK.remote6}/128`, 'lo', w),
    ]);
  }

  /** Runs `ctnet ARGS` inside the lab host, with the lab's state directory. */
  ctnet(args: readonly string[], env: NodeJS.ProcessEnv = {}): Promise<Result> {
    return run(['nsenter', `--net=/run/netns/${this.host}`, this.ctnetBin, ...args], { CTNET_STATE_DIR: this.stateDir, ...env }, 120_000);
  }

  /** Like ctnet(), but throws with its stderr when it fails; returns stdout. */
  async ctnetOk(args: readonly string[], env: NodeJS.ProcessEnv = {}): Promise<string> {
    const r = await this.ctnet(args, env);
    if (r.code !== 0) throw new Error(`ctnet ${args.join(' ')} failed (${r.code}): ${r.stderr}`);
    return r.stdout;
  }

  /**
   * Starts ctnetd in the lab host, as the CNI plugin would (stderr to STATE_DIR/ctnetd.log), and
   * waits until it answers; the lab's teardown kills it with everything else in the lab host.
   */
  async startDaemon(): Promise<void> {
    const log = openSync(join(this.stateDir, 'ctnetd.log'), 'a');
    try {
      spawn('nsenter', [`--net=/run/netns/${this.host}`, this.ctnetBin, 'daemon'], {
        env: { ...process.env, CTNET_STATE_DIR: this.stateDir }, stdio: ['ignore', 'ignore', log], detached: true,
      }).unref();
    } finally {
      closeSync(log);
    }
    for (let i = 0; i < 600; i++) {
      if ((await this.ctnet(['daemon', 'status'])).code === 0) return;
      await new Promise((r) => setTimeout(r, 100));
    }
    throw new Error(`ctnetd did not start in lab ${this.id}: see ${this.stateDir}/ctnetd.log`);
  }

  /** Runs argv in the lab host's (or the world's) network namespace. */
  inHost(argv: readonly string[], env: NodeJS.ProcessEnv = {}): Promise<Result> {
    return run(['nsenter', `--net=/run/netns/${this.host}`, ...argv], env);
  }

  /** The environment that makes scripts calling $CTNET drive this lab's ctnet (examples/). */
  get scriptEnv(): NodeJS.ProcessEnv {
    return { CTNET: this.ctnetBin, CTNET_STATE_DIR: this.stateDir };
  }
  inWorld(argv: readonly string[]): Promise<Result> {
    return run(['nsenter', `--net=/run/netns/${this.world}`, ...argv]);
  }

  /**
   * Starts a netcheck server in the world namespace; it lives until the lab is destroyed. dns
   * answers every A query with UPLINK.remote4, on each IPv4 address the world has at that moment.
   */
  serveInWorld(name: string, ports: { tcp?: number; udp?: number; http?: number; dns?: number }): void {
    const args = Object.entries(ports).flatMap(([k, v]) => [`--${k}`, String(v)]);
    spawn('nsenter', [`--net=/run/netns/${this.world}`, NODE, NETCHECK, 'serve', name, ...args], { stdio: 'ignore', detached: true }).unref();
  }

  /** argv of a netcheck server, to start in a sandbox with `ctnet run -d ... -- ARGV`. */
  /** A netcheck HTTP server command line that takes its port as the last word (for SERVE=...). */
  static serveCommand(): string {
    return `${NODE} ${NETCHECK} serve - --http`;
  }

  static serverArgv(name: string, ports: { tcp?: number; udp?: number; http?: number; echo?: number }): string[] {
    return [NODE, NETCHECK, 'serve', name, ...Object.entries(ports).flatMap(([k, v]) => [`--${k}`, String(v)])];
  }

  /** argv of a netcheck probe. */
  /** argv of a netcheck UDP flow that runs until server UNTIL answers (see netcheck.ts). */
  static flowArgv(host: string, port: number, until: string, timeoutMs = 30_000): string[] {
    return [NODE, NETCHECK, 'flow', host, String(port), '--until', until, '--timeout', String(timeoutMs)];
  }

  /** argv of a netcheck TCP connection held open for ms (see netcheck.ts). */
  static holdArgv(host: string, port: number, ms: number): string[] {
    return [NODE, NETCHECK, 'hold', host, String(port), '--for', String(ms)];
  }

  /** argv of N TCP connections in a row to a netcheck tcp server: prints {servers: {NAME: count}, failed}. */
  static countArgv(host: string, port: number, n: number): string[] {
    return [NODE, NETCHECK, 'count', host, String(port), '--n', String(n)];
  }

  /**
   * argv of a load: TCP connections one after another to a netcheck tcp server until STOP exists,
   * each logged to LOG as "START_MS SERVER" ("-" for a failure); prints {servers, failed} at the end.
   */
  static loopArgv(host: string, port: number, log: string, stop: string): string[] {
    return [NODE, NETCHECK, 'loop', host, String(port), '--log', log, '--stop', stop];
  }

  static probeArgv(proto: 'tcp' | 'udp' | 'http', host: string, port: number, timeoutMs = 2000): string[] {
    return [NODE, NETCHECK, 'probe', proto, host, String(port), '--timeout', String(timeoutMs)];
  }

  /**
   * argv of a router advertisement sent three times from inside a sandbox to all nodes on IFNAME's
   * link: a default route (lifetime 1800 s) and PREFIX/64 for autoconfiguration, hop limit 255 as
   * RAs must have. PREFIX should be a documentation prefix (2001:db8::/32).
   */
  static routerAdvertArgv(prefix: string, ifname = 'eth0'): string[] {
    const script = `
import socket, struct
s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
ifi = socket.if_nametoindex(${JSON.stringify(ifname)})
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, ifi)
ra = struct.pack('!BBHBBHII', 134, 0, 0, 64, 0, 1800, 0, 0)
pfx = struct.pack('!BBBBIII', 3, 4, 64, 0xc0, 86400, 14400, 0) + socket.inet_pton(socket.AF_INET6, ${JSON.stringify(prefix)})
for _ in range(3): s.sendto(ra + pfx, ('ff02::1', 0, 0, ifi))
`;
    return ['python3', '-c', script];
  }

  /** The instance id ctnet gave this lab's state dir (marks its netns files). */
  #instance(): string | undefined {
    try {
      const db = new DatabaseSync(join(this.stateDir, 'ctnet.db'), { readOnly: true });
      try {
        return (db.prepare("SELECT value FROM meta WHERE key = 'instance'").get() as { value: string } | undefined)?.value;
      } finally {
        db.close();
      }
    } catch {
      return undefined;
    }
  }

  /** Removes everything the lab and the ctnet inside it made. Safe to call twice. */
  async destroy(): Promise<void> {
    if (this.#destroyed) return;
    this.#destroyed = true;
    const inst = this.#instance();
    const mine = netnsNames().filter((n) => (inst && n.startsWith(`ctnet-${inst}-`)) || n === this.host || n === this.world);
    for (const name of mine) netnsKillAll({ name });
    // The resolv.conf files ctnet wrote for this lab's sandboxes (ip netns exec's /etc/netns/NAME/).
    for (const name of mine) if (name.startsWith('ctnet-')) rmSync(join('/etc/netns', name), { recursive: true, force: true });
    for (const name of mine) {
      try {
        await this.#kernel.apply([{ kind: 'netns.del', name }]);
      } catch {
        // gone already
      }
    }
    rmSync(this.stateDir, { recursive: true, force: true });
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.destroy();
  }
}
