// Services (issue 17): parsing at the boundary, and the nft lines a service makes.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { formatCheck, parseAffinity, parseServiceCheck, parseServicePort, parseServicePublish, parseServiceTarget } from '../../src/model/service.ts';
import { judgeRound, probe } from '../../src/services/health.ts';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { serviceLines, serviceRule, type ServiceFacts } from '../../src/nft/ruleset.ts';
import { openConnection, pickFlows, type Flow } from '../../src/plan/flows.ts';
import { renderOp } from '../../src/plan/render.ts';
import { conntrackDeleteArgvs } from '../../src/kernel/conntrack.ts';

const web: ServiceFacts = { name: 'web', vip: '10.0.0.200', proto: 'tcp', port: 80, targetPort: 8080, affinity: 'none', backends: ['10.0.0.2', '10.0.0.3'] };

describe('services', () => {
  it('parses --port, --to and --affinity, naming the bad field', () => {
    assert.deepEqual(parseServicePort('80'), { proto: 'tcp', port: 80 });
    assert.deepEqual(parseServicePort('53/udp'), { proto: 'udp', port: 53 });
    assert.throws(() => parseServicePort('0'), /--port 0: "0" is not a port/);
    assert.throws(() => parseServicePort('65536/tcp'), /not a port/);
    assert.throws(() => parseServicePort('80/sctp'), /"sctp" is not tcp or udp/);
    assert.deepEqual(parseServiceTarget('label:app=web'), { selector: { key: 'app', value: 'web' }, targetPort: undefined });
    assert.deepEqual(parseServiceTarget('label:app=web:8080'), { selector: { key: 'app', value: 'web' }, targetPort: 8080 });
    assert.throws(() => parseServiceTarget('app=web'), /does not start with "label:"/);
    assert.throws(() => parseServiceTarget('label:app'), /has no "="/);
    assert.throws(() => parseServiceTarget('label:app=web:x'), /target port/);
    assert.equal(parseAffinity(undefined), 'none');
    assert.equal(parseAffinity('client-ip'), 'client-ip');
    assert.throws(() => parseAffinity('cookie'), /--affinity "cookie"/);
    assert.deepEqual(parseServicePublish('8080'), { hostIp: '0.0.0.0', hostPort: 8080 });
    assert.deepEqual(parseServicePublish('192.0.2.1:80'), { hostIp: '192.0.2.1', hostPort: 80 });
    assert.throws(() => parseServicePublish('0'), /--publish 0: host port: "0" is not a port/);
    assert.throws(() => parseServicePublish('1.2.3:80'), /--publish 1\.2\.3:80: host address "1\.2\.3" is not an IPv4 address/);
    assert.throws(() => parseServicePublish(':80'), /the host address is empty/);
    assert.throws(() => parseServicePublish('[::1]:80'), /IPv4 host addresses/);
    assert.throws(() => parseServicePublish('fd00::1:80'), /IPv4 host addresses/);
  });

  it('one verdict map element and one chain whose one rule picks a backend', () => {
    assert.deepEqual(serviceLines('add', web), [
      'add chain inet ctnet svc_web',
      'flush chain inet ctnet svc_web',
      'add rule inet ctnet svc_web meta l4proto tcp counter dnat ip to numgen random mod 2 map { 0 : 10.0.0.2 . 8080, 1 : 10.0.0.3 . 8080 } comment "service web"',
      'add element inet ctnet service_vips4 { 10.0.0.200 }',
      'add element inet ctnet services4 { 10.0.0.200 . tcp . 80 : goto svc_web }',
    ]);
    // Delete: the element that holds the chain goes before the chain.
    assert.deepEqual(serviceLines('delete', web), [
      'delete element inet ctnet services4 { 10.0.0.200 . tcp . 80 }',
      'delete element inet ctnet service_vips4 { 10.0.0.200 }',
      'delete chain inet ctnet svc_web',
    ]);
    // --publish: one more element, keyed like the published-port maps, to the same chain.
    assert.deepEqual(serviceLines('add', { ...web, publish: { hostIp: '0.0.0.0', hostPort: 8080 } }).at(-1),
      'add element inet ctnet service_ports4_any { tcp . 8080 : goto svc_web }');
    assert.deepEqual(serviceLines('delete', { ...web, publish: { hostIp: '192.0.2.1', hostPort: 8080 } })[0],
      'delete element inet ctnet service_ports4 { 192.0.2.1 . tcp . 8080 }');
    assert.match(serviceRule({ ...web, affinity: 'client-ip' }), /dnat ip to jhash ip saddr mod 2 seed 0x63746e74 map/);
    assert.match(serviceRule({ ...web, backends: [] }), /reject with tcp reset comment "service web: no backend"/);
    assert.match(serviceRule({ ...web, proto: 'udp', backends: [] }), /meta l4proto udp counter reject comment/);
  });

  it('cuts only the flows through the service to the backends that left', async () => {
    const flow = (dst: string, dport: number, backend: string): Flow => ({
      proto: 'tcp', state: 'ESTABLISHED', family: 4,
      orig: { src: '10.0.0.9', dst, sport: 40000, dport }, reply: { src: backend, dst: '10.0.0.9', sport: 8080, dport: 40000 },
    });
    const flows = [flow('10.0.0.200', 80, '10.0.0.2'), flow('10.0.0.200', 80, '10.0.0.3'), flow('10.0.0.201', 80, '10.0.0.2'), flow('10.0.0.200', 81, '10.0.0.2')];
    const picked = await pickFlows({ kind: 'service', vip: '10.0.0.200', proto: 'tcp', port: 80, backends: ['10.0.0.2'] }, flows, async () => new Set());
    assert.deepEqual(picked, [flows[0]]);
    // Through the published host port too (DNATed: the reply comes from the backend).
    const published = [flow('192.0.2.1', 9090, '10.0.0.2'), flow('192.0.2.1', 9091, '10.0.0.2'), flow('10.0.0.2', 9090, '10.0.0.2')];
    const viaHost = await pickFlows({ kind: 'service', vip: '10.0.0.200', proto: 'tcp', port: 80, backends: ['10.0.0.2'], publish: { hostIp: '0.0.0.0', hostPort: 9090 } },
      [...flows, ...published], async () => new Set());
    assert.deepEqual(viaHost, [flows[0], published[0]]);
  });

  it('a backend\'s flows through a VIP go in one conntrack -D (by reply source) when all of them are chosen', () => {
    const f = (client: string, sport: number, backend: string): Flow => ({
      proto: 'tcp', state: 'TIME_WAIT', family: 4, orig: { src: client, dst: '10.0.0.200', sport, dport: 80 }, reply: { src: backend, dst: client, sport: 8080, dport: sport },
    });
    const toB2 = [f('10.0.0.9', 1, '10.0.0.2'), f('10.0.0.9', 2, '10.0.0.2'), f('10.0.0.8', 3, '10.0.0.2')];
    const all = [...toB2, f('10.0.0.9', 4, '10.0.0.3')];
    assert.deepEqual(conntrackDeleteArgvs(toB2, all), [['conntrack', '-D', '-f', 'ipv4', '-p', 'tcp', '-d', '10.0.0.200', '--dport', '80', '-r', '10.0.0.2']]);
    // One of them not chosen: each goes alone.
    assert.equal(conntrackDeleteArgvs(toB2.slice(0, 2), all).length, 2);
    // Every flow of a client . VIP pair chosen: by pair, as before.
    assert.deepEqual(conntrackDeleteArgvs([toB2[2]!, f('10.0.0.8', 5, '10.0.0.3')], [...all, f('10.0.0.8', 5, '10.0.0.3')]),
      [['conntrack', '-D', '-f', 'ipv4', '-p', 'tcp', '-s', '10.0.0.8', '-d', '10.0.0.200']]);
  });

  it('parses --check and --check-interval, naming the bad field', () => {
    assert.equal(parseServiceCheck(undefined, undefined), undefined);
    assert.deepEqual(parseServiceCheck('tcp', undefined), { kind: 'tcp', intervalMs: 2000 });
    assert.deepEqual(parseServiceCheck('http:/healthz', '500ms'), { kind: 'http', path: '/healthz', intervalMs: 500 });
    assert.deepEqual(parseServiceCheck('tcp', '1m'), { kind: 'tcp', intervalMs: 60_000 });
    assert.throws(() => parseServiceCheck(undefined, '2s'), /--check-interval 2s: there is no --check/);
    assert.throws(() => parseServiceCheck('udp', undefined), /--check "udp" is not tcp or http:PATH/);
    assert.throws(() => parseServiceCheck('http:healthz', undefined), /must start with "\/"/);
    assert.throws(() => parseServiceCheck('http:/a b', undefined), /no spaces/);
    assert.throws(() => parseServiceCheck('tcp', '50ms'), /--check-interval "50ms" is not a duration/);
    assert.throws(() => parseServiceCheck('tcp', '2'), /--check-interval "2"/);
    assert.equal(formatCheck({ kind: 'http', path: '/h', intervalMs: 2000 }), 'http:/h every 2s');
    assert.equal(formatCheck({ kind: 'tcp', intervalMs: 200 }), 'tcp every 200ms');
  });

  it('health: two failures in a row take a backend out, one pass puts it back', () => {
    const r = (...xs: [string, boolean][]) => new Map(xs);
    let st = judgeRound({ fails: new Map(), unready: [] }, r(['10.0.0.2', false], ['10.0.0.3', true]));
    assert.deepEqual(st.unready, [], 'one failure: still in');
    st = judgeRound(st, r(['10.0.0.2', true], ['10.0.0.3', true]));
    st = judgeRound(st, r(['10.0.0.2', false], ['10.0.0.3', true]));
    assert.deepEqual(st.unready, [], 'failures not in a row: still in');
    st = judgeRound(st, r(['10.0.0.2', false], ['10.0.0.3', true]));
    assert.deepEqual(st.unready, ['10.0.0.2']);
    st = judgeRound(st, r(['10.0.0.2', false], ['10.0.0.3', true]));
    assert.deepEqual(st.unready, ['10.0.0.2'], 'stays out while it fails');
    st = judgeRound(st, r(['10.0.0.2', true], ['10.0.0.3', true]));
    assert.deepEqual(st.unready, [], 'one pass: back in');
    // Out as the store said (ctnetd restarted): stays out until it passes; an address no longer probed is forgotten.
    st = judgeRound({ fails: new Map(), unready: ['10.0.0.2', '10.0.0.9'] }, r(['10.0.0.2', false]));
    assert.deepEqual(st.unready, ['10.0.0.2']);
  });

  it('health probes: tcp passes on a listener and fails on a closed port; http passes on 2xx/3xx only', async () => {
    const server = createServer((req, res) => {
      res.statusCode = req.url === '/ok' ? 200 : req.url === '/moved' ? 301 : 503;
      res.end();
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const port = (server.address() as AddressInfo).port;
    try {
      assert.equal(await probe({ kind: 'tcp', intervalMs: 1000 }, '127.0.0.1', port, 1000), true);
      assert.equal(await probe({ kind: 'http', path: '/ok', intervalMs: 1000 }, '127.0.0.1', port, 1000), true);
      assert.equal(await probe({ kind: 'http', path: '/moved', intervalMs: 1000 }, '127.0.0.1', port, 1000), true);
      assert.equal(await probe({ kind: 'http', path: '/down', intervalMs: 1000 }, '127.0.0.1', port, 1000), false);
    } finally {
      await new Promise((r) => server.close(r));
    }
    assert.equal(await probe({ kind: 'tcp', intervalMs: 1000 }, '127.0.0.1', port, 1000), false, 'nothing listens any more');
  });

  it('a draining backend waits for open TCP connections only (not TIME_WAIT, CLOSE or UDP)', () => {
    const f = (proto: string, state: string | undefined): Flow => ({
      proto, state, family: 4, orig: { src: '10.0.0.9', dst: '10.0.0.200', sport: 1, dport: 80 }, reply: { src: '10.0.0.2', dst: '10.0.0.9', sport: 8080, dport: 1 },
    });
    assert.deepEqual(['ESTABLISHED', 'SYN_SENT', 'FIN_WAIT', 'CLOSE_WAIT', 'TIME_WAIT', 'CLOSE'].map((s) => openConnection(f('tcp', s))), [true, true, true, true, false, false]);
    assert.equal(openConnection(f('udp', undefined)), false);
    const filter = { kind: 'service' as const, vip: '10.0.0.200', proto: 'tcp', port: 80, backends: ['10.0.0.2'] };
    assert.deepEqual(renderOp({ kind: 'conntrack.drain', filter, timeoutMs: 10_000 }),
      ['# wait up to 10 s for open connections to finish: flows through service 10.0.0.200 tcp/80 to 10.0.0.2']);
  });
});
