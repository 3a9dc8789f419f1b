// Issue 19: overlay networks in a topology file. One file (driver: vxlan) applied on two members of
// a cluster (etcd) gives one network whose sandboxes reach each other across hosts; a host in no
// cluster is refused at plan time; the plan compares the VNI with this host's side and refuses to
// replace what another host still has; down gives the leases (and with the last, the definition) back.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { EtcdLab } from '../../src/lab/etcd.ts';
import { Lab } from '../../src/lab/lab.ts';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

const MESH = (vni: number) => `name: mesh
networks:
  ov: { driver: vxlan, subnets: [10.81.0.0/16], vni: ${vni} }
sandboxes:
  a: { networks: [ov], command: [sleep, "3600"] }
`;

describe('overlay networks in a topology file (etcd + vxlan, two hosts)', () => {
  let etcd: EtcdLab;
  let dir: string;
  const hosts: Lab[] = [];
  const h1 = () => hosts[0]!;
  const h2 = () => hosts[1]!;
  const h3 = () => hosts[2]!;
  const ip = async (lab: Lab, s: string) => ((JSON.parse(await lab.ctnetOk(['inspect', s, '--json'])) as { interfaces: { addresses: string[] }[] }).interfaces[0]!.addresses[0]!).split('/')[0]!;
  const ping = async (lab: Lab, s: string, to: string) => (await lab.ctnet(['exec', s, '--', 'ping', '-c', '1', '-W', '1', to])).code === 0;
  const etcdKeys = async () => (await etcd.etcdctl(['get', '--prefix', '--keys-only', '/ctnet/networks/'])).stdout.trim();
  const planLines = (out: string) => out.split('\n').filter((l) => /^ {2}\S/.test(l));
  const eventually = async (what: string, cond: () => Promise<boolean>, ms = 60_000) => {
    const start = performance.now();
    while (performance.now() - start < ms) {
      if (await cond()) return;
      await sleep(200);
    }
    assert.fail(`never: ${what}`);
  };
  const file = (name: string, text: string) => {
    const p = join(dir, name);
    writeFileSync(p, text);
    return p;
  };

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'ctnet-topo-ov-'));
    etcd = await EtcdLab.create();
    for (let i = 0; i < 3; i++) {
      const lab = await Lab.create();
      hosts.push(lab);
      await etcd.connect(lab.host);
    }
    for (const [lab, name] of [[h1(), 'h1'], [h2(), 'h2']] as const) {
      await lab.ctnetOk(['cluster', 'join', '--etcd', etcd.url, '--underlay', 'underlay0', '--host-name', name, '--lease-ttl', '5']);
    }
  });
  after(async () => {
    for (const h of hosts) await h.destroy();
    await etcd?.destroy();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('a host in no cluster: FILE:LINE:COLUMN and a clear error, nothing changed here or in etcd', async () => {
    const path = file('mesh.yaml', MESH(4343));
    const before = await etcdKeys();
    for (const argv of [['diff', '-f', path], ['apply', '-f', path, '--yes']]) {
      const r = await h3().ctnet(argv);
      assert.equal(r.code, 1, r.stdout);
      assert.match(r.stderr, /mesh\.yaml:3:3: network ov is an overlay network \(driver: vxlan\): it needs this host in a cluster, and this host is not a member of one/);
    }
    assert.deepEqual(JSON.parse(await h3().ctnetOk(['network', 'ls', '--json'])), []);
    assert.deepEqual(JSON.parse(await h3().ctnetOk(['ls', '--json'])), []);
    assert.equal(await etcdKeys(), before);
  });

  it('one file applied on two hosts: one network, and their sandboxes reach each other', async () => {
    const path = file('mesh.yaml', MESH(4343));
    const out1 = await h1().ctnetOk(['apply', '-f', path, '--yes']);
    assert.deepEqual(planLines(out1), [
      '  +   network ov: overlay 10.81.0.0/16 (vxlan vni 4343, port 4789, a /24 per host); defined in the cluster; this host leases its share',
      '  +   sandbox a: networks ov; command sleep 3600',
    ]);
    const out2 = await h2().ctnetOk(['apply', '-f', path, '--yes']);
    assert.deepEqual(planLines(out2), [
      '  +   network ov: overlay 10.81.0.0/16 (vxlan vni 4343, port 4789, a /24 per host); joins the cluster\'s network (vni 4343): this host leases its share',
      '  +   sandbox a: networks ov; command sleep 3600',
    ]);
    const [a1, a2] = [await ip(h1(), 'a'), await ip(h2(), 'a')];
    assert.notEqual(a1.split('.').slice(0, 3).join('.'), a2.split('.').slice(0, 3).join('.'), 'each host has its own share');
    for (const lab of [h1(), h2()]) {
      const v = JSON.parse(await lab.ctnetOk(['network', 'inspect', 'ov', '--json'])) as { overlay: { vni: number } };
      assert.equal(v.overlay.vni, 4343);
    }
    await eventually('h1\'s a pings h2\'s a across the overlay', () => ping(h1(), 'a', a2));
    assert.ok(await ping(h2(), 'a', a1));
    // Applied again on each host: nothing to do.
    for (const lab of [h1(), h2()]) {
      const r = await lab.ctnet(['diff', '-f', path, '--detailed-exitcode']);
      assert.equal(r.code, 0, r.stdout + r.stderr);
      assert.match(r.stdout, /No changes/);
    }
  });

  it('a VNI change: refused while the other host has the network; after down there, a replace with the reason', async () => {
    const path = file('mesh.yaml', MESH(4344));
    const r1 = await h1().ctnet(['apply', '-f', path, '--yes']);
    assert.equal(r1.code, 1);
    assert.match(r1.stderr, /mesh\.yaml:3:3: overlay network ov must be replaced \(vni 4343 -> 4344\), but hosts h2 have it too/);
    assert.match(await etcdKeys(), /\/ctnet\/networks\/ov/);
    const down2 = await h2().ctnetOk(['down', '-f', path]);
    assert.match(down2, /removed network ov/);
    assert.deepEqual(JSON.parse(await h2().ctnetOk(['network', 'ls', '--json'])), []);
    // h1's ctnetd drops h2 as a peer (its vteps set too) when h2's lease goes: wait for that first.
    await eventually('h1 has no peer left on ov', async () => {
      const v = JSON.parse(await h1().ctnetOk(['network', 'inspect', 'ov', '--json'])) as { overlay: { peers: unknown[] } };
      return v.overlay.peers.length === 0 && !/^ {2}! /m.test((await h1().ctnet(['diff', '-f', path])).stdout);
    });
    const out = await h1().ctnetOk(['apply', '-f', path, '--yes']);
    assert.deepEqual(planLines(out), ['  -/+ network ov: vni 4343 -> 4344; re-attaches a']);
    const v = JSON.parse(await h1().ctnetOk(['network', 'inspect', 'ov', '--json'])) as { overlay: { vni: number } };
    assert.equal(v.overlay.vni, 4344);
    assert.match((await etcd.etcdctl(['get', '/ctnet/networks/ov', '--print-value-only'])).stdout, /"vni":\s*4344/);
    assert.equal((await h1().ctnet(['diff', '-f', path, '--detailed-exitcode'])).code, 0);
  });

  it('down on the last host gives the definition back to the cluster', async () => {
    const path = file('mesh.yaml', MESH(4344));
    await h1().ctnetOk(['down', '-f', path]);
    assert.deepEqual(JSON.parse(await h1().ctnetOk(['network', 'ls', '--json'])), []);
    assert.equal(await etcdKeys(), '', 'no overlay network left in etcd');
  });
});
