// The live page's HTTP API (ctnetd's web service serves it; docs/ui.md). No framework: node:http's
// request and response, routed here. Every request passes three gates before its route:
// - Host: the name the client used must be this server's address (a DNS-rebinding page that makes a
//   browser talk to 127.0.0.1 under its own name is refused);
// - Origin (and Sec-Fetch-Site): a browser request must come from the page itself, never another site;
// - the token, when the server listens beyond loopback (Authorization: Bearer, or ?token=).
// Failures are JSON: status + {error, hint}. Parameters are parsed before any work, unknown ones refused.
import type { IncomingMessage, ServerResponse } from 'node:http';
import { CtnetError } from '../../errors.ts';
import type { Counters } from '../../engine/counters.ts';
import type { Graph } from '../../engine/graph.ts';
import { tokenMatches } from './config.ts';

/** What the routes call: the use cases, through ctnetd (services/api/service.ts). */
export interface ApiDeps {
  /** The graph and the change feed's cursor it is current at (the page applies deltas from there). */
  graph(): Promise<{ graph: Graph; cursor: number }>;
  counters(): Promise<Counters>;
  trace(src: string, dst: string): Promise<unknown>;
  explain(object: string): Promise<{ object: string; lines: string[] }>;
  /** The page's HTML; nonce goes on its inline script and style (the Content-Security-Policy allows only them). */
  page(nonce: string): string;
  /** Calls send with each change batch ("changed" and its cursor) until the returned function is called. */
  subscribe(send: (event: string, data: unknown) => void): () => void;
}

export interface ApiServerInfo {
  /** The address it listens on (an IP literal) and the port it got. */
  readonly host: string;
  readonly port: number;
  readonly tokenHash: string | null;
}

export class HttpError extends Error {
  readonly status: number;
  readonly hint: string;
  constructor(status: number, message: string, hint: string) {
    super(message);
    this.status = status;
    this.hint = hint;
  }
}

const MAX_BODY = 4096;
const STATUS: Partial<Record<CtnetError['code'], number>> = { INVALID_ARGUMENT: 400, NOT_FOUND: 404, CONFLICT: 409, IN_USE: 409, GONE: 410 };

/** The Host header values that name this server. A wildcard listener (0.0.0.0, ::) has a token: any name. */
export function hostAllowed(hostHeader: string | undefined, info: ApiServerInfo): boolean {
  if (!hostHeader) return false;
  if (info.host === '0.0.0.0' || info.host === '::') return true;
  const names = [info.host.includes(':') ? `[${info.host}]` : info.host];
  if (/^127\./.test(info.host) || info.host === '::1') names.push('localhost');
  return names.some((n) => hostHeader.toLowerCase() === `${n}:${info.port}` || (info.port === 80 && hostHeader.toLowerCase() === n));
}

export function presentedToken(req: IncomingMessage, url: URL): string | undefined {
  const auth = req.headers.authorization;
  if (auth?.startsWith('Bearer ')) return auth.slice(7).trim();
  return url.searchParams.get('token') ?? undefined;
}

/** Throws an HttpError unless the request may be served (Host, Origin, token). */
export function gate(req: IncomingMessage, url: URL, info: ApiServerInfo): void {
  const host = req.headers.host;
  if (!hostAllowed(host, info)) {
    throw new HttpError(403, `Host ${JSON.stringify(host ?? '')} is not this server's address`, `open the page at the address ctnet ui printed (${info.host.includes(':') ? `[${info.host}]` : info.host}:${info.port})`);
  }
  const origin = req.headers.origin;
  if (origin !== undefined && origin !== `http://${host}`) {
    throw new HttpError(403, `requests from origin ${JSON.stringify(origin)} are refused`, 'the API answers only its own page; tools may call it without an Origin header');
  }
  if (req.headers['sec-fetch-site'] === 'cross-site') {
    throw new HttpError(403, 'cross-site requests are refused', 'the API answers only its own page');
  }
  if (info.tokenHash && !tokenMatches(presentedToken(req, url), info.tokenHash)) {
    throw new HttpError(401, 'a valid token is required on a non-loopback address', 'use the URL ctnet ui printed (it carries ?token=), or send Authorization: Bearer TOKEN; ctnet ui --listen again makes a new one');
  }
}

function only(url: URL, allowed: readonly string[]): void {
  for (const k of url.searchParams.keys()) {
    if (k !== 'token' && !allowed.includes(k)) throw new HttpError(400, `unknown parameter ${JSON.stringify(k)}`, allowed.length ? `this endpoint takes ${allowed.join(', ')}` : 'this endpoint takes no parameters');
  }
}

function readBody(req: IncomingMessage): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (b: Buffer) => {
      size += b.length;
      if (size > MAX_BODY) {
        reject(new HttpError(413, `the request body is over ${MAX_BODY} bytes`, 'send {"src": SANDBOX, "dst": "DST[:PORT][/tcp|/udp|/icmp]"}'));
        req.destroy();
      } else chunks.push(b);
    });
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

/** {src, dst}, both non-empty strings, nothing else. */
export function parseTraceBody(text: string): { src: string; dst: string } {
  const hint = 'send {"src": SANDBOX, "dst": "DST[:PORT][/tcp|/udp|/icmp]"}, e.g. {"src": "web", "dst": "db:5432"}';
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch {
    throw new HttpError(400, 'the body is not JSON', hint);
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new HttpError(400, 'the body is not a JSON object', hint);
  const o = v as Record<string, unknown>;
  for (const k of Object.keys(o)) if (k !== 'src' && k !== 'dst') throw new HttpError(400, `unknown field ${JSON.stringify(k)}`, hint);
  for (const k of ['src', 'dst'] as const) {
    if (typeof o[k] !== 'string' || (o[k] as string).trim() === '') throw new HttpError(400, `field ${k} must be a non-empty string`, hint);
  }
  return { src: (o.src as string).trim(), dst: (o.dst as string).trim() };
}

const json = (res: ServerResponse, status: number, body: unknown, extra: Record<string, string> = {}) => {
  res.writeHead(status, { 'content-type': 'application/json; charset=utf-8', 'cache-control': 'no-store', 'x-content-type-options': 'nosniff', ...extra });
  res.end(JSON.stringify(body));
};

export function sendError(res: ServerResponse, e: unknown): void {
  if (res.headersSent) return void res.destroy();
  if (e instanceof HttpError) return json(res, e.status, { error: e.message, hint: e.hint });
  if (e instanceof CtnetError) return json(res, STATUS[e.code] ?? 500, { error: e.message, hint: e.hint ?? '', code: e.code });
  json(res, 500, { error: (e as Error).message ?? String(e), hint: "see ctnetd's log (STATE_DIR/ctnetd.log)" });
}

const method = (req: IncomingMessage, want: string) => {
  if (req.method !== want) throw new HttpError(405, `${req.method} is not allowed here`, `use ${want}`);
};

/** Serves one request. info: read per request (the listener may be reconfigured). */
export async function handle(req: IncomingMessage, res: ServerResponse, deps: ApiDeps, info: ApiServerInfo, nonce: () => string): Promise<void> {
  try {
    const url = new URL(req.url ?? '/', 'http://localhost');
    gate(req, url, info);
    switch (url.pathname) {
      case '/': {
        method(req, 'GET');
        only(url, []);
        const n = nonce();
        res.writeHead(200, {
          'content-type': 'text/html; charset=utf-8',
          'cache-control': 'no-store',
          'x-content-type-options': 'nosniff',
          'referrer-policy': 'no-referrer',
          // Only the page's own inline script and style run; it talks only to this server.
          'content-security-policy': `default-src 'none'; script-src 'nonce-${n}'; style-src 'nonce-${n}'; connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'`,
        });
        return void res.end(deps.page(n));
      }
      case '/api/graph': {
        method(req, 'GET');
        only(url, []);
        const g = await deps.graph();
        return json(res, 200, g.graph, { 'ctnet-cursor': String(g.cursor) });
      }
      case '/api/counters':
        method(req, 'GET');
        only(url, []);
        return json(res, 200, await deps.counters());
      case '/api/explain': {
        method(req, 'GET');
        only(url, ['object']);
        const object = url.searchParams.get('object');
        if (!object) throw new HttpError(400, 'parameter object is missing', 'e.g. /api/explain?object=sandbox:web (network:NAME, sandbox:NAME, policy:NAME)');
        return json(res, 200, await deps.explain(object));
      }
      case '/api/trace': {
        method(req, 'POST');
        only(url, []);
        if (!/^application\/json\b/.test(req.headers['content-type'] ?? '')) throw new HttpError(415, 'the body must be application/json', 'send Content-Type: application/json');
        const body = parseTraceBody(await readBody(req));
        return json(res, 200, await deps.trace(body.src, body.dst));
      }
      case '/api/events': {
        method(req, 'GET');
        only(url, []);
        res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-store', 'x-accel-buffering': 'no' });
        res.flushHeaders();
        const send = (event: string, data: unknown) => res.write(`event: ${event}\ndata: ${JSON.stringify(data)}\n\n`);
        const unsubscribe = deps.subscribe(send);
        // A comment now and then: proxies and the browser see the stream is alive.
        const beat = setInterval(() => res.write(': keep-alive\n\n'), 15_000);
        req.on('close', () => {
          clearInterval(beat);
          unsubscribe();
        });
        return;
      }
      default:
        throw new HttpError(404, `no such endpoint ${url.pathname}`, 'the API: GET /api/graph, /api/events, /api/counters, /api/explain?object=KIND:NAME; POST /api/trace');
    }
  } catch (e) {
    sendError(res, e);
  }
}
