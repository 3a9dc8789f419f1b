// ctnet doctor: each finding is checked against what really happens to traffic in the lab.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { Lab, UPLINK } from '../../src/lab/lab.ts';

interface Finding { check: string; status: string; detail: string; hint?: string }

describe('ctnet doctor', () => {
  let lab: Lab;
  const findings = async () => {
    const r = await lab.ctnet(['doctor', '--json']);
    return { code: r.code, list: JSON.parse(r.stdout) as Finding[] };
  };
  const status = (list: Finding[], check: string) => list.find((f) => f.check === check)?.status;
  const egress = async () => (await lab.ctnet(['exec', 'a', '--', ...Lab.probeArgv('tcp', UPLINK.remote4, 7000, 1000)])).code === 0;

  before(async () => {
    lab = await Lab.create();
    lab.serveInWorld('world', { tcp: 7000 });
    // --dns off: no ctnetd runs here, and a network with DNS would (rightly) warn that nobody answers it.
    await lab.ctnetOk(['network', 'create', 'net', '--subnet', '10.36.0.0/24', '--dns', 'off']);
    await lab.ctnetOk(['create', 'a', '--network', 'net']);
    for (let i = 0; i < 50 && !(await egress()); i++) await new Promise((r) => setTimeout(r, 100));
  });
  after(() => lab?.destroy());

  it('a healthy lab: every check ok, exit 0', async () => {
    const { code, list } = await findings();
    assert.equal(code, 0);
    assert.deepEqual(list.filter((f) => f.status !== 'ok'), []);
    assert.ok(await egress());
  });

  it('a bridge that accepts router advertisements: fail, and real (a sandbox\'s RA gives the host a route); gc sets accept_ra=0 again', async () => {
    // Point 8: ctnet makes its bridges with accept_ra=0. The network is IPv4 only, so the host does
    // not forward IPv6 and the kernel's default (accept_ra=1) would take RAs; 2 takes them always.
    const hostRa = async () => (await lab.inHost(['ip', '-6', 'route', 'show', 'dev', 'ctbr-net', 'proto', 'ra'])).stdout.trim();
    const sendRa = async () => {
      await lab.ctnetOk(['exec', 'a', '--', ...Lab.routerAdvertArgv('2001:db8:bad::')]);
      await new Promise((r) => setTimeout(r, 1500));
    };
    assert.equal((await lab.inHost(['sysctl', '-n', 'net.ipv6.conf.ctbr-net.accept_ra'])).stdout.trim(), '0', 'made so by network create');
    await lab.inHost(['sysctl', '-qw', 'net.ipv6.conf.ctbr-net.accept_ra=2']);
    try {
      const { code, list } = await findings();
      assert.equal(code, 1);
      const f = list.find((x) => x.check === 'ra acceptance')!;
      assert.equal(f.status, 'fail');
      assert.match(f.detail, /bridge ctbr-net of network net accepts router advertisements \(accept_ra=2, IPv6 forwarding off\)/);
      assert.match(f.hint!, /ctnet gc.*accept_ra=0/);
      // Real: with bridge ctnet gone (its rules drop sandboxes' RAs, but a flush takes them), the host learns a route.
      await lab.inHost(['nft', 'delete', 'table', 'bridge', 'ctnet']);
      await sendRa();
      assert.match(await hostRa(), /^default via fe80::\S+ /, 'the host took a default route from sandbox a');
    } finally {
      await lab.inHost(['ip', '-6', 'route', 'flush', 'dev', 'ctbr-net', 'proto', 'ra']);
      await lab.inHost(['ip', '-6', 'addr', 'flush', 'dev', 'ctbr-net', 'scope', 'global']);
      assert.match(await lab.ctnetOk(['gc']), /set net\/ipv6\/conf\/ctbr-net\/accept_ra to 0 again \(was 2: the host takes no router advertisement from its sandboxes\)/);
    }
    assert.equal(status((await findings()).list, 'ra acceptance'), 'ok');
    // And accept_ra=0 holds by itself: the same RA with bridge ctnet gone again installs nothing.
    await lab.inHost(['nft', 'delete', 'table', 'bridge', 'ctnet']);
    try {
      await sendRa();
      assert.equal(await hostRa(), '');
    } finally {
      await lab.ctnetOk(['gc']);
    }
    assert.equal((await findings()).code, 0);
  });

  it('route_localnet on a bridge whose loopback guards are gone: fail, and real (a sandbox reaches the host\'s 127.0.0.1); gc restores the guards', async () => {
    // The sandbox sends to 127.0.0.1 through its gateway: its own loopback address gone, a route
    // via the gateway, route_localnet so its kernel lets 127.0.0.1 leave and come back.
    const sandbox = (argv: string[]) => lab.ctnet(['exec', 'a', '--', ...argv]);
    const hostLoopback = async () => (await sandbox(['ping', '-c', '1', '-W', '1', '127.0.0.1'])).code === 0;
    const loopback = async () => (await findings()).list.filter((f) => f.check === 'loopback guard');
    await sandbox(['sysctl', '-qw', 'net.ipv4.conf.all.route_localnet=1', 'net.ipv4.conf.eth0.route_localnet=1']);
    await sandbox(['ip', 'addr', 'del', '127.0.0.1/8', 'dev', 'lo']);
    await sandbox(['ip', 'route', 'add', '127.0.0.1/32', 'via', '10.36.0.1', 'dev', 'eth0']);
    try {
      assert.equal(await hostLoopback(), false, 'both guards hold');
      assert.deepEqual((await loopback()).map((f) => f.status), ['ok']);
      await lab.inHost(['nft', 'flush', 'chain', 'inet', 'ctnet', 'guard']);
      assert.equal(await hostLoopback(), false, 'the bridge table\'s guard holds alone');
      const [one] = await loopback();
      assert.equal(one!.status, 'warn');
      assert.match(one!.detail, /only one loopback guard holds \(bridge ctnet's port4 rule\)/);
      await lab.inHost(['nft', 'flush', 'chain', 'bridge', 'ctnet', 'port4']);
      const { code, list } = await findings();
      assert.equal(code, 1);
      const f = list.find((x) => x.check === 'loopback guard')!;
      assert.equal(f.status, 'fail');
      assert.match(f.detail, /route_localnet is on for bridge ctbr-net of network net and both of ctnet's loopback guards are gone.*reach services bound to the host's 127\.0\.0\.1/);
      assert.match(f.hint!, /ctnet gc.*ctnetd/);
      assert.ok(await hostLoopback(), 'the finding is real: the host\'s 127.0.0.1 answers the sandbox');
      await lab.ctnetOk(['gc']);
      assert.equal(await hostLoopback(), false, 'gc put the guards back');
      assert.deepEqual((await loopback()).map((f) => f.status), ['ok']);
    } finally {
      await sandbox(['ip', 'route', 'del', '127.0.0.1/32']);
      await sandbox(['ip', 'addr', 'add', '127.0.0.1/8', 'dev', 'lo']);
      await lab.ctnetOk(['gc']);
    }
    assert.equal((await findings()).code, 0);
  });

  it('another table\'s forward chain with policy drop: named, and its fix works', async () => {
    await lab.inHost(['nft', 'add table ip filter; add chain ip filter FORWARD { type filter hook forward priority 0; policy drop; }']);
    const { code, list } = await findings();
    assert.equal(code, 1);
    const f = list.find((x) => x.check === 'forward policy')!;
    assert.equal(f.status, 'fail');
    assert.match(f.detail, /chain ip filter FORWARD drops forwarded packets/);
    assert.equal(await egress(), false, 'the finding is real: egress is dropped');
    await lab.inHost(['nft', 'insert rule ip filter FORWARD iifname "ctbr*" accept; insert rule ip filter FORWARD oifname "ctbr*" accept']);
    assert.ok(await egress(), 'and the fix makes it work');
    await lab.inHost(['nft', 'delete table ip filter']);
    assert.equal((await findings()).code, 0);
  });

  it('ip_forward off and ctnet\'s table gone: fail, and gc repairs both', async () => {
    await lab.inHost(['sysctl', '-qw', 'net.ipv4.ip_forward=0']);
    await lab.inHost(['nft', 'delete table inet ctnet']);
    const { code, list } = await findings();
    assert.equal(code, 1);
    assert.equal(status(list, 'ip_forward'), 'fail');
    assert.equal(status(list, 'nft table'), 'fail');
    assert.equal(await egress(), false);
    await lab.ctnetOk(['gc']);
    assert.equal((await findings()).code, 0);
    assert.ok(await egress());
  });

  it('br_netfilter off with an --isolate network: fail, since isolation would not apply', async () => {
    await lab.ctnetOk(['network', 'create', 'iso', '--subnet', '10.37.0.0/24', '--isolate']);
    await lab.inHost(['sysctl', '-qw', 'net.bridge.bridge-nf-call-iptables=0']);
    try {
      const { code, list } = await findings();
      assert.equal(code, 1);
      assert.equal(status(list, 'br_netfilter'), 'fail');
    } finally {
      await lab.inHost(['sysctl', '-qw', 'net.bridge.bridge-nf-call-iptables=1']);
    }
    assert.equal((await findings()).code, 0);
  });

  it('the state check reports what gc would do', async () => {
    await lab.inHost(['ip', 'link', 'del', 'ctbr-net']);
    const { list } = await findings();
    const f = list.find((x) => x.check === 'state')!;
    assert.equal(f.status, 'warn');
    assert.match(f.detail, /recreated bridge ctbr-net/);
    await lab.ctnetOk(['gc']);
    assert.equal(status((await findings()).list, 'state'), 'ok');
  });

  it('a sandbox whose namespace was deleted by hand: doctor says so (not an ip error), gc rebuilds it', async () => {
    // Issue 12, point 6: doctor used to end with one line of ip's error here.
    const netns = (JSON.parse(await lab.ctnetOk(['ls', '--json'])) as { name: string; netns: string }[]).find((s) => s.name === 'a')!.netns;
    await lab.inHost(['ip', 'netns', 'del', netns.split('/').pop()!]);
    const r = await lab.ctnet(['doctor', '--json']);
    const f = (JSON.parse(r.stdout) as Finding[]).find((x) => x.check === 'state')!;
    assert.equal(f.status, 'warn', r.stderr);
    assert.match(f.detail, /recreated network namespace of sandbox a/);
    assert.match(await lab.ctnetOk(['gc']), /recreated network namespace of sandbox a\nreattached a to network net/);
    assert.equal(status((await findings()).list, 'state'), 'ok');
    assert.ok(await egress(), 'and the sandbox works again');
  });

  it('a network with DNS on and no ctnetd: warn, naming the network and how to start it', async () => {
    await lab.ctnetOk(['network', 'create', 'named', '--subnet', '10.36.1.0/24']);
    try {
      const { code, list } = await findings();
      assert.equal(code, 0, 'a warning, not a failure');
      const f = list.find((x) => x.check === 'dns')!;
      assert.equal(f.status, 'warn');
      assert.match(f.detail, /networks? (.*, )?named(, .*)? ha(s|ve) DNS on, but ctnetd is not running/);
      assert.match(f.hint!, /ctnet daemon/);
      // The lab host is not the init network namespace: systemd-resolved (were it running on this
      // machine) is never told about the lab's bridges, and doctor says so.
      const r = list.find((x) => x.check === 'resolved')!;
      assert.equal(r.status, 'ok');
      assert.match(r.detail, /systemd-resolved does not serve this network namespace/);
    } finally {
      await lab.ctnetOk(['network', 'rm', 'named']);
    }
  });
});
