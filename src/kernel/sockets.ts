// Sockets listening in ctnet's namespace (ss from iproute2), to refuse publishing a host port a
// host process already serves.
import { readFileSync } from 'node:fs';
import { basename } from 'node:path';
import type { Listener } from './backend.ts';

/** Parses `ss -Hlnp -t -u` lines: Netid State Recv-Q Send-Q Local:Port Peer:Port [users:((...))]. */
export function parseListeners(text: string): Listener[] {
  const out: Listener[] = [];
  for (const line of text.split('\n')) {
    const cols = line.trim().split(/\s+/);
    if (cols.length < 6) continue;
    const proto = cols[0] as Listener['proto'];
    if (!['tcp', 'udp', 'sctp'].includes(proto)) continue;
    const local = cols[4]!;
    const colon = local.lastIndexOf(':');
    let address = local.slice(0, colon).replace(/^\[|\]$/g, '');
    address = address.replace(/%.*$/, ''); // 0.0.0.0%lo: bound to a device
    const port = Number(local.slice(colon + 1));
    if (!Number.isInteger(port)) continue;
    const processes = [...line.matchAll(/\("([^"]*)",pid=(\d+)/g)].map((m) => `${programName(m[2]!) ?? m[1]} (pid ${m[2]})`);
    out.push({ proto, address, port, processes });
  }
  return out;
}

/** argv of: ss -Hlnp -t -u [--sctp] */
export const listenersArgv = (sctp: boolean) => ['ss', '-H', '-l', '-n', '-p', '-t', '-u', ...(sctp ? ['-S'] : [])];

/** The program a pid runs (ss shows the thread name, e.g. node's "MainThread"). */
function programName(pid: string): string | undefined {
  try {
    const argv0 = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0')[0];
    return argv0 ? basename(argv0) : undefined;
  } catch {
    return undefined;
  }
}

/**
 * The protocol and local port of every TCP socket listening and every UDP socket in this
 * namespace, from /proc/net (the namespace of the reading thread): a superset of what ss -l -t -u
 * lists, read without spawning it.
 */
export function socketPorts(): { proto: 'tcp' | 'udp'; port: number }[] {
  const out: { proto: 'tcp' | 'udp'; port: number }[] = [];
  for (const [file, proto] of [['tcp', 'tcp'], ['tcp6', 'tcp'], ['udp', 'udp'], ['udp6', 'udp']] as const) {
    let text = '';
    try {
      text = readFileSync(`/proc/net/${file}`, 'utf8');
    } catch {
      continue; // no IPv6 in this kernel
    }
    out.push(...parseProcNet(text, proto).map((port) => ({ proto, port })));
  }
  return out;
}

/** The local ports in one /proc/net/{tcp,udp}[6] table: of listening sockets (TCP), of every socket (UDP). */
export function parseProcNet(text: string, proto: 'tcp' | 'udp'): number[] {
  const ports: number[] = [];
  for (const line of text.split('\n').slice(1)) {
    // sl local_address rem_address st ...: "0: 0100007F:1F90 00000000:0000 0A ..."
    const [, local, , st] = line.trim().split(/\s+/);
    if (!local || !local.includes(':') || (proto === 'tcp' && st !== '0A')) continue; // 0A: LISTEN
    const port = parseInt(local.slice(local.lastIndexOf(':') + 1), 16);
    if (Number.isInteger(port)) ports.push(port);
  }
  return ports;
}
