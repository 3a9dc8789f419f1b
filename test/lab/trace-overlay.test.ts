// `ctnet trace` across hosts (issue 16): a sandbox on h1 to one on h2 over an overlay network. trace
// shows h1's half (the packet's way to the VXLAN device) and names the host it left for; when h2's
// own policy drops it, h1 cannot see where, and trace says so (run trace on h2) instead of calling
// it a drop of its own. Two lab hosts and etcd, as the overlay tests have them.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { TraceResult } from '../../src/engine/trace.ts';
import { EtcdLab } from '../../src/lab/etcd.ts';
import { Lab } from '../../src/lab/lab.ts';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('ctnet trace across hosts (etcd + vxlan)', () => {
  let etcd: EtcdLab;
  const hosts: Lab[] = [];
  const h1 = () => hosts[0]!;
  const h2 = () => hosts[1]!;
  const ip = async (lab: Lab, s: string) => ((JSON.parse(await lab.ctnetOk(['inspect', s, '--json'])) as { interfaces: { addresses: string[] }[] }).interfaces[0]!.addresses[0]!).split('/')[0]!;
  const trace = async (dst: string): Promise<TraceResult> => JSON.parse(await h1().ctnetOk(['trace', 'web', dst, '--json', '--timeout', '1000'])) as TraceResult;
  let api = '';

  before(async () => {
    etcd = await EtcdLab.create();
    for (let i = 0; i < 2; i++) {
      const lab = await Lab.create();
      hosts.push(lab);
      await etcd.connect(lab.host);
    }
    console.log(`# lab namespaces: ${[etcd.netns, ...hosts.flatMap((h) => [h.host, h.world])].join(' ')}`);
    for (const [lab, name] of [[h1(), 'h1'], [h2(), 'h2']] as const) {
      await lab.ctnetOk(['cluster', 'join', '--etcd', etcd.url, '--underlay', 'underlay0', '--host-name', name, '--lease-ttl', '8']);
    }
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
    for (const h of hosts) await h.destroy();
    await etcd?.destroy();
  });

  it('answered: this host\'s half, and the host the packet left for', async () => {
    const r = await trace(`${api}:8080`);
    assert.equal(r.outcome, 'answered');
    assert.equal(r.leftFor?.host, 'h2');
    assert.equal(r.leftFor?.network, 'ov');
    assert.match(r.leftFor?.underlay ?? '', /^\d+\.\d+\.\d+\.\d+$/);
    assert.ok(r.request.some((s) => s.table === 'inet ctnet' && s.chain === 'forward' && s.verdict === 'accept'), 'h1\'s forward chain passed it');
    assert.ok(r.reply.length > 0, 'the answer came back through h1\'s tables');
    assert.equal(r.seenByServer?.client, await ip(h1(), 'web'), 'no NAT between the hosts\' sandboxes');
    assert.ok(r.notes?.some((n) => n.startsWith(`${api} is on host h2: the packet left through ${r.leftFor!.device} (network ov)`)), r.notes?.join('\n'));
    // By name too (the directory mirrors h2's sandboxes), once h1 knows api.
    const start = performance.now();
    while ((await h1().ctnet(['policy', 'check', 'web', 'api'])).code !== 0 && performance.now() - start < 60_000) await sleep(200);
    assert.equal((await trace('api:8080')).leftFor?.host, 'h2');
  });

  it('dropped by the other host\'s policy: this host passed it, and trace says to look on h2', async () => {
    await h2().ctnetOk(['policy', 'deny', '--from', 'web', '--to', 'api', '--port', '8080', '--name', 'h2-says-no']).catch(async () =>
      h2().ctnetOk(['policy', 'deny', '--from', await ip(h1(), 'web'), '--to', 'api', '--port', '8080', '--name', 'h2-says-no']));
    try {
      const r = await trace(`${api}:8080`);
      assert.equal(r.outcome, 'no answer', 'the drop is on h2: h1 saw none');
      assert.equal(r.droppedBy, undefined);
      assert.ok(r.request.some((s) => s.chain === 'forward' && s.verdict === 'accept'), 'h1 passed it');
      assert.ok(r.notes?.some((n) => /this host passed the packet to \S+ \(network ov\) for [\d.]+, and no answer came back: h2's tables/.test(n)), r.notes?.join('\n'));
      assert.match(await h1().ctnetOk(['trace', 'web', `${api}:8080`, '--timeout', '1000']), /note: .* is on host h2: this host passed the packet/);
    } finally {
      await h2().ctnetOk(['policy', 'rm', 'h2-says-no']);
    }
  });
});
