// Renderings of the topology graph (engine/graph.ts): a tree for the terminal, and Graphviz's dot
// language (which `ctnet graph --format svg` lays out in-process with @viz-js/viz, Graphviz built
// to WebAssembly, so no Graphviz install is needed). Pure: a graph in, text out.
import { addressKey, type Graph, type GraphRule } from '../engine/graph.ts';

const byAddress = (a: string, b: string) => (addressKey(a) < addressKey(b) ? -1 : addressKey(a) > addressKey(b) ? 1 : 0);

/** A tree: the host, each network with its sandboxes' interfaces, the other hosts' sandboxes, the policy. */
export function graphText(g: Graph): string {
  const out: string[] = [`host ${g.host.name}${g.host.underlay ? ` (underlay ${g.host.underlay})` : ''}`];
  const tree = (items: string[][], indent: string) => items.forEach((lines, i) => {
    const last = i === items.length - 1;
    lines.forEach((l, j) => out.push(`${indent}${j === 0 ? (last ? '└─ ' : '├─ ') : (last ? '   ' : '│  ')}${l}`));
  });
  tree(g.networks.map((n) => {
    const flags = [n.driver, n.internal ? 'internal' : n.egress.length ? `egress from ${n.egress.join(', ')}` : 'masquerade', ...(n.isolate ? ['isolate'] : []), ...(n.hostAccess ? ['host-access'] : [])];
    const head = `network ${n.name}  ${n.subnets.join(' ')}  [${flags.join(', ')}]  bridge ${n.device.name}${n.device.present ? '' : ' (MISSING)'}`;
    const members = g.sandboxes.flatMap((s) => s.interfaces.filter((i) => i.network === n.name).map((i) => ({ s, i })))
      .sort((a, b) => byAddress(a.i.addresses[0] ?? '', b.i.addresses[0] ?? ''));
    const lines = members.map(({ s, i }) => {
      const labels = Object.entries(s.labels).map(([k, v]) => `${k}=${v}`).join(',');
      return `${s.name}  ${i.ifname} ${i.addresses.join(' ')}  ↔ ${i.hostVeth}${i.present ? '' : ' (MISSING)'}${i.defaultRoute ? '  default route' : ''}${s.ports.length ? `  ports ${s.ports.join(' ')}` : ''}${labels ? `  {${labels}}` : ''}`;
    });
    const o = n.overlay;
    if (o) {
      lines.push(`vxlan ${o.vxlan.name} (VNI ${o.vni}, overlay ${o.subnet})${o.vxlan.present ? '' : ' (MISSING)'}`);
      for (const p of o.peers) {
        const remote = g.remoteSandboxes.filter((r) => r.host === p.host && r.networks.includes(n.name)).map((r) => `${r.name} ${r.addresses.join(' ')}`);
        lines.push(`  → host ${p.host} ${p.subnet} via ${p.underlay}${remote.length ? `: ${remote.join(', ')}` : ''}`);
      }
    }
    const children: string[] = [];
    const sub: string[][] = lines.map((l) => [l]);
    // Draw the children one level down.
    sub.forEach((l, i) => children.push(`${i === sub.length - 1 ? '└─ ' : '├─ '}${l[0]}`));
    return [head, ...children];
  }), '');
  const unattached = g.sandboxes.filter((s) => s.interfaces.length === 0);
  if (unattached.length) out.push(`sandboxes on no network: ${unattached.map((s) => s.name).join(', ')}`);
  out.push('', g.policy.length ? 'policy:' : 'policy: none (same network: allowed unless isolate; between networks: denied)');
  for (const r of g.policy) out.push(`  ${ruleLabel(r)}`, `      ${r.edges.length ? r.edges.map((e) => `${e.from} → ${e.to}`).join(', ') : '(selects nothing now)'}`);
  return out.join('\n');
}

const ruleLabel = (r: GraphRule) => `#${r.id} ${r.action} ${r.name}: ${r.from} → ${r.to} ${r.port}`;

/** dot: quoted IDs and HTML-free labels (names come from users: always escaped). */
const q = (s: string) => `"${s.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n')}"`;

export function graphDot(g: Graph): string {
  const out = [
    'digraph ctnet {',
    '  graph [rankdir=LR, fontname="Helvetica", fontsize=11, compound=true];',
    '  node [fontname="Helvetica", fontsize=10, shape=box, style="rounded"];',
    '  edge [fontname="Helvetica", fontsize=9];',
    `  ${q('host')} [label=${q(`host ${g.host.name}`)}, shape=house];`,
  ];
  const pseudo = new Set<string>();
  for (const n of g.networks) {
    out.push(`  subgraph ${q(`cluster_${n.name}`)} {`,
      `    label=${q(`network ${n.name}\n${n.subnets.join(' ')}${n.internal ? '\ninternal' : ''}${n.overlay ? `\nvxlan VNI ${n.overlay.vni}` : ''}`)};`,
      `    style=${n.internal ? 'dashed' : 'solid'};`,
      `    ${q(`net:${n.name}`)} [label=${q(`${n.device.name}${n.device.present ? '' : ' (missing)'}`)}, shape=ellipse];`);
    for (const s of g.sandboxes) {
      for (const i of s.interfaces.filter((x) => x.network === n.name)) {
        out.push(`    ${q(`if:${s.name}:${i.ifname}`)} [label=${q(`${i.ifname} ${i.addresses.join(' ')}`)}, shape=plaintext];`);
      }
    }
    for (const r of g.remoteSandboxes.filter((x) => x.networks.includes(n.name))) {
      out.push(`    ${q(`sb:${r.name}`)} [label=${q(`${r.name}\n(on ${r.host})\n${r.addresses.join(' ')}`)}, style="rounded,dashed"];`);
      out.push(`    ${q(`sb:${r.name}`)} -> ${q(`net:${n.name}`)} [dir=none, style=dashed];`);
    }
    out.push('  }');
    if (!n.internal) out.push(`  ${q(`net:${n.name}`)} -> ${q('host')} [dir=none, color=gray];`);
  }
  for (const s of g.sandboxes) {
    const labels = Object.entries(s.labels).map(([k, v]) => `${k}=${v}`);
    out.push(`  ${q(`sb:${s.name}`)} [label=${q([s.name, ...labels, ...(s.ports.length ? [`ports ${s.ports.join(' ')}`] : [])].join('\n'))}];`);
    for (const i of s.interfaces) {
      out.push(`  ${q(`sb:${s.name}`)} -> ${q(`if:${s.name}:${i.ifname}`)} [dir=none];`,
        `  ${q(`if:${s.name}:${i.ifname}`)} -> ${q(`net:${i.network}`)} [dir=none, label=${q(i.hostVeth)}${i.present ? '' : ', color=red'}];`);
    }
  }
  for (const r of g.policy) {
    for (const e of r.edges) {
      for (const end of [e.from, e.to]) {
        if (end === 'host' || g.sandboxes.some((s) => s.name === end) || g.remoteSandboxes.some((s) => s.name === end) || pseudo.has(end)) continue;
        pseudo.add(end);
        out.push(`  ${q(`sb:${end}`)} [label=${q(end)}, shape=${end === 'world' ? 'doublecircle' : 'note'}];`);
      }
      const id = (x: string) => (x === 'host' ? q('host') : q(`sb:${x}`));
      out.push(`  ${id(e.from)} -> ${id(e.to)} [color=${r.action === 'allow' ? 'darkgreen' : 'red'}, style=bold, label=${q(`#${r.id} ${r.action} ${r.port}`)}];`);
    }
  }
  out.push('}');
  return out.join('\n') + '\n';
}
