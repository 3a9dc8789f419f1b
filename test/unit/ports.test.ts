// Pure logic of published ports: -p parsing, collisions, map elements, conntrack and ss parsing.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { CtnetError } from '../../src/errors.ts';
import { collides, describeMapping, formatPortSpec, parsePortSpec } from '../../src/model/ports.ts';
import { portElements } from '../../src/nft/ruleset.ts';
import { parseFlows, parseProcFlows } from '../../src/kernel/conntrack.ts';
import { parseListeners, parseProcNet } from '../../src/kernel/sockets.ts';

const fails = (text: string, re: RegExp) =>
  assert.throws(() => parsePortSpec(text), (e: unknown) => e instanceof CtnetError && e.code === 'INVALID_ARGUMENT' && re.test(e.message), text);

describe('-p parsing', () => {
  it('reads every form and prints it back canonically', () => {
    assert.deepEqual(parsePortSpec('8080:80'), { proto: 'tcp', hostIp: '', hostPort: 8080, containerPort: 80, count: 1 });
    assert.deepEqual(parsePortSpec('127.0.0.1:5353:53/UDP'), { proto: 'udp', hostIp: '127.0.0.1', hostPort: 5353, containerPort: 53, count: 1 });
    assert.deepEqual(parsePortSpec('[2001:db8:0::1]:8000-8002:80-82/sctp'), { proto: 'sctp', hostIp: '2001:db8::1', hostPort: 8000, containerPort: 80, count: 3 });
    assert.equal(parsePortSpec('0.0.0.0:80:80').hostIp, '0.0.0.0');
    assert.equal(parsePortSpec('[::]:80:80').hostIp, '::');
    for (const t of ['8080:80/tcp', '127.0.0.1:5353:53/udp', '[2001:db8::1]:8000-8002:80-82/sctp', '0.0.0.0:1:1/tcp']) {
      assert.equal(formatPortSpec(parsePortSpec(t)), t);
    }
  });
  it('refuses what it cannot honour, naming the part', () => {
    fails('8080', /host port is missing/);
    fails(':80', /host port is missing/);
    fails('0:80', /host port 0 is out of range/);
    fails('65536:80', /host port 65536 is out of range/);
    fails('80:-1', /not a port or a range/);
    fails('8000-8009:80-81', /10 port\(s\) and the container range 2/);
    fails('90-80:90-80', /ends before it starts/);
    fails('80:80/icmp', /unknown protocol "icmp"/);
    fails('a:80', /not a port number/);
    fails('2001:db8::1:80:80', /too many ":"|brackets/);
    fails('[::1]:80:80', /::1 cannot be published/);
    fails('[2001:db8::1]80:80', /followed by ":HOST_PORT"/);
    fails('300.1.1.1:80:80', /not an IP address/);
  });
});

describe('collisions', () => {
  const p = parsePortSpec;
  it('same protocol, overlapping ports and overlapping host addresses collide', () => {
    assert.ok(collides(p('8080:80'), p('8080:81')));
    assert.ok(collides(p('8080:80'), p('198.51.100.2:8080:80')));
    assert.ok(collides(p('8079-8081:79-81'), p('8081:80')));
    assert.ok(collides(p('0.0.0.0:8080:80'), p('127.0.0.1:8080:80')));
    assert.ok(collides(p('[::]:8080:80'), p('8080:80')));
  });
  it('another protocol, port, family or address does not', () => {
    assert.ok(!collides(p('8080:80'), p('8080:80/udp')));
    assert.ok(!collides(p('8080-8081:80-81'), p('8082:80')));
    assert.ok(!collides(p('0.0.0.0:8080:80'), p('[::]:8080:80')));
    assert.ok(!collides(p('127.0.0.1:8080:80'), p('198.51.100.2:8080:80')));
    assert.ok(!collides(p('127.0.0.1:8080:80'), p('[2001:db8::1]:8080:80')));
  });
});

describe('map elements and views', () => {
  const targets = [{ family: 4 as const, ip: '10.0.0.2' }, { family: 6 as const, ip: 'fd00::2' }];
  it('a wildcard mapping goes to both any-address maps, a range one element per port', () => {
    assert.deepEqual(portElements('add', { mapping: parsePortSpec('8080-8081:80-81/udp'), targets }), [
      'add element inet ctnet ports4_any { udp . 8080 : 10.0.0.2 . 80, udp . 8081 : 10.0.0.2 . 81 }',
      'add element inet ctnet ports6_any { udp . 8080 : fd00::2 . 80, udp . 8081 : fd00::2 . 81 }',
    ]);
    assert.deepEqual(portElements('delete', { mapping: parsePortSpec('8080:80'), targets }), [
      'delete element inet ctnet ports4_any { tcp . 8080 }',
      'delete element inet ctnet ports6_any { tcp . 8080 }',
    ]);
  });
  it('a host address keys the per-address map of its family only', () => {
    assert.deepEqual(portElements('add', { mapping: parsePortSpec('127.0.0.1:9000:90'), targets }),
      ['add element inet ctnet ports4 { 127.0.0.1 . tcp . 9000 : 10.0.0.2 . 90 }']);
    assert.deepEqual(portElements('add', { mapping: parsePortSpec('[::]:9000:90'), targets: targets.slice(0, 1) }), []);
  });
  it('describes mappings the way docker port does', () => {
    assert.deepEqual(describeMapping(parsePortSpec('8080:80'), [4, 6]), ['80/tcp -> 0.0.0.0:8080', '80/tcp -> [::]:8080']);
    assert.deepEqual(describeMapping(parsePortSpec('127.0.0.1:8000-8001:80-81/udp'), [4]), ['80-81/udp -> 127.0.0.1:8000-8001']);
  });
});

describe('kernel output parsing', () => {
  it('reads conntrack flows, original direction first', () => {
    const [tcp, icmp] = parseFlows(
      'tcp      6 431999 ESTABLISHED src=198.51.100.1 dst=198.51.100.2 sport=40000 dport=8080 src=10.0.0.2 dst=198.51.100.1 sport=80 dport=40000 [ASSURED] mark=0 use=1\n' +
      'icmp     1 29 src=127.0.0.1 dst=127.0.0.1 type=8 code=0 id=5881 src=127.0.0.1 dst=127.0.0.1 type=0 code=0 id=5881 mark=0 use=1\n');
    assert.deepEqual(tcp, { proto: 'tcp', state: 'ESTABLISHED', family: 4, orig: { src: '198.51.100.1', dst: '198.51.100.2', sport: 40000, dport: 8080 }, reply: { src: '10.0.0.2', dst: '198.51.100.1', sport: 80, dport: 40000 } });
    assert.equal(icmp!.orig.sport, undefined);
  });
  it('reads /proc/net/nf_conntrack as conntrack -L: the same flows, IPv6 addresses as conntrack writes them', () => {
    // The same three entries, as this machine's kernel and conntrack 1.4 printed them.
    const proc =
      'ipv4     2 tcp      6 431999 ESTABLISHED src=198.51.100.1 dst=198.51.100.2 sport=40000 dport=8080 src=10.0.0.2 dst=198.51.100.1 sport=80 dport=40000 [ASSURED] mark=0 zone=0 use=2\n' +
      'ipv6     10 icmpv6   58 29 src=fd00:0000:0000:0000:0000:0000:0001:0002 dst=fd00:0000:0000:0000:0000:0000:0001:0002 type=128 code=0 id=20619 src=fd00:0000:0000:0000:0000:0000:0001:0002 dst=fd00:0000:0000:0000:0000:0000:0001:0002 type=129 code=0 id=20619 mark=0 zone=0 use=2\n' +
      'ipv4     2 icmp     1 29 src=127.0.0.1 dst=127.0.0.1 type=8 code=0 id=20614 src=127.0.0.1 dst=127.0.0.1 type=0 code=0 id=20614 mark=0 zone=0 use=2\n';
    const tool =
      'tcp      6 431999 ESTABLISHED src=198.51.100.1 dst=198.51.100.2 sport=40000 dport=8080 src=10.0.0.2 dst=198.51.100.1 sport=80 dport=40000 [ASSURED] mark=0 use=1\n' +
      'icmpv6   58 29 src=fd00::1:2 dst=fd00::1:2 type=128 code=0 id=20619 src=fd00::1:2 dst=fd00::1:2 type=129 code=0 id=20619 mark=0 use=1\n' +
      'icmp     1 29 src=127.0.0.1 dst=127.0.0.1 type=8 code=0 id=20614 src=127.0.0.1 dst=127.0.0.1 type=0 code=0 id=20614 mark=0 use=1\n';
    const flows = parseProcFlows(proc);
    assert.equal(flows.length, 3);
    assert.deepEqual(flows, parseFlows(tool));
    assert.equal(flows[1]!.orig.src, 'fd00::1:2');
  });
  it('reads ss listeners with their processes', () => {
    const l = parseListeners('tcp LISTEN 0 511 *:9500 *:* users:(("MainThread",pid=999999,fd=20))\nudp UNCONN 0 0 [::1]:53 [::]:*\n');
    assert.deepEqual(l.map((x) => [x.proto, x.address, x.port, x.processes]), [['tcp', '*', 9500, ['MainThread (pid 999999)']], ['udp', '::1', 53, []]]);
  });
});

describe('/proc/net sockets (the read before ss)', () => {
  const head = '  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n';
  it('lists the ports of listening TCP sockets only, and of every UDP socket', () => {
    const tcp = head +
      '   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0\n' +
      '   1: 0100007F:A2C4 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0 20 4 30 10 -1\n';
    assert.deepEqual(parseProcNet(tcp, 'tcp'), [8080]);
    const udp6 = head + '  12: 00000000000000000000000000000000:0035 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 3 2 0 0\n';
    assert.deepEqual(parseProcNet(udp6, 'udp'), [53]);
    assert.deepEqual(parseProcNet(head, 'tcp'), []);
  });
});
