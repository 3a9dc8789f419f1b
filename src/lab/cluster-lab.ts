// A multi-host lab: an underlay namespace holding a bridge (the hosts' shared LAN), and N lab hosts
// (each a Lab: its own namespace, state directory, uplink and world) joined to that bridge by a veth
// with an address on the underlay. Used by the overlay tests and bench/overlay.ts. Everything lives
// in namespaces named ctlab-ID-*, made here and removed here; nothing touches the machine's network.
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { ExecBackend } from '../kernel/exec/backend.ts';
import { netnsKillAll } from '../kernel/netns.ts';
import type { Op } from '../plan/ops.ts';
import { Lab, ROOT, type Result } from './lab.ts';

/** The underlay: TEST-NET-1 (RFC 5737), never a real destination. Host i (from 1) is .1i. */
export const UNDERLAY = { prefix: 24, bridge: 'ul0', dev: 'under0', mtu: 1500, address: (i: number) => `192.0.2.${10 + i}` } as const;

export interface ClusterHost {
  readonly name: string;
  readonly lab: Lab;
  /** Its underlay address, the interface that has it (in the host's namespace), and its MTU. */
  readonly underlay: { readonly ip: string; readonly dev: string; readonly mtu: number };
}

/** A namespace on the underlay that is no lab host (an intruder, a hand-built VTEP for a benchmark). */
export interface UnderlayNode {
  readonly netns: string;
  readonly ip: string;
  readonly dev: string;
}

function run(argv: readonly string[]): Promise<Result> {
  return new Promise((resolve) => {
    execFile(argv[0]!, argv.slice(1), { timeout: 60_000, maxBuffer: 64 << 20 }, (err, stdout, stderr) => {
      resolve({ code: err ? (typeof err.code === 'number' ? err.code : 1) : 0, stdout, stderr });
    });
  });
}

async function runOk(argv: readonly string[]): Promise<string> {
  const r = await run(argv);
  if (r.code !== 0) throw new Error(`${argv.join(' ')} failed (${r.code}): ${r.stderr.trim()}`);
  return r.stdout;
}

export class ClusterLab {
  readonly id: string;
  /** The underlay's namespace (its bridge joins every host). */
  readonly underlay: string;
  readonly hosts: ClusterHost[] = [];
  readonly nodes: UnderlayNode[] = [];
  /** Every namespace added besides the hosts' (nodes and others), removed with the lab. */
  readonly #extra: string[] = [];
  readonly #kernel = new ExecBackend();
  #ports = 0;
  #destroyed = false;

  private constructor(id: string) {
    this.id = id;
    this.underlay = `ctlab-${id}-underlay`;
  }

  /** Hosts h1..hN on one underlay. */
  static async create(opts: { hosts: number }): Promise<ClusterLab> {
    const c = new ClusterLab(randomBytes(3).toString('hex'));
    try {
      await c.#kernel.apply([{ kind: 'netns.add', name: c.underlay }]);
      await runOk(['ip', '-n', c.underlay, 'link', 'add', UNDERLAY.bridge, 'type', 'bridge']);
      await runOk(['ip', '-n', c.underlay, 'link', 'set', UNDERLAY.bridge, 'up']);
      for (let i = 1; i <= opts.hosts; i++) {
        const name = `h${i}`;
        const lab = await Lab.create({ id: c.id, name });
        c.hosts.push({ name, lab, underlay: { ip: UNDERLAY.address(i), dev: UNDERLAY.dev, mtu: UNDERLAY.mtu } });
        await c.#plug(lab.host, UNDERLAY.address(i));
      }
    } catch (e) {
      await c.destroy();
      throw e;
    }
    return c;
  }

  host(name: string): ClusterHost {
    const h = this.hosts.find((x) => x.name === name);
    if (!h) throw new Error(`the cluster lab has no host ${name}`);
    return h;
  }

  /** Adds an empty namespace ctlab-ID-NAME (lo up), removed with the lab; returns its name. */
  async addNetns(name: string): Promise<string> {
    const netns = `ctlab-${this.id}-${name}`;
    await this.#kernel.apply([{ kind: 'netns.add', name: netns }]);
    this.#extra.push(netns);
    await this.#kernel.apply([{ kind: 'link.set.up', name: 'lo', netns: { name: netns } }]);
    return netns;
  }

  /** Adds a bare namespace on the underlay at ip (e.g. 192.0.2.99); removed with the lab. */
  async addNode(name: string, ip: string): Promise<UnderlayNode> {
    const netns = await this.addNetns(name);
    const node = { netns, ip, dev: UNDERLAY.dev };
    this.nodes.push(node);
    await this.#plug(netns, ip);
    return node;
  }

  /** Joins a namespace to the underlay bridge by a veth (under0 inside it) with ip/24. */
  async #plug(netns: string, ip: string): Promise<void> {
    const ns = { name: netns };
    const port = `p${this.#ports++}`; // the bridge's end, in the underlay namespace
    const ops: Op[] = [
      { kind: 'link.add.veth', name: UNDERLAY.dev, netns: ns, peer: port, peerNetns: { name: this.underlay }, mtu: UNDERLAY.mtu },
      { kind: 'addr.add', cidr: `${ip}/${UNDERLAY.prefix}`, dev: UNDERLAY.dev, netns: ns },
      { kind: 'link.set.up', name: UNDERLAY.dev, netns: ns },
    ];
    await this.#kernel.apply(ops);
    await runOk(['ip', '-n', this.underlay, 'link', 'set', port, 'master', UNDERLAY.bridge, 'up']);
  }

  /** Runs argv in a namespace of this lab (a host's, a node's or the underlay's). */
  in(netns: string, argv: readonly string[]): Promise<Result> {
    return run(['nsenter', `--net=/run/netns/${netns}`, ...argv]);
  }

  /** Removes every host (with what its ctnet made), node and the underlay. Safe to call twice. */
  async destroy(): Promise<void> {
    if (this.#destroyed) return;
    this.#destroyed = true;
    for (const h of this.hosts) await h.lab.destroy();
    for (const name of [...this.#extra, this.underlay]) {
      netnsKillAll({ name });
      try {
        await this.#kernel.apply([{ kind: 'netns.del', name }]);
      } catch {
        // gone already (or never made)
      }
    }
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.destroy();
  }
}

const AGENT = join(ROOT, 'src', 'lab', 'overlay-agent.ts');
const NODE = join(ROOT, 'scripts', 'node');

/**
 * Runs src/lab/overlay-agent.ts in a host (what the control plane will do from ctnetd): create an
 * overlay network, program its peers, read their status. Throws with its stderr when it fails.
 */
export async function overlayAgent<T = unknown>(h: ClusterHost, args: readonly string[]): Promise<T> {
  const { NODE_EXTRA_CA_CERTS: _, ...env } = process.env; // ~75 ms per start, and no TLS here
  const r = await new Promise<Result>((resolve) => {
    execFile('nsenter', [`--net=/run/netns/${h.lab.host}`, NODE, AGENT, ...args], { env: { ...env, CTNET_STATE_DIR: h.lab.stateDir }, timeout: 120_000 },
      (err, stdout, stderr) => resolve({ code: err ? (typeof err.code === 'number' ? err.code : 1) : 0, stdout, stderr }));
  });
  if (r.code !== 0) throw new Error(`overlay-agent ${args.slice(0, 2).join(' ')} on ${h.name} failed (${r.code}): ${r.stderr.trim()}`);
  return JSON.parse(r.stdout) as T;
}
