// Bandwidth and latency shaping of one attachment (a sandbox on a network), parsed from the CLI's
// flags or CNI's `bandwidth` capability into one typed value before anything changes. Pure.
//
// Directions are the sandbox's: "in" is what reaches the sandbox (the host veth's egress),
// "out" what the sandbox sends (the host veth's ingress, redirected through an ifb device).
import { invalid } from '../errors.ts';

export interface Shape {
  /** Bits per second into the sandbox. */
  readonly rateIn?: number | undefined;
  /** Bits per second out of the sandbox. */
  readonly rateOut?: number | undefined;
  /** Token bucket sizes in bytes (a default is derived from the rate when not given). */
  readonly burstIn?: number | undefined;
  readonly burstOut?: number | undefined;
  /** Delay added on the way into the sandbox (so it adds to the round trip once). */
  readonly latencyMs?: number | undefined;
  /** Percentage of packets into the sandbox dropped. */
  readonly lossPct?: number | undefined;
}

/** The shaping of one direction of the host veth, as tc is told it. */
export interface DirShape {
  readonly rate?: number | undefined;
  readonly burst?: number | undefined;
  readonly delayMs?: number | undefined;
  readonly lossPct?: number | undefined;
}

export const MIN_RATE = 8_000; // 8 kbit/s: below it one full-size packet takes more than a second
export const MAX_RATE = 100_000_000_000; // 100 Gbit/s
/** A bucket smaller than a full frame would hold back every full-size packet for ever. */
export const MIN_BURST = 1600;
export const MAX_BURST = 1 << 30;

const RATE_UNITS: Record<string, number> = {
  bit: 1, kbit: 1e3, mbit: 1e6, gbit: 1e9, tbit: 1e12,
  kibit: 1024, mibit: 1024 ** 2, gibit: 1024 ** 3, tibit: 1024 ** 4,
  bps: 8, kbps: 8e3, mbps: 8e6, gbps: 8e9, tbps: 8e12,
  kibps: 8 * 1024, mibps: 8 * 1024 ** 2, gibps: 8 * 1024 ** 3, tibps: 8 * 1024 ** 4,
};

/**
 * A rate as tc spells it: 500kbit, 10mbit, 1gbit (bits per second, SI), 1mibit (binary), or bytes
 * per second with bps (1mbps = 8 Mbit/s). A bare number is refused: tc reads it as bytes, Docker
 * users expect bits, and a silent factor of 8 is worse than an error.
 */
export function parseRate(flag: string, text: string): number {
  const m = /^(\d+(?:\.\d+)?)([a-z]+)$/i.exec(text.trim());
  const unit = m?.[2]?.toLowerCase();
  const factor = unit === undefined ? undefined : RATE_UNITS[unit];
  if (!m || factor === undefined) {
    throw invalid(`${flag} ${JSON.stringify(text)} is not a rate`, 'give a number and a unit as tc does, e.g. 500kbit, 10mbit, 1gbit (bits per second) or 1mbps (bytes per second)');
  }
  const bits = Math.round(Number(m[1]) * factor);
  if (bits < MIN_RATE || bits > MAX_RATE) throw invalid(`${flag} ${text} is out of range`, 'use a rate from 8kbit to 100gbit');
  return bits;
}

const SIZE_UNITS: Record<string, number> = { '': 1, b: 1, k: 1024, kb: 1024, m: 1024 ** 2, mb: 1024 ** 2, g: 1024 ** 3, gb: 1024 ** 3, kbit: 128, mbit: 128 * 1024, gbit: 128 * 1024 ** 2 };

/** A size as tc spells it: bytes (1600, 1600b), 32k/32kb/1mb (binary, as tc), or 256kbit. */
export function parseSize(flag: string, text: string): number {
  const m = /^(\d+)([a-z]*)$/i.exec(text.trim());
  const factor = m ? SIZE_UNITS[m[2]!.toLowerCase()] : undefined;
  if (!m || factor === undefined) throw invalid(`${flag} ${JSON.stringify(text)} is not a size`, 'give bytes with an optional unit as tc does, e.g. 32kb, 1mb or 256kbit');
  return checkBurst(flag, text, Number(m[1]) * factor);
}

function checkBurst(flag: string, text: string, bytes: number): number {
  if (bytes < MIN_BURST || bytes > MAX_BURST) {
    throw invalid(`${flag} ${text} is out of range`, `use at least ${MIN_BURST} bytes (one full-size frame) and at most 1gb`);
  }
  return bytes;
}

/** Milliseconds: 50 or 50ms, from 1 to 60000. */
export function parseMs(flag: string, text: string): number {
  const m = /^(\d+)(ms)?$/.exec(text.trim());
  const ms = m ? Number(m[1]) : NaN;
  if (!m || ms < 1 || ms > 60_000) throw invalid(`${flag} ${JSON.stringify(text)} is not a delay ctnet accepts`, 'give whole milliseconds from 1 to 60000, e.g. 50ms');
  return ms;
}

/** A percentage: 1, 0.5 or 2.5%, above 0 and at most 100. */
export function parsePct(flag: string, text: string): number {
  const m = /^(\d+(?:\.\d+)?)%?$/.exec(text.trim());
  const pct = m ? Number(m[1]) : NaN;
  if (!m || !(pct > 0) || pct > 100) throw invalid(`${flag} ${JSON.stringify(text)} is not a percentage ctnet accepts`, 'give a number above 0 and at most 100, e.g. 1 or 0.5%');
  return pct;
}

export interface RawShape {
  rateIn?: string;
  rateOut?: string;
  burst?: string;
  latency?: string;
  loss?: string;
}

/** The CLI's flags as a Shape; undefined when none was given. */
export function parseShapeFlags(raw: RawShape): Shape | undefined {
  if ([raw.rateIn, raw.rateOut, raw.burst, raw.latency, raw.loss].every((x) => x === undefined)) return undefined;
  const rateIn = raw.rateIn === undefined ? undefined : parseRate('--rate-in', raw.rateIn);
  const rateOut = raw.rateOut === undefined ? undefined : parseRate('--rate-out', raw.rateOut);
  const burst = raw.burst === undefined ? undefined : parseSize('--burst', raw.burst);
  if (burst !== undefined && rateIn === undefined && rateOut === undefined) {
    throw invalid('--burst needs --rate-in or --rate-out', 'the burst is the size of a rate\'s token bucket');
  }
  const shape: Shape = {
    rateIn, rateOut,
    burstIn: rateIn !== undefined ? burst : undefined,
    burstOut: rateOut !== undefined ? burst : undefined,
    latencyMs: raw.latency === undefined ? undefined : parseMs('--latency', raw.latency),
    lossPct: raw.loss === undefined ? undefined : parsePct('--loss', raw.loss),
  };
  return shape;
}

/**
 * CNI's `bandwidth` capability (runtimeConfig.bandwidth, as the reference plugin takes it):
 * ingressRate/egressRate in bits per second, ingressBurst/egressBurst in bits. A rate of 0 means
 * "not limited"; a burst without its rate is refused, as the reference plugin does.
 */
export function parseCniBandwidth(key: string, v: unknown): Shape | undefined {
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'object' || Array.isArray(v)) throw invalid(`${key} is not an object`, 'pass {ingressRate, ingressBurst, egressRate, egressBurst}');
  const o = v as Record<string, unknown>;
  for (const k of Object.keys(o)) {
    if (!['ingressRate', 'ingressBurst', 'egressRate', 'egressBurst'].includes(k)) throw invalid(`${key}.${k} is not a bandwidth setting`, 'ctnet takes ingressRate, ingressBurst, egressRate, egressBurst');
  }
  const num = (k: string): number | undefined => {
    const x = o[k];
    if (x === undefined || x === 0) return undefined;
    if (typeof x !== 'number' || !Number.isSafeInteger(x) || x < 0) throw invalid(`${key}.${k} is ${JSON.stringify(x)}, not a whole number of bits`);
    return x;
  };
  const rate = (k: string) => {
    const r = num(k);
    if (r !== undefined && (r < MIN_RATE || r > MAX_RATE)) throw invalid(`${key}.${k} ${r} is out of range`, 'use 8000 to 100000000000 bits per second');
    return r;
  };
  const rateIn = rate('ingressRate');
  const rateOut = rate('egressRate');
  const burst = (k: string, r: number | undefined, rk: string) => {
    const b = num(k);
    if (b === undefined) return undefined;
    if (r === undefined) throw invalid(`${key}.${k} is given without ${key}.${rk}`);
    return checkBurst(`${key}.${k}`, `${b}`, Math.ceil(b / 8));
  };
  const shape = { rateIn, rateOut, burstIn: burst('ingressBurst', rateIn, 'ingressRate'), burstOut: burst('egressBurst', rateOut, 'egressRate') };
  return rateIn === undefined && rateOut === undefined ? undefined : shape;
}

/** True when the shape limits nothing (what --clear records: no row). */
export const isEmpty = (s: Shape) => s.rateIn === undefined && s.rateOut === undefined && s.latencyMs === undefined && s.lossPct === undefined;

/**
 * A shape changed by some flags: each given flag replaces its setting, the others stay. A changed
 * rate without a --burst drops the old burst (it was sized for the old rate).
 */
export function mergeShape(old: Shape | undefined, change: Shape): Shape {
  const o = old ?? {};
  return {
    rateIn: change.rateIn ?? o.rateIn,
    rateOut: change.rateOut ?? o.rateOut,
    burstIn: change.burstIn ?? (change.rateIn !== undefined ? undefined : o.burstIn),
    burstOut: change.burstOut ?? (change.rateOut !== undefined ? undefined : o.burstOut),
    latencyMs: change.latencyMs ?? o.latencyMs,
    lossPct: change.lossPct ?? o.lossPct,
  };
}

/**
 * The bucket when none is given: 10 ms at the rate, at least 16 KiB. Smaller buckets starve TCP
 * (a veth hands the qdisc 64 KiB GSO packets, which tbf must split); larger ones let bursts through
 * well above the rate.
 */
export function defaultBurst(rate: number): number {
  return Math.max(16 * 1024, Math.ceil(rate / 8 / 100));
}

/** The two directions as the host veth (in) and its ifb (out) are shaped; undefined: left alone. */
export function directions(s: Shape): { in?: DirShape | undefined; out?: DirShape | undefined } {
  const inn = s.rateIn !== undefined || s.latencyMs !== undefined || s.lossPct !== undefined
    ? { rate: s.rateIn, burst: s.rateIn === undefined ? undefined : (s.burstIn ?? defaultBurst(s.rateIn)), delayMs: s.latencyMs, lossPct: s.lossPct }
    : undefined;
  const out = s.rateOut !== undefined ? { rate: s.rateOut, burst: s.burstOut ?? defaultBurst(s.rateOut) } : undefined;
  return { in: inn, out };
}

/** A rate for people: 10mbit, 1.5gbit, 500kbit. */
export function formatRate(bits: number): string {
  for (const [unit, f] of [['gbit', 1e9], ['mbit', 1e6], ['kbit', 1e3]] as const) if (bits >= f) return `${+(bits / f).toFixed(3)}${unit}`;
  return `${bits}bit`;
}

/** The shape as inspect shows it (and --json carries it). */
export function describeShape(s: Shape): Record<string, string | number> {
  const d = directions(s);
  const out: Record<string, string | number> = {};
  if (s.rateIn !== undefined) Object.assign(out, { rateIn: formatRate(s.rateIn), burstIn: d.in!.burst! });
  if (s.rateOut !== undefined) Object.assign(out, { rateOut: formatRate(s.rateOut), burstOut: d.out!.burst! });
  if (s.latencyMs !== undefined) out.latency = `${s.latencyMs}ms`;
  if (s.lossPct !== undefined) out.loss = `${s.lossPct}%`;
  return out;
}
