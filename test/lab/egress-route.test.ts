// Issue 18, points 1 and 2, with real traffic to the lab's world: the address a network's (or a
// sandbox's) egress leaves from (--egress-ip: SNAT from a map keyed by source, instead of
// masquerade's choice), and which network carries a sandbox's default routes (--default-route,
// connect --default-route, ctnet route), live. Each network below has its own egress address,
// so the address the world sees names the network a packet left through.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { Lab, UPLINK } from '../../src/lab/lab.ts';

const EXTRA = ['198.51.100.71', '198.51.100.72', '198.51.100.73'];
const EXTRA6 = '2001:db8:100::71';
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('egress address and default route choice', () => {
  let lab: Lab;
  /** The address the world's server saw, for a TCP connection from sandbox s (undefined: no answer). */
  const seen = async (s: string, family: 4 | 6 = 4): Promise<string | undefined> => {
    const r = await lab.ctnet(['exec', s, '--', ...Lab.probeArgv('tcp', family === 4 ? UPLINK.remote4 : UPLINK.remote6, 7002)]);
    return r.code === 0 ? (JSON.parse(r.stdout) as { client: string }).client : undefined;
  };
  const defaultDev = async (s: string) => /default via \S+ dev (\S+)/.exec((await lab.ctnetOk(['exec', s, '--', 'ip', 'route', 'show', 'default'])))?.[1];

  before(async () => {
    lab = await Lab.create();
    for (const a of EXTRA) await lab.inHost(['ip', 'addr', 'add', `${a}/32`, 'dev', 'uplink0']);
    // Deprecated (preferred_lft 0): the kernel's own source choice, which masquerade follows, passes it over.
    await lab.inHost(['ip', 'addr', 'add', `${EXTRA6}/128`, 'dev', 'uplink0', 'nodad', 'preferred_lft', '0']);
    lab.serveInWorld('world', { tcp: 7002 });
    await sleep(500);
  });
  after(() => lab?.destroy());

  it('bad input is refused with the reason and changes nothing', async () => {
    const cases: [string[], RegExp][] = [
      [['network', 'create', 'x', '--subnet', '10.81.0.0/24', '--egress-ip', '203.0.113.99'], /--egress-ip 203\.0\.113\.99 is not an address of this host\nhint: give one of its addresses \(.*198\.51\.100\.2 on uplink0/],
      [['network', 'create', 'x', '--subnet', '10.81.0.0/24', '--internal', '--egress-ip', EXTRA[0]!], /network x is --internal, nothing leaves it/],
      [['network', 'create', 'x', '--subnet', '10.81.0.0/24', '--egress-ip', EXTRA6], /network x has no IPv6 subnet/],
      [['network', 'create', 'x', '--subnet', '10.81.0.0/24', '--egress-ip', EXTRA[0]!, '--egress-ip', EXTRA[1]!], /--egress-ip is given twice for IPv4/],
      [['network', 'create', 'x', '--subnet', '10.81.0.0/24', '--egress-ip', 'nope'], /--egress-ip/],
      [['network', 'update', 'nonet', '--egress-ip', EXTRA[0]!], /no network named nonet/],
      [['update', 'nosb', '--egress-ip', EXTRA[0]!], /no sandbox named nosb/],
    ];
    for (const [argv, re] of cases) {
      const r = await lab.ctnet(argv);
      assert.equal(r.code, 1, `${argv.join(' ')}: ${r.stdout}${r.stderr}`);
      assert.match(r.stderr, re, argv.join(' '));
    }
    assert.equal(JSON.parse(await lab.ctnetOk(['network', 'ls', '--json'])).length, 0, 'no network was made');
  });

  it('--egress-ip: the world sees the network\'s address, another network\'s default one; update and removal apply to new connections', async () => {
    await lab.ctnetOk(['network', 'create', 'a', '--subnet', '10.81.1.0/24', '--subnet', 'fd00:81:1::/64', '--egress-ip', EXTRA[0]!, '--egress-ip', EXTRA6]);
    await lab.ctnetOk(['network', 'create', 'b', '--subnet', '10.81.2.0/24']);
    await lab.ctnetOk(['create', 'sa', '--network', 'a']);
    await lab.ctnetOk(['create', 'sb', '--network', 'b']);
    assert.equal(await seen('sa'), EXTRA[0]);
    assert.equal(await seen('sa', 6), EXTRA6, 'IPv6 too');
    assert.equal(await seen('sb'), UPLINK.host4, 'masqueraded as before');
    // A sandbox's own address beats its network's.
    await lab.ctnetOk(['create', 'sc', '--network', 'a', '--egress-ip', EXTRA[1]!]);
    assert.equal(await seen('sc'), EXTRA[1]);
    assert.match(await lab.ctnetOk(['inspect', 'sc']), /egress {5}from 198\.51\.100\.72 \(--egress-ip\)/);
    // Live changes, shown as what they do to the kernel.
    const explain = await lab.ctnetOk(['network', 'update', 'a', '--egress-ip', EXTRA[2]!, '--explain']);
    assert.match(explain, /delete element inet ctnet egress_network4 \{ 10\.81\.1\.0\/24 \}/);
    assert.match(explain, /add element inet ctnet egress_network4 \{ 10\.81\.1\.0\/24 : 198\.51\.100\.73 \}/);
    assert.equal(await seen('sa'), EXTRA[2]);
    assert.equal(await seen('sa', 6), UPLINK.host6, 'the update gave IPv4 only: IPv6 is masqueraded again');
    await lab.ctnetOk(['network', 'update', 'a', '--no-egress-ip']);
    assert.equal(await seen('sa'), UPLINK.host4);
    assert.equal(await seen('sc'), EXTRA[1], 'the sandbox keeps its own');
    await lab.ctnetOk(['update', 'sc', '--no-egress-ip']);
    assert.equal(await seen('sc'), UPLINK.host4);
    assert.deepEqual((JSON.parse(await lab.ctnetOk(['network', 'inspect', 'a', '--json'])) as { egress: string[] }).egress, []);
    // A failed update (not a host address) changes nothing.
    await lab.ctnetOk(['network', 'update', 'a', '--egress-ip', EXTRA[0]!]);
    assert.match((await lab.ctnet(['network', 'update', 'a', '--egress-ip', '198.51.100.99'])).stderr, /not an address of this host/);
    assert.equal(await seen('sa'), EXTRA[0]);
    // gc finds store and kernel agreeing, and rebuilds the maps from the store after a flush.
    assert.match(await lab.ctnetOk(['gc']), /agree/);
    await lab.inHost(['nft', 'flush', 'map', 'inet', 'ctnet', 'egress_network4']);
    assert.match(await lab.ctnetOk(['gc']), /rewrote|restored|table/i);
    assert.equal(await seen('sa'), EXTRA[0]);
    for (const s of ['sa', 'sb', 'sc']) await lab.ctnetOk(['rm', s]);
    for (const n of ['a', 'b']) await lab.ctnetOk(['network', 'rm', n]);
  });

  it('--default-route picks the network that carries egress; it survives disconnecting another; ctnet route and connect --default-route move it live', async () => {
    for (const [i, n] of ['n1', 'n2', 'n3'].entries()) {
      await lab.ctnetOk(['network', 'create', n, '--subnet', `10.82.${i + 1}.0/24`, ...(i < 2 ? ['--egress-ip', EXTRA[i]!] : [])]);
    }
    await lab.ctnetOk(['network', 'create', 'inner', '--subnet', '10.82.9.0/24', '--internal']);
    assert.match((await lab.ctnet(['create', 'x', '--network', 'n1', '--default-route', 'n2'])).stderr, /--default-route n2 is not one of the --network options/);
    await lab.ctnetOk(['create', 's', '--network', 'n1', '--network', 'n2', '--network', 'n3', '--default-route', 'n2']);
    assert.equal(await defaultDev('s'), 'eth1');
    assert.equal(await seen('s'), EXTRA[1], 'egress through n2');
    await lab.ctnetOk(['disconnect', 'n3', 's']);
    assert.equal(await seen('s'), EXTRA[1], 'still n2 after disconnecting another');
    await lab.ctnetOk(['route', 's', '--via', 'n1']);
    assert.equal(await defaultDev('s'), 'eth0');
    assert.equal(await seen('s'), EXTRA[0], 'moved live to n1');
    assert.equal((JSON.parse(await lab.ctnetOk(['inspect', 's', '--json'])) as { defaultRoute: string }).defaultRoute, 'n1');
    await lab.ctnetOk(['connect', 'n3', 's', '--default-route']);
    assert.equal(await seen('s'), UPLINK.host4, 'n3 (masquerade) carries it now');
    // The chosen network leaving hands the route to the usual one (the first with a way out).
    await lab.ctnetOk(['disconnect', 'n3', 's']);
    assert.equal(await seen('s'), EXTRA[0]);
    // Refused, nothing changed.
    await lab.ctnetOk(['connect', 'inner', 's']);
    assert.match((await lab.ctnet(['route', 's', '--via', 'inner'])).stderr, /network inner is --internal: a default route through it leads nowhere/);
    assert.match((await lab.ctnet(['route', 's', '--via', 'n3'])).stderr, /sandbox s is not on network n3/);
    assert.equal(await seen('s'), EXTRA[0]);
    assert.match(await lab.ctnetOk(['gc']), /agree/);
    await lab.ctnetOk(['rm', 's']);
    for (const n of ['n1', 'n2', 'n3', 'inner']) await lab.ctnetOk(['network', 'rm', n]);
  });
});
