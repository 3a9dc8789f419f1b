// Forwarding: a query that is not the network's goes, as the client sent it (EDNS and all, only its
// id changed), to the network's --dns-forward resolvers or else the host's, in order, over UDP
// with a fresh socket (a random source port per query) and over TCP when the answer is truncated or
// the client asked over TCP. The first answer wins; when every upstream fails, the caller says
// SERVFAIL, promptly.
import { createSocket } from 'node:dgram';
import { readFileSync, statSync } from 'node:fs';
import { connect } from 'node:net';
import { randomInt } from 'node:crypto';

const TIMEOUT_MS = 2_000;
const STUB = new Set(['127.0.0.53', '127.0.0.54']);

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

/** One UDP exchange; undefined on timeout or error. */
function udp(server: string, query: Buffer): Promise<Buffer | undefined> {
  return new Promise((resolve) => {
    const id = randomInt(0, 65536);
    const sock = createSocket(server.includes(':') ? 'udp6' : 'udp4');
    const done = (r: Buffer | undefined) => {
      clearTimeout(timer);
      sock.close();
      resolve(r);
    };
    const timer = setTimeout(() => done(undefined), TIMEOUT_MS);
    sock.on('error', () => done(undefined));
    sock.on('message', (msg, rinfo) => {
      // Only the server asked, with the id sent: anything else is noise (or spoofing) and is ignored.
      if (rinfo.address !== server || rinfo.port !== 53 || msg.length < 12 || msg.readUInt16BE(0) !== id) return;
      done(msg);
    });
    sock.send(withId(query, id), 53, server, (e) => {
      if (e) done(undefined);
    });
  });
}

/** One TCP exchange (2-byte length prefix); undefined on timeout or error. */
function tcp(server: string, query: Buffer): Promise<Buffer | undefined> {
  return new Promise((resolve) => {
    const id = randomInt(0, 65536);
    const sock = connect({ host: server, port: 53 });
    let buf = Buffer.alloc(0);
    const done = (r: Buffer | undefined) => {
      clearTimeout(timer);
      sock.destroy();
      resolve(r);
    };
    const timer = setTimeout(() => done(undefined), TIMEOUT_MS);
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
        done(msg.length >= 12 && msg.readUInt16BE(0) === id ? msg : undefined);
      }
    });
    sock.on('end', () => done(undefined));
  });
}

const truncated = (msg: Buffer) => (msg.readUInt16BE(2) & 0x0200) !== 0;

/**
 * Asks the upstreams in order; the answer carries the client's id. overTcp: the client asked over
 * TCP (its answer may be larger than UDP carries).
 */
export async function forward(upstreams: readonly string[], query: Buffer, overTcp: boolean): Promise<Buffer | undefined> {
  const id = query.readUInt16BE(0);
  for (const server of upstreams) {
    let answer = overTcp ? await tcp(server, query) : await udp(server, query);
    if (answer && !overTcp && truncated(answer)) answer = (await tcp(server, query)) ?? answer;
    if (answer) return withId(answer, id);
  }
  return undefined;
}
