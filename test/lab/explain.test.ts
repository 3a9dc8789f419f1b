// Issue #2, point 11: what --explain prints for `network create` + `create`, pasted into a shell on
// a clean lab host, rebuilds the same kernel state.
import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import { after, it } from 'node:test';
import { Lab } from '../../src/lab/lab.ts';

const labs: Lab[] = [];
let pasted: string | undefined;
after(async () => {
  if (pasted) await labs[1]?.inHost(['ip', 'netns', 'del', pasted]);
  if (pasted) rmSync(`/etc/netns/${pasted}`, { recursive: true, force: true }); // the sandbox's resolv.conf, written by the pasted script
  for (const l of labs) await l.destroy();
});

async function snapshot(lab: Lab, netns: string): Promise<unknown> {
  const j = async (argv: string[]) => JSON.parse((await lab.inHost(argv)).stdout || '[]');
  const links = (await j(['ip', '-j', '-d', 'link', 'show'])).filter((l: any) => /^ct/.test(l.ifname)).map((l: any) => ({
    ifname: l.ifname, kind: l.linkinfo?.info_kind, master: l.master, mtu: l.mtu,
    address: l.linkinfo?.info_kind === 'bridge' ? l.address : undefined,
  }));
  const addrs = (await j(['ip', '-j', 'addr', 'show'])).filter((a: any) => /^ct/.test(a.ifname))
    .map((a: any) => [a.ifname, a.addr_info.filter((x: any) => x.scope !== 'link').map((x: any) => `${x.local}/${x.prefixlen}`)]);
  const nft = (await lab.inHost(['nft', 'list', 'table', 'inet', 'ctnet'])).stdout.replace(/counter packets \d+ bytes \d+/g, 'counter');
  const inside = async (argv: string[]) => JSON.parse((await lab.inHost(['ip', '-n', netns, '-j', ...argv])).stdout || '[]');
  const nsLinks = (await inside(['link', 'show'])).map((l: any) => ({ ifname: l.ifname, address: l.address, up: l.flags.includes('UP') }));
  const nsAddrs = (await inside(['addr', 'show'])).map((a: any) => [a.ifname, a.addr_info.filter((x: any) => x.scope !== 'link').map((x: any) => `${x.local}/${x.prefixlen}`)]);
  const routes = [...await inside(['-4', 'route', 'show']), ...await inside(['-6', 'route', 'show'])]
    .filter((r: any) => !String(r.dst).startsWith('fe80')).map((r: any) => `${r.dst} ${r.gateway ?? ''} ${r.dev}`);
  return { links, addrs, nft, nsLinks, nsAddrs, routes };
}

it('--explain output of network create + create -p + policy allow, pasted on a clean lab host, reproduces the result', async () => {
  const a = await Lab.create();
  labs.push(a);
  const script = [
    await a.ctnetOk(['network', 'create', 'n', '--subnet', '10.90.0.0/24', '--subnet', 'fd00:90::/64', '--explain']),
    await a.ctnetOk(['create', 's', '--network', 'n', '-p', '8080:80', '--explain']),
    await a.ctnetOk(['policy', 'allow', '--from', 'net:n', '--to', 's', '--port', '80', '--name', 'web', '--explain']),
  ].join('\n');
  const netns = /ip netns add (\S+)/.exec(script)![1]!;
  const want = await snapshot(a, netns);
  assert.match(JSON.stringify(want), /ctbr-n.*10\.90\.0\.1\/24.*endpoints4.*10\.90\.0\.2\/24.*default 10\.90\.0\.1 eth0/s, 'the snapshot holds the real state');
  assert.match(JSON.stringify(want), /ports4_any[^}]*elements = \{ tcp \. 8080 : 10\.90\.0\.2 \. 80/, 'the published port is in the snapshot');
  assert.match(JSON.stringify(want), /policy_allow4[^}]*elements = \{ 10\.90\.0\.0\/24 \. 10\.90\.0\.2 \. tcp \. 80/, 'the policy rule is in the snapshot');
  await a.ctnetOk(['policy', 'rm', 'web']);
  await a.ctnetOk(['rm', 's']);
  await a.ctnetOk(['network', 'rm', 'n']);

  const b = await Lab.create();
  labs.push(b);
  pasted = netns;
  const r = await b.inHost(['sh', '-e', '-c', script]);
  assert.equal(r.code, 0, r.stderr);
  assert.deepEqual(await snapshot(b, netns), want);
});
