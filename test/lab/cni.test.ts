// Issue #5, points 2 and 3: the ctnet CNI plugin driven as a runtime drives it (CNI_* env, config on
// stdin), every command, chaining with the reference tuning plugin, DEL in every awkward form, GC,
// STATUS with the daemon down and up, concurrency, and every error code for the input that makes it.
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DatabaseSync } from 'node:sqlite';
import { after, before, describe, it } from 'node:test';
import { Lab, UPLINK } from '../../src/lab/lab.ts';
import { checkConsistent, nftMaps, readStore } from './consistency.ts';
import { execPlugin, pluginConfigs, type CniEnv } from './cni-driver.ts';

type Json = Record<string, unknown>;

describe('CNI plugin', () => {
  let lab: Lab;
  let dir: string;
  let plugin: string;
  let base: Json; // the ctnet plugin config from the conflist `ctnet cni install` wrote
  const netnses: string[] = [];
  let seq = 0;

  const newNetns = () => {
    const name = `ctcni-${lab.id}-${seq++}`;
    execFileSync('ip', ['netns', 'add', name]);
    netnses.push(name);
    return `/run/netns/${name}`;
  };
  const env = (command: string, id: string, netns: string, ifname = 'eth0'): CniEnv =>
    ({ CNI_COMMAND: command, CNI_CONTAINERID: id, CNI_NETNS: netns, CNI_IFNAME: ifname, CNI_PATH: '/usr/lib/cni' });
  const call = (e: CniEnv, conf: Json, extra: Record<string, string> = {}) => execPlugin(lab, plugin, e, JSON.stringify(conf), extra);
  const conf = (over: Json = {}) => ({ ...base, ...over });
  const inNs = (netns: string, argv: string[]) => execFileSync('nsenter', [`--net=${netns}`, ...argv], { encoding: 'utf8' });
  const hostLinks = async () => (await lab.inHost(['ip', '-o', 'link'])).stdout.split('\n').filter((l) => /ctv/.test(l)).length;
  const daemon = () => lab.ctnet(['daemon', 'status']);
  const snapshot = async () => JSON.stringify({
    store: readStore(lab),
    // names and masters only: a bridge's carrier flags follow its ports with a delay
    links: (JSON.parse((await lab.inHost(['ip', '-j', 'link'])).stdout) as { ifname: string; master?: string }[]).map((l) => `${l.ifname}@${l.master ?? ''}`),
    nft: (await lab.inHost(['nft', '-s', 'list', 'ruleset'])).stdout,
  });

  before(async () => {
    lab = await Lab.create();
    dir = mkdtempSync(join(tmpdir(), `ctcni-${lab.id}-`));
    await lab.ctnetOk(['network', 'create', 'cnet', '--subnet', '10.96.0.0/24', '--subnet', 'fd00:96::/64']);
    await lab.ctnetOk(['network', 'create', 'closed', '--subnet', '10.95.0.0/24', '--internal']);
    await lab.ctnetOk(['network', 'create', 'cnet2', '--subnet', '10.94.0.0/24']);
    const written = (await lab.ctnetOk(['cni', 'install', '--bin-dir', join(dir, 'bin'), '--conf-dir', join(dir, 'conf'), '--network', 'cnet'])).trim().split('\n');
    plugin = written[0]!;
    base = pluginConfigs(written[1]!)[0]!;
  });
  after(async () => {
    await lab?.destroy(); // kills the daemon with everything else in the lab host
    for (const n of netnses) {
      try {
        execFileSync('ip', ['netns', 'del', n], { stdio: 'ignore' });
      } catch {
        // deleted by the test
      }
    }
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('answers VERSION without the daemon, in the config\'s version', async () => {
    for (const v of ['0.4.0', '1.0.0', '1.1.0']) {
      const r = await execPlugin(lab, plugin, { CNI_COMMAND: 'VERSION' }, JSON.stringify({ cniVersion: v }));
      assert.equal(r.code, 0, r.stdout);
      assert.equal(r.json!.cniVersion, v);
      assert.deepEqual(r.json!.supportedVersions, ['0.3.0', '0.3.1', '0.4.0', '1.0.0', '1.1.0']);
    }
    assert.equal((await daemon()).code, 3, 'VERSION must not start ctnetd');
  });

  it('ADD attaches a container with ports, address, MAC, DNS and labels; ctnet ls shows it; traffic flows', async () => {
    const ns = newNetns();
    const r = await call(env('ADD', 'web1', ns), conf({
      runtimeConfig: {
        portMappings: [{ hostPort: 8080, containerPort: 80, protocol: 'tcp' }],
        ips: ['10.96.0.50/24'], mac: '02:00:00:96:00:50', dns: { servers: ['10.96.0.1'], searches: ['lab.test'] },
      },
      args: { cni: { labels: [{ key: 'tier', value: 'web' }] } },
    }));
    assert.equal(r.code, 0, r.stdout + r.stderr);
    const res = r.json!;
    assert.equal(res.cniVersion, '1.0.0');
    const ifs = res.interfaces as { name: string; mac?: string; sandbox?: string }[];
    assert.equal(ifs[0]!.name, 'ctbr-cnet');
    assert.deepEqual(ifs[2], { name: 'eth0', mac: '02:00:00:96:00:50', sandbox: ns });
    const ips = res.ips as { address: string; gateway: string; interface: number }[];
    assert.deepEqual(ips[0], { address: '10.96.0.50/24', gateway: '10.96.0.1', interface: 2 });
    assert.match(ips[1]!.address, /^fd00:96::[0-9a-f]+\/64$/);
    assert.deepEqual(res.routes, [{ dst: '0.0.0.0/0', gw: '10.96.0.1' }, { dst: '::/0', gw: 'fd00:96::1' }]);
    assert.deepEqual(res.dns, { nameservers: ['10.96.0.1'], search: ['lab.test'] });
    assert.match(inNs(ns, ['ip', '-o', 'addr', 'show', 'eth0']), /inet 10\.96\.0\.50\/24/);
    assert.match(inNs(ns, ['ip', 'route']), /default via 10\.96\.0\.1 dev eth0/);

    const ls = JSON.parse(await lab.ctnetOk(['ls', '--json'])) as { name: string; netns: string; ports: string[]; labels: Json }[];
    const row = ls.find((s) => s.netns === ns);
    assert.ok(row, `ctnet ls shows the container: ${JSON.stringify(ls)}`);
    assert.deepEqual(row.labels, { tier: 'web' });
    assert.deepEqual(row.ports, ['8080:80/tcp']);
    assert.match(await lab.ctnetOk(['inspect', row.name]), /cni +container web1, eth0 on CNI network cnet/);

    // Real traffic: the world reaches the published port, the container reaches the world.
    const server = spawn('nsenter', [`--net=${ns}`, ...Lab.serverArgv('web1', { tcp: 80 })], { stdio: 'ignore', detached: true });
    try {
      let answer;
      for (let i = 0; i < 50 && !answer; i++) {
        const p = await lab.inWorld(Lab.probeArgv('tcp', UPLINK.host4, 8080));
        if (p.code === 0) answer = JSON.parse(p.stdout) as { server: string; client: string };
        else await new Promise((res) => setTimeout(res, 100));
      }
      assert.deepEqual(answer, { server: 'web1', client: UPLINK.world4 });
      execFileSync('nsenter', [`--net=${ns}`, 'ping', '-c1', '-W2', UPLINK.remote4], { stdio: 'ignore' });
    } finally {
      server.kill('SIGKILL');
    }
    // args.cni.labels reach policy: a rule on label:tier=web selects the container.
    await lab.ctnetOk(['policy', 'deny', '--from', 'label:tier=web', '--to', 'world', '--name', 'no-egress']);
    assert.match(await lab.ctnetOk(['policy', 'check', row.name, UPLINK.remote4]), /denied .*no-egress/);
    await lab.ctnetOk(['policy', 'rm', 'no-egress']);
    assert.deepEqual(await checkConsistent(lab), []);
    const del = await call(env('DEL', 'web1', ns), conf());
    assert.equal(del.code, 0, del.stdout);
  });

  it('ctnetd ran that ADD and DEL on the kernel backend this run asks for (netlink; exec with CTNET_KERNEL=exec)', () => {
    const lines = readFileSync(join(lab.stateDir, 'ctnetd.log'), 'utf8').split('\n').filter((l) => / (ADD|DEL) \S+ eth0: exit 0 /.test(l));
    assert.ok(lines.length >= 2);
    const exec = process.env.CTNET_KERNEL === 'exec';
    // The netlink backend logs its calls; on exec every kernel change is a spawn.
    for (const l of lines) assert.match(l, exec ? /\(tools [\d.]+ ms in [1-9]\d* spawns, engine/ : /spawns, netlink [\d.]+ ms in [1-9]\d* calls, engine/);
    if (!exec) assert.ok(lines.some((l) => / ADD .* in 0 spawns, netlink /.test(l)), `an ADD with no process spawned: ${lines.join('\n')}`);
  });

  it('the pod name and namespace in CNI_ARGS become labels policy can select', async () => {
    const ns = newNetns();
    const r = await call({ ...env('ADD', 'pod1', ns), CNI_ARGS: 'IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=cart-7d9f' }, conf());
    assert.equal(r.code, 0, r.stdout);
    const ls = JSON.parse(await lab.ctnetOk(['ls', '--json'])) as { netns: string; labels: Json }[];
    assert.deepEqual(ls.find((x) => x.netns === ns)?.labels, { 'io.kubernetes.pod.name': 'cart-7d9f', 'io.kubernetes.pod.namespace': 'shop' });
    assert.equal((await call(env('DEL', 'pod1', ns), conf())).code, 0);
  });

  it('answers in the config\'s version: 0.4.0 results name the IP family, 1.1.0 results say 1.1.0', async () => {
    const ns = newNetns();
    const old = await call(env('ADD', 'v040', ns), conf({ cniVersion: '0.4.0' }));
    assert.equal(old.code, 0, old.stdout);
    assert.equal(old.json!.cniVersion, '0.4.0');
    assert.deepEqual((old.json!.ips as { version: string }[]).map((i) => i.version), ['4', '6']);
    assert.equal((await call(env('DEL', 'v040', ns), conf({ cniVersion: '0.4.0' }))).code, 0);
    const cur = await call(env('ADD', 'v110', ns), conf({ cniVersion: '1.1.0' }));
    assert.equal(cur.json!.cniVersion, '1.1.0');
    assert.equal((cur.json!.ips as Json[])[0]!.version, undefined);
    assert.equal((await call(env('DEL', 'v110', ns), conf({ cniVersion: '1.1.0' }))).code, 0);
  });

  it('chains with the reference tuning plugin: prevResult passes on, CHECK compares live state, DEL in reverse', async () => {
    const ns = newNetns();
    const tuning = { cniVersion: '1.0.0', name: base.name, type: 'tuning', sysctl: { 'net.ipv4.conf.eth0.rp_filter': '2' } };
    const add = await call(env('ADD', 'chain1', ns), conf());
    assert.equal(add.code, 0, add.stdout);
    const t = await execPlugin(lab, '/usr/lib/cni/tuning', env('ADD', 'chain1', ns), JSON.stringify({ ...tuning, prevResult: add.json }));
    assert.equal(t.code, 0, t.stdout + t.stderr);
    assert.deepEqual((t.json!.ips as Json[]).map((i) => i.address), (add.json!.ips as Json[]).map((i) => i.address), 'tuning passes our result on');
    assert.equal(inNs(ns, ['cat', '/proc/sys/net/ipv4/conf/eth0/rp_filter']).trim(), '2');

    const final = t.json!;
    const chk = await call(env('CHECK', 'chain1', ns), conf({ prevResult: final }));
    assert.equal(chk.code, 0, chk.stdout);
    const tchk = await execPlugin(lab, '/usr/lib/cni/tuning', env('CHECK', 'chain1', ns), JSON.stringify({ ...tuning, prevResult: final }));
    assert.equal(tchk.code, 0, tchk.stdout);

    // CHECK sees what changed behind its back.
    const v4 = (final.ips as { address: string }[])[0]!.address;
    inNs(ns, ['ip', 'addr', 'del', v4, 'dev', 'eth0']);
    const bad = await call(env('CHECK', 'chain1', ns), conf({ prevResult: final }));
    assert.notEqual(bad.code, 0);
    assert.match(String(bad.json!.msg), new RegExp(`address ${v4.split('/')[0]!.replaceAll('.', '\\.')} is missing`));

    assert.equal((await execPlugin(lab, '/usr/lib/cni/tuning', env('DEL', 'chain1', ns), JSON.stringify({ ...tuning, prevResult: final }))).code, 0);
    assert.equal((await call(env('DEL', 'chain1', ns), conf({ prevResult: final }))).code, 0);
    assert.equal(await hostLinks(), 0);
  });

  it('a container on two networks: eth1 leaves eth0 the default route, and takes it over when eth0 goes', async () => {
    const ns = newNetns();
    const second = conf({ name: 'cnet2', network: 'cnet2' });
    assert.equal((await call(env('ADD', 'multi', ns, 'eth0'), conf())).code, 0);
    const r = await call(env('ADD', 'multi', ns, 'eth1'), second);
    assert.equal(r.code, 0, r.stdout);
    assert.deepEqual(r.json!.routes, [], 'eth1 adds no default route');
    assert.match(inNs(ns, ['ip', 'route', 'show', 'default']), /via 10\.96\.0\.1 dev eth0/);
    const ls = JSON.parse(await lab.ctnetOk(['ls', '--json'])) as { netns: string; networks: string[] }[];
    assert.deepEqual(ls.find((x) => x.netns === ns)?.networks, ['cnet', 'cnet2'], 'one sandbox, two networks');
    assert.equal((await call(env('DEL', 'multi', ns, 'eth0'), conf())).code, 0);
    assert.match(inNs(ns, ['ip', 'route', 'show', 'default']), /via 10\.94\.0\.1 dev eth1/);
    assert.equal((await call(env('DEL', 'multi', ns, 'eth1'), second)).code, 0);
    assert.equal(await hostLinks(), 0);
  });

  it('isDefaultGateway: true on the second network takes the default route over; its DEL hands it back', async () => {
    const ns = newNetns();
    const second = conf({ name: 'cnet2', network: 'cnet2', isDefaultGateway: true });
    assert.equal((await call(env('ADD', 'gwpick', ns, 'eth0'), conf())).code, 0);
    const r = await call(env('ADD', 'gwpick', ns, 'eth1'), second);
    assert.equal(r.code, 0, r.stdout);
    assert.deepEqual(r.json!.routes, [{ dst: '0.0.0.0/0', gw: '10.94.0.1' }], 'the runtime\'s choice carries the default');
    assert.match(inNs(ns, ['ip', 'route', 'show', 'default']), /via 10\.94\.0\.1 dev eth1/);
    assert.equal((await call(env('DEL', 'gwpick', ns, 'eth1'), second)).code, 0);
    assert.match(inNs(ns, ['ip', 'route', 'show', 'default']), /via 10\.96\.0\.1 dev eth0/);
    assert.equal((await call(env('DEL', 'gwpick', ns, 'eth0'), conf())).code, 0);
    assert.equal(await hostLinks(), 0);
  });

  it('a UDP client sending to the host port before the ADD reaches the container after it (stale flow cleared by ctnetd)', async () => {
    const flow = lab.inWorld(Lab.flowArgv(UPLINK.host4, 9100, 'late', 20_000));
    await new Promise((r) => setTimeout(r, 500)); // conntrack now holds the un-NATed flow to the host
    const ns = newNetns();
    const add = await call(env('ADD', 'late', ns), conf({ runtimeConfig: { portMappings: [{ hostPort: 9100, containerPort: 91, protocol: 'udp' }] } }));
    assert.equal(add.code, 0, add.stdout);
    const server = spawn('nsenter', [`--net=${ns}`, ...Lab.serverArgv('late', { udp: 91 })], { stdio: 'ignore', detached: true });
    try {
      const r = await flow;
      assert.equal(r.code, 0, `the flow reached the container (saw: ${r.stdout.trim()})`);
    } finally {
      server.kill('SIGKILL');
    }
    assert.equal((await call(env('DEL', 'late', ns), conf())).code, 0);
  });

  it('chains with the reference bandwidth plugin: it finds the host veth in our result and shapes it', async () => {
    const ns = newNetns();
    const bw = { cniVersion: '1.0.0', name: base.name, type: 'bandwidth', runtimeConfig: { bandwidth: { ingressRate: 8_000_000, ingressBurst: 80_000 } } };
    const add = await call(env('ADD', 'bw1', ns), conf());
    assert.equal(add.code, 0, add.stdout);
    const b = await execPlugin(lab, '/usr/lib/cni/bandwidth', env('ADD', 'bw1', ns), JSON.stringify({ ...bw, prevResult: add.json }));
    assert.equal(b.code, 0, b.stdout + b.stderr);
    const hostVeth = (add.json!.interfaces as { name: string }[])[1]!.name;
    assert.match((await lab.inHost(['tc', 'qdisc', 'show', 'dev', hostVeth])).stdout, /tbf .*rate 8Mbit/);
    assert.equal((await execPlugin(lab, '/usr/lib/cni/bandwidth', env('DEL', 'bw1', ns), JSON.stringify({ ...bw, prevResult: b.json }))).code, 0);
    assert.equal((await call(env('DEL', 'bw1', ns), conf({ prevResult: b.json }))).code, 0);
    assert.equal(await hostLinks(), 0);
  });

  it('DEL is idempotent, and complete with the netns gone, CNI_NETNS empty, or no runtimeConfig', async () => {
    const withPorts = (p: number) => conf({ runtimeConfig: { portMappings: [{ hostPort: p, containerPort: 80, protocol: 'udp' }] } });
    const a = newNetns();
    assert.equal((await call(env('ADD', 'del-a', a), withPorts(9001))).code, 0);
    assert.equal((await call(env('DEL', 'del-a', a), withPorts(9001))).code, 0);
    assert.equal((await call(env('DEL', 'del-a', a), withPorts(9001))).code, 0, 'second DEL succeeds');

    // The netns is gone and the runtime sends no CNI_NETNS (containerd's ctr does this).
    const b = newNetns();
    assert.equal((await call(env('ADD', 'del-b', b), withPorts(9002))).code, 0);
    execFileSync('ip', ['netns', 'del', b.split('/').pop()!]);
    const gone = await call(env('DEL', 'del-b', ''), withPorts(9002));
    assert.equal(gone.code, 0, gone.stdout);

    // No runtimeConfig on DEL: the ports are found from the store (portmap leaks its chain here).
    const c = newNetns();
    assert.equal((await call(env('ADD', 'del-c', c), withPorts(9003))).code, 0);
    assert.equal((await call(env('DEL', 'del-c', c), conf())).code, 0);

    const s = readStore(lab);
    assert.deepEqual(s.sandboxes.filter((x) => String(x.name).startsWith('cni-del')), []);
    assert.deepEqual(s.ports, []);
    const maps = await nftMaps(lab);
    assert.deepEqual([...maps.values()].flat(), [], 'no port map elements left');
    assert.equal(await hostLinks(), 0, 'no host veths left');
    assert.deepEqual(await checkConsistent(lab), []);
  });

  it('GC removes every attachment not in cni.dev/valid-attachments and frees its address', async () => {
    const ids = ['gc-a', 'gc-b', 'gc-c'];
    const nss = ids.map(() => newNetns());
    for (const [i, id] of ids.entries()) assert.equal((await call(env('ADD', id, nss[i]!), conf())).code, 0);
    const gcConf = conf({ cniVersion: '1.1.0', 'cni.dev/valid-attachments': [{ containerID: 'gc-a', ifname: 'eth0' }] });
    const r = await call({ CNI_COMMAND: 'GC', CNI_PATH: '/usr/lib/cni' }, gcConf);
    assert.equal(r.code, 0, r.stdout);
    const s = readStore(lab);
    assert.deepEqual(s.sandboxes.map((x) => String(x.name)).filter((n) => n.startsWith('cni-gc')), ['cni-gc-a']);
    assert.equal(await hostLinks(), 1);
    assert.doesNotMatch(inNs(nss[1]!, ['ip', '-o', 'link']), /eth0/, 'the container side is gone too');
    // An empty list removes the rest.
    assert.equal((await call({ CNI_COMMAND: 'GC', CNI_PATH: '/usr/lib/cni' }, conf({ cniVersion: '1.1.0', 'cni.dev/valid-attachments': [] }))).code, 0);
    assert.equal(await hostLinks(), 0);
    assert.deepEqual(readStore(lab).addresses, []);
  });

  it('STATUS: starts the daemon when it is down, 50 when ADD cannot work, 51 when attachments lost connectivity', async () => {
    const status = (c: Json, extra: Record<string, string> = {}) => call({ CNI_COMMAND: 'STATUS', CNI_PATH: '/usr/lib/cni' }, { ...c, cniVersion: '1.1.0' }, extra);
    await lab.ctnetOk(['daemon', 'stop']);
    assert.equal((await daemon()).code, 3);
    const up = await status(conf());
    assert.equal(up.code, 0, up.stdout);
    assert.equal((await daemon()).code, 0, 'the first call started ctnetd');
    assert.equal((await status(conf())).code, 0, 'and it answers');

    const missing = await status(conf({ network: 'nope' }));
    assert.equal(missing.json!.code, 50);
    assert.match(String(missing.json!.msg), /network nope is not a ctnet network/);

    // ctnetd down and cannot start: 50 for STATUS, 11 for ADD.
    await lab.ctnetOk(['daemon', 'stop']);
    const cannot = await status(conf({ ctnetBin: '/nonexistent/ctnet' }));
    assert.equal(cannot.json!.code, 50);
    assert.match(String(cannot.json!.msg), /cannot be started: \/nonexistent\/ctnet/);
    const ns = newNetns();
    const add = await call(env('ADD', 'nodaemon', ns), conf({ ctnetBin: '/nonexistent/ctnet' }));
    assert.equal(add.json!.code, 11);

    // The bridge vanishes under an attachment: limited connectivity until gc.
    assert.equal((await call(env('ADD', 'st1', ns), conf())).code, 0);
    await lab.inHost(['ip', 'link', 'del', 'ctbr-cnet']);
    const broken = await status(conf());
    assert.equal(broken.json!.code, 51, broken.stdout);
    await lab.ctnetOk(['gc']);
    assert.equal((await status(conf())).code, 0);
    assert.equal((await call(env('DEL', 'st1', ns), conf())).code, 0);
  });

  it('20 parallel ADDs and DELs never share an address or corrupt the state', async () => {
    const ids = Array.from({ length: 20 }, (_, i) => `par-${i}`);
    const nss = ids.map(() => newNetns());
    const adds = await Promise.all(ids.map((id, i) => call(env('ADD', id, nss[i]!), conf())));
    for (const a of adds) assert.equal(a.code, 0, a.stdout);
    const v4 = adds.map((a) => (a.json!.ips as { address: string }[])[0]!.address);
    assert.equal(new Set(v4).size, 20, `addresses are unique: ${v4.join(' ')}`);
    assert.deepEqual(await checkConsistent(lab), []);
    const dels = await Promise.all(ids.map((id, i) => call(env('DEL', id, nss[i]!), conf())));
    for (const d of dels) assert.equal(d.code, 0, d.stdout);
    assert.equal(await hostLinks(), 0);
    assert.deepEqual(readStore(lab).addresses, []);
  });

  it('survives a client killed mid-request; what the request did is then DELeted cleanly', async () => {
    const ns = newNetns();
    const child = spawn('nsenter', [`--net=/run/netns/${lab.host}`, plugin], {
      env: { PATH: process.env.PATH, ...env('ADD', 'killed', ns) } as NodeJS.ProcessEnv,
    });
    const closed = new Promise((r) => child.on('close', r)); // before the kill: a fast ADD may finish first
    child.stdin.end(JSON.stringify(conf()));
    await new Promise((r) => setTimeout(r, 5)); // an ADD through ctnetd takes ~15 ms
    child.kill('SIGKILL');
    await closed;
    const st = await call({ CNI_COMMAND: 'STATUS', CNI_PATH: '/usr/lib/cni' }, conf({ cniVersion: '1.1.0' }));
    assert.equal(st.code, 0, 'ctnetd still answers');
    assert.equal((await call(env('DEL', 'killed', ns), conf())).code, 0);
    assert.equal(await hostLinks(), 0);
    assert.deepEqual(await checkConsistent(lab), []);
  });

  describe('bad input: the right code, a message that says what to fix, and no change', () => {
    const cases: { name: string; env?: Partial<CniEnv>; conf?: Json; raw?: string; code: number; msg: RegExp }[] = [
      { name: 'malformed JSON', raw: '{"cniVersion": "1.0.0", "name": ', code: 6, msg: /not valid JSON/ },
      { name: 'unsupported version', conf: { cniVersion: '9.9.9' }, code: 1, msg: /cniVersion 9\.9\.9 is not supported/ },
      { name: 'ipam section', conf: { ipam: { type: 'host-local' } }, code: 2, msg: /ipam=\{"type":"host-local"\} cannot be honoured/ },
      { name: 'port protocol', conf: { runtimeConfig: { portMappings: [{ hostPort: 1, containerPort: 1, protocol: 'icmp' }] } }, code: 2, msg: /protocol="icmp" cannot be honoured/ },
      { name: 'ipMasq false on a masquerading network', conf: { ipMasq: false }, code: 2, msg: /ipMasq=false cannot be honoured: network cnet masquerades/ },
      { name: 'mtu the network does not have', conf: { mtu: 1400 }, code: 2, msg: /mtu=1400 cannot be honoured: network cnet has MTU 1500/ },
      { name: 'missing env', env: { CNI_NETNS: undefined, CNI_CONTAINERID: undefined }, code: 4, msg: /needs CNI_CONTAINERID, CNI_NETNS, which are not set/ },
      { name: 'no command', env: { CNI_COMMAND: 'FROB' }, code: 4, msg: /CNI_COMMAND=FROB is not a CNI command/ },
      { name: 'netns that is a plain file', env: { CNI_NETNS: '/etc/hostname' }, code: 4, msg: /\/etc\/hostname is not a network namespace/ },
      { name: 'netns that does not exist', env: { CNI_NETNS: '/run/netns/nope-nope' }, code: 3, msg: /does not exist/ },
      { name: 'unknown network', conf: { network: 'nope' }, code: 7, msg: /network nope is not a ctnet network/ },
      { name: 'bad MAC', conf: { runtimeConfig: { mac: 'zz' } }, code: 7, msg: /runtimeConfig\.mac="zz": MAC address "zz" is malformed/ },
      { name: 'address outside the subnets', conf: { runtimeConfig: { ips: ['10.1.2.3/24'] } }, code: 7, msg: /10\.1\.2\.3 is outside the subnets/ },
      { name: 'ports on an internal network', conf: { network: 'closed', runtimeConfig: { portMappings: [{ hostPort: 7, containerPort: 7 }] } }, code: 7, msg: /no network with a way out/ },
    ];
    let ns: string;
    before(() => {
      ns = newNetns();
    });
    for (const c of cases) {
      it(`${c.name}: code ${c.code}`, async () => {
        const before = await snapshot();
        const e = { ...env('ADD', 'bad1', ns), ...c.env } as CniEnv;
        const r = await execPlugin(lab, plugin, e, c.raw ?? JSON.stringify(conf(c.conf)));
        assert.equal(r.code, 1);
        assert.equal(r.json?.code, c.code, r.stdout);
        assert.match(String(r.json!.msg), c.msg);
        assert.ok(String(r.json!.details).length > 0, 'details say what to do');
        assert.equal(await snapshot(), before);
      });
    }

    it('an interface name that exists in the netns already: code 4, and no change', async () => {
      inNs(ns, ['ip', 'link', 'add', 'eth0', 'type', 'veth', 'peer', 'name', 'other0']);
      const before = await snapshot();
      const r = await call(env('ADD', 'dup-if', ns), conf());
      assert.equal(r.json?.code, 4, r.stdout);
      assert.match(String(r.json!.msg), /CNI_IFNAME eth0 exists already/);
      assert.equal(await snapshot(), before);
      inNs(ns, ['ip', 'link', 'del', 'eth0']);
    });

    it('a failed second attachment leaves the first as it was, with none of its ports or labels recorded', async () => {
      const two = newNetns();
      assert.equal((await call(env('ADD', 'half', two, 'eth0'), conf())).code, 0);
      inNs(two, ['ip', 'link', 'add', 'eth1', 'type', 'veth', 'peer', 'name', 'other1']);
      const before = await snapshot();
      const r = await call(env('ADD', 'half', two, 'eth1'),
        conf({ name: 'cnet2', network: 'cnet2', runtimeConfig: { portMappings: [{ hostPort: 9200, containerPort: 80 }] }, args: { cni: { labels: [{ key: 'tier', value: 'x' }] } } }));
      assert.equal(r.json?.code, 4, r.stdout);
      assert.equal(await snapshot(), before);
      assert.equal((await call(env('DEL', 'half', two, 'eth0'), conf())).code, 0);
    });

    it('a second ADD of the same attachment: code 4', async () => {
      assert.equal((await call(env('ADD', 'twice', ns), conf())).code, 0);
      const r = await call(env('ADD', 'twice', ns, 'eth0'), conf());
      assert.equal(r.json?.code, 4);
      assert.match(String(r.json!.msg), /already has eth0 on network cnet/);
      assert.equal((await call(env('DEL', 'twice', ns), conf())).code, 0);
    });

    it('unknown keys are ignored with a warning on stderr', async () => {
      const r = await call(env('ADD', 'warn', ns), conf({ someRuntimeKey: 1 }));
      assert.equal(r.code, 0, r.stdout);
      assert.match(r.stderr, /ignoring unknown configuration key "someRuntimeKey"/);
      assert.equal((await call(env('DEL', 'warn', ns), conf())).code, 0);
    });

    it('the state locked by another process too long: code 11 (try again later)', async () => {
      // A daemon that waits only 300 ms for the store's write lock.
      await lab.ctnetOk(['daemon', 'stop']);
      const st = await call({ CNI_COMMAND: 'STATUS', CNI_PATH: '/usr/lib/cni' }, conf({ cniVersion: '1.1.0' }), { CTNET_BUSY_TIMEOUT_MS: '300' });
      assert.equal(st.code, 0, st.stdout);
      const db = new DatabaseSync(join(lab.stateDir, 'ctnet.db'));
      db.exec('BEGIN IMMEDIATE');
      try {
        const r = await call(env('ADD', 'locked', ns), conf());
        assert.equal(r.json?.code, 11, r.stdout);
        assert.match(String(r.json!.details), /try again/);
      } finally {
        db.exec('ROLLBACK');
        db.close();
      }
      await lab.ctnetOk(['daemon', 'stop']); // the next call starts one with the normal timeout
      assert.equal((await call(env('DEL', 'locked', ns), conf())).code, 0);
    });
  });

  it('ctnetd keeps its log bounded: past the limit it keeps one older copy and starts again', async () => {
    await lab.ctnetOk(['daemon', 'stop']);
    const status = () => call({ CNI_COMMAND: 'STATUS', CNI_PATH: '/usr/lib/cni' }, conf({ cniVersion: '1.1.0' }), { CTNET_LOG_MAX_BYTES: '1500' });
    for (let i = 0; i < 30; i++) assert.equal((await status()).code, 0);
    const { statSync } = await import('node:fs');
    assert.ok(statSync(join(lab.stateDir, 'ctnetd.log')).size < 1500 + 400, 'the log was cut');
    assert.ok(statSync(join(lab.stateDir, 'ctnetd.log.1')).size >= 1500, 'the older copy is kept');
    await lab.ctnetOk(['daemon', 'stop']); // the next test's calls start one with the default limit
  });

  it('`ctnet cni exec` runs the same handler without the daemon', async () => {
    const file = join(dir, 'exec.json');
    writeFileSync(file, JSON.stringify(conf({ cniVersion: '9.9.9' })));
    const r = await lab.inHost(['sh', '-c', `CNI_COMMAND=ADD CNI_CONTAINERID=x CNI_NETNS=/run/netns/${lab.host} CNI_IFNAME=eth9 CNI_PATH=/usr/lib/cni CTNET_STATE_DIR=${lab.stateDir} ${join(process.cwd(), 'bin', 'ctnet')} cni exec < ${file}`]);
    assert.equal(r.code, 1);
    assert.equal((JSON.parse(r.stdout) as Json).code, 1);
  });

  it('a warm ctnetd reports the bridge MAC of a network removed and made again under the same name', async () => {
    // Issue 11: ctnetd cached bridge MACs for its whole life, so after `network rm` + `network create`
    // an ADD answered with the old bridge's MAC.
    await lab.ctnetOk(['network', 'create', 'again', '--subnet', '10.93.0.0/24']);
    const macOf = async () => (JSON.parse((await lab.inHost(['ip', '-j', 'link', 'show', 'ctbr-again'])).stdout) as { address: string }[])[0]!.address;
    const bridgeIn = (r: { json?: Json }) => ((r.json!.interfaces as { name: string; mac?: string }[]).find((i) => i.name === 'ctbr-again'))?.mac;
    const again = conf({ name: 'again', network: 'again' });
    const ns1 = newNetns();
    const first = await call(env('ADD', 'mac1', ns1), again);
    assert.equal(first.code, 0, first.stdout);
    assert.equal(bridgeIn(first), await macOf());
    assert.equal((await call(env('DEL', 'mac1', ns1), again)).code, 0);
    await lab.ctnetOk(['network', 'rm', 'again']);
    await lab.ctnetOk(['network', 'create', 'again', '--subnet', '10.93.0.0/24']);
    assert.equal((await daemon()).code, 0, 'ctnetd is still the warm one');
    const ns2 = newNetns();
    const second = await call(env('ADD', 'mac2', ns2), again);
    assert.equal(second.code, 0, second.stdout);
    assert.notEqual(bridgeIn(second), bridgeIn(first), 'a new bridge has a new MAC');
    assert.equal(bridgeIn(second), await macOf(), 'the result carries the bridge\'s MAC as it is now');
    assert.equal((await call(env('DEL', 'mac2', ns2), again)).code, 0);
    await lab.ctnetOk(['network', 'rm', 'again']);
  });

  it('a state database deleted or replaced under a running ctnetd is refused, never taken for "nothing exists"', async () => {
    // Issue 12, point 6: ctnetd went on writing to the deleted file, and a new empty store said
    // nothing existed.
    const ns = newNetns();
    assert.equal((await call(env('ADD', 'inode1', ns), conf())).code, 0); // a warm ctnetd, and an attachment it knows
    const db = join(lab.stateDir, 'ctnet.db');
    const { renameSync } = await import('node:fs');
    for (const f of ['', '-wal', '-shm']) renameSync(db + f, `${db}.moved${f}`);
    try {
      const r = await call(env('ADD', 'inode2', newNetns()), conf());
      assert.equal(r.json?.code, 11, r.stdout);
      assert.match(String(r.json!.msg), /state database .*ctnet\.db was deleted while ctnetd ran: nothing was changed/);
      for (let i = 0; i < 50 && (await daemon()).code === 0; i++) await new Promise((res) => setTimeout(res, 100));
      assert.equal((await daemon()).code, 3, 'ctnetd stopped');
    } finally {
      await lab.ctnetOk(['daemon', 'stop']);
      for (const f of ['', '-wal', '-shm']) {
        try {
          renameSync(`${db}.moved${f}`, db + f);
        } catch {
          // -wal/-shm may be gone after a checkpoint
        }
      }
    }
    assert.equal((await call(env('DEL', 'inode1', ns), conf())).code, 0, 'with the file back, everything it records is served again');
    assert.deepEqual(readStore(lab).cni.filter((c) => c.container_id === 'inode1'), []);
  });
});
