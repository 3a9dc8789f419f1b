// Issue 13: the inputs real runtimes send, as they send them. containerd's CRI plugin (portMappings
// with Go field names; a DEL whose runtimeConfig ctnet cannot read), podman 4.3 (a static address and
// MAC in CNI_ARGS), libcni 1.2 (GC with a null list), ctr (a task killed without a DEL), and the
// broadcast address the bridge plugin and Docker give a container's interface.
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Lab, UPLINK } from '../../src/lab/lab.ts';
import { checkConsistent, readStore } from './consistency.ts';
import { execPlugin, pluginConfigs, type CniEnv } from './cni-driver.ts';

type Json = Record<string, unknown>;

describe('CNI: what real runtimes send', () => {
  let lab: Lab;
  let dir: string;
  let plugin: string;
  let base: Json;
  const netnses: string[] = [];
  let seq = 0;

  const newNetns = () => {
    const name = `ctcnr-${lab.id}-${seq++}`;
    execFileSync('ip', ['netns', 'add', name]);
    netnses.push(name);
    return `/run/netns/${name}`;
  };
  const env = (command: string, id: string, netns: string, args?: string): CniEnv =>
    ({ CNI_COMMAND: command, CNI_CONTAINERID: id, CNI_NETNS: netns, CNI_IFNAME: 'eth0', CNI_PATH: '/usr/lib/cni', ...(args ? { CNI_ARGS: args } : {}) });
  const call = (e: CniEnv, conf: Json) => execPlugin(lab, plugin, e, JSON.stringify(conf));
  const conf = (over: Json = {}) => ({ ...base, ...over });
  const inNs = (netns: string, argv: string[]) => execFileSync('nsenter', [`--net=${netns}`, ...argv], { encoding: 'utf8' });

  before(async () => {
    lab = await Lab.create();
    dir = mkdtempSync(join(tmpdir(), `ctcnr-${lab.id}-`));
    await lab.ctnetOk(['network', 'create', 'rt', '--subnet', '10.88.0.0/24']);
    const written = (await lab.ctnetOk(['cni', 'install', '--bin-dir', join(dir, 'bin'), '--conf-dir', join(dir, 'conf'), '--network', 'rt'])).trim().split('\n');
    plugin = written[0]!;
    base = pluginConfigs(written[1]!)[0]!;
  });
  after(async () => {
    await lab?.destroy();
    for (const n of netnses) {
      try {
        execFileSync('ip', ['netns', 'del', n], { stdio: 'ignore' });
      } catch {
        // deleted by the test
      }
    }
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('containerd\'s CRI plugin: a hostPort pod (Go-cased portMappings) is published, and its DEL with them succeeds', async () => {
    const ns = newNetns();
    const goCased = conf({ runtimeConfig: { portMappings: [{ HostPort: 8181, ContainerPort: 80, Protocol: 'TCP', HostIP: '' }] } });
    const add = await call(env('ADD', 'pod1', ns, 'K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;IgnoreUnknown=1'), goCased);
    assert.equal(add.code, 0, add.stdout + add.stderr);
    const server = spawn('nsenter', [`--net=${ns}`, ...Lab.serverArgv('pod1', { tcp: 80 })], { stdio: 'ignore', detached: true });
    try {
      let answer;
      for (let i = 0; i < 50 && !answer; i++) {
        const p = await lab.inWorld(Lab.probeArgv('tcp', UPLINK.host4, 8181));
        if (p.code === 0) answer = JSON.parse(p.stdout) as { server: string };
        else await new Promise((r) => setTimeout(r, 100));
      }
      assert.equal(answer?.server, 'pod1', 'the world reaches the pod through its hostPort');
    } finally {
      server.kill('SIGKILL');
    }
    const del = await call(env('DEL', 'pod1', ns), goCased);
    assert.equal(del.code, 0, del.stdout);
    assert.deepEqual(readStore(lab).ports, []);
  });

  it('DEL succeeds whatever else is wrong in the request, and says what it ignored', async () => {
    const ns = newNetns();
    assert.equal((await call(env('ADD', 'pod2', ns), conf())).code, 0);
    const bad = conf({ runtimeConfig: { portMappings: [{ hostPort: 'eighty' }] } });
    const del = await call(env('DEL', 'pod2', ns), bad);
    assert.equal(del.code, 0, del.stdout);
    assert.match(del.stderr, /DEL ignored what it does not need: .*portMappings\[0\]\.hostPort="eighty"/);
    assert.deepEqual(readStore(lab).sandboxes.filter((s) => String(s.name) === 'cni-pod2'), [], 'the attachment is gone');
    // ADD with the same input is still refused, naming the field.
    const add = await call(env('ADD', 'pod2', newNetns()), bad);
    assert.equal(add.code, 1);
    assert.equal(add.json!.code, 7);
  });

  it('podman: CNI_ARGS IP= and MAC= give the container that address and MAC', async () => {
    const ns = newNetns();
    const r = await call(env('ADD', 'pm1', ns, 'IgnoreUnknown=1;IP=10.88.0.77;MAC=02:11:22:33:44:55'), conf());
    assert.equal(r.code, 0, r.stdout + r.stderr);
    assert.equal((r.json!.ips as { address: string }[])[0]!.address, '10.88.0.77/24');
    const link = inNs(ns, ['ip', '-o', 'link', 'show', 'eth0']);
    assert.match(link, /link\/ether 02:11:22:33:44:55/);
    // An address taken already is an error, not another address.
    const again = await call(env('ADD', 'pm2', newNetns(), 'IgnoreUnknown=1;IP=10.88.0.77'), conf());
    assert.equal(again.code, 1, again.stdout);
    assert.match(String(again.json!.msg), /10\.88\.0\.77/);
    assert.equal((await call(env('DEL', 'pm1', ns), conf())).code, 0);
  });

  it('the container\'s IPv4 address has its subnet\'s broadcast address, as the bridge plugin sets it', async () => {
    const ns = newNetns();
    assert.equal((await call(env('ADD', 'brd', ns), conf())).code, 0);
    assert.match(inNs(ns, ['ip', '-o', '-4', 'addr', 'show', 'eth0']), /inet 10\.88\.0\.\d+\/24 brd 10\.88\.0\.255 /);
    assert.equal((await call(env('DEL', 'brd', ns), conf())).code, 0);
  });

  it('libcni 1.2: GC with "cni.dev/valid-attachments": null removes every attachment', async () => {
    const ns = newNetns();
    assert.equal((await call(env('ADD', 'gcnull', ns), conf())).code, 0);
    const r = await call({ CNI_COMMAND: 'GC', CNI_PATH: '/usr/lib/cni' }, conf({ cniVersion: '1.1.0', 'cni.dev/valid-attachments': null }));
    assert.equal(r.code, 0, r.stdout);
    assert.deepEqual(readStore(lab).sandboxes.filter((s) => String(s.name) === 'cni-gcnull'), []);
  });

  it('ctr: a container killed without a DEL (its namespace gone) is removed by ctnet gc, and its address freed', async () => {
    const ns = newNetns();
    const r = await call(env('ADD', 'killed', ns), conf());
    assert.equal(r.code, 0);
    const ip = (r.json!.ips as { address: string }[])[0]!.address.split('/')[0]!;
    execFileSync('ip', ['netns', 'del', ns.split('/').pop()!]);
    assert.match(await lab.ctnetOk(['inspect', 'cni-killed']), /NETNS MISSING/);
    const gc = await lab.ctnetOk(['gc']);
    assert.match(gc, /removed sandbox cni-killed: its network namespace .* is gone/);
    const s = readStore(lab);
    assert.ok(!s.addresses.some((a) => a.ip === ip), 'its address is free');
    assert.deepEqual(s.sandboxes.filter((x) => String(x.name) === 'cni-killed'), []);
    assert.deepEqual(await checkConsistent(lab), []);
    assert.match(await lab.ctnetOk(['gc']), /agree/, 'a second gc finds nothing');
  });
});
