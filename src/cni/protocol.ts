// The CNI protocol (spec 0.3.x to 1.1.0) as data: the environment and the network configuration
// parsed into typed values at the boundary, results and errors rendered in the config's version.
// Pure: no I/O, so every rule here is unit-tested.
import { parseCniBandwidth, type Shape } from '../model/shape.ts';
import { CtnetError } from '../errors.ts';
import { formatAddr, parseAddr } from '../model/cidr.ts';
import { parseMac } from '../model/mac.ts';
import { parseDnsLabel, parseIfname, parseName } from '../model/names.ts';
import { parseLabel } from '../model/policy.ts';
import { PROTOCOLS, type PortMapping, type Proto } from '../model/ports.ts';
import type { IpRequest } from '../model/spec.ts';
import type { CniInterface, CniIp, CniResult, CniRoute, Dns, NetConf, NetworkClaims } from '../model/cni.ts';

export type { CniInterface, CniIp, CniResult, CniRoute, Dns, NetConf, NetworkClaims } from '../model/cni.ts';

export const SUPPORTED_VERSIONS = ['0.3.0', '0.3.1', '0.4.0', '1.0.0', '1.1.0'] as const;
export const COMMANDS = ['ADD', 'DEL', 'CHECK', 'VERSION', 'GC', 'STATUS'] as const;
export type Command = (typeof COMMANDS)[number];

/** The spec's error codes (1-99 are the spec's; ctnet adds none of its own). */
export const CODE = {
  INCOMPATIBLE_VERSION: 1,
  UNSUPPORTED_FIELD: 2,
  UNKNOWN_CONTAINER: 3,
  INVALID_ENV: 4,
  IO_FAILURE: 5,
  DECODE: 6,
  INVALID_CONFIG: 7,
  TRY_AGAIN: 11,
  NOT_AVAILABLE: 50,
  LIMITED_CONNECTIVITY: 51,
} as const;

/** An error a runtime sees as {code, msg, details}; msg says what is wrong, details what to do. */
export class CniError extends Error {
  readonly code: number;
  readonly details: string;
  constructor(code: number, msg: string, details = '') {
    super(msg);
    this.name = 'CniError';
    this.code = code;
    this.details = details;
  }
}

export interface CniEnv {
  readonly command: Command;
  readonly containerId: string;
  /** Empty when the runtime sent none (DEL after the container is gone, as containerd's ctr does). */
  readonly netns: string;
  readonly ifname: string;
  readonly args: ReadonlyMap<string, string>;
}

const CONTAINER_ID = /^[a-zA-Z0-9][a-zA-Z0-9_.-]*$/;

/** Parses the CNI_* variables the command needs; names every missing or malformed one. */
export function parseEnv(env: Readonly<Record<string, string | undefined>>): CniEnv {
  const raw = env.CNI_COMMAND ?? '';
  if (!(COMMANDS as readonly string[]).includes(raw)) {
    throw new CniError(CODE.INVALID_ENV, raw === '' ? 'CNI_COMMAND is not set' : `CNI_COMMAND=${raw} is not a CNI command`,
      `set CNI_COMMAND to one of ${COMMANDS.join(', ')}`);
  }
  const command = raw as Command;
  const needs: Record<Command, string[]> = {
    ADD: ['CNI_CONTAINERID', 'CNI_NETNS', 'CNI_IFNAME', 'CNI_PATH'],
    CHECK: ['CNI_CONTAINERID', 'CNI_NETNS', 'CNI_IFNAME', 'CNI_PATH'],
    DEL: ['CNI_CONTAINERID', 'CNI_IFNAME', 'CNI_PATH'],
    GC: ['CNI_PATH'],
    STATUS: ['CNI_PATH'],
    VERSION: [],
  };
  const missing = needs[command].filter((k) => !env[k]);
  if (missing.length) {
    throw new CniError(CODE.INVALID_ENV, `${command} needs ${missing.join(', ')}, which ${missing.length > 1 ? 'are' : 'is'} not set`,
      'a runtime sets these; when calling the plugin by hand, set them as the CNI spec describes');
  }
  const containerId = env.CNI_CONTAINERID ?? '';
  if (containerId && !CONTAINER_ID.test(containerId)) {
    throw new CniError(CODE.INVALID_ENV, `CNI_CONTAINERID=${JSON.stringify(containerId)} has characters the spec does not allow`,
      'use letters, digits, "_", "." and "-", starting with a letter or digit');
  }
  const netns = env.CNI_NETNS ?? '';
  if (netns && !netns.startsWith('/')) {
    throw new CniError(CODE.INVALID_ENV, `CNI_NETNS=${JSON.stringify(netns)} is not an absolute path`, 'give a netns file such as /run/netns/NAME or /proc/PID/ns/net');
  }
  let ifname = env.CNI_IFNAME ?? '';
  if (ifname) {
    try {
      ifname = parseIfname('CNI_IFNAME', ifname);
    } catch (e) {
      throw new CniError(CODE.INVALID_ENV, (e as Error).message, (e as CtnetError).hint ?? '');
    }
  }
  return { command, containerId, netns, ifname, args: parseArgs(env.CNI_ARGS ?? '') };
}

/** CNI_ARGS: "K1=V1;K2=V2". */
export function parseArgs(text: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const part of text.split(';')) {
    if (part === '') continue;
    const eq = part.indexOf('=');
    if (eq <= 0) throw new CniError(CODE.INVALID_ENV, `CNI_ARGS part ${JSON.stringify(part)} is not KEY=VALUE`, 'write CNI_ARGS as K1=V1;K2=V2');
    out.set(part.slice(0, eq), part.slice(eq + 1));
  }
  return out;
}

/** Keys ctnet reads or knows to be the runtime's, so they need no warning. */
const KNOWN = new Set(['cniVersion', 'cniVersions', 'name', 'type', 'network', 'stateDir', 'ctnetBin', 'capabilities', 'runtimeConfig',
  'args', 'dns', 'prevResult', 'cni.dev/valid-attachments', 'cni.dev/attachments', 'bridge', 'ipMasq', 'isGateway', 'isDefaultGateway',
  'hairpinMode', 'mtu', 'ipam', 'disableCheck']);
const KNOWN_RUNTIME = new Set(['portMappings', 'ips', 'mac', 'dns', 'bandwidth', 'aliases', 'cni.dev/valid-attachments']);

type Json = Record<string, unknown>;
const isObject = (v: unknown): v is Json => typeof v === 'object' && v !== null && !Array.isArray(v);
const invalidConfig = (key: string, value: unknown, what: string, fix: string) =>
  new CniError(CODE.INVALID_CONFIG, `${key}=${JSON.stringify(value)}: ${what}`, fix);
const unsupported = (key: string, value: unknown, why: string, fix: string) =>
  new CniError(CODE.UNSUPPORTED_FIELD, `${key}=${JSON.stringify(value)} cannot be honoured: ${why}`, fix);

const optional = <K extends string, V>(k: K, v: V | undefined): { [P in K]?: V } => (v === undefined ? {} : { [k]: v } as { [P in K]?: V });

/** runtimeConfig.bandwidth: rates in bits/s, bursts in bits, as the reference bandwidth plugin takes them. */
function parseBandwidth(v: unknown): Shape | undefined {
  try {
    return parseCniBandwidth('runtimeConfig.bandwidth', v);
  } catch (e) {
    throw invalidConfig('runtimeConfig.bandwidth', v, (e as Error).message, 'pass {ingressRate, ingressBurst, egressRate, egressBurst}: rates in bits per second, bursts in bits');
  }
}

/** Decodes stdin as JSON; a decode failure is code 6. */
export function decode(stdin: string): Json {
  let v: unknown;
  try {
    v = JSON.parse(stdin);
  } catch (e) {
    throw new CniError(CODE.DECODE, `the network configuration on stdin is not valid JSON: ${(e as Error).message}`,
      'pass the plugin configuration as a JSON object on stdin');
  }
  if (!isObject(v)) throw new CniError(CODE.DECODE, 'the network configuration on stdin is not a JSON object', 'pass the plugin configuration as a JSON object on stdin');
  return v;
}

/** The config's cniVersion, checked against what ctnet speaks (code 1 if it is not one of them). */
export function configVersion(conf: Json): string {
  const v = conf.cniVersion;
  if (typeof v !== 'string' || v === '') throw invalidConfig('cniVersion', v, 'missing or not a string', `set cniVersion to one of ${SUPPORTED_VERSIONS.join(', ')}`);
  if (!(SUPPORTED_VERSIONS as readonly string[]).includes(v)) {
    throw new CniError(CODE.INCOMPATIBLE_VERSION, `cniVersion ${v} is not supported`, `ctnet speaks ${SUPPORTED_VERSIONS.join(', ')}`);
  }
  return v;
}

const versionAtLeast = (v: string, min: string) => {
  const [a, b] = [v, min].map((x) => x.split('.').map(Number));
  for (let i = 0; i < 3; i++) if (a![i]! !== b![i]!) return a![i]! > b![i]!;
  return true;
};

/** Parses the plugin's network configuration; warnings name keys ctnet ignores. */
export function parseConfig(conf: Json, command: Command): { conf: NetConf; warnings: string[] } {
  const warnings: string[] = [];
  const cniVersion = configVersion(conf);
  if (command === 'CHECK' && !versionAtLeast(cniVersion, '0.4.0')) {
    throw new CniError(CODE.INCOMPATIBLE_VERSION, `CHECK is not defined for cniVersion ${cniVersion}`, 'CHECK needs cniVersion 0.4.0 or later');
  }
  if ((command === 'GC' || command === 'STATUS') && !versionAtLeast(cniVersion, '1.1.0')) {
    throw new CniError(CODE.INCOMPATIBLE_VERSION, `${command} is not defined for cniVersion ${cniVersion}`, `${command} needs cniVersion 1.1.0`);
  }
  const name = conf.name;
  if (typeof name !== 'string' || !/^[a-zA-Z0-9][a-zA-Z0-9_.-]*$/.test(name)) {
    throw invalidConfig('name', name, 'missing, or not a valid network name', 'give the network a name of letters, digits, "_", "." and "-"');
  }
  if (conf.type !== 'ctnet') throw invalidConfig('type', conf.type, 'this plugin is "ctnet"', 'set "type": "ctnet"');
  const network = conf.network === undefined ? name : conf.network;
  if (typeof network !== 'string') throw invalidConfig('network', network, 'not a string', 'name the ctnet network to attach to');
  try {
    parseName('network', network);
  } catch (e) {
    throw invalidConfig('network', network, (e as Error).message, 'name the ctnet network to attach to');
  }
  for (const k of Object.keys(conf)) if (!KNOWN.has(k)) warnings.push(`ignoring unknown configuration key "${k}"`);
  if (conf.ipam !== undefined) {
    throw unsupported('ipam', conf.ipam, `ctnet allocates addresses itself, from the subnets of network ${network}`,
      'remove the "ipam" section; to ask for an address, pass runtimeConfig.ips or args.cni.ips');
  }
  const runtime = conf.runtimeConfig ?? {};
  if (!isObject(runtime)) throw invalidConfig('runtimeConfig', runtime, 'not an object', 'runtimes pass capabilities as an object');
  for (const k of Object.keys(runtime)) if (!KNOWN_RUNTIME.has(k)) warnings.push(`ignoring runtimeConfig.${k}: ctnet has no such capability`);
  const args = conf.args === undefined ? {} : conf.args;
  if (!isObject(args)) throw invalidConfig('args', args, 'not an object', 'pass args as {"cni": {...}}');
  const cniArgs = args.cni === undefined ? {} : args.cni;
  if (!isObject(cniArgs)) throw invalidConfig('args.cni', cniArgs, 'not an object', 'pass args as {"cni": {"labels": [...]}}');
  const prevResult = conf.prevResult;
  if (prevResult !== undefined && !isObject(prevResult)) throw invalidConfig('prevResult', prevResult, 'not an object', 'pass the previous plugin\'s result');
  return {
    conf: {
      cniVersion, name, network,
      claims: parseClaims(conf),
      portMappings: parsePortMappings(runtime.portMappings),
      ...optional('bandwidth', parseBandwidth(runtime.bandwidth)),
      ips: parseIps(runtime.ips !== undefined ? 'runtimeConfig.ips' : 'args.cni.ips', runtime.ips ?? cniArgs.ips),
      mac: parseMacKey(runtime.mac),
      labels: parseLabels(cniArgs.labels),
      dns: parseDns('runtimeConfig.dns', runtime.dns, true) ?? parseDns('dns', conf.dns, false),
      aliases: parseCniAliases(runtime.aliases, name, warnings),
      prevResult,
      validAttachments: parseValid(validKey(conf, runtime)),
    },
    warnings,
  };
}

function parseClaims(conf: Json): NetworkClaims {
  const claims: Record<string, unknown> = {};
  for (const k of ['ipMasq', 'isGateway', 'isDefaultGateway', 'hairpinMode'] as const) {
    if (conf[k] === undefined) continue;
    if (typeof conf[k] !== 'boolean') throw invalidConfig(k, conf[k], 'not true or false', `set ${k} to true or false, or leave it out`);
    claims[k] = conf[k];
  }
  if (conf.bridge !== undefined) {
    if (typeof conf.bridge !== 'string') throw invalidConfig('bridge', conf.bridge, 'not a string', 'leave "bridge" out: the ctnet network has its bridge');
    claims.bridge = conf.bridge;
  }
  if (conf.mtu !== undefined) {
    if (!Number.isInteger(conf.mtu) || (conf.mtu as number) < 68 || (conf.mtu as number) > 65535) {
      throw invalidConfig('mtu', conf.mtu, 'not an MTU from 68 to 65535', 'leave "mtu" out: the ctnet network has its MTU');
    }
    claims.mtu = conf.mtu;
  }
  return claims as NetworkClaims;
}

/**
 * A field by name, matched as Go's encoding/json does: the exact key first, then any casing.
 * containerd's CRI plugin sends portMappings with Go's field names (HostPort, ContainerPort,
 * Protocol, HostIP: go-cni's PortMapping has no JSON tags), and Go plugins read them alike.
 */
function field(m: Json, name: string): unknown {
  if (name in m) return m[name];
  const lower = name.toLowerCase();
  const k = Object.keys(m).find((x) => x.toLowerCase() === lower);
  return k === undefined ? undefined : m[k];
}

function parsePortMappings(v: unknown): PortMapping[] {
  if (v === undefined || v === null) return [];
  if (!Array.isArray(v)) throw invalidConfig('runtimeConfig.portMappings', v, 'not a list', 'pass a list of {hostPort, containerPort, protocol, hostIP}');
  return v.map((m: unknown, i) => {
    const key = `runtimeConfig.portMappings[${i}]`;
    if (!isObject(m)) throw invalidConfig(key, m, 'not an object', 'pass {hostPort, containerPort, protocol, hostIP}');
    const port = (k: string) => {
      const p = field(m, k);
      if (!Number.isInteger(p) || (p as number) < 1 || (p as number) > 65535) throw invalidConfig(`${key}.${k}`, p, 'not a port from 1 to 65535', 'give a whole number from 1 to 65535');
      return p as number;
    };
    const rawProtocol = field(m, 'protocol');
    const protocol = rawProtocol === undefined || rawProtocol === '' ? 'tcp' : rawProtocol;
    if (typeof protocol !== 'string') throw invalidConfig(`${key}.protocol`, protocol, 'not a string', 'use tcp, udp or sctp');
    const proto = protocol.toLowerCase();
    if (!(PROTOCOLS as readonly string[]).includes(proto)) {
      throw unsupported(`${key}.protocol`, protocol, `ctnet publishes ${PROTOCOLS.join(', ')} only`, 'use tcp, udp or sctp');
    }
    let hostIp = '';
    const rawHostIp = field(m, 'hostIP');
    if (rawHostIp !== undefined && rawHostIp !== '') {
      if (typeof rawHostIp !== 'string') throw invalidConfig(`${key}.hostIP`, rawHostIp, 'not a string', 'give a host address, or leave it out for all');
      let a;
      try {
        a = parseAddr('hostIP', rawHostIp);
      } catch (e) {
        throw invalidConfig(`${key}.hostIP`, rawHostIp, (e as Error).message, 'give a host address, or leave it out for all');
      }
      hostIp = formatAddr(a.family, a.n);
      if (hostIp === '::1') throw unsupported(`${key}.hostIP`, rawHostIp, 'IPv6 has no route_localnet, so ::1 cannot be DNATed to a container', 'publish on 127.0.0.1 or on all addresses');
    }
    return { proto: proto as Proto, hostIp, hostPort: port('hostPort'), containerPort: port('containerPort'), count: 1 };
  });
}

function parseIps(key: string, v: unknown): IpRequest[] {
  if (v === undefined || v === null) return [];
  if (!Array.isArray(v)) throw invalidConfig(key, v, 'not a list', 'pass a list of addresses such as ["10.88.0.5/24"]');
  const out: IpRequest[] = [];
  for (const [i, t] of v.entries()) {
    if (typeof t !== 'string') throw invalidConfig(`${key}[${i}]`, t, 'not a string', 'write addresses as "10.88.0.5/24" or "10.88.0.5"');
    try {
      const [addr, prefix, ...rest] = t.split('/');
      const a = parseAddr(`${key}[${i}]`, addr!);
      const bits = a.family === 4 ? 32 : 128;
      if (rest.length > 0 || (prefix !== undefined && (!/^\d{1,3}$/.test(prefix) || Number(prefix) > bits))) {
        throw new Error(`the prefix /${[prefix, ...rest].join('/')} is not one of /0 to /${bits}`);
      }
      const text = formatAddr(a.family, a.n);
      if (out.some((o) => o.text === text)) throw new Error(`${text} is given twice`);
      out.push({ ...a, text });
    } catch (e) {
      throw invalidConfig(`${key}[${i}]`, t, (e as Error).message, 'write addresses as "10.88.0.5/24" or "10.88.0.5"');
    }
  }
  return out;
}

function parseMacKey(v: unknown, key = 'runtimeConfig.mac'): string | undefined {
  if (v === undefined || v === null || v === '') return undefined;
  if (typeof v !== 'string') throw invalidConfig(key, v, 'not a string', 'write a MAC such as 02:42:ac:11:00:02');
  try {
    return parseMac(v);
  } catch (e) {
    throw invalidConfig(key, v, (e as Error).message, (e as CtnetError).hint ?? '');
  }
}

/**
 * podman (containers/common's CNI backend) asks for a static address and MAC in CNI_ARGS, as
 * IP=ADDR[,ADDR] and MAC=MAC (with IgnoreUnknown=1), as the reference plugins read them. They count
 * only where the configuration asks for nothing (runtimeConfig and args.cni come first).
 */
export function withArgsClaims(conf: NetConf, args: ReadonlyMap<string, string>): NetConf {
  const ip = args.get('IP');
  const mac = args.get('MAC');
  return {
    ...conf,
    ips: conf.ips.length === 0 && ip ? parseIps('CNI_ARGS IP', ip.split(',')) : conf.ips,
    mac: conf.mac ?? parseMacKey(mac, 'CNI_ARGS MAC'),
  };
}

/**
 * What DEL needs when the configuration cannot be parsed whole: the CNI network's name, if the
 * JSON has a usable one. DEL works from the store, so a bad runtimeConfig must not stop it.
 */
export function nameForDel(raw: Json): string | undefined {
  const name = raw.name;
  return typeof name === 'string' && /^[a-zA-Z0-9][a-zA-Z0-9_.-]*$/.test(name) ? name : undefined;
}

function parseLabels(v: unknown): { key: string; value: string }[] {
  if (v === undefined || v === null) return [];
  if (!Array.isArray(v)) throw invalidConfig('args.cni.labels', v, 'not a list', 'pass [{"key": "tier", "value": "web"}]');
  return v.map((l: unknown, i) => {
    if (!isObject(l) || typeof l.key !== 'string' || typeof l.value !== 'string') {
      throw invalidConfig(`args.cni.labels[${i}]`, l, 'not {"key": string, "value": string}', 'pass [{"key": "tier", "value": "web"}]');
    }
    try {
      return parseLabel(`args.cni.labels[${i}]`, `${l.key}=${l.value}`);
    } catch (e) {
      throw invalidConfig(`args.cni.labels[${i}]`, l, (e as Error).message, (e as CtnetError).hint ?? '');
    }
  });
}

const stringList = (key: string, v: unknown): string[] | undefined => {
  if (v === undefined || v === null) return undefined;
  if (!Array.isArray(v) || v.some((x) => typeof x !== 'string')) throw invalidConfig(key, v, 'not a list of strings', 'pass a list of strings');
  return v as string[];
};

/**
 * runtimeConfig.aliases (the "aliases" capability, as podman passes it for dnsname): {NETWORK: [names]},
 * this CNI network's list becomes the sandbox's aliases (DNS names on the network). A name that is
 * not a DNS label (a container name with "_") is skipped with a warning rather than failing ADD.
 */
function parseCniAliases(v: unknown, network: string, warnings: string[]): string[] {
  if (v === undefined) return [];
  if (!isObject(v)) throw invalidConfig('runtimeConfig.aliases', v, 'not an object', 'pass {"NETWORK": ["name", ...]}');
  const list = v[network];
  if (list === undefined) return [];
  if (!Array.isArray(list) || !list.every((x) => typeof x === 'string')) {
    throw invalidConfig(`runtimeConfig.aliases.${network}`, list, 'not a list of names', 'pass a list of DNS names');
  }
  const out: string[] = [];
  for (const a of list as string[]) {
    try {
      const label = parseDnsLabel(`runtimeConfig.aliases.${network}`, a);
      if (!out.includes(label)) out.push(label);
    } catch (e) {
      warnings.push(`ignoring alias ${JSON.stringify(a)}: ${(e as Error).message}`);
    }
  }
  return out;
}

/** Config "dns" uses the result's keys; runtimeConfig.dns uses servers/searches/options. */
function parseDns(key: string, v: unknown, runtime: boolean): Dns | undefined {
  if (v === undefined || v === null) return undefined;
  if (!isObject(v)) throw invalidConfig(key, v, 'not an object', 'pass {"nameservers": [...], "search": [...]}');
  const dns: { -readonly [K in keyof Dns]: Dns[K] } = {};
  const servers = stringList(`${key}.${runtime ? 'servers' : 'nameservers'}`, runtime ? v.servers : v.nameservers);
  const search = stringList(`${key}.${runtime ? 'searches' : 'search'}`, runtime ? v.searches : v.search);
  const options = stringList(`${key}.options`, v.options);
  if (servers) dns.nameservers = servers;
  if (search) dns.search = search;
  if (options) dns.options = options;
  if (!runtime && v.domain !== undefined) {
    if (typeof v.domain !== 'string') throw invalidConfig(`${key}.domain`, v.domain, 'not a string', 'give a domain name');
    dns.domain = v.domain;
  }
  return dns;
}

/**
 * The GC list, where the config or runtimeConfig has it. Present as null is an empty list: libcni
 * 1.2 sends null for a nil Go slice, which means no attachment is valid.
 */
function validKey(conf: Json, runtime: Json): unknown {
  const KEY = 'cni.dev/valid-attachments';
  if (conf[KEY] !== undefined) return conf[KEY] ?? [];
  if (runtime[KEY] !== undefined) return runtime[KEY] ?? [];
  return KEY in conf || KEY in runtime ? [] : undefined;
}

function parseValid(v: unknown): { containerId: string; ifname: string }[] | undefined {
  if (v === undefined) return undefined;
  const key = 'cni.dev/valid-attachments';
  if (!Array.isArray(v)) throw invalidConfig(key, v, 'not a list', 'pass [{"containerID": ..., "ifname": ...}]');
  return v.map((a: unknown, i) => {
    if (!isObject(a) || typeof a.containerID !== 'string' || typeof a.ifname !== 'string') {
      throw invalidConfig(`${key}[${i}]`, a, 'not {"containerID": string, "ifname": string}', 'pass [{"containerID": ..., "ifname": ...}]');
    }
    return { containerId: a.containerID, ifname: a.ifname };
  });
}

// ---- results ----

/** Appends ours to a previous plugin's result (ctnet after another plugin), shifting indices. */
export function mergeResult(prev: Record<string, unknown> | undefined, ours: CniResult): CniResult {
  if (!prev) return ours;
  const pi = Array.isArray(prev.interfaces) ? (prev.interfaces as CniInterface[]) : [];
  const pips = Array.isArray(prev.ips) ? (prev.ips as CniIp[]).map(({ address, gateway, interface: i }) => ({ address, gateway, interface: i })) : [];
  const proutes = Array.isArray(prev.routes) ? (prev.routes as CniRoute[]) : [];
  return {
    interfaces: [...pi, ...ours.interfaces],
    ips: [...pips, ...ours.ips.map((x) => ({ ...x, interface: x.interface + pi.length }))],
    routes: [...proutes, ...ours.routes],
    dns: isObject(prev.dns) && Object.keys(ours.dns).length === 0 ? (prev.dns as Dns) : ours.dns,
  };
}

/** The result JSON in the config's version: before 1.0.0, each IP also names its family. */
export function renderResult(r: CniResult, cniVersion: string): Record<string, unknown> {
  const legacy = !versionAtLeast(cniVersion, '1.0.0');
  return {
    cniVersion,
    interfaces: r.interfaces,
    ips: r.ips.map((ip) => (legacy ? { version: ip.address.includes(':') ? '6' : '4', ...ip } : ip)),
    routes: r.routes,
    dns: r.dns,
  };
}

export function renderError(e: CniError, cniVersion: string): Record<string, unknown> {
  return { cniVersion, code: e.code, msg: e.message, details: e.details };
}

export function renderVersion(cniVersion: string): Record<string, unknown> {
  return { cniVersion, supportedVersions: SUPPORTED_VERSIONS };
}
