// The change feed's shape: which tables record their changes in the events table, the JSON each
// change carries, and the SQL (triggers, snapshot queries) generated from that one description, so
// an event's data and a snapshot's rows have the same shape by construction. Pure: no I/O.
//
// Triggers, not the engine, write the events: every writer (the CLI, ctnetd's CNI handler, a future
// file-driven apply, even the sqlite3 shell) records them in the same transaction as the change,
// and a rolled-back transaction (a dry run, a failed operation) records nothing.
import type { AddressRow, AliasRow, AttachmentRow, CniRow, MemberRow, NetworkRow, PolicyRow, PortRow, RemoteSandboxRow, SandboxRow, SubnetRow } from './store.ts';

/**
 * What a resident service needs to know, per kind. Not recorded, on purpose:
 * - owner (the token of the process working on a row): it only changes together with state, and
 *   says who is busy, not what the host holds;
 * - subnets.cursor: IPAM's next-address hint, advanced by every allocation;
 * - policy_elements: the kernel's policy sets as last applied, derived from policies, labels and
 *   addresses, which are recorded;
 * - processes (pids `ctnet run -d` started) and meta: not network state;
 * - cluster_member.lease_id: ctnetd's own bookkeeping of the etcd lease it renews;
 *   cluster_leases: the subnets to take back, read by ctnetd when it registers again.
 */
export interface FeedData {
  /** dnsForward as the column holds it (comma-separated, or null). */
  network: Omit<NetworkRow, 'owner' | 'dnsForward'> & { readonly dnsForward: string | null };
  subnet: Omit<SubnetRow, 'cursor'>;
  sandbox: Omit<SandboxRow, 'owner'>;
  attachment: Omit<AttachmentRow, 'owner'>;
  address: AddressRow;
  port: PortRow;
  label: { readonly sandbox: string; readonly key: string; readonly value: string };
  policy: PolicyRow;
  cni: CniRow;
  /** This host's cluster membership; endpoints as the column holds them (comma-separated). */
  member: Omit<MemberRow, 'leaseId' | 'endpoints'> & { readonly endpoints: string };
  /** Another host's sandbox in the directory's mirror (services/directory.ts). */
  remote: RemoteSandboxRow;
  alias: AliasRow;
  /**
   * A service's name, network and VIP (DNS answers them): its other columns are not recorded, so
   * the backends following labels (syncServices) make no events.
   */
  service: { readonly name: string; readonly network: string; readonly vip: string; readonly vip6?: string | null; readonly state?: string };
}
export type Kind = keyof FeedData;
export type Action = 'created' | 'changed' | 'removed';

/**
 * One committed change of one row. data is the row after the change (created, changed) or as it
 * was (removed), so a consumer of a removal still knows e.g. the MAC or addresses that went away.
 */
export type ChangeEvent = {
  [K in Kind]: {
    readonly id: number;
    /**
     * When the change was committed (ISO 8601, ms): the store stamps its transaction's events just
     * before COMMIT. (A writer other than Store, e.g. the sqlite3 shell, leaves the statement's time.)
     */
    readonly at: string;
    readonly kind: K;
    readonly action: Action;
    /** The row's identity within its kind (see KEYS). */
    readonly key: string;
    readonly data: FeedData[K];
  };
}[Kind];

/** The events table keeps the newest KEEP events; the oldest are pruned every PRUNE_EVERY inserts. */
export const FEED_KEEP = 10_000;
export const FEED_PRUNE_EVERY = 1_000;
/** meta key: the highest event id pruned so far (a reader whose cursor is below it missed events). */
export const META_PRUNED = 'feed_pruned';
/** meta key: the hash of the installed triggers (reinstalled when the code's description changes). */
export const META_TRIGGERS = 'feed_triggers';

interface Column {
  /** The name in the event's JSON (the store's row field). */
  readonly json: string;
  readonly column: string;
  readonly bool?: true;
  /** The column holds JSON text: the event carries the value, not the text. */
  readonly jsonText?: true;
}
interface Recorded {
  readonly table: string;
  /** SQL computing the key from a row named $. */
  readonly key: string;
  readonly columns: readonly Column[];
}

const c = (column: string, json = column.replace(/_(\w)/g, (_, x: string) => x.toUpperCase())): Column => ({ json, column });
const b = (column: string): Column => ({ json: column, column, bool: true });
const j = (column: string): Column => ({ json: column, column, jsonText: true });

/** The recorded tables, in the order a snapshot lists them (parents before children). */
export const RECORDED: { readonly [K in Kind]: Recorded } = {
  network: { table: 'networks', key: '$.name', columns: [c('name'), c('bridge'), b('internal'), b('isolate'), { json: 'hostAccess', column: 'host_access', bool: true }, c('mtu'), c('driver'), c('mac'), b('dns'), c('dns_forward'), c('state'), c('created')] },
  subnet: { table: 'subnets', key: '$.cidr', columns: [c('network'), c('cidr'), c('family'), c('gateway')] },
  sandbox: { table: 'sandboxes', key: '$.name', columns: [c('name'), c('netns'), b('owned'), c('state'), c('created')] },
  attachment: {
    table: 'attachments', key: "$.sandbox || '/' || $.network",
    columns: [c('sandbox'), c('network'), c('ifname'), c('host_veth'), c('mac'), c('state')],
  },
  address: { table: 'addresses', key: '$.ip', columns: [c('ip'), c('family'), c('cidr'), c('network'), c('sandbox')] },
  port: {
    table: 'ports', key: "$.sandbox || '/' || $.proto || '/' || $.host_ip || '/' || $.host_port",
    columns: [c('sandbox'), c('proto'), c('host_ip'), c('host_port'), c('container_port'), c('count')],
  },
  label: { table: 'labels', key: "$.sandbox || '/' || $.key", columns: [c('sandbox'), c('key'), c('value')] },
  // The id, not the name: a rule without a name is inserted as pending-… and renamed rule-ID.
  policy: {
    table: 'policies', key: 'CAST($.id AS TEXT)',
    columns: [c('id'), c('name'), c('action'), c('from_sel', 'from'), c('to_sel', 'to'), c('port'), c('created')],
  },
  cni: {
    table: 'cni_attachments', key: "$.container_id || '/' || $.ifname || '/' || $.cni_network",
    columns: [c('container_id'), c('ifname'), c('cni_network'), c('sandbox'), c('network'), c('created')],
  },
  member: {
    table: 'cluster_member', key: '$.host',
    columns: [c('host'), c('endpoints'), c('underlay'), c('vtep_mac'), c('lease_ttl'), c('state'), c('joined')],
  },
  alias: { table: 'aliases', key: "$.network || '/' || $.alias || '/' || $.sandbox", columns: [c('sandbox'), c('network'), c('alias')] },
  remote: { table: 'remote_sandboxes', key: "$.host || '/' || $.name", columns: [c('host'), c('name'), j('addresses'), j('labels'), j('networks'), j('aliases')] },
  service: { table: 'services', key: '$.name', columns: [c('name'), c('network'), c('vip'), c('vip6'), c('state')] },
};

export const KINDS = Object.keys(RECORDED) as Kind[];

const sub = (sql: string, row: string) => sql.replaceAll('$.', `${row}.`);

/** SQL for a row's JSON object, the row being named `row` (NEW, OLD, or the table itself). */
export function rowJson(kind: Kind, row: string): string {
  const parts = RECORDED[kind].columns.map((col) => {
    const v = `${row}.${col.column}`;
    return `'${col.json}', ${col.bool ? `json(CASE WHEN ${v} THEN 'true' ELSE 'false' END)` : col.jsonText ? `json(${v})` : v}`;
  });
  return `json_object(${parts.join(', ')})`;
}

export const rowKey = (kind: Kind, row: string) => sub(RECORDED[kind].key, row);

/** SQL for now, as an event's time. */
export const FEED_NOW = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')";

function triggers(kind: Kind): string {
  const { table, columns } = RECORDED[kind];
  const insert = (action: Action, row: 'NEW' | 'OLD') =>
    `INSERT INTO events(at, kind, action, key, data) VALUES (${FEED_NOW}, '${kind}', '${action}', ${rowKey(kind, row)}, ${rowJson(kind, row)});`;
  // An update that touches only unrecorded columns (owner, cursor) is no change to a resident service.
  const changed = columns.map((col) => `OLD.${col.column} IS NOT NEW.${col.column}`).join(' OR ');
  return [
    `CREATE TRIGGER feed_${table}_insert AFTER INSERT ON ${table} BEGIN ${insert('created', 'NEW')} END;`,
    `CREATE TRIGGER feed_${table}_update AFTER UPDATE ON ${table} WHEN ${changed} BEGIN ${insert('changed', 'NEW')} END;`,
    `CREATE TRIGGER feed_${table}_delete AFTER DELETE ON ${table} BEGIN ${insert('removed', 'OLD')} END;`,
  ].join('\n');
}

/**
 * The feed's triggers (installed by the store when their hash in meta differs: see store.ts). The
 * bound: every PRUNE_EVERY-th event deletes all but the newest KEEP and records how far it pruned,
 * so every writer keeps the table bounded (at most KEEP + PRUNE_EVERY rows), daemon or not.
 */
export const FEED_TRIGGERS = [
  ...KINDS.map(triggers),
  `CREATE TRIGGER feed_events_bound AFTER INSERT ON events WHEN NEW.id % ${FEED_PRUNE_EVERY} = 0 AND NEW.id > ${FEED_KEEP} BEGIN
  DELETE FROM events WHERE id <= NEW.id - ${FEED_KEEP};
  INSERT INTO meta(key, value) VALUES ('${META_PRUNED}', NEW.id - ${FEED_KEEP}) ON CONFLICT (key) DO UPDATE SET value = excluded.value;
END;`,
].join('\n');

/** The query listing a kind's rows as the feed's JSON, for a snapshot. */
export const snapshotQuery = (kind: Kind) => `SELECT ${rowJson(kind, RECORDED[kind].table)} AS data FROM ${RECORDED[kind].table}`;
