// Connection tracking entries of ctnet's namespace (conntrack-tools). Removing a published port or
// a sandbox must delete the entries that still lead to it, or established flows (UDP above all)
// keep going to an address that is gone or, worse, to the next sandbox that gets it.
import ipaddr from 'ipaddr.js';
import type { Flow } from '../plan/flows.ts';

/** Parses `conntrack -L` text: the first src/dst/sport/dport group is the original direction. */
export function parseFlows(text: string): Flow[] {
  const flows: Flow[] = [];
  for (const line of text.split('\n')) {
    const proto = /^(\S+)\s+\d+/.exec(line)?.[1];
    if (!proto) continue;
    const values = (key: string) => [...line.matchAll(new RegExp(`\\b${key}=(\\S+)`, 'g'))].map((m) => m[1]!);
    const [src, dst, sport, dport] = [values('src'), values('dst'), values('sport'), values('dport')];
    if (src.length < 2 || dst.length < 2) continue;
    const port = (v: string | undefined) => (v === undefined ? undefined : Number(v));
    flows.push({
      proto,
      state: /^\S+\s+\d+\s+\d+\s+([A-Z_]+)\s/.exec(line)?.[1],
      family: src[0]!.includes(':') ? 6 : 4,
      orig: { src: src[0]!, dst: dst[0]!, sport: port(sport[0]), dport: port(dport[0]) },
      reply: { src: src[1]!, dst: dst[1]!, sport: port(sport[1]), dport: port(dport[1]) },
    });
  }
  return flows;
}

/**
 * Parses /proc/net/nf_conntrack: `conntrack -L`'s lines behind the layer 3 protocol's name and
 * number ("ipv4     2 "), with IPv6 addresses written out in full ("fd00:0000:...:0002"); they
 * are written as `conntrack -L` writes them (compressed), so flows compare with recorded addresses.
 */
export function parseProcFlows(text: string): Flow[] {
  const lines = text.split('\n').map((line) => line.replace(/^ipv[46]\s+\d+\s+/, '')
    .replace(/\b(src|dst)=([0-9a-f]{4}(?::[0-9a-f]{4}){7})\b/g, (_, key: string, ip: string) => `${key}=${ipaddr.parse(ip).toString()}`));
  return parseFlows(lines.join('\n'));
}

/** The argv that deletes exactly one flow, named by its original tuple. */
export function conntrackDeleteArgv(f: Flow): string[] {
  const ports = f.orig.sport === undefined || f.orig.dport === undefined ? [] : ['--sport', String(f.orig.sport), '--dport', String(f.orig.dport)];
  return ['conntrack', '-D', '-f', f.family === 4 ? 'ipv4' : 'ipv6', '-p', f.proto, '-s', f.orig.src, '-d', f.orig.dst, ...ports];
}

/** Every flow between two addresses in one protocol: `conntrack -D -p P -s SRC -d DST`. */
export function conntrackDeletePairArgv(f: Flow): string[] {
  return ['conntrack', '-D', '-f', f.family === 4 ? 'ipv4' : 'ipv6', '-p', f.proto, '-s', f.orig.src, '-d', f.orig.dst];
}

/**
 * Every flow in one protocol to DST:DPORT whose reply comes from RSRC (a service's flows to one
 * backend): `conntrack -D -p P -d DST --dport DPORT -r RSRC`.
 */
export function conntrackDeleteReplyArgv(f: Flow): string[] {
  return ['conntrack', '-D', '-f', f.family === 4 ? 'ipv4' : 'ipv6', '-p', f.proto, '-d', f.orig.dst, '--dport', String(f.orig.dport), '-r', f.reply.src];
}

/**
 * The commands that delete these flows. With all = every flow listed, flows sharing protocol,
 * source and destination go in one command when every one of them is chosen; else flows sharing
 * protocol, destination, destination port and reply source (many clients' flows to one backend
 * through a VIP) do, when every one of those is chosen.
 */
export function conntrackDeleteArgvs(flows: readonly Flow[], all?: readonly Flow[]): string[][] {
  if (!all) return flows.map(conntrackDeleteArgv);
  const pair = (f: Flow) => `${f.proto} ${f.orig.src} ${f.orig.dst}`;
  const reply = (f: Flow) => (f.orig.dport === undefined ? undefined : `${f.proto} ${f.orig.dst} ${f.orig.dport} ${f.reply.src}`);
  const count = (key: (f: Flow) => string | undefined, fs: readonly Flow[]) => {
    const m = new Map<string, number>();
    for (const f of fs) {
      const k = key(f);
      if (k !== undefined) m.set(k, (m.get(k) ?? 0) + 1);
    }
    return m;
  };
  const [pairsAll, pairsChosen] = [count(pair, all), count(pair, flows)];
  const [replyAll, replyChosen] = [count(reply, all), count(reply, flows)];
  const argvs: string[][] = [];
  const done = new Set<string>();
  for (const f of flows) {
    const p = pair(f);
    const r = reply(f);
    if (pairsChosen.get(p)! > 1 && pairsChosen.get(p) === pairsAll.get(p)) {
      if (!done.has(`p ${p}`)) argvs.push(conntrackDeletePairArgv(f));
      done.add(`p ${p}`);
    } else if (r !== undefined && replyChosen.get(r)! > 1 && replyChosen.get(r) === replyAll.get(r)) {
      if (!done.has(`r ${r}`)) argvs.push(conntrackDeleteReplyArgv(f));
      done.add(`r ${r}`);
    } else {
      argvs.push(conntrackDeleteArgv(f));
    }
  }
  return argvs;
}
