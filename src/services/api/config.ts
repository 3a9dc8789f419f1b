// Where the live page listens, as `ctnet ui` asks ctnetd: STATE_DIR/ui.json holds the address and,
// for a non-loopback one, the SHA-256 of the token (the token itself is printed once, never stored).
// ctnetd's web service reads it at start and on SIGHUP, and answers in STATE_DIR/ui.state with the
// address it really listens on (port 0: the kernel's choice) or why it could not, tagged with the
// request's generation so `ctnet ui` knows the answer is to its own request.
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { isIP } from 'node:net';
import { join } from 'node:path';
import { invalid } from '../../errors.ts';

export const DEFAULT_LISTEN = '127.0.0.1:7390';
const CONFIG_NAME = 'ui.json';
const STATE_NAME = 'ui.state';

export interface Listen {
  readonly host: string;
  readonly port: number;
}

export interface UiConfig {
  readonly listen: string;
  /** sha256 hex of the token; null: loopback, no token. */
  readonly tokenHash: string | null;
  readonly generation: string;
}

export interface UiState {
  readonly generation: string;
  /** http://HOST:PORT/ when it listens. */
  readonly url?: string | undefined;
  readonly error?: string | undefined;
}

/** ADDR:PORT, [IPv6]:PORT or localhost:PORT; PORT 0 lets the kernel choose. */
export function parseListen(text: string): Listen {
  const m = /^(?:\[([^\]]+)\]|([^:[\]]+)):(\d{1,5})$/.exec(text);
  const host = m ? (m[1] ?? m[2]!) : '';
  const port = m ? Number(m[3]) : NaN;
  if (!m || !(host === 'localhost' || isIP(host)) || m[1] !== undefined && isIP(host) !== 6 || port > 65535) {
    throw invalid(`--listen ${JSON.stringify(text)} is not ADDR:PORT`, `e.g. ${DEFAULT_LISTEN}, [::1]:7390, 0.0.0.0:7390 (needs the token it prints), 127.0.0.1:0 (any free port)`);
  }
  return { host: host === 'localhost' ? '127.0.0.1' : host, port };
}

export const isLoopback = (host: string) => /^127\./.test(host) || host === '::1';
export const formatListen = (l: Listen) => (l.host.includes(':') ? `[${l.host}]:${l.port}` : `${l.host}:${l.port}`);

export const newToken = () => randomBytes(24).toString('base64url');
export const hashToken = (token: string) => createHash('sha256').update(token).digest('hex');

/** Constant-time comparison of a presented token with the recorded hash. */
export function tokenMatches(presented: string | undefined, hash: string): boolean {
  if (presented === undefined) return false;
  const a = Buffer.from(hashToken(presented), 'hex');
  const b = Buffer.from(hash, 'hex');
  return a.length === b.length && timingSafeEqual(a, b);
}

function readJson<T>(path: string): T | undefined {
  try {
    return JSON.parse(readFileSync(path, 'utf8')) as T;
  } catch {
    return undefined;
  }
}

function writeAtomic(path: string, value: unknown): void {
  writeFileSync(`${path}.tmp`, JSON.stringify(value) + '\n', { mode: 0o600 });
  renameSync(`${path}.tmp`, path);
}

export const readUiConfig = (stateDir: string) => readJson<UiConfig>(join(stateDir, CONFIG_NAME));
export const writeUiConfig = (stateDir: string, c: UiConfig) => writeAtomic(join(stateDir, CONFIG_NAME), c);
export const removeUiConfig = (stateDir: string) => rmSync(join(stateDir, CONFIG_NAME), { force: true });
export const readUiState = (stateDir: string) => readJson<UiState>(join(stateDir, STATE_NAME));
export const writeUiState = (stateDir: string, s: UiState) => writeAtomic(join(stateDir, STATE_NAME), s);
