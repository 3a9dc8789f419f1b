// Pure logic of the CNI protocol: env and config parsing, results in each version, the wire format.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { CniError, decode, mergeResult, nameForDel, parseArgs, parseConfig, parseEnv, renderResult, withArgsClaims, type CniResult } from '../../src/cni/protocol.ts';
import { decodeReply, decodeRequest, encodeReply, encodeRequest } from '../../src/daemon/wire.ts';

const code = (fn: () => unknown, c: number, re: RegExp) =>
  assert.throws(fn, (e: unknown) => e instanceof CniError && e.code === c && re.test(e.message) && e.details.length > 0);
const base = { cniVersion: '1.0.0', name: 'net1', type: 'ctnet' };

describe('CNI environment', () => {
  it('names every missing variable for the command', () => {
    code(() => parseEnv({ CNI_COMMAND: 'ADD', CNI_PATH: '/x' }), 4, /needs CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME, which are not set/);
    code(() => parseEnv({ CNI_COMMAND: 'DEL', CNI_CONTAINERID: 'a', CNI_PATH: '/x' }), 4, /needs CNI_IFNAME, which is not set/);
    code(() => parseEnv({}), 4, /CNI_COMMAND is not set/);
    assert.equal(parseEnv({ CNI_COMMAND: 'VERSION' }).command, 'VERSION');
  });
  it('DEL may come without a netns; ADD may not; paths are absolute; ids and ifnames are checked', () => {
    assert.equal(parseEnv({ CNI_COMMAND: 'DEL', CNI_CONTAINERID: 'a', CNI_IFNAME: 'eth0', CNI_PATH: '/x' }).netns, '');
    code(() => parseEnv({ CNI_COMMAND: 'ADD', CNI_CONTAINERID: 'a', CNI_NETNS: 'rel', CNI_IFNAME: 'eth0', CNI_PATH: '/x' }), 4, /not an absolute path/);
    code(() => parseEnv({ CNI_COMMAND: 'ADD', CNI_CONTAINERID: 'a;b', CNI_NETNS: '/n', CNI_IFNAME: 'eth0', CNI_PATH: '/x' }), 4, /CNI_CONTAINERID/);
    code(() => parseEnv({ CNI_COMMAND: 'ADD', CNI_CONTAINERID: 'a', CNI_NETNS: '/n', CNI_IFNAME: 'x'.repeat(16), CNI_PATH: '/x' }), 4, /interface name/);
  });
  it('CNI_ARGS', () => {
    assert.deepEqual([...parseArgs('IgnoreUnknown=1;K8S_POD_NAME=web')], [['IgnoreUnknown', '1'], ['K8S_POD_NAME', 'web']]);
    code(() => parseArgs('novalue'), 4, /not KEY=VALUE/);
  });
});

describe('CNI configuration', () => {
  it('decodes JSON objects only (code 6)', () => {
    code(() => decode('{'), 6, /not valid JSON/);
    code(() => decode('[1]'), 6, /not a JSON object/);
  });
  it('parses capabilities and labels into typed values', () => {
    const { conf, warnings } = parseConfig({
      ...base, network: 'web', extra: 1,
      runtimeConfig: { portMappings: [{ hostPort: 8080, containerPort: 80, protocol: 'UDP', hostIP: '127.0.0.1' }], ips: ['10.1.0.5/24'], mac: '02-00-00-00-00-01', dns: { servers: ['1.1.1.1'] }, bandwidth: { ingressRate: 10_000_000, egressRate: 1_000_000, egressBurst: 800_000 } },
      args: { cni: { labels: [{ key: 'tier', value: 'web' }] } },
    }, 'ADD');
    assert.equal(conf.network, 'web');
    assert.deepEqual(conf.portMappings, [{ proto: 'udp', hostIp: '127.0.0.1', hostPort: 8080, containerPort: 80, count: 1 }]);
    assert.deepEqual(conf.ips.map((i) => i.text), ['10.1.0.5']);
    assert.equal(conf.mac, '02:00:00:00:00:01');
    assert.deepEqual(conf.labels, [{ key: 'tier', value: 'web' }]);
    assert.deepEqual(conf.dns, { nameservers: ['1.1.1.1'] });
    assert.deepEqual(conf.bandwidth, { rateIn: 10_000_000, rateOut: 1_000_000, burstIn: undefined, burstOut: 100_000 });
    assert.deepEqual(warnings, ['ignoring unknown configuration key "extra"']);
  });
  it('refuses a requested address with a prefix that is not one', () => {
    code(() => parseConfig({ ...base, runtimeConfig: { ips: ['10.1.0.5/33'] } }, 'ADD'), 7, /runtimeConfig\.ips\[0\].*\/33/);
    code(() => parseConfig({ ...base, runtimeConfig: { ips: ['fd00::5/129'] } }, 'ADD'), 7, /\/129/);
    code(() => parseConfig({ ...base, runtimeConfig: { ips: ['10.1.0.5/24/1'] } }, 'ADD'), 7, /prefix/);
    assert.deepEqual(parseConfig({ ...base, runtimeConfig: { ips: ['10.1.0.5/24', 'fd00::5'] } }, 'ADD').conf.ips.map((i) => i.text), ['10.1.0.5', 'fd00::5']);
  });
  it('names the bad key and value', () => {
    code(() => parseConfig({ ...base, cniVersion: '2.0.0' }, 'ADD'), 1, /cniVersion 2\.0\.0 is not supported/);
    code(() => parseConfig({ ...base, cniVersion: '0.3.1' }, 'CHECK'), 1, /CHECK is not defined for cniVersion 0\.3\.1/);
    code(() => parseConfig({ ...base }, 'GC'), 1, /GC is not defined for cniVersion 1\.0\.0/);
    code(() => parseConfig({ ...base, ipam: { type: 'dhcp' } }, 'ADD'), 2, /ipam=\{"type":"dhcp"\}/);
    code(() => parseConfig({ ...base, runtimeConfig: { bandwidth: { ingressRate: '1mbit' } } }, 'ADD'), 7, /runtimeConfig\.bandwidth.*ingressRate is "1mbit"/);
    code(() => parseConfig({ ...base, runtimeConfig: { portMappings: [{ hostPort: 0, containerPort: 1 }] } }, 'ADD'), 7, /portMappings\[0\]\.hostPort=0/);
    code(() => parseConfig({ ...base, runtimeConfig: { portMappings: [{ hostPort: 1, containerPort: 1, hostIP: '::1' }] } }, 'ADD'), 2, /hostIP="::1"/);
    code(() => parseConfig({ ...base, type: 'bridge' }, 'ADD'), 7, /type="bridge"/);
    code(() => parseConfig({ ...base, args: { cni: { labels: [{ key: 'a b', value: 'x' }] } } }, 'ADD'), 7, /args\.cni\.labels\[0\]/);
    code(() => parseConfig({ ...base, cniVersion: '1.1.0', 'cni.dev/valid-attachments': [{ containerID: 1 }] }, 'GC'), 7, /valid-attachments\[0\]/);
  });
});

describe('what real runtimes send (issue 13)', () => {
  it('containerd\'s CRI plugin: portMappings with Go field names (no JSON tags), matched as Go does', () => {
    const { conf } = parseConfig({ ...base, runtimeConfig: { portMappings: [{ HostPort: 8080, ContainerPort: 80, Protocol: 'TCP', HostIP: '' }, { hostport: 53, containerport: 53, protocol: 'udp' }] } }, 'ADD');
    assert.deepEqual(conf.portMappings, [
      { proto: 'tcp', hostIp: '', hostPort: 8080, containerPort: 80, count: 1 },
      { proto: 'udp', hostIp: '', hostPort: 53, containerPort: 53, count: 1 },
    ]);
    code(() => parseConfig({ ...base, runtimeConfig: { portMappings: [{ HostPort: 0, ContainerPort: 80 }] } }, 'ADD'), 7, /portMappings\[0\]\.hostPort=0/);
  });
  it('podman: CNI_ARGS IP= and MAC= ask for an address and a MAC, unless the configuration does', () => {
    const args = parseArgs('IgnoreUnknown=1;IP=10.88.0.77;MAC=02:11:22:33:44:55');
    const { conf } = parseConfig({ ...base }, 'ADD');
    const claimed = withArgsClaims(conf, args);
    assert.deepEqual(claimed.ips.map((i) => i.text), ['10.88.0.77']);
    assert.equal(claimed.mac, '02:11:22:33:44:55');
    const both = withArgsClaims(conf, parseArgs('IP=10.88.0.77,fd00::77'));
    assert.deepEqual(both.ips.map((i) => i.text), ['10.88.0.77', 'fd00::77']);
    const own = withArgsClaims(parseConfig({ ...base, runtimeConfig: { ips: ['10.88.0.5'] } }, 'ADD').conf, args);
    assert.deepEqual(own.ips.map((i) => i.text), ['10.88.0.5'], 'runtimeConfig.ips comes first');
    code(() => withArgsClaims(conf, parseArgs('IP=10.88.0.777')), 7, /CNI_ARGS IP\[0\]/);
    code(() => withArgsClaims(conf, parseArgs('MAC=zz')), 7, /CNI_ARGS MAC/);
  });
  it('libcni 1.2: "cni.dev/valid-attachments": null means none is valid', () => {
    assert.deepEqual(parseConfig({ ...base, cniVersion: '1.1.0', 'cni.dev/valid-attachments': null }, 'GC').conf.validAttachments, []);
    assert.deepEqual(parseConfig({ ...base, cniVersion: '1.1.0', runtimeConfig: { 'cni.dev/valid-attachments': null } }, 'GC').conf.validAttachments, []);
    assert.equal(parseConfig({ ...base, cniVersion: '1.1.0' }, 'GC').conf.validAttachments, undefined);
  });
  it('DEL keeps the network name from a configuration it cannot parse whole', () => {
    assert.equal(nameForDel({ ...base, runtimeConfig: { portMappings: 'nonsense' } }), 'net1');
    assert.equal(nameForDel({ name: 'bad name' }), undefined);
  });
});

describe('CNI results', () => {
  const r: CniResult = {
    interfaces: [{ name: 'br' }, { name: 'veth' }, { name: 'eth0', mac: '02:00:00:00:00:01', sandbox: '/run/netns/x' }],
    ips: [{ address: '10.1.0.5/24', gateway: '10.1.0.1', interface: 2 }, { address: 'fd00::5/64', gateway: 'fd00::1', interface: 2 }],
    routes: [{ dst: '0.0.0.0/0', gw: '10.1.0.1' }],
    dns: {},
  };
  it('before 1.0.0, each address names its family', () => {
    assert.deepEqual((renderResult(r, '0.4.0').ips as { version: string }[]).map((i) => i.version), ['4', '6']);
    assert.equal((renderResult(r, '1.0.0').ips as { version?: string }[])[0]!.version, undefined);
  });
  it('after another plugin, ours are appended and indices shift', () => {
    const m = mergeResult({ interfaces: [{ name: 'lo0' }], ips: [], routes: [] }, r);
    assert.equal(m.interfaces.length, 4);
    assert.equal(m.ips[0]!.interface, 3);
  });
});

describe('daemon wire format', () => {
  it('round-trips requests and replies, with NULs and newlines in stdin and output', () => {
    const req = { env: { CNI_COMMAND: 'ADD', CNI_ARGS: 'A=1;B=2' }, stdin: '{"a":\n"b"}' };
    assert.deepEqual(decodeRequest(encodeRequest(req)), req);
    assert.deepEqual(decodeRequest(encodeRequest({ env: {}, stdin: '' })), { env: {}, stdin: '' });
    const reply = { exit: 1, stdout: '{"code":7}\nö\n', stderr: 'warn\n' };
    assert.deepEqual(decodeReply(encodeReply(reply)), reply);
  });
});
