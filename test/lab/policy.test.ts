// Issue #4: network policy, with real traffic (TCP, UDP, ICMP) in a lab; every case is also put
// to `ctnet policy check`, which must agree with what the kernel did.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Lab, UPLINK } from '../../src/lab/lab.ts';
import { nftSets, readStore } from './consistency.ts';

type Proto = 'tcp' | 'udp' | 'icmp' | 'http';
const PORTS = { tcp: 8080, http: 80, udp: 8081, icmp: 0 } as const;

describe('network policy', () => {
  let lab: Lab;
  const ip = (sandbox: string, family: 4 | 6 = 4) => String(readStore(lab).addresses.find((a) => a.sandbox === sandbox && a.family === family)!.ip);

  /** Real traffic: does a new connection from -> to get through? */
  const reaches = async (from: string, to: string, proto: Proto, family: 4 | 6 = 4): Promise<boolean> => {
    const dst = /^[\d.]+$|:/.test(to) ? to : ip(to, family);
    const argv = proto === 'icmp' ? ['ping', '-c1', '-W1', dst] : Lab.probeArgv(proto, dst, PORTS[proto], 1000);
    return (await lab.ctnet(['exec', from, '--', ...argv])).code === 0;
  };
  /** What `policy check` says for the same connection. */
  const checked = async (from: string, to: string, proto: Proto, family: 4 | 6 = 4) => {
    const port = proto === 'icmp' ? 'icmp' : proto === 'udp' ? `${PORTS.udp}/udp` : `${PORTS[proto]}/tcp`;
    const rows = JSON.parse(await lab.ctnetOk(['policy', 'check', from, to, port, '--json'])) as { allowed: boolean; by: string; to: string }[];
    const row = rows.find((r) => (family === 6) === r.to.includes(':'))!;
    return row;
  };
  /** Asserts the kernel and `policy check` both say `allowed`; returns what decided. */
  const expect = async (from: string, to: string, proto: Proto, allowed: boolean, family: 4 | 6 = 4): Promise<string> => {
    const what = `${from} -> ${to} ${proto} IPv${family}`;
    assert.equal(await reaches(from, to, proto, family), allowed, `kernel: ${what}`);
    const c = await checked(from, to, proto, family);
    assert.equal(c.allowed, allowed, `policy check: ${what} (${c.by})`);
    return c.by;
  };
  const serve = (name: string, net: string, labels: string[]) =>
    lab.ctnetOk(['run', '-d', '--name', name, '--network', net, ...labels.flatMap((l) => ['--label', l]), '--',
      ...Lab.serverArgv(name, { tcp: 8080, http: 80, udp: 8081, echo: 9000 })]);
  const ready = async (name: string) => {
    for (let i = 0; i < 50; i++) {
      if ((await lab.inHost(Lab.probeArgv('tcp', ip(name), 8080, 500))).code === 0) return;
      await new Promise((r) => setTimeout(r, 100));
    }
  };

  before(async () => {
    lab = await Lab.create();
    await lab.ctnetOk(['network', 'create', 'front', '--subnet', '10.61.0.0/24', '--subnet', 'fd00:61::/64']);
    await lab.ctnetOk(['network', 'create', 'back', '--subnet', '10.62.0.0/24', '--subnet', 'fd00:62::/64']);
    await lab.ctnetOk(['network', 'create', 'apps', '--subnet', '172.20.0.0/24']);
    await lab.ctnetOk(['network', 'create', 'iso', '--subnet', '10.64.0.0/24', '--isolate']);
    await serve('w1', 'front', ['tier=web']);
    await serve('w2', 'front', ['tier=web']);
    await serve('api', 'back', ['tier=api']);
    await serve('db', 'back', ['tier=db']);
    await serve('app', 'apps', []);
    await serve('i1', 'iso', []);
    await serve('i2', 'iso', []);
    for (const s of ['w1', 'w2', 'api', 'db', 'app', 'i1', 'i2']) await ready(s);
    // A "remote" inside 10/8 in the world, for the egress deny of seed 002's appendix.
    await lab.inWorld(['ip', 'addr', 'add', '10.250.0.10/32', 'dev', 'lo']);
    await lab.inHost(['ip', 'route', 'add', '10.250.0.10/32', 'via', UPLINK.world4]);
    lab.serveInWorld('world', { tcp: 8080 });
  });
  after(() => lab?.destroy());

  it('defaults: same network allowed, across networks denied, --isolate denies within, egress allowed', async () => {
    assert.match(await expect('w1', 'w2', 'tcp', true), /default: same network/);
    await expect('w1', 'w2', 'udp', true);
    await expect('w1', 'w2', 'icmp', true, 6);
    assert.match(await expect('w1', 'api', 'tcp', false), /default: networks front and back are isolated/);
    await expect('api', 'w1', 'icmp', false);
    assert.match(await expect('i1', 'i2', 'tcp', false), /--isolate/);
    await expect('i1', 'i2', 'icmp', false);
    assert.match(await expect('app', UPLINK.remote4, 'tcp', true), /default: egress/);
  });

  it('a sandbox selector allows exactly that sandbox, every protocol; removing the rule takes it back', async () => {
    await lab.ctnetOk(['policy', 'allow', '--from', 'w1', '--to', 'api', '--name', 's1']);
    assert.equal(await expect('w1', 'api', 'tcp', true), 'rule s1');
    await expect('w1', 'api', 'udp', true);
    await expect('w1', 'api', 'icmp', true);
    await expect('w1', 'api', 'tcp', true, 6);
    await expect('w2', 'api', 'tcp', false);
    await expect('api', 'w1', 'tcp', false); // one way: replies pass, new connections back do not
    await lab.ctnetOk(['policy', 'rm', 's1']);
    await expect('w1', 'api', 'tcp', false);
  });

  it('net: to label: with a port lets exactly that through between two bridges, including later members', async () => {
    await lab.ctnetOk(['policy', 'allow', '--from', 'net:front', '--to', 'label:tier=api', '--port', '8080', '--name', 'front-api']);
    assert.equal(await expect('w1', 'api', 'tcp', true), 'rule front-api');
    await expect('w2', 'api', 'tcp', true, 6);
    await expect('w1', 'api', 'http', false); // port 80
    await expect('w1', 'api', 'udp', false);
    await expect('w1', 'api', 'icmp', false);
    await expect('w1', 'db', 'tcp', false);
    await expect('api', 'w1', 'tcp', false);
    // Made after the rule: a new api sandbox, and a new member of front.
    await serve('api2', 'back', ['tier=api']);
    await serve('w3', 'front', []);
    await ready('api2');
    await expect('w1', 'api2', 'tcp', true);
    await expect('w3', 'api', 'tcp', true);
    // A label given later, and taken away.
    await lab.ctnetOk(['label', 'db', 'tier=api']);
    await expect('w1', 'db', 'tcp', true);
    await lab.ctnetOk(['label', 'db', 'tier=db']);
    await expect('w1', 'db', 'tcp', false);
    // A sandbox that leaves takes its address out of the sets.
    const gone = ip('api2');
    await lab.ctnetOk(['rm', 'api2', 'w3']);
    assert.ok(!(await nftSets(lab))!.get('policy_allow4')!.some((e) => e.includes(gone)), 'no element names a removed sandbox');
  });

  it('an explicit deny beats an explicit allow; ls counts the hits', async () => {
    await lab.ctnetOk(['policy', 'deny', '--from', 'w2', '--to', 'label:tier=api', '--name', 'no-w2']);
    assert.equal(await expect('w2', 'api', 'tcp', false), 'rule no-w2');
    assert.equal(await expect('w1', 'api', 'tcp', true), 'rule front-api');
    const ls = JSON.parse(await lab.ctnetOk(['policy', 'ls', '--json'])) as { name: string; hits: { packets: number } }[];
    assert.ok(ls.find((r) => r.name === 'no-w2')!.hits.packets >= 1, 'the deny rule counted w2\'s attempt');
    assert.ok(ls.find((r) => r.name === 'front-api')!.hits.packets >= 1);
    await lab.ctnetOk(['policy', 'rm', 'no-w2']);
    await expect('w2', 'api', 'tcp', true);
  });

  it('CIDR selectors, ICMP only', async () => {
    await lab.ctnetOk(['policy', 'allow', '--from', '10.61.0.0/24', '--to', '10.62.0.0/24', '--port', 'icmp', '--name', 'pings']);
    await expect('w1', 'db', 'icmp', true);
    await expect('w1', 'db', 'udp', false);
    await expect('w1', 'db', 'icmp', false, 6); // an IPv4 CIDR says nothing about IPv6
    await lab.ctnetOk(['policy', 'rm', 'pings']);
  });

  it('egress deny to 10.0.0.0/8 blocks those destinations while the world stays reachable', async () => {
    await expect('app', '10.250.0.10', 'tcp', true);
    await lab.ctnetOk(['policy', 'deny', '--from', 'net:apps', '--to', '10.0.0.0/8', '--name', 'no-internal']);
    assert.equal(await expect('app', '10.250.0.10', 'tcp', false), 'rule no-internal');
    await expect('app', UPLINK.remote4, 'tcp', true);
    await expect('app', 'w1', 'tcp', false);
    await lab.ctnetOk(['policy', 'rm', 'no-internal']);
  });

  it('world as a source: allows direct access from outside to what it names only', async () => {
    await lab.inWorld(['ip', 'route', 'add', '10.62.0.0/24', 'via', UPLINK.host4]);
    try {
      const probe = async (to: string) => (await lab.inWorld(Lab.probeArgv('tcp', ip(to), 8080, 1000))).code === 0;
      assert.equal(await probe('api'), false);
      await lab.ctnetOk(['policy', 'allow', '--from', 'world', '--to', 'label:tier=api', '--port', '8080', '--name', 'world-api']);
      assert.equal(await probe('api'), true);
      assert.equal(await probe('db'), false);
      const [c] = JSON.parse(await lab.ctnetOk(['policy', 'check', UPLINK.world4, 'api', '8080/tcp', '--json'])) as { allowed: boolean; by: string }[];
      assert.deepEqual([c!.allowed, c!.by], [true, 'rule world-api']);
      await lab.ctnetOk(['policy', 'rm', 'world-api']);
    } finally {
      await lab.inWorld(['ip', 'route', 'del', '10.62.0.0/24']);
    }
  });

  it('--isolate: only what a rule allows, in its direction', async () => {
    await lab.ctnetOk(['policy', 'allow', '--from', 'i1', '--to', 'i2', '--name', 'i1-i2']);
    assert.equal(await expect('i1', 'i2', 'tcp', true), 'rule i1-i2');
    await expect('i1', 'i2', 'udp', true);
    await expect('i2', 'i1', 'tcp', false);
    await lab.ctnetOk(['policy', 'rm', 'i1-i2']);
  });

  it('revoking an allow cuts a connection that was open under it', async () => {
    await lab.ctnetOk(['policy', 'allow', '--from', 'w1', '--to', 'db', '--port', '9000', '--name', 'hold']);
    const held = await lab.ctnet(['exec', 'w1', '--', ...Lab.holdArgv(ip('db'), 9000, 1500)]);
    assert.equal(held.code, 0, `the connection holds while allowed: ${held.stdout}`);
    // Held long enough that only a cut ends it early; revoked once the connection is open (tracked as
    // such), not after a fixed wait: under load the hold's start took longer than the wait (CI).
    let done = false;
    const hold = lab.ctnet(['exec', 'w1', '--', ...Lab.holdArgv(ip('db'), 9000, 30_000)]).finally(() => { done = true; });
    for (let i = 0; !done && !/ESTABLISHED/.test((await lab.inHost(['conntrack', '-L', '-p', 'tcp', '-d', ip('db'), '--dport', '9000'])).stdout); i++) {
      assert.ok(i < 300, 'the held connection is established within a minute');
      await new Promise((r) => setTimeout(r, 200));
    }
    if (done) assert.fail(`the hold ended before it was revoked: ${(await hold).stdout}`);
    await new Promise((r) => setTimeout(r, 300));
    await lab.ctnetOk(['policy', 'rm', 'hold']);
    const r = await hold;
    assert.equal(r.code, 1, `the connection was cut: ${r.stdout}`);
    assert.match(r.stdout, /broken after [1-9]\d* answers/);
  });

  it('every change is one atomic transaction: under steady attempts, nothing neither policy allows gets through', async () => {
    // Both policies deny w2 -> db and allow w1 -> db; each change rewrites every set. A flush and
    // refill in two steps would let w2 through in between. The attempts are nc, not a Node probe:
    // on a loaded machine a Node start each would leave too few attempts to mean anything.
    await lab.ctnetOk(['policy', 'allow', '--from', 'net:front', '--to', 'net:back', '--name', 'broad']);
    await lab.ctnetOk(['policy', 'deny', '--from', 'w2', '--to', 'db', '--name', 'fence']);
    const attempts = lab.ctnet(['exec', 'w2', '--', 'sh', '-c',
      `ok=0; n=0; end=$(($(date +%s) + 10)); while [ $(date +%s) -lt $end ]; do nc -z -n -w 1 ${ip('db')} 8080 >/dev/null 2>&1 && ok=$((ok+1)); n=$((n+1)); done; echo $ok $n`]);
    for (let i = 0; i < 10; i++) {
      await lab.ctnetOk(['policy', 'allow', '--from', 'w1', '--to', 'label:tier=db', '--port', `${7000 + i}`, '--name', `churn${i}`]);
      await lab.ctnetOk(['policy', 'rm', `churn${i}`]);
    }
    const [ok, n] = (await attempts).stdout.trim().split(' ').map(Number);
    assert.ok(n! > 5, `w2 kept trying during the changes (${n} attempts)`);
    assert.equal(ok, 0, `no attempt from w2 to db succeeded (of ${n})`);
    await expect('w1', 'db', 'tcp', true);
    await lab.ctnetOk(['policy', 'rm', 'broad', 'fence']);
  });

  // Last: from here on the front end hands policy commands to ctnetd, which applies their nft
  // transactions in process (libnftables; through its nft -i with CTNET_KERNEL=exec) and reads the
  // flows from /proc/net/nf_conntrack.
  it('through ctnetd too: an allow opens, revoking it cuts the connection open under it', async () => {
    await lab.startDaemon();
    await lab.ctnetOk(['policy', 'allow', '--from', 'w1', '--to', 'db', '--port', '9000', '--name', 'hold-d']);
    let done = false;
    const hold = lab.ctnet(['exec', 'w1', '--', ...Lab.holdArgv(ip('db'), 9000, 30_000)]).finally(() => { done = true; });
    for (let i = 0; !done && !/ESTABLISHED/.test((await lab.inHost(['conntrack', '-L', '-p', 'tcp', '-d', ip('db'), '--dport', '9000'])).stdout); i++) {
      assert.ok(i < 300, 'the held connection is established within a minute');
      await new Promise((r) => setTimeout(r, 200));
    }
    if (done) assert.fail(`the hold ended before it was revoked: ${(await hold).stdout}`);
    await new Promise((r) => setTimeout(r, 300));
    await lab.ctnetOk(['policy', 'rm', 'hold-d']);
    const r = await hold;
    assert.equal(r.code, 1, `the connection was cut: ${r.stdout}`);
    assert.match(r.stdout, /broken after [1-9]\d* answers/);
    const log = readFileSync(join(lab.stateDir, 'ctnetd.log'), 'utf8');
    for (const cmd of ['policy allow --from w1 --to db --port 9000 --name hold-d', 'policy rm hold-d']) {
      const how = process.env.CTNET_KERNEL === 'exec' ? '1 nft -i transactions' : '0 nft -i transactions, netlink [\\d.]+ ms in 1 calls';
      assert.match(log, new RegExp(`ctnet ${cmd}: exit 0 in .* ${how}`), `ctnetd ran "${cmd}" as one nft transaction without an nft process`);
    }
  });
});
