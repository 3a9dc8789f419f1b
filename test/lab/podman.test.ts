// ctnet's CNI plugin under real podman (4.3, CNI backend), next to the same scenario on the two
// peers podman ships with: the reference plugins (bridge + host-local + portmap) and netavark. Each
// describe has its own lab; podman runs inside the lab host (test/lab/podman.ts). The peers prove
// the harness and the scenario; the ctnet part also checks ctnet's own records and what it leaves.
// Needs podman, runc, conmon, busybox-static, netavark: scripts/install.sh. Missing ones fail.
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Lab, UPLINK } from '../../src/lab/lab.ts';
import { IMAGE, INDEX_HTML, Podman, REFERENCE_PLUGINS, referenceConflist, type PodmanOptions } from './podman.ts';

const HTTPD = ['httpd', '-f', '-p', '80', '-h', '/www'];

/** What one describe shares between its steps. */
interface Ctx {
  lab: Lab;
  pm: Podman;
  tmp: string;
  /** Container name -> its address and netns file, read while it runs. */
  readonly seen: Map<string, { ip: string; netns: string }>;
}

interface Setup {
  readonly network: string;
  /** The bridge the backend puts the containers on; it may stay after they are gone. */
  bridge(c: Ctx): Promise<string>;
  /** Makes what the network needs before podman starts; returns the harness options that reach it. */
  prepare(lab: Lab, tmp: string): Promise<PodmanOptions>;
  /** Makes the network with podman itself, if the backend wants that. */
  create?: (pm: Podman) => Promise<void>;
  /** Registers network-specific `it`s to run while both containers run. */
  whileRunning?: (c: Ctx) => void;
  /** Registers `it`s to run after both containers are stopped and removed. */
  afterRemoval?: (c: Ctx) => void;
}

const linkNames = async (lab: Lab): Promise<string[]> =>
  (await lab.inHost(['ip', '-o', 'link'])).stdout.split('\n').filter(Boolean).map((l) => l.split(': ')[1]!.split('@')[0]!);

/** An HTTP GET of http://HOST:PORT/ from somewhere: the body, or undefined when nothing answered. */
type Get = (host: string, port: number) => Promise<string | undefined>;

/**
 * From inside a container: busybox wget, bounded by busybox timeout. Not wget -T: Debian 12's
 * busybox-static 1.35 wget segfaults with -T whenever the connection fails (refused, unreachable).
 */
const fromContainer = (pm: Podman, name: string): Get => async (host, port) => {
  const r = await pm.podman(['exec', name, 'timeout', '3', 'wget', '-qO-', `http://${host}:${port}/`]);
  return r.code === 0 ? r.stdout : undefined;
};

/** From the lab host or the world: the lab's netcheck probe (busybox wget has the same crash there). */
const fromNetns = (run: (argv: readonly string[]) => Promise<{ code: number; stdout: string }>): Get => async (host, port) => {
  const r = await run(Lab.probeArgv('http', host, port, 2000));
  return r.code === 0 ? r.stdout : undefined;
};

/** Retries get for up to 10 s (httpd needs a moment after `podman run -d` returns). */
async function getEventually(get: Get, host: string, port = 80): Promise<string | undefined> {
  let body: string | undefined;
  await Podman.until(async () => (body = await get(host, port)) !== undefined);
  return body;
}

/**
 * The scenario: containers a (publishing 8080:80) and b, both serving "hello" with busybox httpd
 * on NETWORK; they reach each other, the lab host reaches 8080 on 127.0.0.1 and on its uplink
 * address, the world on the uplink address; `podman stop` + `podman rm` leave no veth and no
 * netns file; the harness and the lab leave nothing either.
 */
function podmanScenario(title: string, s: Setup): void {
  describe(title, () => {
    const c = { seen: new Map() } as Ctx;
    const inHost = fromNetns((argv) => c.lab.inHost(argv));
    const inWorld = fromNetns((argv) => c.lab.inWorld(argv));

    before(async () => {
      c.lab = await Lab.create();
      c.tmp = mkdtempSync(join(tmpdir(), `ctpodman-test-${c.lab.id}-`));
      c.pm = await Podman.create(c.lab, await s.prepare(c.lab, c.tmp));
      await s.create?.(c.pm);
      await c.pm.ok(['run', '-d', '--name', 'a', '--network', s.network, '-p', '8080:80', IMAGE, ...HTTPD]);
      await c.pm.ok(['run', '-d', '--name', 'b', '--network', s.network, IMAGE, ...HTTPD]);
      for (const name of ['a', 'b']) c.seen.set(name, { ip: await c.pm.ipOf(name, s.network), netns: await c.pm.netnsOf(name) });
    });
    after(async () => {
      // Podman first: its teardown runs in the lab host, which must still exist.
      try {
        await c.pm?.cleanup();
      } finally {
        await c.lab?.destroy();
        if (c.tmp) rmSync(c.tmp, { recursive: true, force: true });
      }
    });

    it('each container got an address on the network and a netns of its own', () => {
      const [a, b] = [c.seen.get('a')!, c.seen.get('b')!];
      assert.notEqual(a.ip, b.ip);
      assert.match(a.netns, /^\/run\/netns\/netns-/);
      assert.match(b.netns, /^\/run\/netns\/netns-/);
    });

    it('the two containers reach each other', async () => {
      assert.equal(await getEventually(fromContainer(c.pm, 'b'), c.seen.get('a')!.ip), INDEX_HTML);
      assert.equal(await getEventually(fromContainer(c.pm, 'a'), c.seen.get('b')!.ip), INDEX_HTML);
    });

    it('the lab host reaches -p 8080:80 on 127.0.0.1 and on its uplink address; the world on the uplink address', async () => {
      assert.equal(await getEventually(inHost, '127.0.0.1', 8080), INDEX_HTML, '127.0.0.1:8080 from the lab host');
      assert.equal(await getEventually(inHost, UPLINK.host4, 8080), INDEX_HTML, `${UPLINK.host4}:8080 from the lab host`);
      assert.equal(await getEventually(inWorld, UPLINK.host4, 8080), INDEX_HTML, `${UPLINK.host4}:8080 from the world`);
    });

    s.whileRunning?.(c);

    it('podman stop + podman rm remove every veth and netns file the containers had', async () => {
      await c.pm.ok(['stop', '--time', '0', 'a', 'b']);
      await c.pm.ok(['rm', 'a', 'b']);
      const bridge = await s.bridge(c);
      assert.deepEqual((await linkNames(c.lab)).filter((l) => !['lo', 'uplink0', bridge].includes(l)), [], 'links left in the lab host');
      for (const [name, { netns }] of c.seen) assert.equal(existsSync(netns), false, `${name}'s ${netns}`);
    });

    s.afterRemoval?.(c);

    it('after the harness cleanup and the lab\'s destroy, no netns file podman made remains', async () => {
      await c.pm.cleanup();
      await c.lab.destroy();
      for (const [name, { netns }] of c.seen) assert.equal(existsSync(netns), false, `${name}'s ${netns}`);
      assert.equal(existsSync(c.pm.dir), false, 'the harness temp dir');
      assert.equal(existsSync(`/run/netns/${c.lab.host}`), false);
    });
  });
}

podmanScenario('podman with the reference plugins (bridge + host-local + portmap), CNI backend', {
  network: 'refnet',
  bridge: async () => 'cni-ref0',
  async prepare(_lab, tmp) {
    const conf = join(tmp, 'conf');
    mkdirSync(conf);
    writeFileSync(join(conf, 'refnet.conflist'),
      JSON.stringify(referenceConflist({ name: 'refnet', subnet: '10.98.0.0/24', bridge: 'cni-ref0', dataDir: join(tmp, 'ipam') })));
    return { backend: 'cni', cniPluginDirs: [REFERENCE_PLUGINS], networkConfigDir: conf };
  },
});

podmanScenario('podman with netavark', {
  network: 'navnet',
  bridge: async (c) => {
    const v = JSON.parse(await c.pm.ok(['network', 'inspect', 'navnet'])) as { network_interface: string }[];
    return v[0]!.network_interface;
  },
  prepare: async (_lab, tmp) => ({ backend: 'netavark', networkConfigDir: join(tmp, 'conf') }),
  create: (pm) => pm.createNetwork('navnet', '10.99.0.0/24'),
});

podmanScenario('podman with ctnet\'s CNI plugin (ctnet cni install)', {
  network: 'pnet',
  bridge: async (c) => {
    const v = JSON.parse(await c.lab.ctnetOk(['network', 'inspect', 'pnet', '--json'])) as { bridge: string | { ifname: string } };
    return typeof v.bridge === 'string' ? v.bridge : v.bridge.ifname;
  },
  async prepare(lab, tmp) {
    await lab.ctnetOk(['network', 'create', 'pnet', '--subnet', '10.97.0.0/24']);
    const bin = join(tmp, 'bin');
    const conf = join(tmp, 'conf');
    await lab.ctnetOk(['cni', 'install', '--bin-dir', bin, '--conf-dir', conf, '--network', 'pnet']);
    assert.ok(existsSync(join(bin, 'ctnet')), `ctnet cni install wrote ${bin}/ctnet`);
    assert.ok(existsSync(join(conf, 'pnet.conflist')), `ctnet cni install wrote ${conf}/pnet.conflist`);
    return { backend: 'cni', cniPluginDirs: [bin, REFERENCE_PLUGINS], networkConfigDir: conf };
  },
  whileRunning(c) {
    it('ctnet ls shows both containers on pnet, with podman\'s addresses and netns files', async () => {
      const rows = JSON.parse(await c.lab.ctnetOk(['ls', '--json'])) as
        { name: string; networks: string[]; addresses: string[]; netns: string; labels: Record<string, string> }[];
      for (const [name, { ip, netns }] of c.seen) {
        const row = rows.find((r) => r.addresses.includes(ip));
        assert.ok(row, `a ctnet sandbox with ${name}'s address ${ip} (ctnet ls: ${JSON.stringify(rows)})`);
        assert.deepEqual(row.networks, ['pnet']);
        assert.equal(row.netns, netns);
        assert.equal(row.labels['io.kubernetes.pod.name'], name, 'podman\'s container name (K8S_POD_NAME) is a label');
      }
    });

    it('a container resolves the other by name: ctnetd\'s DNS, named by the CNI result, podman\'s aliases', async () => {
      const conf = await c.pm.ok(['exec', 'b', 'cat', '/etc/resolv.conf']);
      assert.match(conf, /^nameserver 10\.97\.0\.1$/m, `podman wrote the CNI result's nameserver: ${conf}`);
      const rows = JSON.parse(await c.lab.ctnetOk(['network', 'inspect', 'pnet', '--json'])) as { sandboxes: { addresses: string[]; aliases: string[] }[] };
      const a = rows.sandboxes.find((x) => x.addresses.includes(c.seen.get('a')!.ip));
      assert.ok(a?.aliases.includes('a'), `podman's aliases for a reached ctnet: ${JSON.stringify(rows.sandboxes)}`);
      for (const name of ['a', 'a.pnet']) {
        const r = await c.pm.podman(['exec', 'b', 'nslookup', name, '10.97.0.1']);
        assert.match(r.stdout, new RegExp(`Address:\\s+${c.seen.get('a')!.ip.replaceAll('.', '\\.')}`), `${name}: ${r.stdout}${r.stderr}`);
      }
    });
  },
  afterRemoval(c) {
    it('after the removal ctnet has no record of them and only its bridge remains', async () => {
      const rows = JSON.parse(await c.lab.ctnetOk(['ls', '--json'])) as { addresses: string[]; netns: string }[];
      const mine = [...c.seen.values()];
      assert.deepEqual(rows.filter((r) => mine.some((m) => r.addresses.includes(m.ip) || r.netns === m.netns)), []);
      const bridge = JSON.parse(await c.lab.ctnetOk(['network', 'inspect', 'pnet', '--json'])) as { bridge: string | { ifname: string } };
      const name = typeof bridge.bridge === 'string' ? bridge.bridge : bridge.bridge.ifname;
      assert.deepEqual((await linkNames(c.lab)).sort(), ['lo', name, 'uplink0'].sort());
    });
  },
});
