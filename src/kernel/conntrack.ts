// Connection tracking entries of ctnet's namespace (conntrack-tools). Removing a published port or
// a sandbox must delete the entries that still lead to it, or established flows (UDP above all)
// keep going to an address that is gone or, worse, to the next sandbox that gets it.
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
 * The commands that delete these flows. With all = every flow listed, flows sharing protocol,
 * source and destination go in one command when every one of them is chosen.
 */
export function conntrackDeleteArgvs(flows: readonly Flow[], all?: readonly Flow[]): string[][] {
  const key = (f: Flow) => `${f.proto} ${f.orig.src} ${f.orig.dst}`;
  if (!all) return flows.map(conntrackDeleteArgv);
  const total = new Map<string, number>();
  for (const f of all) total.set(key(f), (total.get(key(f)) ?? 0) + 1);
  const chosen = new Map<string, Flow[]>();
  for (const f of flows) chosen.set(key(f), [...(chosen.get(key(f)) ?? []), f]);
  const argvs: string[][] = [];
  for (const [k, fs] of chosen) argvs.push(...(fs.length > 1 && fs.length === total.get(k) ? [conntrackDeletePairArgv(fs[0]!)] : fs.map(conntrackDeleteArgv)));
  return argvs;
}
