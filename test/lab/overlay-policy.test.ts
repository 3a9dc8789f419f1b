// Issue 14, point 2 and `ls --all`: the sandbox directory in etcd makes labels, names and policy
// work across hosts. Two lab hosts and etcd; an --isolate overlay network with web on h1 and api,
// db on h2. Policy rules are each host's own (a packet between hosts crosses the forward chain of
// both), so every rule here is given to both hosts, as a cluster's operator would. Every assertion
// is made with real packets, and `policy check` on both hosts must agree with them.
import assert from 'node:assert/strict';
import { closeSync, openSync, readFileSync } from 'node:fs';
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Lab } from '../../src/lab/lab.ts';
import { EtcdHosts } from './etcd-hosts.ts';

const TTL = 8;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface Listed { host: string; name: string; addresses: string[]; labels: Record<string, string>; networks: string[]; local: boolean }

describe('policy and the sandbox directory across hosts (etcd + vxlan)', () => {
  let cluster: EtcdHosts | undefined;
  const h1 = () => cluster!.host(0);
  const h2 = () => cluster!.host(1);
  const ips = new Map<string, string>();

  const ip = async (lab: Lab, s: string) => ((JSON.parse(await lab.ctnetOk(['inspect', s, '--json'])) as { interfaces: { addresses: string[] }[] }).interfaces[0]!.addresses[0]!).split('/')[0]!;
  const both = async (args: string[]) => {
    await Promise.all(cluster!.hosts.map((lab) => lab.ctnetOk(args)));
  };
  const listAll = async (lab: Lab) => JSON.parse(await lab.ctnetOk(['ls', '--all', '--json'])) as Listed[];
  const daemonLog = (lab: Lab) => readFileSync(join(lab.stateDir, 'ctnetd.log'), 'utf8');
  /** A new TCP (or HTTP) connection from a sandbox: the server's name and the client address it saw, or undefined. */
  const probe = async (lab: Lab, from: string, proto: 'tcp' | 'http', to: string, port: number) => {
    const r = await lab.ctnet(['exec', from, '--', ...Lab.probeArgv(proto, ips.get(to)!, port, 1000)]);
    return r.code === 0 ? (JSON.parse(r.stdout) as { server: string; client: string }) : undefined;
  };
  /** What `policy check` says on a host (FROM and TO by name: local or from the directory). */
  const check = async (lab: Lab, from: string, to: string, port: string) => {
    const [c] = JSON.parse(await lab.ctnetOk(['policy', 'check', from, to, port, '--json'])) as { allowed: boolean; by: string }[];
    return c!;
  };
  const where = new Map<string, () => Lab>([['web', h1], ['api', h2], ['db', h2]]);
  /**
   * The connection FROM -> TO on port passes exactly when expected, with the real client address,
   * and `policy check` on both hosts says so. Returns what decided, as h1 says it.
   */
  const expect = async (from: string, to: string, proto: 'tcp' | 'http', port: number, allowed: boolean): Promise<string> => {
    const [got, c1, c2] = await Promise.all([probe(where.get(from)!(), from, proto, to, port), check(h1(), from, to, `${port}/tcp`), check(h2(), from, to, `${port}/tcp`)]);
    assert.deepEqual(got, allowed ? { server: to, client: ips.get(from) } : undefined, `${from} -> ${to} ${proto}/${port}`);
    assert.equal(c1.allowed, allowed, `policy check on h1 agrees: ${c1.by}`);
    assert.equal(c2.allowed, allowed, `policy check on h2 agrees: ${c2.by}`);
    return c1.by;
  };
  /** Polls until cond holds; returns how long it took (a generous bound only ends a hung test). */
  const eventually = async (what: string, cond: () => Promise<boolean>, ms = 60_000): Promise<number> => {
    const start = performance.now();
    while (performance.now() - start < ms) {
      if (await cond()) return performance.now() - start;
      await sleep(50);
    }
    assert.fail(`never: ${what}`);
  };
  /** The elements of h1's policy_allow4 set, as the kernel holds them. */
  const allowSet = async (lab: Lab) => (await lab.inHost(['nft', 'list', 'set', 'inet', 'ctnet', 'policy_allow4'])).stdout;
  const startDaemon = (lab: Lab) => {
    const out = openSync(join(lab.stateDir, 'ctnetd.log'), 'a');
    spawn('nsenter', [`--net=/run/netns/${lab.host}`, lab.ctnetBin, 'daemon'], { env: { ...process.env, CTNET_STATE_DIR: lab.stateDir }, stdio: ['ignore', 'ignore', out], detached: true }).unref();
    closeSync(out);
  };

  before(async () => {
    cluster = await EtcdHosts.create(2, { ttl: TTL });
    await cluster.joinAll();
    // --isolate is the overlay's, on every host: h2's side (made by its first sandbox) isolates too.
    await h1().ctnetOk(['network', 'create', 'ov', '--driver', 'vxlan', '--subnet', '10.70.0.0/16', '--isolate']);
    await h1().ctnetOk(['run', '-d', '--name', 'web', '--network', 'ov', '--label', 'tier=web', '--', ...Lab.serverArgv('web', { tcp: 8080 })]);
    await h2().ctnetOk(['run', '-d', '--name', 'api', '--network', 'ov', '--label', 'tier=api', '--', ...Lab.serverArgv('api', { tcp: 8080, http: 8081, echo: 8090 })]);
    await h2().ctnetOk(['run', '-d', '--name', 'db', '--network', 'ov', '--label', 'tier=db', '--', ...Lab.serverArgv('db', { tcp: 8080 })]);
    ips.set('web', await ip(h1(), 'web'));
    ips.set('api', await ip(h2(), 'api'));
    ips.set('db', await ip(h2(), 'db'));
  });
  after(async () => {
    await cluster?.destroy();
  });

  it('ls --all lists every host\'s sandboxes from etcd, with their host; policy check knows the other host\'s by name', async () => {
    // The mirror (what policy reads) follows etcd: once both hosts know the other's sandboxes by name,
    // etcd holds them all.
    const t = await eventually('each host knows the other\'s sandboxes', async () =>
      (await Promise.all([h1().ctnet(['policy', 'check', 'web', 'db']), h2().ctnet(['policy', 'check', 'web', 'db'])])).every((r) => r.code === 0));
    console.log(`# directory: each host's policy knows the other's sandboxes ${t.toFixed(0)} ms after the last was made`);
    const l1 = await listAll(h1());
    assert.deepEqual(l1.map((s) => `${s.host}/${s.name} ${s.addresses.join(',')} ${JSON.stringify(s.labels)} ${s.networks.join(',')} ${s.local}`), [
      `h1/web ${ips.get('web')} {"tier":"web"} ov true`,
      `h2/api ${ips.get('api')} {"tier":"api"} ov false`,
      `h2/db ${ips.get('db')} {"tier":"db"} ov false`,
    ]);
    const text = await h2().ctnetOk(['ls', '--all']);
    assert.match(text, /^HOST\s+NAME\s+NETWORKS\s+ADDRESSES\s+LABELS/);
    assert.match(text, /\nh1\s+web\s+ov\s+\S+\s+tier=web/);
    assert.match(text, /\nh2 \*\s+api\s+ov\s+\S+\s+tier=api/);
    // Labels are set where the sandbox runs.
    assert.match((await h1().ctnet(['label', 'api', 'tier=x'])).stderr, /no sandbox named api on this host \(it runs on h2\)/);
    // Each sandbox was written to etcd once: later rounds find it in place (same value, same lease).
    assert.equal(daemonLog(h1()).match(/directory: published web \(/g)?.length, 1, 'web published once');
    // The overlay is --isolate on both sides: nothing passes between the hosts by default.
    assert.equal(await expect('web', 'api', 'tcp', 8080, false), 'default: network ov is --isolate');
    await expect('api', 'web', 'tcp', 8080, false);
  });

  it('allow --from label:tier=web --to label:tier=api --port 8080 lets exactly that through, across hosts', async () => {
    const rule = ['policy', 'allow', '--from', 'label:tier=web', '--to', 'label:tier=api', '--port', '8080', '--name', 'web-api'];
    // Given to h1 alone, the rule opens h1's side only: h2's forward chain still isolates.
    await h1().ctnetOk(rule);
    const [got, c1, c2] = await Promise.all([probe(h1(), 'web', 'tcp', 'api', 8080), check(h1(), 'web', 'api', '8080'), check(h2(), 'web', 'api', '8080')]);
    assert.deepEqual([got, c1.by, c2.by], [undefined, 'rule web-api', 'default: network ov is --isolate']);
    const said = await h1().ctnet(['policy', 'check', 'web', 'api', '8080']);
    assert.match(said.stderr, /h2 judges these connections too, by its own rules/);
    await h2().ctnetOk(rule);
    assert.equal(await expect('web', 'api', 'tcp', 8080, true), 'rule web-api');
    await expect('web', 'api', 'http', 8081, false); // another port of api
    await expect('web', 'db', 'tcp', 8080, false); // another label
    await expect('api', 'web', 'tcp', 8080, false); // the other way
    assert.match(await allowSet(h1()), new RegExp(`${ips.get('web')} \\. ${ips.get('api')} \\. tcp \\. 8080`), 'h1\'s set holds h2\'s api');
  });

  it('a deny beats it (naming the other host\'s sandbox), and removing the deny restores it', async () => {
    await both(['policy', 'deny', '--from', 'web', '--to', 'api', '--name', 'no-web']);
    assert.equal(await expect('web', 'api', 'tcp', 8080, false), 'rule no-web');
    await both(['policy', 'rm', 'no-web']);
    assert.equal(await expect('web', 'api', 'tcp', 8080, true), 'rule web-api');
  });

  it('revoking cuts an open cross-host connection', async () => {
    await both(['policy', 'allow', '--from', 'label:tier=web', '--to', 'net:ov', '--port', '8090', '--name', 'hold']);
    const held = await h1().ctnet(['exec', 'web', '--', ...Lab.holdArgv(ips.get('api')!, 8090, 1000)]);
    assert.equal(held.code, 0, `the connection holds while allowed: ${held.stdout}`);
    // Held long enough that only a cut ends it early.
    let done = false;
    const hold = h1().ctnet(['exec', 'web', '--', ...Lab.holdArgv(ips.get('api')!, 8090, 30_000)]).finally(() => { done = true; });
    // Revoke only once the connection is open (and tracked as such on h1); a hold that ended says why.
    await eventually('the held connection is established', async () => {
      if (done) assert.fail(`the hold ended before it was revoked: ${(await hold).stdout}`);
      return /ESTABLISHED/.test((await h1().inHost(['conntrack', '-L', '-p', 'tcp', '-d', ips.get('api')!, '--dport', '8090'])).stdout);
    }, 60_000);
    await sleep(300);
    await both(['policy', 'rm', 'hold']);
    const r = await hold;
    assert.equal(r.code, 1, `the connection was cut: ${r.stdout}`);
    assert.match(r.stdout, /broken after [1-9]\d* answers/);
    assert.equal((await check(h1(), 'web', 'api', '8090/tcp')).allowed, false);
  });

  it('a label changed on h2 moves h1\'s policy: db becomes reachable as tier=api, and not once it is tier=db again', async () => {
    const element = new RegExp(`${ips.get('web')} \\. ${ips.get('db')} \\. tcp \\. 8080`);
    await h2().ctnetOk(['label', 'db', 'tier=api']);
    const on = await eventually('h1\'s policy set holds db', async () => element.test(await allowSet(h1())), 30_000);
    assert.equal(await expect('web', 'db', 'tcp', 8080, true), 'rule web-api');
    await h2().ctnetOk(['label', 'db', 'tier=db']);
    const off = await eventually('h1\'s policy set lets db go', async () => !element.test(await allowSet(h1())), 30_000);
    await expect('web', 'db', 'tcp', 8080, false);
    console.log(`# a label change on h2 reached h1's policy set in ${on.toFixed(0)} ms (set) and ${off.toFixed(0)} ms (removed), measured by polling nft every 50 ms`);
  });

  it('etcd unreachable: ls --all fails fast with a clear error; the mirror and the policy stay', async () => {
    cluster!.etcd.pause();
    try {
      const start = performance.now();
      const r = await h1().ctnet(['ls', '--all'], { CTNET_ETCD_TIMEOUT_MS: '1000' });
      const ms = performance.now() - start;
      assert.equal(r.code, 1);
      assert.match(r.stderr, /etcd at http:\/\/192\.0\.2\.1:2379 is unreachable: .*no answer within 1000 ms/);
      assert.equal(r.stdout, '');
      console.log(`# ls --all with etcd stopped failed after ${ms.toFixed(0)} ms`);
      // Short: a pause longer than what is left of the hosts' etcd leases would expire them.
      assert.ok(await probe(h1(), 'web', 'tcp', 'api', 8080), 'the policy holds while etcd does not answer');
    } finally {
      cluster!.etcd.resume();
    }
    // A pause longer than what was left of a host's etcd lease (a busy machine) expires it: etcd
    // then deletes that host's entries, the other mirrors the deletion, and the host registers and
    // publishes again. Either way both hosts come back to knowing each other's sandboxes.
    await eventually('each host knows the other\'s sandboxes again', async () =>
      (await Promise.all([h1().ctnet(['policy', 'check', 'web', 'db']), h2().ctnet(['policy', 'check', 'web', 'db'])])).every((r) => r.code === 0));
    assert.equal(await expect('web', 'api', 'tcp', 8080, true), 'rule web-api');
    assert.deepEqual((await listAll(h1())).map((s) => `${s.host}/${s.name}`), ['h1/web', 'h2/api', 'h2/db']);
  });

  it('h2\'s ctnetd dead past its lease: its sandboxes leave h1\'s mirror; back, it publishes them all again', async () => {
    const pid = Number(/pid (\d+)/.exec(await h2().ctnetOk(['daemon', 'status']))?.[1]);
    process.kill(pid, 'SIGKILL');
    const gone = await eventually('h1 forgets api', async () => (await h1().ctnet(['policy', 'check', 'web', 'api', '8080'])).code !== 0, (TTL + 30) * 1000);
    console.log(`# h2's sandboxes left h1's mirror ${gone.toFixed(0)} ms after its ctnetd died (lease TTL ${TTL} s)`);
    assert.doesNotMatch(await allowSet(h1()), new RegExp(ips.get('api')!.replaceAll('.', '\\.')), 'and h1\'s policy set');
    assert.ok(!(await listAll(h1())).some((s) => s.host === 'h2'));
    startDaemon(h2());
    const back = await eventually('web reaches api again', async () => (await probe(h1(), 'web', 'tcp', 'api', 8080)) !== undefined, 60_000)
      .catch((e: Error) => assert.fail(`${e.message}\n${daemonLog(h2()).split('\n').slice(-15).join('\n')}`));
    console.log(`# h2's ctnetd restarted: web reaches api again after ${back.toFixed(0)} ms`);
    assert.equal(await expect('web', 'api', 'tcp', 8080, true), 'rule web-api');
    assert.deepEqual((await listAll(h1())).filter((s) => s.host === 'h2').map((s) => s.name), ['api', 'db']);
    assert.match(daemonLog(h2()), /directory: published api, db \(lease /);
  });
});
