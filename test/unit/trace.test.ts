// ctnet trace's pure parts: the target syntax, nft monitor's lines, and telling the first request
// and answer apart in a stream of events whose trace ids change on the way.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { firstPackets, parseTraceLine, parseTraceTarget, type TraceEvent } from '../../src/engine/trace.ts';

describe('trace', () => {
  it('parses DST[:PORT][/proto]', () => {
    assert.deepEqual(parseTraceTarget('api:8080'), { dst: 'api', port: 8080, proto: 'tcp' });
    assert.deepEqual(parseTraceTarget('10.0.0.5:53/udp'), { dst: '10.0.0.5', port: 53, proto: 'udp' });
    assert.deepEqual(parseTraceTarget('db'), { dst: 'db', port: undefined, proto: 'icmp' });
    assert.throws(() => parseTraceTarget('db/tcp'), /\/tcp needs a port/);
    assert.throws(() => parseTraceTarget('db:0'), /port 0 is not 1-65535/);
  });

  it('parses nft monitor trace lines', () => {
    assert.deepEqual(parseTraceLine('trace id 1a inet ctnet forward rule iifname @bridges oifname @bridges counter packets 0 bytes 0 drop comment "networks are isolated from each other" (verdict drop)'),
      { id: '1a', family: 'inet', table: 'ctnet', chain: 'forward', kind: 'rule', text: 'iifname @bridges oifname @bridges counter packets 0 bytes 0 drop comment "networks are isolated from each other"', verdict: 'drop' });
    assert.equal(parseTraceLine('trace id 1a inet ctnet guard policy accept ')?.verdict, 'accept');
    assert.equal(parseTraceLine('something else'), undefined);
  });

  it('follows the first request across a change of trace id, and leaves a retransmission out', () => {
    const pkt = (id: string, chain: string, text: string): TraceEvent => ({ id, family: 'inet', table: 'ctnet', chain, kind: 'packet', text, verdict: undefined });
    const rule = (id: string, chain: string, text: string, verdict: string): TraceEvent => ({ id, family: 'inet', table: 'ctnet', chain, kind: 'rule', text, verdict });
    const syn = 'ip saddr 10.0.0.2 ip daddr 10.0.1.2 tcp sport 41000 tcp dport 80 tcp flags == syn';
    const events = [
      pkt('a', 'prerouting', syn), rule('a', 'prerouting', 'x comment "first"', 'continue'),
      pkt('b', 'forward', syn), rule('b', 'forward', 'drop comment "isolated"', 'drop'),
      pkt('c', 'prerouting', syn), rule('c', 'prerouting', 'x comment "again"', 'continue'), // the retransmission
    ];
    const { request, reply } = firstPackets(events, '10.0.0.2', 41000, 'tcp');
    assert.deepEqual(request.map((s) => s.rule), ['first', 'isolated']);
    assert.deepEqual(reply, []);
  });

  it('an answer a masquerade readdressed is still the answer; a reused trace id does not join two packets; only translations are NAT', () => {
    const pkt = (id: string, chain: string, text: string): TraceEvent => ({ id, family: 'inet', table: 'ctnet', chain, kind: 'packet', text, verdict: undefined });
    const rule = (id: string, chain: string, text: string, verdict: string): TraceEvent => ({ id, family: 'inet', table: 'ctnet', chain, kind: 'rule', text, verdict });
    const syn = 'ip saddr 10.0.0.2 ip daddr 10.0.0.1 tcp sport 41000 tcp dport 8080 tcp flags == syn';
    const synack = 'ip saddr 10.0.0.2 ip daddr 10.0.0.1 tcp sport 80 tcp dport 41000 tcp flags == syn | ack';
    const events = [
      pkt('a', 'prerouting', syn), rule('a', 'prerouting', 'fib daddr type local dnat ip to meta l4proto . th dport map @ports4_any', 'accept'),
      rule('a', 'forward', 'ct status dnat counter accept comment "published port"', 'accept'),
      rule('a', 'postrouting', 'ct status dnat ip saddr . oifname @endpoints4 counter masquerade comment "hairpin"', 'accept'),
      pkt('b', 'prerouting', synack), rule('b', 'forward', 'ct state established,related accept comment "replies"', 'accept'),
      pkt('a', 'prerouting', synack), rule('a', 'forward', 'x comment "the next answer"', 'accept'), // a reused id
    ];
    const r = firstPackets(events, '10.0.0.2', 41000, 'tcp');
    assert.deepEqual(r.request.map((s) => [s.rule, s.nat ?? false]), [
      ['fib daddr type local dnat ip to meta l4proto . th dport map @ports4_any', true], ['published port', false], ['hairpin', true]]);
    assert.deepEqual(r.reply.map((s) => s.rule), ['replies']);
    assert.deepEqual(r.seenByServer, { server: '10.0.0.2', client: '10.0.0.1' });
  });
});
