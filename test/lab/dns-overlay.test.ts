// Issue 15, point 3: names across hosts. Three lab hosts and etcd; an overlay network with a sandbox
// on h1, h2 and h3. A sandbox on h1 resolves the one on h3 by name through h1's ctnetd (which knows
// it from the directory's mirror of etcd); when it is removed on h3, its name stops resolving on
// every host. Aliases travel with the directory's entries: one on h3 answers on h1, one shared by
// sandboxes on h2 and h3 answers with both. The times are measured and printed, never asserted on (the machine is shared).
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { Lab } from '../../src/lab/lab.ts';
import { EtcdHosts } from './etcd-hosts.ts';

const TTL = 8;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('names across hosts (overlay network, directory in etcd)', () => {
  let cluster: EtcdHosts | undefined;
  const ips = new Map<string, string>();
  const gateways: string[] = [];

  const ip = async (lab: Lab, s: string) => ((JSON.parse(await lab.ctnetOk(['inspect', s, '--json'])) as { interfaces: { addresses: string[] }[] }).interfaces[0]!.addresses[0]!).split('/')[0]!;
  /** dig NAME from sandbox s on host i, at its own gateway: "STATUS ANSWERS". */
  const dig = async (i: number, s: string, name: string) => {
    const r = await cluster!.host(i).ctnet(['exec', s, '--', 'dig', `@${gateways[i]}`, '+tries=1', '+time=2', name, 'A']);
    const text = r.stdout + r.stderr;
    const status = /status: (\w+)/.exec(text)?.[1] ?? 'none';
    // Sorted: a shared alias's addresses come in turns.
    const answers = (/;; ANSWER SECTION:\n([\s\S]*?)\n\n/.exec(text)?.[1] ?? '').split('\n').filter(Boolean).map((l) => l.split(/\s+/)[4]).sort();
    return `${status} ${answers.join(',')}`.trim();
  };
  const eventually = async (what: string, cond: () => Promise<boolean>, ms = 90_000): Promise<number> => {
    const start = performance.now();
    while (performance.now() - start < ms) {
      if (await cond()) return performance.now() - start;
      await sleep(50);
    }
    assert.fail(`never: ${what}`);
  };

  before(async () => {
    cluster = await EtcdHosts.create(3, { ttl: TTL });
    // cluster join starts each host's ctnetd (the directory and the DNS server run there).
    await cluster.joinAll();
    await cluster.host(0).ctnetOk(['network', 'create', 'ov', '--driver', 'vxlan', '--subnet', '10.81.0.0/16']);
    for (const [i, lab] of cluster.hosts.entries()) {
      const name = ['a1', 'b2', 'c3'][i]!;
      // svc: an alias shared by b2 (h2) and c3 (h3); only3: c3's alone.
      await lab.ctnetOk(['create', name, '--network', 'ov', ...(i === 2 ? ['--alias', 'svc', '--alias', 'only3'] : i === 1 ? ['--alias', 'svc'] : [])]);
      ips.set(name, await ip(lab, name));
      const v = JSON.parse(await lab.ctnetOk(['network', 'inspect', 'ov', '--json'])) as { subnets: { gateway: string }[] };
      gateways.push(v.subnets[0]!.gateway);
    }
  });
  after(async () => {
    await cluster?.destroy();
  });

  it('a sandbox on h1 resolves the one on h3 by name (NAME, NAME.NETWORK); its removal is seen on every host', async () => {
    const seen = await eventually('a1 on h1 resolves c3', async () => (await dig(0, 'a1', 'c3')) === `NOERROR ${ips.get('c3')}`);
    console.log(`# names across hosts: c3 (h3) resolved on h1 ${seen.toFixed(0)} ms after the setup ended`);
    assert.equal(await dig(0, 'a1', 'c3.ov'), `NOERROR ${ips.get('c3')}`);
    assert.equal(await dig(1, 'b2', 'a1'), `NOERROR ${ips.get('a1')}`, 'h2 resolves h1\'s');
    assert.equal(await dig(2, 'c3', 'c3'), `NOERROR ${ips.get('c3')}`, 'h3 its own');
    assert.equal(await dig(0, 'a1', 'nobody'), 'NXDOMAIN');
    // Aliases go with the directory's entries: an alias answers on every host, and one shared by
    // sandboxes on two hosts answers with both addresses everywhere.
    const both = `NOERROR ${[ips.get('b2'), ips.get('c3')].sort().join(',')}`;
    const aliasSeen = await eventually('h1 resolves svc to b2 and c3', async () => (await dig(0, 'a1', 'svc')) === both);
    console.log(`# aliases across hosts: svc (b2 on h2, c3 on h3) resolved on h1 ${aliasSeen.toFixed(0)} ms after the names did`);
    assert.equal(await dig(0, 'a1', 'svc.ov'), both);
    assert.equal(await dig(2, 'c3', 'svc'), both, 'h3: its own and h2\'s');
    assert.equal(await dig(1, 'b2', 'only3'), `NOERROR ${ips.get('c3')}`);
    // An alias added later (connect --alias is per network; here a new sandbox) follows too.
    await cluster!.host(1).ctnetOk(['create', 'late2', '--network', 'ov', '--alias', 'later']);
    ips.set('late2', await ip(cluster!.host(1), 'late2'));
    await eventually('h1 resolves the alias later', async () => (await dig(0, 'a1', 'later')) === `NOERROR ${ips.get('late2')}`);
    await cluster!.host(1).ctnetOk(['rm', 'late2']);
    await eventually('h1 stops resolving the alias later', async () => (await dig(0, 'a1', 'later')) === 'NXDOMAIN');

    const start = performance.now();
    await cluster!.host(2).ctnetOk(['rm', 'c3']);
    const returned = performance.now() - start;
    const times = await Promise.all([0, 1].map(async (i) => {
      await eventually(`h${i + 1} stops resolving c3`, async () => (await dig(i, ['a1', 'b2'][i]!, 'c3')) === 'NXDOMAIN');
      return performance.now() - start;
    }));
    await eventually('h1 resolves svc to b2 alone, only3 to nothing', async () =>
      (await dig(0, 'a1', 'svc')) === `NOERROR ${ips.get('b2')}` && (await dig(0, 'a1', 'only3')) === 'NXDOMAIN');
    console.log(`# names across hosts: rm c3 on h3 returned after ${returned.toFixed(0)} ms; c3 stopped resolving on h1 after ${times[0]!.toFixed(0)} ms, on h2 after ${times[1]!.toFixed(0)} ms`);
  });
});
