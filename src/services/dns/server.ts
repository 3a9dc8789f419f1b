// The DNS server's sockets and wire: one UDP socket and one TCP listener per gateway address of each
// network with DNS on, opened and closed one by one as networks come and go (a change never
// restarts the others). Plain queries are read and answered by hand (wire.ts), with decisions kept
// per question until the zone changes; anything else is parsed and written by dns-packet; a packet it cannot parse gets
// FORMERR when its header is readable and is dropped otherwise; no packet ever stops the server.
// It listens only on ctnet's gateways: never an open resolver on the host's other addresses.
import { createSocket, type Socket as UdpSocket } from 'node:dgram';
import { createServer, type Server, type Socket } from 'node:net';
import * as dns from 'dns-packet';
import { decide, TTL, type Zone, type ZoneNetwork } from './zone.ts';
import type { UpstreamPool } from './upstream.ts';
import { answerRecord, assemble, EDNS_SIZE, plainQuery, prepare, questionName, soaRecord, typeName, type Prepared } from './wire.ts';

const RCODE = { NOERROR: 0, FORMERR: 1, SERVFAIL: 2, NXDOMAIN: 3, NOTIMP: 4, REFUSED: 5 } as const;
/** A TCP client idle this long is closed; at most this many TCP clients per listener. */
const TCP_IDLE_MS = 10_000;
const TCP_MAX = 128;

export interface Resolver {
  /** The zone, current at this moment (the store is read when it changed). */
  zone(): Zone;
  /** The host's resolvers (for networks without --dns-forward). */
  hostResolvers(): readonly string[];
  /** Where forwarded queries go out (long-lived sockets per upstream). */
  readonly upstream: UpstreamPool;
  log(message: string): void;
}

/** A FORMERR/SERVFAIL/REFUSED answer echoing the query's header and question, from raw bytes. */
function bare(query: Buffer, rcode: number): Buffer | undefined {
  if (query.length < 12) return undefined;
  const out = Buffer.alloc(12);
  query.copy(out, 0, 0, 12);
  // QR=1, opcode kept, RD kept, RA=1, rcode; no records (the question may be what was malformed).
  const flags = 0x8000 | (query.readUInt16BE(2) & 0x7900) | 0x0080 | rcode;
  out.writeUInt16BE(flags, 2);
  out.fill(0, 4, 12);
  return out;
}

let rotation = 0;

/**
 * Per-client rate limit (UDP): a token bucket per source address, CTNET_DNS_CLIENT_QPS queries a
 * second (default 5000, 0: none) with a second's worth of burst. A query over the limit is dropped,
 * not answered (an answer to a spoofed source would make ctnetd an amplifier): one client's flood
 * costs the others nothing but the parsing of its packets. TCP needs none: a connection is a
 * handshake, one query at a time, and at most TCP_MAX of them.
 */
export class RateLimit {
  readonly #qps: number;
  readonly #buckets = new Map<string, { tokens: number; at: number }>();
  constructor(qps: number) {
    this.#qps = qps;
  }
  allow(client: string, now = performance.now()): boolean {
    if (this.#qps <= 0) return true;
    let b = this.#buckets.get(client);
    if (!b) {
      if (this.#buckets.size >= 4096) this.#buckets.clear(); // bounded: a forgotten client starts with a full bucket
      b = { tokens: this.#qps, at: now };
      this.#buckets.set(client, b);
    }
    b.tokens = Math.min(this.#qps, b.tokens + ((now - b.at) / 1000) * this.#qps);
    b.at = now;
    if (b.tokens < 1) return false;
    b.tokens -= 1;
    return true;
  }
}
const limit = new RateLimit(process.env.CTNET_DNS_CLIENT_QPS === undefined ? 5000 : Number(process.env.CTNET_DNS_CLIENT_QPS) || 0);

/** What to do with a query: send these bytes, send nothing, or forward it. */
export type Outcome = Buffer | undefined | { readonly upstreams: readonly string[] };

/** A decision kept for a question until the zone changes: a prepared local answer, or where to forward. */
type Kept = Prepared | { readonly upstreams: readonly string[] } | 'refused';

/**
 * Decisions of the current zone by network, size limit, EDNS, RD and question (type, class, lower
 * case name): a repeated question costs a map lookup and one buffer of the answer's size. Emptied
 * when the zone changes (the store's change counter moved) and when full.
 */
const cache = new Map<string, Kept>();
let cachedZone: Zone | undefined;
const CACHE_MAX = 10_000;

/**
 * The answer to one query arriving on network n's gateway, decided now (no promise: the hot path
 * for local names stays synchronous); a forwarded query comes back as its upstreams.
 */
export function answerNow(r: Resolver, network: string, query: Buffer, overTcp: boolean): Outcome {
  if (query.length < 12 || (query[2]! & 0x80) !== 0) return undefined; // not a query: never answer an answer
  const zone = r.zone();
  if (zone !== cachedZone) {
    cache.clear();
    cachedZone = zone;
  }
  const opcode = (query[2]! >> 3) & 0xf;
  const p = opcode === 0 ? plainQuery(query) : undefined;
  if (!p) return general(zone, network, query, overTcp);
  const limit = overTcp ? 65535 : p.edns === undefined ? 512 : Math.max(512, Math.min(p.edns, EDNS_SIZE));
  const key = `${network}\0${limit}${p.edns === undefined ? '' : 'e'}${p.rd ? 'r' : ''}${p.key}`;
  let kept = cache.get(key);
  if (kept === undefined) {
    const n = zone.networks.get(network);
    if (!n) return bare(query, RCODE.REFUSED); // its DNS was just turned off or the network removed
    const d = decide(zone, n, questionName(query), typeName(p.qtype), 0);
    if (d.kind === 'refused') kept = 'refused';
    else if (d.kind === 'forward') kept = { upstreams: d.upstreams };
    else {
      const flags = 0x8400 | 0x0080 | (p.rd ? 0x0100 : 0) | RCODE[d.rcode]; // QR AA RA RD rcode
      const answers = d.answers.map((a) => answerRecord(a, TTL));
      const soa = !answers.length && d.soa ? soaRecord(d.soa, zone.serial % 2 ** 32, TTL) : undefined;
      kept = prepare(flags, answers, soa, p.edns !== undefined);
      // Too large for the client's UDP size: the header and question only, truncated (it asks again over TCP).
      if (kept.size + p.qend - 12 > limit) kept = prepare(flags | 0x0200, [], undefined, p.edns !== undefined);
    }
    if (cache.size >= CACHE_MAX) cache.clear();
    cache.set(key, kept);
  }
  if (kept === 'refused') return bare(query, RCODE.REFUSED);
  if ('upstreams' in kept) return kept;
  return assemble(kept, query, p.qend, kept.answers.length > 1 ? rotation++ : 0);
}

/** Anything but a plain query: decoded by dns-packet (FORMERR when it cannot), answered without the cache. */
function general(zone: Zone, network: string, query: Buffer, overTcp: boolean): Outcome {
  let packet: dns.DecodedPacket;
  try {
    packet = dns.decode(query);
  } catch {
    return bare(query, RCODE.FORMERR);
  }
  const opcode = (query.readUInt16BE(2) >> 11) & 0xf;
  if (opcode !== 0) return bare(query, RCODE.NOTIMP);
  const q = packet.questions?.[0];
  if (!q || packet.questions!.length !== 1) return bare(query, RCODE.FORMERR);
  const n: ZoneNetwork | undefined = zone.networks.get(network);
  if (!n) return bare(query, RCODE.REFUSED);
  const opt = packet.additionals?.find((a) => a.type === 'OPT') as dns.OptAnswer | undefined;
  const d = decide(zone, n, q.name, q.type, rotation++);
  if (d.kind === 'refused') return bare(query, RCODE.REFUSED);
  if (d.kind === 'forward') return { upstreams: d.upstreams };
  const rd = packet.flag_rd ? dns.RECURSION_DESIRED : 0;
  const authorities: dns.Answer[] = d.soa ? [{
    name: d.soa, type: 'SOA', ttl: TTL, class: 'IN',
    data: { mname: `ns.${d.soa}`, rname: `hostmaster.${d.soa}`, serial: zone.serial % 2 ** 32, refresh: 60, retry: 60, expire: 60, minimum: TTL },
  }] : [];
  const reply = (answers: dns.Answer[], tc = 0): Buffer => dns.encode({
    type: 'response', id: packet.id ?? 0,
    flags: dns.AUTHORITATIVE_ANSWER | dns.RECURSION_AVAILABLE | rd | tc | RCODE[d.rcode],
    questions: [q], answers, authorities: answers.length ? [] : authorities,
    additionals: opt ? [{ type: 'OPT', name: '.', udpPayloadSize: EDNS_SIZE, extendedRcode: 0, ednsVersion: 0, flags: 0, flag_do: false, options: [] } as dns.OptAnswer] : [],
  });
  const answers = d.answers.map((a): dns.Answer => ({ name: a.name, type: a.type, ttl: TTL, class: 'IN', data: a.data }));
  const out = reply(answers);
  const limit = overTcp ? 65535 : Math.max(512, Math.min(opt?.udpPayloadSize ?? 512, EDNS_SIZE));
  return out.length <= limit ? out : reply([], dns.TRUNCATED_RESPONSE);
}

/** The answer to one query, forwarded ones included; undefined: send nothing. */
export async function answerQuery(r: Resolver, network: string, query: Buffer, overTcp: boolean): Promise<Buffer | undefined> {
  const o = answerNow(r, network, query, overTcp);
  if (o === undefined || Buffer.isBuffer(o)) return o;
  return forwardQuery(r, o.upstreams, query, overTcp);
}

async function forwardQuery(r: Resolver, networkUpstreams: readonly string[], query: Buffer, overTcp: boolean): Promise<Buffer | undefined> {
  const upstreams = networkUpstreams.length ? networkUpstreams : r.hostResolvers();
  const answer = upstreams.length ? await r.upstream.forward(upstreams, query, overTcp) : undefined;
  return answer ?? bare(query, RCODE.SERVFAIL);
}

/** One gateway's sockets. */
export class Listener {
  readonly address: string;
  readonly network: string;
  #udp: UdpSocket | undefined;
  #tcp: Server | undefined;
  readonly #clients = new Set<Socket>();

  constructor(address: string, network: string) {
    this.address = address;
    this.network = network;
  }

  /** Binds both sockets; throws (and holds nothing) when the address is not there (yet). */
  async open(r: Resolver): Promise<void> {
    // A larger receive buffer (up to the host's net.core.rmem_max) rides out a pause of the event loop
    // (a store read waiting on a writer's checkpoint, a garbage collection) without dropping queries.
    const udp = createSocket({ type: this.address.includes(':') ? 'udp6' : 'udp4', reuseAddr: false, recvBufferSize: 1 << 20 });
    try {
      await new Promise<void>((resolve, reject) => {
        udp.once('error', reject);
        udp.bind({ address: this.address, port: 53, exclusive: true }, () => {
          udp.off('error', reject);
          resolve();
        });
      });
    } catch (e) {
      udp.close();
      throw e;
    }
    udp.on('error', (e) => r.log(`udp ${this.address}: ${e.message}`));
    udp.on('message', (msg, rinfo) => {
      if (!limit.allow(rinfo.address)) return;
      let o: Outcome;
      try {
        o = answerNow(r, this.network, msg, false);
      } catch (e) {
        return r.log(`query from ${rinfo.address}: ${(e as Error).message}`);
      }
      if (o === undefined) return;
      if (Buffer.isBuffer(o)) return void udp.send(o, rinfo.port, rinfo.address);
      void forwardQuery(r, o.upstreams, msg, false).then((out) => {
        if (out && this.#udp) this.#udp.send(out, rinfo.port, rinfo.address);
      }, (e: Error) => r.log(`query from ${rinfo.address}: ${e.message}`));
    });
    const tcp = createServer((sock) => this.#serveTcp(r, sock));
    try {
      await new Promise<void>((resolve, reject) => {
        tcp.once('error', reject);
        tcp.listen({ host: this.address, port: 53, exclusive: true }, () => {
          tcp.off('error', reject);
          resolve();
        });
      });
    } catch (e) {
      udp.close();
      tcp.close();
      throw e;
    }
    tcp.on('error', (e) => r.log(`tcp ${this.address}: ${e.message}`));
    this.#udp = udp;
    this.#tcp = tcp;
  }

  #serveTcp(r: Resolver, sock: Socket): void {
    if (this.#clients.size >= TCP_MAX) return void sock.destroy();
    this.#clients.add(sock);
    sock.setTimeout(TCP_IDLE_MS, () => sock.destroy());
    sock.on('close', () => this.#clients.delete(sock));
    sock.on('error', () => {});
    let buf = Buffer.alloc(0);
    let chain: Promise<void> = Promise.resolve();
    sock.on('data', (d) => {
      buf = Buffer.concat([buf, d]);
      while (buf.length >= 2 && buf.length >= 2 + buf.readUInt16BE(0)) {
        const msg = buf.subarray(2, 2 + buf.readUInt16BE(0));
        buf = buf.subarray(2 + msg.length);
        // Answers go back in the order asked (one connection, one query at a time).
        chain = chain.then(async () => {
          const out = await answerQuery(r, this.network, Buffer.from(msg), true).catch(() => undefined);
          if (!out) return void sock.destroy(); // unparseable even as a header: end the connection
          if (sock.destroyed) return;
          const len = Buffer.alloc(2);
          len.writeUInt16BE(out.length);
          sock.write(Buffer.concat([len, out]));
        });
      }
    });
  }

  close(): void {
    this.#udp?.close();
    this.#udp = undefined;
    this.#tcp?.close();
    this.#tcp = undefined;
    for (const c of this.#clients) c.destroy();
  }
}
