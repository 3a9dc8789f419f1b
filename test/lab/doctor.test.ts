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
    await lab.ctnetOk(['network', 'create', 'net', '--subnet', '10.36.0.0/24']);
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
});
