// The live page's API without a kernel: the listen address and token, the Host/Origin/token gate,
// the trace body, every route's errors as {error, hint} JSON (with stand-in use cases), the rule
// counters from nft's JSON, and the explain plans of recorded objects on the fake kernel.
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { describe, it } from 'node:test';
import { Applier } from '../../src/engine/applier.ts';
import type { Ctx } from '../../src/engine/context.ts';
import { ruleCounters } from '../../src/engine/counters.ts';
import { explainObject, parseObjectRef } from '../../src/engine/explain.ts';
import { createNetwork } from '../../src/engine/network.ts';
import { addPolicy } from '../../src/engine/policy.ts';
import { createSandbox } from '../../src/engine/sandbox.ts';
import { CtnetError } from '../../src/errors.ts';
import { FakeKernel } from '../../src/kernel/fake.ts';
import { parsePortSpec } from '../../src/model/ports.ts';
import { parseAttachSpec, parseNetworkSpec } from '../../src/model/spec.ts';
import { hashToken, isLoopback, parseListen, tokenMatches } from '../../src/services/api/config.ts';
import { handle, hostAllowed, parseTraceBody, type ApiDeps, type ApiServerInfo } from '../../src/services/api/http.ts';
import { ROOT } from '../../src/root.ts';
import { Store } from '../../src/store/store.ts';

describe('listen address and token', () => {
  it('parses ADDR:PORT, [v6]:PORT, localhost; refuses the rest with a hint', () => {
    assert.deepEqual(parseListen('127.0.0.1:7390'), { host: '127.0.0.1', port: 7390 });
    assert.deepEqual(parseListen('[::1]:0'), { host: '::1', port: 0 });
    assert.deepEqual(parseListen('localhost:80'), { host: '127.0.0.1', port: 80 });
    for (const bad of ['7390', '127.0.0.1', 'example.com:80', '127.0.0.1:70000', '::1:80', '[127.0.0.1]:80', '1.2.3.4:-1']) {
      assert.throws(() => parseListen(bad), (e: CtnetError) => e.code === 'INVALID_ARGUMENT' && /ADDR:PORT/.test(e.message), bad);
    }
    assert.equal(isLoopback('127.0.0.2'), true);
    assert.equal(isLoopback('::1'), true);
    assert.equal(isLoopback('0.0.0.0'), false);
  });
  it('a token matches only its own hash', () => {
    const h = hashToken('s3cret');
    assert.equal(tokenMatches('s3cret', h), true);
    assert.equal(tokenMatches('s3cret!', h), false);
    assert.equal(tokenMatches(undefined, h), false);
  });
});

function request(o: { method?: string; url: string; headers?: Record<string, string>; body?: string }): IncomingMessage {
  const r = Readable.from(o.body === undefined ? [] : [Buffer.from(o.body)]) as unknown as IncomingMessage;
  Object.assign(r, { method: o.method ?? 'GET', url: o.url, headers: { host: '127.0.0.1:7390', ...(o.headers ?? {}) } });
  return r;
}

function response(): { res: ServerResponse; done: Promise<{ status: number; headers: Record<string, string>; body: string }> } {
  let resolve!: (v: { status: number; headers: Record<string, string>; body: string }) => void;
  const done = new Promise<{ status: number; headers: Record<string, string>; body: string }>((r) => (resolve = r));
  let status = 0;
  let headers: Record<string, string> = {};
  const res: { headersSent: boolean; [k: string]: unknown } = {
    headersSent: false,
    writeHead(s: number, h: Record<string, string>) { status = s; headers = h; res.headersSent = true; return res; },
    end(body?: string) { resolve({ status, headers, body: body ?? '' }); },
    flushHeaders() {}, write() { return true; }, destroy() {},
  };
  return { res: res as unknown as ServerResponse, done };
}

const loopback: ApiServerInfo = { host: '127.0.0.1', port: 7390, tokenHash: null };
const calls: string[] = [];
const deps: ApiDeps = {
  graph: async () => ({ graph: { host: { name: 'h', underlay: null, cluster: false }, networks: [], sandboxes: [], remoteSandboxes: [], policy: [] }, cursor: 17 }),
  counters: async () => ({ at: 0, interfaces: [], rules: [] }),
  trace: async (src, dst) => { calls.push(`trace ${src} ${dst}`); return { src, dst }; },
  explain: async (o) => {
    if (o === 'sandbox:nope') throw new CtnetError('NOT_FOUND', 'no sandbox named nope', 'list sandboxes with "ctnet ls --all"');
    return { object: o, lines: ['ip netns add x'] };
  },
  page: (nonce) => `<script nonce="${nonce}"></script>`,
  subscribe: () => () => {},
};

async function call(o: Parameters<typeof request>[0], info = loopback) {
  const { res, done } = response();
  await handle(request(o), res, deps, info, () => 'NONCE');
  const r = await done;
  return { ...r, json: r.headers['content-type']?.startsWith('application/json') ? JSON.parse(r.body) as { error?: string; hint?: string } : undefined };
}

describe('the HTTP API', () => {
  it('Host must name this server (DNS rebinding is refused)', async () => {
    assert.equal(hostAllowed('127.0.0.1:7390', loopback), true);
    assert.equal(hostAllowed('localhost:7390', loopback), true);
    assert.equal(hostAllowed('evil.example:7390', loopback), false);
    assert.equal(hostAllowed('127.0.0.1:7391', loopback), false);
    const r = await call({ url: '/api/graph', headers: { host: 'evil.example:7390' } });
    assert.equal(r.status, 403);
    assert.match(r.json!.error!, /Host "evil\.example:7390" is not this server/);
  });
  it('another origin gets 403 JSON; the page\'s own origin and no origin are served', async () => {
    const foreign = await call({ url: '/api/graph', headers: { origin: 'http://evil.example' } });
    assert.equal(foreign.status, 403);
    assert.deepEqual(Object.keys(foreign.json!), ['error', 'hint']);
    assert.equal((await call({ url: '/api/graph', headers: { origin: 'http://127.0.0.1:7390' } })).status, 200);
    const g = await call({ url: '/api/graph' });
    assert.equal(g.status, 200);
    assert.equal(g.headers['ctnet-cursor'], '17', 'the feed cursor the graph is current at: the page applies deltas from there');
    assert.deepEqual(Object.keys(g.json!), ['host', 'networks', 'sandboxes', 'remoteSandboxes', 'policy'], 'the graph as ctnet graph --json prints it');
    assert.equal((await call({ url: '/api/graph', headers: { 'sec-fetch-site': 'cross-site' } })).status, 403);
  });
  it('beyond loopback every request needs the token (header or query)', async () => {
    const wide: ApiServerInfo = { host: '0.0.0.0', port: 7390, tokenHash: hashToken('tok') };
    assert.equal((await call({ url: '/api/graph' }, wide)).status, 401);
    assert.equal((await call({ url: '/api/graph?token=nope' }, wide)).status, 401);
    assert.equal((await call({ url: '/api/graph?token=tok' }, wide)).status, 200);
    assert.equal((await call({ url: '/api/graph', headers: { authorization: 'Bearer tok' } }, wide)).status, 200);
    assert.equal((await call({ url: '/?token=tok' }, wide)).status, 200);
  });
  it('the page carries a CSP that lets only its own nonce run', async () => {
    const r = await call({ url: '/' });
    assert.equal(r.status, 200);
    assert.match(r.headers['content-security-policy']!, /script-src 'nonce-NONCE'/);
    assert.equal(r.body, '<script nonce="NONCE"></script>');
  });
  it('malformed parameters, unknown endpoints and objects: clear JSON errors', async () => {
    const cases: [Parameters<typeof request>[0], number, RegExp][] = [
      [{ url: '/api/graph?x=1' }, 400, /unknown parameter "x"/],
      [{ url: '/api/explain' }, 400, /parameter object is missing/],
      [{ url: '/api/explain?object=sandbox:nope' }, 404, /no sandbox named nope/],
      [{ url: '/api/nothing' }, 404, /no such endpoint/],
      [{ url: '/api/trace' }, 405, /GET is not allowed/],
      [{ method: 'POST', url: '/api/trace', body: '{}' }, 415, /application\/json/],
      [{ method: 'POST', url: '/api/trace', headers: { 'content-type': 'application/json' }, body: '{"src":"a"' }, 400, /not JSON/],
      [{ method: 'POST', url: '/api/trace', headers: { 'content-type': 'application/json' }, body: '{"src":"a","dst":"b","x":1}' }, 400, /unknown field "x"/],
      [{ method: 'POST', url: '/api/trace', headers: { 'content-type': 'application/json' }, body: '{"src":"a","dst":5}' }, 400, /dst must be a non-empty string/],
      [{ method: 'POST', url: '/api/trace', headers: { 'content-type': 'application/json' }, body: 'x'.repeat(5000) }, 413, /over 4096 bytes/],
    ];
    for (const [req, status, re] of cases) {
      const r = await call(req);
      assert.equal(r.status, status, `${req.method ?? 'GET'} ${req.url} ${req.body?.slice(0, 40) ?? ''}`);
      assert.match(r.json!.error!, re);
      assert.ok(r.json!.hint, 'a hint');
    }
    assert.deepEqual(calls, [], 'no trace ran for a bad request');
    const ok = await call({ method: 'POST', url: '/api/trace', headers: { 'content-type': 'application/json' }, body: '{"src":"web","dst":"db:5432"}' });
    assert.equal(ok.status, 200);
    assert.deepEqual(calls, ['trace web db:5432']);
    assert.deepEqual(parseTraceBody(' {"src":" a ","dst":"b"}'), { src: 'a', dst: 'b' });
  });
});

describe('the page', () => {
  const page = readFileSync(join(ROOT, 'src', 'services', 'web', 'page.html'), 'utf8');
  it('is self-contained: no external script, style, font or image', () => {
    assert.doesNotMatch(page, /<link\b|<script[^>]*\bsrc=|@import|url\(/i);
    assert.deepEqual([...page.matchAll(/https?:\/\/[^\s'"`)]+/g)].map((m) => m[0]), ['http://www.w3.org/2000/svg'], 'only the SVG namespace');
  });
  it('never inserts text as HTML', () => {
    assert.doesNotMatch(page, /innerHTML|outerHTML|insertAdjacentHTML|document\.write|DOMParser|createContextualFragment/);
  });
  it('its inline script and style carry the nonce the server fills in', () => {
    assert.equal([...page.matchAll(/<(script|style)\b/g)].length, 2);
    assert.equal([...page.matchAll(/<(script|style) nonce="__NONCE__">/g)].length, 2);
  });
});

describe('rule counters and explain', () => {
  it('counters of commented rules; v4 and v6 rules of one purpose add up', () => {
    const table = [
      { table: { name: 'ctnet' } },
      { rule: { chain: 'forward', comment: 'policy: deny', expr: [{ match: {} }, { counter: { packets: 3, bytes: 180 } }, { drop: null }] } },
      { rule: { chain: 'forward', comment: 'policy: deny', expr: [{ counter: { packets: 1, bytes: 80 } }] } },
      { rule: { chain: 'forward', expr: [{ counter: { packets: 9, bytes: 9 } }] } },
      { rule: { chain: 'forward', comment: 'no counter', expr: [{ accept: null }] } },
    ];
    assert.deepEqual(ruleCounters(table), [{ chain: 'forward', rule: 'policy: deny', packets: 4, bytes: 260 }]);
  });
  it('object references', () => {
    assert.deepEqual(parseObjectRef('sandbox:web'), { kind: 'sandbox', name: 'web' });
    assert.deepEqual(parseObjectRef('policy:3'), { kind: 'policy', name: '3' });
    for (const bad of ['web', 'bridge:x', 'sandbox:']) assert.throws(() => parseObjectRef(bad), /is not KIND:NAME/);
  });
  it('explain: the plan that built a network, a sandbox (with its ports), a policy rule', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'ctnet-api-'));
    const store = new Store(dir);
    try {
      const kernel = new FakeKernel();
      const ctx: Ctx = { store, kernel, warn: () => {}, applier: new Applier({ backend: kernel, store, warn: () => {} }) };
      await createNetwork(ctx, parseNetworkSpec({ name: 'front', subnet: ['10.70.1.0/24'] }));
      await createSandbox(ctx, 'web', parseAttachSpec({ network: ['front'] }), { mappings: [parsePortSpec('8080:80')], force: false }, [{ key: 'tier', value: 'web' }]);
      await createSandbox(ctx, 'db', parseAttachSpec({ network: ['front'] }), undefined, []);
      await addPolicy(ctx, { action: 'deny', from: 'label:tier=web', to: 'db', port: '5432/tcp', name: 'no-db' });
      const net = explainObject(ctx, { kind: 'network', name: 'front' }).lines.join('\n');
      assert.match(net, /ip link add ctbr-front .*type bridge/);
      assert.match(net, /ip addr add 10\.70\.1\.1\/24/);
      const web = explainObject(ctx, { kind: 'sandbox', name: 'web' }).lines.join('\n');
      assert.match(web, /ip netns add ctnet-\S+-web/);
      assert.match(web, /type veth peer name eth0/);
      assert.match(web, /ip -n \S+ addr add 10\.70\.1\.2\/24/);
      assert.match(web, /add element inet ctnet ports4_any \{ tcp \. 8080 : 10\.70\.1\.2 \. 80 \}/);
      const rule = explainObject(ctx, { kind: 'policy', name: 'no-db' }).lines.join('\n');
      assert.match(rule, /policy rule #1 no-db/);
      assert.match(rule, /add element inet ctnet policy_deny4 \{ 10\.70\.1\.2 \. 10\.70\.1\.3 \. 6 \. 5432 \}/);
      assert.throws(() => explainObject(ctx, { kind: 'sandbox', name: 'nope' }), /no sandbox named nope/);
      assert.throws(() => explainObject(ctx, { kind: 'network', name: 'nope' }), (e: CtnetError) => e.code === 'NOT_FOUND');
      assert.throws(() => explainObject(ctx, { kind: 'policy', name: 'nope' }), /no policy rule named nope/);
    } finally {
      store.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
