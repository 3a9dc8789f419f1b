// A small typed client of etcd's v3 API, spoken as JSON through the gateway every etcd >= 3.4
// serves on its client URL (POST /v3/kv/range, /v3/kv/txn, /v3/lease/*, /v3/watch as a stream of
// JSON lines), with Node's own fetch: no dependency, no gRPC stack to load in every CLI start, and
// every call bounded by one short timeout, so a command that needs etcd fails in seconds with an
// error that says which etcd did not answer. (Why not the `etcd3` package: docs/overlay.md.)
//
// Keys and values are strings here (UTF-8; base64 only on the wire); revisions and lease ids are
// etcd's int64 as decimal strings, as the gateway writes them.
import { CtnetError, invalid } from '../errors.ts';

/** How long one request may take before the endpoint counts as unreachable (env CTNET_ETCD_TIMEOUT_MS). 5 s, like etcd's own request timeout: 2 s gave false "unreachable" under load on a busy 2-core host. */
export const DEFAULT_TIMEOUT_MS = 5_000;

/**
 * One or more etcd client URLs, comma-separated: http(s)://HOST:PORT, nothing else (no path, query,
 * user or password). Throws INVALID_ARGUMENT naming the bad one before anything is sent.
 */
export function parseEndpoints(text: string): readonly string[] {
  const parts = text.split(',').map((s) => s.trim());
  if (text.trim() === '' || parts.some((p) => p === '')) {
    throw invalid(`--etcd ${JSON.stringify(text)} names no etcd URL${text.trim() === '' ? '' : ' between two commas'}`, 'write --etcd http://HOST:2379[,http://HOST2:2379]');
  }
  const out: string[] = [];
  for (const p of parts) {
    if (!/^[a-z][a-z0-9+.-]*:\/\//i.test(p)) {
      throw invalid(`etcd URL ${JSON.stringify(p)} has no http:// in front`, `write it as http://HOST:PORT, e.g. http://${p.includes(':') ? p : `${p}:2379`}`);
    }
    let u: URL;
    try {
      u = new URL(p);
    } catch {
      throw invalid(`etcd URL ${JSON.stringify(p)} is malformed`, 'write it as http://HOST:PORT, e.g. http://10.0.0.5:2379');
    }
    if (u.protocol !== 'http:' && u.protocol !== 'https:') {
      throw invalid(`etcd URL ${JSON.stringify(p)} uses ${u.protocol.slice(0, -1)}, not http or https`, 'write it as http://HOST:PORT, e.g. http://10.0.0.5:2379');
    }
    if (u.username || u.password || (u.pathname !== '/' && u.pathname !== '') || u.search || u.hash || !u.hostname) {
      throw invalid(`etcd URL ${JSON.stringify(p)} has more than a scheme, host and port`, 'write it as http://HOST:PORT, e.g. http://10.0.0.5:2379');
    }
    if (u.port === '') throw invalid(`etcd URL ${JSON.stringify(p)} has no port`, 'etcd serves clients on port 2379 unless configured otherwise: http://HOST:2379');
    const canonical = `${u.protocol}//${u.host}`;
    if (!out.includes(canonical)) out.push(canonical);
  }
  return out;
}

/** A key-value pair as etcd holds it. */
export interface Kv {
  readonly key: string;
  readonly value: string;
  readonly createRevision: string;
  readonly modRevision: string;
  readonly version: number;
  /** The etcd lease the key is bound to; '0' for none. */
  readonly lease: string;
}

export interface RangeResult {
  readonly kvs: readonly Kv[];
  /** The store's revision the read saw (watch from revision + 1 to miss nothing). */
  readonly revision: string;
}

/** A comparison of a transaction (etcd's Compare), on one key or, with prefix, every key under it. */
export type Compare =
  | { readonly key: string; readonly prefix?: boolean; readonly target: 'version'; readonly op: '=' | '!=' | '<' | '>'; readonly value: number }
  | { readonly key: string; readonly prefix?: boolean; readonly target: 'create' | 'mod'; readonly op: '=' | '!=' | '<' | '>'; readonly value: string }
  | { readonly key: string; readonly target: 'value'; readonly op: '=' | '!='; readonly value: string }
  | { readonly key: string; readonly prefix?: boolean; readonly target: 'lease'; readonly op: '=' | '!='; readonly value: string };

/** An operation of a transaction's branch. */
export type TxnOp =
  | { readonly put: string; readonly value: string; readonly lease?: string }
  | { readonly delete: string; readonly prefix?: boolean }
  | { readonly range: string; readonly prefix?: boolean };

export interface TxnResult {
  readonly succeeded: boolean;
  readonly revision: string;
  /** The kvs read by each `range` op of the branch that ran, in order. */
  readonly ranges: readonly (readonly Kv[])[];
}

export type WatchEvent =
  | { readonly type: 'put'; readonly kv: Kv; readonly prev: Kv | undefined }
  | { readonly type: 'delete'; readonly kv: Kv; readonly prev: Kv | undefined };

/** Why a watch ended. */
export type WatchEnd =
  | { readonly kind: 'stopped' }
  /** The revision asked for is older than etcd keeps: list again and watch from there. */
  | { readonly kind: 'compacted'; readonly compactRevision: string }
  /** The stream broke (etcd went away, a timeout): list again and watch from there. */
  | { readonly kind: 'broken'; readonly error: Error };

export interface Watch {
  /** Ends the watch (closes the stream); `ended` then resolves with 'stopped'. */
  stop(): void;
  readonly ended: Promise<WatchEnd>;
}

/**
 * etcd answered with an error (gRPC status in `grpcCode`: 5 not found, 11 compacted, ...), or
 * could not be reached (code UNAVAILABLE). Callers test grpcCode, never the text.
 */
export class EtcdError extends CtnetError {
  readonly grpcCode: number | undefined;
  constructor(code: CtnetError['code'], message: string, hint: string | undefined, grpcCode: number | undefined, cause?: unknown) {
    super(code, message, hint, { cause });
    this.name = 'EtcdError';
    this.grpcCode = grpcCode;
  }
  get unreachable(): boolean {
    return this.code === 'UNAVAILABLE';
  }
}

export const GRPC_NOT_FOUND = 5;
export const GRPC_OUT_OF_RANGE = 11; // "required revision has been compacted"
const GRPC_UNAVAILABLE = 14;
const GRPC_DEADLINE = 4;

const b64 = (s: string) => Buffer.from(s, 'utf8').toString('base64');
const unb64 = (s: string | undefined) => (s === undefined ? '' : Buffer.from(s, 'base64').toString('utf8'));

/** The end of the range holding every key that starts with prefix (the prefix's last byte plus one). */
export function prefixEnd(prefix: string): string {
  const b = Buffer.from(prefix, 'utf8');
  for (let i = b.length - 1; i >= 0; i--) {
    if (b[i]! < 0xff) {
      const end = Buffer.from(b.subarray(0, i + 1));
      end[i]!++;
      return end.toString('base64');
    }
  }
  return Buffer.from([0]).toString('base64'); // every key
}

interface RawKv {
  key?: string; value?: string; create_revision?: string; mod_revision?: string; version?: string; lease?: string;
}
const toKv = (r: RawKv): Kv => ({
  key: unb64(r.key), value: unb64(r.value), createRevision: r.create_revision ?? '0', modRevision: r.mod_revision ?? '0',
  version: Number(r.version ?? 0), lease: r.lease ?? '0',
});

interface Header { revision?: string }

const TARGET = { version: 'VERSION', create: 'CREATE', mod: 'MOD', value: 'VALUE', lease: 'LEASE' } as const;
const RESULT = { '=': 'EQUAL', '!=': 'NOT_EQUAL', '<': 'LESS', '>': 'GREATER' } as const;
const VALUE_FIELD = { version: 'version', create: 'create_revision', mod: 'mod_revision', value: 'value', lease: 'lease' } as const;

function rawCompare(c: Compare): Record<string, unknown> {
  return {
    key: b64(c.key),
    ...('prefix' in c && c.prefix ? { range_end: prefixEnd(c.key) } : {}),
    target: TARGET[c.target],
    result: RESULT[c.op],
    [VALUE_FIELD[c.target]]: c.target === 'value' ? b64(c.value) : String(c.value),
  };
}

function rawOp(o: TxnOp): Record<string, unknown> {
  if ('put' in o) return { request_put: { key: b64(o.put), value: b64(o.value), ...(o.lease ? { lease: o.lease } : {}) } };
  if ('delete' in o) return { request_delete_range: { key: b64(o.delete), ...(o.prefix ? { range_end: prefixEnd(o.delete) } : {}) } };
  return { request_range: { key: b64(o.range), ...(o.prefix ? { range_end: prefixEnd(o.range) } : {}) } };
}

/** The words of a failed fetch: "connection refused", "timed out after 2000 ms", ... */
function reasonOf(e: unknown, timeoutMs: number): { text: string; sent: boolean } {
  const err = e as Error & { cause?: { code?: string; message?: string } };
  if (err?.name === 'TimeoutError') return { text: `no answer within ${timeoutMs} ms`, sent: true };
  const code = err?.cause?.code;
  const words: Record<string, string> = {
    ECONNREFUSED: 'connection refused', EHOSTUNREACH: 'host unreachable', ENETUNREACH: 'network unreachable',
    ENOTFOUND: 'no such host name', EAI_AGAIN: 'host name lookup failed', ECONNRESET: 'connection reset', EPIPE: 'connection closed',
  };
  const before = code === 'ECONNREFUSED' || code === 'EHOSTUNREACH' || code === 'ENETUNREACH' || code === 'ENOTFOUND' || code === 'EAI_AGAIN';
  return { text: (code && words[code]) ?? err?.cause?.message ?? err?.message ?? String(e), sent: !before };
}

export interface EtcdClientOptions {
  /** Per request (default DEFAULT_TIMEOUT_MS, or env CTNET_ETCD_TIMEOUT_MS). */
  readonly timeoutMs?: number;
}

export class EtcdClient {
  readonly endpoints: readonly string[];
  readonly timeoutMs: number;
  /** The endpoint that answered last goes first. */
  #order: string[];

  constructor(endpoints: readonly string[], options: EtcdClientOptions = {}) {
    if (endpoints.length === 0) throw invalid('no etcd endpoint given', 'write --etcd http://HOST:2379');
    this.endpoints = endpoints;
    this.#order = [...endpoints];
    this.timeoutMs = options.timeoutMs ?? (Number(process.env.CTNET_ETCD_TIMEOUT_MS) || DEFAULT_TIMEOUT_MS);
  }

  /** "etcd at http://a:2379" or "etcd at http://a:2379, http://b:2379" */
  get where(): string {
    return `etcd at ${this.endpoints.join(', ')}`;
  }

  /**
   * POSTs body to path on the first endpoint that answers. Another endpoint is tried after a
   * failure only when the request cannot have been applied (it was never sent), or when it is
   * safe to repeat (idempotent: reads, keepalives, puts of the same value).
   */
  async #call<T>(path: string, body: unknown, idempotent: boolean): Promise<T> {
    const failures: string[] = [];
    for (const ep of [...this.#order]) {
      let res: Response;
      try {
        res = await fetch(`${ep}${path}`, {
          method: 'POST', body: JSON.stringify(body), headers: { 'content-type': 'application/json' },
          signal: AbortSignal.timeout(this.timeoutMs),
        });
      } catch (e) {
        const r = reasonOf(e, this.timeoutMs);
        failures.push(`${ep}: ${r.text}`);
        if (r.sent && !idempotent) break;
        continue;
      }
      let data: Record<string, unknown>;
      try {
        data = (await res.json()) as Record<string, unknown>;
      } catch (e) {
        failures.push(`${ep}: ${reasonOf(e, this.timeoutMs).text} (HTTP ${res.status}, not etcd's JSON gateway?)`);
        if (!idempotent) break;
        continue;
      }
      const grpc = typeof data.code === 'number' ? data.code : undefined;
      if (grpc !== undefined && grpc !== 0) {
        const message = String(data.message ?? data.error ?? `error ${grpc}`);
        if ((grpc === GRPC_UNAVAILABLE || grpc === GRPC_DEADLINE) && idempotent) {
          failures.push(`${ep}: ${message}`);
          continue;
        }
        throw new EtcdError(grpc === GRPC_UNAVAILABLE || grpc === GRPC_DEADLINE ? 'UNAVAILABLE' : 'STATE',
          `etcd at ${ep} refused ${path}: ${message}`, undefined, grpc);
      }
      if (!res.ok) {
        failures.push(`${ep}: HTTP ${res.status} (not etcd's v3 JSON gateway?)`);
        if (!idempotent) break;
        continue;
      }
      if (ep !== this.#order[0]) this.#order = [ep, ...this.#order.filter((x) => x !== ep)];
      return data as T;
    }
    throw this.unreachable(failures.join('; '));
  }

  /** The error every command gets when no endpoint answered. */
  unreachable(detail: string): EtcdError {
    return new EtcdError('UNAVAILABLE', `${this.where} is unreachable: ${detail}`,
      'check the --etcd URL given at `ctnet cluster join` and that etcd runs and is reachable from this host', undefined);
  }

  /** One key, or every key under a prefix (sorted by key). */
  async range(key: string, options: { prefix?: boolean; revision?: string; limit?: number } = {}): Promise<RangeResult> {
    const r = await this.#call<{ header?: Header; kvs?: RawKv[] }>('/v3/kv/range', {
      key: b64(key), ...(options.prefix ? { range_end: prefixEnd(key) } : {}),
      ...(options.revision ? { revision: options.revision } : {}), ...(options.limit ? { limit: options.limit } : {}),
    }, true);
    return { kvs: (r.kvs ?? []).map(toKv), revision: r.header?.revision ?? '0' };
  }

  async get(key: string): Promise<Kv | undefined> {
    return (await this.range(key)).kvs[0];
  }

  async put(key: string, value: string, options: { lease?: string } = {}): Promise<string> {
    const r = await this.#call<{ header?: Header }>('/v3/kv/put', { key: b64(key), value: b64(value), ...(options.lease ? { lease: options.lease } : {}) }, true);
    return r.header?.revision ?? '0';
  }

  /** Deletes a key (or every key under a prefix); returns how many were deleted. */
  async delete(key: string, options: { prefix?: boolean } = {}): Promise<number> {
    const r = await this.#call<{ deleted?: string }>('/v3/kv/deleterange', { key: b64(key), ...(options.prefix ? { range_end: prefixEnd(key) } : {}) }, true);
    return Number(r.deleted ?? 0);
  }

  /** If every comparison holds, runs success, else failure: atomically (compare-and-swap). */
  async txn(t: { compare: readonly Compare[]; success: readonly TxnOp[]; failure?: readonly TxnOp[] }): Promise<TxnResult> {
    type Resp = { response_range?: { kvs?: RawKv[] } };
    const r = await this.#call<{ header?: Header; succeeded?: boolean; responses?: Resp[] }>('/v3/kv/txn', {
      compare: t.compare.map(rawCompare), success: t.success.map(rawOp), failure: (t.failure ?? []).map(rawOp),
    }, false);
    const ranges = (r.responses ?? []).filter((x) => 'response_range' in x).map((x) => (x.response_range?.kvs ?? []).map(toKv));
    return { succeeded: r.succeeded === true, revision: r.header?.revision ?? '0', ranges };
  }

  /** A new lease of ttl seconds (etcd may raise a very short one to its minimum). */
  async leaseGrant(ttl: number): Promise<{ id: string; ttl: number }> {
    const r = await this.#call<{ ID?: string; TTL?: string; error?: string }>('/v3/lease/grant', { TTL: ttl }, false);
    if (!r.ID || r.error) throw new EtcdError('STATE', `${this.where} granted no lease: ${r.error ?? 'no id in its answer'}`, undefined, undefined);
    return { id: r.ID, ttl: Number(r.TTL ?? ttl) };
  }

  /** Renews a lease once; returns its TTL again, or 0 when etcd no longer has it (expired, revoked). */
  async leaseKeepAlive(id: string): Promise<number> {
    const r = await this.#call<{ result?: { TTL?: string }; error?: { code?: number; message?: string } }>('/v3/lease/keepalive', { ID: id }, true);
    if (r.error) throw new EtcdError('STATE', `${this.where} refused to renew lease ${id}: ${r.error.message ?? ''}`, undefined, r.error.code);
    return Number(r.result?.TTL ?? 0);
  }

  /** Seconds a lease has left (-1 when etcd does not have it) and the TTL it was granted. */
  async leaseTimeToLive(id: string): Promise<{ ttl: number; granted: number }> {
    const r = await this.#call<{ TTL?: string; grantedTTL?: string }>('/v3/lease/timetolive', { ID: id }, true);
    return { ttl: Number(r.TTL ?? -1), granted: Number(r.grantedTTL ?? 0) };
  }

  /** Revokes a lease, deleting every key bound to it; a lease already gone is no error. */
  async leaseRevoke(id: string): Promise<void> {
    try {
      await this.#call('/v3/lease/revoke', { ID: id }, true);
    } catch (e) {
      if (e instanceof EtcdError && e.grpcCode === GRPC_NOT_FOUND) return;
      throw e;
    }
  }

  /**
   * Watches a key (or a prefix) from a revision: onEvents gets each batch in revision order with
   * the store's revision after it. Ends when stopped, when the revision was compacted, or when the
   * stream breaks; the caller lists again and watches on (see follow()). Never retries by itself.
   */
  watch(key: string, options: { prefix?: boolean; startRevision: string; prevKv?: boolean }, onEvents: (events: readonly WatchEvent[], revision: string) => void | Promise<void>): Watch {
    let abort = new AbortController();
    let stopped = false;
    const ended = (async (): Promise<WatchEnd> => {
      const failures: string[] = [];
      for (const ep of [...this.#order]) {
        if (stopped) return { kind: 'stopped' };
        // One controller per endpoint: a timeout on one must not abort the try of the next.
        abort = new AbortController();
        const mine = abort;
        // Only the answer's start is bounded: the stream itself lives as long as the watch.
        const first = setTimeout(() => mine.abort(new DOMException('timeout', 'TimeoutError')), this.timeoutMs);
        let res: Response;
        try {
          res = await fetch(`${ep}/v3/watch`, {
            method: 'POST', headers: { 'content-type': 'application/json' }, signal: abort.signal,
            body: JSON.stringify({
              create_request: {
                key: b64(key), ...(options.prefix ? { range_end: prefixEnd(key) } : {}),
                start_revision: options.startRevision, prev_kv: options.prevKv ?? false,
              },
            }),
          });
        } catch (e) {
          clearTimeout(first);
          if (stopped) return { kind: 'stopped' };
          failures.push(`${ep}: ${reasonOf(e, this.timeoutMs).text}`);
          continue;
        }
        try {
          return await this.#readWatch(res, () => clearTimeout(first), onEvents);
        } catch (e) {
          clearTimeout(first);
          if (stopped) return { kind: 'stopped' };
          return { kind: 'broken', error: e instanceof Error ? e : new Error(String(e)) };
        }
      }
      return { kind: 'broken', error: this.unreachable(failures.join('; ')) };
    })();
    return {
      stop() {
        stopped = true;
        abort.abort();
      },
      ended,
    };
  }

  async #readWatch(res: Response, started: () => void, onEvents: (events: readonly WatchEvent[], revision: string) => void | Promise<void>): Promise<WatchEnd> {
    if (!res.ok || !res.body) throw new Error(`etcd answered the watch with HTTP ${res.status}`);
    const decoder = new TextDecoder();
    let buf = '';
    for await (const chunk of res.body) {
      buf += decoder.decode(chunk as Uint8Array, { stream: true });
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl).trim();
        buf = buf.slice(nl + 1);
        if (!line) continue;
        const msg = JSON.parse(line) as { result?: RawWatchResponse; error?: { message?: string; grpc_code?: number; http_code?: number } };
        if (msg.error) throw new Error(`etcd ended the watch: ${msg.error.message ?? JSON.stringify(msg.error)}`);
        const r = msg.result ?? {};
        if (r.created) started();
        if (r.compact_revision && r.compact_revision !== '0') return { kind: 'compacted', compactRevision: r.compact_revision };
        if (r.canceled) throw new Error(`etcd canceled the watch: ${r.cancel_reason ?? 'no reason given'}`);
        if (r.events?.length) {
          await onEvents(r.events.map((ev) => ({
            type: ev.type === 'DELETE' ? 'delete' as const : 'put' as const, kv: toKv(ev.kv ?? {}), prev: ev.prev_kv ? toKv(ev.prev_kv) : undefined,
          })), r.header?.revision ?? '0');
        }
      }
    }
    throw new Error('etcd closed the watch stream');
  }
}

interface RawWatchResponse {
  header?: Header;
  created?: boolean;
  canceled?: boolean;
  cancel_reason?: string;
  compact_revision?: string;
  events?: { type?: 'PUT' | 'DELETE'; kv?: RawKv; prev_kv?: RawKv }[];
}

/** What follow() hands its consumer. */
export interface FollowHandlers {
  /**
   * Everything under the prefix, at revision: at the start, and again after every break or
   * compaction. The consumer reconciles against it; nothing is ever implied deleted by an error.
   */
  snapshot(kvs: readonly Kv[], revision: string): void | Promise<void>;
  events(events: readonly WatchEvent[], revision: string): void | Promise<void>;
  /** A break, with how long follow() waits before listing again. */
  broken?(reason: string, retryMs: number): void;
}

export interface Follower {
  /** Lists again now and watches from there (e.g. after the caller saw etcd come back). */
  restart(): void;
  stop(): Promise<void>;
}

/**
 * Keeps a consumer in step with every key under a prefix: list, then watch from the list's
 * revision + 1; after a compaction or a broken stream, wait (100 ms doubling to 5 s, as flannel
 * does) and list again. An error only ever delays; it never empties the consumer's view.
 */
export function follow(client: EtcdClient, prefix: string, h: FollowHandlers): Follower {
  let stopped = false;
  let current: Watch | undefined;
  let wake: (() => void) | undefined;
  let backoff = 100;
  const sleep = (ms: number) => new Promise<void>((r) => {
    const t = setTimeout(r, ms);
    wake = () => { clearTimeout(t); r(); };
  });
  const loop = (async () => {
    while (!stopped) {
      let reason: string;
      try {
        const list = await client.range(prefix, { prefix: true });
        if (stopped) break;
        await h.snapshot(list.kvs, list.revision);
        current = client.watch(prefix, { prefix: true, startRevision: String(BigInt(list.revision) + 1n), prevKv: true }, async (evs, rev) => {
          backoff = 100;
          await h.events(evs, rev);
        });
        const end = await current.ended;
        current = undefined;
        if (end.kind === 'stopped') {
          if (stopped) break;
          backoff = 100;
          continue; // restart(): list again at once
        }
        reason = end.kind === 'compacted' ? `revision compacted (at ${end.compactRevision})` : end.error.message;
      } catch (e) {
        reason = (e as Error).message;
      }
      if (stopped) break;
      h.broken?.(reason, backoff);
      await sleep(backoff);
      backoff = Math.min(backoff * 2, 5_000);
    }
  })();
  return {
    restart() {
      backoff = 100;
      current?.stop();
      wake?.();
    },
    async stop() {
      stopped = true;
      current?.stop();
      wake?.();
      await loop;
    },
  };
}
