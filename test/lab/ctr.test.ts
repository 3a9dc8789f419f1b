// containerd's own client, `ctr run --cni`, on a ctnet network: ctr (not containerd) execs the CNI
// plugin, with CNI_NETNS=/proc/PID/ns/net at start, DEL with an empty CNI_NETNS after a foreground
// `--rm` task exits, and no DEL at all for a detached task that is killed. Each way must leave
// nothing behind. containerd and ctr run in a lab host (test/lab/containerd.ts). Needs containerd,
// runc and busybox-static (scripts/install.sh).
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Lab, UPLINK } from '../../src/lab/lab.ts';
import { Containerd } from './containerd.ts';
import { busyboxRootfs, INDEX_HTML, startRegistry, tarOf, writeImages } from './images.ts';

interface Row {
  name: string;
  addresses: string[];
  netns: string;
}

describe('ctr run --cni on a ctnet network', () => {
  let lab: Lab;
  let tmp: string;
  let ctd: Containerd;
  let registry: { host: string; stop(): void } | undefined;
  let image: string;
  let cni: { confDir: string; binDir: string };
  let bridge: string;

  const rows = async (): Promise<Row[]> => JSON.parse(await lab.ctnetOk(['ls', '--json'])) as Row[];
  const links = async () => (await lab.inHost(['ip', '-o', 'link'])).stdout.split('\n').filter(Boolean).map((l) => l.split(': ')[1]!.split('@')[0]!).sort();
  const onlyBridge = () => ['lo', bridge, 'uplink0'].sort();

  before(async () => {
    lab = await Lab.create();
    tmp = mkdtempSync(join(tmpdir(), `ctctr-${lab.id}-`));
    cni = { binDir: join(tmp, 'cni', 'bin'), confDir: join(tmp, 'cni', 'conf') };
    await lab.ctnetOk(['network', 'create', 'ctrnet', '--subnet', '10.78.0.0/24']);
    await lab.ctnetOk(['cni', 'install', '--bin-dir', cni.binDir, '--conf-dir', cni.confDir, '--network', 'ctrnet']);
    symlinkSync('/usr/lib/cni/loopback', join(cni.binDir, 'loopback')); // for containerd's CRI plugin, which starts too
    const net = JSON.parse(await lab.ctnetOk(['network', 'inspect', 'ctrnet', '--json'])) as { bridge: string | { ifname: string } };
    bridge = typeof net.bridge === 'string' ? net.bridge : net.bridge.ifname;
    await busyboxRootfs(join(tmp, 'rootfs'));
    await tarOf(join(tmp, 'rootfs'), join(tmp, 'layer.tar'));
    writeImages(join(tmp, 'registry'), join(tmp, 'layer.tar'), [
      { ref: 'ctnet/busybox:1', cmd: ['sh'] },
      { ref: 'ctnet/pause:1', entrypoint: ['/bin/sleep', '2147483647'] },
    ]);
    registry = await startRegistry(lab, join(tmp, 'registry'));
    image = `${registry.host}/ctnet/busybox:1`;
    ctd = await Containerd.start(lab, { cniBinDir: cni.binDir, cniConfDir: cni.confDir, sandboxImage: `${registry.host}/ctnet/pause:1` });
    await ctd.ctrOk(['images', 'pull', '--plain-http', image]);
    lab.serveInWorld('world', { http: 8080 });
  });

  after(async () => {
    try {
      await ctd?.stop();
    } finally {
      registry?.stop();
      await lab?.destroy();
      if (tmp) rmSync(tmp, { recursive: true, force: true });
    }
  });

  it('a foreground --rm task gets an address on the network, reaches the world (masqueraded), and its DEL (empty CNI_NETNS) removes everything', async () => {
    const r = await ctd.ctr(['run', '--cni', '--rm', image, 'fg1', 'sh', '-c',
      `ip -o -4 addr show eth0; timeout 5 wget -qO- http://${UPLINK.remote4}:8080/`], { cni });
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /inet 10\.78\.0\.\d+\/24 brd 10\.78\.0\.255 /);
    const answer = JSON.parse(r.stdout.split('\n').find((l) => l.startsWith('{'))!) as { server: string; client: string };
    assert.deepEqual(answer, { server: 'world', client: UPLINK.host4 }, 'the world saw the lab host\'s address');
    assert.deepEqual(await rows(), [], 'ctnet has no record of it');
    assert.deepEqual(await links(), onlyBridge(), 'no veth left');
    assert.match(await lab.ctnetOk(['gc']), /agree/);
  });

  it('a detached task is reached from the lab host; killed without a DEL, ctnet gc removes it and frees its address', async () => {
    await ctd.ctrOk(['run', '--cni', '-d', image, 'bg1', 'httpd', '-f', '-p', '80', '-h', '/www'], { cni });
    const [row] = await rows();
    assert.ok(row, 'ctnet ls shows the detached task');
    assert.match(row.netns, /^\/proc\/\d+\/ns\/net$/, 'ctr gave /proc/PID/ns/net');
    const ip = row.addresses[0]!;
    let body: string | undefined;
    for (let i = 0; i < 50 && body === undefined; i++) {
      const p = await lab.inHost(Lab.probeArgv('http', ip, 80));
      if (p.code === 0) body = p.stdout;
      else await new Promise((res) => setTimeout(res, 100));
    }
    assert.equal(body, INDEX_HTML, `the lab host reaches ${ip}:80`);

    await ctd.ctrOk(['tasks', 'kill', '-s', 'SIGKILL', 'bg1']);
    for (let i = 0; i < 100 && (await ctd.ctr(['tasks', 'ls', '-q'])).stdout.includes('bg1'); i++) {
      await ctd.ctr(['tasks', 'delete', 'bg1']);
      await new Promise((res) => setTimeout(res, 100));
    }
    await ctd.ctrOk(['containers', 'delete', 'bg1']);
    assert.match(await lab.ctnetOk(['inspect', row.name]), /NETNS MISSING/, 'no DEL came: ctnet still has it, and says its netns is gone');
    assert.match(await lab.ctnetOk(['gc']), new RegExp(`removed sandbox ${row.name}: its network namespace .* is gone \\(its addresses are free again\\)`));
    assert.deepEqual(await rows(), []);
    assert.deepEqual(await links(), onlyBridge(), 'no veth left');
    assert.match(await lab.ctnetOk(['gc']), /agree/, 'a second gc finds nothing');
  });

  it('stopping containerd leaves nothing of it behind', async () => {
    const dir = ctd.dir;
    await ctd.stop();
    assert.equal(existsSync(dir), false);
    assert.deepEqual(await rows(), []);
  });
});
