// What ctnetd's DNS server answers from (services/dns/), read straight from the store at each query:
// the store's change counter (the newest event id, one indexed lookup) says whether the rows read
// last are still current, so a name is answerable from the moment the transaction that made it
// ready commits, and gone from the moment its removal starts, with no message to ctnetd and no wait
// for the change feed. Its own read-only connection, like the feed's.
import { closeSync, openSync, readSync } from 'node:fs';
import { join } from 'node:path';
import { DatabaseSync, type StatementSync } from 'node:sqlite';

export interface NameRows {
  /** The store's change counter the rows are current at. */
  readonly serial: number;
  readonly networks: readonly { readonly name: string; readonly internal: boolean; readonly dns: boolean; readonly forward: readonly string[]; readonly ready: boolean }[];
  readonly subnets: readonly { readonly network: string; readonly cidr: string; readonly gateway: string }[];
  /** Addresses of ready attachments of sandboxes not being removed; on overlay networks also other hosts' sandboxes. */
  readonly addresses: readonly { readonly network: string; readonly sandbox: string; readonly ip: string }[];
  readonly aliases: readonly { readonly network: string; readonly sandbox: string; readonly alias: string }[];
  /** Services (docs/services.md): NAME and NAME.NETWORK answer their VIP on their network. */
  readonly services: readonly { readonly network: string; readonly name: string; readonly vip: string; readonly vip6?: string | null }[];
}

type Row = Record<string, unknown>;

/** The first copy of the WAL-index header at the start of the -shm file. */
const WAL_HEADER = 48;

export class NameReader {
  readonly #db: DatabaseSync;
  readonly #serial: StatementSync;
  readonly #networks: StatementSync;
  readonly #subnets: StatementSync;
  readonly #addresses: StatementSync;
  readonly #aliases: StatementSync;
  readonly #remote: StatementSync;
  readonly #overlays: StatementSync;
  readonly #services: StatementSync;
  readonly #shmPath: string;
  #shm: number | undefined;
  readonly #header = Buffer.alloc(WAL_HEADER);
  readonly #seen = Buffer.alloc(WAL_HEADER);
  #seenValid = false;

  constructor(stateDir: string) {
    this.#db = new DatabaseSync(join(stateDir, 'ctnet.db'), { readOnly: true, timeout: 5_000 });
    this.#shmPath = join(stateDir, 'ctnet.db-shm');
    this.#serial = this.#db.prepare('SELECT coalesce(max(id), 0) AS id FROM events');
    this.#networks = this.#db.prepare('SELECT name, internal, dns, dns_forward, state FROM networks');
    this.#subnets = this.#db.prepare('SELECT network, cidr, gateway FROM subnets');
    this.#addresses = this.#db.prepare(`SELECT ad.network, ad.sandbox, ad.ip FROM addresses ad
      JOIN attachments a ON a.sandbox = ad.sandbox AND a.network = ad.network
      JOIN sandboxes s ON s.name = ad.sandbox
      WHERE a.state = 'ready' AND s.state = 'ready'`);
    this.#aliases = this.#db.prepare('SELECT network, sandbox, alias FROM aliases');
    this.#remote = this.#db.prepare('SELECT name, addresses, networks, aliases FROM remote_sandboxes');
    this.#overlays = this.#db.prepare('SELECT network, cidr FROM overlays');
    // Only the columns DNS needs: the service's row may grow (ports, health) without this reader knowing.
    this.#services = this.#db.prepare('SELECT name, network, vip, vip6 FROM services');
  }

  close(): void {
    if (this.#shm !== undefined) closeSync(this.#shm);
    this.#shm = undefined;
    if (this.#db.isOpen) this.#db.close();
  }

  /**
   * Might the store have changed since the last call? False only when the WAL-index header in
   * ctnet.db-shm is byte for byte what it was: SQLite rewrites it (its change counter, the last
   * frame, the checksums) at every commit, before the writer's COMMIT returns, so a commit that
   * returned is always seen. One pread of 48 bytes instead of a query: the query per DNS question
   * (a read transaction's locks) cost about as much as answering (bench/dns.ts). When the file
   * cannot be read (not in WAL mode, an error), true: the caller asks serial().
   * The header's layout: https://www.sqlite.org/walformat.html#the_wal_index_header
   */
  moved(): boolean {
    try {
      this.#shm ??= openSync(this.#shmPath, 'r');
      if (readSync(this.#shm, this.#header, 0, WAL_HEADER, 0) !== WAL_HEADER) return true;
    } catch {
      return true;
    }
    if (this.#seenValid && this.#header.equals(this.#seen)) return false;
    this.#header.copy(this.#seen);
    this.#seenValid = true;
    return true;
  }

  /** The store's change counter: the rows change only when it does. */
  serial(): number {
    return (this.#serial.get() as Row).id as number;
  }

  /** Every row the names come from, in one read transaction. */
  rows(): NameRows {
    this.#db.exec('BEGIN');
    try {
      const serial = this.serial();
      const networks = (this.#networks.all() as Row[]).map((r) => ({
        name: r.name as string, internal: r.internal === 1, dns: r.dns === 1,
        forward: r.dns_forward ? (r.dns_forward as string).split(',') : [], ready: r.state === 'ready',
      }));
      const subnets = (this.#subnets.all() as Row[]).map((r) => ({ network: r.network as string, cidr: r.cidr as string, gateway: r.gateway as string }));
      const addresses = (this.#addresses.all() as Row[]).map((r) => ({ network: r.network as string, sandbox: r.sandbox as string, ip: r.ip as string }));
      // Other hosts' sandboxes (the directory's mirror) on overlay networks this host has a side of;
      // a local name wins over a remote one of the same name.
      const overlays = (this.#overlays.all() as Row[]).map((r) => ({ network: r.network as string, cidr: r.cidr as string }));
      const local = new Set(addresses.map((a) => `${a.network}/${a.sandbox}`));
      const remoteAliases: { network: string; sandbox: string; alias: string }[] = [];
      for (const r of this.#remote.all() as Row[]) {
        const nets = JSON.parse(r.networks as string) as string[];
        const ips = JSON.parse(r.addresses as string) as string[];
        for (const o of overlays) {
          if (!nets.includes(o.network) || local.has(`${o.network}/${r.name as string}`)) continue;
          for (const ip of ips.filter((x) => inCidr(x, o.cidr))) addresses.push({ network: o.network, sandbox: r.name as string, ip });
          const theirs = (JSON.parse(r.aliases as string) as Record<string, string[]>)[o.network] ?? [];
          for (const alias of theirs) remoteAliases.push({ network: o.network, sandbox: r.name as string, alias });
        }
      }
      const aliases = (this.#aliases.all() as Row[]).map((r) => ({ network: r.network as string, sandbox: r.sandbox as string, alias: r.alias as string }));
      aliases.push(...remoteAliases);
      const services = (this.#services.all() as Row[]).map((r) => ({ network: r.network as string, name: r.name as string, vip: r.vip as string, vip6: r.vip6 as string | null }));
      return { serial, networks, subnets, addresses, aliases, services };
    } finally {
      this.#db.exec('COMMIT');
    }
  }
}

/** IPv4 only (overlays carry IPv4): is ip inside cidr? */
function inCidr(ip: string, cidr: string): boolean {
  const [base, bits] = cidr.split('/');
  if (ip.includes(':') || !base || base.includes(':')) return false;
  const n = (s: string) => s.split('.').reduce((a, p) => a * 256 + Number(p), 0);
  const size = 2 ** (32 - Number(bits));
  return Math.floor(n(ip) / size) === Math.floor(n(base) / size);
}
