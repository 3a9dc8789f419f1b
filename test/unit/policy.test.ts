// Pure logic of network policy: selectors, port filters, compilation to disjoint boxes, decisions.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { CtnetError } from '../../src/errors.ts';
import {
  boxText, checkRuleSelectors, compile, decide, formatSelector, hostBoxText, parsePortFilter, parseSelector, resolve, ruleBoxes, ruleBoxesTouching, type Box, type PolicyRule, type PolicyWorld,
} from '../../src/model/policy.ts';

const fails = (fn: () => unknown, re: RegExp) =>
  assert.throws(fn, (e: unknown) => e instanceof CtnetError && e.code === 'INVALID_ARGUMENT' && re.test(e.message));
const a4 = (t: string) => t.split('.').reduce((n, x) => (n << 8n) | BigInt(x), 0n);

const world: PolicyWorld = {
  networks: [
    { name: 'front', internal: false, isolate: false, hostAccess: false, subnets: [{ family: 4, start: a4('10.1.0.0'), end: a4('10.1.0.255') }] },
    { name: 'back', internal: false, isolate: false, hostAccess: false, subnets: [{ family: 4, start: a4('10.2.0.0'), end: a4('10.2.0.255') }] },
    { name: 'iso', internal: false, isolate: true, hostAccess: false, subnets: [{ family: 4, start: a4('10.3.0.0'), end: a4('10.3.0.255') }] },
    { name: 'vault', internal: true, isolate: false, hostAccess: false, subnets: [{ family: 4, start: a4('10.4.0.0'), end: a4('10.4.0.255') }] },
  ],
  sandboxes: [
    { name: 'web', labels: { tier: 'web' }, addresses: [{ family: 4, n: a4('10.1.0.2'), network: 'front' }] },
    { name: 'api', labels: { tier: 'api' }, addresses: [{ family: 4, n: a4('10.2.0.2'), network: 'back' }] },
    { name: 'db', labels: { tier: 'db' }, addresses: [{ family: 4, n: a4('10.2.0.3'), network: 'back' }] },
  ],
};
let nextId = 1;
const rule = (action: 'allow' | 'deny', from: string, to: string, port?: string): PolicyRule =>
  ({ id: nextId, name: `r${nextId++}`, action, from: parseSelector('--from', from), to: parseSelector('--to', to), port: port ? parsePortFilter(port) : undefined });
const tcp = (src: string, dst: string, port: number) => ({ family: 4 as const, src: a4(src), dst: a4(dst), proto: 6, port });

describe('selectors and port filters', () => {
  it('parse every kind and print back the same text', () => {
    for (const t of ['web1', 'net:front', 'label:tier=api', '10.0.0.0/8', '10.1.2.3/32', 'fd00::/8', 'world', 'host']) {
      assert.equal(formatSelector(parseSelector('--from', t)), t);
    }
    assert.equal(formatSelector(parseSelector('--from', '10.1.2.3')), '10.1.2.3/32');
    fails(() => parseSelector('--to', '10.0.0.1/8'), /host bits/);
    fails(() => parseSelector('--to', 'net:'), /name is empty/);
    fails(() => parseSelector('--to', 'label:x'), /has no "="/);
    fails(() => parseSelector('--to', 'a b'), /not a sandbox name/);
  });
  it('plain dotted IPv4 (parsed without ipaddr.js) reads as ipaddr.js reads it', () => {
    const cidr = (t: string) => {
      const s = parseSelector('--from', t);
      assert.equal(s.kind, 'cidr');
      return s.kind === 'cidr' ? [s.family, s.start, s.end, s.text] : [];
    };
    assert.deepEqual(cidr('0.0.0.0/0'), [4, 0n, (1n << 32n) - 1n, '0.0.0.0/0']);
    assert.deepEqual(cidr('255.255.255.255'), [4, (1n << 32n) - 1n, (1n << 32n) - 1n, '255.255.255.255/32']);
    assert.deepEqual(cidr('192.0.2.128/25'), [4, a4('192.0.2.128'), a4('192.0.2.255'), '192.0.2.128/25']);
    assert.deepEqual(cidr('10.128.1.7/32'), [4, a4('10.128.1.7'), a4('10.128.1.7'), '10.128.1.7/32']);
    fails(() => parseSelector('--from', '192.0.2.129/25'), /host bits/);
    fails(() => parseSelector('--from', '256.0.0.1'), /not a sandbox name/);
    fails(() => parseSelector('--from', '10.0.0.0/33'), /not a sandbox name/);
  });
  it('port filters', () => {
    assert.deepEqual(parsePortFilter('3306'), { proto: 'tcp', start: 3306, end: 3306 });
    assert.deepEqual(parsePortFilter('53/udp'), { proto: 'udp', start: 53, end: 53 });
    assert.deepEqual(parsePortFilter('icmp'), { proto: 'icmp', start: 0, end: 65535 });
    assert.deepEqual(parsePortFilter('/icmp'), { proto: 'icmp', start: 0, end: 65535 });
    fails(() => parsePortFilter('0'), /from 1 to 65535/);
    fails(() => parsePortFilter('80/icmp'), /ICMP has no ports/);
    fails(() => parsePortFilter('80/ip'), /unknown protocol/);
  });
  it('world is everything outside ctnet\'s subnets', () => {
    const w = resolve({ kind: 'world' }, world, 4);
    assert.deepEqual(w[0], [0n, a4('10.0.255.255')]);
    assert.deepEqual(w[1], [a4('10.1.1.0'), a4('10.1.255.255')]);
    assert.deepEqual(w.at(-1), [a4('10.4.1.0'), (1n << 32n) - 1n]);
  });
});

describe('compilation', () => {
  it('overlapping rules become disjoint boxes that cover exactly their union, owned by the oldest rule', () => {
    const rules = [rule('allow', 'net:front', 'net:back'), rule('allow', 'web', 'api', '8080'), rule('allow', '10.0.0.0/8', 'label:tier=db', '1-100/tcp')];
    const boxes = compile(rules, 'allow', world, 4);
    for (const [i, a] of boxes.entries()) {
      for (const b of boxes.slice(i + 1)) assert.ok(!a.box.every((r, d) => r[0] <= b.box[d]![1] && b.box[d]![0] <= r[1]), `${boxText(a.box, 4)} and ${boxText(b.box, 4)} overlap`);
    }
    const inside = (b: Box, p: ReturnType<typeof tcp>) => [p.src, p.dst, BigInt(p.proto), BigInt(p.port)].every((v, d) => b[d]![0] <= v && v <= b[d]![1]);
    const owner = (p: ReturnType<typeof tcp>) => boxes.find((b) => inside(b.box, p))?.rule;
    assert.equal(owner(tcp('10.1.0.2', '10.2.0.2', 8080)), rules[0]!.id);
    assert.equal(owner(tcp('10.9.0.1', '10.2.0.3', 50)), rules[2]!.id);
    assert.equal(owner(tcp('10.9.0.1', '10.2.0.3', 101)), undefined);
    assert.equal(owner(tcp('10.9.0.1', '10.2.0.2', 50)), undefined);
  });
  it('a rule\'s boxes through some addresses are exactly those of all its boxes whose source or destination holds one', () => {
    const key = (b: Box) => b.map(([x, y]) => `${x}-${y}`).join('|');
    const rules = [rule('allow', 'label:tier=web', 'label:tier=api'), rule('allow', 'net:front', 'label:tier=db', '5432'), rule('deny', '10.0.0.0/8', 'api'),
      rule('allow', 'label:tier=api', 'world'), rule('allow', 'web', 'host', '53/udp'), rule('allow', 'label:tier=api', 'label:tier=api')];
    for (const points of [[a4('10.2.0.2')], [a4('10.1.0.2'), a4('10.2.0.3')], [a4('192.0.2.1')], []]) {
      for (const r of rules) {
        for (const target of ['forward', 'host'] as const) {
          const holds = (x: readonly [bigint, bigint]) => points.some((n) => x[0] <= n && n <= x[1]);
          const want = ruleBoxes(r, world, 4, target).filter((b) => holds(b[0]) || holds(b[1])).map(key).toSorted();
          assert.deepEqual(ruleBoxesTouching(r, world, 4, target, points).map(key).toSorted(), want, `rule ${r.name} (${formatSelector(r.from)} -> ${formatSelector(r.to)}), ${target}, ${points.length} points`);
        }
      }
    }
  });
  it('10,000 distinct rules compile quickly into 10,000 boxes', () => {
    const rules = Array.from({ length: 10_000 }, (_, i) => rule('allow', `10.100.${i >> 8}.${i & 255}`, 'net:back', '8080'));
    assert.equal(compile(rules, 'allow', world, 4).length, 10_000);
  });
});

describe('decisions', () => {
  it('deny beats allow beats defaults', () => {
    const rules = [rule('allow', 'net:front', 'label:tier=api', '8080'), rule('deny', 'web', 'api', '8080')];
    assert.deepEqual(decide(rules, world, tcp('10.1.0.2', '10.2.0.2', 8080)), { allowed: false, by: `rule ${rules[1]!.name}` });
    assert.deepEqual(decide(rules, world, tcp('10.1.0.9', '10.2.0.2', 8080)), { allowed: true, by: `rule ${rules[0]!.name}` });
    assert.equal(decide(rules, world, tcp('10.1.0.9', '10.2.0.2', 8081)).allowed, false);
  });
  it('defaults follow the forward chain', () => {
    const d = (s: string, t: string, published = false) => decide([], world, { ...tcp(s, t, 80), published });
    assert.match(d('10.1.0.2', '10.1.0.3').by, /same network/);
    assert.match(d('10.3.0.2', '10.3.0.3').by, /--isolate/);
    assert.equal(d('10.3.0.2', '10.3.0.3', true).allowed, true); // hairpin through a published port
    assert.match(d('10.1.0.2', '10.2.0.3').by, /isolated from each other/);
    assert.match(d('10.4.0.2', '203.0.113.1').by, /--internal/);
    assert.match(d('10.1.0.2', '203.0.113.1').by, /egress/);
    assert.match(d('203.0.113.1', '10.1.0.2').by, /only published ports/);
    assert.equal(d('203.0.113.1', '10.1.0.2', true).allowed, true);
  });
});

describe('the host as a destination (--to host)', () => {
  const hostWorld: PolicyWorld = { ...world, networks: [...world.networks, { name: 'open', internal: false, isolate: false, hostAccess: true, subnets: [{ family: 4, start: a4('10.5.0.0'), end: a4('10.5.0.255') }] }] };
  const toHost = (src: string, port: number, proto = 6) => ({ family: 4 as const, src: a4(src), dst: 0n, proto, port, toHost: true });

  it('host is a destination only, and never for the world', () => {
    fails(() => checkRuleSelectors(parseSelector('--from', 'host'), parseSelector('--to', 'web')), /--from host: ctnet does not filter the host's own connections/);
    fails(() => checkRuleSelectors(parseSelector('--from', 'world'), parseSelector('--to', 'host')), /--from world --to host/);
    assert.doesNotThrow(() => checkRuleSelectors(parseSelector('--from', 'net:vault'), parseSelector('--to', 'host')));
  });

  it('rules --to host compile to source . protocol . port boxes, apart from the forward rules', () => {
    const rules = [rule('allow', 'net:vault', 'host', '53/udp'), rule('allow', 'web', 'api', '80')];
    const host = compile(rules, 'allow', hostWorld, 4, 'host');
    assert.deepEqual(host.map((b) => hostBoxText(b.box, 4)), ['10.4.0.0-10.4.0.255 . 17 . 53']);
    assert.deepEqual(compile(rules, 'allow', hostWorld, 4).map((b) => boxText(b.box, 4)), ['10.1.0.2 . 10.2.0.2 . 6 . 80'], 'the host rule is not a forward box');
    assert.deepEqual(compile(rules, 'allow', hostWorld, 6, 'host'), [], 'no IPv6 sandbox in net:vault');
  });

  it('defaults: closed but for ICMP, open with --host-access, nothing from --internal; rules decide first', () => {
    assert.match(decide([], hostWorld, toHost('10.1.0.2', 22)).by, /the host is closed to sandboxes of front/);
    assert.equal(decide([], hostWorld, toHost('10.1.0.2', 0, 1)).allowed, true);
    assert.match(decide([], hostWorld, toHost('10.5.0.2', 22)).by, /--host-access/);
    assert.equal(decide([], hostWorld, toHost('10.5.0.2', 22)).allowed, true);
    assert.match(decide([], hostWorld, toHost('10.4.0.2', 0, 1)).by, /--internal/);
    assert.match(decide([], hostWorld, toHost('203.0.113.9', 22)).by, /not from a sandbox/);
    const rules = [rule('allow', 'net:vault', 'host', '53/udp'), rule('deny', 'net:open', 'host', '22'), rule('allow', '10.1.0.0/24', 'host', '22')];
    assert.equal(decide(rules, hostWorld, toHost('10.4.0.2', 53, 17)).allowed, true, 'an allow opens the host to an --internal network');
    assert.equal(decide(rules, hostWorld, toHost('10.4.0.2', 54, 17)).allowed, false);
    assert.equal(decide(rules, hostWorld, toHost('10.5.0.2', 22)).allowed, false, 'a deny closes a port of a --host-access network');
    assert.equal(decide(rules, hostWorld, toHost('10.5.0.2', 23)).allowed, true);
    assert.equal(decide(rules, hostWorld, toHost('10.1.0.2', 22)).allowed, true);
    // A host rule never decides forwarded traffic, nor a forward rule the host's.
    assert.match(decide(rules, hostWorld, tcp('10.1.0.2', '10.2.0.2', 22)).by, /isolated from each other/);
    assert.match(decide([rule('allow', 'web', '0.0.0.0/0', '22')], hostWorld, toHost('10.1.0.2', 22)).by, /closed/);
  });
});

