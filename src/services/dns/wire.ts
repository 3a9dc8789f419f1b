// The hot path's wire format, by hand: reading a plain query's question and EDNS size without a
// general decoder, and writing local answers as prepared records that point back at the question
// (name compression to offset 12), so an answer is the query's own question bytes (the client's case
// kept) plus records prepared once per zone. dns-packet stays for everything unusual (server.ts).
import { isIPv4 } from 'node:net';
import type { Answer } from './zone.ts';

export const TYPE = { A: 1, NS: 2, CNAME: 5, SOA: 6, PTR: 12, MX: 15, TXT: 16, AAAA: 28, OPT: 41, ANY: 255 } as const;
const TYPE_NAMES = new Map<number, string>(Object.entries(TYPE).map(([k, v]) => [v, k]));
/** Our EDNS answer's UDP payload size (the DNS flag day's 1232: no fragmentation). */
export const EDNS_SIZE = 1232;

/** A plain query: one question, no answer or authority records, at most an OPT record. */
export interface PlainQuery {
  /** Offset past the question (QTYPE and QCLASS). */
  readonly qend: number;
  readonly qtype: number;
  readonly qclass: number;
  /** The question (name, type, class) as text, lower case: the key of the decision. */
  readonly key: string;
  /** The client's EDNS UDP size, or undefined without EDNS. */
  readonly edns: number | undefined;
  readonly rd: boolean;
}

/**
 * The query, when it is plain (one uncompressed question, no answers or authorities, nothing
 * additional but one OPT record that ends the packet); undefined sends it down the general decoder,
 * which also decides FORMERR.
 */
export function plainQuery(q: Buffer): PlainQuery | undefined {
  if (q.length < 17) return undefined;
  if (q.readUInt16BE(4) !== 1 || q.readUInt16BE(6) !== 0 || q.readUInt16BE(8) !== 0) return undefined;
  const ar = q.readUInt16BE(10);
  if (ar > 1) return undefined;
  let i = 12;
  for (;;) {
    if (i >= q.length) return undefined;
    const len = q[i]!;
    if (len === 0) break;
    if (len > 63 || i + 1 + len > q.length) return undefined;
    for (let j = i + 1; j <= i + len; j++) {
      const c = q[j]!;
      // Letters, digits, '-' and '_' only: anything else (a dot inside a label, bytes a string would
      // mangle) takes the general path.
      const lower = c >= 0x41 && c <= 0x5a ? c | 0x20 : c;
      if (!((lower >= 0x61 && lower <= 0x7a) || (c >= 0x30 && c <= 0x39) || c === 0x2d || c === 0x5f)) return undefined;
    }
    i += 1 + len;
  }
  const qend = i + 5;
  if (qend > q.length) return undefined;
  const qtype = q.readUInt16BE(i + 1);
  const qclass = q.readUInt16BE(i + 3);
  let edns: number | undefined;
  if (ar === 1) {
    // The OPT record: root name, type 41, class = UDP size, TTL, RDLENGTH, options (not read).
    if (qend + 11 > q.length || q[qend] !== 0 || q.readUInt16BE(qend + 1) !== TYPE.OPT) return undefined;
    if (qend + 11 + q.readUInt16BE(qend + 9) !== q.length) return undefined;
    edns = q.readUInt16BE(qend + 3);
  } else if (qend !== q.length) return undefined;
  return { qend, qtype, qclass, key: q.toString('latin1', 12, qend).toLowerCase(), edns, rd: (q[2]! & 1) === 1 };
}

/** The name of a plain query's question, lower case, without the trailing dot ('' for the root). */
export function questionName(q: Buffer): string {
  const labels: string[] = [];
  for (let i = 12; q[i]! !== 0; i += 1 + q[i]!) labels.push(q.toString('latin1', i + 1, i + 1 + q[i]!).toLowerCase());
  return labels.join('.');
}

/** The type's mnemonic as zone.ts takes it (numbers of types it does not know as TYPEnnn). */
export const typeName = (t: number): string => TYPE_NAMES.get(t) ?? `TYPE${t}`;

/** A name in wire format (labels), no compression. */
export function encodeName(name: string): Buffer {
  const labels = name.replace(/\.$/, '').split('.').filter(Boolean);
  const out = Buffer.alloc(labels.reduce((a, l) => a + 1 + Buffer.byteLength(l), 1));
  let i = 0;
  for (const l of labels) {
    i = out.writeUInt8(Buffer.byteLength(l), i);
    i += out.write(l, i);
  }
  return out;
}

function record(owner: Buffer, type: number, ttl: number, rdata: Buffer): Buffer {
  const out = Buffer.alloc(owner.length + 10 + rdata.length);
  owner.copy(out, 0);
  let i = owner.length;
  i = out.writeUInt16BE(type, i);
  i = out.writeUInt16BE(1, i); // IN
  i = out.writeUInt32BE(ttl, i);
  i = out.writeUInt16BE(rdata.length, i);
  rdata.copy(out, i);
  return out;
}

/** A pointer to the question's name (offset 12): every answer's owner. */
const QNAME = Buffer.from([0xc0, 0x0c]);

function addressBytes(ip: string): Buffer {
  if (isIPv4(ip)) return Buffer.from(ip.split('.').map(Number));
  const [head = '', tail = ''] = ip.split('::') as [string, string?];
  const h = head ? head.split(':') : [];
  const t = ip.includes('::') && tail ? tail.split(':') : [];
  const groups = ip.includes('::') ? [...h, ...Array(8 - h.length - t.length).fill('0'), ...t] : h;
  const out = Buffer.alloc(16);
  groups.forEach((g, k) => out.writeUInt16BE(parseInt(g, 16), k * 2));
  return out;
}

/** An answer record (owner: the question's name). */
export function answerRecord(a: Answer, ttl: number): Buffer {
  const type = TYPE[a.type];
  return record(QNAME, type, ttl, a.type === 'PTR' ? encodeName(a.data) : addressBytes(a.data));
}

/** The SOA of a network's domain, for negative answers' authority section. */
export function soaRecord(domain: string, serial: number, ttl: number): Buffer {
  const fixed = Buffer.alloc(20);
  fixed.writeUInt32BE(serial >>> 0, 0);
  fixed.writeUInt32BE(60, 4); // refresh
  fixed.writeUInt32BE(60, 8); // retry
  fixed.writeUInt32BE(60, 12); // expire
  fixed.writeUInt32BE(ttl, 16); // minimum: how long a resolver may keep the negative answer
  return record(encodeName(domain), TYPE.SOA, ttl, Buffer.concat([encodeName(`ns.${domain}`), encodeName(`hostmaster.${domain}`), fixed]));
}

/** Our OPT record: payload size EDNS_SIZE, version 0, no flags, no options. */
export const OPT_RECORD = (() => {
  const b = Buffer.alloc(11);
  b.writeUInt16BE(TYPE.OPT, 1);
  b.writeUInt16BE(EDNS_SIZE, 3);
  return b;
})();

/** An answer prepared once: everything but the id and the question, which come from each query. */
export interface Prepared {
  /** Header flags (QR, AA, RA, RD as asked, rcode). */
  readonly flags: number;
  /** Answer records; rotated per query when there are several (round robin). */
  readonly answers: readonly Buffer[];
  readonly authority: Buffer | undefined;
  readonly opt: boolean;
  /** The size of the whole answer but the question. */
  readonly size: number;
}

export function prepare(flags: number, answers: readonly Buffer[], authority: Buffer | undefined, opt: boolean): Prepared {
  const size = 12 + answers.reduce((a, b) => a + b.length, 0) + (authority?.length ?? 0) + (opt ? OPT_RECORD.length : 0);
  return { flags, answers, authority, opt, size };
}

/** The answer to query (whose question ends at qend) from a prepared one; rotate: where the answers start. */
export function assemble(p: Prepared, query: Buffer, qend: number, rotate: number): Buffer {
  const out = Buffer.allocUnsafe(p.size + qend - 12);
  query.copy(out, 0, 0, 2); // the id
  out.writeUInt16BE(p.flags, 2);
  out.writeUInt16BE(1, 4);
  out.writeUInt16BE(p.answers.length, 6);
  out.writeUInt16BE(p.authority ? 1 : 0, 8);
  out.writeUInt16BE(p.opt ? 1 : 0, 10);
  let i = 12 + query.copy(out, 12, 12, qend);
  const n = p.answers.length;
  for (let k = 0; k < n; k++) i += p.answers[(k + rotate) % n]!.copy(out, i);
  if (p.authority) i += p.authority.copy(out, i);
  if (p.opt) OPT_RECORD.copy(out, i);
  return out;
}
