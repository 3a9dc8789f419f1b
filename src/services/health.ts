// ctnetd's health checks of services' backends (`service create --check tcp|http:PATH`): each
// backend a service's selector picks is probed from the host every interval (a TCP connect to its
// address and target port, or an HTTP GET of PATH answered 2xx or 3xx). FAILS_TO_LEAVE failures in
// a row take it out of its service's rule, one pass puts it back, and a new backend is out until
// its first pass (engine/services.ts setServiceHealth: the store's `unready` list, then
// syncServices, which puts a new candidate on that list). Probes run outside ctnetd's
// request queue; reading the backends and changing the rule run in it. Without ctnetd nothing is
// probed and the backends stay as the last check left them.
import { http } from '../http.ts';
import { connect } from 'node:net';
import { serviceCandidates, setServiceHealth } from '../engine/services.ts';
import type { ServiceCheck } from '../model/service.ts';
import type { Service, ServiceContext } from './service.ts';

/** Failed probes in a row that take a backend out. */
export const FAILS_TO_LEAVE = 2;
/** A probe's answer must come within this (or the interval, when shorter). */
const PROBE_TIMEOUT_MS = 1000;

export interface HealthState {
  /** Failed probes in a row, per backend address. */
  readonly fails: ReadonlyMap<string, number>;
  /** Backends out of the rule (sorted). */
  readonly unready: readonly string[];
}

/**
 * One round's results (address -> passed) applied to the state: FAILS_TO_LEAVE failures in a row
 * take a backend out, one pass puts it back; an address no longer probed is forgotten. Pure.
 */
export function judgeRound(state: HealthState, results: ReadonlyMap<string, boolean>): HealthState {
  const fails = new Map<string, number>();
  const unready: string[] = [];
  for (const [ip, ok] of results) {
    const n = ok ? 0 : (state.fails.get(ip) ?? 0) + 1;
    fails.set(ip, n);
    if (!ok && (n >= FAILS_TO_LEAVE || state.unready.includes(ip))) unready.push(ip);
  }
  return { fails, unready: unready.sort() };
}

/** One probe of one backend: true when it answered as the check asks. */
export function probe(check: ServiceCheck, ip: string, port: number, timeoutMs: number): Promise<boolean> {
  return new Promise((resolve) => {
    const done = (ok: boolean) => resolve(ok);
    if (check.kind === 'tcp') {
      const s = connect({ host: ip, port, timeout: timeoutMs });
      s.on('connect', () => {
        s.destroy();
        done(true);
      });
      s.on('timeout', () => {
        s.destroy();
        done(false);
      });
      s.on('error', () => done(false));
      return;
    }
    const req = http.request({ host: ip, port, path: check.path, method: 'GET', timeout: timeoutMs, agent: false }, (res) => {
      res.resume();
      done(res.statusCode !== undefined && res.statusCode >= 200 && res.statusCode < 400);
    });
    req.on('timeout', () => req.destroy(new Error('timed out')));
    req.on('error', () => done(false));
    req.end();
  });
}

export function healthChecks(): Service {
  let ctx: ServiceContext;
  /** Per service with a check: its timer and what it was made for (a change of check makes a new one). */
  const timers = new Map<string, { timer: NodeJS.Timeout; key: string }>();
  const states = new Map<string, HealthState>();
  const busy = new Set<string>();
  let stopped = false;

  async function round(name: string): Promise<void> {
    if (busy.has(name) || stopped) return;
    busy.add(name);
    try {
      const now = await ctx.exclusive(async (c) => {
        const s = c.store.service(name);
        // Not while its create or rm is under way (its chain is not there yet, or going).
        return s?.check && (s.state ?? 'ready') === 'ready' ? { s, check: s.check, candidates: serviceCandidates(c.store, s) } : undefined;
      });
      if (!now || stopped) return;
      const { s, check, candidates } = now;
      const timeout = Math.min(PROBE_TIMEOUT_MS, check.intervalMs);
      const results = new Map(await Promise.all(candidates.map(async (ip) => [ip, await probe(check, ip, s.targetPort, timeout)] as const)));
      // Failures in a row from memory; who is out from the store (syncServices adds new backends
      // there, out until their first pass).
      const was = { fails: states.get(name)?.fails ?? new Map<string, number>(), unready: [...(s.unready ?? [])].sort() };
      const next = judgeRound(was, results);
      states.set(name, next);
      const before = [...(s.unready ?? [])].sort();
      if (JSON.stringify(next.unready) === JSON.stringify(before) || stopped) return;
      await ctx.exclusive((c) => setServiceHealth(c, name, next.unready, [...results.keys()]));
      const out = next.unready.filter((ip) => !before.includes(ip));
      const back = before.filter((ip) => !next.unready.includes(ip) && results.get(ip) === true);
      ctx.log(`service ${name}: ${[...(out.length ? [`${out.join(', ')} not ready (${FAILS_TO_LEAVE} failed checks): out`] : []),
        ...(back.length ? [`${back.join(', ')} passed: in`] : [])].join('; ') || 'backends as checked'}`);
    } catch (e) {
      ctx.log(`service ${name}: a health check round failed, trying again at the next: ${(e as Error).message}`);
    } finally {
      busy.delete(name);
    }
  }

  /** One timer per service with a check, as the store has them now. */
  async function refresh(): Promise<void> {
    if (stopped) return;
    const want = await ctx.exclusive(async (c) => c.store.services().flatMap((s) => (s.check ? [{ name: s.name, check: s.check }] : [])));
    const keys = new Map(want.map((w) => [w.name, JSON.stringify(w.check)]));
    for (const [name, t] of timers) {
      if (keys.get(name) === t.key) continue;
      clearInterval(t.timer);
      timers.delete(name);
      states.delete(name);
    }
    for (const w of want) {
      if (timers.has(w.name) || stopped) continue;
      timers.set(w.name, { key: keys.get(w.name)!, timer: setInterval(() => void round(w.name), w.check.intervalMs) });
      void round(w.name); // at once: a new service's backends are out until their first pass
    }
  }
  const kick = () => void refresh().catch((e: unknown) => ctx.log(`reading the services failed: ${(e as Error).message}`));

  return {
    name: 'health',
    start(c) {
      ctx = c;
      kick();
    },
    changes(events) {
      if (events.some((e) => e.kind === 'service')) kick();
      // A new backend waits for its first probe (a new service's once it is made): a round now rather than an interval later.
      if (events.some((e) => e.kind === 'service' || e.kind === 'label' || e.kind === 'attachment' || e.kind === 'address' || e.kind === 'remote')) {
        for (const name of timers.keys()) void round(name);
      }
    },
    resync() {
      kick();
    },
    stop() {
      stopped = true;
      for (const t of timers.values()) clearInterval(t.timer);
      timers.clear();
    },
  };
}
