// `ctnet graph` on a fixed topology, built by the engine on the fake kernel: the graph's data (json)
// and each rendering (text, dot, svg) against golden files in test/unit/golden/. The random parts
// (MACs, veth names, this machine's hostname) are replaced by stable stand-ins first.
// UPDATE_GOLDEN=1 rewrites the files (then read the diff before committing).
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { instance } from '@viz-js/viz';
import { graphDot, graphText } from '../../src/cli/graph.ts';
import { Applier } from '../../src/engine/applier.ts';
import type { Ctx } from '../../src/engine/context.ts';
import { applyGraphDelta, buildGraph, graphDelta, hostSide, peerNamespaces, touchedSandboxes, updateGraph, type Graph, type GraphDelta } from '../../src/engine/graph.ts';
import { createNetwork } from '../../src/engine/network.ts';
import { addPolicy, changeLabels } from '../../src/engine/policy.ts';
import { publish } from '../../src/engine/publish.ts';
import { createSandbox, removeSandbox } from '../../src/engine/sandbox.ts';
import { netnsIdsFromList } from '../../src/kernel/exec/backend.ts';
import { FakeKernel } from '../../src/kernel/fake.ts';
import { parsePortSpec } from '../../src/model/ports.ts';
import { parseAttachSpec, parseNetworkSpec } from '../../src/model/spec.ts';
import type { ChangeEvent } from '../../src/store/events.ts';
import { ChangeFeed } from '../../src/store/feed.ts';
import { Store } from '../../src/store/store.ts';

const GOLDEN = join(import.meta.dirname, 'golden');

function golden(name: string, actual: string): void {
  const path = join(GOLDEN, name);
  if (process.env.UPDATE_GOLDEN === '1' || !existsSync(path)) writeFileSync(path, actual);
  assert.equal(actual, readFileSync(path, 'utf8'), `${name} differs from the golden file (UPDATE_GOLDEN=1 rewrites it)`);
}

/** The shop: front (dual stack) with web published, back internal with db, api on both; two rules. */
async function shop(): Promise<Graph> {
  const dir = mkdtempSync(join(tmpdir(), 'ctnet-graph-'));
  const store = new Store(dir);
  try {
    const kernel = new FakeKernel();
    const ctx: Ctx = { store, kernel, warn: () => {}, applier: new Applier({ backend: kernel, store, warn: () => {} }) };
    await createNetwork(ctx, parseNetworkSpec({ name: 'front', subnet: ['10.70.1.0/24', 'fd00:70:1::/64'] }));
    await createNetwork(ctx, parseNetworkSpec({ name: 'back', subnet: ['10.70.2.0/24'], internal: true }));
    await createSandbox(ctx, 'web', parseAttachSpec({ network: ['front'] }), { mappings: [parsePortSpec('8080:80')], force: false }, [{ key: 'tier', value: 'web' }]);
    await createSandbox(ctx, 'api', parseAttachSpec({ network: ['back', 'front'] }), undefined, [{ key: 'tier', value: 'api' }]);
    await createSandbox(ctx, 'db', parseAttachSpec({ network: ['back'] }), undefined, [{ key: 'tier', value: 'db' }]);
    await addPolicy(ctx, { action: 'allow', from: 'label:tier=web', to: 'label:tier=api', port: '80/tcp', name: 'web-to-api' });
    await addPolicy(ctx, { action: 'deny', from: 'web', to: 'world', port: undefined, name: 'web-stays-in' });
    const g = await buildGraph(ctx);
    // Stable stand-ins for what is random per run.
    let veth = 0;
    const veths = new Map<string, string>();
    const stable = JSON.parse(JSON.stringify(g), (k, v: unknown) => {
      if (k === 'mac') return '02:00:00:00:00:00';
      if (k === 'hostVeth' && typeof v === 'string') return veths.get(v) ?? (veths.set(v, `ctv${++veth}`), veths.get(v));
      return v;
    }) as Graph;
    return { ...stable, host: { ...stable.host, name: 'h1' } };
  } finally {
    store.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

describe('ctnet graph on a fixed topology (golden files)', async () => {
  const g = await shop();
  it('json: the graph\'s data', () => golden('graph.json', JSON.stringify(g, null, 2) + '\n'));
  it('the rules\' edges are the pairs their selectors stand for', () => {
    assert.deepEqual(g.policy.map((r) => [r.name, r.edges.map((e) => `${e.from}->${e.to}`)]), [['web-to-api', ['web->api']], ['web-stays-in', ['web->world']]]);
  });
  it('text: a tree', () => golden('graph.txt', graphText(g) + '\n'));
  it('dot: for Graphviz', () => golden('graph.dot', graphDot(g)));
  it('svg: laid out in-process (@viz-js/viz), names escaped', async () => {
    const svg = (await instance()).renderString(graphDot(g), { format: 'svg' });
    assert.match(svg, /^<\?xml/);
    const text = svg.replace(/&#45;/g, '-'); // Graphviz writes '-' as an entity
    for (const name of ['web', 'api', 'db', 'ctbr-front', '#1 allow 80/tcp']) assert.ok(text.includes(`>${name}<`), `${name} drawn`);
    golden('graph.svg', svg);
  });
  it('dot escapes what users named: quotes and backslashes in labels stay inside their string', () => {
    const odd: Graph = { ...g, sandboxes: g.sandboxes.map((s) => (s.name === 'web' ? { ...s, labels: { note: 'a"b\\c' } } : s)) };
    assert.match(graphDot(odd), /note=a\\"b\\\\c/);
  });
});

// The host-side match (buildGraph's one read for every sandbox) on what the kernel printed with 300
// named namespaces, each holding a host veth's peer (fixtures/netns-300.json). The graph used to
// take the ids from `ip netns list-id`, which stops at 134 ids: the other sandboxes were read from
// inside, one `ip link` each (docs/ui.md). This test fails on that source.
describe('the host-side veth match (graph)', () => {
  const fx = JSON.parse(readFileSync(join(import.meta.dirname, 'fixtures', 'netns-300.json'), 'utf8')) as {
    links: { ifname: string; link_netnsid?: number }[]; netnsList: { name: string; id?: number }[]; netnsListId: { nsid: number; name?: string }[];
  };
  const veths = Array.from({ length: 300 }, (_, i) => i + 1);

  it('names the namespace of every one of 300 peers from ip -j netns list', () => {
    const peers = peerNamespaces(fx.links, netnsIdsFromList(fx.netnsList));
    const asked = veths.filter((i) => hostSide(`h${i}`, { name: `uit${i}` }, peers) !== 'there');
    assert.deepEqual(asked, [], 'these sandboxes would be read from inside');
  });

  it('ip netns list-id, the old source, would have left most of them to a read inside', () => {
    const peers = peerNamespaces(fx.links, fx.netnsListId);
    const asked = veths.filter((i) => hostSide(`h${i}`, { name: `uit${i}` }, peers) === 'ask-inside');
    assert.equal(fx.netnsListId.length, 134);
    assert.equal(asked.length, 166);
  });

  it('a peer in another namespace, an unnamed one, or no peer at all', () => {
    const peers = peerNamespaces([{ ifname: 'h1', link_netnsid: 0 }, { ifname: 'h2', link_netnsid: 7 }, { ifname: 'lo' }], [{ nsid: 0, name: 'uit1' }, { nsid: 7 }]);
    assert.equal(hostSide('h1', { name: 'uit1' }, peers), 'there');
    assert.equal(hostSide('h1', { name: 'uit2' }, peers), 'ask-inside'); // moved elsewhere: only inside can tell
    assert.equal(hostSide('h1', { path: '/proc/1/ns/net' }, peers), 'ask-inside'); // a runtime's namespace file: no name to match
    assert.equal(hostSide('h2', { name: 'uit2' }, peers), 'ask-inside'); // an id with no /run/netns name
    assert.equal(hostSide('lo', { name: 'uit1' }, peers), 'gone'); // no peer elsewhere
    assert.equal(hostSide('h9', { name: 'uit9' }, peers), 'gone'); // no host end
  });

  it('ip -j netns list: names without an id are left out, odd entries refused', () => {
    assert.deepEqual(netnsIdsFromList([{ name: 'a', id: 3 }, { name: 'b' }, { name: 'c', id: -1 }, { id: 4 }, { name: 'd', id: 1.5 }]), [{ nsid: 3, name: 'a' }]);
  });
});

// The live page's path (services/api/service.ts): after a change, updateGraph rebuilds only the
// sandboxes the feed's events name, and the page patches its graph with graphDelta. Both must give
// what a whole new build gives, and the delta must carry only what changed.
describe('the graph after a change: updateGraph and graphDelta', () => {
  it('a rule\'s pairs that came and went are merged back in (from, to) order', () => {
    const rule = (edges: [string, string][]) => ({ id: 7, name: 'r', action: 'allow' as const, from: 'label:t=a', to: 'label:t=b', port: 'any', edges: edges.map(([from, to]) => ({ from, to })) });
    const graph = (edges: [string, string][]): Graph => ({ host: { name: 'h', underlay: null, cluster: false }, networks: [], sandboxes: [], remoteSandboxes: [], policy: [rule(edges)] });
    const prev = graph([['a1', 'b1'], ['a1', 'b3'], ['a2', 'b1'], ['a2', 'b3'], ['a3', 'b1'], ['a3', 'b3']]);
    const next = graph([['a1', 'b1'], ['a1', 'b2'], ['a1', 'b3'], ['a3', 'b1'], ['a3', 'b2'], ['a3', 'b3']]);
    const d = graphDelta(prev, next);
    assert.deepEqual(d.policy, []);
    assert.deepEqual(d.policyEdges, [{ id: 7, added: [{ from: 'a1', to: 'b2' }, { from: 'a3', to: 'b2' }], removed: [{ from: 'a2', to: 'b1' }, { from: 'a2', to: 'b3' }] }]);
    assert.deepEqual(applyGraphDelta(prev, d), next);
    assert.throws(() => applyGraphDelta({ ...prev, policy: [] }, d), /rule 7/);
  });

  it('create, relabel, publish, a rule, remove: the patched graph equals a new build', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'ctnet-graph-'));
    const store = new Store(dir);
    const feed = new ChangeFeed(dir);
    try {
      const kernel = new FakeKernel();
      const ctx: Ctx = { store, kernel, warn: () => {}, applier: new Applier({ backend: kernel, store, warn: () => {} }) };
      await createNetwork(ctx, parseNetworkSpec({ name: 'front', subnet: ['10.70.1.0/24'] }));
      for (const n of ['a', 'b', 'c']) await createSandbox(ctx, n, parseAttachSpec({ network: ['front'] }), undefined, [{ key: 'tier', value: n }]);
      await addPolicy(ctx, { action: 'allow', from: 'label:tier=a', to: 'label:tier=x', port: '80/tcp', name: 'a-to-x' });
      let graph = await buildGraph(ctx);
      let at = feed.head();
      const step = async (what: string, change: () => Promise<unknown>, check: (d: GraphDelta) => void) => {
        await change();
        const r = feed.read(at);
        assert.ok(r.ok);
        at = r.cursor;
        const touched = touchedSandboxes(r.events);
        assert.notEqual(touched, 'all');
        const next = await updateGraph(ctx, graph, touched as Set<string>);
        assert.deepEqual(next, await buildGraph(ctx), `${what}: updateGraph equals a new build`);
        const d = graphDelta(graph, next);
        assert.deepEqual(applyGraphDelta(graph, d), next, `${what}: the delta applied equals the new graph`);
        check(d);
        graph = next;
      };
      await step('create', () => createSandbox(ctx, 'd', parseAttachSpec({ network: ['front'] })), (d) => {
        assert.deepEqual(d.sandboxes.map((s) => s.name), ['d']);
        assert.deepEqual([d.removed, d.policy], [[], []]);
      });
      await step('relabel', () => changeLabels(ctx, 'b', [{ key: 'tier', value: 'x' }], []), (d) => {
        assert.deepEqual(d.sandboxes.map((s) => [s.name, s.labels]), [['b', { tier: 'x' }]]);
        assert.deepEqual(d.policy.map((r) => [r.name, r.edges]), [['a-to-x', [{ from: 'a', to: 'b' }]]], 'the rule now covers b');
        assert.equal(d.networks, undefined, 'the networks did not change');
      });
      await step('publish', () => publish(ctx, 'c', { mappings: [parsePortSpec('8081:80')], force: false }), (d) => {
        assert.deepEqual(d.sandboxes.map((s) => [s.name, s.ports]), [['c', ['8081:80/tcp']]]);
      });
      await step('a rule', () => addPolicy(ctx, { action: 'deny', from: 'c', to: 'world', port: undefined, name: 'c-stays-in' }), (d) => {
        assert.deepEqual(d.sandboxes, []);
        assert.deepEqual(d.policy.map((r) => r.name), ['c-stays-in']);
      });
      await step('a member joins: only its pair is sent', () => createSandbox(ctx, 'f', parseAttachSpec({ network: ['front'] }), undefined, [{ key: 'tier', value: 'x' }]), (d) => {
        assert.deepEqual(d.sandboxes.map((s) => s.name), ['f']);
        assert.deepEqual(d.policy, [], 'the rule is not sent whole');
        assert.deepEqual(d.policyEdges?.map((e) => [e.added, e.removed]), [[[{ from: 'a', to: 'f' }], []]]);
      });
      await step('a member leaves, of two: the rule is as small whole', () => changeLabels(ctx, 'b', [], ['tier']), (d) => {
        assert.equal(d.policyEdges, undefined);
        assert.deepEqual(d.policy.map((r) => [r.name, r.edges]), [['a-to-x', [{ from: 'a', to: 'f' }]]]);
      });
      await step('remove', () => removeSandbox(ctx, 'a'), (d) => {
        assert.deepEqual(d.removed, ['a']);
        assert.deepEqual(d.policy.map((r) => [r.name, r.edges]), [['a-to-x', []]]);
      });
    } finally {
      feed.close();
      store.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('a change of this host\'s cluster membership touches every sandbox (their host field)', () => {
    const ev = (kind: string, data: object) => ({ id: 1, at: '', kind, action: 'changed', key: '', data }) as unknown as ChangeEvent;
    assert.equal(touchedSandboxes([ev('label', { sandbox: 'a', key: 'k', value: 'v' }), ev('member', { host: 'h' })]), 'all');
    assert.deepEqual(touchedSandboxes([ev('label', { sandbox: 'a' }), ev('sandbox', { name: 'b' }), ev('policy', { id: 3 }), ev('network', { name: 'n' })]), new Set(['a', 'b']));
  });
});
