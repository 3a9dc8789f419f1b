// The DNS server's decisions (services/dns/zone.ts): pure, from rows as the store gives them.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { buildZone, decide, reverseIp } from '../../src/services/dns/zone.ts';
import { nameservers, UpstreamPool } from '../../src/services/dns/upstream.ts';
import * as dnsPacket from 'dns-packet';
import { answerNow, answerQuery, RateLimit } from '../../src/services/dns/server.ts';
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
  // web2's alias "web" (another host's directory may say so): the sandbox web's own name wins.
  aliases: [{ network: 'front', sandbox: 'Web', alias: 'api' }, { network: 'front', sandbox: 'web2', alias: 'api' }, { network: 'front', sandbox: 'web2', alias: 'web' }],
  services: [
    { network: 'front', name: 'shop', vip: '10.1.0.200' }, { network: 'front', name: 'web2', vip: '10.1.0.201' },
    { network: 'front', name: 'v6svc', vip: 'fd00:1::c8' }, { network: 'front', name: 'dual', vip: '10.1.0.201', vip6: 'fd00:1::c9' }, { network: 'front', name: 'dotted.name', vip: '10.1.0.202' },
    { network: 'inner', name: 'isvc', vip: '10.2.0.200' },
  ],
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
  it('a service\'s NAME and NAME.NETWORK answer its VIP (A, or AAAA for an IPv6 VIP) on its network only, with PTR; a sandbox of the same name wins', () => {
    assert.deepEqual(decide(zone, front, 'shop', 'A'), { kind: 'local', rcode: 'NOERROR', answers: [{ name: 'shop', type: 'A', data: '10.1.0.200' }], soa: undefined });
    assert.deepEqual(decide(zone, front, 'SHOP.front', 'A'), { kind: 'local', rcode: 'NOERROR', answers: [{ name: 'SHOP.front', type: 'A', data: '10.1.0.200' }], soa: undefined });
    assert.deepEqual(decide(zone, front, 'shop', 'AAAA'), { kind: 'local', rcode: 'NOERROR', answers: [], soa: 'front' }, 'NODATA');
    // A dual-stack network's service: A its IPv4 VIP, AAAA its IPv6 one, PTR of both.
    assert.deepEqual((decide(zone, front, 'dual', 'A') as { answers: unknown }).answers, [{ name: 'dual', type: 'A', data: '10.1.0.201' }]);
    assert.deepEqual((decide(zone, front, 'dual', 'AAAA') as { answers: unknown }).answers, [{ name: 'dual', type: 'AAAA', data: 'fd00:1::c9' }]);
    assert.deepEqual((decide(zone, front, '9.c.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.1.0.0.0.0.0.d.f.ip6.arpa', 'PTR') as { answers: unknown }).answers,
      [{ name: '9.c.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.1.0.0.0.0.0.d.f.ip6.arpa', type: 'PTR', data: 'dual.front' }]);
    assert.deepEqual(decide(zone, front, 'v6svc', 'AAAA'), { kind: 'local', rcode: 'NOERROR', answers: [{ name: 'v6svc', type: 'AAAA', data: 'fd00:1::c8' }], soa: undefined });
    assert.deepEqual(decide(zone, front, '200.0.1.10.in-addr.arpa', 'PTR'), { kind: 'local', rcode: 'NOERROR', answers: [{ name: '200.0.1.10.in-addr.arpa', type: 'PTR', data: 'shop.front' }] });
    assert.deepEqual((decide(zone, front, 'web2', 'A') as { answers: unknown }).answers, [{ name: 'web2', type: 'A', data: '10.1.0.3' }], 'the sandbox wins');
    assert.equal((decide(zone, inner, 'shop', 'A') as { rcode: string }).rcode, 'NXDOMAIN', 'another network\'s service');
    assert.equal((decide(zone, front, 'isvc', 'A') as { rcode: string }).rcode, 'NXDOMAIN');
    assert.deepEqual((decide(zone, inner, 'isvc.inner', 'A') as { answers: unknown }).answers, [{ name: 'isvc.inner', type: 'A', data: '10.2.0.200' }]);
    assert.equal(front.names.has('dotted.name'), false, 'not a DNS label: no name');
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
  const resolver = { zone: () => zone, hostResolvers: () => [], upstream: new UpstreamPool(), log: () => {} };
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

describe('dns answers by hand (wire.ts) match dns-packet\'s reading', () => {
  const resolver = { zone: () => zone, hostResolvers: () => [], upstream: new UpstreamPool(), log: () => {} };
  const raw = (id: number, name: string, type: string, opts: Partial<dnsPacket.Packet> = {}) =>
    dnsPacket.encode({ type: 'query', id, flags: dnsPacket.RECURSION_DESIRED, questions: [{ type: type as 'A', name }], ...opts });
  const edns = { additionals: [{ type: 'OPT', name: '.', udpPayloadSize: 4096, extendedRcode: 0, ednsVersion: 0, flag_do: false, flags: 0, options: [{ code: 10, data: Buffer.alloc(8, 7) }] } as unknown as dnsPacket.OptAnswer] };
  it('keeps the client\'s case in the question, answers AAAA and PTR, EDNS with our size, RD as asked', () => {
    const out = answerNow(resolver, 'front', raw(9, 'WeB.FrOnT', 'AAAA', edns), false) as Buffer;
    const p = dnsPacket.decode(out) as dnsPacket.DecodedPacket & { rcode: string };
    assert.equal(p.id, 9);
    assert.equal(p.questions?.[0]?.name, 'WeB.FrOnT');
    assert.deepEqual(p.answers?.map((a) => [a.name, a.type, (a as { data: unknown }).data, (a as { ttl?: number }).ttl]), [['WeB.FrOnT', 'AAAA', 'fd00:1::2', 0]]);
    assert.equal((p.additionals?.[0] as dnsPacket.OptAnswer).udpPayloadSize, 1232);
    assert.equal(p.flag_rd, true);
    assert.equal(p.flag_aa, true);
    const ptr = dnsPacket.decode(answerNow(resolver, 'front', raw(10, '2.0.1.10.in-addr.arpa', 'PTR'), false) as Buffer);
    assert.deepEqual(ptr.answers?.map((a) => (a as { data: unknown }).data), ['web.front']);
    const nord = dnsPacket.decode(answerNow(resolver, 'front', dnsPacket.encode({ type: 'query', id: 1, questions: [{ type: 'A', name: 'web' }] }), false) as Buffer);
    assert.equal(nord.flag_rd, false);
  });
  it('NODATA and NXDOMAIN carry the SOA; shared aliases take turns; forwarded names come back as upstreams', () => {
    const nodata = dnsPacket.decode(answerNow(resolver, 'front', raw(1, 'web2', 'AAAA'), false) as Buffer) as dnsPacket.DecodedPacket & { rcode: string };
    assert.equal(nodata.rcode, 'NOERROR');
    assert.deepEqual(nodata.answers, []);
    assert.equal(nodata.authorities?.[0]?.type, 'SOA');
    assert.equal((nodata.authorities?.[0] as { data: { mname: string } }).data.mname, 'ns.front');
    const nx = dnsPacket.decode(answerNow(resolver, 'front', raw(2, 'nobody.front', 'A'), false) as Buffer) as dnsPacket.DecodedPacket & { rcode: string };
    assert.equal(nx.rcode, 'NXDOMAIN');
    const firsts = new Set<unknown>();
    for (let i = 0; i < 4; i++) {
      const p = dnsPacket.decode(answerNow(resolver, 'front', raw(i, 'api', 'A'), false) as Buffer);
      assert.equal(p.answers?.length, 2);
      firsts.add((p.answers?.[0] as { data: unknown }).data);
    }
    assert.deepEqual([...firsts].sort(), ['10.1.0.2', '10.1.0.3'], 'round robin');
    assert.deepEqual(answerNow(resolver, 'front', raw(3, 'example.org', 'A'), false), { upstreams: ['198.51.100.1'] });
  });
  it('an answer larger than the client\'s UDP size is truncated (TC, no records), whole over TCP', () => {
    const many = buildZone({
      serial: 1, networks: [{ name: 'big', internal: false, dns: true, forward: [], ready: true }],
      subnets: [{ network: 'big', cidr: '10.9.0.0/24', gateway: '10.9.0.1' }],
      addresses: Array.from({ length: 40 }, (_, i) => ({ network: 'big', sandbox: `s${i}`, ip: `10.9.0.${i + 2}` })),
      aliases: Array.from({ length: 40 }, (_, i) => ({ network: 'big', sandbox: `s${i}`, alias: 'all' })), services: [],
    });
    const r = { ...resolver, zone: () => many };
    const udp = dnsPacket.decode(answerNow(r, 'big', raw(1, 'all', 'A'), false) as Buffer);
    assert.equal(udp.flag_tc, true);
    assert.deepEqual(udp.answers, []);
    const tcp = dnsPacket.decode(answerNow(r, 'big', raw(1, 'all', 'A'), true) as Buffer);
    assert.equal(tcp.flag_tc, false);
    assert.equal(tcp.answers?.length, 40);
  });
});

describe('dns forwarding over long-lived sockets (a fake upstream on 127.0.0.1)', () => {
  /** A UDP and TCP DNS server on one port; answer(q) decides each reply (undefined: none). */
  const fake = async (answer: (q: dnsPacket.DecodedPacket, raw: Buffer, sendRaw: (b: Buffer) => void) => Buffer | undefined, tcpAnswer?: (q: dnsPacket.DecodedPacket) => Buffer) => {
    const { createSocket } = await import('node:dgram');
    const { createServer } = await import('node:net');
    const udp = createSocket('udp4');
    await new Promise<void>((res) => udp.bind(0, '127.0.0.1', res));
    const port = udp.address().port;
    const sources = new Set<number>();
    const seen: Buffer[] = [];
    udp.on('message', (msg, rinfo) => {
      sources.add(rinfo.port);
      seen.push(msg);
      const out = answer(dnsPacket.decode(msg), msg, (b) => udp.send(b, rinfo.port, rinfo.address));
      if (out) udp.send(out, rinfo.port, rinfo.address);
    });
    const tcp = createServer((s) => s.on('data', (d) => {
      const out = tcpAnswer!(dnsPacket.decode(d.subarray(2)));
      const len = Buffer.alloc(2);
      len.writeUInt16BE(out.length);
      s.end(Buffer.concat([len, out]));
    }));
    if (tcpAnswer) await new Promise<void>((res) => tcp.listen(port, '127.0.0.1', res));
    return { port, sources, seen, close: () => { udp.close(); tcp.close(); } };
  };
  const reply = (q: dnsPacket.DecodedPacket, ip: string, extra: Partial<dnsPacket.Packet> = {}) => dnsPacket.encode({
    type: 'response', id: q.id, flags: dnsPacket.RECURSION_AVAILABLE, questions: q.questions, answers: [{ type: 'A', name: q.questions![0]!.name, ttl: 5, data: ip }], ...extra,
  });
  const query = (id: number, name: string, opts: Partial<dnsPacket.Packet> = {}) =>
    dnsPacket.encode({ type: 'query', id, flags: dnsPacket.RECURSION_DESIRED, questions: [{ type: 'A', name }], ...opts });
  const ipOf = (b: Buffer | undefined) => (dnsPacket.decode(b!).answers?.[0] as { data: string } | undefined)?.data;

  it('many queries in flight share one socket, answered out of order, each matched by id and question; the client\'s id and EDNS kept', async () => {
    const held: (() => void)[] = [];
    const f = await fake((q, _raw, send) => {
      // Answer in reverse order: hold every answer until all 20 arrived.
      held.push(() => send(reply(q, `10.0.0.${Number(/\d+/.exec(q.questions![0]!.name)![0])}`)));
      if (held.length === 20) for (const h of held.reverse()) h();
      return undefined;
    });
    const pool = new UpstreamPool({ port: f.port });
    try {
      const edns = { additionals: [{ type: 'OPT', name: '.', udpPayloadSize: 4000, extendedRcode: 0, ednsVersion: 0, flag_do: false, flags: 0, options: [{ code: 10, data: Buffer.from('cookie!!') }] } as unknown as dnsPacket.OptAnswer] };
      const answers = await Promise.all(Array.from({ length: 20 }, (_, i) => pool.forward(['127.0.0.1'], query(1000 + i, `n${i}.example`, edns), false)));
      answers.forEach((a, i) => {
        assert.equal(a!.readUInt16BE(0), 1000 + i, 'the client\'s id');
        assert.equal(ipOf(a), `10.0.0.${i}`);
      });
      assert.equal(f.sources.size, 1, 'one socket');
      const sent = dnsPacket.decode(f.seen[0]!);
      assert.deepEqual((sent.additionals?.[0] as dnsPacket.OptAnswer).options, [{ code: 10, type: 'COOKIE', data: Buffer.from('cookie!!') }], 'EDNS passed through');
      assert.equal(pool.inflight(), 0);
    } finally {
      pool.close();
      f.close();
    }
  });

  it('an answer with the id in flight but another question is ignored; the right one that follows is taken', async () => {
    const f = await fake((q, _raw, send) => {
      send(dnsPacket.encode({ type: 'response', id: q.id, questions: [{ type: 'A', name: 'evil.example' }], answers: [{ type: 'A', name: 'evil.example', data: '6.6.6.6' }] }));
      return reply(q, '10.0.0.1');
    });
    const pool = new UpstreamPool({ port: f.port });
    try {
      assert.equal(ipOf(await pool.forward(['127.0.0.1'], query(5, 'good.example'), false)), '10.0.0.1');
    } finally {
      pool.close();
      f.close();
    }
  });

  it('a silent upstream times out and the next one answers; a truncated answer is asked again over TCP', async () => {
    const silent = await fake(() => undefined);
    const tc = await fake((q) => reply(q, '10.0.0.9', { flags: dnsPacket.TRUNCATED_RESPONSE, answers: [] }), (q) => reply(q, '10.0.0.7'));
    const pool = new UpstreamPool({ port: silent.port, timeoutMs: 200 });
    const pool2 = new UpstreamPool({ port: tc.port });
    try {
      assert.equal(await pool.forward(['127.0.0.1'], query(1, 'x.example'), false), undefined, 'timed out');
      assert.equal(pool.inflight(), 0);
      const viaTcp = await pool2.forward(['127.0.0.1'], query(2, 'big.example'), false);
      assert.equal(ipOf(viaTcp), '10.0.0.7');
      assert.equal(viaTcp!.readUInt16BE(0), 2);
      assert.equal(ipOf(await pool2.forward(['127.0.0.1'], query(3, 'tcp.example'), true)), '10.0.0.7', 'the client asked over TCP');
    } finally {
      pool.close();
      pool2.close();
      silent.close();
      tc.close();
    }
  });

  it('an upstream that is down (port unreachable) fails at once, not after its timeout, and the next upstream answers', { timeout: 20_000 }, async () => {
    const f = await fake((q) => reply(q, '10.0.0.3'));
    f.close(); // the port is closed now: ICMP port unreachable
    const up = await fake((q) => reply(q, '10.0.0.4'));
    // Same port for both: the first upstream is 127.0.0.2 (nothing listens there on this port).
    const pool = new UpstreamPool({ port: up.port, timeoutMs: 60_000 });
    try {
      const a = await pool.forward(['127.0.0.2', '127.0.0.1'], query(7, 'y.example'), false);
      assert.equal(ipOf(a), '10.0.0.4');
    } finally {
      pool.close();
      up.close();
    }
  });
});

describe('the name reader (store/names.ts)', () => {
  it('moved() is false until a commit, and true after every one (the WAL-index header); rows() reads services and other hosts\' aliases', async () => {
    const { mkdtempSync, rmSync } = await import('node:fs');
    const { join } = await import('node:path');
    const { tmpdir } = await import('node:os');
    const { Store } = await import('../../src/store/store.ts');
    const { NameReader } = await import('../../src/store/names.ts');
    const dir = mkdtempSync(join(tmpdir(), 'ctnet-names-'));
    const store = new Store(dir);
    const reader = new NameReader(dir);
    try {
      assert.equal(reader.moved(), true, 'the first look');
      assert.equal(reader.moved(), false);
      assert.equal(reader.moved(), false);
      const before = reader.serial();
      for (let i = 0; i < 3; i++) {
        store.write(() => store.putRemoteSandbox({ host: 'h2', name: `b${i}`, addresses: ['10.50.2.2'], labels: {}, networks: ['ov'], aliases: { ov: ['api'] } }));
        assert.equal(reader.moved(), true, `commit ${i}`);
        assert.equal(reader.moved(), false);
      }
      assert.ok(reader.serial() > before);
      assert.deepEqual(reader.rows().services, []);
    } finally {
      reader.close();
      store.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
