// `ctnet trace` across hosts (issue 16): a sandbox on h1 to one on h2 over an overlay network. trace
// shows h1's half (the packet's way to the VXLAN device), names the host it left for, and asks that
// host's ctnetd through etcd for its half (engine/trace-remote.ts): h2's chains and rules, its policy
// and the outcome there, so a drop by h2's own policy is named with h2's rule. No trace table is left
// on either host; a request that names anything but a cross-host flow into h2 is refused; a request
// that goes away ends h2's trace; gc removes the table of a trace whose ctnetd died. Two lab hosts
// and etcd, as the overlay tests have them.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { TraceResult } from '../../src/engine/trace.ts';
import type { RemoteHalf } from '../../src/engine/trace-remote.ts';
import { Lab } from '../../src/lab/lab.ts';
import { EtcdHosts } from './etcd-hosts.ts';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('ctnet trace across hosts (etcd + vxlan)', () => {
  let cluster: EtcdHosts | undefined;
  const h1 = () => cluster!.host(0);
  const h2 = () => cluster!.host(1);
  const etcdctl = (args: string[]) => cluster!.etcd.etcdctl(args);
  const ip = async (lab: Lab, s: string) => ((JSON.parse(await lab.ctnetOk(['inspect', s, '--json'])) as { interfaces: { addresses: string[] }[] }).interfaces[0]!.addresses[0]!).split('/')[0]!;
  const trace = async (dst: string): Promise<TraceResult> => JSON.parse(await h1().ctnetOk(['trace', 'web', dst, '--json', '--timeout', '1000'])) as TraceResult;
  let api = '';
  /** The trace tables in a lab host's ruleset (ctnet's, ctnetd's for other hosts). */
  const traceTables = async (lab: Lab) => (await lab.inHost(['nft', 'list', 'tables'])).stdout.split('\n').filter((l) => l.includes('ctnet_trace_'));
  const noTablesLeft = async () => {
    assert.deepEqual(await traceTables(h1()), [], 'no trace table left on h1');
    assert.deepEqual(await traceTables(h2()), [], 'no trace table left on h2');
  };
  /** Polls until cond holds (a generous bound that only ends a hung test, never a measure). */
  const eventually = async (what: string, cond: () => Promise<boolean>, ms = 60_000) => {
    const until = Date.now() + ms;
    while (Date.now() < until) {
      if (await cond()) return;
      await sleep(100);
    }
    assert.fail(`never: ${what}`);
  };
  const half = (r: TraceResult): RemoteHalf => {
    assert.ok(r.remote && !('error' in r.remote), `h2's half: ${JSON.stringify(r.remote)}`);
    return r.remote as RemoteHalf;
  };
  /** A trace request put in etcd by hand (as a forger would), under a lease of its own. */
  const putRequest = async (id: string, value: object): Promise<string> => {
    const lease = /lease (\S+) granted/.exec((await etcdctl(['lease', 'grant', '120'])).stdout)?.[1];
    assert.ok(lease, 'etcd granted a lease');
    const r = await etcdctl(['put', `--lease=${lease}`, `/ctnet/traces/h2/${id}`, JSON.stringify(value)]);
    assert.equal(r.code, 0, r.stderr);
    return lease;
  };
  const replyOf = async (id: string) => (await etcdctl(['get', '--print-value-only', `/ctnet/traces/h2/${id}/reply`])).stdout.trim();

  before(async () => {
    cluster = await EtcdHosts.create(2, { ttl: 8 });
    await cluster.joinAll();
    await h1().ctnetOk(['network', 'create', 'ov', '--driver', 'vxlan', '--subnet', '10.72.0.0/16']);
    await h1().ctnetOk(['run', '-d', '--name', 'web', '--network', 'ov', '--', ...Lab.serverArgv('web', { tcp: 8080 })]);
    await h2().ctnetOk(['run', '-d', '--name', 'api', '--network', 'ov', '--', ...Lab.serverArgv('api', { tcp: 8080 })]);
    api = await ip(h2(), 'api');
    // Each host learns the other's lease from etcd (ctnetd's watch): until then there is no way across.
    const start = performance.now();
    while ((await h1().ctnet(['exec', 'web', '--', ...Lab.probeArgv('tcp', api, 8080, 1000)])).code !== 0) {
      if (performance.now() - start > 120_000) assert.fail('web never reached api across the overlay');
      await sleep(200);
    }
  });
  after(async () => {
    await cluster?.destroy();
  });

  it('answered: this host\'s half, the host the packet left for, and that host\'s half: delivered to api and answered', async () => {
    const r = await trace(`${api}:8080`);
    assert.equal(r.outcome, 'answered');
    assert.equal(r.leftFor?.host, 'h2');
    assert.equal(r.leftFor?.network, 'ov');
    assert.match(r.leftFor?.underlay ?? '', /^\d+\.\d+\.\d+\.\d+$/);
    assert.ok(r.request.some((s) => s.table === 'inet ctnet' && s.chain === 'forward' && s.verdict === 'accept'), 'h1\'s forward chain passed it');
    assert.ok(r.reply.length > 0, 'the answer came back through h1\'s tables');
    assert.equal(r.seenByServer?.client, await ip(h1(), 'web'), 'no NAT between the hosts\' sandboxes');
    assert.ok(r.notes?.some((n) => n.startsWith(`${api} is on host h2: the packet left through ${r.leftFor!.device} (network ov)`)), r.notes?.join('\n'));
    // h2's half: the packet through h2's forward chain to api, and api's answer back.
    const h = half(r);
    assert.equal(h.host, 'h2');
    assert.equal(h.sandbox, 'api');
    assert.equal(h.outcome, 'answered');
    assert.ok(h.request.some((s) => s.table === 'inet ctnet' && s.chain === 'forward' && s.verdict === 'accept'), `h2's forward chain passed it: ${JSON.stringify(h.request)}`);
    assert.ok(h.reply.length > 0, 'the answer left api through h2\'s tables');
    assert.equal(h.seenByServer?.client, await ip(h1(), 'web'), 'api saw web\'s own address');
    assert.equal(h.policy?.allowed, true);
    await noTablesLeft();
    // By name too (the directory mirrors h2's sandboxes), once h1 knows api.
    const start = performance.now();
    while ((await h1().ctnet(['policy', 'check', 'web', 'api'])).code !== 0 && performance.now() - start < 60_000) await sleep(200);
    assert.equal((await trace('api:8080')).leftFor?.host, 'h2');
  });

  it('dropped by the other host\'s policy: this host passed it, and h2\'s half names h2 and its rule', async () => {
    await h2().ctnetOk(['policy', 'deny', '--from', 'web', '--to', 'api', '--port', '8080', '--name', 'h2-says-no']).catch(async () =>
      h2().ctnetOk(['policy', 'deny', '--from', await ip(h1(), 'web'), '--to', 'api', '--port', '8080', '--name', 'h2-says-no']));
    try {
      const r = await trace(`${api}:8080`);
      assert.equal(r.outcome, 'dropped', 'the drop is on h2, and h2 says where');
      assert.ok(r.request.some((s) => s.chain === 'forward' && s.verdict === 'accept'), 'h1 passed it');
      assert.equal(r.droppedBy?.host, 'h2');
      assert.equal(r.droppedBy?.chain, 'forward');
      assert.match(r.droppedBy?.rule ?? '', /^policy: deny/);
      const h = half(r);
      assert.equal(h.outcome, 'dropped');
      assert.equal(h.policy?.allowed, false);
      assert.match(h.policy?.by ?? '', /h2-says-no/, 'named as policy check names it on h2');
      assert.deepEqual(h.reply, []);
      const text = await h1().ctnetOk(['trace', 'web', `${api}:8080`, '--timeout', '1000']);
      console.log(text.split('\n').map((l) => `# ${l}`).join('\n'));
      assert.match(text, /outcome: dropped by host h2's inet ctnet forward: policy: deny.*h2-says-no/);
      assert.match(text, /ctnet policy on host h2: denied by .*h2-says-no/);
      await noTablesLeft();
    } finally {
      await h2().ctnetOk(['policy', 'rm', 'h2-says-no']);
    }
  });

  it('refused: nothing listens on api:9999; h2\'s half shows the packet delivered and refused there', async () => {
    const r = await trace(`${api}:9999`);
    assert.equal(r.outcome, 'refused');
    const h = half(r);
    assert.equal(h.outcome, 'refused');
    assert.ok(h.request.some((s) => s.chain === 'forward' && s.verdict === 'accept'), 'h2 passed it to api');
    assert.ok(h.reply.length > 0, 'the reset left api through h2\'s tables');
    await noTablesLeft();
  });

  it('the other host does not answer (its ctnetd stopped): the report says so, with this host\'s half', async () => {
    const pid = Number(/pid (\d+)/.exec(await h2().ctnetOk(['daemon', 'status']))?.[1]);
    process.kill(pid, 'SIGSTOP');
    let r: TraceResult;
    try {
      r = JSON.parse(await h1().ctnetOk(['trace', 'web', `${api}:8080`, '--json', '--timeout', '1000', '--peer-wait', '500'])) as TraceResult;
    } finally {
      process.kill(pid, 'SIGCONT');
    }
    assert.equal(r.outcome, 'answered', 'the kernel carries the flow without ctnetd');
    assert.ok(r.remote && 'error' in r.remote, JSON.stringify(r.remote));
    assert.match((r.remote as { error: string }).error, /no answer within 500 ms/);
    assert.ok(r.notes?.some((n) => /^host h2 did not trace its half: no answer within 500 ms/.test(n)), r.notes?.join('\n'));
    assert.deepEqual(await traceTables(h1()), [], 'h1 cleaned up');
    // h2, woken, may see the request before its lease is revoked; either way its table goes.
    await eventually('h2 has no trace table', async () => (await traceTables(h2())).length === 0);
  });

  it('a forged request (a flow that is not into h2 from h1\'s lease) is refused, and nothing is traced', async () => {
    const web = await ip(h1(), 'web');
    const base = { from: 'h1', network: 'ov', src: web, dst: api, sport: 45001, proto: 'tcp', port: 8080, timeoutMs: 1000 };
    const cases: [string, object, RegExp][] = [
      ['f1', { ...base, network: 'nope' }, /network nope is not an overlay network of host h2/],
      ['f2', { ...base, dst: '192.0.2.1' }, /192\.0\.2\.1 is not in host h2's subnet of network ov/],
      ['f3', { ...base, src: '10.99.0.1' }, /10\.99\.0\.1 is not in host h1's subnet of network ov/],
      ['f4', { ...base, extra: 'x' }, /unknown field "extra"/],
      ['f5', { ...base, from: 'h2' }, /to itself/],
    ];
    for (const [id, value, why] of cases) {
      const lease = await putRequest(id, value);
      await eventually(`h2 answers request ${id}`, async () => (await replyOf(id)) !== '');
      const reply = JSON.parse(await replyOf(id)) as { state: string; reason: string };
      assert.equal(reply.state, 'refused', id);
      assert.match(reply.reason, why, id);
      await etcdctl(['lease', 'revoke', lease]);
    }
    await noTablesLeft();
  });

  it('a request that goes away (the tracer died, its lease revoked) ends h2\'s trace and its table', async () => {
    const lease = await putRequest('gone1', { from: 'h1', network: 'ov', src: await ip(h1(), 'web'), dst: api, sport: 45002, proto: 'tcp', port: 8080, timeoutMs: 30000 });
    await eventually('h2 is ready', async () => (await replyOf('gone1')).includes('"ready"'));
    assert.equal((await traceTables(h2())).length, 2, 'h2\'s inet and bridge trace tables are in');
    await etcdctl(['lease', 'revoke', lease]);
    await eventually('h2 removed its trace table', async () => (await traceTables(h2())).length === 0);
  });

  it('gc removes the trace table of a ctnetd that died during another host\'s trace', async () => {
    const lease = await putRequest('dead1', { from: 'h1', network: 'ov', src: await ip(h1(), 'web'), dst: api, sport: 45003, proto: 'tcp', port: 8080, timeoutMs: 30000 });
    await eventually('h2 is ready', async () => (await replyOf('dead1')).includes('"ready"'));
    const tables = await traceTables(h2());
    assert.equal(tables.length, 2);
    assert.ok(tables.every((t) => /ctnet_trace_\d+_\d+_r\d+$/.test(t)), tables.join('\n'));
    process.kill(Number(/pid (\d+)/.exec(await h2().ctnetOk(['daemon', 'status']))?.[1]), 'SIGKILL');
    const out = await h2().ctnetOk(['gc']);
    assert.match(out, /removed inet table ctnet_trace_\d+_\d+_r\d+ \(a ctnet trace that did not finish\)/);
    assert.deepEqual(await traceTables(h2()), []);
    await etcdctl(['lease', 'revoke', lease]);
  });
});
