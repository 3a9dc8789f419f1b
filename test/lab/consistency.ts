// Checks that a lab's ctnet store and the kernel agree, object by object. Returns the problems.
import { DatabaseSync } from 'node:sqlite';
import { join } from 'node:path';
import { netnsNames } from '../../src/kernel/netns.ts';
import type { Lab } from '../../src/lab/lab.ts';

type Row = Record<string, string | number>;

export interface StoreDump {
  instance: string;
  networks: Row[];
  sandboxes: Row[];
  attachments: Row[];
  addresses: Row[];
  ports: Row[];
  cni: Row[];
  labels: Row[];
}

export function readStore(lab: Lab): StoreDump {
  const db = new DatabaseSync(join(lab.stateDir, 'ctnet.db'), { readOnly: true });
  try {
    const all = (sql: string) => db.prepare(sql).all() as Row[];
    return {
      instance: (db.prepare("SELECT value FROM meta WHERE key = 'instance'").get() as Row).value as string,
      networks: all('SELECT * FROM networks'),
      sandboxes: all('SELECT * FROM sandboxes'),
      attachments: all('SELECT * FROM attachments'),
      addresses: all('SELECT * FROM addresses'),
      ports: all('SELECT * FROM ports'),
      cni: all('SELECT * FROM cni_attachments'),
      labels: all('SELECT * FROM labels'),
    };
  } finally {
    db.close();
  }
}

interface Link { ifname: string; master?: string; operstate?: string; linkinfo?: { info_kind?: string } }

async function json<T>(lab: Lab, argv: string[]): Promise<T> {
  const r = await lab.inHost(argv);
  if (r.code !== 0) throw new Error(`${argv.join(' ')}: ${r.stderr}`);
  return JSON.parse(r.stdout || '[]') as T;
}

/** The elements of each set in ctnet's table, as strings like "10.1.0.2 . ctbr-x". */
export async function nftSets(lab: Lab): Promise<Map<string, string[]> | undefined> {
  const r = await lab.inHost(['nft', '-j', 'list', 'table', 'inet', 'ctnet']);
  if (r.code !== 0) return undefined;
  const sets = new Map<string, string[]>();
  for (const item of (JSON.parse(r.stdout) as { nftables: Record<string, any>[] }).nftables) {
    if (!item.set) continue;
    const elems = (item.set.elem ?? []).map((e: any) => {
      const v = typeof e === 'object' && e.elem ? e.elem.val : e;
      if (typeof v !== 'object') return String(v);
      if (v.concat) return v.concat.map((x: unknown) => String(x)).join(' . ');
      if (v?.prefix) return `${v.prefix.addr}/${v.prefix.len}`;
      return String(v);
    });
    sets.set(item.set.name, elems.sort());
  }
  return sets;
}

/** The elements of each map in ctnet's table, as strings like "tcp . 8080 : 10.1.0.2 . 80". */
export async function nftMaps(lab: Lab): Promise<Map<string, string[]>> {
  const r = await lab.inHost(['nft', '-j', 'list', 'table', 'inet', 'ctnet']);
  const maps = new Map<string, string[]>();
  if (r.code !== 0) return maps;
  const text = (v: any): string => (typeof v === 'object' && v?.concat ? v.concat.map((x: unknown) => String(x)).join(' . ') : String(v));
  for (const item of (JSON.parse(r.stdout) as { nftables: Record<string, any>[] }).nftables) {
    if (!item.map) continue;
    maps.set(item.map.name, (item.map.elem ?? []).map(([k, v]: [any, any]) => `${text(k)} : ${text(v)}`).sort());
  }
  return maps;
}

/**
 * The map elements the store's published ports should make, worked out here independently of the
 * engine: each mapping leads to the sandbox's addresses on its first (by ifname) non-internal network.
 */
export function expectedPortElements(s: StoreDump): Map<string, string[]> {
  const want = new Map<string, string[]>([['ports4', []], ['ports6', []], ['ports4_any', []], ['ports6_any', []]]);
  for (const p of s.ports) {
    const first = s.attachments.filter((a) => a.sandbox === p.sandbox)
      .sort((a, b) => String(a.ifname).localeCompare(String(b.ifname)))
      .find((a) => s.networks.find((n) => n.name === a.network)?.internal === 0);
    if (!first) continue;
    const hostIp = String(p.host_ip);
    for (const f of [4, 6]) {
      const covers = hostIp === '' || (f === 4 ? hostIp === '0.0.0.0' || (hostIp.includes('.')) : hostIp === '::' || hostIp.includes(':'));
      const target = s.addresses.find((a) => a.sandbox === p.sandbox && a.network === first.network && a.family === f);
      if (!covers || !target) continue;
      const any = hostIp === '' || hostIp === '0.0.0.0' || hostIp === '::';
      for (let i = 0; i < Number(p.count); i++) {
        const key = `${any ? '' : `${hostIp} . `}${p.proto} . ${Number(p.host_port) + i}`;
        want.get(`ports${f}${any ? '_any' : ''}`)!.push(`${key} : ${target.ip} . ${Number(p.container_port) + i}`);
      }
    }
  }
  for (const v of want.values()) v.sort();
  return want;
}

export async function checkConsistent(lab: Lab): Promise<string[]> {
  const problems: string[] = [];
  const s = readStore(lab);
  for (const t of ['networks', 'sandboxes', 'attachments'] as const) {
    for (const r of s[t]) if (r.state !== 'ready') problems.push(`${t} row ${r.name ?? r.sandbox} is ${r.state}`);
  }
  const links = await json<Link[]>(lab, ['ip', '-j', '-d', 'link', 'show']);
  const byName = new Map(links.map((l) => [l.ifname, l]));
  for (const n of s.networks) {
    const l = byName.get(n.bridge as string);
    if (l?.linkinfo?.info_kind !== 'bridge') problems.push(`bridge ${n.bridge} of ${n.name} missing`);
  }
  for (const a of s.attachments) {
    const net = s.networks.find((n) => n.name === a.network);
    const l = byName.get(a.host_veth as string);
    if (!l) problems.push(`host veth ${a.host_veth} of ${a.sandbox} missing`);
    else if (l.master !== net?.bridge) problems.push(`host veth ${a.host_veth} not on bridge ${net?.bridge}`);
    const sb = s.sandboxes.find((x) => x.name === a.sandbox)!;
    const inner = await lab.inHost(['nsenter', `--net=${sb.netns}`, 'ip', '-j', 'addr', 'show', 'dev', a.ifname as string]);
    const want = s.addresses.filter((x) => x.sandbox === a.sandbox && x.network === a.network).map((x) => x.ip).sort();
    const have = inner.code === 0
      ? (JSON.parse(inner.stdout)[0]?.addr_info ?? []).filter((x: any) => x.scope === 'global').map((x: any) => x.local).sort()
      : [];
    if (JSON.stringify(want) !== JSON.stringify(have)) problems.push(`${a.sandbox}/${a.ifname}: store has ${want}, kernel has ${have}`);
  }
  for (const l of links) {
    if (/^ctv/.test(l.ifname) && !s.attachments.some((a) => a.host_veth === l.ifname)) problems.push(`orphan veth ${l.ifname}`);
    if (/^ctbr-/.test(l.ifname) && !s.networks.some((n) => n.bridge === l.ifname)) problems.push(`orphan bridge ${l.ifname}`);
  }
  for (const ns of netnsNames().filter((n) => n.startsWith(`ctnet-${s.instance}-`))) {
    if (!s.sandboxes.some((x) => x.netns === `/run/netns/${ns}`)) problems.push(`orphan netns ${ns}`);
  }
  for (const x of s.sandboxes) {
    if (x.owned === 1 && !netnsNames().includes(String(x.netns).replace('/run/netns/', ''))) problems.push(`netns of ${x.name} missing`);
  }
  const ips = s.addresses.map((a) => a.ip);
  if (new Set(ips).size !== ips.length) problems.push('an address is recorded twice');
  const sets = await nftSets(lab);
  if (!sets) {
    if (s.networks.length > 0) problems.push('nft table inet ctnet missing');
  } else {
    if (s.networks.length === 0) problems.push('nft table left with no network');
    const bridgeOf = (net: string | number) => s.networks.find((n) => n.name === net)?.bridge;
    for (const f of [4, 6]) {
      const want = s.addresses.filter((a) => a.family === f).map((a) => `${a.ip} . ${bridgeOf(a.network!)}`).sort();
      const have = sets.get(`endpoints${f}`) ?? [];
      if (JSON.stringify(want) !== JSON.stringify(have)) problems.push(`nft endpoints${f}: store ${want.join(',')} vs kernel ${have.join(',')}`);
    }
    const maps = await nftMaps(lab);
    for (const [name, want] of expectedPortElements(s)) {
      const have = maps.get(name) ?? [];
      if (JSON.stringify(want) !== JSON.stringify(have)) problems.push(`nft ${name}: store ${want.join(',')} vs kernel ${have.join(',')}`);
    }
    const bridges = s.networks.map((n) => String(n.bridge)).sort();
    if (JSON.stringify(bridges) !== JSON.stringify(sets.get('bridges'))) problems.push(`nft bridges: store ${bridges} vs kernel ${sets.get('bridges')}`);
  }
  return problems;
}
