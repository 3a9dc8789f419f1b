// Published ports: `-p [HOST_IP:]HOST_PORT[-END]:CONTAINER_PORT[-END][/PROTO]`, parsed into typed
// mappings, plus the pure rules about them (which mappings collide, which map elements they make).
import { invalid } from '../errors.ts';
import { formatAddr, parseAddr, type Family } from './cidr.ts';

export const PROTOCOLS = ['tcp', 'udp', 'sctp'] as const;
export type Proto = (typeof PROTOCOLS)[number];

/**
 * Which host addresses a mapping answers on: every address of both families (''), every IPv4
 * address ('0.0.0.0'), every IPv6 address ('::'), or one address.
 */
export type HostIp = string;

export interface PortMapping {
  readonly proto: Proto;
  readonly hostIp: HostIp;
  readonly hostPort: number;
  readonly containerPort: number;
  /** Length of the range; ranges map one to one (hostPort + i -> containerPort + i). */
  readonly count: number;
}

const WILDCARDS: Record<string, Family | undefined> = { '': undefined, '0.0.0.0': 4, '::': 6 };

export function isWildcard(ip: HostIp): boolean {
  return ip in WILDCARDS;
}

/** The address families a host address selection covers. */
export function hostIpFamilies(ip: HostIp): Family[] {
  if (ip === '') return [4, 6];
  if (ip in WILDCARDS) return [WILDCARDS[ip]!];
  return [ip.includes(':') ? 6 : 4];
}

function parsePort(what: string, text: string): number {
  if (!/^\d{1,5}$/.test(text)) throw invalid(`${what} ${JSON.stringify(text)} is not a port number`, 'ports are whole numbers from 1 to 65535');
  const n = Number(text);
  if (n < 1 || n > 65535) throw invalid(`${what} ${n} is out of range`, 'ports are whole numbers from 1 to 65535');
  return n;
}

function parseRange(what: string, text: string): { start: number; count: number } {
  const parts = text.split('-');
  if (parts.length > 2 || parts.some((p) => p === '')) throw invalid(`${what} ${JSON.stringify(text)} is not a port or a range`, 'write a port (80) or a range (8000-8010)');
  const start = parsePort(what, parts[0]!);
  const end = parts.length === 2 ? parsePort(what, parts[1]!) : start;
  if (end < start) throw invalid(`${what} range ${text} ends before it starts`, `write it low to high, e.g. ${end}-${start}`);
  return { start, count: end - start + 1 };
}

/** Parses one -p value. The host address, when given, is checked against the host by the engine. */
export function parsePortSpec(text: string): PortMapping {
  const bad = (why: string) => invalid(`-p ${JSON.stringify(text)}: ${why}`, 'write [HOST_IP:]HOST_PORT[-END]:CONTAINER_PORT[-END][/tcp|/udp|/sctp], e.g. -p 8080:80 or -p 127.0.0.1:5353:53/udp');
  let rest = text;
  let proto: Proto = 'tcp';
  const slash = rest.lastIndexOf('/');
  if (slash >= 0) {
    const p = rest.slice(slash + 1).toLowerCase();
    if (!(PROTOCOLS as readonly string[]).includes(p)) throw bad(`unknown protocol ${JSON.stringify(rest.slice(slash + 1))}`);
    proto = p as Proto;
    rest = rest.slice(0, slash);
  }
  let hostIp = '';
  if (rest.startsWith('[')) {
    const close = rest.indexOf(']:');
    if (close < 0) throw bad('an IPv6 host address in brackets must be followed by ":HOST_PORT"');
    hostIp = parseHostIp(rest.slice(1, close), text);
    rest = rest.slice(close + 2);
  }
  const parts = rest.split(':');
  if (parts.length === 3 && hostIp === '') {
    if (parts[0]!.includes('.') || parts[0] === '') hostIp = parseHostIp(parts.shift()!, text);
    else throw bad('an IPv6 host address must be written in brackets, e.g. [2001:db8::1]:8080:80');
  }
  if (parts.length === 1) throw bad('the host port is missing (ctnet does not pick one for you)');
  if (parts.length !== 2) throw bad('too many ":"');
  if (parts[0] === '') throw bad('the host port is missing (ctnet does not pick one for you)');
  const host = parseRange('host port', parts[0]!);
  const container = parseRange('container port', parts[1]!);
  if (host.count !== container.count) {
    throw bad(`the host range has ${host.count} port(s) and the container range ${container.count}; ranges map one to one`);
  }
  return { proto, hostIp, hostPort: host.start, containerPort: container.start, count: host.count };
}

function parseHostIp(ip: string, text: string): HostIp {
  if (ip === '') throw invalid(`-p ${JSON.stringify(text)}: the host address is empty`, 'leave it out to publish on every host address');
  const a = parseAddr('host address', ip);
  const canonical = formatAddr(a.family, a.n);
  if (canonical === '::1') {
    throw invalid(`-p ${JSON.stringify(text)}: ::1 cannot be published`,
      'the kernel cannot DNAT IPv6 loopback traffic to another interface (there is no route_localnet for IPv6); use 127.0.0.1, or the host\'s own IPv6 address');
  }
  return canonical;
}

/** The canonical text of a mapping, as `ctnet port` prints and `port rm` accepts it. */
export function formatPortSpec(m: PortMapping): string {
  const range = (start: number) => (m.count === 1 ? `${start}` : `${start}-${start + m.count - 1}`);
  const host = m.hostIp === '' ? '' : m.hostIp.includes(':') ? `[${m.hostIp}]:` : `${m.hostIp}:`;
  return `${host}${range(m.hostPort)}:${range(m.containerPort)}/${m.proto}`;
}

/** True when two mappings would claim the same host address, protocol and port. */
export function collides(a: PortMapping, b: PortMapping): boolean {
  if (a.proto !== b.proto) return false;
  if (a.hostPort + a.count <= b.hostPort || b.hostPort + b.count <= a.hostPort) return false;
  const fa = hostIpFamilies(a.hostIp);
  if (!hostIpFamilies(b.hostIp).some((f) => fa.includes(f))) return false;
  return a.hostIp === b.hostIp || isWildcard(a.hostIp) || isWildcard(b.hostIp);
}

/** Docker's way of showing a mapping: 80/tcp -> 0.0.0.0:8080 (one line per family). */
export function describeMapping(m: PortMapping, families: readonly Family[]): string[] {
  const range = (start: number) => (m.count === 1 ? `${start}` : `${start}-${start + m.count - 1}`);
  return hostIpFamilies(m.hostIp).filter((f) => families.includes(f)).map((f) => {
    const ip = isWildcard(m.hostIp) ? (f === 4 ? '0.0.0.0' : '::') : m.hostIp;
    return `${range(m.containerPort)}/${m.proto} -> ${f === 6 ? `[${ip}]` : ip}:${range(m.hostPort)}`;
  });
}
