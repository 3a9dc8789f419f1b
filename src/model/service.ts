// A service's request, parsed at the boundary (pure): `--port 80[/tcp|/udp]`,
// `--to label:KEY=VALUE[:TARGET_PORT]`, `--affinity client-ip`, `--publish [HOST_IP:]HOST_PORT`.
import { CtnetError } from '../errors.ts';
import { formatAddr, parseAddr } from './cidr.ts';
import type { PortMapping } from './ports.ts';
import { parseLabel } from './policy.ts';

export type ServiceProto = 'tcp' | 'udp';
export type Affinity = 'none' | 'client-ip';

export interface ServicePort {
  readonly proto: ServiceProto;
  readonly port: number;
}

export interface ServiceTarget {
  readonly selector: { readonly key: string; readonly value: string };
  /** The backends' port; the service's port when not given. */
  readonly targetPort: number | undefined;
}

const invalid = (message: string, hint?: string) => new CtnetError('INVALID_ARGUMENT', message, hint);

function portNumber(what: string, text: string): number {
  if (!/^\d{1,5}$/.test(text) || Number(text) < 1 || Number(text) > 65535) {
    throw invalid(`${what}: ${JSON.stringify(text)} is not a port (1-65535)`);
  }
  return Number(text);
}

/** `80`, `80/tcp`, `53/udp`. */
export function parseServicePort(text: string): ServicePort {
  const m = /^([^/]*)(?:\/(.*))?$/.exec(text)!;
  const proto = m[2] ?? 'tcp';
  if (proto !== 'tcp' && proto !== 'udp') throw invalid(`--port ${text}: protocol ${JSON.stringify(proto)} is not tcp or udp`, 'write PORT, PORT/tcp or PORT/udp');
  return { proto, port: portNumber(`--port ${text}`, m[1]!) };
}

/** `label:KEY=VALUE` or `label:KEY=VALUE:TARGET_PORT` (label values hold no ':'). */
export function parseServiceTarget(text: string): ServiceTarget {
  if (!text.startsWith('label:')) throw invalid(`--to ${JSON.stringify(text)} does not start with "label:"`, 'select backends by label: --to label:app=web[:8080]');
  const rest = text.slice('label:'.length);
  const colon = rest.indexOf(':');
  const label = colon < 0 ? rest : rest.slice(0, colon);
  const selector = parseLabel('--to label', label);
  const targetPort = colon < 0 ? undefined : portNumber(`--to ${text}: target port`, rest.slice(colon + 1));
  return { selector, targetPort };
}

export function parseAffinity(text: string | undefined): Affinity {
  if (text === undefined || text === 'none') return 'none';
  if (text === 'client-ip') return 'client-ip';
  throw invalid(`--affinity ${JSON.stringify(text)} is not client-ip or none`);
}

export const formatSelector = (s: ServiceTarget['selector']) => `label:${s.key}=${s.value}`;
/** `--to` as parseServiceTarget reads it back, with the target port written out. */
export const formatTarget = (s: ServiceTarget['selector'], targetPort: number) => `${formatSelector(s)}:${targetPort}`;

/**
 * `--publish`: the host address and port the world reaches the service on. Services have IPv4
 * VIPs, so a host port without an address is every IPv4 address of the host ('0.0.0.0').
 */
export interface ServicePublish {
  readonly hostIp: string;
  readonly hostPort: number;
}

/** `HOST_PORT` or `HOST_IP:HOST_PORT` (IPv4). */
export function parseServicePublish(text: string): ServicePublish {
  const colon = text.lastIndexOf(':');
  const ipText = colon < 0 ? '' : text.slice(0, colon);
  if (ipText.includes(':') || ipText.startsWith('[')) {
    throw invalid(`--publish ${text}: services are published on IPv4 host addresses for now`, 'write --publish HOST_PORT or --publish IPV4:HOST_PORT');
  }
  const hostPort = portNumber(`--publish ${text}: host port`, colon < 0 ? text : text.slice(colon + 1));
  if (colon < 0) return { hostIp: '0.0.0.0', hostPort };
  if (ipText === '') throw invalid(`--publish ${text}: the host address is empty`, 'leave it out (and the ":") to publish on every IPv4 address of the host');
  const a = parseAddr(`--publish ${text}: host address`, ipText);
  if (a.family !== 4) throw invalid(`--publish ${text}: services are published on IPv4 host addresses for now`);
  return { hostIp: formatAddr(4, a.n), hostPort };
}

/** A published service as a port mapping (the same collision rules as sandboxes' `-p`). */
export const publishMapping = (p: ServicePublish, proto: ServiceProto, targetPort: number): PortMapping =>
  ({ proto, hostIp: p.hostIp, hostPort: p.hostPort, containerPort: targetPort, count: 1 });

export const formatPublish = (p: ServicePublish) => `${p.hostIp}:${p.hostPort}`;

/** `--check`: how ctnetd probes each backend (services/health.ts), and how often. */
export type ServiceCheck =
  | { readonly kind: 'tcp'; readonly intervalMs: number }
  | { readonly kind: 'http'; readonly path: string; readonly intervalMs: number };

export const DEFAULT_CHECK_INTERVAL_MS = 2000;

/** A duration: 500ms, 2s, 1m (from 100 ms to 60 min). */
export function parseDuration(flag: string, text: string): number {
  const m = /^(\d+)(ms|s|m)$/.exec(text.trim());
  const ms = m ? Number(m[1]) * (m[2] === 'ms' ? 1 : m[2] === 's' ? 1000 : 60_000) : NaN;
  if (!m || ms < 100 || ms > 3_600_000) throw invalid(`${flag} ${JSON.stringify(text)} is not a duration ctnet accepts`, 'give e.g. 500ms, 2s or 1m (from 100ms to 60m)');
  return ms;
}

/** `--check tcp|http:PATH` with `--check-interval DURATION` (default 2s); neither: no check. */
export function parseServiceCheck(check: string | undefined, interval: string | undefined): ServiceCheck | undefined {
  if (check === undefined) {
    if (interval !== undefined) throw invalid(`--check-interval ${interval}: there is no --check to time`, 'give --check tcp or --check http:/PATH with it');
    return undefined;
  }
  const intervalMs = interval === undefined ? DEFAULT_CHECK_INTERVAL_MS : parseDuration('--check-interval', interval);
  if (check === 'tcp') return { kind: 'tcp', intervalMs };
  if (check.startsWith('http:')) {
    const path = check.slice('http:'.length);
    if (!/^\/[\x21-\x7e]*$/.test(path)) {
      throw invalid(`--check ${check}: the path ${JSON.stringify(path)} must start with "/" and hold no spaces or control characters`, 'write e.g. --check http:/healthz');
    }
    return { kind: 'http', path, intervalMs };
  }
  throw invalid(`--check ${JSON.stringify(check)} is not tcp or http:PATH`, 'write --check tcp or --check http:/healthz');
}

const formatMs = (ms: number) => (ms % 60_000 === 0 ? `${ms / 60_000}m` : ms % 1000 === 0 ? `${ms / 1000}s` : `${ms}ms`);
/** `--check` and `--check-interval` as parseServiceCheck reads them back. */
export const checkFlags = (c: ServiceCheck) => ({ check: c.kind === 'tcp' ? 'tcp' : `http:${c.path}`, checkInterval: `${c.intervalMs}ms` });
export const formatCheck = (c: ServiceCheck) => `${c.kind === 'tcp' ? 'tcp' : `http:${c.path}`} every ${formatMs(c.intervalMs)}`;
