// Incremental policy compilation (src/model/policy-inc.ts, engine/policy.ts): after every change of
// thousands of random sequences of rule adds, removes and label changes, the sets kept up
// incrementally say exactly what a full compilation of every rule says (same owner for every
// point, boxes disjoint). Seeded: a failure names its seed and step, and repeats.
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { Applier } from '../../src/engine/applier.ts';
import type { Ctx } from '../../src/engine/context.ts';
import { createNetwork } from '../../src/engine/network.ts';
import { addPolicies, changeLabels, fullPolicyState, removePolicies } from '../../src/engine/policy.ts';
import { connect, createSandbox, disconnect, removeSandbox } from '../../src/engine/sandbox.ts';
import { FakeKernel } from '../../src/kernel/fake.ts';
import type { Family } from '../../src/model/cidr.ts';
import {
  compile, formatPortFilter, formatSelector, parsePortFilter, parseSelector, ruleBoxes,
  type Action, type Box, type CompiledBox, type PolicyRule, type PolicyTarget, type PolicyWorld, type Selector,
} from '../../src/model/policy.ts';
import { arrayView, judgeInRegions, recompile, ruleBoxChange, sameOwnership, type JudgedBox } from '../../src/model/policy-inc.ts';
import { decide } from '../../src/model/policy.ts';
import { pickFlows, type Flow } from '../../src/plan/flows.ts';
import ipaddr from 'ipaddr.js';
import { addrToBigint } from '../../src/model/cidr.ts';
import { parseAttachSpec, parseNetworkSpec } from '../../src/model/spec.ts';
import { DatabaseSync } from 'node:sqlite';
import { MIGRATIONS, SCHEMA } from '../../src/store/schema.ts';
import { Store, type PolicyElementRow } from '../../src/store/store.ts';

/** mulberry32: a small seeded generator. */
function rng(seed: number) {
  let a = seed >>> 0;
  const next = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const int = (n: number) => Math.floor(next() * n);
  return { next, int, pick: <T>(xs: readonly T[]): T => xs[int(xs.length)]! };
}
type Rng = ReturnType<typeof rng>;

const SETS: readonly { action: Action; family: Family; target: PolicyTarget }[] = (['allow', 'deny'] as const)
  .flatMap((action) => ([4, 6] as const).flatMap((family) => (['forward', 'host'] as const).map((target) => ({ action, family, target }))));
const setName = (s: (typeof SETS)[number]) => `${s.action}${s.family}${s.target}`;

const SANDBOXES = ['s1', 's2', 's3', 's4', 's5'];
const KEYS = ['tier', 'team'];
const VALUES = ['a', 'b', 'c'];
/** CIDRs that overlap the networks, each other, and the rest of the world in many ways. */
const CIDRS = ['10.1.0.0/24', '10.1.0.0/28', '10.1.0.2', '10.1.0.8/29', '10.2.0.0/16', '10.0.0.0/8', '192.0.2.0/24', '0.0.0.0/1', 'fd00:1::/64', 'fd00::/8', 'fd00:1::2'];
const PORTS = [undefined, '80', '80-90', '85/tcp', '53/udp', '1-65535/udp', 'icmp', '5000-6000/sctp'];

function randomSelector(r: Rng, to: boolean): string {
  switch (r.int(to ? 7 : 6)) {
    case 0: return r.pick(SANDBOXES);
    case 1: return `net:${r.pick(['web', 'db'])}`;
    case 2:
    case 3: return `label:${r.pick(KEYS)}=${r.pick(VALUES)}`;
    case 4: return r.pick(CIDRS);
    case 5: return 'world';
    default: return 'host';
  }
}

function randomRule(r: Rng): { action: Action; from: string; to: string; port: string | undefined } {
  const to = randomSelector(r, true);
  let from = randomSelector(r, false);
  if (to === 'host' && from === 'world') from = 'label:tier=a';
  return { action: r.pick(['allow', 'deny'] as const), from, to, port: r.pick(PORTS) };
}

// ---- the model alone: a world as data, the sets as arrays ----

interface ModelState {
  world: { networks: PolicyWorld['networks']; labels: Map<string, Map<string, string>> };
  rules: PolicyRule[];
  compiled: Map<string, CompiledBox[]>;
  raw: Map<string, CompiledBox[]>;
  nextId: number;
}

function worldOf(m: ModelState): PolicyWorld {
  return {
    networks: m.world.networks,
    sandboxes: SANDBOXES.map((name, i) => ({
      name,
      labels: Object.fromEntries(m.world.labels.get(name) ?? []),
      addresses: [
        { family: 4 as const, n: (i < 3 ? 0x0a010000n : 0x0a020000n) + BigInt(i + 2), network: i < 3 ? 'web' : 'db' },
        ...(i < 3 ? [{ family: 6 as const, n: 0xfd000001000000000000000000000000n + BigInt(i + 2), network: 'web' }] : []),
      ],
    })),
  };
}

/** The rules in `ids` now resolve as they do in m (or are gone): bring the arrays up to date, as the engine does. */
function change(m: ModelState, ids: readonly number[], probeRemoved?: number): Map<string, Box[]> {
  const w = worldOf(m);
  const regions = new Map<string, Box[]>();
  for (const s of SETS) {
    const name = setName(s);
    const raw = m.raw.get(name) ?? [];
    const mine = new Map<number, Box[]>();
    for (const id of ids) {
      const rule = m.rules.find((x) => x.id === id);
      mine.set(id, rule && rule.action === s.action ? ruleBoxes(rule, w, s.family, s.target) : []);
    }
    const rawNow = [...raw.filter((c) => !mine.has(c.rule)), ...[...mine].flatMap(([rule, boxes]) => boxes.map((box) => ({ rule, box })))];
    const compiled = m.compiled.get(name) ?? [];
    // As the engine does: each rule's boxes lost and gained, not its boxes whole.
    const changes = new Map([...mine].map(([rule, now]) => [rule, ruleBoxChange(raw.filter((c) => c.rule === rule).map((c) => c.box), now)]));
    const delta = recompile(arrayView(compiled, rawNow), changes, probeRemoved);
    const gone = new Set(delta.remove);
    m.compiled.set(name, [...compiled.filter((c) => !gone.has(c)), ...delta.add]);
    m.raw.set(name, rawNow);
    regions.set(name, [...delta.region]);
  }
  return regions;
}

function check(m: ModelState, where: string): void {
  const w = worldOf(m);
  for (const s of SETS) {
    const full = compile(m.rules, s.action, w, s.family, s.target);
    const diff = sameOwnership(m.compiled.get(setName(s)) ?? [], full);
    assert.equal(diff, undefined, `${where}, set ${setName(s)}: ${diff}`);
  }
}

/** Label selectors a label change touches: the key's old value and its new one. */
function labelChange(m: ModelState, sandbox: string, key: string, value: string | undefined): number[] {
  const labels = m.world.labels.get(sandbox) ?? new Map<string, string>();
  const selectors = new Set<string>();
  const old = labels.get(key);
  if (old !== undefined) selectors.add(`label:${key}=${old}`);
  if (value !== undefined) selectors.add(`label:${key}=${value}`);
  if (value === undefined) labels.delete(key);
  else labels.set(key, value);
  m.world.labels.set(sandbox, labels);
  return m.rules.filter((r) => selectors.has(formatSelector(r.from)) || selectors.has(formatSelector(r.to))).map((r) => r.id);
}

const NETWORKS: PolicyWorld['networks'] = [
  { name: 'web', internal: false, isolate: false, hostAccess: false, subnets: [{ family: 4, start: 0x0a010000n, end: 0x0a0100ffn }, { family: 6, start: 0xfd000001000000000000000000000000n, end: 0xfd000001000000000000ffffffffffffffn }] },
  { name: 'db', internal: false, isolate: true, hostAccess: false, subnets: [{ family: 4, start: 0x0a020000n, end: 0x0a0200ffn }] },
];

describe('incremental policy compilation', () => {
  it('equals a full compilation after every step of 2,000 random sequences (seeded)', () => {
    for (let seed = 1; seed <= 2000; seed++) {
      const r = rng(seed);
      // Odd seeds free what a changed rule owned by reading it all, even ones by probing each lost box.
      const probe = seed % 2 ? 0 : undefined;
      const m: ModelState = { world: { networks: NETWORKS, labels: new Map() }, rules: [], compiled: new Map(), raw: new Map(), nextId: 1 };
      for (const sb of SANDBOXES) if (r.int(2)) m.world.labels.set(sb, new Map([[r.pick(KEYS), r.pick(VALUES)]]));
      const steps = 4 + r.int(16);
      for (let step = 0; step < steps; step++) {
        const op = r.int(10);
        let what: string;
        if (op < 5 || m.rules.length === 0) {
          // Mostly one rule; sometimes several at once (a rules file).
          const ids: number[] = [];
          const said: string[] = [];
          for (let n = r.int(4) === 0 ? 2 + r.int(4) : 1; n > 0; n--) {
            const req = randomRule(r);
            const port = req.port === undefined ? undefined : parsePortFilter(req.port);
            const id = m.nextId++;
            m.rules.push({ id, name: `r${id}`, action: req.action, from: parseSelector('from', req.from), to: parseSelector('to', req.to), port });
            said.push(`${id} ${req.action} ${req.from} -> ${req.to} ${formatPortFilter(port)}`);
            ids.push(id);
          }
          what = `add ${said.join('; ')}`;
          change(m, ids, probe);
        } else if (op < 8) {
          const gone = r.pick(m.rules);
          m.rules = m.rules.filter((x) => x !== gone);
          what = `remove ${gone.id}`;
          change(m, [gone.id], probe);
        } else {
          const sandbox = r.pick(SANDBOXES);
          const key = r.pick(KEYS);
          const value = r.int(3) ? r.pick(VALUES) : undefined;
          what = `label ${sandbox} ${key}=${value ?? '(removed)'}`;
          change(m, labelChange(m, sandbox, key, value), probe);
        }
        check(m, `seed ${seed}, step ${step} (${what})`);
      }
    }
  });

  it('judges a connection inside the changed region as the rules do (decide), and nothing outside it', () => {
    for (let seed = 1; seed <= 300; seed++) {
      const r = rng(seed + 100_000);
      const m: ModelState = { world: { networks: NETWORKS, labels: new Map() }, rules: [], compiled: new Map(), raw: new Map(), nextId: 1 };
      for (let k = 0; k < 6; k++) {
        const req = randomRule(r);
        const id = m.nextId++;
        m.rules.push({ id, name: `r${id}`, action: req.action, from: parseSelector('from', req.from), to: parseSelector('to', req.to), port: req.port === undefined ? undefined : parsePortFilter(req.port) });
        change(m, [id]);
      }
      const gone = r.pick(m.rules);
      m.rules = m.rules.filter((x) => x !== gone);
      const regions = change(m, [gone.id]);
      const w = worldOf(m);
      const judged = SETS.flatMap((s) => (regions.get(setName(s)) ?? []).map((box) => ({ family: s.family, target: s.target, box })));
      const boxes: JudgedBox[] = SETS.flatMap((s) => (m.compiled.get(setName(s)) ?? []).map((c) => ({ ...s, box: c.box, rule: c.rule })));
      for (let k = 0; k < 200; k++) {
        const toHost = r.int(4) === 0;
        const src = r.int(2) ? 0x0a010000n + BigInt(r.int(4)) : r.pick([0x0a020003n, 0xc0000201n, 0x08080808n]);
        const dst = toHost ? 0n : r.int(2) ? 0x0a020000n + BigInt(r.int(8)) : 0x0a010000n + BigInt(r.int(4));
        const p = { family: 4 as const, src, dst, proto: r.pick([1, 6, 17, 132]), port: r.pick([53, 80, 85, 5000, 8080]), toHost };
        const verdict = judgeInRegions(judged, boxes, w, p);
        if (verdict !== undefined) assert.equal(verdict, decide(m.rules, w, p).allowed, `seed ${seed}: ${JSON.stringify(p, (_, v) => (typeof v === 'bigint' ? v.toString(16) : v))}`);
      }
    }
  });
});

describe('flows a policy change cuts', () => {
  const flow = (src: string, dst: string, dport: number): Flow => ({
    proto: 'tcp', state: 'ESTABLISHED', family: 4,
    orig: { src, dst, sport: 40000, dport }, reply: { src: dst, dst: src, sport: dport, dport: 40000 },
  });
  const n = (ip: string) => addrToBigint(ipaddr.parse(ip));
  const ALL_PROTOS: readonly [bigint, bigint] = [0n, 255n];
  const ALL_PORTS: readonly [bigint, bigint] = [0n, 65535n];
  // The change recomputed 10.1.0.0/24 -> 10.2.0.0/24 (forwarded) and 10.1.0.0/24 -> the host, and denies both now.
  const forward: Box = [[n('10.1.0.0'), n('10.1.0.255')], [n('10.2.0.0'), n('10.2.0.255')], ALL_PROTOS, ALL_PORTS];
  const host: Box = [[n('10.1.0.0'), n('10.1.0.255')], [0n, 0n], ALL_PROTOS, ALL_PORTS];
  const regions = [{ family: 4 as const, target: 'forward' as const, box: forward }, { family: 4 as const, target: 'host' as const, box: host }];
  const boxes: JudgedBox[] = regions.map((r) => ({ ...r, action: 'deny', rule: 1 }));
  const filter = { kind: 'judged' as const, regions, boxes, world: { networks: [], sandboxes: [] } };

  it('lists the host\'s addresses only when a flow is inside a changed region, and cuts what the change denies there', async () => {
    let listed = 0;
    const local = async () => {
      listed++;
      return new Set(['192.0.2.1']);
    };
    const outside = [flow('10.9.0.1', '10.9.0.2', 80), flow('10.9.0.1', '10.2.0.7', 80)];
    assert.deepEqual(await pickFlows(filter, outside, local), []);
    assert.equal(listed, 0, 'no flow in a changed region: no listing of the host\'s addresses');
    const forwarded = flow('10.1.0.5', '10.2.0.7', 80);
    const toHost = flow('10.1.0.5', '192.0.2.1', 22);
    assert.deepEqual(await pickFlows(filter, [...outside, forwarded, toHost], local), [forwarded, toHost]);
    assert.equal(listed, 1);
  });
});

// ---- the engine: the store's index (SQL), the fake kernel's sets ----

const SCRATCH = existsSync('/dev/shm') ? '/dev/shm' : tmpdir();

describe('incremental policy in the engine (store index, fake kernel)', () => {
  it('keeps the kernel\'s sets and the store\'s index equal to a full compilation (100 random sequences, seeded)', async () => {
    const dir = mkdtempSync(join(SCRATCH, 'ctnet-policy-inc-'));
    try {
      for (let seed = 1; seed <= 100; seed++) {
        const sub = join(dir, String(seed));
        const store = new Store(sub);
        const fake = new FakeKernel();
        const warnings: string[] = [];
        const ctx: Ctx = { store, kernel: fake, warn: (x) => void warnings.push(x), applier: new Applier({ backend: fake, store, warn: (x) => void warnings.push(x) }) };
        try {
          await runEngineSequence(ctx, fake, rng(seed + 200_000), seed);
          assert.deepEqual(warnings, []);
        } finally {
          store.close();
          rmSync(sub, { recursive: true, force: true });
        }
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('the policy index across schema versions', () => {
  it('a store of schema 12 (narrow/wide index) opens as the current schema (16 renames its index column): the index is rebuilt by the next change', async () => {
    const dir = mkdtempSync(join(SCRATCH, 'ctnet-policy-12-'));
    try {
      const db = new DatabaseSync(join(dir, 'ctnet.db'));
      db.exec(SCHEMA);
      for (let v = 2; v <= 12; v++) db.exec(MIGRATIONS[v]!);
      db.exec("INSERT INTO meta(key, value) VALUES ('instance', 'ab12'), ('policy.index', '1'); PRAGMA user_version = 12");
      db.exec("INSERT INTO policy_elements(set_name, element, rule, s0, e0, s1, e1, s2, e2, s3, e3, wide) VALUES ('policy_allow4', 'x', 1, '0', '0', '0', '0', 6, 6, 80, 80, 0)");
      db.close();
      const store = new Store(dir);
      const fake = new FakeKernel();
      const ctx: Ctx = { store, kernel: fake, warn: () => {}, applier: new Applier({ backend: fake, store, warn: () => {} }) };
      try {
        assert.equal(store.policyIndexReady(), false, 'the old index is not trusted');
        assert.deepEqual([...store.policyMirror().get('policy_allow4') ?? []], ['x'], 'the mirror of the kernel stays');
        await createNetwork(ctx, parseNetworkSpec({ name: 'b', subnet: ['10.211.0.0/24'] }));
        await addPolicies(ctx, [{ action: 'allow', from: '10.128.0.1', to: 'net:b', port: '8080', name: undefined }]);
        assert.equal(store.policyIndexReady(), true);
        await addPolicies(ctx, [{ action: 'allow', from: '10.128.0.0/31', to: 'net:b', port: '8080', name: undefined }]);
        assert.deepEqual(store.policyState()!.compiled.get('policy_allow4')!.map((e) => [e.rule, e.element]),
          [[1, '10.128.0.1 . 10.211.0.0-10.211.0.255 . 6 . 8080'], [2, '10.128.0.0 . 10.211.0.0-10.211.0.255 . 6 . 8080']]);
      } finally {
        store.close();
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

async function runEngineSequence(ctx: Ctx, fake: FakeKernel, r: Rng, seed: number): Promise<void> {
  const { store } = ctx;
  await createNetwork(ctx, parseNetworkSpec({ name: 'web', subnet: ['10.1.0.0/24', 'fd00:1::/64'] }));
  await createNetwork(ctx, parseNetworkSpec({ name: 'db', subnet: ['10.2.0.0/24'], isolate: true }));
  for (const [i, name] of SANDBOXES.entries()) {
    await createSandbox(ctx, name, parseAttachSpec({ network: [i < 3 ? 'web' : 'db'] }), undefined, r.int(2) ? [{ key: r.pick(KEYS), value: r.pick(VALUES) }] : []);
  }
  let names: string[] = [];
  let extra: string[] = []; // sandboxes made and removed between rule changes (only the rules selecting them are recomputed)
  const steps = 4 + r.int(12);
  for (let step = 0; step < steps; step++) {
    const op = r.int(13);
    let what: string;
    if (op === 10) {
      const name = `x${step}`;
      const labels = r.int(4) ? [{ key: r.pick(KEYS), value: r.pick(VALUES) }] : [];
      const network = r.pick(['web', 'db']);
      what = `create ${name} on ${network} ${labels.map((l) => `${l.key}=${l.value}`).join(' ')}`;
      await createSandbox(ctx, name, parseAttachSpec({ network: [network] }), undefined, labels);
      extra.push(name);
    } else if (op === 11 && extra.length) {
      const gone = r.pick(extra);
      extra = extra.filter((x) => x !== gone);
      what = `rm ${gone}`;
      await removeSandbox(ctx, gone);
    } else if (op === 12 && extra.length) {
      const name = r.pick(extra);
      const on = store.attachments({ sandbox: name }).map((a) => a.network);
      const other = on.includes('web') ? 'db' : 'web';
      if (on.length > 1) {
        what = `disconnect ${other} ${name}`;
        await disconnect(ctx, other, name);
      } else {
        what = `connect ${other} ${name}`;
        await connect(ctx, other, name, []);
      }
    } else if (op < 5 || names.length === 0) {
      // Mostly one rule; sometimes several in one transaction (a rules file).
      const reqs = Array.from({ length: r.int(4) === 0 ? 2 + r.int(4) : 1 }, () => ({ ...randomRule(r), name: undefined }));
      what = `add ${reqs.map((q) => `${q.action} ${q.from} -> ${q.to} ${q.port ?? 'any'}`).join('; ')}`;
      names.push(...(await addPolicies(ctx, reqs)).map((x) => x.name));
    } else if (op < 8) {
      const gone = r.pick(names);
      names = names.filter((x) => x !== gone);
      what = `remove ${gone}`;
      await removePolicies(ctx, [gone]);
    } else {
      const sandbox = r.pick(SANDBOXES);
      const key = r.pick(KEYS);
      const value = r.int(3) ? r.pick(VALUES) : undefined;
      what = `label ${sandbox} ${key}=${value ?? '(removed)'}`;
      await changeLabels(ctx, sandbox, value === undefined ? [] : [{ key, value }], value === undefined ? [key] : []);
    }
    const where = `seed ${seed}, step ${step} (${what})`;
    if (store.policyCount() === 0 && !store.policyIndexReady()) continue; // no rule yet: no index to keep
    const state = store.policyState();
    assert.ok(state, `${where}: the index is complete`);
    const full = fullPolicyState(store).state;
    for (const [set, want] of full.compiled) {
      const have: readonly PolicyElementRow[] = state.compiled.get(set) ?? [];
      const diff = sameOwnership(have, want);
      assert.equal(diff, undefined, `${where}, ${set}: ${diff}`);
      assert.deepEqual((fake.elements(set) ?? []).toSorted(), have.map((e) => e.element).toSorted(), `${where}, ${set}: the kernel holds the index's elements`);
      const raw = (rows: readonly { rule: number; box: Box }[]) => rows.map((x) => `${x.rule}:${x.box.map(([a, b]) => `${a}-${b}`).join('|')}`).toSorted();
      assert.deepEqual(raw(state.raw.get(set) ?? []), raw(full.raw.get(set) ?? []), `${where}, ${set}: every rule's boxes`);
    }
  }
}
