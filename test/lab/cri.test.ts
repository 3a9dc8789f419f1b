// Kubernetes' path, end to end: containerd 1.6's CRI plugin (what kubelet talks to) with ctnet as its
// only CNI network, driven by Kubernetes' CRI validation suite (critest v1.26.1: its Networking and
// PodSandbox specs) and by CRI calls of our own for what critest does not cover. containerd, the
// registry holding the busybox images, critest and the pods all live in one lab host. Needs
// containerd, runc, busybox-static (scripts/install.sh) and ../shared/tools/critest.
// CTNET_CRI_REFERENCE=1 runs critest against the reference plugins instead, for comparison.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Lab, ROOT, type Result } from '../../src/lab/lab.ts';
import { isNetnsFile, netnsKillAll } from '../../src/kernel/netns.ts';
import { Containerd, mountsUnder } from './containerd.ts';
import type { PodSpec } from './cri.ts';
import { busyboxRootfs, INDEX_HTML, startRegistry, tarOf, writeImages } from './images.ts';
import { REFERENCE_PLUGINS, referenceConflist } from './podman.ts';

/** critest v1.26.1 as ../shared/tools/critest ships it (its README says how it was built); CRITEST overrides. */
const CRITEST = process.env.CRITEST ?? join(ROOT, '..', 'shared', 'tools', 'critest', 'critest');
/** CTNET_CRI_REFERENCE=1: critest against the reference plugins (bridge, host-local, portmap) instead, for comparison. */
const REFERENCE = Boolean(process.env.CTNET_CRI_REFERENCE);
const ctnetOnly = { skip: REFERENCE && 'a reference run' };

interface Row {
  name: string;
  addresses: string[];
  netns: string;
  labels: Record<string, string>;
}

describe('containerd\'s CRI plugin (Kubernetes\' path) with ctnet as its only CNI network', () => {
  let lab: Lab;
  let tmp: string;
  let ctd: Containerd;
  let registry: { host: string; stop(): void } | undefined;
  let images: { busybox: string; web: string; pause: string };

  const rows = async (): Promise<Row[]> => JSON.parse(await lab.ctnetOk(['ls', '--json'])) as Row[];
  const sandboxOf = (podId: string) => `cni-${podId.slice(0, 12)}`;
  /** A pod running the web image (busybox httpd serving INDEX_HTML on 80); returns its ids and address. */
  const webPod = async (spec: PodSpec) => {
    const pod = await ctd.cri.runPodSandbox(spec);
    const container = await ctd.cri.createContainer(pod, spec, { name: 'web', image: images.web });
    await ctd.cri.startContainer(container);
    return { pod, container, ip: (await ctd.cri.podSandboxStatus(pod)).ip };
  };
  /** HTTP GET from inside a container (busybox wget, bounded by busybox timeout: wget -T crashes on failure). */
  const get = async (container: string, ip: string) => {
    const r = await ctd.cri.execSync(container, ['timeout', '3', 'wget', '-qO-', `http://${ip}/`], 10);
    return r.exitCode === 0 ? r.stdout : undefined;
  };
  const getEventually = async (container: string, ip: string) => {
    for (let i = 0; i < 50; i++) {
      const body = await get(container, ip);
      if (body !== undefined) return body;
      await new Promise((r) => setTimeout(r, 200));
    }
    return undefined;
  };
  const removePod = async (pod: string) => {
    await ctd.cri.stopPodSandbox(pod);
    await ctd.cri.removePodSandbox(pod);
  };

  before(async () => {
    assert.ok(existsSync(CRITEST), `critest is missing at ${CRITEST}: set CRITEST to its path`);
    lab = await Lab.create();
    tmp = mkdtempSync(join(tmpdir(), `ctcri-${lab.id}-`));
    const bin = join(tmp, 'cni', 'bin');
    const conf = join(tmp, 'cni', 'conf');
    await lab.ctnetOk(['network', 'create', 'k8s', '--subnet', '10.77.0.0/24']);
    await lab.ctnetOk(['cni', 'install', '--bin-dir', bin, '--conf-dir', conf, '--network', 'k8s']);
    // The CRI plugin always networks a pod's lo with the reference loopback plugin, besides the
    // conflist: it is not a network, so ctnet's conflist stays the only one.
    symlinkSync(join(REFERENCE_PLUGINS, 'loopback'), join(bin, 'loopback'));
    if (REFERENCE) {
      rmSync(join(conf, 'k8s.conflist'));
      for (const p of ['bridge', 'host-local', 'portmap']) symlinkSync(join(REFERENCE_PLUGINS, p), join(bin, p));
      writeFileSync(join(conf, 'k8s.conflist'), JSON.stringify(referenceConflist({ name: 'k8s', subnet: '10.76.0.0/24', bridge: 'cni-ref0', dataDir: join(tmp, 'ipam') })));
    }

    await busyboxRootfs(join(tmp, 'rootfs'));
    await tarOf(join(tmp, 'rootfs'), join(tmp, 'layer.tar'));
    writeImages(join(tmp, 'registry'), join(tmp, 'layer.tar'), [
      { ref: 'ctnet/busybox:1', cmd: ['sh'] },
      { ref: 'ctnet/pause:1', entrypoint: ['/bin/sleep', '2147483647'] },
      { ref: 'ctnet/web:1', cmd: ['httpd', '-f', '-p', '80', '-h', '/www'] },
    ]);
    registry = await startRegistry(lab, join(tmp, 'registry'));
    images = { busybox: `${registry.host}/ctnet/busybox:1`, web: `${registry.host}/ctnet/web:1`, pause: `${registry.host}/ctnet/pause:1` };
    ctd = await Containerd.start(lab, { cniBinDir: bin, cniConfDir: conf, sandboxImage: images.pause });
    await ctd.cri.pullImage(images.web);
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

  it('critest v1.26.1: every Networking and PodSandbox spec passes (9 of 9), and leaves no pod, attachment or netns', async () => {
    const imagesFile = join(tmp, 'critest-images.yaml');
    writeFileSync(imagesFile, `defaultTestContainerImage: ${images.busybox}\nwebServerTestImage: ${images.web}\n`);
    const endpoint = `unix://${ctd.socket}`;
    const r = await new Promise<Result>((resolve) => {
      execFile('nsenter', [`--net=/run/netns/${lab.host}`, CRITEST, '-runtime-endpoint', endpoint, '-image-endpoint', endpoint,
        '-test-images-file', imagesFile, '-ginkgo.focus', 'Networking|PodSandbox', '-ginkgo.no-color'],
      { timeout: 240_000, maxBuffer: 64 << 20 }, (err, stdout, stderr) =>
        resolve({ code: err ? (typeof err.code === 'number' ? err.code : 1) : 0, stdout, stderr }));
    });
    const out = r.stdout + r.stderr;
    const ran = /Ran (\d+) of \d+ Specs/.exec(out);
    const counts = /(\d+) Passed \| (\d+) Failed/.exec(out);
    assert.ok(ran && counts, `critest printed no summary (exit ${r.code}):\n${out.slice(-3000)}`);
    assert.deepEqual({ ran: Number(ran[1]), passed: Number(counts[1]), failed: Number(counts[2]) }, { ran: 9, passed: 9, failed: 0 },
      `critest:\n${out.split('\n').filter((l) => /\[FAIL\]|FAILED\]|Unexpected error/.test(l)).join('\n')}`);
    assert.equal(r.code, 0);
    assert.deepEqual(await ctd.cri.listPodSandboxes(), [], 'critest removed its pods');
    assert.deepEqual(await rows(), [], 'ctnet holds no attachment after critest');
    assert.deepEqual(mountsUnder(join(ctd.dir, 'state', 'io.containerd.grpc.v1.cri', 'netns')), [], 'no pod netns is left');
  });

  it('two pods in different namespaces reach each other by their addresses', ctnetOnly, async () => {
    const a = await webPod({ name: 'a', namespace: 'team-a' });
    const b = await webPod({ name: 'b', namespace: 'team-b' });
    try {
      assert.notEqual(a.ip, b.ip);
      assert.equal(await getEventually(a.container, b.ip), INDEX_HTML, 'a reaches b');
      assert.equal(await getEventually(b.container, a.ip), INDEX_HTML, 'b reaches a');
    } finally {
      await removePod(a.pod);
      await removePod(b.pod);
    }
    assert.deepEqual(await rows(), []);
  });

  it('K8S_POD_NAME and K8S_POD_NAMESPACE become labels that ctnet policy selects, also for a pod made after the rule', ctnetOnly, async () => {
    const a = await webPod({ name: 'a', namespace: 'team-a' });
    const b = await webPod({ name: 'b', namespace: 'team-b' });
    try {
      const row = (await rows()).find((r) => r.name === sandboxOf(a.pod));
      assert.ok(row, `ctnet ls shows ${sandboxOf(a.pod)}`);
      assert.equal(row.labels['io.kubernetes.pod.name'], 'a');
      assert.equal(row.labels['io.kubernetes.pod.namespace'], 'team-a');
      await lab.ctnetOk(['policy', 'deny', '--from', 'label:io.kubernetes.pod.namespace=team-c', '--to', 'label:io.kubernetes.pod.name=a', '--port', '80/tcp', '--name', 'no-c-to-a']);
      const c = await webPod({ name: 'c', namespace: 'team-c' });
      try {
        assert.equal(await getEventually(b.container, a.ip), INDEX_HTML, 'b reaches a (a serves)');
        assert.equal(await getEventually(c.container, b.ip), INDEX_HTML, 'c reaches b (no rule)');
        assert.equal(await get(c.container, a.ip), undefined, 'c does not reach a (the deny rule)');
        await lab.ctnetOk(['policy', 'rm', 'no-c-to-a']);
        assert.equal(await getEventually(c.container, a.ip), INDEX_HTML, 'c reaches a once the rule is gone');
      } finally {
        await removePod(c.pod);
      }
    } finally {
      await lab.ctnet(['policy', 'rm', 'no-c-to-a']);
      await removePod(a.pod);
      await removePod(b.pod);
    }
    assert.deepEqual(await rows(), []);
  });

  it('a pod whose network namespace vanished (its processes killed, its netns unmounted) is cleaned up by StopPodSandbox', ctnetOnly, async () => {
    const d = await webPod({ name: 'd', namespace: 'team-d' });
    const info = (await ctd.cri.podSandboxStatus(d.pod)).info as { runtimeSpec: { linux: { namespaces: { type: string; path?: string }[] } } };
    const netns = info.runtimeSpec.linux.namespaces.find((n) => n.type === 'network')!.path!;
    assert.ok(isNetnsFile(netns), `the pod's netns ${netns}`);
    assert.ok((await rows()).some((r) => r.name === sandboxOf(d.pod) && r.addresses.includes(d.ip)));
    // What a node crash or a lost mount looks like: nothing is in the namespace any more and its
    // file is gone, so the namespace itself is gone (and the veth with it), but nobody said DEL.
    netnsKillAll({ path: netns });
    await lab.inHost(['umount', netns]);
    rmSync(netns, { force: true });
    assert.match(await lab.ctnetOk(['inspect', sandboxOf(d.pod)]), /NETNS MISSING/);
    // containerd sends DEL with an empty CNI_NETNS for a closed namespace; ctnet finds the rest in its store.
    await ctd.cri.stopPodSandbox(d.pod);
    assert.deepEqual((await rows()).filter((r) => r.name === sandboxOf(d.pod)), [], 'StopPodSandbox removed the attachment');
    await ctd.cri.removePodSandbox(d.pod);
    // Its address is free again: the next pod may take it, and ctnet gc finds nothing to do.
    assert.match(await lab.ctnetOk(['gc']), /agree/);
  });

  it('after the pods: the lab host holds only ctnet\'s bridge; stopping containerd leaves no process, mount or directory', ctnetOnly, async () => {
    const net = JSON.parse(await lab.ctnetOk(['network', 'inspect', 'k8s', '--json'])) as { bridge: string | { ifname: string } };
    const bridge = typeof net.bridge === 'string' ? net.bridge : net.bridge.ifname;
    const links = (await lab.inHost(['ip', '-o', 'link'])).stdout.split('\n').filter(Boolean).map((l) => l.split(': ')[1]!.split('@')[0]!);
    assert.deepEqual(links.sort(), ['lo', bridge, 'uplink0'].sort(), 'no veth left');
    const dir = ctd.dir;
    await ctd.stop();
    assert.equal(existsSync(dir), false, 'containerd\'s temp dir');
    assert.deepEqual(mountsUnder(dir), []);
  });
});
