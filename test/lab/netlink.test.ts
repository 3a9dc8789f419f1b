// ctnetd's in-process kernel backend (src/kernel/netlink/) makes what the exec backend makes: two
// sandboxes on one network, one created through ctnetd (rtnetlink + libnftables) and one by the
// CLI's own process with CTNET_KERNEL=exec (ip -batch, nft -f), look the same to `ip -d`: the host
// veth's master, hairpin, MTU, state and peer namespace; the sandbox side's MAC, MTU, addresses
// and default routes; their nft elements. Then rm of each by the other backend removes everything.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { ExecBackend } from '../../src/kernel/exec/backend.ts';
import { NetlinkBackend, loadAddon, type NetlinkAddon } from '../../src/kernel/netlink/backend.ts';
import { Lab } from '../../src/lab/lab.ts';
import { checkConsistent, readStore } from './consistency.ts';

type Json = Record<string, unknown>;

describe('netlink backend: the same kernel state as exec', () => {
  let lab: Lab;
  before(async () => {
    lab = await Lab.create();
    await lab.startDaemon();
    await lab.ctnetOk(['network', 'create', 'nl', '--subnet', '10.46.0.0/24', '--subnet', 'fd00:46::/64', '--mtu', '1400']);
  });
  after(() => lab?.destroy());

  const hostJson = async (argv: string[]) => JSON.parse((await lab.inHost(argv)).stdout) as Json[];
  /** What `ip -d` shows of one sandbox's link pair, without what differs by nature (names, indexes, random host MACs). */
  async function shape(sandbox: string) {
    const store = readStore(lab);
    const a = store.attachments.find((x) => x.sandbox === sandbox)!;
    const netns = String(store.sandboxes.find((s) => s.name === sandbox)!.netns).replace('/run/netns/', '');
    const [host] = await hostJson(['ip', '-d', '-j', 'link', 'show', String(a.host_veth)]);
    const [inside] = await hostJson(['ip', '-n', netns, '-d', '-j', 'link', 'show', String(a.ifname)]);
    const ids = await hostJson(['ip', '-j', 'netns', 'list']);
    const addrs = (await hostJson(['ip', '-n', netns, '-j', 'addr', 'show', 'dev', String(a.ifname)]))[0]!.addr_info as Json[];
    const routes = [...await hostJson(['ip', '-n', netns, '-j', '-4', 'route']), ...await hostJson(['ip', '-n', netns, '-j', '-6', 'route'])];
    const slave = (host!.linkinfo as Json).info_slave_data as Json;
    return {
      host: {
        master: host!.master, mtu: host!.mtu, operstate: host!.operstate, flags: host!.flags, kind: (host!.linkinfo as Json).info_kind,
        slave: (host!.linkinfo as Json).info_slave_kind, hairpin: slave.hairpin, learning: slave.learning,
        peerNetns: ids.find((n) => n.id === host!.link_netnsid)?.name === netns,
      },
      inside: {
        mac: inside!.address === a.mac, mtu: inside!.mtu, operstate: inside!.operstate, flags: inside!.flags, kind: (inside!.linkinfo as Json).info_kind,
        addresses: addrs.filter((x) => x.scope === 'global').map((x) => `${x.family} /${x.prefixlen} ${x.broadcast ? 'brd' : ''} ${JSON.stringify(x.flags ?? [])} ${x.local === store.addresses.find((y) => y.sandbox === sandbox && y.ip === x.local)?.ip}`),
      },
      routes: routes.filter((r) => r.dst === 'default').map((r) => `${r.gateway} ${r.dev === a.ifname} ${JSON.stringify(r.flags)} ${r.protocol ?? ''}`),
    };
  }

  it('a sandbox made through ctnetd (netlink) and one made by exec look alike to ip -d', async () => {
    await lab.ctnetOk(['create', 'by-netlink', '--network', 'nl']);
    await lab.ctnetOk(['create', 'by-exec', '--network', 'nl'], { CTNET_KERNEL: 'exec' });
    const log = readFileSync(join(lab.stateDir, 'ctnetd.log'), 'utf8');
    assert.match(log, /kernel backend: netlink, in process/);
    // ctnetd ran the first create's link, address, route and nft work in process (ip netns add is
    // still a spawn, and no nft -i was needed), and never saw the second (the front end runs a command whose caller sets CTNET_* itself).
    assert.match(log, /ctnet create by-netlink --network nl: exit 0 in [\d.]+ ms \(tools [\d.]+ ms in \d+ spawns and 0 nft -i transactions, netlink [\d.]+ ms in [1-9]\d* calls\)/);
    assert.doesNotMatch(log, /ctnet create by-exec --network nl: exit/, 'the CLI ran it in its own process');
    const viaNetlink = await shape('by-netlink');
    const viaExec = await shape('by-exec');
    assert.deepEqual(viaNetlink, viaExec);
    // And what they both are, so that two equal wrong answers cannot pass.
    assert.deepEqual([viaExec.host.master, viaExec.host.mtu, viaExec.host.hairpin, viaExec.host.peerNetns, viaExec.inside.mac, viaExec.inside.mtu],
      ['ctbr-nl', 1400, true, true, true, 1400]);
    assert.equal(viaExec.inside.addresses.length, 2);
    assert.deepEqual(viaExec.routes.map((r) => r.split(' ')[0]).sort(), ['10.46.0.1', 'fd00:46::1']);
    assert.deepEqual(await checkConsistent(lab), []);
  });

  it('reads a sandbox\'s routes, links and addresses as ip -j does (the reads of the CNI and create paths)', async () => {
    const addon = loadAddon();
    assert.ok(!('error' in addon), 'error' in addon ? addon.error : '');
    const exec = new ExecBackend();
    const netlink = new NetlinkBackend(addon as NetlinkAddon, exec);
    // Reads only, in a namespace this lab made (named, so no need to enter the lab host).
    const ns = { name: String(readStore(lab).sandboxes.find((s) => s.name === 'by-netlink')!.netns).replace('/run/netns/', '') };
    const keys = ['dst', 'gateway', 'dev', 'protocol', 'scope', 'prefsrc', 'flags'] as const;
    const pick = (r: Record<string, unknown>) => Object.fromEntries(keys.filter((k) => r[k] !== undefined).map((k) => [k, r[k]]));
    const sort = (xs: Record<string, unknown>[]) => xs.map(pick).sort((a, b) => JSON.stringify(a).localeCompare(JSON.stringify(b)));
    const mine = await netlink.routes(ns);
    assert.deepEqual(sort(mine as never), sort((await exec.routes(ns)) as never));
    assert.equal(mine.filter((r) => r.dst === 'default').length, 2);
    const lk = ['ifindex', 'ifname', 'mtu', 'address', 'operstate', 'link_index', 'link_netnsid'] as const;
    const linkPick = (xs: readonly Record<string, unknown>[]) => xs.map((l) => ({ ...Object.fromEntries(lk.map((k) => [k, l[k]])), kind: (l.linkinfo as { info_kind?: string } | undefined)?.info_kind }));
    assert.deepEqual(linkPick((await netlink.links(ns)) as never), linkPick((await exec.links(ns)) as never));
    const addrPick = (xs: readonly { ifname: string; addr_info: { family: string; local: string; prefixlen: number; scope: string }[] }[]) =>
      xs.map((l) => ({ ifname: l.ifname, addr_info: l.addr_info.map((a) => ({ family: a.family, local: a.local, prefixlen: a.prefixlen, scope: a.scope })) }));
    const addrs = await netlink.addrs(ns);
    assert.deepEqual(addrPick(addrs), addrPick(await exec.addrs(ns)));
    assert.equal(addrs.flatMap((l) => l.addr_info).filter((a) => a.scope === 'global').length, 2);
  });

  it('rm by the other backend removes what each made', async () => {
    await lab.ctnetOk(['rm', 'by-netlink'], { CTNET_KERNEL: 'exec' });
    await lab.ctnetOk(['rm', 'by-exec']);
    const links = (await lab.inHost(['ip', '-o', 'link'])).stdout;
    assert.doesNotMatch(links, /ctv/);
    assert.deepEqual(await checkConsistent(lab), []);
  });
});
