// The cluster's sandbox directory (etcd: /ctnet/sandboxes/HOST/NAME), as use cases: what this host
// publishes about its sandboxes, how another host's entries are mirrored into the store, and
// `ls --all`. ctnetd's directory service (services/directory.ts) does the publishing and the
// mirroring as things change; the mirror is what policy reads (engine/policy.ts policyWorld).
import { type Kv } from '../cluster/etcd.ts';
import { decodeEntry, encodeSandbox, parseKey, SANDBOXES, type SandboxValue } from '../cluster/keys.ts';
import type { RemoteSandboxRow, Store } from '../store/store.ts';
import { CtnetError } from '../errors.ts';
import { etcdOf, OVERLAY_DRIVERS } from './cluster.ts';
import type { Ctx } from './context.ts';
import { sandboxSummary } from './inspect.ts';

/**
 * What this host publishes: each sandbox with a ready attachment on an overlay network, with its
 * addresses on overlay networks, its labels and those networks' names. Sandboxes only on bridge
 * networks stay local: no other host can reach them.
 */
export function directoryEntries(store: Store): Map<string, SandboxValue> {
  const overlays = new Set(store.networks().filter((n) => OVERLAY_DRIVERS.includes(n.driver) && n.state === 'ready').map((n) => n.name));
  const out = new Map<string, SandboxValue>();
  if (overlays.size === 0) return out;
  const attachments = store.attachments().filter((a) => a.state === 'ready' && overlays.has(a.network));
  const removing = new Set(store.sandboxes().filter((s) => s.state === 'removing').map((s) => s.name));
  for (const name of new Set(attachments.map((a) => a.sandbox))) {
    if (removing.has(name)) continue;
    const networks = attachments.filter((a) => a.sandbox === name).map((a) => a.network).sort();
    out.set(name, {
      addresses: store.addresses({ sandbox: name }).filter((a) => networks.includes(a.network)).map((a) => a.ip),
      labels: Object.fromEntries(store.labels(name).map((l) => [l.key, l.value])),
      networks,
      aliases: Object.fromEntries(networks.map((n) => [n, store.aliases({ sandbox: name, network: n }).map((a) => a.alias).sort()]).filter(([, l]) => l!.length > 0)),
    });
  }
  return out;
}

/** The text each entry is written as (equal values, equal text: compare this, not objects). */
export const entryText = encodeSandbox;

/** Another host's entry as a mirror row; undefined for this host's own, a key of another kind, or an unreadable value (reason). */
export function remoteRow(kv: Pick<Kv, 'key' | 'value'>, self: string): RemoteSandboxRow | { bad: string } | undefined {
  const k = parseKey(kv.key);
  if (k?.kind !== 'sandbox' || k.host === self) return undefined;
  const e = decodeEntry(kv.key, kv.value);
  if (e.kind === 'bad') return { bad: `${e.key}: ${e.reason}` };
  if (e.kind !== 'sandbox' || e.host === self) return undefined;
  return { host: e.host, name: e.name, addresses: e.value.addresses, labels: e.value.labels, networks: e.value.networks, aliases: e.value.aliases ?? {} };
}

const same = (a: RemoteSandboxRow, b: RemoteSandboxRow) =>
  JSON.stringify([a.addresses, a.labels, a.networks, a.aliases]) === JSON.stringify([b.addresses, b.labels, b.networks, b.aliases]);

/** A change to the mirror: rows to put (host/name -> row), and host/name keys etcd deleted. */
export interface MirrorChange {
  readonly put: readonly RemoteSandboxRow[];
  readonly removed: readonly { readonly host: string; readonly name: string }[];
  /** A fresh listing of every entry: rows not in put go (the only way rows go besides a delete event). */
  readonly snapshot: boolean;
}

/**
 * Applies a change to the mirror in one store transaction, writing only rows that differ.
 * Returns what changed ("h2/b1 changed", ...); empty when the mirror held it all already.
 */
export function applyMirror(store: Store, change: MirrorChange): string[] {
  return store.write(() => {
    const have = new Map(store.remoteSandboxes().map((r) => [`${r.host}/${r.name}`, r]));
    const said: string[] = [];
    for (const r of change.put) {
      const key = `${r.host}/${r.name}`;
      const old = have.get(key);
      if (!old || !same(old, r)) {
        store.putRemoteSandbox(r);
        said.push(`${key} ${old ? 'changed' : 'added'}`);
      }
    }
    const gone = change.snapshot
      ? [...have.keys()].filter((k) => !change.put.some((r) => `${r.host}/${r.name}` === k))
      : change.removed.map((r) => `${r.host}/${r.name}`).filter((k) => have.has(k));
    for (const key of gone) {
      const r = have.get(key)!;
      store.deleteRemoteSandbox(r.host, r.name);
      said.push(`${key} removed`);
    }
    return said;
  });
}

/** Empties the mirror (this host left its cluster); true if it held anything. */
export function clearMirror(store: Store): boolean {
  const rows = store.remoteSandboxes();
  if (rows.length) store.write(() => rows.forEach((r) => store.deleteRemoteSandbox(r.host, r.name)));
  return rows.length > 0;
}

export interface ClusterSandbox {
  readonly host: string;
  readonly name: string;
  readonly networks: readonly string[];
  readonly addresses: readonly string[];
  readonly labels: Readonly<Record<string, string>>;
  /** This host's (from its store; every sandbox), or another's (from etcd: those on overlay networks). */
  readonly local: boolean;
}

/**
 * `ls --all`: this host's sandboxes from its store, every other host's from etcd's directory
 * (read now, not the mirror, so it shows what the cluster holds; etcd unreachable is an error).
 */
export async function clusterSandboxes(ctx: Ctx): Promise<{ self: string; sandboxes: ClusterSandbox[]; bad: string[] }> {
  const m = ctx.store.member();
  if (!m) {
    throw new CtnetError('NOT_FOUND', 'ls --all lists the sandboxes of every host of a cluster: this host is not a member of one',
      '"ctnet ls" lists this host\'s; join a cluster with ctnet cluster join --etcd URL');
  }
  const list = await etcdOf(m).range(SANDBOXES, { prefix: true });
  const local: ClusterSandbox[] = ctx.store.sandboxes().map((s) => {
    const v = sandboxSummary(ctx, s);
    return { host: m.host, name: v.name, networks: v.networks, addresses: v.addresses, labels: v.labels, local: true };
  });
  const bad: string[] = [];
  const remote: ClusterSandbox[] = [];
  for (const kv of list.kvs) {
    const r = remoteRow(kv, m.host);
    if (r && 'bad' in r) bad.push(r.bad);
    else if (r) remote.push({ host: r.host, name: r.name, networks: r.networks, addresses: r.addresses, labels: r.labels, local: false });
  }
  const all = [...local, ...remote].sort((a, b) => (a.host === b.host ? a.name.localeCompare(b.name) : a.host.localeCompare(b.host)));
  return { self: m.host, sandboxes: all, bad };
}
