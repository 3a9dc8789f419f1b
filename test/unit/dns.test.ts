// The DNS server's decisions (services/dns/zone.ts): pure, from rows as the store gives them.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { buildZone, decide, reverseIp } from '../../src/services/dns/zone.ts';
import { nameservers } from '../../src/services/dns/upstream.ts';
import * as dnsPacket from 'dns-packet';
import { answerQuery, RateLimit } from '../../src/services/dns/server.ts';
import { parseAliases, parseNetworkSpec } from '../../src/model/spec.ts';

const zone = buildZone({
  serial: 7,
  networks: [
    { name: 'front', internal: false, dns: true, forward: ['198.51.100.1'], ready: true },
    { name: 'inner', internal: true, dns: true, forward: [], ready: true },
    { name: 'off', internal: false, dns: false, forward: [], ready: true },
  ],
  subnets: [
    { network: 'front', cidr: '10.1.0.0/24', gateway: '10.1.0.1' }, { network: 'front', cidr: 'fd00:1::/64', gateway: 'fd00:1::1' },
    { network: 'inner', cidr: '10.2.0.0/24', gateway: '10.2.0.1' },
  ],
  addresses: [
    { network: 'front', sandbox: 'Web', ip: '10.1.0.2' }, { network: 'front', sandbox: 'Web', ip: 'fd00:1::2' },
    { network: 'front', sandbox: 'web2', ip: '10.1.0.3' }, { network: 'inner', sandbox: 'i1', ip: '10.2.0.2' },
  ],
  aliases: [{ network: 'front', sandbox: 'Web', alias: 'api' }, { network: 'front', sandbox: 'web2', alias: 'api' }],
});
const front = zone.networks.get('front')!;
const inner = zone.networks.get('inner')!;

describe('dns zone', () => {
  it('answers A/AAAA for NAME, NAME.NETWORK and aliases, without case; NODATA and NXDOMAIN', () => {
    assert.deepEqual(decide(zone, front, 'web', 'A'), { kind: 'local', rcode: 'NOERROR', answers: [{ name: 'web', type: 'A', data: '10.1.0.2' }], soa: undefined });
    assert.deepEqual(decide(zone, front, 'WEB.front.', 'AAAA'), { kind: 'local', rcode: 'NOERROR', answers: [{ name: 'WEB.front.', type: 'AAAA', data: 'fd00:1::2' }], soa: undefined });
    const nodata = decide(zone, front, 'web2', 'AAAA');
    assert.deepEqual(nodata, { kind: 'local', rcode: 'NOERROR', answers: [], soa: 'front' });
    assert.deepEqual(decide(zone, front, 'nobody.front', 'A'), { kind: 'local', rcode: 'NXDOMAIN', answers: [], soa: 'front' });
    const a = decide(zone, front, 'api', 'A', 0);
    const b = decide(zone, front, 'api', 'A', 1);
    assert.ok(a.kind === 'local' && b.kind === 'local' && a.answers.length === 2 && a.answers[0]!.data !== b.answers[0]!.data, 'round robin');
  });
  it('PTR for its addresses; other networks\' names are NXDOMAIN, never forwarded; --internal refuses the rest', () => {
    assert.deepEqual(decide(zone, front, '2.0.1.10.in-addr.arpa', 'PTR'), { kind: 'local', rcode: 'NOERROR', answers: [{ name: '2.0.1.10.in-addr.arpa', type: 'PTR', data: 'web.front' }] });
    assert.equal((decide(zone, front, '9.0.1.10.in-addr.arpa', 'PTR') as { rcode: string }).rcode, 'NXDOMAIN');
    assert.equal((decide(zone, inner, 'web', 'A') as { rcode: string }).rcode, 'NXDOMAIN');
    assert.equal((decide(zone, inner, 'web.front', 'A') as { rcode: string }).rcode, 'NXDOMAIN');
    assert.deepEqual(decide(zone, front, 'example.org', 'A'), { kind: 'forward', upstreams: ['198.51.100.1'] });
    assert.deepEqual(decide(zone, inner, 'example.org', 'A'), { kind: 'refused' });
    assert.equal(zone.networks.has('off'), false, '--dns off: no listener, no names');
    assert.deepEqual(front.gateways, ['10.1.0.1', 'fd00:1::1']);
  });
  it('reverse names and resolv.conf parsing', () => {
    assert.equal(reverseIp('1.2.3.4.in-addr.arpa')?.family, 4);
    assert.equal(reverseIp('2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.1.0.0.0.0.0.d.f.ip6.arpa')?.family, 6);
    assert.equal(reverseIp('300.2.3.4.in-addr.arpa'), undefined);
    assert.deepEqual(nameservers('# x\nnameserver 127.0.0.53\n nameserver 10.0.0.1 \nsearch a'), ['127.0.0.53', '10.0.0.1']);
  });
  it('bad --alias, --dns and --dns-forward are clear errors', () => {
    assert.throws(() => parseAliases(['no_way']), /--alias "no_way" is not a valid DNS label/);
    assert.throws(() => parseAliases(['a', 'A']), /--alias a is given twice/);
    assert.throws(() => parseNetworkSpec({ name: 'n', subnet: ['10.0.0.0/24'], internal: true, dnsForward: '10.0.0.53' }), /--dns-forward cannot be used with --internal/);
    assert.throws(() => parseNetworkSpec({ name: 'n', subnet: ['10.0.0.0/24'], dns: 'maybe' }), /--dns "maybe" is neither on nor off/);
    assert.throws(() => parseNetworkSpec({ name: 'n', subnet: ['10.0.0.0/24'], dnsForward: 'x' }), /--dns-forward "x" is not an IP address/);
    assert.deepEqual(parseNetworkSpec({ name: 'n', subnet: ['10.0.0.0/24'], dnsForward: '10.0.0.53,fd00::53' }).dnsForward, ['10.0.0.53', 'fd00::53']);
  });
});

describe('dns rate limit', () => {
  it('a client gets its rate (a second of burst), others are not affected, and it refills', () => {
    const r = new RateLimit(10);
    let ok = 0;
    for (let i = 0; i < 25; i++) if (r.allow('10.0.0.2', 1000)) ok++;
    assert.equal(ok, 10);
    assert.ok(r.allow('10.0.0.3', 1000), 'another client');
    assert.equal(r.allow('10.0.0.2', 1050), false, 'half a token');
    assert.ok(r.allow('10.0.0.2', 1100));
    assert.ok(new RateLimit(0).allow('x'), '0: no limit');
  });
});

describe('dns answers on the wire', () => {
  const resolver = { zone: () => zone, hostResolvers: () => [], log: () => {} };
  const ask = async (id: number, name: string, type: 'A' | 'AAAA' | 'MX', net = 'front') => {
    const q = dnsPacket.encode({ type: 'query', id, flags: dnsPacket.RECURSION_DESIRED, questions: [{ type, name }] });
    return dnsPacket.decode((await answerQuery(resolver, net, q, false))!) as dnsPacket.DecodedPacket & { rcode: string };
  };
  it('answers with the query\'s id, the same again from the cache, NODATA with the SOA, REFUSED from --internal for names elsewhere', async () => {
    const a = await ask(1, 'web2', 'A');
    const b = await ask(2, 'web2', 'A');
    assert.equal(a.id, 1);
    assert.equal(b.id, 2);
    assert.deepEqual(b.answers, a.answers);
    assert.deepEqual(a.answers?.map((x) => (x as { data: unknown }).data), ['10.1.0.3']);
    assert.equal(a.flag_aa, true);
    const mx = await ask(3, 'web2', 'MX');
    assert.equal(mx.rcode, 'NOERROR');
    assert.deepEqual(mx.answers, []);
    assert.equal(mx.authorities?.[0]?.type, 'SOA');
    assert.equal((await ask(4, 'example.org', 'A', 'inner')).rcode, 'REFUSED');
    assert.equal((await ask(5, 'nobody', 'A')).rcode, 'NXDOMAIN');
  });
  it('a packet it cannot parse gets FORMERR with its id; one shorter than a header, or an answer, nothing', async () => {
    const loop = Buffer.from([0xab, 0xcd, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 0x0c, 0, 1, 0, 1]);
    const out = (await answerQuery(resolver, 'front', loop, false))!;
    assert.equal(out.readUInt16BE(0), 0xabcd);
    assert.equal(out.readUInt16BE(2) & 0xf, 1);
    assert.equal(await answerQuery(resolver, 'front', Buffer.from([1, 2, 3]), false), undefined);
    const answer = Buffer.from(loop);
    answer[2] = 0x81;
    assert.equal(await answerQuery(resolver, 'front', answer, false), undefined);
  });
});
