// Reads a topology file (YAML) into a Topology, or fails with FILE:LINE:COLUMN and what was
// expected. Parsed at the boundary, before the store or the kernel is read: unknown keys, wrong
// types, references to networks or sandboxes the file does not have, addresses outside their
// subnets and duplicate names are all errors here.
import { readFileSync } from 'node:fs';
import { isMap, isScalar, isSeq, LineCounter, parseDocument, type Node, type Pair, type YAMLMap, type YAMLSeq } from 'yaml';
import { CtnetError } from '../errors.ts';
import { parseOverlaySpec, type OverlaySpec } from '../cluster/pool.ts';
import { contains, formatAddr, hostRange, overlaps, parseAddr, parseSubnet } from '../model/cidr.ts';
import { parseName } from '../model/names.ts';
import { checkRuleSelectors, formatPortFilter, formatSelector, parseLabel, parsePortFilter, parseSelector } from '../model/policy.ts';
import { collides, formatPortSpec, parsePortSpec, type PortMapping } from '../model/ports.ts';
import { parseAliases, parseNetworkSpec, type IpRequest } from '../model/spec.ts';
import { parseShapeFlags } from '../model/shape.ts';
import { checkNetworkEgress, parseEgress } from '../engine/egress.ts';
import { formatTarget, parseAffinity, parseServiceCheck, parseServicePort, parseServicePublish, parseServiceTarget, publishMapping } from '../model/service.ts';
import type { TopoAttach, TopoNetwork, TopoPolicy, TopoSandbox, TopoService, Topology } from './model.ts';

const TOP_KEYS = ['name', 'networks', 'sandboxes', 'policy', 'services'];
const NETWORK_KEYS = ['subnets', 'gateways', 'internal', 'isolate', 'host_access', 'mtu', 'bridge', 'driver', 'dns', 'dns_forward', 'egress_ip', 'parent', 'mode', 'host_shim', 'vni', 'port', 'host_prefix'];
/** Keys of a local network that an overlay network (driver: vxlan) does not take: each host chooses its own. */
const NOT_OVERLAY = ['gateways', 'bridge', 'egress_ip', 'parent', 'mode', 'host_shim'];
const OVERLAY_ONLY = ['vni', 'port', 'host_prefix'];
const SANDBOX_KEYS = ['networks', 'labels', 'ports', 'command', 'aliases', 'egress_ip', 'default_route', 'rate_in', 'rate_out', 'burst', 'latency', 'loss'];
const ATTACH_KEYS = ['network', 'ip'];
const POLICY_KEYS = ['name', 'action', 'from', 'to', 'port'];
const SERVICE_KEYS = ['network', 'port', 'to', 'vip', 'affinity', 'publish', 'check', 'check_interval'];

/** Reads and parses FILE; env expands ${VAR} in `command:` strings. */
export function readTopology(file: string, env: NodeJS.ProcessEnv = process.env): Topology {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    throw new CtnetError('INVALID_ARGUMENT', `cannot read ${file}: ${(e as Error).message}`, 'give the path of a topology file with -f');
  }
  return parseTopology(file, text, env);
}

export function parseTopology(file: string, text: string, env: NodeJS.ProcessEnv = {}): Topology {
  const lines = new LineCounter();
  const doc = parseDocument(text, { lineCounter: lines, uniqueKeys: true, prettyErrors: false, strict: true });
  const at = (offset: number) => {
    const p = lines.linePos(offset);
    return `${file}:${p.line}:${p.col}`;
  };
  const e0 = doc.errors[0];
  if (e0?.code === 'DUPLICATE_KEY') {
    const key = /^\s*"?([^"\s:]+)/.exec(text.slice(e0.pos[0]))?.[1] ?? '';
    throw new CtnetError('INVALID_ARGUMENT', `${at(e0.pos[0])}: ${key} is given twice`, 'each network and sandbox needs a name of its own');
  }
  if (e0) throw new CtnetError('INVALID_ARGUMENT', `${at(e0.pos[0])}: ${yamlMessage(e0.message)}`, 'fix the YAML syntax (indentation, quotes, brackets)');
  const where = (n: Node | Pair | null | undefined) => at(rangeOf(n));
  const fail = (n: Node | Pair | null | undefined, message: string, hint?: string): never => {
    throw new CtnetError('INVALID_ARGUMENT', `${where(n)}: ${message}`, hint);
  };
  /** Runs a parser of ctnet's (which throws a CtnetError naming a flag) and puts the position in front. */
  const checked = <T>(n: Node | Pair | null | undefined, fn: () => T): T => {
    try {
      return fn();
    } catch (e) {
      if (e instanceof CtnetError && !e.message.startsWith(`${file}:`)) throw new CtnetError(e.code, `${where(n)}: ${e.message}`, e.hint);
      throw e;
    }
  };
  const map = (n: unknown, what: string, keys: readonly string[]): YAMLMap<Node, Node> => {
    if (!isMap(n)) fail(n as Node, `${what} must be a mapping (key: value), not ${describe(n)}`);
    const m = n as YAMLMap<Node, Node>;
    for (const p of m.items) {
      const k = keyOf(p);
      if (k === undefined) fail(p, `${what}: a key must be a plain word`);
      if (keys.length && !keys.includes(k!)) fail(p.key, `unknown key ${JSON.stringify(k)} in ${what}`, `expected one of: ${keys.join(', ')}`);
    }
    return m;
  };
  const seq = (n: Node | null | undefined, what: string, example: string): YAMLSeq<Node> =>
    (isSeq(n) ? n : fail(n, `${what} must be a list, e.g. ${example}; not ${describe(n)}`)) as YAMLSeq<Node>;
  const str = (n: Node | null | undefined, what: string): string => {
    if (!isScalar(n) || n.value === null || typeof n.value === 'object' || typeof n.value === 'boolean') fail(n, `${what} must be a string, not ${describe(n)}`);
    return String((n as { value: unknown }).value);
  };
  const bool = (n: Node | null | undefined, what: string): boolean =>
    isScalar(n) && typeof n.value === 'boolean' ? n.value : fail(n, `${what} must be true or false, not ${describe(n)}`);
  const get = (m: YAMLMap<Node, Node>, key: string) => m.items.find((p) => keyOf(p) === key);

  const root = doc.contents;
  if (!root) fail(null, 'the file is empty', 'a topology file has at least name: and networks:');
  const top = map(root, 'the file', TOP_KEYS);
  const nameP = get(top, 'name');
  if (!nameP) fail(top, 'the file has no name:', 'add e.g. "name: shop": it owns every object the file makes');
  const name = checked(nameP!.value, () => parseName('topology', str(nameP!.value, 'name')));

  // ---- networks ----
  const networks: TopoNetwork[] = [];
  const netsP = get(top, 'networks');
  const netNodes = new Map<string, Node>();
  if (netsP && netsP.value !== null && !(isScalar(netsP.value) && netsP.value.value === null)) {
    for (const p of map(netsP.value, 'networks', []).items) {
      const n = checked(p.key, () => parseName('network', keyOf(p)!));
      const m = map(p.value, `network ${n}`, NETWORK_KEYS);
      const f = (k: string) => get(m, k)?.value;
      const subnetsN = f('subnets');
      if (!subnetsN) fail(p.key, `network ${n} has no subnets:`, 'e.g. subnets: [10.70.1.0/24]');
      const subnets = seq(subnetsN, `subnets of network ${n}`, '[10.70.1.0/24]').items.map((s) => str(s, `a subnet of network ${n}`));
      const gatewaysN = f('gateways');
      const gateways = gatewaysN ? seq(gatewaysN, `gateways of network ${n}`, '[10.70.1.254]').items.map((s) => str(s, `a gateway of network ${n}`)) : undefined;
      const driverN = f('driver');
      const driver = driverN ? str(driverN, 'driver') : 'bridge';
      if (!['bridge', 'vxlan', 'macvlan', 'ipvlan'].includes(driver)) {
        fail(driverN!, `driver ${JSON.stringify(driver)} is not a network driver`, 'bridge (the default), vxlan (an overlay across the cluster\'s hosts), macvlan or ipvlan');
      }
      const keyNode = (k: string) => get(m, k)?.key as Node;
      for (const k of driver === 'vxlan' ? NOT_OVERLAY : OVERLAY_ONLY) {
        if (get(m, k)) {
          fail(keyNode(k), driver === 'vxlan' ? `network ${n}: ${k} is not for an overlay network (driver: vxlan)` : `network ${n}: ${k} is for overlay networks`,
            driver === 'vxlan' ? (k === 'egress_ip' ? 'overlay traffic leaves each host masqueraded; set egress_ip per sandbox' : 'each host chooses its own; leave it out') : 'add driver: vxlan, or leave it out');
        }
      }
      const intText = (k: string) => {
        const v = f(k);
        if (v === undefined || v === null) return undefined;
        if (!(isScalar(v) && typeof v.value === 'number')) fail(v, `${k} of network ${n} must be a number, not ${describe(v)}`);
        return String((v as { value: number }).value);
      };
      let overlay: OverlaySpec | undefined;
      if (driver === 'vxlan') {
        if (subnets.length !== 1) fail(subnetsN, `overlay network ${n} has one subnet (IPv4), of which each host leases a share`, 'e.g. subnets: [10.80.0.0/16]');
        overlay = checked(subnetsN, () => asKeys(() => parseOverlaySpec({ subnet: subnets[0], hostPrefix: intText('host_prefix'), vni: intText('vni'), port: intText('port'),
          internal: f('internal') ? bool(f('internal'), 'internal') : false, isolate: f('isolate') ? bool(f('isolate'), 'isolate') : false })));
        if (parseSubnet('subnet', overlay.subnet).family !== 4) fail(subnetsN, `overlay network ${n}: ${overlay.subnet} is not IPv4: overlay networks carry IPv4 only`, 'e.g. subnets: [10.80.0.0/16]');
      }
      const mtuN = f('mtu');
      if (mtuN && !(isScalar(mtuN) && typeof mtuN.value === 'number')) fail(mtuN, `mtu of network ${n} must be a number, not ${describe(mtuN)}`);
      const spec = checked(subnetsN, () => parseNetworkSpec({
        name: n, subnet: subnets, ...(gateways ? { gateway: gateways } : {}),
        ...(f('internal') ? { internal: bool(f('internal'), 'internal') } : {}),
        ...(f('isolate') ? { isolate: bool(f('isolate'), 'isolate') } : {}),
        ...(f('host_access') ? { hostAccess: bool(f('host_access'), 'host_access') } : {}),
        ...(mtuN ? { mtu: String((mtuN as { value: number }).value) } : {}),
        ...(f('bridge') ? { bridge: str(f('bridge'), 'bridge') } : {}),
        // dns: true (the default) or false; dns_forward: upstream addresses, as --dns / --dns-forward.
        ...(f('dns') !== undefined && f('dns') !== null ? { dns: bool(f('dns'), 'dns') ? 'on' : 'off' } : {}),
        ...(driver !== 'bridge' && driver !== 'vxlan' ? { driver } : {}),
        ...(f('parent') ? { parent: str(f('parent'), 'parent') } : {}),
        ...(f('mode') ? { mode: str(f('mode'), 'mode') } : {}),
        ...(f('host_shim') ? { hostShim: bool(f('host_shim'), 'host_shim') } : {}),
        ...(f('dns_forward') ? { dnsForward: seq(f('dns_forward'), `dns_forward of network ${n}`, '[192.0.2.53]').items.map((x) => str(x, `an upstream of network ${n}`)).join(',') } : {}),
      }));
      for (const other of networks) {
        for (const a of spec.subnets) {
          const b = other.spec.subnets.find((x) => overlaps(a.subnet, x.subnet));
          if (b) fail(subnetsN, `subnet ${a.cidr} of network ${n} overlaps ${b.cidr} of network ${other.name}`, 'give each network its own range');
        }
      }
      const egressN = f('egress_ip');
      const egress = egressN ? checked(egressN, () => parseEgress('egress_ip', seq(egressN, `egress_ip of network ${n}`, '[198.51.100.71]').items.map((x) => str(x, `an egress address of network ${n}`)))) : [];
      if (egress.length) checked(egressN!, () => checkNetworkEgress({ name: n, internal: spec.internal, subnets: spec.subnets.map((x) => x.subnet) }, egress, 'egress_ip'));
      networks.push({ name: n, spec: { ...spec, egress }, ...(overlay ? { overlay } : {}), at: where(p.key) });
      netNodes.set(n, p.key as Node);
    }
  }
  const netByName = new Map(networks.map((n) => [n.name, n]));

  // ---- sandboxes ----
  const sandboxes: TopoSandbox[] = [];
  const sbxP = get(top, 'sandboxes');
  const taken = new Map<string, string>(); // fixed address -> sandbox
  const published: { sandbox: string; m: PortMapping }[] = [];
  if (sbxP && !(isScalar(sbxP.value) && (sbxP.value as { value: unknown }).value === null)) {
    for (const p of map(sbxP.value, 'sandboxes', []).items) {
      const s = checked(p.key, () => parseName('sandbox', keyOf(p)!));
      const m = map(p.value, `sandbox ${s}`, SANDBOX_KEYS);
      const f = (k: string) => get(m, k)?.value;
      const netsN = f('networks');
      if (!netsN) fail(p.key, `sandbox ${s} has no networks:`, 'e.g. networks: [front]');
      const attach: TopoAttach[] = seq(netsN, `networks of sandbox ${s}`, '[front, { network: back, ip: 10.70.2.20 }]').items.map((item) => {
        let netName: string;
        let ipNodes: Node[] = [];
        let netNode: Node = item;
        if (isMap(item)) {
          const am = map(item, `a network of sandbox ${s}`, ATTACH_KEYS);
          const nn = get(am, 'network');
          if (!nn) fail(item, `a network of sandbox ${s} needs network:`, 'e.g. { network: front, ip: 10.70.1.20 }');
          netNode = nn!.value as Node;
          netName = str(netNode, 'network');
          const ipN = get(am, 'ip')?.value;
          if (ipN) ipNodes = isSeq(ipN) ? (ipN.items as Node[]) : [ipN];
        } else {
          netName = str(item, `a network of sandbox ${s}`);
        }
        const net = netByName.get(netName);
        if (!net) {
          fail(netNode, `sandbox ${s}: no network named ${JSON.stringify(netName)} in this file`,
            networks.length ? `the file's networks are: ${networks.map((x) => x.name).join(', ')}` : 'declare it under networks:');
        }
        if (net!.overlay && ipNodes.length) {
          fail(ipNodes[0]!, `sandbox ${s}: no fixed address on overlay network ${netName}: each host leases its own share of ${net!.overlay.subnet}`, 'leave ip: out; ctnet chooses one in this host\'s share');
        }
        const ips: IpRequest[] = ipNodes.map((ipNode) => {
          const a = checked(ipNode, () => parseAddr('ip', str(ipNode, 'ip')));
          const text = formatAddr(a.family, a.n);
          const sub = net!.spec.subnets.find((x) => contains(x.subnet, a.family, a.n));
          if (!sub) fail(ipNode, `sandbox ${s}: ${text} is outside network ${netName}'s subnets (${net!.spec.subnets.map((x) => x.cidr).join(', ')})`, 'choose an address inside one of them');
          const { first, last } = hostRange(sub!.subnet);
          if (a.n < first || a.n > last || text === sub!.gateway) {
            fail(ipNode, `sandbox ${s}: ${text} is the network, broadcast or gateway address of ${sub!.cidr}`, 'choose another address');
          }
          const holder = taken.get(text);
          if (holder) fail(ipNode, `sandbox ${s}: ${text} is also sandbox ${holder}'s address`, 'give each sandbox its own address');
          taken.set(text, s);
          return { ...a, text };
        });
        for (const f4 of [4, 6] as const) {
          if (ips.filter((x) => x.family === f4).length > 1) fail(netNode, `sandbox ${s}: more than one IPv${f4} address on network ${netName}`);
        }
        return { network: netName, ips };
      });
      const dup = attach.find((a, i) => attach.findIndex((b) => b.network === a.network) !== i);
      if (dup) fail(netsN, `sandbox ${s} joins network ${dup.network} twice`);
      const labels: Record<string, string> = {};
      const labelsN = f('labels');
      if (labelsN) {
        for (const lp of map(labelsN, `labels of sandbox ${s}`, []).items) {
          const k = keyOf(lp)!;
          const v = lp.value;
          if (!isScalar(v) || v.value === null || typeof v.value === 'object') fail((v as Node | null) ?? lp, `label ${k} of sandbox ${s} must be a string, not ${describe(v)}`);
          const l = checked(lp, () => parseLabel('label', `${k}=${String((v as { value: unknown }).value)}`));
          labels[l.key] = l.value;
        }
      }
      const portsN = f('ports');
      const ports: PortMapping[] = portsN ? seq(portsN, `ports of sandbox ${s}`, '["8080:80"]').items.map((pn) => {
        const m2 = checked(pn, () => parsePortSpec(isScalar(pn) && typeof pn.value === 'number' ? fail(pn, `port ${pn.value} of sandbox ${s} must be quoted HOST:CONTAINER text, e.g. "8080:80"`) : str(pn, 'a port')));
        const clash = published.find((x) => collides(x.m, m2));
        if (clash) fail(pn, `sandbox ${s}: ${formatPortSpec(m2)} overlaps ${formatPortSpec(clash.m)} of sandbox ${clash.sandbox}`, 'give each host port once');
        published.push({ sandbox: s, m: m2 });
        return m2;
      }) : [];
      const cmdN = f('command');
      let command: string[] | undefined;
      if (cmdN) {
        if (isSeq(cmdN)) command = (cmdN.items as Node[]).map((w) => (isScalar(w) && typeof w.value === 'number' ? String(w.value) : str(w, 'a word of command')));
        else command = checked(cmdN, () => splitWords(expand(str(cmdN, 'command'), env)));
        if (command.length === 0) fail(cmdN, `command of sandbox ${s} is empty`);
      }
      const aliasesN = f('aliases');
      const aliases = aliasesN ? checked(aliasesN, () => parseAliases(seq(aliasesN, `aliases of sandbox ${s}`, '[shop-web]').items.map((x) => str(x, `an alias of sandbox ${s}`)))) : [];
      const egressN = f('egress_ip');
      const egress = egressN ? checked(egressN, () => parseEgress('egress_ip', seq(egressN, `egress_ip of sandbox ${s}`, '[198.51.100.72]').items.map((x) => str(x, `an egress address of sandbox ${s}`)))) : [];
      const routeN = f('default_route');
      const defaultRoute = routeN ? str(routeN, 'default_route') : undefined;
      if (defaultRoute !== undefined && !attach.some((a) => a.network === defaultRoute)) {
        fail(routeN!, `default_route ${defaultRoute} of sandbox ${s} is not one of its networks`, `choose one of ${attach.map((a) => a.network).join(', ')}`);
      }
      // Shaping, as the flags of ctnet create take it (rates like 10mbit, latency in ms, loss in %).
      const shapeText = (k: string) => { const v = f(k); return v === undefined || v === null ? undefined : isScalar(v) && typeof v.value === 'number' ? String(v.value) : str(v, k); };
      const shapeNode = f('rate_in') ?? f('rate_out') ?? f('burst') ?? f('latency') ?? f('loss');
      const shape = shapeNode ? checked(shapeNode, () => parseShapeFlags({ rateIn: shapeText('rate_in'), rateOut: shapeText('rate_out'), burst: shapeText('burst'), latency: shapeText('latency'), loss: shapeText('loss') })) : undefined;
      sandboxes.push({ name: s, networks: attach, labels: sortKeys(labels), ports, command, aliases: [...aliases].sort(), egress, defaultRoute, shape, at: where(p.key) });
    }
  }
  const sbxNames = new Set(sandboxes.map((s) => s.name));

  // ---- policy ----
  const policy: TopoPolicy[] = [];
  const polP = get(top, 'policy');
  if (polP && !(isScalar(polP.value) && (polP.value as { value: unknown }).value === null)) {
    for (const item of seq(polP.value, 'policy', '[{ name: web-to-api, action: allow, from: "label:tier=web", to: "label:tier=api", port: 80/tcp }]').items) {
      const m = map(item, 'a policy rule', POLICY_KEYS);
      const f = (k: string) => get(m, k)?.value;
      for (const k of ['name', 'action', 'from', 'to']) if (!f(k)) fail(item, `a policy rule needs ${k}:`, 'e.g. { name: web-to-api, action: allow, from: "label:tier=web", to: "label:tier=api", port: 80/tcp }');
      const rn = checked(f('name'), () => parseName('policy', str(f('name'), 'name')));
      if (/^rule-\d+$/.test(rn) || /^\d+$/.test(rn)) fail(f('name'), `policy name ${rn} is reserved (rule-ID and IDs name unnamed rules)`, 'choose a name with a word in it');
      if (policy.some((x) => x.name === rn)) fail(f('name'), `a second policy rule named ${rn}`, 'give each rule its own name');
      const action = str(f('action'), 'action');
      if (action !== 'allow' && action !== 'deny') fail(f('action'), `action must be allow or deny, not ${JSON.stringify(action)}`);
      const from = checked(f('from'), () => parseSelector('from', str(f('from'), 'from')));
      const to = checked(f('to'), () => parseSelector('to', str(f('to'), 'to')));
      checked(item, () => checkRuleSelectors(from, to));
      for (const [k, sel] of [['from', from], ['to', to]] as const) {
        if (sel.kind === 'net' && !netByName.has(sel.name)) fail(f(k), `${k}: no network named ${sel.name} in this file`);
        if (sel.kind === 'sandbox' && !sbxNames.has(sel.name)) fail(f(k), `${k}: no sandbox named ${sel.name} in this file`, 'or select by label (label:KEY=VALUE)');
      }
      const portN = f('port');
      const port = portN ? checked(portN, () => formatPortFilter(parsePortFilter(isScalar(portN) && typeof portN.value === 'number' ? String(portN.value) : str(portN, 'port')))) : null;
      policy.push({ name: rn, action: action as 'allow' | 'deny', from: formatSelector(from), to: formatSelector(to), port, at: where(item) });
    }
  }

  // ---- services: as `ctnet service create` takes them ----
  const services: TopoService[] = [];
  const svcP = get(top, 'services');
  if (svcP && !(isScalar(svcP.value) && (svcP.value as { value: unknown }).value === null)) {
    const vips = new Map<string, string>();
    const pubs: { service: string; m: PortMapping }[] = [];
    for (const p of map(svcP.value, 'services', []).items) {
      const sv = checked(p.key, () => parseName('service', keyOf(p)!));
      const m = map(p.value, `service ${sv}`, SERVICE_KEYS);
      const f = (k: string) => get(m, k)?.value;
      for (const k of ['network', 'port', 'to']) if (!f(k)) fail(p.key, `service ${sv} needs ${k}:`, 'e.g. web: { network: front, port: 80/tcp, to: "label:tier=web:8080" }');
      const netName = str(f('network'), 'network');
      const net = netByName.get(netName);
      if (!net) fail(f('network'), `service ${sv}: no network named ${JSON.stringify(netName)} in this file`, networks.length ? `the file's networks are: ${networks.map((x) => x.name).join(', ')}` : 'declare it under networks:');
      if (net!.overlay || net!.spec.lower) fail(f('network'), `service ${sv}: network ${netName} is ${net!.overlay ? 'an overlay' : `a ${net!.spec.lower!.kind}`} network: services run on bridge networks`, 'choose a bridge network of the file');
      const v4 = net!.spec.subnets.find((x) => x.subnet.family === 4);
      if (!v4) fail(f('network'), `service ${sv}: network ${netName} has no IPv4 subnet: services have IPv4 VIPs for now`);
      const portText = (n: Node | null | undefined) => (isScalar(n) && typeof n.value === 'number' ? String(n.value) : str(n, 'port'));
      const port = checked(f('port'), () => parseServicePort(portText(f('port'))));
      const target = checked(f('to'), () => parseServiceTarget(str(f('to'), 'to')));
      const affinity = f('affinity') ? checked(f('affinity'), () => parseAffinity(str(f('affinity'), 'affinity'))) : 'none';
      let vip: string | undefined;
      const vipN = f('vip');
      if (vipN) {
        const a = checked(vipN, () => parseAddr('vip', str(vipN, 'vip')));
        vip = formatAddr(a.family, a.n);
        if (a.family !== 4) fail(vipN, `service ${sv}: vip ${vip} is not IPv4: services have IPv4 VIPs for now`);
        if (!contains(v4!.subnet, a.family, a.n)) fail(vipN, `service ${sv}: vip ${vip} is outside network ${netName}'s subnet ${v4!.cidr}`, 'choose an address inside it, or leave vip: out');
        const { first, last } = hostRange(v4!.subnet);
        if (a.n < first || a.n > last || vip === v4!.gateway) fail(vipN, `service ${sv}: vip ${vip} is the network, broadcast or gateway address of ${v4!.cidr}`, 'choose another address');
        const holder = taken.get(vip) ?? vips.get(vip);
        if (holder) fail(vipN, `service ${sv}: vip ${vip} is also ${taken.has(vip) ? `sandbox ${holder}'s address` : `service ${holder}'s vip`}`, 'give each its own address');
        vips.set(vip, sv);
      }
      const publishN = f('publish');
      const publish = publishN ? checked(publishN, () => parseServicePublish(portText(publishN))) : undefined;
      if (publish) {
        const m2 = publishMapping(publish, port.proto, port.port);
        const clash = published.find((x) => collides(x.m, m2)) ?? pubs.find((x) => collides(x.m, m2));
        if (clash) fail(publishN, `service ${sv}: host port ${publish.hostPort}/${port.proto} is also published by ${'sandbox' in clash ? `sandbox ${clash.sandbox}` : `service ${clash.service}`}`, 'give each host port once');
        pubs.push({ service: sv, m: m2 });
      }
      const checkN = f('check');
      const intervalN = f('check_interval');
      const check = checked(checkN ?? intervalN ?? p.key, () => parseServiceCheck(checkN ? str(checkN, 'check') : undefined, intervalN ? str(intervalN, 'check_interval') : undefined));
      services.push({
        publish, check,
        name: sv, network: netName, port: `${port.port}/${port.proto}`,
        to: formatTarget(target.selector, target.targetPort ?? port.port),
        vip, affinity, at: where(p.key),
      });
    }
  }
  return { file, name, networks, sandboxes, policy, services };
}

/** Runs a parser that names flags (--vni) and names the file's keys (vni) instead. */
function asKeys<T>(fn: () => T): T {
  try {
    return fn();
  } catch (e) {
    if (!(e instanceof CtnetError)) throw e;
    const keys = (t: string | undefined) => t?.replace(/--(subnet|vni|port|host-prefix)\b/g, (_, k: string) => (k === 'subnet' ? 'subnets' : k.replace('-', '_')));
    throw new CtnetError(e.code, keys(e.message)!, keys(e.hint));
  }
}

const rangeOf = (n: Node | Pair | null | undefined): number => {
  if (!n) return 0;
  if ('range' in n && n.range) return n.range[0];
  if ('key' in n) return rangeOf(n.key as Node);
  return 0;
};
const keyOf = (p: Pair): string | undefined => {
  const k = p.key;
  return isScalar(k) && (typeof k.value === 'string' || typeof k.value === 'number') ? String(k.value) : undefined;
};
const describe = (n: unknown): string => {
  if (n === null || n === undefined) return 'nothing';
  if (isMap(n)) return 'a mapping';
  if (isSeq(n)) return 'a list';
  if (isScalar(n)) return n.value === null ? 'nothing (null)' : `${typeof n.value} ${JSON.stringify(n.value)}`;
  return 'something else';
};
const sortKeys = (o: Record<string, string>) => Object.fromEntries(Object.entries(o).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
/** yaml's messages end with a code excerpt when prettyErrors is on; without it, the first line is the message. */
const yamlMessage = (m: string) => m.split('\n')[0]!.replace(/ at line \d+, column \d+.*$/, '');

/** ${VAR} and ${VAR:-default} from env, as docker compose does; $$ is a dollar. An unset VAR without default is an error. */
export function expand(text: string, env: NodeJS.ProcessEnv): string {
  return text.replace(/\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(:-([^}]*))?\}/g, (all, name: string | undefined, def: string | undefined, dflt: string | undefined) => {
    if (all === '$$') return '$';
    const v = env[name!];
    if (v !== undefined && v !== '') return v;
    if (def !== undefined) return dflt ?? '';
    throw new CtnetError('INVALID_ARGUMENT', `command: \${${name}} is not set`, `set ${name}, or give a default: \${${name}:-DEFAULT}`);
  });
}

/** A command line into words, as a shell splits it (blanks; '...' and "..." quote). No other shell syntax. */
export function splitWords(text: string): string[] {
  const words: string[] = [];
  let cur = '';
  let has = false;
  let quote: string | undefined;
  for (const ch of text) {
    if (quote) {
      if (ch === quote) quote = undefined;
      else cur += ch;
    } else if (ch === '"' || ch === "'") {
      quote = ch;
      has = true;
    } else if (/\s/.test(ch)) {
      if (has || cur) words.push(cur);
      cur = '';
      has = false;
    } else {
      cur += ch;
    }
  }
  if (quote) throw new CtnetError('INVALID_ARGUMENT', `command: an unclosed ${quote} quote`);
  if (has || cur) words.push(cur);
  return words;
}
