// The cross-host half of ctnet trace (engine/trace-remote.ts): a request in etcd is input like any
// other: parsed field by field, and traced only when it names a flow from the asking host's lease
// into this host's lease of an overlay network this host is a member of. The other host's reply
// is parsed too. The trace keys belong to ctnet's layout (cluster ls does not call them bad), and
// gc tells ctnetd's tables for other hosts from a dead trace's.
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { decodeEntry, parseKey, traceKey } from '../../src/cluster/keys.ts';
import { Applier } from '../../src/engine/applier.ts';
import type { Ctx } from '../../src/engine/context.ts';
import { createNetwork } from '../../src/engine/network.ts';
import { syncPeers } from '../../src/engine/overlay.ts';
import { createSandbox } from '../../src/engine/sandbox.ts';
import { deadTraceTables, traceTableName } from '../../src/engine/trace.ts';
import { checkTraceRequest, encodeTraceRequest, parseTraceReply, parseTraceRequest, remoteOutcome, type TraceRequest } from '../../src/engine/trace-remote.ts';
import { FakeKernel } from '../../src/kernel/fake.ts';
import { parseAttachSpec, parseNetworkSpec } from '../../src/model/spec.ts';
import { Store } from '../../src/store/store.ts';

const SCRATCH = existsSync('/dev/shm') ? '/dev/shm' : tmpdir();
const REQ: TraceRequest = { from: 'h2', network: 'ov', src: '10.50.2.5', dst: '10.50.1.2', sport: 41000, proto: 'tcp', port: 8080, timeoutMs: 1000 };

async function withHost<T>(fn: (ctx: Ctx) => Promise<T>): Promise<T> {
  const dir = mkdtempSync(join(SCRATCH, 'ctnet-trace-remote-'));
  const store = new Store(dir);
  const fake = new FakeKernel();
  const warn = () => {};
  const ctx: Ctx = { store, kernel: fake, warn, applier: new Applier({ backend: fake, store, warn }) };
  try {
    // This host (h1) holds 10.50.1.0/24 of overlay ov; h2 holds 10.50.2.0/24.
    await createNetwork(ctx, parseNetworkSpec({ name: 'ov', subnet: ['10.50.1.0/24'] }), { vni: 42, port: 4789, cidr: '10.50.0.0/16', underlay: { ip: '192.0.2.10', dev: 'eth0', mtu: 1500 } });
    await syncPeers(ctx, 'ov', [{ host: 'h2', subnet: '10.50.2.0/24', underlay: '192.0.2.12', vtepMac: '02:00:00:00:00:02' }]);
    await createNetwork(ctx, parseNetworkSpec({ name: 'plain', subnet: ['10.60.0.0/24'] }));
    await createSandbox(ctx, 'api', parseAttachSpec({ network: ['ov'] }));
    return await fn(ctx);
  } finally {
    store.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

describe('trace across hosts: the request, the reply, the keys', () => {
  it('parses a request field by field, and refuses what is not one', () => {
    assert.deepEqual(parseTraceRequest(encodeTraceRequest(REQ)), REQ);
    assert.deepEqual(parseTraceRequest(encodeTraceRequest({ ...REQ, proto: 'icmp', port: undefined })), { ...REQ, proto: 'icmp', port: undefined });
    const bad = (over: Record<string, unknown>, re: RegExp) => assert.throws(() => parseTraceRequest(JSON.stringify({ ...JSON.parse(encodeTraceRequest(REQ)), ...over })), re);
    assert.throws(() => parseTraceRequest('nope'), /trace request is not JSON/);
    bad({ extra: 1 }, /unknown field "extra"/);
    bad({ proto: 'sctp' }, /"proto" is not tcp, udp or icmp/);
    bad({ port: 0 }, /"port" is not an integer in 1\.\.65535/);
    bad({ port: undefined }, /"port" missing for tcp/);
    bad({ proto: 'icmp' }, /"port" given for icmp/);
    bad({ sport: 80 }, /"sport" is not an integer in 1024\.\.65535/);
    bad({ src: '10.50.2.300' }, /src/);
    bad({ dst: 'fd00::1' }, /different families/);
    bad({ timeoutMs: 10 ** 9 }, /"timeoutMs" is not an integer/);
    bad({ from: '../x' }, /from/);
    bad({ network: 7 }, /"network" is not a string/);
  });

  it('traces only a flow from the asking host\'s lease into this host\'s, on an overlay network it is a member of', async () => {
    await withHost(async (ctx) => {
      assert.deepEqual(checkTraceRequest(ctx.store, 'h1', REQ), { sandbox: 'api' });
      assert.deepEqual(checkTraceRequest(ctx.store, 'h1', { ...REQ, dst: '10.50.1.1' }), { sandbox: undefined }, 'the gateway: traced, no sandbox');
      assert.throws(() => checkTraceRequest(ctx.store, 'h1', { ...REQ, network: 'nope' }), /network nope is not an overlay network of host h1/);
      assert.throws(() => checkTraceRequest(ctx.store, 'h1', { ...REQ, network: 'plain' }), /network plain is not an overlay network/);
      assert.throws(() => checkTraceRequest(ctx.store, 'h1', { ...REQ, dst: '10.50.2.9' }), /10\.50\.2\.9 is not in host h1's subnet of network ov/);
      assert.throws(() => checkTraceRequest(ctx.store, 'h1', { ...REQ, dst: '192.0.2.10' }), /is not in host h1's subnet/, 'the host\'s own underlay: never');
      assert.throws(() => checkTraceRequest(ctx.store, 'h1', { ...REQ, src: '10.50.3.5' }), /10\.50\.3\.5 is not in host h2's subnet of network ov/);
      assert.throws(() => checkTraceRequest(ctx.store, 'h1', { ...REQ, from: 'h3' }), /not in host h3's subnet/, 'a host that is no peer');
      assert.throws(() => checkTraceRequest(ctx.store, 'h1', { ...REQ, from: 'h1' }), /from h1 to itself/);
    });
  });

  it('parses the other host\'s reply, and names a bad one', () => {
    assert.deepEqual(parseTraceReply('{"state":"ready"}', 'h2'), { state: 'ready' });
    assert.deepEqual(parseTraceReply('{"state":"refused","reason":"no"}', 'h2'), { state: 'refused', reason: 'no' });
    const step = { table: 'inet ctnet', chain: 'forward', rule: 'policy: deny', verdict: 'drop', owner: 'ctnet' };
    const r = parseTraceReply(JSON.stringify({ state: 'done', half: { host: 'ignored', sandbox: 'api', outcome: 'dropped', request: [step], reply: [], droppedBy: step, policy: { allowed: false, by: 'deny no (#1)' } } }), 'h2');
    assert.deepEqual(r, { state: 'done', half: { host: 'h2', sandbox: 'api', outcome: 'dropped', request: [step], reply: [], droppedBy: step, policy: { allowed: false, by: 'deny no (#1)' } } }, 'the host is the one asked, whatever the reply says');
    assert.equal((parseTraceReply('{"state":"done","half":{"outcome":"refused","request":[],"reply":[]}}', 'h2') as { half: { outcome: string } }).half.outcome, 'refused');
    assert.throws(() => parseTraceReply('{"state":"done","half":{"outcome":"lost","request":[],"reply":[]}}', 'h2'), /host h2's trace reply: "outcome" is not known/);
    assert.throws(() => parseTraceReply('{"state":"done","half":{"outcome":"answered","request":[{"table":1}],"reply":[]}}', 'h2'), /"request"\[0\] is not a step/);
    assert.throws(() => parseTraceReply('[]', 'h2'), /is not a JSON object/);
  });

  it('the other host\'s outcome from its steps', () => {
    const s = (verdict: string) => ({ table: 'inet ctnet', chain: 'forward', rule: 'x', verdict, owner: 'ctnet' as const });
    assert.equal(remoteOutcome([s('accept')], [s('accept')]).outcome, 'answered');
    assert.equal(remoteOutcome([s('accept')], []).outcome, 'delivered');
    assert.deepEqual(remoteOutcome([s('continue'), s('drop')], []), { outcome: 'dropped', droppedBy: s('drop') });
    assert.equal(remoteOutcome([], []).outcome, 'not seen');
  });

  it('trace keys are ctnet\'s (not reported as bad); gc knows ctnetd\'s tables for other hosts', () => {
    assert.deepEqual(parseKey(traceKey('h2', 'ab12')), { kind: 'trace', host: 'h2', id: 'ab12', part: 'request' });
    assert.deepEqual(parseKey(traceKey('h2', 'ab12', 'reply')), { kind: 'trace', host: 'h2', id: 'ab12', part: 'reply' });
    assert.equal(parseKey('/ctnet/traces/h2/ab12/other'), undefined);
    assert.equal(decodeEntry(traceKey('h2', 'ab12', 'done'), '{}').kind, 'trace');
    const live = `${traceTableName()}_r3`;
    const dead = 'ctnet_trace_999999999_1_r3';
    assert.deepEqual(deadTraceTables([{ family: 'inet', table: live }, { family: 'inet', table: dead }, { family: 'inet', table: 'ctnet_trace_999999999_1' }]).map((t) => t.table), [dead, 'ctnet_trace_999999999_1']);
  });
});
