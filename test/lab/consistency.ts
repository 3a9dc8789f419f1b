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
  policies: Row[];
  /** What ctnet believes its policy sets hold (it sends the kernel only differences from this). */
  policyElements: Row[];
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
      policies: all('SELECT * FROM policies'),
      policyElements: all('SELECT * FROM policy_elements'),
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

/** The elements of each set in one of ctnet's tables, as strings like "10.1.0.2 . ctbr-x". */
export async function nftSets(lab: Lab, family: 'inet' | 'bridge' = 'inet'): Promise<Map<string, string[]> | undefined> {
  const r = await lab.inHost(['nft', '-j', 'list', 'table', family, 'ctnet']);
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

/**
 * The elements of each published-port map (ports4, ports6, ports4_any, ports6_any) in ctnet's
 * table, as strings like "tcp . 8080 : 10.1.0.2 . 80". The table's other maps (egress, services)
 * have tests of their own.
 */
export async function nftMaps(lab: Lab): Promise<Map<string, string[]>> {
  const r = await lab.inHost(['nft', '-j', 'list', 'table', 'inet', 'ctnet']);
  const maps = new Map<string, string[]>();
  if (r.code !== 0) return maps;
  const text = (v: any): string => (typeof v === 'object' && v?.concat ? v.concat.map((x: unknown) => String(x)).join(' . ') : String(v));
  for (const item of (JSON.parse(r.stdout) as { nftables: Record<string, any>[] }).nftables) {
    if (!item.map || !/^ports[46]/.test(item.map.name)) continue;
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
    // The mirror is what the next policy change diffs against: a set that drifted from it would
    // keep elements no rule makes, or miss some.
    for (const [name, elems] of sets) {
      if (!name.startsWith('policy_')) continue;
      const mirrored = s.policyElements.filter((e) => e.set_name === name).length;
      if (mirrored !== elems.length) problems.push(`nft ${name}: ${elems.length} elements in the kernel, ${mirrored} in the store's mirror`);
    }
  }
  problems.push(...(await identityProblems(lab, s)));
  problems.push(...(await strayInSandboxes(lab, s)));
  return problems;
}

/** The bridge table's per-port identity: exactly the store's ports, MACs and addresses. */
async function identityProblems(lab: Lab, s: StoreDump): Promise<string[]> {
  const sets = await nftSets(lab, 'bridge');
  if (!sets) return s.networks.length > 0 ? ['nft table bridge ctnet missing'] : [];
  const v4 = (a: Row) => s.addresses.filter((x) => x.sandbox === a.sandbox && x.network === a.network && x.family === 4).map((x) => `${a.host_veth} . ${x.ip}`);
  const v6 = (a: Row) => s.addresses.filter((x) => x.sandbox === a.sandbox && x.network === a.network && x.family === 6).map((x) => `${a.host_veth} . ${x.ip}`);
  const want: [string, string[], (e: string) => boolean][] = [
    ['ports', s.attachments.map((a) => String(a.host_veth)), () => true],
    ['port_mac', s.attachments.map((a) => `${a.host_veth} . ${a.mac}`), () => true],
    ['port_ip4', s.attachments.flatMap(v4), () => true],
    // The link-local address the kernel makes from the MAC is there too; it is checked with the MAC.
    ['port_ip6', s.attachments.flatMap(v6), (e) => !/ \. fe80:/.test(e)],
  ];
  const problems: string[] = [];
  for (const [name, elems, counted] of want) {
    const have = (sets.get(name) ?? []).filter(counted);
    const sorted = [...elems].sort();
    if (JSON.stringify(sorted) !== JSON.stringify(have)) problems.push(`nft bridge ${name}: store ${sorted.join(',')} vs kernel ${have.join(',')}`);
  }
  return problems;
}

/**
 * Inside the namespaces ctnet made (owned sandboxes), nothing but lo and the recorded interfaces,
 * and no address twice across all sandboxes: a leftover interface from an interrupted connect
 * would hold an address the store may hand out again.
 */
async function strayInSandboxes(lab: Lab, s: StoreDump): Promise<string[]> {
  const problems: string[] = [];
  const seen = new Map<string, string>();
  for (const sb of s.sandboxes) {
    const r = await lab.inHost(['nsenter', `--net=${sb.netns}`, 'ip', '-j', 'addr', 'show']);
    if (r.code !== 0) continue; // a missing namespace is reported above
    const ifnames = new Set(s.attachments.filter((a) => a.sandbox === sb.name).map((a) => String(a.ifname)));
    for (const l of JSON.parse(r.stdout || '[]') as { ifname: string; addr_info?: { scope: string; local: string }[] }[]) {
      if (sb.owned === 1 && l.ifname !== 'lo' && !ifnames.has(l.ifname)) problems.push(`${sb.name}: interface ${l.ifname} no record owns`);
      for (const a of (l.addr_info ?? []).filter((x) => x.scope === 'global')) {
        const where = `${sb.name}/${l.ifname}`;
        const other = seen.get(a.local);
        if (other) problems.push(`address ${a.local} is on ${other} and on ${where}`);
        seen.set(a.local, where);
      }
    }
  }
  return problems;
}
