// ctnet's state: one SQLite file per state directory (node:sqlite, WAL, busy timeout). Every write
// happens in one BEGIN IMMEDIATE transaction, so concurrent ctnet processes serialise here.
import { createHash, randomBytes } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { DatabaseSync, type StatementSync } from 'node:sqlite';
import { CtnetError } from '../errors.ts';
import { processToken } from '../kernel/proc.ts';
import { FEED_NOW, FEED_TRIGGERS, META_TRIGGERS } from './events.ts';
import { MIGRATIONS, SCHEMA, SCHEMA_VERSION } from './schema.ts';
import type { PortMapping, Proto } from '../model/ports.ts';
import type { Shape } from '../model/shape.ts';
import type { Box } from '../model/policy.ts';
import type { ServiceCheck, ServicePublish } from '../model/service.ts';

/** creating: intent recorded, kernel not yet done; ready: done; removing: teardown started. */
export type State = 'creating' | 'ready' | 'removing';

export interface NetworkRow {
  readonly name: string;
  readonly bridge: string;
  readonly internal: boolean;
  /** Sandboxes on it may not talk to each other unless a policy allows it. */
  readonly isolate: boolean;
  /** Its sandboxes may reach every service of the host (else only ICMP and published ports). */
  readonly hostAccess: boolean;
  readonly mtu: number | null;
  /** The network driver that made it (src/drivers/). */
  readonly driver: string;
  /** The MAC of its device, as made; null for networks made before ctnet kept it. */
  readonly mac: string | null;
  /** ctnetd answers DNS on its gateways (services/dns/). */
  readonly dns: boolean;
  /** Upstream resolvers for other names (addresses); empty: the host's. */
  readonly dnsForward: readonly string[];
  readonly state: State;
  readonly owner: string | null;
  readonly created: string;
  /** A macvlan or ipvlan network's parent, mode and host shim; absent for the other drivers. */
  readonly lower?: LowerDevice | undefined;
}

export interface LowerDevice {
  readonly kind: 'macvlan' | 'ipvlan';
  /** The host interface whose segment the sandboxes join. */
  readonly parent: string;
  /** macvlan: bridge, private, vepa; ipvlan: l2, l3. */
  readonly mode: string;
  /** The host's own macvlan/ipvlan on the parent (the network's device), with this address. */
  readonly shimIp: string | null;
}
/** A sandbox's extra name on one network (schema 17). */
export interface AliasRow {
  readonly sandbox: string;
  readonly network: string;
  readonly alias: string;
}
/** An overlay network's side on this host (schema 8). */
export interface OverlayRow {
  readonly network: string;
  readonly vni: number;
  readonly port: number;
  /** The VXLAN device. */
  readonly device: string;
  readonly vtepMac: string;
  /** The overlay's whole subnet (this host's lease is the network's subnet). */
  readonly cidr: string;
  readonly underlayIp: string;
  readonly underlayDev: string;
}
/** A remote host this host has programmed for an overlay network. */
export interface PeerRow {
  readonly network: string;
  readonly host: string;
  readonly subnet: string;
  readonly underlay: string;
  readonly vtepMac: string;
}
export interface SubnetRow {
  readonly network: string;
  readonly cidr: string;
  readonly family: 4 | 6;
  readonly gateway: string;
  readonly cursor: string | null;
}
export interface SandboxRow {
  readonly name: string;
  /** The netns file: /run/netns/NAME for sandboxes ctnet made, any path for attached ones. */
  readonly netns: string;
  /** ctnet created the namespace (and removes it); false for a namespace made by someone else. */
  readonly owned: boolean;
  readonly state: State;
  readonly owner: string | null;
  readonly created: string;
}
export interface AttachmentRow {
  readonly sandbox: string;
  readonly network: string;
  readonly ifname: string;
  readonly hostVeth: string;
  readonly mac: string;
  readonly state: State;
  readonly owner: string | null;
}
export interface AddressRow {
  readonly ip: string;
  readonly family: 4 | 6;
  readonly cidr: string;
  readonly network: string;
  readonly sandbox: string;
}
export interface PortRow extends PortMapping {
  readonly sandbox: string;
}
export type ServiceState = 'creating' | 'ready' | 'removing';

export interface ServiceRow {
  readonly name: string;
  readonly network: string;
  readonly vip: string;
  /** The subnet the VIP was taken from. */
  readonly cidr: string;
  /** Its IPv6 VIP, on a dual-stack network (schema 24). */
  readonly vip6?: string | undefined;
  readonly proto: 'tcp' | 'udp';
  readonly port: number;
  readonly selector: { readonly key: string; readonly value: string };
  readonly targetPort: number;
  readonly affinity: 'none' | 'client-ip';
  /** The backend addresses the kernel holds for it now (sorted). */
  readonly backends: readonly string[];
  /** `--publish`: the host address and port the world reaches it on (schema 20). */
  readonly publish?: ServicePublish | undefined;
  /** `--check`: ctnetd probes the backends (schema 21). */
  readonly check?: ServiceCheck | undefined;
  /** The selected backends the checks took out (sorted); not in `backends`. */
  readonly unready?: readonly string[] | undefined;
  /**
   * The host that owns it, for a service on an overlay network mirrored from etcd (schema 23);
   * absent: this host's own.
   */
  readonly ownerHost?: string | undefined;
  /** 'creating' while `service create` makes its chain, 'removing' while `service rm` runs (schema 25); owner: that process. */
  readonly state?: ServiceState | undefined;
  readonly owner?: string | null | undefined;
  readonly created: string;
}

/** A box of a policy set and its rule (compiled: the owner; raw: the rule that covers it). */
export interface PolicyBoxRow {
  readonly rule: number;
  readonly box: Box;
}
export interface PolicyElementRow extends PolicyBoxRow {
  /** nft's text of the element. */
  readonly element: string;
}
/** The policy index whole: by set name, the elements with their boxes, and every rule's boxes. */
export interface PolicyState {
  readonly compiled: ReadonlyMap<string, readonly PolicyElementRow[]>;
  readonly raw: ReadonlyMap<string, readonly PolicyBoxRow[]>;
}

export interface PolicyRow {
  readonly id: number;
  readonly name: string;
  readonly action: 'allow' | 'deny';
  readonly from: string;
  readonly to: string;
  readonly port: string | null;
  readonly created: string;
}
export interface ProcessRow {
  readonly sandbox: string;
  readonly pid: number;
  readonly command: string;
}

export interface CniRow {
  readonly containerId: string;
  readonly ifname: string;
  /** The CNI network name (the config's "name"). */
  readonly cniNetwork: string;
  readonly sandbox: string;
  readonly network: string;
  readonly created: string;
}

/** This host's membership of a cluster (src/cluster/): one row at most. */
export interface MemberRow {
  readonly host: string;
  /** etcd client URLs, as parsed (parseEndpoints). */
  readonly endpoints: readonly string[];
  readonly underlay: string;
  readonly vtepMac: string;
  /** Seconds: the TTL of the host's etcd lease. */
  readonly leaseTtl: number;
  /** The etcd lease last granted (null before the first). */
  readonly leaseId: string | null;
  /** leaving: `cluster leave` is under way, ctnetd must not register the host again. */
  readonly state: 'ready' | 'leaving';
  readonly joined: string;
}

/** The subnet this host leased (or last leased) in an overlay network. */
export interface ClusterLeaseRow {
  readonly network: string;
  readonly subnet: string;
  readonly claimed: string;
}

/** Another host's sandbox, mirrored from the cluster's directory in etcd (schema 10). */
/** An egress address: of a network or of a sandbox (name), for one family. */
export interface EgressRow {
  readonly name: string;
  readonly family: 4 | 6;
  readonly ip: string;
}
const egressRow = (r: Row): EgressRow => ({ name: r.name as string, family: r.family as 4 | 6, ip: r.ip as string });

export interface RemoteSandboxRow {
  readonly host: string;
  readonly name: string;
  /** Its addresses on overlay networks. */
  readonly addresses: readonly string[];
  readonly labels: Readonly<Record<string, string>>;
  /** The overlay networks it is attached to. */
  readonly networks: readonly string[];
  /** Its aliases, by overlay network (DNS answers them on this host too). */
  readonly aliases: Readonly<Record<string, readonly string[]>>;
}

export type OwnedKind = 'network' | 'sandbox' | 'policy' | 'service';

/** An object a topology file made: its kind and name, the file's `name:` and the file's path. */
export interface OwnedRow {
  readonly kind: OwnedKind;
  readonly name: string;
  readonly topology: string;
  readonly file: string;
}

/** A sandbox's supervised command (a topology file's `command:`) and its process token, if started. */
export interface CommandRow {
  readonly sandbox: string;
  readonly argv: readonly string[];
  readonly process: string | null;
}

export const DEFAULT_STATE_DIR = '/var/lib/ctnet';

type Row = Record<string, unknown>;

const TRIGGERS_HASH = createHash('sha256').update(FEED_TRIGGERS).digest('hex').slice(0, 16);

export class Store {
  readonly db: DatabaseSync;
  readonly dir: string;
  /** Random per state directory: marks the netns files this ctnet owns. */
  readonly instance: string;

  readonly #busyTimeoutMs: number;
  readonly #onWait: ((message: string) => void) | undefined;

  /**
   * busyTimeoutMs: how long a write waits for another process's transaction (default 60 s).
   * onWait: told once when a write has waited a second (so a person knows why nothing happens).
   */
  constructor(dir: string, options: { busyTimeoutMs?: number; onWait?: (message: string) => void } = {}) {
    this.dir = dir;
    this.#busyTimeoutMs = options.busyTimeoutMs ?? 60_000;
    this.#onWait = options.onWait;
    try {
      mkdirSync(dir, { recursive: true, mode: 0o700 });
      this.db = new DatabaseSync(join(dir, 'ctnet.db'), { timeout: this.#busyTimeoutMs });
    } catch (e) {
      throw new CtnetError('ENVIRONMENT', `cannot open the state database in ${dir}: ${(e as Error).message}`,
        'run ctnet as root, or choose another directory with --state-dir', { cause: e });
    }
    try {
      this.db.exec('PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;');
    } catch (e) {
      this.db.close();
      throw storeError(e, dir);
    }
    this.instance = this.#migrate();
    this.#feed = {
      head: this.db.prepare('SELECT coalesce(max(id), 0) AS id FROM events'),
      stamp: this.db.prepare(`UPDATE events SET at = ${FEED_NOW} WHERE id > ?`),
    };
  }

  /** A setting of this state directory (meta table); undefined when unset. */
  meta(key: string): string | undefined {
    return this.#get('SELECT value FROM meta WHERE key = ?', key)?.value as string | undefined;
  }
  setMeta(key: string, value: string | null): void {
    if (value === null) this.#run('DELETE FROM meta WHERE key = ?', key);
    else this.#run('INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value', key, value);
  }

  close(): void {
    if (this.db.isOpen) this.db.close();
  }

  #migrate(): string {
    return this.write(() => {
      const version = (this.db.prepare('PRAGMA user_version').get() as Row).user_version as number;
      if (version === 0) {
        this.db.exec(SCHEMA);
        this.db.prepare('INSERT INTO meta(key, value) VALUES (?, ?)').run('instance', randomBytes(2).toString('hex'));
      }
      if (version < SCHEMA_VERSION) {
        for (let v = Math.max(version, 1) + 1; v <= SCHEMA_VERSION; v++) this.db.exec(MIGRATIONS[v]!);
        this.db.exec(`PRAGMA user_version = ${SCHEMA_VERSION}`);
      } else if (version > SCHEMA_VERSION) {
        throw new CtnetError('STATE', `the state in ${this.dir} was written by a newer ctnet (schema ${version})`, 'upgrade ctnet');
      }
      this.#installFeedTriggers();
      return (this.db.prepare("SELECT value FROM meta WHERE key = 'instance'").get() as Row).value as string;
    });
  }

  /**
   * The change feed's triggers are code (src/store/events.ts), not history: they follow the recorded
   * columns, so they are (re)installed whenever their text differs from what this store holds, in
   * the opening transaction. Schema 5's migration only creates the events table.
   */
  #installFeedTriggers(): void {
    const installed = this.db.prepare('SELECT value FROM meta WHERE key = ?').get(META_TRIGGERS) as Row | undefined;
    if (installed?.value === TRIGGERS_HASH) return;
    const old = this.db.prepare("SELECT name FROM sqlite_schema WHERE type = 'trigger' AND name LIKE 'feed\\_%' ESCAPE '\\'").all() as Row[];
    for (const r of old) this.db.exec(`DROP TRIGGER "${r.name as string}"`);
    this.db.exec(FEED_TRIGGERS);
    this.db.prepare('INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value').run(META_TRIGGERS, TRIGGERS_HASH);
  }

  /**
   * Runs fn in one write transaction (BEGIN IMMEDIATE takes the write lock up front, so read-then-
   * write decisions such as address choice cannot race). With rollback, nothing is kept (dry runs).
   */
  write<T>(fn: () => T, options: { rollback?: boolean } = {}): T {
    this.#begin();
    try {
      const mark = this.#feedMark();
      const result = fn();
      this.#end(mark, options.rollback);
      return result;
    } catch (e) {
      if (this.db.isTransaction) this.db.exec('ROLLBACK');
      throw storeError(e, this.dir);
    }
  }

  /**
   * BEGIN IMMEDIATE: waits its turn behind other ctnet processes' writes. After a second it says it
   * is waiting, then waits out the rest of the busy timeout; a lock held longer is a clear error.
   */
  #begin(): void {
    const first = Math.min(1000, this.#busyTimeoutMs);
    this.db.exec(`PRAGMA busy_timeout = ${first}`);
    try {
      this.db.exec('BEGIN IMMEDIATE');
      return;
    } catch (e) {
      if (!isBusy(e) || first >= this.#busyTimeoutMs) throw storeError(e, this.dir);
    } finally {
      this.db.exec(`PRAGMA busy_timeout = ${this.#busyTimeoutMs}`);
    }
    this.#onWait?.(`waiting for another ctnet operation on ${this.dir} to finish`);
    this.db.exec(`PRAGMA busy_timeout = ${this.#busyTimeoutMs - first}`);
    try {
      this.db.exec('BEGIN IMMEDIATE');
    } catch (e) {
      throw storeError(e, this.dir);
    } finally {
      this.db.exec(`PRAGMA busy_timeout = ${this.#busyTimeoutMs}`);
    }
  }

  /** The feed's statements, once #migrate made the events table. */
  #feed: { head: StatementSync; stamp: StatementSync } | undefined;

  /** The newest event id when a write transaction begins. */
  #feedMark(): number {
    return this.#feed ? (this.#feed.head.get() as Row).id as number : 0;
  }

  /**
   * Commits (or rolls back). The transaction's events get the commit's time, not their
   * statements': a transaction holding the lock across kernel work (writeAsync) becomes visible
   * only at its commit, and a reader's latency is measured from there.
   */
  #end(mark: number, rollback: boolean | undefined): void {
    if (rollback) return void this.db.exec('ROLLBACK');
    this.#feed?.stamp.run(mark);
    this.db.exec('COMMIT');
  }

  // ---- networks ----
  networks(): NetworkRow[] {
    return this.#all('SELECT * FROM networks ORDER BY name').map(toNetwork);
  }
  network(name: string): NetworkRow | undefined {
    const r = this.#get('SELECT * FROM networks WHERE name = ?', name);
    return r && toNetwork(r);
  }
  networkByBridge(bridge: string): NetworkRow | undefined {
    const r = this.#get('SELECT * FROM networks WHERE bridge = ?', bridge);
    return r && toNetwork(r);
  }
  insertNetwork(n: Omit<NetworkRow, 'created' | 'owner'>, subnets: readonly Omit<SubnetRow, 'network' | 'cursor'>[]): void {
    this.#run('INSERT INTO networks(name, bridge, internal, isolate, host_access, mtu, driver, mac, dns, dns_forward, state, owner, created, lower) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)',
      n.name, n.bridge, n.internal ? 1 : 0, n.isolate ? 1 : 0, n.hostAccess ? 1 : 0, n.mtu, n.driver, n.mac, n.dns ? 1 : 0,
      n.dnsForward.length ? n.dnsForward.join(',') : null, n.state, processToken(), new Date().toISOString(), n.lower ? JSON.stringify(n.lower) : null);
    for (const s of subnets) {
      this.#run('INSERT INTO subnets(network, cidr, family, gateway) VALUES (?, ?, ?, ?)', n.name, s.cidr, s.family, s.gateway);
    }
  }
  setNetworkState(name: string, state: State): void {
    this.#run('UPDATE networks SET state = ?, owner = ? WHERE name = ?', state, ownerFor(state), name);
  }
  setNetworkMtu(name: string, mtu: number | null): void {
    this.#run('UPDATE networks SET mtu = ? WHERE name = ?', mtu, name);
  }
  setNetworkMac(name: string, mac: string): void {
    this.#run('UPDATE networks SET mac = ? WHERE name = ?', mac, name);
  }
  deleteNetwork(name: string): void {
    this.#run("DELETE FROM topology_objects WHERE kind = 'network' AND name = ?", name);
    this.#run('DELETE FROM networks WHERE name = ?', name);
  }
  subnets(network?: string): SubnetRow[] {
    const rows = network === undefined
      ? this.#all('SELECT * FROM subnets ORDER BY network, family, cidr')
      : this.#all('SELECT * FROM subnets WHERE network = ? ORDER BY family, cidr', network);
    return rows.map((r) => ({
      network: r.network as string, cidr: r.cidr as string, family: r.family as 4 | 6,
      gateway: r.gateway as string, cursor: (r.cursor as string | null) ?? null,
    }));
  }
  setCursor(network: string, cidr: string, ip: string | null): void {
    this.#run('UPDATE subnets SET cursor = ? WHERE network = ? AND cidr = ?', ip, network, cidr);
  }

  // ---- overlays ----
  overlays(): OverlayRow[] {
    return this.#all('SELECT * FROM overlays ORDER BY network').map(toOverlay);
  }
  overlay(network: string): OverlayRow | undefined {
    const r = this.#get('SELECT * FROM overlays WHERE network = ?', network);
    return r && toOverlay(r);
  }
  insertOverlay(o: OverlayRow): void {
    this.#run('INSERT INTO overlays(network, vni, port, device, vtep_mac, cidr, underlay_ip, underlay_dev) VALUES (?, ?, ?, ?, ?, ?, ?, ?)',
      o.network, o.vni, o.port, o.device, o.vtepMac, o.cidr, o.underlayIp, o.underlayDev);
  }
  peers(network?: string): PeerRow[] {
    const rows = network === undefined
      ? this.#all('SELECT * FROM overlay_peers ORDER BY network, host')
      : this.#all('SELECT * FROM overlay_peers WHERE network = ? ORDER BY host', network);
    return rows.map((r) => ({ network: r.network as string, host: r.host as string, subnet: r.subnet as string, underlay: r.underlay as string, vtepMac: r.vtep_mac as string }));
  }
  setPeer(p: PeerRow): void {
    this.#run(`INSERT INTO overlay_peers(network, host, subnet, underlay, vtep_mac) VALUES (?, ?, ?, ?, ?)
      ON CONFLICT (network, host) DO UPDATE SET subnet = excluded.subnet, underlay = excluded.underlay, vtep_mac = excluded.vtep_mac`,
    p.network, p.host, p.subnet, p.underlay, p.vtepMac);
  }
  deletePeer(network: string, host: string): void {
    this.#run('DELETE FROM overlay_peers WHERE network = ? AND host = ?', network, host);
  }

  // ---- sandboxes ----
  sandboxes(): SandboxRow[] {
    return this.#all('SELECT * FROM sandboxes ORDER BY name').map(toSandbox);
  }
  sandbox(name: string): SandboxRow | undefined {
    const r = this.#get('SELECT * FROM sandboxes WHERE name = ?', name);
    return r && toSandbox(r);
  }
  insertSandbox(s: Omit<SandboxRow, 'created' | 'owner'>): void {
    this.#run('INSERT INTO sandboxes(name, netns, owned, state, owner, created) VALUES (?, ?, ?, ?, ?, ?)',
      s.name, s.netns, s.owned ? 1 : 0, s.state, processToken(), new Date().toISOString());
  }
  setSandboxState(name: string, state: State): void {
    this.#run('UPDATE sandboxes SET state = ?, owner = ? WHERE name = ?', state, ownerFor(state), name);
  }
  deleteSandbox(name: string): void {
    this.#run("DELETE FROM topology_objects WHERE kind = 'sandbox' AND name = ?", name);
    this.#run('DELETE FROM sandboxes WHERE name = ?', name);
  }

  // ---- attachments ----
  attachments(filter: { sandbox?: string; network?: string } = {}): AttachmentRow[] {
    const rows = filter.sandbox !== undefined
      ? this.#all('SELECT * FROM attachments WHERE sandbox = ? ORDER BY ifname', filter.sandbox)
      : filter.network !== undefined
        ? this.#all('SELECT * FROM attachments WHERE network = ? ORDER BY sandbox', filter.network)
        : this.#all('SELECT * FROM attachments ORDER BY sandbox, ifname');
    return rows.map((r) => ({
      sandbox: r.sandbox as string, network: r.network as string, ifname: r.ifname as string,
      hostVeth: r.host_veth as string, mac: r.mac as string, state: r.state as State,
      owner: (r.owner as string | null) ?? null,
    }));
  }
  insertAttachment(a: Omit<AttachmentRow, 'owner'>): void {
    this.#run('INSERT INTO attachments(sandbox, network, ifname, host_veth, mac, state, owner) VALUES (?, ?, ?, ?, ?, ?, ?)',
      a.sandbox, a.network, a.ifname, a.hostVeth, a.mac, a.state, processToken());
  }
  setAttachmentState(sandbox: string, network: string, state: State): void {
    this.#run('UPDATE attachments SET state = ?, owner = ? WHERE sandbox = ? AND network = ?', state, ownerFor(state), sandbox, network);
  }
  /** Deletes the attachment and (by cascade) releases its addresses. */
  deleteAttachment(sandbox: string, network: string): void {
    this.#run('DELETE FROM attachments WHERE sandbox = ? AND network = ?', sandbox, network);
  }
  // ---- shaping (src/model/shape.ts) ----
  /** The shaping recorded for one attachment, or undefined when it is not shaped. */
  shaping(sandbox: string, network: string): Shape | undefined {
    const r = this.#get('SELECT * FROM shaping WHERE sandbox = ? AND network = ?', sandbox, network);
    if (!r) return undefined;
    const n = (k: string) => (r[k] === null || r[k] === undefined ? undefined : (r[k] as number));
    return { rateIn: n('rate_in'), rateOut: n('rate_out'), burstIn: n('burst_in'), burstOut: n('burst_out'), latencyMs: n('latency_ms'), lossPct: n('loss_pct') };
  }
  setShaping(sandbox: string, network: string, s: Shape): void {
    const v = (x: number | undefined) => x ?? null;
    this.#run(`INSERT INTO shaping(sandbox, network, rate_in, rate_out, burst_in, burst_out, latency_ms, loss_pct) VALUES (?, ?, ?, ?, ?, ?, ?, ?)
      ON CONFLICT (sandbox, network) DO UPDATE SET rate_in = excluded.rate_in, rate_out = excluded.rate_out, burst_in = excluded.burst_in,
      burst_out = excluded.burst_out, latency_ms = excluded.latency_ms, loss_pct = excluded.loss_pct`,
    sandbox, network, v(s.rateIn), v(s.rateOut), v(s.burstIn), v(s.burstOut), v(s.latencyMs), v(s.lossPct));
  }
  deleteShaping(sandbox: string, network: string): void {
    this.#run('DELETE FROM shaping WHERE sandbox = ? AND network = ?', sandbox, network);
  }

  hostVethTaken(name: string): boolean {
    return this.#get('SELECT 1 AS x FROM attachments WHERE host_veth = ?', name) !== undefined;
  }

  // ---- addresses ----
  addresses(filter: { sandbox?: string; network?: string } = {}): AddressRow[] {
    const rows = filter.sandbox !== undefined
      ? this.#all('SELECT * FROM addresses WHERE sandbox = ? ORDER BY network, family, ip', filter.sandbox)
      : filter.network !== undefined
        ? this.#all('SELECT * FROM addresses WHERE network = ? ORDER BY sandbox, family', filter.network)
        : this.#all('SELECT * FROM addresses ORDER BY network, sandbox, family');
    return rows.map((r) => ({
      ip: r.ip as string, family: r.family as 4 | 6, cidr: r.cidr as string,
      network: r.network as string, sandbox: r.sandbox as string,
    }));
  }
  addressHolder(ip: string): string | undefined {
    return this.#get('SELECT sandbox FROM addresses WHERE ip = ?', ip)?.sandbox as string | undefined;
  }
  insertAddress(a: AddressRow): void {
    this.#run('INSERT INTO addresses(ip, family, cidr, network, sandbox) VALUES (?, ?, ?, ?, ?)',
      a.ip, a.family, a.cidr, a.network, a.sandbox);
  }

  // ---- published ports ----
  ports(filter: { sandbox?: string; proto?: Proto } = {}): PortRow[] {
    const rows = filter.sandbox !== undefined
      ? this.#all('SELECT * FROM ports WHERE sandbox = ? ORDER BY proto, host_port, host_ip', filter.sandbox)
      : filter.proto !== undefined
        ? this.#all('SELECT * FROM ports WHERE proto = ? ORDER BY host_port, host_ip', filter.proto)
        : this.#all('SELECT * FROM ports ORDER BY sandbox, proto, host_port, host_ip');
    return rows.map((r) => ({
      sandbox: r.sandbox as string, proto: r.proto as Proto, hostIp: r.host_ip as string,
      hostPort: r.host_port as number, containerPort: r.container_port as number, count: r.count as number,
    }));
  }
  insertPort(p: PortRow): void {
    this.#run('INSERT INTO ports(sandbox, proto, host_ip, host_port, container_port, count) VALUES (?, ?, ?, ?, ?, ?)',
      p.sandbox, p.proto, p.hostIp, p.hostPort, p.containerPort, p.count);
  }
  deletePort(p: PortRow): void {
    this.#run('DELETE FROM ports WHERE sandbox = ? AND proto = ? AND host_ip = ? AND host_port = ?', p.sandbox, p.proto, p.hostIp, p.hostPort);
  }

  // ---- services (schema 18) ----
  services(filter: { network?: string } = {}): ServiceRow[] {
    const rows = filter.network === undefined
      ? this.#all('SELECT * FROM services ORDER BY name')
      : this.#all('SELECT * FROM services WHERE network = ? ORDER BY name', filter.network);
    return rows.map(toService);
  }
  service(name: string): ServiceRow | undefined {
    const r = this.#get('SELECT * FROM services WHERE name = ?', name);
    return r && toService(r);
  }
  /** The service whose VIP this is, if any (ipam's holder test). */
  serviceByVip(ip: string): string | undefined {
    return this.#get('SELECT name FROM services WHERE vip = ? OR vip6 = ?', ip, ip)?.name as string | undefined;
  }
  insertService(r: Omit<ServiceRow, 'created'>): void {
    this.#run(`INSERT INTO services(name, network, vip, cidr, proto, port, selector_key, selector_value, target_port, affinity, backends, created,
      publish_ip, publish_port, check_kind, check_path, check_interval_ms, unready, owner_host, vip6, state, owner) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`, r.name, r.network, r.vip, r.cidr, r.proto, r.port, r.selector.key, r.selector.value,
    r.targetPort, r.affinity, JSON.stringify(r.backends), new Date().toISOString(), r.publish?.hostIp ?? null, r.publish?.hostPort ?? null,
    r.check?.kind ?? null, r.check?.kind === 'http' ? r.check.path : null, r.check?.intervalMs ?? null, JSON.stringify(r.unready ?? []), r.ownerHost ?? null, r.vip6 ?? null,
    r.state ?? 'ready', (r.state ?? 'ready') === 'ready' ? null : r.owner ?? ownerFor(r.state!));
  }
  deleteService(name: string): void {
    this.#run('DELETE FROM services WHERE name = ?', name);
    this.#run("DELETE FROM topology_objects WHERE kind = 'service' AND name = ?", name);
  }
  setServiceUnready(name: string, unready: readonly string[]): void {
    this.#run('UPDATE services SET unready = ? WHERE name = ?', JSON.stringify(unready), name);
  }
  setServiceState(name: string, state: ServiceState): void {
    this.#run('UPDATE services SET state = ?, owner = ? WHERE name = ?', state, ownerFor(state), name);
  }
  setServiceBackends(name: string, backends: readonly string[]): void {
    this.#run('UPDATE services SET backends = ? WHERE name = ?', JSON.stringify(backends), name);
  }

  // ---- labels ----
  labels(sandbox?: string): { sandbox: string; key: string; value: string }[] {
    const rows = sandbox === undefined
      ? this.#all('SELECT * FROM labels ORDER BY sandbox, key')
      : this.#all('SELECT * FROM labels WHERE sandbox = ? ORDER BY key', sandbox);
    return rows.map((r) => ({ sandbox: r.sandbox as string, key: r.key as string, value: r.value as string }));
  }
  setLabel(sandbox: string, key: string, value: string): void {
    this.#run('INSERT INTO labels(sandbox, key, value) VALUES (?, ?, ?) ON CONFLICT (sandbox, key) DO UPDATE SET value = excluded.value', sandbox, key, value);
  }
  deleteLabel(sandbox: string, key: string): void {
    this.#run('DELETE FROM labels WHERE sandbox = ? AND key = ?', sandbox, key);
  }

  // ---- egress addresses and default-route choices (schema 11) ----
  /** The egress addresses of a network (or every network's), by family. */
  networkEgress(network?: string): EgressRow[] {
    const rows = network === undefined
      ? this.#all('SELECT network AS name, family, ip FROM network_egress ORDER BY network, family')
      : this.#all('SELECT network AS name, family, ip FROM network_egress WHERE network = ? ORDER BY family', network);
    return rows.map(egressRow);
  }
  sandboxEgress(sandbox?: string): EgressRow[] {
    const rows = sandbox === undefined
      ? this.#all('SELECT sandbox AS name, family, ip FROM sandbox_egress ORDER BY sandbox, family')
      : this.#all('SELECT sandbox AS name, family, ip FROM sandbox_egress WHERE sandbox = ? ORDER BY family', sandbox);
    return rows.map(egressRow);
  }
  setEgress(scope: 'network' | 'sandbox', name: string, family: 4 | 6, ip: string | null): void {
    const table = scope === 'network' ? 'network_egress' : 'sandbox_egress';
    if (ip === null) this.#run(`DELETE FROM ${table} WHERE ${scope} = ? AND family = ?`, name, family);
    else this.#run(`INSERT INTO ${table}(${scope}, family, ip) VALUES (?, ?, ?) ON CONFLICT (${scope}, family) DO UPDATE SET ip = excluded.ip`, name, family, ip);
  }
  /** The network a sandbox chose to carry its default routes, if it chose one. */
  defaultRoute(sandbox: string): string | undefined {
    return this.#get('SELECT network FROM default_routes WHERE sandbox = ?', sandbox)?.network as string | undefined;
  }
  setDefaultRoute(sandbox: string, network: string | null): void {
    if (network === null) this.#run('DELETE FROM default_routes WHERE sandbox = ?', sandbox);
    else this.#run('INSERT INTO default_routes(sandbox, network) VALUES (?, ?) ON CONFLICT (sandbox) DO UPDATE SET network = excluded.network', sandbox, network);
  }

  // ---- the policy sets as last applied to the kernel ----
  policyMirror(): Map<string, Set<string>> {
    return new Map([...this.policyMirrorLists()].map(([set, elements]) => [set, new Set(elements)]));
  }
  /**
   * The mirror's elements by set, as lists. One string per set from SQLite (an element never holds a
   * newline): 10,000 elements read as row objects cost several times more, and ctnetd's table guard
   * reads them after every quiet spell of changes.
   */
  policyMirrorLists(): Map<string, string[]> {
    return new Map(this.#all("SELECT set_name, group_concat(element, char(10)) AS elements FROM policy_elements GROUP BY set_name")
      .map((r) => [r.set_name as string, (r.elements as string).split('\n')]));
  }
  /** How many elements each policy set of the mirror holds (set name -> count), without reading them. */
  policyMirrorCounts(): Map<string, number> {
    return new Map(this.#all('SELECT set_name, count(*) AS n FROM policy_elements GROUP BY set_name').map((r) => [r.set_name as string, r.n as number]));
  }
  /** Elements only, without their boxes: the index is incomplete, and the next change compiles every rule. */
  setPolicyMirror(sets: ReadonlyMap<string, readonly string[]>): void {
    this.#run('DELETE FROM policy_elements');
    this.#run('DELETE FROM policy_raw');
    this.setMeta(POLICY_INDEX_META, null);
    const insert = this.#prepared('INSERT OR IGNORE INTO policy_elements(set_name, element) VALUES (?, ?)');
    for (const [name, elements] of sets) for (const e of elements) insert.run(name, e);
  }

  // ---- the policy index (schema 12): boxes by set, owner and source range ----
  /** Both policy tables were written whole and kept since: incremental changes may use them. */
  policyIndexReady(): boolean {
    return this.meta(POLICY_INDEX_META) === '1';
  }
  /** Replaces the policy sets' mirror and every rule's boxes (a full compile). */
  setPolicyState(state: PolicyState): void {
    this.#run('DELETE FROM policy_elements');
    this.#run('DELETE FROM policy_raw');
    // Many rows per statement: a 10,000-rule file writes tens of thousands of boxes, and one
    // statement per row was a third of `policy apply`'s time.
    const elements = [...state.compiled].flatMap(([set, rows]) => rows.map((r) => [set, r.element, r.rule, ...boxParams(r.box)]));
    this.#insertMany('INSERT OR REPLACE INTO policy_elements(set_name, element, rule, ' + BOX_COLUMNS + ') VALUES', 12, elements);
    const raw = [...state.raw].flatMap(([set, rows]) => rows.map((r) => [set, r.rule, ...boxParams(r.box)]));
    this.#insertMany('INSERT INTO policy_raw(set_name, rule, ' + BOX_COLUMNS + ') VALUES', 11, raw);
    this.setMeta(POLICY_INDEX_META, '1');
  }
  /** Inserts rows CHUNK at a time (SQLite allows 32,766 parameters per statement). */
  #insertMany(head: string, columns: number, rows: readonly (string | number | null)[][]): void {
    const CHUNK = 200;
    const tuple = `(${Array(columns).fill('?').join(', ')})`;
    for (let i = 0; i < rows.length; i += CHUNK) {
      const part = rows.slice(i, i + CHUNK);
      this.#prepared(`${head} ${Array(part.length).fill(tuple).join(', ')}`).run(...part.flat());
    }
  }
  /** The whole index (to undo a full rewrite); undefined while it is incomplete. */
  policyState(): PolicyState | undefined {
    if (!this.policyIndexReady()) return undefined;
    const compiled = new Map<string, PolicyElementRow[]>();
    for (const r of this.#all('SELECT * FROM policy_elements ORDER BY rowid')) {
      const list = compiled.get(r.set_name as string) ?? [];
      list.push({ element: r.element as string, ...toBoxRow(r) });
      compiled.set(r.set_name as string, list);
    }
    const raw = new Map<string, PolicyBoxRow[]>();
    for (const r of this.#all('SELECT * FROM policy_raw ORDER BY rowid')) {
      const list = raw.get(r.set_name as string) ?? [];
      list.push(toBoxRow(r));
      raw.set(r.set_name as string, list);
    }
    return { compiled, raw };
  }
  insertPolicyElement(set: string, element: string, r: PolicyBoxRow): void {
    this.#prepared(`INSERT OR REPLACE INTO policy_elements(set_name, element, rule, ${BOX_COLUMNS}) VALUES (?, ?, ?, ${BOX_PARAMS})`)
      .run(set, element, r.rule, ...boxParams(r.box));
  }
  deletePolicyElement(set: string, element: string): void {
    this.#run('DELETE FROM policy_elements WHERE set_name = ? AND element = ?', set, element);
  }
  insertPolicyRaw(set: string, r: PolicyBoxRow): void {
    this.#prepared(`INSERT INTO policy_raw(set_name, rule, ${BOX_COLUMNS}) VALUES (?, ?, ${BOX_PARAMS})`).run(set, r.rule, ...boxParams(r.box));
  }
  /**
   * A rule's raw boxes in one set whose source or destination range holds one of the addresses
   * (see ruleBoxesTouching). Through the rule's index: one pass over its rows in SQLite, instead
   * of every row made into a box here.
   */
  policyRawTouching(set: string, rule: number, points: readonly bigint[]): PolicyBoxRow[] {
    const out: PolicyBoxRow[] = [];
    for (const n of points) {
      const x = hex(n);
      for (const r of this.#all('SELECT * FROM policy_raw INDEXED BY policy_raw_by_rule WHERE rule = ? AND set_name = ? AND ((s0 <= ? AND e0 >= ?) OR (s1 <= ? AND e1 >= ?))',
        rule, set, x, x, x, x)) out.push(toBoxRow(r));
    }
    // A box through two of the points came twice.
    return [...new Map(out.map((r) => [r.box.map(([a, b]) => `${a}-${b}`).join('|'), r])).values()];
  }
  /** One of a rule's boxes (every copy of it). */
  deletePolicyRawBox(set: string, rule: number, box: Box): void {
    const [s0, e0, s1, e1, s2, e2, s3, e3, wclass] = boxParams(box);
    // By the source index (set, width class, start): the rule's own index would scan all its rows per box.
    this.#prepared('DELETE FROM policy_raw INDEXED BY policy_raw_by_src WHERE set_name = ? AND wclass = ? AND s0 = ? AND rule = ? AND e0 = ? AND s1 = ? AND e1 = ? AND s2 = ? AND e2 = ? AND s3 = ? AND e3 = ?')
      .run(set, wclass, s0, rule, e0, s1, e1, s2, e2, s3, e3);
  }
  deletePolicyRaw(set: string, rule: number): void {
    this.#run('DELETE FROM policy_raw WHERE set_name = ? AND rule = ?', set, rule);
  }
  /** A rule's boxes in one set: compiled (what it owns) or raw (what it covers). */
  policyBoxesOf(table: 'compiled' | 'raw', set: string, rule: number): PolicyBoxRow[] {
    return this.#all(`SELECT * FROM ${TABLES[table]} WHERE set_name = ? AND rule = ?`, set, rule).map(toBoxRow);
  }
  /**
   * The boxes of one set meeting box, through the index on (set, width class, source start): per
   * class present, the boxes that start at most 2^class before the source range and by its end.
   */
  policyBoxesMeeting(table: 'compiled' | 'raw', set: string, box: Box): PolicyBoxRow[] {
    const t = TABLES[table];
    const [s0, e0, s1, e1, s2, e2, s3, e3] = boxParams(box);
    const out: PolicyBoxRow[] = [];
    // The classes present, one index probe each (a skip scan): few, whatever the number of boxes.
    for (let c = this.#get(`SELECT min(wclass) AS c FROM ${t} WHERE set_name = ?`, set)?.c as number | null; c !== null && c !== undefined;
      c = this.#get(`SELECT min(wclass) AS c FROM ${t} WHERE set_name = ? AND wclass > ?`, set, c)?.c as number | null) {
      const from = box[0][0] > 1n << BigInt(c) ? box[0][0] - (1n << BigInt(c)) : 0n;
      for (const r of this.#all(`SELECT * FROM ${t} WHERE set_name = ? AND wclass = ? AND s0 BETWEEN ? AND ?
        AND e0 >= ? AND s1 <= ? AND e1 >= ? AND s2 <= ? AND e2 >= ? AND s3 <= ? AND e3 >= ?`, set, c, hex(from), e0, s0, e1, s1, e2, s2, e3, s3)) out.push(toBoxRow(r));
    }
    return out;
  }
  /** The element texts of one set (to refill it whole). */
  policySetElements(set: string): string[] {
    return this.#all('SELECT element FROM policy_elements WHERE set_name = ?', set).map((r) => r.element as string);
  }
  /** Rules whose source or destination is one of these selectors (their canonical text). */
  policiesBySelector(selectors: readonly string[]): PolicyRow[] {
    const byId = new Map<number, PolicyRow>();
    for (const sel of new Set(selectors)) {
      for (const r of this.#all('SELECT * FROM policies WHERE from_sel = ? UNION SELECT * FROM policies WHERE to_sel = ?', sel, sel)) {
        byId.set(r.id as number, toPolicy(r));
      }
    }
    return [...byId.values()].sort((a, b) => a.id - b.id);
  }
  policy(id: number): PolicyRow | undefined {
    const r = this.#get('SELECT * FROM policies WHERE id = ?', id);
    return r && toPolicy(r);
  }
  policyByName(name: string): PolicyRow | undefined {
    const r = this.#get('SELECT * FROM policies WHERE name = ?', name);
    return r && toPolicy(r);
  }
  policyCount(): number {
    return this.#get('SELECT count(*) AS n FROM policies')!.n as number;
  }

  /**
   * Like write(), but fn may await (kernel work): the write lock is held across it, so concurrent
   * ctnet processes apply their changes one at a time. Use only for short kernel steps.
   */
  async writeAsync<T>(fn: () => Promise<T>, options: { rollback?: boolean } = {}): Promise<T> {
    this.#begin();
    try {
      const mark = this.#feedMark();
      const result = await fn();
      this.#end(mark, options.rollback);
      return result;
    } catch (e) {
      if (this.db.isTransaction) this.db.exec('ROLLBACK');
      throw storeError(e, this.dir);
    }
  }

  // ---- policy rules ----
  policies(): PolicyRow[] {
    return this.#all('SELECT * FROM policies ORDER BY id').map(toPolicy);
  }
  /** Inserts a rule; a missing name becomes "rule-ID". */
  insertPolicy(p: Omit<PolicyRow, 'id' | 'created' | 'name'> & { name: string | undefined }): PolicyRow {
    const created = new Date().toISOString();
    // An unnamed rule is "rule-ID": the ID AUTOINCREMENT gives next (the write lock is held), checked
    // after the insert; only if it differs is a placeholder name replaced (rule- names are reserved).
    const next = p.name === undefined ? ((this.#get("SELECT seq FROM sqlite_sequence WHERE name = 'policies'")?.seq as number | undefined) ?? 0) + 1 : 0;
    const r = this.#prepared('INSERT INTO policies(name, action, from_sel, to_sel, port, created) VALUES (?, ?, ?, ?, ?, ?)')
      .run(p.name ?? `rule-${next}`, p.action, p.from, p.to, p.port, created);
    const id = Number(r.lastInsertRowid);
    const name = p.name ?? `rule-${id}`;
    if (p.name === undefined && id !== next) this.#run('UPDATE policies SET name = ? WHERE id = ?', name, id);
    return { ...p, id, name, created };
  }
  deletePolicy(id: number): void {
    this.#run("DELETE FROM topology_objects WHERE kind = 'policy' AND name = (SELECT name FROM policies WHERE id = ?)", id);
    this.#run('DELETE FROM policies WHERE id = ?', id);
  }

  // ---- CNI attachments ----
  cniAttachments(filter: { containerId?: string; cniNetwork?: string; sandbox?: string } = {}): CniRow[] {
    const rows = filter.containerId !== undefined
      ? this.#all('SELECT * FROM cni_attachments WHERE container_id = ? ORDER BY ifname', filter.containerId)
      : filter.cniNetwork !== undefined
        ? this.#all('SELECT * FROM cni_attachments WHERE cni_network = ? ORDER BY container_id, ifname', filter.cniNetwork)
        : filter.sandbox !== undefined
          ? this.#all('SELECT * FROM cni_attachments WHERE sandbox = ? ORDER BY ifname', filter.sandbox)
          : this.#all('SELECT * FROM cni_attachments ORDER BY container_id, ifname');
    return rows.map((r) => ({
      containerId: r.container_id as string, ifname: r.ifname as string, cniNetwork: r.cni_network as string,
      sandbox: r.sandbox as string, network: r.network as string, created: r.created as string,
    }));
  }
  insertCniAttachment(c: Omit<CniRow, 'created'>): void {
    this.#run('INSERT INTO cni_attachments(container_id, ifname, cni_network, sandbox, network, created) VALUES (?, ?, ?, ?, ?, ?)',
      c.containerId, c.ifname, c.cniNetwork, c.sandbox, c.network, new Date().toISOString());
  }

  // ---- cluster membership ----
  member(): MemberRow | undefined {
    const r = this.#get('SELECT * FROM cluster_member WHERE id = 1');
    return r && {
      host: r.host as string, endpoints: (r.endpoints as string).split(','), underlay: r.underlay as string, vtepMac: r.vtep_mac as string,
      leaseTtl: r.lease_ttl as number, leaseId: (r.lease_id as string | null) ?? null, state: r.state as MemberRow['state'], joined: r.joined as string,
    };
  }
  /** Records this host's membership; a second one fails (the primary key is the constant 1). */
  insertMember(m: MemberRow): void {
    this.#run('INSERT INTO cluster_member(id, host, endpoints, underlay, vtep_mac, lease_ttl, lease_id, state, joined) VALUES (1, ?, ?, ?, ?, ?, ?, ?, ?)',
      m.host, m.endpoints.join(','), m.underlay, m.vtepMac, m.leaseTtl, m.leaseId, m.state, m.joined);
  }
  setMemberLease(leaseId: string): void {
    this.#run('UPDATE cluster_member SET lease_id = ? WHERE id = 1', leaseId);
  }
  setMemberState(state: MemberRow['state']): void {
    this.#run('UPDATE cluster_member SET state = ? WHERE id = 1', state);
  }
  deleteMember(): void {
    this.#run('DELETE FROM cluster_member WHERE id = 1');
  }
  clusterLeases(): ClusterLeaseRow[] {
    return this.#all('SELECT * FROM cluster_leases ORDER BY network')
      .map((r) => ({ network: r.network as string, subnet: r.subnet as string, claimed: r.claimed as string }));
  }
  setClusterLease(network: string, subnet: string): void {
    this.#run('INSERT INTO cluster_leases(network, subnet, claimed) VALUES (?, ?, ?) ON CONFLICT (network) DO UPDATE SET subnet = excluded.subnet, claimed = excluded.claimed',
      network, subnet, new Date().toISOString());
  }
  deleteClusterLease(network: string): void {
    this.#run('DELETE FROM cluster_leases WHERE network = ?', network);
  }

  // ---- other hosts' sandboxes (the directory's mirror) ----
  remoteSandboxes(filter: { name?: string } = {}): RemoteSandboxRow[] {
    const rows = filter.name !== undefined
      ? this.#all('SELECT * FROM remote_sandboxes WHERE name = ? ORDER BY host', filter.name)
      : this.#all('SELECT * FROM remote_sandboxes ORDER BY host, name');
    return rows.map((r) => ({
      host: r.host as string, name: r.name as string, addresses: JSON.parse(r.addresses as string) as string[],
      labels: JSON.parse(r.labels as string) as Record<string, string>, networks: JSON.parse(r.networks as string) as string[],
      aliases: JSON.parse(r.aliases as string) as Record<string, string[]>,
    }));
  }
  /** Records (or replaces) another host's sandbox. */
  putRemoteSandbox(r: RemoteSandboxRow): void {
    this.#run(`INSERT INTO remote_sandboxes(host, name, addresses, labels, networks, aliases) VALUES (?, ?, ?, ?, ?, ?)
      ON CONFLICT (host, name) DO UPDATE SET addresses = excluded.addresses, labels = excluded.labels, networks = excluded.networks, aliases = excluded.aliases`,
    r.host, r.name, JSON.stringify(r.addresses), JSON.stringify(r.labels), JSON.stringify(r.networks), JSON.stringify(r.aliases));
  }
  deleteRemoteSandbox(host: string, name: string): void {
    this.#run('DELETE FROM remote_sandboxes WHERE host = ? AND name = ?', host, name);
  }

  // ---- what topology files own ----
  owned(filter: { topology?: string } = {}): OwnedRow[] {
    const rows = filter.topology !== undefined
      ? this.#all('SELECT * FROM topology_objects WHERE topology = ? ORDER BY kind, name', filter.topology)
      : this.#all('SELECT * FROM topology_objects ORDER BY kind, name');
    return rows.map((r) => ({ kind: r.kind as OwnedKind, name: r.name as string, topology: r.topology as string, file: r.file as string }));
  }
  owner(kind: OwnedKind, name: string): OwnedRow | undefined {
    const r = this.#get('SELECT * FROM topology_objects WHERE kind = ? AND name = ?', kind, name);
    return r && { kind: r.kind as OwnedKind, name: r.name as string, topology: r.topology as string, file: r.file as string };
  }
  setOwner(o: OwnedRow): void {
    this.#run(`INSERT INTO topology_objects(kind, name, topology, file) VALUES (?, ?, ?, ?)
      ON CONFLICT (kind, name) DO UPDATE SET topology = excluded.topology, file = excluded.file`, o.kind, o.name, o.topology, o.file);
  }
  deleteOwner(kind: OwnedKind, name: string): void {
    this.#run('DELETE FROM topology_objects WHERE kind = ? AND name = ?', kind, name);
  }
  command(sandbox: string): CommandRow | undefined {
    const r = this.#get('SELECT * FROM sandbox_commands WHERE sandbox = ?', sandbox);
    return r && { sandbox: r.sandbox as string, argv: JSON.parse(r.argv as string) as string[], process: (r.process as string | null) ?? null };
  }
  setCommand(c: CommandRow): void {
    this.#run(`INSERT INTO sandbox_commands(sandbox, argv, process) VALUES (?, ?, ?)
      ON CONFLICT (sandbox) DO UPDATE SET argv = excluded.argv, process = excluded.process`, c.sandbox, JSON.stringify(c.argv), c.process);
  }
  deleteCommand(sandbox: string): void {
    this.#run('DELETE FROM sandbox_commands WHERE sandbox = ?', sandbox);
  }
  // ---- aliases (DNS names of a sandbox on a network) ----
  aliases(filter: { sandbox?: string; network?: string } = {}): AliasRow[] {
    const rows = filter.sandbox !== undefined
      ? this.#all('SELECT * FROM aliases WHERE sandbox = ? ORDER BY network, alias', filter.sandbox)
      : filter.network !== undefined
        ? this.#all('SELECT * FROM aliases WHERE network = ? ORDER BY alias, sandbox', filter.network)
        : this.#all('SELECT * FROM aliases ORDER BY network, alias, sandbox');
    return rows.filter((r) => filter.network === undefined || r.network === filter.network)
      .map((r) => ({ sandbox: r.sandbox as string, network: r.network as string, alias: r.alias as string }));
  }
  insertAlias(a: AliasRow): void {
    this.#run('INSERT INTO aliases(sandbox, network, alias) VALUES (?, ?, ?)', a.sandbox, a.network, a.alias);
  }
  deleteAlias(a: AliasRow): void {
    this.#run('DELETE FROM aliases WHERE sandbox = ? AND network = ? AND alias = ?', a.sandbox, a.network, a.alias);
  }

  // ---- processes ctnet started in sandboxes ----
  processes(sandbox: string): ProcessRow[] {
    return this.#all('SELECT * FROM processes WHERE sandbox = ?', sandbox)
      .map((r) => ({ sandbox: r.sandbox as string, pid: r.pid as number, command: r.command as string }));
  }
  insertProcess(p: ProcessRow): void {
    this.#run('INSERT INTO processes(sandbox, pid, command) VALUES (?, ?, ?)', p.sandbox, p.pid, p.command);
  }

  /**
   * Statements are prepared once per store: preparing a write to a table with the feed's triggers
   * compiles the triggers of every table it cascades to (~100-300 µs here), executing it costs a
   * few µs. SQLite re-prepares a cached statement by itself when the schema changes.
   */
  readonly #statements = new Map<string, StatementSync>();
  #prepared(sql: string): StatementSync {
    let st = this.#statements.get(sql);
    if (!st) this.#statements.set(sql, (st = this.db.prepare(sql)));
    return st;
  }
  #all(sql: string, ...params: (string | number | null)[]): Row[] {
    return this.#prepared(sql).all(...params) as Row[];
  }
  #get(sql: string, ...params: (string | number | null)[]): Row | undefined {
    return this.#prepared(sql).get(...params) as Row | undefined;
  }
  #run(sql: string, ...params: (string | number | null)[]): void {
    this.#prepared(sql).run(...params);
  }
}

const toService = (r: Row): ServiceRow => ({
  name: r.name as string, network: r.network as string, vip: r.vip as string, cidr: r.cidr as string,
  proto: r.proto as 'tcp' | 'udp', port: r.port as number,
  selector: { key: r.selector_key as string, value: r.selector_value as string },
  targetPort: r.target_port as number, affinity: r.affinity as 'none' | 'client-ip',
  backends: JSON.parse(r.backends as string) as string[], created: r.created as string,
  ...(r.publish_port == null ? {} : { publish: { hostIp: r.publish_ip as string, hostPort: r.publish_port as number } }),
  ...(r.check_kind == null ? {} : {
    check: r.check_kind === 'http'
      ? { kind: 'http' as const, path: r.check_path as string, intervalMs: r.check_interval_ms as number }
      : { kind: 'tcp' as const, intervalMs: r.check_interval_ms as number },
  }),
  unready: JSON.parse((r.unready as string | undefined) ?? '[]') as string[],
  ...(r.owner_host == null ? {} : { ownerHost: r.owner_host as string }),
  ...(r.state == null || r.state === 'ready' ? {} : { state: r.state as ServiceState, owner: (r.owner as string | null) ?? null }),
  ...(r.vip6 == null ? {} : { vip6: r.vip6 as string }),
});

const toPolicy = (r: Row): PolicyRow => ({
  id: r.id as number, name: r.name as string, action: r.action as 'allow' | 'deny', from: r.from_sel as string,
  to: r.to_sel as string, port: (r.port as string | null) ?? null, created: r.created as string,
});

const POLICY_INDEX_META = 'policy.index';
const TABLES = { compiled: 'policy_elements', raw: 'policy_raw' } as const;
const BOX_COLUMNS = 's0, e0, s1, e1, s2, e2, s3, e3, wclass';
const BOX_PARAMS = '?, ?, ?, ?, ?, ?, ?, ?, ?';
/** The width class of a range: the bit length of its width (0 for one address). */
const widthClass = (r: readonly [bigint, bigint]) => (r[1] - r[0]).toString(2).length - (r[1] === r[0] ? 1 : 0);
const hex = (n: bigint) => n.toString(16).padStart(32, '0');
const boxParams = (b: Box): [string, string, string, string, number, number, number, number, number] =>
  [hex(b[0][0]), hex(b[0][1]), hex(b[1][0]), hex(b[1][1]), Number(b[2][0]), Number(b[2][1]), Number(b[3][0]), Number(b[3][1]), widthClass(b[0])];
const toBoxRow = (r: Row): PolicyBoxRow => ({
  rule: r.rule as number,
  box: [[BigInt(`0x${r.s0 as string}`), BigInt(`0x${r.e0 as string}`)], [BigInt(`0x${r.s1 as string}`), BigInt(`0x${r.e1 as string}`)],
    [BigInt(r.s2 as number), BigInt(r.e2 as number)], [BigInt(r.s3 as number), BigInt(r.e3 as number)]],
});

const toNetwork = (r: Row): NetworkRow => ({
  name: r.name as string, bridge: r.bridge as string, internal: r.internal === 1, isolate: r.isolate === 1, hostAccess: r.host_access === 1,
  mtu: (r.mtu as number | null) ?? null, driver: r.driver as string, mac: (r.mac as string | null) ?? null,
  dns: r.dns === 1, dnsForward: r.dns_forward ? (r.dns_forward as string).split(',') : [], state: r.state as State, created: r.created as string,
  owner: (r.owner as string | null) ?? null,
  ...(typeof r.lower === 'string' ? { lower: JSON.parse(r.lower) as LowerDevice } : {}),
});
const toOverlay = (r: Row): OverlayRow => ({
  network: r.network as string, vni: r.vni as number, port: r.port as number, device: r.device as string, vtepMac: r.vtep_mac as string,
  cidr: r.cidr as string, underlayIp: r.underlay_ip as string, underlayDev: r.underlay_dev as string,
});
const toSandbox = (r: Row): SandboxRow => ({
  name: r.name as string, netns: r.netns as string, owned: r.owned === 1,
  state: r.state as State, created: r.created as string, owner: (r.owner as string | null) ?? null,
});

const ownerFor = (state: State) => (state === 'ready' ? null : processToken());

const isBusy = (e: unknown) => /database is locked|database table is locked|SQLITE_BUSY/i.test((e as Error)?.message ?? '');

/**
 * SQLite's failures as errors a person can act on (one line and a hint, never a stack): a lock held
 * too long, a full disk, a damaged file. Anything else (and every CtnetError) passes unchanged.
 */
export function storeError(e: unknown, dir: string): unknown {
  if (e instanceof CtnetError || !(e instanceof Error) || (e as { code?: string }).code !== 'ERR_SQLITE_ERROR') return e;
  const file = join(dir, 'ctnet.db');
  if (isBusy(e)) {
    return new CtnetError('STATE', `the state in ${dir} stayed locked by another ctnet operation: nothing was changed`,
      'try again; if it persists, look for a ctnet process that hangs (ps -C node -f) and stop it', { cause: e });
  }
  if (/disk is full|SQLITE_FULL/i.test(e.message)) {
    return new CtnetError('ENVIRONMENT', `the disk holding ${file} is full: nothing was changed`, `free space on the file system of ${dir}, then run the command again`, { cause: e });
  }
  if (/malformed|not a database|corrupt/i.test(e.message)) {
    return new CtnetError('STATE', `the state database ${file} is damaged (${e.message}): nothing was changed`,
      `restore ${file} from a backup; ctnet will not guess its state from the kernel (ctnet gc would remove what an empty store does not record)`, { cause: e });
  }
  if (/readonly|read-only|unable to open/i.test(e.message)) {
    return new CtnetError('ENVIRONMENT', `cannot write the state database ${file}: ${e.message}`, 'run ctnet as root, on a writable --state-dir', { cause: e });
  }
  return e;
}
