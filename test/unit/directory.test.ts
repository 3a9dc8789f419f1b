// The sandbox directory on the fake kernel: what a host publishes (its sandboxes on overlay
// networks), how other hosts' entries are mirrored (only differences written; rows go only on a
// delete or a fresh listing), and policy across hosts: labels, names and net:NAME of an overlay
// select remote sandboxes, the policy sets and `policy check` follow the mirror, and a change of
// the mirror cuts the flows it now denies.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { encodeSandbox, sandboxKey, type SandboxValue } from '../../src/cluster/keys.ts';
import { applyMirror, clusterSandboxes, directoryEntries, remoteRow } from '../../src/engine/directory.ts';
import { createNetwork, type OverlaySpec } from '../../src/engine/network.ts';
import { addPolicy, checkPolicy, policyWorld, removePolicies, syncPolicy } from '../../src/engine/policy.ts';
import { createSandbox } from '../../src/engine/sandbox.ts';
import { parseAddr } from '../../src/model/cidr.ts';
import { parseSelector, resolve } from '../../src/model/policy.ts';
import { parseAttachSpec, parseNetworkSpec } from '../../src/model/spec.ts';
import type { Flow } from '../../src/plan/flows.ts';
import { ChangeFeed } from '../../src/store/feed.ts';
import type { RemoteSandboxRow } from '../../src/store/store.ts';
import { withWorld as inWorld, type World } from './fake-world.ts';

const withWorld = <T>(fn: (w: World) => Promise<T>) => inWorld('directory', fn);

const OVERLAY: OverlaySpec = { vni: 42, port: 4789, cidr: '10.50.0.0/16', underlay: { ip: '192.0.2.10', dev: 'eth0', mtu: 1500 } };
/** This host's side of overlay ov (lease 10.50.1.0/24), and a bridge network. */
async function networks(w: World, options: { isolate?: boolean } = {}) {
  await createNetwork(w.ctx, parseNetworkSpec({ name: 'ov', subnet: ['10.50.1.0/24'], isolate: options.isolate }), OVERLAY);
  await createNetwork(w.ctx, parseNetworkSpec({ name: 'br', subnet: ['10.1.0.0/24'] }));
}
const on = (...network: string[]) => parseAttachSpec({ network });
/** api on h2, in h2's lease of ov. */
const API: RemoteSandboxRow = { host: 'h2', name: 'api', addresses: ['10.50.2.2'], labels: { tier: 'api' }, networks: ['ov'], aliases: {} };
const n4 = (ip: string) => parseAddr('address', ip).n;

function flow(src: string, dst: string, dport: number): Flow {
  return { proto: 'tcp', state: 'ESTABLISHED', family: 4, orig: { src, dst, sport: 40000, dport }, reply: { src: dst, dst: src, sport: dport, dport: 40000 } };
}

describe('what a host publishes', () => {
  it('its sandboxes with a ready attachment on an overlay network: their overlay addresses, labels and overlay networks', () => withWorld(async (w) => {
    await networks(w);
    await createSandbox(w.ctx, 'web', on('ov', 'br'), undefined, [{ key: 'tier', value: 'web' }]);
    await createSandbox(w.ctx, 'local', on('br'), undefined, [{ key: 'tier', value: 'web' }]);
    assert.deepEqual([...directoryEntries(w.store)], [['web', { addresses: ['10.50.1.2'], labels: { tier: 'web' }, networks: ['ov'], aliases: {} }]]);
    w.store.write(() => w.store.setAttachmentState('web', 'ov', 'removing'));
    assert.deepEqual([...directoryEntries(w.store)], [], 'an attachment going away is withdrawn');
  }));

  it('with its aliases on overlay networks (so they answer on every host); an entry without aliases is written as before', () => withWorld(async (w) => {
    await networks(w);
    await createSandbox(w.ctx, 'web', parseAttachSpec({ network: ['ov', 'br'], alias: ['api', 'front'] }));
    const [[, v]] = [...directoryEntries(w.store)] as [[string, SandboxValue]];
    assert.deepEqual(v.aliases, { ov: ['api', 'front'] }, 'the bridge network\'s aliases stay local');
    assert.deepEqual(remoteRow({ key: sandboxKey('h2', 'web'), value: encodeSandbox(v) }, 'h1'), { host: 'h2', name: 'web', addresses: v.addresses, labels: {}, networks: ['ov'], aliases: { ov: ['api', 'front'] } });
    assert.equal(encodeSandbox({ ...v, aliases: {} }).includes('aliases'), false);
  }));

  it('reads other hosts\' entries; its own, other keys and bad values are not rows', () => {
    const value = encodeSandbox({ addresses: ['10.50.2.2'], labels: { tier: 'api' }, networks: ['ov'] });
    assert.deepEqual(remoteRow({ key: sandboxKey('h2', 'api'), value }, 'h1'), API);
    assert.equal(remoteRow({ key: sandboxKey('h1', 'web'), value }, 'h1'), undefined);
    assert.equal(remoteRow({ key: '/ctnet/hosts/h2', value: '{}' }, 'h1'), undefined);
    assert.match((remoteRow({ key: sandboxKey('h2', 'x'), value: '{"addresses":"no","labels":{},"networks":[]}' }, 'h1') as { bad: string }).bad, /addresses/);
  });
});

describe('ls --all', () => {
  it('on a host in no cluster: a clear error, pointing at ls', () => withWorld(async (w) => {
    await assert.rejects(clusterSandboxes(w.ctx), /ls --all lists the sandboxes of every host of a cluster: this host is not a member of one/);
  }));
});

describe('the mirror of other hosts\' sandboxes', () => {
  it('writes only what differs; rows go on a delete or when a fresh listing lacks them', () => withWorld(async (w) => {
    const feed = new ChangeFeed(w.dir);
    try {
      const db: RemoteSandboxRow = { host: 'h3', name: 'db', addresses: ['10.50.3.2'], labels: {}, networks: ['ov'], aliases: {} };
      assert.deepEqual(applyMirror(w.store, { put: [API, db], removed: [], snapshot: true }), ['h2/api added', 'h3/db added']);
      const head = feed.head();
      assert.deepEqual(applyMirror(w.store, { put: [API, db], removed: [], snapshot: true }), [], 'the same listing again');
      assert.equal(feed.head(), head, 'no write, no event');
      assert.deepEqual(applyMirror(w.store, { put: [{ ...API, labels: { tier: 'web' } }], removed: [], snapshot: false }), ['h2/api changed']);
      assert.deepEqual(applyMirror(w.store, { put: [], removed: [{ host: 'h9', name: 'x' }], snapshot: false }), [], 'deleting what is not there');
      assert.deepEqual(applyMirror(w.store, { put: [API], removed: [], snapshot: true }), ['h2/api changed', 'h3/db removed']);
      assert.deepEqual(w.store.remoteSandboxes(), [API]);
      const read = feed.read(head);
      assert.ok(read.ok);
      const events = read.events.map((e) => `${e.kind} ${e.key} ${e.action}`);
      assert.deepEqual(events, ['remote h2/api changed', 'remote h2/api changed', 'remote h3/db removed']);
      assert.deepEqual(feed.snapshot().rows.remote, [API], 'the feed carries lists and labels as values');
    } finally {
      feed.close();
    }
  }));
});

describe('policy across hosts', () => {
  it('label:, a sandbox name and net:NAME of an overlay select remote sandboxes; net:NAME is the overlay\'s whole subnet', () => withWorld(async (w) => {
    await networks(w);
    await createSandbox(w.ctx, 'web', on('ov'), undefined, [{ key: 'tier', value: 'web' }]);
    applyMirror(w.store, { put: [API], removed: [], snapshot: true });
    const world = policyWorld(w.store);
    assert.deepEqual(resolve(parseSelector('to', 'label:tier=api'), world, 4), [[n4('10.50.2.2'), n4('10.50.2.2')]]);
    assert.deepEqual(resolve(parseSelector('to', 'api'), world, 4), [[n4('10.50.2.2'), n4('10.50.2.2')]]);
    assert.deepEqual(resolve(parseSelector('to', 'net:ov'), world, 4), [[n4('10.50.0.0'), n4('10.50.255.255')]]);
    assert.deepEqual(resolve(parseSelector('to', 'net:br'), world, 4), [[n4('10.1.0.0'), n4('10.1.0.255')]], 'a bridge network: its own subnet');
    assert.ok(!resolve(parseSelector('to', 'world'), world, 4).some(([s, e]) => s <= n4('10.50.2.2') && n4('10.50.2.2') <= e), 'a remote sandbox is not the world');
  }));

  it('the policy sets, policy check and the cut of denied flows follow the mirror', () => withWorld(async (w) => {
    await networks(w, { isolate: true });
    await createSandbox(w.ctx, 'web', on('ov'), undefined, [{ key: 'tier', value: 'web' }]);
    // A rule may name a remote sandbox only once the directory knows it.
    await assert.rejects(addPolicy(w.ctx, { action: 'allow', from: 'web', to: 'api', port: '8080', name: undefined }), /no sandbox named api/);
    assert.throws(() => checkPolicy(w.ctx, 'web', 'api', '8080'), /neither a sandbox nor an address/);
    await addPolicy(w.ctx, { action: 'allow', from: 'label:tier=web', to: 'label:tier=api', port: '8080', name: 'web-api' });
    assert.deepEqual(w.fake.elements('policy_allow4'), [], 'no api anywhere yet');
    applyMirror(w.store, { put: [API], removed: [], snapshot: true });
    await syncPolicy(w.ctx, { cut: true });
    assert.deepEqual(w.fake.elements('policy_allow4'), ['10.50.1.2 . 10.50.2.2 . 6 . 8080']);
    const check = (port: string) => checkPolicy(w.ctx, 'web', 'api', port).map((r) => `${r.from} -> ${r.to}: ${r.allowed ? 'allowed' : 'denied'} by ${r.by}`);
    assert.deepEqual(check('8080'), ['web (10.50.1.2) -> api@h2 (10.50.2.2): allowed by rule web-api']);
    assert.equal(checkPolicy(w.ctx, 'web', 'api', '8080')[0]!.alsoJudgedBy, 'h2', 'the other host judges it too');
    assert.deepEqual(check('8081'), ['web (10.50.1.2) -> api@h2 (10.50.2.2): denied by default: network ov is --isolate']);
    assert.deepEqual(checkPolicy(w.ctx, 'api', 'web', '8080').map((r) => r.allowed), [false], 'the rule has a direction');
    // A deny beats the allow.
    await addPolicy(w.ctx, { action: 'deny', from: 'web', to: 'api', port: undefined, name: 'no' });
    assert.deepEqual(check('8080'), ['web (10.50.1.2) -> api@h2 (10.50.2.2): denied by rule no']);
    await removePolicies(w.ctx, ['no']);
    // api loses its label on h2: the open connection to it is cut here, and the set empties.
    const open = flow('10.50.1.2', '10.50.2.2', 8080);
    const other = flow('10.50.1.2', '198.51.100.7', 443);
    w.fake.seedFlows(open, other);
    applyMirror(w.store, { put: [{ ...API, labels: {} }], removed: [], snapshot: false });
    await syncPolicy(w.ctx, { cut: true });
    assert.deepEqual(w.fake.elements('policy_allow4'), []);
    assert.deepEqual(await w.fake.flows(), [other], 'only the flow the policy now denies ends');
  }));

  it('on an overlay that is not --isolate, a remote sandbox is in the same network: allowed by default', () => withWorld(async (w) => {
    await networks(w);
    await createSandbox(w.ctx, 'web', on('ov'));
    await createSandbox(w.ctx, 'b', on('br'));
    applyMirror(w.store, { put: [API], removed: [], snapshot: true });
    assert.deepEqual(checkPolicy(w.ctx, 'web', 'api', '8080').map((r) => r.by), ['default: same network (ov)']);
    assert.deepEqual(checkPolicy(w.ctx, 'b', 'api', '8080').map((r) => r.by), ['default: networks br and ov are isolated from each other']);
  }));
});
