// `ctnet trace` with real probes (issue 16): the path, the deciding rule (a policy rule named as
// policy check names it), NAT, and the outcome, for the cases users ask about. A foreign table's
// drop is named as not ctnet's; a killed trace's tables are removed by gc.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { after, before, describe, it } from 'node:test';
import type { TraceResult } from '../../src/engine/trace.ts';
import { Lab, UPLINK } from '../../src/lab/lab.ts';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('ctnet trace', () => {
  let lab: Lab;
  const trace = async (src: string, dst: string, ...extra: string[]): Promise<TraceResult> => JSON.parse(await lab.ctnetOk(['trace', src, dst, '--json', ...extra])) as TraceResult;
  const fromWorld = (dst: string) => trace('world', dst, '--from-netns', lab.world);
  const rules = (steps: TraceResult['request']) => steps.filter((s) => s.verdict !== 'continue').map((s) => `${s.table} ${s.chain}: ${s.rule} -> ${s.verdict}`);

  before(async () => {
    lab = await Lab.create();
    await lab.ctnetOk(['network', 'create', 'front', '--subnet', '10.86.1.0/24']);
    await lab.ctnetOk(['network', 'create', 'back', '--subnet', '10.86.2.0/24']);
    await lab.ctnetOk(['network', 'create', 'inner', '--subnet', '10.86.3.0/24', '--internal']);
    const serve = (name: string) => ['--', ...Lab.serverArgv(name, { tcp: 7000, udp: 7001 })];
    await lab.ctnetOk(['run', '-d', '--name', 'a', '--network', 'front', '--label', 'tier=web', ...serve('a')]);
    await lab.ctnetOk(['run', '-d', '--name', 'b', '--network', 'front', ...serve('b')]);
    await lab.ctnetOk(['run', '-d', '--name', 'c', '--network', 'back', '--label', 'tier=api', ...serve('c')]);
    await lab.ctnetOk(['run', '-d', '--name', 'd', '--network', 'inner', ...serve('d')]);
    await lab.ctnetOk(['run', '-d', '--name', 'p', '--network', 'back', '-p', '8080:7000', '-p', `${UPLINK.host4}:8090:7000`, ...serve('p')]);
    lab.serveInWorld('world', { tcp: 7002 });
    await sleep(1000);
  });
  after(() => lab?.destroy());

  it('same network: answered, passed by the network\'s own rule; UDP and ICMP too', async () => {
    const r = await trace('a', 'b:7000');
    assert.equal(r.outcome, 'answered');
    assert.deepEqual(r.policy, { allowed: true, by: 'default: same network (front)' });
    assert.ok(rules(r.request).includes('inet ctnet forward: iifname . oifname @bridge_pairs accept -> accept'), rules(r.request).join('\n'));
    assert.ok(r.reply.length > 0, 'the answer is traced too');
    assert.equal((await trace('a', 'b:7001/udp')).outcome, 'answered');
    assert.equal((await trace('a', 'b')).outcome, 'answered', 'ICMP');
    assert.equal((await trace('a', 'b:7009')).outcome, 'refused', 'nothing listens on 7009');
  });

  it('isolated networks: dropped, by the rule that isolates them', async () => {
    const r = await trace('a', 'c:7000');
    assert.equal(r.outcome, 'dropped');
    assert.deepEqual([r.droppedBy?.table, r.droppedBy?.chain, r.droppedBy?.rule], ['inet ctnet', 'forward', 'networks are isolated from each other']);
    assert.equal(r.policy?.by, 'default: networks front and back are isolated from each other');
  });

  it('a policy allow across networks, and a deny, are named as policy check names them', async () => {
    await lab.ctnetOk(['policy', 'allow', '--from', 'label:tier=web', '--to', 'label:tier=api', '--port', '7000', '--name', 'web-to-api']);
    const allowed = await trace('a', 'c:7000');
    assert.equal(allowed.outcome, 'answered');
    assert.ok(rules(allowed.request).includes('inet ctnet forward: policy: allow -> accept'));
    assert.equal(allowed.policy?.by, 'rule web-to-api');
    await lab.ctnetOk(['policy', 'deny', '--from', 'a', '--to', 'b', '--port', '7000', '--name', 'no-a-to-b']);
    const denied = await trace('a', 'b:7000');
    assert.equal(denied.outcome, 'dropped');
    assert.equal(denied.droppedBy?.rule, 'policy: deny');
    assert.deepEqual(denied.policy, { allowed: false, by: 'rule no-a-to-b' });
    assert.match(await lab.ctnetOk(['trace', 'a', 'b:7000']), /outcome: dropped by inet ctnet forward: policy: deny \[rule no-a-to-b\]\n {2}ctnet policy: denied by rule no-a-to-b/);
    await lab.ctnetOk(['policy', 'rm', 'no-a-to-b', 'web-to-api']);
  });

  it('egress: masqueraded from a network with a way out; dropped from an --internal one', async () => {
    const out = await trace('a', `${UPLINK.remote4}:7002`);
    assert.equal(out.outcome, 'answered');
    assert.ok(out.nat.some((n) => /egress/.test(n)), `masquerade shown: ${out.nat.join(' | ')}`);
    const internal = await trace('d', `${UPLINK.remote4}:7002`);
    assert.equal(internal.outcome, 'dropped');
    assert.equal(internal.droppedBy?.rule, 'internal network: no way out');
  });

  it('a published port from a sandbox: DNAT shown, answered by the sandbox behind it', async () => {
    const r = await trace('a', 'host:8080');
    assert.equal(r.outcome, 'answered');
    assert.ok(r.nat.some((n) => /dnat/.test(n)), `DNAT shown: ${r.nat.join(' | ')} / ${rules(r.request).join(' | ')}`);
  });

  it('from the world: a published port is DNATed to its sandbox, which sees the real client address', async () => {
    const r = await fromWorld('host:8080');
    assert.equal(r.dst.address, UPLINK.host4, 'host, as the world reaches it: the uplink address');
    assert.deepEqual([r.src.sandbox, r.src.netns, r.src.address], ['world', lab.world, UPLINK.world4]);
    assert.equal(r.outcome, 'answered');
    assert.ok(r.nat.some((n) => /prerouting: .*dnat ip to/.test(n)), `DNAT shown: ${r.nat.join(' | ')}`);
    assert.ok(!r.nat.some((n) => /masquerade|hairpin/.test(n)), `no masquerade: ${r.nat.join(' | ')}`);
    assert.ok(rules(r.request).includes('inet ctnet forward: published port -> accept'), rules(r.request).join('\n'));
    const p = JSON.parse(await lab.ctnetOk(['inspect', 'p', '--json'])).interfaces[0].addresses[0].split('/')[0] as string;
    assert.deepEqual(r.seenByServer, { server: p, client: UPLINK.world4 }, 'the sandbox saw the world\'s own address');
    assert.deepEqual(r.policy, { allowed: true, by: 'default: published port' });
  });

  it('from the world: an unpublished port is refused by the host, and a sandbox\'s port is dropped where ctnet drops it', async () => {
    const host = await fromWorld('host:7000');
    assert.equal(host.outcome, 'refused', 'nothing published on 7000: the host itself answers with a reset');
    assert.equal(host.nat.length, 0);
    // Even with a route to the sandbox's subnet (a neighbour that routes through this host).
    await lab.inWorld(['ip', 'route', 'add', '10.86.2.0/24', 'via', UPLINK.host4]);
    try {
      const r = await fromWorld('p:7000');
      assert.equal(r.outcome, 'dropped');
      assert.deepEqual([r.droppedBy?.table, r.droppedBy?.chain, r.droppedBy?.rule], ['inet ctnet', 'forward', 'from outside, only published ports reach sandboxes']);
      assert.deepEqual(r.policy, { allowed: false, by: 'default: from outside, only published ports reach sandboxes' });
    } finally {
      await lab.inWorld(['ip', 'route', 'del', '10.86.2.0/24']);
    }
    const none = await fromWorld('p:7000');
    assert.equal(none.outcome, 'no answer');
    assert.equal(none.request.length, 0);
    assert.ok(none.notes?.some((n) => /has no route to 10\.86\.2\.\d+: the probe never left/.test(n)), none.notes?.join('\n'));
  });

  it('hairpin: a sandbox reaching its own published port through the host is masqueraded to its gateway', async () => {
    const r = await trace('p', 'host:8080');
    assert.equal(r.dst.address, '10.86.2.1');
    assert.equal(r.outcome, 'answered');
    assert.ok(r.nat.some((n) => /hairpin: published port reached from its own bridge/.test(n)), `hairpin masquerade shown: ${r.nat.join(' | ')}`);
    assert.equal(r.seenByServer?.client, '10.86.2.1', 'it saw its gateway (the masquerade), so its answer comes back through the host');
    assert.ok(r.reply.length > 0, 'the readdressed answer is traced too');
    assert.deepEqual(r.policy, { allowed: true, by: 'default: same network (back)' });
  });

  it('127.0.0.1 on the host: a published port is reached by design (DNAT in output, masquerade); one published elsewhere is not', async () => {
    const r = await trace('host', '127.0.0.1:8080');
    assert.deepEqual([r.src.sandbox, r.src.address], ['host', '127.0.0.1']);
    assert.equal(r.outcome, 'answered');
    assert.ok(r.nat.some((n) => /output: .*dnat ip to/.test(n)), `DNAT in the output chain: ${r.nat.join(' | ')}`);
    assert.ok(r.nat.some((n) => /published port reached at 127\.0\.0\.1/.test(n)), `loopback source masqueraded: ${r.nat.join(' | ')}`);
    assert.equal(r.seenByServer?.client, '10.86.2.1', 'the sandbox saw the bridge\'s address, never 127.0.0.1');
    assert.ok(r.notes?.some((n) => /published by sandbox p, and reached at 127\.0\.0\.1 by design/.test(n)), r.notes?.join('\n'));
    assert.equal(r.policy, undefined, 'the host\'s own packets cross no forward chain');
    const other = await trace('host', '127.0.0.1:8090');
    assert.equal(other.outcome, 'refused');
    assert.equal(other.nat.length, 0);
    assert.ok(other.notes?.some((n) => n.includes(`8090/tcp is published on ${UPLINK.host4} only, not on 127.0.0.1`)), other.notes?.join('\n'));
    assert.match(await lab.ctnetOk(['trace', 'host', '127.0.0.1:8080']), /trace host \(127\.0\.0\.1:\d+\) -> 127\.0\.0\.1:8080\/tcp[\s\S]*the server \(10\.86\.2\.\d+\) saw the client as 10\.86\.2\.1[\s\S]*outcome: answered[\s\S]*note: 127\.0\.0\.1:8080\/tcp is published by sandbox p/);
  });

  it('a foreign table\'s drop is named, and said not to be ctnet\'s', async () => {
    const b = JSON.parse(await lab.ctnetOk(['inspect', 'b', '--json'])).interfaces[0].addresses[0].split('/')[0] as string;
    await lab.inHost(['nft', `add table inet foreignfw; add chain inet foreignfw filter_fw { type filter hook forward priority -5; }; add rule inet foreignfw filter_fw ip daddr ${b} tcp dport 7000 drop comment "someone else's firewall"`]);
    try {
      const r = await trace('a', 'b:7000');
      assert.equal(r.outcome, 'dropped');
      assert.deepEqual([r.droppedBy?.table, r.droppedBy?.rule, r.droppedBy?.owner], ['inet foreignfw', 'someone else\'s firewall', 'foreign']);
      assert.match(await lab.ctnetOk(['trace', 'a', 'b:7000']), /outcome: dropped by inet foreignfw filter_fw: someone else's firewall \(another program's table, not ctnet's\)/);
    } finally {
      await lab.inHost(['nft', 'delete table inet foreignfw']);
    }
  });

  it('leaves no table behind; gc removes the tables of a trace that was killed', async () => {
    const tables = async () => (await lab.inHost(['nft', 'list', 'tables'])).stdout;
    assert.doesNotMatch(await tables(), /ctnet_trace_/);
    await lab.inHost(['nft', 'add table inet ctnet_trace_999999_1; add table bridge ctnet_trace_999999_1']);
    const out = await lab.ctnetOk(['gc']);
    assert.match(out, /removed inet table ctnet_trace_999999_1 \(a ctnet trace that did not finish\)/);
    assert.doesNotMatch(await tables(), /ctnet_trace_/);
  });

  it('Ctrl-C: an interrupted trace removes its tables and exits 130', async () => {
    const tables = async () => (await lab.inHost(['nft', 'list', 'tables'])).stdout;
    // Dropped, so the probe waits out its 8 s timeout: the interrupt comes while the table is in.
    const child = spawn('nsenter', [`--net=/run/netns/${lab.host}`, lab.ctnetBin, 'trace', 'a', 'c:7000', '--timeout', '8000'], {
      env: { ...process.env, CTNET_STATE_DIR: lab.stateDir }, stdio: 'ignore',
    });
    const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
    try {
      for (let i = 0; i < 200 && !/ctnet_trace_/.test(await tables()); i++) await sleep(50);
      assert.match(await tables(), /ctnet_trace_/, 'the trace table is in');
      child.kill('SIGINT');
      assert.equal(await exited, 130);
      assert.doesNotMatch(await tables(), /ctnet_trace_/);
    } finally {
      child.kill('SIGKILL');
    }
  });

  it('bad input: a clear error, nothing changed', async () => {
    const cases: [string[], RegExp][] = [
      [['trace', 'a', 'nope:80'], /nope is not a sandbox, an address or host/],
      [['trace', 'a', 'b:99999'], /port 99999 is not 1-65535/],
      [['trace', 'a', 'b/udp'], /\/udp needs a port/],
      [['trace', 'a', 'b:80/icmp'], /ICMP has no port/],
      [['trace', 'zz', 'b:80'], /no sandbox named zz/],
      [['trace', 'world', 'b:80'], /trace from world needs --from-netns NAME/],
      [['trace', 'a', 'b:80', '--from-netns', 'x'], /--from-netns is for SRC world, not a/],
      [['trace', 'world', 'b:80', '--from-netns', 'ctlab-no-such-netns'], /no network namespace named ctlab-no-such-netns/],
      [['trace', 'world', 'b:80', '--from-netns', '../etc'], /is not a namespace name/],
    ];
    for (const [argv, re] of cases) {
      const r = await lab.ctnet(argv);
      assert.equal(r.code, 1, argv.join(' '));
      assert.match(r.stderr, re);
    }
    assert.doesNotMatch((await lab.inHost(['nft', 'list', 'tables'])).stdout, /ctnet_trace_/);
  });
});
