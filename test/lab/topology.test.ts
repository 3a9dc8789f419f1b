// Issue 19: a topology in a file. ctnet apply, diff and down against the real kernel: the plan a
// person expects for each kind of change (golden text), the kernel state after, drift repaired,
// two files side by side, objects made by hand left alone, bad files rejected with FILE:LINE:COLUMN.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Lab, ROOT, UPLINK } from '../../src/lab/lab.ts';

let lab: Lab;
let dir: string;
before(async () => {
  lab = await Lab.create();
  dir = mkdtempSync(join(tmpdir(), 'ctnet-topo-'));
});
after(async () => {
  await lab?.destroy();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

const BASE = `name: shop
networks:
  front: { subnets: [10.70.1.0/24] }
  back:  { subnets: [10.70.2.0/24, "fd00:70:2::/64"], internal: true }
sandboxes:
  web: { networks: [front], labels: { tier: web }, ports: ["8080:80"], command: [sleep, "3600"] }
  api: { networks: [back, { network: front, ip: 10.70.1.20 }], labels: { tier: api } }
policy:
  - { name: web-to-api, action: allow, from: "label:tier=web", to: "label:tier=api", port: 80/tcp }
`;

let n = 0;
const file = (text: string, name = `f${++n}.yaml`) => {
  const path = join(dir, name);
  writeFileSync(path, text);
  return path;
};
/** The plan's lines without the header (which names the temp path). */
const diff = async (path: string, ...more: string[]) => {
  const r = await lab.ctnet(['diff', '-f', path, '--detailed-exitcode', ...more]);
  assert.notEqual(r.code, 1, r.stderr);
  return { code: r.code, lines: r.stdout.trimEnd().split('\n').filter((l) => !l.startsWith('Plan for ')) };
};
const apply = (path: string, ...more: string[]) => lab.ctnetOk(['apply', '-f', path, '--yes', ...more]);
const json = async (args: string[]) => JSON.parse(await lab.ctnetOk([...args, '--json']));
/** What must not change: records and kernel objects, without counters or timestamps. */
const snapshot = async () => {
  const sandboxes = (await json(['ls'])).map((s: any) => ({ ...s, created: undefined }));
  const networks = (await json(['network', 'ls'])).map((x: any) => ({ ...x, created: undefined }));
  const rules = (await json(['policy', 'ls'])).map((p: any) => `${p.name} ${p.action} ${p.from} ${p.to} ${p.port}`);
  const links = JSON.parse((await lab.inHost(['ip', '-j', 'link'])).stdout).map((l: any) => `${l.ifname} ${l.master ?? ''} ${l.operstate}`).sort();
  const sets = (await lab.inHost(['nft', '-j', 'list', 'sets', 'inet'])).stdout.replace(/"(packets|bytes)":\s*\d+/g, '');
  return { sandboxes, networks, rules, links, sets };
};
const pids = async (sandbox: string) => {
  const netns = (await json(['inspect', sandbox])).netns.split('/').pop();
  return (await lab.inHost(['ip', 'netns', 'pids', netns])).stdout.trim().split('\n').filter(Boolean);
};

describe('one file through its changes (issue 19, point 2)', () => {
  it('builds it from scratch, with the plan first', async () => {
    const out = await apply(file(BASE, 'shop.yaml'));
    assert.deepEqual(out.split('\n').filter((l) => /^ {2}\S/.test(l)), [
      '  +   network front: subnets 10.70.1.0/24',
      '  +   network back: subnets 10.70.2.0/24, fd00:70:2::/64; internal',
      '  +   sandbox web: networks front; labels tier=web; ports 8080:80/tcp; command sleep 3600',
      '  +   sandbox api: networks back, front (10.70.1.20); labels tier=api',
      '  +   policy web-to-api: allow label:tier=web -> label:tier=api 80/tcp',
    ]);
    assert.match(out, /Plan: 5 to add, 0 to change, 0 to replace, 0 to remove\./);
    const api = await json(['inspect', 'api']);
    assert.deepEqual(api.interfaces.map((i: any) => i.addresses.filter((a: string) => !a.startsWith('fe80')).join(' ')), ['10.70.2.2/24 fd00:70:2::2/64', '10.70.1.20/24']);
    assert.equal((await pids('web')).length, 1, 'the command runs in web');
    assert.equal((await lab.ctnetOk(['policy', 'check', 'web', 'api', '80/tcp'])).startsWith('allowed'), true);
  });

  it('a second apply reports no changes and changes nothing', async () => {
    const path = join(dir, 'shop.yaml');
    const before = await snapshot();
    const d = await diff(path);
    assert.deepEqual(d, { code: 0, lines: ['No changes: the store and the kernel hold what ' + path + ' (shop) says.'] });
    await apply(path);
    assert.deepEqual(await snapshot(), before);
  });

  it('a label, a port, a rule and an MTU change in place; the sandboxes stay (same command process)', async () => {
    const webPids = await pids('web');
    const path = file(BASE.replace('labels: { tier: api }', 'labels: { tier: api, zone: b }').replace('"8080:80"', '"8081:80"').replace('port: 80/tcp', 'port: 80-81/tcp')
      .replace('front: { subnets: [10.70.1.0/24] }', 'front: { subnets: [10.70.1.0/24], mtu: 1400 }'));
    const d = await diff(path);
    assert.deepEqual(d, { code: 2, lines: [
      '  ~   network front: mtu default -> 1400 (bridge and its sandboxes\' interfaces)',
      '  ~   sandbox web: ports 8080:80/tcp -> 8081:80/tcp',
      '  ~   sandbox api: labels tier=api -> tier=api,zone=b',
      '  ~   policy web-to-api: allow label:tier=web -> label:tier=api 80/tcp -> allow label:tier=web -> label:tier=api 80-81/tcp',
      'Plan: 0 to add, 4 to change, 0 to replace, 0 to remove.',
    ] });
    await apply(path);
    const mtu = async (argv: string[]) => JSON.parse((await lab.inHost([...argv, 'ip', '-j', 'link', 'show'])).stdout).map((l: any) => `${l.ifname} ${l.mtu}`);
    const web = await json(['inspect', 'web']);
    assert.ok((await mtu([])).includes('ctbr-front 1400'));
    assert.ok((await mtu([])).includes(`${web.interfaces[0].hostPeer.ifname} 1400`));
    assert.ok((await mtu(['nsenter', `--net=${web.netns}`])).includes('eth0 1400'));
    assert.match(await lab.ctnetOk(['port', 'web']), /80\/tcp -> 0\.0\.0\.0:8081/);
    assert.deepEqual(JSON.parse(await lab.ctnetOk(['label', 'api', '--json'])), { tier: 'api', zone: 'b' });
    assert.equal((await json(['policy', 'ls']))[0].port, '80-81/tcp');
    assert.deepEqual(await pids('web'), webPids, 'web was not recreated');
    assert.equal((await diff(path)).code, 0);
  });

  it('a subnet change replaces the network and re-attaches its sandboxes, saying so first', async () => {
    const webPids = await pids('web');
    const path = file(BASE.replace('10.70.1.0/24', '10.70.9.0/24').replace('ip: 10.70.1.20', 'ip: 10.70.9.20'));
    const d = await diff(path);
    assert.deepEqual(d.lines.filter((l) => l.includes('network front')), ['  -/+ network front: subnets 10.70.1.0/24 -> 10.70.9.0/24; re-attaches web, api']);
    await apply(path);
    const api = await json(['inspect', 'api']);
    assert.ok(api.interfaces.some((i: any) => i.addresses.includes('10.70.9.20/24')), JSON.stringify(api.interfaces));
    assert.match((await json(['inspect', 'web'])).interfaces[0].addresses[0], /^10\.70\.9\./);
    assert.deepEqual(await pids('web'), webPids, 'web itself was re-attached, not recreated');
    assert.match(await lab.ctnetOk(['port', 'web']), /-> 0\.0\.0\.0:8080/);
    await apply(join(dir, 'shop.yaml')); // back to the base
    assert.equal((await diff(join(dir, 'shop.yaml'))).code, 0);
  });

  it('a sandbox added, then dropped: kept without --prune, removed with it', async () => {
    const path = file(BASE.replace('policy:', '  extra: { networks: [front] }\npolicy:'));
    assert.deepEqual((await diff(path)).lines, ['  +   sandbox extra: networks front', 'Plan: 1 to add, 0 to change, 0 to replace, 0 to remove.']);
    await apply(path);
    const base = join(dir, 'shop.yaml');
    assert.deepEqual(await diff(base), { code: 0, lines: [
      `No changes: the store and the kernel hold what ${base} (shop) says.`,
      'Not in the file, kept (apply --prune removes them): sandbox extra',
    ] });
    await apply(base);
    assert.ok((await json(['ls'])).some((s: any) => s.name === 'extra'));
    assert.deepEqual((await diff(base, '--prune')).lines, ['  -   sandbox extra: not in the file', 'Plan: 0 to add, 0 to change, 0 to replace, 1 to remove.']);
    await apply(base, '--prune');
    assert.ok(!(await json(['ls'])).some((s: any) => s.name === 'extra'));
  });
});

describe('drift (issue 19, point 3)', () => {
  it('a deleted veth, a flushed table and a dead command show as repairs; apply restores them', async () => {
    const path = join(dir, 'shop.yaml');
    const web = await json(['inspect', 'web']);
    await lab.inHost(['ip', 'link', 'del', web.interfaces[0].hostPeer.ifname]);
    await lab.inHost(['nft', 'flush', 'table', 'inet', 'ctnet']);
    for (const pid of await pids('web')) await lab.inHost(['kill', '-9', pid]);
    const d = await diff(path);
    assert.equal(d.code, 2);
    assert.match(d.lines.join('\n'), /^ {2}! {3}tables inet ctnet: /m);
    assert.match(d.lines.join('\n'), new RegExp(`^  ! {3}network front: sandbox web's interface ${web.interfaces[0].hostPeer.ifname} is missing`, 'm'));
    assert.match(d.lines.join('\n'), /^ {2}! {3}sandbox web: command sleep 3600 is not running/m);
    assert.match(d.lines.at(-1)!, /Plan: 0 to add, 0 to change, 0 to replace, 0 to remove, 3 to repair\./);
    await apply(path);
    assert.equal((await diff(path)).code, 0);
    assert.equal((await pids('web')).length, 1);
    assert.ok((await lab.inHost(['ip', 'link', 'show', web.interfaces[0].hostPeer.ifname])).code === 0);
    const r = await lab.ctnet(['exec', 'web', '--', 'ping', '-c1', '-W2', '10.70.1.20']);
    assert.equal(r.code, 0, 'web reaches api again');
  });
});

describe('two files, and objects made by hand (issue 19, point 4)', () => {
  it('another name: owns its own objects; down and --prune touch only their own; by-hand objects stay', async () => {
    await lab.ctnetOk(['network', 'create', 'manual', '--subnet', '10.72.0.0/24']);
    await lab.ctnetOk(['create', 'handmade', '--network', 'manual']);
    const other = file('name: lab2\nnetworks:\n  side: { subnets: [10.71.0.0/24] }\nsandboxes:\n  probe: { networks: [side] }\n', 'lab2.yaml');
    await apply(other);
    await apply(join(dir, 'shop.yaml'), '--prune');
    assert.deepEqual((await json(['ls'])).map((s: any) => s.name).sort(), ['api', 'handmade', 'probe', 'web']);
    // A file may not take over what it did not make.
    const grab = await lab.ctnet(['apply', '-f', file('name: thief\nnetworks:\n  side: { subnets: [10.71.0.0/24] }\n'), '--yes']);
    assert.equal(grab.code, 1);
    assert.match(grab.stderr, /:3:3: network side belongs to topology lab2/);
    const hand = await lab.ctnet(['apply', '-f', file('name: thief\nnetworks:\n  manual: { subnets: [10.72.0.0/24] }\n'), '--yes']);
    assert.match(hand.stderr, /:3:3: network manual exists already and was not made by this file/);
    await lab.ctnetOk(['down', '-f', other]);
    assert.deepEqual((await json(['ls'])).map((s: any) => s.name).sort(), ['api', 'handmade', 'web']);
    assert.deepEqual((await json(['network', 'ls'])).map((x: any) => x.name).sort(), ['back', 'front', 'manual']);
  });
});

describe('bad files (issue 19, point 5)', () => {
  const cases: [string, string, RegExp][] = [
    ['YAML syntax', 'name: shop\nnetworks:\n  front: { subnets: [10.70.1.0/24 }\n', /:3:\d+: .*(Flow|flow|missing|end)/],
    ['an unknown key', BASE.replace('internal: true', 'internal: true, colour: red'), /:4:\d+: unknown key "colour" in network back/],
    ['a wrong type', BASE.replace('internal: true', 'internal: "yes"'), /:4:\d+: internal must be true or false, not string "yes"/],
    ['an unknown network', BASE.replace('networks: [front]', 'networks: [frnt]'), /:6:\d+: sandbox web: no network named "frnt" in this file/],
    ['an address outside its subnet', BASE.replace('ip: 10.70.1.20', 'ip: 10.70.3.20'), /:7:\d+: sandbox api: 10\.70\.3\.20 is outside network front's subnets/],
    ['a duplicate name', BASE.replace('  api: {', '  web: {'), /:7:3: web is given twice/],
  ];
  for (const [what, text, want] of cases) {
    it(`${what}: FILE:LINE:COLUMN, nothing changed`, async () => {
      const before = await snapshot();
      const path = file(text);
      for (const verb of ['apply', 'diff', 'down']) {
        const r = await lab.ctnet([verb, '-f', path, ...(verb === 'apply' ? ['--yes'] : [])]);
        assert.equal(r.code, 1, `${verb}: ${r.stdout}`);
        assert.match(r.stderr, new RegExp(path.replace(/[.]/g, '\\.') + want.source), verb);
      }
      assert.deepEqual(await snapshot(), before);
    });
  }
});

describe('DNS and aliases in a file', () => {
  it('a sandbox\'s aliases answer on its network; changing them or the network\'s DNS is planned as a replace, with the reason', async () => {
    const names = (aliases: string, dns = '') => `name: names
networks:
  dnsnet: { subnets: [10.71.5.0/24]${dns} }
sandboxes:
  n1: { networks: [dnsnet], aliases: [${aliases}] }
  n2: { networks: [dnsnet] }
`;
    // ctnetd serves the names (it tails the store); started here as a runtime or the CNI plugin would.
    spawn('nsenter', [`--net=/run/netns/${lab.host}`, join(ROOT, 'bin', 'ctnet'), 'daemon'], { env: { ...process.env, CTNET_STATE_DIR: lab.stateDir }, stdio: 'ignore', detached: true }).unref();
    try {
      const f = file(names('store'), 'names.yaml');
      await apply(f);
      const n1 = (await json(['inspect', 'n1'])).interfaces[0].addresses[0].split('/')[0];
      const dig = async (name: string) => (await lab.ctnet(['exec', 'n2', '--', 'dig', '@10.71.5.1', '+short', '+tries=1', '+time=2', name])).stdout.trim();
      let answer = '';
      for (let i = 0; i < 50 && answer !== n1; i++) answer = await dig('store.dnsnet');
      assert.equal(answer, n1, 'the alias answers with n1\'s address');
      assert.equal((await diff(f)).code, 0, 'a second look finds nothing to do');
      const g = file(names('shop'), 'names.yaml');
      assert.deepEqual((await diff(g)).lines.filter((l) => l.includes('n1') || l.includes('aliases')).map((l) => l.trim()),
        ['-/+ sandbox n1: aliases store -> shop']);
      await apply(g);
      assert.equal(await dig('shop.dnsnet'), (await json(['inspect', 'n1'])).interfaces[0].addresses[0].split('/')[0]);
      const h = file(names('shop', ', dns: false'), 'names.yaml');
      const plan = (await diff(h)).lines.map((l) => l.trim());
      assert.ok(plan.some((l) => /^-\/\+ network dnsnet: .*dns on -> off/.test(l)), `the plan says why the network is replaced: ${plan.join(' | ')}`);
      await apply(h);
      assert.match(await dig('shop.dnsnet'), /no servers could be reached/, 'no DNS on the network any more');
      await lab.ctnetOk(['down', '-f', h]);
    } finally {
      await lab.ctnet(['daemon', 'stop']);
    }
  });
});

describe('services in a file (issue 17 in issue 19\'s files)', () => {
  it('a service balances over the file\'s sandboxes; a change replaces it with the reason; down removes it', async () => {
    const svc = (target: number) => `name: svcs
networks:
  svcnet: { subnets: [10.71.9.0/24] }
sandboxes:
  s1: { networks: [svcnet], labels: { app: web }, command: ${JSON.stringify(Lab.serverArgv('s1', { tcp: 8080, echo: 9000 }))} }
  s2: { networks: [svcnet], labels: { app: web }, command: ${JSON.stringify(Lab.serverArgv('s2', { tcp: 8080, echo: 9000 }))} }
  cl: { networks: [svcnet] }
services:
  web: { network: svcnet, port: 80, to: "label:app=web:${target}", vip: 10.71.9.200 }
`;
    const f = file(svc(8080), 'svcs.yaml');
    const plan = (await diff(f)).lines.map((l) => l.trim());
    assert.ok(plan.includes('+   service web: on svcnet; port 80/tcp; to label:app=web:8080; vip 10.71.9.200'), plan.join(' | '));
    await apply(f);
    // Both servers up (their commands started detached), then 60 connections through the VIP.
    let r = { code: 1, stdout: '' };
    for (let i = 0; i < 50; i++) {
      r = await lab.ctnet(['exec', 'cl', '--', ...Lab.countArgv('10.71.9.200', 80, 60)]);
      if (r.code === 0 && Object.keys((JSON.parse(r.stdout) as { servers: object }).servers).length === 2) break;
      await new Promise((res) => setTimeout(res, 200));
    }
    const count = JSON.parse(r.stdout) as { servers: Record<string, number>; failed: number };
    assert.deepEqual(Object.keys(count.servers).sort(), ['s1', 's2'], `both backends answer through the VIP: ${r.stdout}`);
    assert.equal(count.failed, 0);
    assert.equal((await diff(f)).code, 0, 'a second look finds nothing to do');
    // The target port changes: the service is replaced (same VIP), the sandboxes stay.
    const g = file(svc(9000), 'svcs.yaml');
    assert.deepEqual((await diff(g)).lines.filter((l) => l.includes('service')).map((l) => l.trim()), ['-/+ service web: to label:app=web:8080 -> label:app=web:9000']);
    const before = (await json(['inspect', 's1'])).netns;
    await apply(g);
    assert.equal((await json(['inspect', 's1'])).netns, before);
    const inspect = JSON.parse(await lab.ctnetOk(['service', 'inspect', 'web', '--json'])) as { vip: string; targetPort: number };
    assert.equal(inspect.vip, '10.71.9.200');
    assert.equal(inspect.targetPort, 9000);
    await lab.ctnetOk(['down', '-f', g]);
    assert.deepEqual(JSON.parse(await lab.ctnetOk(['service', 'ls', '--json'])), []);
    assert.doesNotMatch((await lab.inHost(['nft', 'list', 'table', 'inet', 'ctnet'])).stdout, /svc_web/);
  });
});

describe('egress address, default route and shaping in a file (issue 18)', () => {
  it('the world sees the address the file gives, through the network it picks; changes apply in place', async () => {
    for (const a of ['198.51.100.71', '198.51.100.72']) await lab.inHost(['ip', 'addr', 'add', `${a}/32`, 'dev', 'uplink0']);
    lab.serveInWorld('world', { tcp: 7002 });
    const out = (route: string, egress: string, shaping: string) => `name: out
networks:
  o1: { subnets: [10.73.1.0/24], egress_ip: [${egress}] }
  o2: { subnets: [10.73.2.0/24] }
sandboxes:
  s1: { networks: [o1, o2], default_route: ${route}${shaping} }
`;
    const seen = async () => {
      const r = await lab.ctnet(['exec', 's1', '--', ...Lab.probeArgv('tcp', UPLINK.remote4, 7002)]);
      return r.code === 0 ? (JSON.parse(r.stdout) as { client: string }).client : undefined;
    };
    const qdisc = async () => {
      const veth = (await json(['inspect', 's1'])).interfaces[0].hostPeer.ifname;
      return (await lab.inHost(['tc', 'qdisc', 'show', 'dev', veth])).stdout;
    };
    const f = file(out('o2', '198.51.100.71', ', rate_in: 20mbit'), 'out.yaml');
    await apply(f);
    assert.equal(await seen(), UPLINK.host4, 'through o2, masqueraded');
    assert.match(await qdisc(), /tbf .*rate 20Mbit/);
    assert.equal((await diff(f)).code, 0);
    const g = file(out('o1', '198.51.100.72', ''), 'out.yaml');
    assert.deepEqual((await diff(g)).lines.filter((l) => /~/.test(l)).map((l) => l.trim()), [
      '~   network o1: egress 198.51.100.71 -> 198.51.100.72 (new connections)',
      '~   sandbox s1: default route via o2 -> o1; shaping rateIn 20000000 -> none',
    ]);
    const before = (await json(['inspect', 's1'])).created;
    await apply(g);
    assert.equal(await seen(), '198.51.100.72', 'through o1, from its egress address');
    assert.doesNotMatch(await qdisc(), /tbf/);
    assert.equal((await json(['inspect', 's1'])).created, before, 'changed in place: the sandbox stayed');
    assert.equal((await diff(g)).code, 0);
    await lab.ctnetOk(['down', '-f', g]);
  });
});

describe('examples/three-tier as a file (issue 19, point 1)', () => {
  it('down removes exactly the file\'s objects; three-tier applies, diffs empty, and leaves nothing after down', async () => {
    await lab.ctnetOk(['down', '-f', join(dir, 'shop.yaml')]);
    await lab.ctnetOk(['rm', 'handmade']);
    await lab.ctnetOk(['network', 'rm', 'manual']);
    const tiers = join(ROOT, 'examples', 'three-tier', 'three-tier.yaml');
    const env = { SERVE: Lab.serveCommand() };
    await lab.ctnetOk(['apply', '-f', tiers], env);
    assert.equal((await lab.ctnet(['diff', '-f', tiers, '--detailed-exitcode'], env)).code, 0);
    assert.equal((await lab.ctnetOk(['policy', 'check', 'web', 'db', '3306/tcp'])).startsWith('denied'), true);
    await lab.ctnetOk(['down', '-f', tiers]);
    assert.deepEqual(await json(['ls']), []);
    assert.equal((await lab.inHost(['nft', 'list', 'tables'])).stdout.trim(), '');
    const links = JSON.parse((await lab.inHost(['ip', '-j', 'link'])).stdout).map((l: any) => l.ifname);
    assert.deepEqual(links.filter((l: string) => l.startsWith('ct')), []);
  });
});
