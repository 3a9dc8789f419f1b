// Pure logic: CIDR math, IPAM choice, names, MACs, request parsing, nft text, ip builders.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { CtnetError } from '../../src/errors.ts';
import { formatAddr, hostRange, overlaps, parseAddr, parseSubnet } from '../../src/model/cidr.ts';
import { nextFree } from '../../src/model/ipam.ts';
import { ipv6Hex, linkLocalOf, parseMac, randomMac } from '../../src/model/mac.ts';
import { parseIfname, parseName } from '../../src/model/names.ts';
import { parseAttachSpec, parseNetworkSpec } from '../../src/model/spec.ts';
import { endpointElements, fullScript, networkElements } from '../../src/nft/ruleset.ts';
import { renderOp, shellLine } from '../../src/plan/render.ts';

const fails = (fn: () => unknown, re: RegExp) =>
  assert.throws(fn, (e: unknown) => e instanceof CtnetError && e.code === 'INVALID_ARGUMENT' && re.test(e.message));

describe('cidr', () => {
  it('parses subnets and refuses host bits, bad prefixes, garbage', () => {
    assert.deepEqual(parseSubnet('s', '10.0.0.0/24'), { family: 4, network: 0x0a000000n, prefix: 24 });
    fails(() => parseSubnet('--subnet', '10.0.0.1/24'), /host bits/);
    fails(() => parseSubnet('--subnet', '10.0.0.0/33'), /not a CIDR/);
    fails(() => parseSubnet('--subnet', 'banana'), /not a CIDR/);
    fails(() => parseSubnet('--subnet', '10.0.0.0/31'), /too small/);
    fails(() => parseSubnet('--subnet', '224.0.0.0/24'), /multicast/);
  });
  it('refuses IPv4 ranges the kernel gives a meaning of their own, and leading zeros (octal)', () => {
    fails(() => parseSubnet('--subnet', '127.0.0.0/24'), /loopback/);
    fails(() => parseSubnet('--subnet', '127.255.0.0/16'), /loopback/);
    fails(() => parseSubnet('--subnet', '169.254.0.0/24'), /link-local/);
    fails(() => parseSubnet('--subnet', '0.0.0.0/8'), /this network/);
    fails(() => parseSubnet('--subnet', '240.0.0.0/24'), /reserved/);
    fails(() => parseSubnet('--subnet', '010.1.0.0/24'), /plain form/);
    fails(() => parseAddr('--ip', '010.1.0.5'), /plain form/);
    fails(() => parseAddr('--ip', '0x0a.1.0.5'), /plain form|not an IP address/);
    assert.equal(parseSubnet('--subnet', '10.0.0.0/24').prefix, 24);
    assert.equal(parseAddr('--ip', '10.0.0.5').n, 0x0a000005n);
  });
  it('computes host ranges and overlaps for both families', () => {
    const s = parseSubnet('s', '10.0.0.0/29');
    const r = hostRange(s);
    assert.equal(formatAddr(4, r.first), '10.0.0.1');
    assert.equal(formatAddr(4, r.last), '10.0.0.6');
    assert.ok(overlaps(parseSubnet('a', '10.0.0.0/16'), parseSubnet('b', '10.0.5.0/24')));
    assert.ok(!overlaps(parseSubnet('a', '10.0.0.0/24'), parseSubnet('b', '10.0.1.0/24')));
    assert.equal(formatAddr(6, parseAddr('ip', 'fd00::0001').n), 'fd00::1');
  });
});

describe('ipam', () => {
  const s = parseSubnet('s', '10.0.0.0/29');
  it('skips taken addresses and wraps around after the cursor', () => {
    const taken = new Set([1n, 2n].map((x) => s.network + x));
    assert.equal(nextFree(s, undefined, (n) => taken.has(n)), s.network + 3n);
    assert.equal(nextFree(s, s.network + 6n, (n) => taken.has(n)), s.network + 3n);
    assert.equal(nextFree(s, s.network + 3n, () => false), s.network + 4n);
  });
  it('never hands out network or broadcast, and says when full', () => {
    assert.throws(() => nextFree(s, undefined, () => true), (e: unknown) => e instanceof CtnetError && e.code === 'CONFLICT');
  });
});

describe('names and MACs', () => {
  it('knows the link-local address the kernel makes from a MAC (EUI-64), and the ND target form', () => {
    assert.equal(linkLocalOf('02:42:ac:11:00:02'), 'fe80::42:acff:fe11:2');
    assert.equal(linkLocalOf('00:16:3e:00:00:01'), 'fe80::216:3eff:fe00:1');
    assert.equal(ipv6Hex('fe80::1'), '0xfe800000000000000000000000000001');
  });
  it('a port\'s identity: MAC, addresses and link-local, the port registered last and removed first', () => {
    const e = { bridge: 'br', addresses: [{ family: 4 as const, ip: '10.0.0.2' }, { family: 6 as const, ip: 'fd00::2' }], port: { name: 'ctv1', mac: '02:42:ac:11:00:02' } };
    const add = endpointElements('add', e);
    assert.deepEqual(add.slice(2), [
      'add element bridge ctnet port_mac { "ctv1" . 02:42:ac:11:00:02 }',
      'add element bridge ctnet port_ip4 { "ctv1" . 10.0.0.2 }',
      'add element bridge ctnet port_ip6 { "ctv1" . fd00::2, "ctv1" . fe80::42:acff:fe11:2 }',
      'add element bridge ctnet port_nd { "ctv1" . 0xfd000000000000000000000000000002, "ctv1" . 0xfe800000000000000042acfffe110002 }',
      'add element bridge ctnet ports { "ctv1" }',
    ]);
    assert.equal(endpointElements('delete', e)[2], 'delete element bridge ctnet ports { "ctv1" }');
  });
  it('refuse what could inject into ip/nft arguments', () => {
    for (const bad of ['', 'a b', 'x;reboot', '$(id)', '"q"', '../etc', 'a\nb', '-rf', 'x'.repeat(49)]) {
      assert.throws(() => parseName('sandbox', bad), CtnetError, JSON.stringify(bad));
    }
    assert.equal(parseName('sandbox', 'web-1.prod_2'), 'web-1.prod_2');
    assert.throws(() => parseIfname('--bridge', 'br0 type veth'), CtnetError);
    assert.throws(() => parseIfname('--bridge', 'sixteen-chars-xx'), CtnetError);
  });
  it('accepts unicast MACs only', () => {
    assert.equal(parseMac('02-42-AC-11-00-02'), '02:42:ac:11:00:02');
    fails(() => parseMac('01:00:5e:00:00:01'), /multicast/);
    fails(() => parseMac('00:00:00:00:00:00'), /not usable/);
    fails(() => parseMac('02:42:ac:11:00'), /malformed/);
    const m = randomMac();
    assert.equal(parseInt(m.slice(0, 2), 16) & 3, 2);
  });
});

describe('request parsing', () => {
  it('defaults the gateway to the first host and checks it', () => {
    const n = parseNetworkSpec({ name: 'web', subnet: ['10.1.0.0/24', 'fd00:1::/64'] });
    assert.deepEqual(n.subnets.map((s) => s.gateway), ['10.1.0.1', 'fd00:1::1']);
    fails(() => parseNetworkSpec({ name: 'web', subnet: ['10.1.0.0/24'], gateway: ['10.2.0.1'] }), /outside every --subnet/);
    fails(() => parseNetworkSpec({ name: 'web', subnet: ['10.1.0.0/24', '10.1.0.0/16'] }), /more than one IPv4/);
    fails(() => parseNetworkSpec({ name: 'web' }), /at least one --subnet/);
    fails(() => parseNetworkSpec({ name: 'web', subnet: ['10.1.0.0/24'], mtu: '9x' }), /--mtu/);
  });
  it('parses attach requests', () => {
    fails(() => parseAttachSpec({}), /no --network/);
    fails(() => parseAttachSpec({ network: ['a', 'a'] }), /given twice/);
    fails(() => parseAttachSpec({ network: ['a'], ip: ['10.0.0.300'] }), /not an IP address/);
    assert.equal(parseAttachSpec({ network: ['a'], ip: ['fd00::0005'] }).ips[0]!.text, 'fd00::5');
  });
});

describe('nft text and ip commands', () => {
  it('internal networks are never masqueraded', () => {
    const lines = networkElements('add', { bridge: 'br', internal: true, isolate: false, hostAccess: false, dns: true, subnets: [{ family: 4, cidr: '10.0.0.0/24', gateway: '10.0.0.1' }] });
    assert.ok(lines.some((l) => l.includes('internal_bridges { "br" }')));
    assert.ok(!lines.some((l) => l.includes('masq')));
    // DNS stays open on an --internal network: one element per gateway, not per sandbox.
    assert.ok(lines.includes('add element inet ctnet dns4 { 10.0.0.1 . "br" }'));
  });
  it('a network with --dns off opens no port 53', () => {
    const lines = networkElements('add', { bridge: 'br', internal: false, isolate: false, hostAccess: false, dns: false, subnets: [{ family: 6, cidr: 'fd00::/64', gateway: 'fd00::1' }] });
    assert.ok(!lines.some((l) => l.includes('dns')));
    assert.deepEqual(endpointElements('delete', { bridge: 'br', addresses: [{ family: 6, ip: 'fd00::2' }] }),
      ['delete element inet ctnet endpoints6 { fd00::2 . "br" }']);
    assert.equal(fullScript([], []), 'add table bridge ctnet\ndelete table bridge ctnet\nadd table inet ctnet\ndelete table inet ctnet\n');
  });
  it('an --isolate network has no bridge . bridge pair (same-network traffic is not accepted by default)', () => {
    const lines = networkElements('add', { bridge: 'br', internal: false, isolate: true, hostAccess: false, dns: true, subnets: [] });
    assert.deepEqual(lines, ['add element inet ctnet bridges { "br" }']);
  });
  it('builders print their Equivalent-to line', () => {
    const line = (op: Parameters<typeof renderOp>[0]) => renderOp(op).join('\n');
    assert.equal(line({ kind: 'link.set.up', name: 'eth0', netns: { name: 'ns1' } }), 'ip -n ns1 link set eth0 up');
    assert.equal(line({ kind: 'link.set.up', name: 'eth0', netns: { path: '/proc/1/ns/net' } }), 'nsenter --net=/proc/1/ns/net ip link set eth0 up');
    assert.equal(line({ kind: 'route.replace.default', via: 'fd00::1', dev: 'eth0', netns: { name: 'n' } }), 'ip -n n -6 route replace default via fd00::1 dev eth0');
    assert.equal(line({ kind: 'link.add.veth', name: 'ctv1', peer: 'eth0', peerNetns: { name: 'n' } }), 'ip link add ctv1 type veth peer name eth0 netns n');
    assert.equal(line({ kind: 'sysctl.set', key: 'net.ipv4.ip_forward', value: '1' }), 'sysctl -w net.ipv4.ip_forward=1');
    assert.equal(line({ kind: 'nft', lines: ['add table inet ctnet'] }), "nft -f - <<'EOF'\nadd table inet ctnet\nEOF");
    assert.equal(shellLine(['echo', "it's", 'a b']), `echo 'it'\\''s' 'a b'`);
  });
});
