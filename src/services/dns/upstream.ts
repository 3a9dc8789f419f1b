// Forwarding: a query that is not the network's goes, as the client sent it (EDNS and all, only its
// id changed), to the network's --dns-forward resolvers or else the host's, in order: over UDP, on a
// long-lived socket per upstream, and over TCP when the answer is truncated or the client asked over
// TCP. The first answer wins; when every upstream fails, the caller says SERVFAIL, promptly.
//
// Why long-lived sockets: a fresh socket per query (the first version) cost a socket(), bind() and
// close() each, and capped forwarding at a fifth of the upstream's own rate (bench/dns.ts). One
// socket per upstream carries every query in flight to it, told apart by a random id unique on the
// socket and checked against the question. What a fresh socket gave for free is kept on purpose:
// - only the upstream can answer: the socket is connect()ed to it, so the kernel drops datagrams from
//   anyone else, and an answer must carry an id in flight *and* the question asked;
// - the source port still changes: a socket is retired after RETIRE_QUERIES queries or RETIRE_MS
//   (whichever first) and a new one (a new random port) takes the next queries, so a blind spoofer
//   cannot learn the port once and then only guess 16 bits of id for good;
// - an upstream that is down answers ICMP port unreachable, which a connected socket reports as an
//   error: every query waiting on that socket fails at once (and moves to the next upstream) rather
//   than waiting out its timeout.
import { createSocket, type Socket as UdpSocket } from 'node:dgram';
import { readFileSync, statSync } from 'node:fs';
import { connect } from 'node:net';
import { randomFillSync, randomInt } from 'node:crypto';

const TIMEOUT_MS = 2_000;
const STUB = new Set(['127.0.0.53', '127.0.0.54']);
/** A UDP socket takes this many queries, or lives this long, before a fresh one (a new source port) replaces it. */
const RETIRE_QUERIES = 10_000;
const RETIRE_MS = 60_000;
/** Queries in flight on one socket at most (ids are 16 bits); past it, a fresh socket takes over. */
const INFLIGHT_MAX = 16_384;

/** The nameserver lines of a resolv.conf text. */
export function nameservers(text: string): string[] {
  return text.split('\n').map((l) => /^\s*nameserver\s+(\S+)/.exec(l)?.[1]).filter((x): x is string => x !== undefined);
}

let cached: { key: string; servers: string[] } | undefined;

/**
 * The host's resolvers: /etc/resolv.conf's, or, when that names only systemd-resolved's stub
 * (127.0.0.53: it would answer ctnetd from the host's view, but a sandbox's queries must not loop
 * through it), systemd-resolved's own upstreams (/run/systemd/resolve/resolv.conf). Re-read when
 * the file changes.
 */
export function hostResolvers(etc = '/etc/resolv.conf', resolved = '/run/systemd/resolve/resolv.conf'): string[] {
  const stamp = (p: string) => {
    try {
      const s = statSync(p);
      return `${s.ino}:${s.mtimeMs}`;
    } catch {
      return '-';
    }
  };
  const key = `${stamp(etc)} ${stamp(resolved)}`;
  if (cached?.key === key) return cached.servers;
  const read = (p: string) => {
    try {
      return nameservers(readFileSync(p, 'utf8'));
    } catch {
      return [];
    }
  };
  let servers = read(etc);
  if (servers.length > 0 && servers.every((s) => STUB.has(s))) servers = read(resolved);
  servers = servers.filter((s) => !STUB.has(s));
  cached = { key, servers };
  return servers;
}

/** The query with another id (bytes 0-1). */
function withId(query: Buffer, id: number): Buffer {
  const b = Buffer.from(query);
  b.writeUInt16BE(id, 0);
  return b;
}

/**
 * The end of the question section of a message with one question (offset past QTYPE and QCLASS), or
 * undefined when it is not one plain question (a compressed name in a question is not expected).
 */
export function questionEnd(msg: Buffer): number | undefined {
  if (msg.length < 12 || msg.readUInt16BE(4) !== 1) return undefined;
  let i = 12;
  for (;;) {
    if (i >= msg.length) return undefined;
    const len = msg[i]!;
    if (len === 0) break;
    if (len > 63) return undefined;
    i += 1 + len;
  }
  i += 5;
  return i <= msg.length ? i : undefined;
}

/** Same question (name without case, type, class)? */
function sameQuestion(a: Buffer, aEnd: number, b: Buffer): boolean {
  const bEnd = questionEnd(b);
  if (bEnd !== aEnd) return false;
  for (let i = 12; i < aEnd; i++) {
    let x = a[i]!;
    let y = b[i]!;
    if (x >= 0x41 && x <= 0x5a) x |= 0x20;
    if (y >= 0x41 && y <= 0x5a) y |= 0x20;
    if (x !== y) return false;
  }
  return true;
}

interface InFlight {
  readonly query: Buffer;
  readonly qend: number;
  /** performance.now() past which it has timed out. */
  readonly deadline: number;
  readonly resolve: (r: Buffer | undefined) => void;
}

/** Random query ids, drawn from the kernel's CSPRNG a few thousand at a time (randomInt per query costs more than the rest of a send). */
const ids = new Uint16Array(4096);
let idNext = ids.length;
function randomId(): number {
  if (idNext === ids.length) {
    randomFillSync(ids);
    idNext = 0;
  }
  return ids[idNext++]!;
}

/** How often a channel looks for queries past their deadline (one timer per channel, not one per query). */
const SWEEP_MS = 100;

/** One connected UDP socket to one upstream, and the queries in flight on it by id. */
class Channel {
  readonly #sock: UdpSocket;
  readonly #inflight = new Map<number, InFlight>();
  readonly #born = performance.now();
  readonly #timeoutMs: number;
  #ready: Promise<void>;
  #connected = false;
  #sweep: NodeJS.Timeout | undefined;
  #sent = 0;
  #closed = false;
  /** Retired: takes no new queries, and closes when its last one is answered or times out. */
  #retired = false;

  constructor(server: string, port: number, timeoutMs: number) {
    this.#timeoutMs = timeoutMs;
    this.#sock = createSocket(server.includes(':') ? 'udp6' : 'udp4');
    this.#ready = new Promise((resolve, reject) => {
      this.#sock.once('connect', () => {
        this.#connected = true;
        resolve();
      });
      this.#sock.connect(port, server, (e?: Error) => (e ? reject(e) : undefined));
    });
    this.#ready.catch(() => this.#fail());
    this.#sock.on('error', () => this.#fail());
    this.#sock.on('message', (msg) => this.#receive(msg));
  }

  /** Takes new queries? */
  usable(now: number): boolean {
    return !this.#closed && !this.#retired && this.#sent < RETIRE_QUERIES && now - this.#born < RETIRE_MS && this.#inflight.size < INFLIGHT_MAX;
  }

  get inflight(): number {
    return this.#inflight.size;
  }

  retire(): void {
    this.#retired = true;
    if (this.#inflight.size === 0) this.#close();
  }

  ask(query: Buffer, qend: number): Promise<Buffer | undefined> {
    this.#sent++;
    let id = randomId();
    while (this.#inflight.has(id)) id = (id + 1) & 0xffff;
    return new Promise((resolve) => {
      this.#inflight.set(id, { query, qend, deadline: performance.now() + this.#timeoutMs, resolve });
      this.#sweep ??= setInterval(() => this.#expire(), Math.min(SWEEP_MS, this.#timeoutMs));
      const out = withId(query, id);
      const send = () => {
        if (this.#closed) return this.#settle(id, undefined);
        this.#sock.send(out, (e) => e && this.#settle(id, undefined));
      };
      if (this.#connected) send();
      else this.#ready.then(send, () => this.#settle(id, undefined));
    });
  }

  /** Fails the queries past their deadline (a silent upstream: the caller moves to the next one). */
  #expire(): void {
    const now = performance.now();
    for (const [id, f] of this.#inflight) if (f.deadline <= now) this.#settle(id, undefined);
  }

  #receive(msg: Buffer): void {
    if (msg.length < 12 || (msg.readUInt16BE(2) & 0x8000) === 0) return; // not an answer
    const f = this.#inflight.get(msg.readUInt16BE(0));
    // An id in flight but another question: not ours (late, or spoofed); the real answer may follow.
    if (!f || !sameQuestion(f.query, f.qend, msg)) return;
    this.#settle(msg.readUInt16BE(0), msg);
  }

  #settle(id: number, r: Buffer | undefined): void {
    const f = this.#inflight.get(id);
    if (!f) return;
    this.#inflight.delete(id);
    if (this.#inflight.size === 0) {
      clearInterval(this.#sweep);
      this.#sweep = undefined;
    }
    f.resolve(r);
    if (this.#retired && this.#inflight.size === 0) this.#close();
  }

  /** The socket failed (ICMP port unreachable from a connected socket, a send error): everyone waiting fails now. */
  #fail(): void {
    this.#retired = true;
    for (const id of [...this.#inflight.keys()]) this.#settle(id, undefined);
    this.#close();
  }

  #close(): void {
    if (this.#closed) return;
    this.#closed = true;
    try {
      this.#sock.close();
    } catch {
      // already closed by an error
    }
  }
}

/** One TCP exchange (2-byte length prefix); undefined on timeout or error. */
function tcp(server: string, port: number, query: Buffer, qend: number, timeoutMs: number): Promise<Buffer | undefined> {
  return new Promise((resolve) => {
    const id = randomInt(0, 65536);
    const sock = connect({ host: server, port });
    let buf = Buffer.alloc(0);
    const done = (r: Buffer | undefined) => {
      clearTimeout(timer);
      sock.destroy();
      resolve(r);
    };
    const timer = setTimeout(() => done(undefined), timeoutMs);
    sock.on('error', () => done(undefined));
    sock.on('connect', () => {
      const q = withId(query, id);
      const len = Buffer.alloc(2);
      len.writeUInt16BE(q.length);
      sock.write(Buffer.concat([len, q]));
    });
    sock.on('data', (d) => {
      buf = Buffer.concat([buf, d]);
      if (buf.length >= 2 && buf.length >= 2 + buf.readUInt16BE(0)) {
        const msg = buf.subarray(2, 2 + buf.readUInt16BE(0));
        done(msg.length >= 12 && msg.readUInt16BE(0) === id && sameQuestion(query, qend, msg) ? msg : undefined);
      }
    });
    sock.on('end', () => done(undefined));
  });
}

const truncated = (msg: Buffer) => (msg.readUInt16BE(2) & 0x0200) !== 0;

/** The upstreams' UDP channels (one current per upstream, plus retired ones finishing) and the TCP exchanges. */
export class UpstreamPool {
  readonly #port: number;
  readonly #timeoutMs: number;
  readonly #current = new Map<string, Channel>();

  constructor(opts: { port?: number; timeoutMs?: number } = {}) {
    this.#port = opts.port ?? 53;
    this.#timeoutMs = opts.timeoutMs ?? TIMEOUT_MS;
  }

  /** The channel to server that takes the next query (a fresh one when the current is retired or full). */
  #channel(server: string): Channel {
    const now = performance.now();
    let c = this.#current.get(server);
    if (c?.usable(now)) return c;
    c?.retire();
    c = new Channel(server, this.#port, this.#timeoutMs);
    this.#current.set(server, c);
    return c;
  }

  /** Queries in flight on the current channels (tests). */
  inflight(): number {
    let n = 0;
    for (const c of this.#current.values()) n += c.inflight;
    return n;
  }

  /**
   * Asks the upstreams in order; the answer carries the client's id. overTcp: the client asked over
   * TCP (its answer may be larger than UDP carries).
   */
  async forward(upstreams: readonly string[], query: Buffer, overTcp: boolean): Promise<Buffer | undefined> {
    const qend = questionEnd(query);
    if (qend === undefined) return undefined;
    const id = query.readUInt16BE(0);
    for (const server of upstreams) {
      let answer = overTcp
        ? await tcp(server, this.#port, query, qend, this.#timeoutMs)
        : await this.#channel(server).ask(query, qend);
      if (answer && !overTcp && truncated(answer)) answer = (await tcp(server, this.#port, query, qend, this.#timeoutMs)) ?? answer;
      if (answer) return withId(answer, id);
    }
    return undefined;
  }

  /** Closes every channel (the queries in flight fail). */
  close(): void {
    for (const c of this.#current.values()) c.retire();
    this.#current.clear();
  }
}
