// The rtnetlink messages of the in-process backend, byte for byte against what iproute2 6.1 sent
// for the same command (captured with `strace -xx -e sendmsg ip ...` in a scratch namespace; the
// hex below is each message after its 16-byte header). Where ip names a link by its index and
// ctnet by its name (one lookup fewer), the attributes that carry the change must still be ip's.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { KernelError } from '../../src/errors.ts';
import { ExecBackend } from '../../src/kernel/exec/backend.ts';
import { classify } from '../../src/kernel/exec/run.ts';
import { NetlinkBackend, chooseAddon, type NetlinkAddon } from '../../src/kernel/netlink/backend.ts';
import * as rt from '../../src/kernel/netlink/rtnetlink.ts';

const body = (m: Buffer) => m.subarray(16).toString('hex');
const header = (m: Buffer) => ({ len: m.readUInt32LE(0), type: m.readUInt16LE(4), flags: m.readUInt16LE(6), seq: m.readUInt32LE(8) });
const nameAttr = (name: string) => {
  const len = 4 + name.length + 1;
  const b = Buffer.alloc((len + 3) & ~3);
  b.writeUInt16LE(len, 0);
  b.writeUInt16LE(3, 2);
  b.write(name, 4);
  return b.toString('hex');
};
const IFINFO_BY_NAME = '00000000000000000000000000000000';

describe('rtnetlink requests, as ip sends them', () => {
  it('link add veth with mtu, the peer in another namespace with its MAC (ip link add h1 mtu 1400 type veth peer name eth0 mtu 1400 address ... netns B)', () => {
    const m = rt.linkAddVeth(7, { name: 'h1', mtu: 1400, peer: 'eth0', peerMac: '02:11:22:33:44:55', peerNsFd: 4 });
    assert.deepEqual(header(m), { len: 124, type: 0x10, flags: 0x605, seq: 7 });
    assert.equal(body(m), '00000000000000000000000000000000080004007805000007000300683100004c0012000800010076657468400002003c0001000000000000000000000000000000000008000400780500000a000100021122334455000008001c0004000000090003006574683000000000');
  });

  it('link add veth without mtu', () => {
    const m = rt.linkAddVeth(1, { name: 'h2', peer: 'eth1', peerMac: '02:11:22:33:44:56', peerNsFd: 4 });
    assert.equal(header(m).len, 108);
    assert.equal(body(m), '0000000000000000000000000000000007000300683200004400120008000100766574683800020034000100000000000000000000000000000000000a000100021122334456000008001c0004000000090003006574683100000000');
  });

  it('link set master, hairpin, up, mtu and link del name the link and carry ip\'s attributes', () => {
    // ip: ifinfomsg with index 5, then the change; ctnet: index 0 and IFLA_IFNAME first.
    assert.equal(body(rt.linkSetMaster(1, 'h1', 3)), IFINFO_BY_NAME + nameAttr('h1') + '08000a0003000000');
    assert.equal(body(rt.linkSetHairpin(1, 'h1')), IFINFO_BY_NAME + nameAttr('h1') + '20001200100001006272696467655f736c6176650c0005000500040001000000');
    assert.equal(body(rt.linkSetUp(1, 'h1')), '00000000000000000100000001000000' + nameAttr('h1'));
    assert.equal(body(rt.linkSetMtu(1, 'h1', 1300)), IFINFO_BY_NAME + nameAttr('h1') + '0800040014050000');
    assert.deepEqual(header(rt.linkDel(1, 'h1')), { len: 40, type: 0x11, flags: 0x5, seq: 1 });
    for (const m of [rt.linkSetMaster(1, 'h1', 3), rt.linkSetHairpin(1, 'h1'), rt.linkSetUp(1, 'h1'), rt.linkSetMtu(1, 'h1', 1)]) {
      assert.deepEqual([header(m).type, header(m).flags], [0x10, 0x5]); // RTM_NEWLINK, REQUEST|ACK: never creates
    }
  });

  it('addr add: IPv4 with its broadcast (brd +), IPv6 nodad; addr del', () => {
    const v4 = rt.addrAdd(1, '10.9.0.2/24', 5);
    assert.deepEqual([header(v4).type, header(v4).flags], [0x14, 0x605]);
    assert.equal(body(v4), '0218000005000000080002000a090002080001000a090002080004000a0900ff');
    assert.equal(body(rt.addrAdd(1, 'fd00::2/64', 4)), '0a4002000400000014000200fd00000000000000000000000000000214000100fd000000000000000000000000000002');
    const del = rt.addrDel(1, '10.9.0.2/24', 4);
    assert.deepEqual([header(del).type, header(del).flags], [0x15, 0x5]);
    assert.equal(body(del), '0218000004000000080002000a090002080001000a090002');
  });

  it('route replace default (both families) and route del default', () => {
    const r4 = rt.routeReplaceDefault(1, '10.9.0.1', 4);
    assert.deepEqual([header(r4).type, header(r4).flags], [0x18, 0x505]);
    assert.equal(body(r4), '02000000fe03000100000000080005000a0900010800040004000000');
    assert.equal(body(rt.routeReplaceDefault(1, 'fd00::1', 4)), '0a000000fe03000100000000140001000000000000000000000000000000000014000500fd0000000000000000000000000000010800040004000000');
    const d = rt.routeDelDefault(1, '10.9.0.1', 4);
    assert.deepEqual([header(d).type, header(d).flags], [0x19, 0x5]);
    assert.equal(body(d), '02000000fe00ff0000000000080005000a0900010800040004000000');
  });

  it('refuses a bad address, CIDR or MAC before anything is sent, naming it', () => {
    assert.throws(() => rt.addrAdd(1, '10.9.0.256/24', 1), /invalid IPv4 address "10.9.0.256"/);
    assert.throws(() => rt.addrAdd(1, '10.9.0.2/33', 1), /invalid CIDR "10.9.0.2\/33"/);
    assert.throws(() => rt.addrAdd(1, 'fd00:::1/64', 1), /invalid IPv6 address/);
    assert.throws(() => rt.routeReplaceDefault(1, '1:2:3:4:5:6:7:8:9', 1), /invalid IPv6 address/);
    assert.throws(() => rt.linkAddVeth(1, { name: 'a', peer: 'b', peerMac: '02:11:22:33:44', peerNsFd: 3 }), /invalid MAC address "02:11:22:33:44"/);
  });
});

describe('rtnetlink replies', () => {
  it('splits a reply into messages and reads an error\'s errno', () => {
    const err = rt.message(rt.NLMSG_ERROR, 0, 9, Buffer.from([0xef, 0xff, 0xff, 0xff])); // -17
    const done = rt.message(rt.NLMSG_DONE, 2, 9, Buffer.alloc(4));
    const r = rt.replies(Buffer.concat([err, done]));
    assert.deepEqual(r.map((m) => [m.type, m.seq]), [[2, 9], [3, 9]]);
    assert.equal(rt.errnoOf(r[0]!), 17);
    // A header that claims more bytes than arrived.
    assert.throws(() => rt.replies(Buffer.concat([Buffer.from('40000000', 'hex'), Buffer.alloc(12)])), /malformed netlink reply: message of 64 bytes/);
  });

  it('decodes a route and prints addresses as ip does', () => {
    const r = rt.parseRoute(rt.routeReplaceDefault(1, 'fd00::1', 4).subarray(16))!;
    assert.deepEqual({ dst: r.dst, gateway: r.gateway, oif: r.oif, table: r.table, protocol: r.protocol }, { dst: 'default', gateway: 'fd00::1', oif: 4, table: 254, protocol: 'boot' });
    assert.equal(rt.ipText(Buffer.from('fd000000000000000000000000000000', 'hex')), 'fd00::');
    assert.equal(rt.ipText(Buffer.from('20010db8000000010000000000000001', 'hex')), '2001:db8:0:1::1');
    assert.equal(rt.ipText(Buffer.from('00000000000000000000000000000000', 'hex')), '::');
  });

  it('decodes an address: family, prefix, scope, the local address', () => {
    assert.deepEqual(rt.parseAddr(rt.addrAdd(1, 'fd00:46::2/64', 7).subarray(16)), { family: 6, prefixlen: 64, scope: 'global', index: 7, local: 'fd00:46::2' });
    assert.deepEqual(rt.parseAddr(rt.addrAdd(1, '10.46.0.2/24', 7).subarray(16)), { family: 4, prefixlen: 24, scope: 'global', index: 7, local: '10.46.0.2' });
  });

  it('decodes a link: name, MTU, MAC, kind', () => {
    const l = rt.parseLink(rt.linkAddVeth(1, { name: 'h1', mtu: 1400, peer: 'eth0', peerMac: '02:11:22:33:44:55', peerNsFd: 4 }).subarray(16));
    assert.deepEqual([l.ifname, l.mtu, l.kind], ['h1', 1400, 'veth']);
  });
});

describe('the netlink backend', () => {
  /** An addon that answers every request with one errno and records what it was sent. */
  const fake = (errno: number, sent: Buffer[] = []): NetlinkAddon => ({
    request(_fd, buf) {
      sent.push(buf);
      const b = Buffer.alloc(4);
      b.writeInt32LE(-errno);
      return rt.message(rt.NLMSG_ERROR, 0, buf.readUInt32LE(8), Buffer.concat([b, buf.subarray(0, 16)]));
    },
    nft: () => [1, '', 'Error: Could not process rule: File exists\n'],
  });

  it('maps errno to the kinds the applier knows, naming the ip command it stands for', async () => {
    for (const [errno, kind] of [[17, 'exists'], [19, 'not-found'], [2, 'not-found'], [3, 'not-found'], [99, 'not-found'], [16, 'busy'], [1, 'permission'], [22, 'failed']] as const) {
      const k = new NetlinkBackend(fake(errno), new ExecBackend());
      await assert.rejects(k.apply([{ kind: 'link.del', name: 'ctv0' }]), (e: unknown) => {
        assert.ok(e instanceof KernelError);
        assert.equal(e.kind, kind, `errno ${errno}`);
        assert.equal(e.command, 'ip link del ctv0 (rtnetlink)');
        return true;
      });
    }
  });

  it('the exec backend reads the same kinds from the tools\' words', () => {
    for (const [stderr, kind] of [
      ['RTNETLINK answers: File exists', 'exists'], ['Cannot find device "ctv0"', 'not-found'], ['RTNETLINK answers: No such process', 'not-found'],
      ['RTNETLINK answers: Cannot assign requested address', 'not-found'], ['RTNETLINK answers: Device or resource busy', 'busy'],
      ['RTNETLINK answers: Operation not permitted', 'permission'], ['Error: argument "x" is wrong', 'failed'],
    ] as const) assert.equal(classify(stderr), kind, stderr);
  });

  it('stops at the first failure: later ops are not sent', async () => {
    const sent: Buffer[] = [];
    const k = new NetlinkBackend(fake(17, sent), new ExecBackend());
    await assert.rejects(k.apply([{ kind: 'link.set.up', name: 'a' }, { kind: 'link.set.up', name: 'b' }]));
    assert.equal(sent.length, 1);
  });

  it('an nft transaction that fails is a KernelError of nft\'s kind', async () => {
    const k = new NetlinkBackend(fake(0), new ExecBackend());
    await assert.rejects(k.apply([{ kind: 'nft', lines: ['add element inet ctnet x { 1.2.3.4 }'] }]), (e: unknown) => e instanceof KernelError && e.kind === 'exists');
  });

  it('CTNET_KERNEL=exec, or anything but netlink, chooses exec and says why', () => {
    const logs: string[] = [];
    assert.equal(chooseAddon((m) => logs.push(m), { CTNET_KERNEL: 'exec' }), undefined);
    assert.equal(chooseAddon((m) => logs.push(m), { CTNET_KERNEL: 'netlnk' }), undefined);
    assert.match(logs[0]!, /exec \(CTNET_KERNEL=exec\)/);
    assert.match(logs[1]!, /CTNET_KERNEL=netlnk is neither netlink nor exec/);
  });
});
