// What `ctnet trace` needs from the kernel beyond its plans: nftables' trace monitor (`nft monitor
// trace`, the events of packets marked with `meta nftrace set 1`), one probe sent from a sandbox's
// namespace with a fixed source port (nc, ping), and the route a namespace picks (ip route get).
import { spawn } from 'node:child_process';
import { createSocket } from 'node:dgram';
import { readFileSync } from 'node:fs';
import type { Netns } from '../../model/netns.ts';
import { ipArgv, nsenterArgv } from '../../plan/render.ts';
import type { ProbeResult, ProbeSpec, TraceMarker, TraceMonitor } from '../backend.ts';
import { run } from './run.ts';

/** Starts `nft monitor trace` in ctnet's namespace; stop() ends it and returns its lines. */
export async function startTraceMonitor(marker?: TraceMarker): Promise<TraceMonitor> {
  // Line-buffered: into a pipe nft buffers its output, and a monitor ended by a signal never flushes it.
  const child = spawn('stdbuf', ['-oL', 'nft', 'monitor', 'trace'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let last = performance.now();
  let marked = false;
  const seen = marker && `0x${marker.token}`;
  child.stdout.setEncoding('utf8').on('data', (d: string) => {
    out += d;
    last = performance.now();
    if (seen && !marked && out.slice(-(d.length + seen.length)).includes(seen)) marked = true;
  });
  const exited = new Promise<void>((r) => child.on('close', () => r()));
  await new Promise<void>((r, j) => { child.once('spawn', () => r()); child.once('error', j); });
  // Ready once its netlink socket has joined the trace group: events before that are lost, and on a
  // loaded host nft's start can take longer than any fixed wait.
  const end = performance.now() + 3000;
  while (performance.now() < end && !subscribed(child.pid!)) await new Promise((r) => setTimeout(r, 5));
  const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
  return {
    async stop(opts = {}): Promise<string[]> {
      const start = performance.now();
      const end = start + 3000;
      if (marker && opts.marker) {
        await sendMarker(marker);
        opts.onMarked?.();
        while (performance.now() < end && !marked) await sleep(5);
      } else {
        opts.onMarked?.();
        // No marker: wait until nft has read everything queued on its socket (on a loaded host it
        // lags) and 60 ms pass without a line (at most 3 s); and at least 250 ms, since nft may have
        // read a message but not printed it yet.
        while (performance.now() < end && (performance.now() - start < 250 || queued(child.pid!) || performance.now() - last < 60)) await sleep(20);
      }
      child.kill('SIGTERM');
      await exited;
      return out.split('\n').filter((l) => l.startsWith('trace id '));
    },
  };
}

/** The marker: one datagram from ctnet's namespace to its own loopback (nothing need listen). */
async function sendMarker(m: TraceMarker): Promise<void> {
  const s = createSocket('udp4');
  try {
    await new Promise<void>((r, j) => s.send(Buffer.from(m.token, 'hex'), m.port, '127.0.0.1', (e) => (e ? j(e) : r())));
  } finally {
    s.close();
  }
}

/** NFNLGRP_NFTRACE (9): bit 8 of a netlink socket's groups in /proc/PID/net/netlink. */
const NFTRACE_GROUP = 1 << 8;

/** True while PID's netfilter netlink socket has messages it has not read yet (its Rmem). */
function queued(pid: number): boolean {
  try {
    return readFileSync(`/proc/${pid}/net/netlink`, 'utf8').split('\n').some((l) => {
      const f = l.trim().split(/\s+/);
      return f[1] === '12' && f[2] === String(pid) && Number(f[4] ?? '0') > 0;
    });
  } catch {
    return false;
  }
}

/** True when process PID has a netfilter netlink socket (family 12) in the trace group. */
function subscribed(pid: number): boolean {
  try {
    return readFileSync(`/proc/${pid}/net/netlink`, 'utf8').split('\n').some((l) => {
      const f = l.trim().split(/\s+/);
      return f[1] === '12' && f[2] === String(pid) && (parseInt(f[3] ?? '0', 16) & NFTRACE_GROUP) !== 0;
    });
  } catch {
    return false;
  }
}

/** argv of the probe: one new flow with a fixed source port (ICMP: one echo request). */
export function probeArgv(p: ProbeSpec): string[] {
  const w = String(Math.max(1, Math.round(p.timeoutMs / 1000)));
  switch (p.proto) {
    case 'tcp':
      return ['nc', '-z', '-v', '-n', '-w', w, '-p', String(p.sport), p.dst, String(p.port)];
    case 'udp':
      // A datagram, then wait for an answer; nc's exit says nothing about delivery, its output does.
      return ['sh', '-c', `printf 'ctnet-trace\\n' | nc -u -n -w ${w} -p ${p.sport} ${p.dst} ${p.port}`];
    case 'icmp':
      return ['ping', '-n', '-c', '1', '-W', w, p.dst];
  }
}

export async function sendProbe(ns: Netns | undefined, p: ProbeSpec): Promise<ProbeResult> {
  try {
    const r = await run('trace.probe', ns ? nsenterArgv(ns, probeArgv(p)) : probeArgv(p));
    return { ok: true, answered: p.proto !== 'udp' || r.stdout.length > 0, detail: (r.stdout + r.stderr).trim() };
  } catch (e) {
    const text = String((e as Error).message);
    return { ok: false, answered: false, refused: /refused/i.test(text), detail: text.split('\n').slice(-2).join(' ').trim() };
  }
}

/** Equivalent to: ip [-n NS] -j route get DST */
export async function routeGet(ns: Netns | undefined, dst: string): Promise<{ dst: string; gateway?: string; dev?: string; prefsrc?: string; type?: string }[]> {
  try {
    const { stdout } = await run('route.get', ipArgv(ns, ['-j', 'route', 'get', dst]));
    return stdout.trim() ? JSON.parse(stdout) : [];
  } catch {
    return [];
  }
}
