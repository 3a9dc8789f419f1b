// ctnetd's agent without ctnetd: services start with a snapshot, get every change once across
// stops and starts (the saved cursor), a failing service recovers from a snapshot, and a cursor
// from another store is not trusted. No kernel, no root.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { startAgent } from '../../src/daemon/agent.ts';
import type { Service } from '../../src/services/service.ts';
import type { ChangeEvent } from '../../src/store/events.ts';
import type { Snapshot } from '../../src/store/feed.ts';
import { Store } from '../../src/store/store.ts';

/** A service that records what it was given, as "#ID kind key action" and "resync@CURSOR reason". */
function recorder(failOn?: number): Service & { got: string[] } {
  const got: string[] = [];
  return {
    name: 'recorder', got,
    start() {},
    changes(events: readonly ChangeEvent[]) {
      if (events.some((e) => e.id === failOn)) {
        failOn = undefined;
        throw new Error('half applied');
      }
      for (const e of events) got.push(`#${e.id} ${e.kind} ${e.key} ${e.action}`);
    },
    resync(s: Snapshot, reason: string) {
      got.push(`resync@${s.cursor} ${reason} (${s.rows.sandbox.map((x) => x.name).join(',')})`);
    },
    stop() {},
  };
}

const until = async (cond: () => boolean) => {
  for (let i = 0; !cond(); i++) {
    if (i > 2000) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 5));
  }
};

describe('ctnetd agent', () => {
  const dirs: string[] = [];
  after(() => {
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  });
  const setup = () => {
    const dir = mkdtempSync(join(tmpdir(), 'ctnet-agent-'));
    dirs.push(dir);
    return { dir, store: new Store(dir) };
  };
  const sandbox = (store: Store, name: string) => store.write(() => store.insertSandbox({ name, netns: '/n', owned: true, state: 'ready' }));

  it('first start: a snapshot; then every change once, also those made while stopped', async () => {
    const { dir, store } = setup();
    sandbox(store, 'a');
    const lines: string[] = [];
    const opts = { stateDir: dir, instance: store.instance, log: (m: string) => lines.push(m) };

    const s1 = recorder();
    const a1 = await startAgent({ ...opts, services: [s1] });
    assert.deepEqual(s1.got, ['resync@1 first start: ctnetd has no saved cursor (a)']);
    sandbox(store, 'b');
    await until(() => s1.got.length === 2);
    await a1.stop();
    assert.equal(a1.cursor, 2);

    sandbox(store, 'c'); // while "ctnetd" is down
    store.write(() => store.deleteSandbox('a'));
    const s2 = recorder();
    const a2 = await startAgent({ ...opts, services: [s2] });
    await until(() => s2.got.length === 2);
    sandbox(store, 'd');
    await until(() => s2.got.length === 3);
    await a2.stop();
    assert.deepEqual([...s1.got.slice(1), ...s2.got], [
      '#2 sandbox b created', '#3 sandbox c created', '#4 sandbox a removed', '#5 sandbox d created',
    ]);
    assert.ok(lines.includes('catching up on changes #3..#4, made while ctnetd was not running'), lines.join('\n'));
    store.close();
  });

  it('a service that fails on a batch gets a snapshot (after a back-off); the others go on', async () => {
    const { dir, store } = setup();
    const bad = recorder(2);
    const good = recorder();
    const lines: string[] = [];
    const agent = await startAgent({ stateDir: dir, instance: store.instance, services: [bad, good], log: (m) => lines.push(m) });
    sandbox(store, 'a');
    await until(() => good.got.length === 2);
    sandbox(store, 'b'); // #2: bad fails on it
    await until(() => bad.got.length === 3); // no further change: the back-off brings the snapshot
    sandbox(store, 'c');
    await until(() => good.got.length === 4 && bad.got.length === 4);
    await agent.stop();
    assert.deepEqual(good.got.slice(1), ['#1 sandbox a created', '#2 sandbox b created', '#3 sandbox c created']);
    assert.deepEqual(bad.got.slice(1), ['#1 sandbox a created', 'resync@2 it failed on an earlier batch (a,b)', '#3 sandbox c created']);
    assert.ok(lines.some((l) => /^service recorder: changes #2\.\.#2 failed: Error: half applied/.test(l)), lines.join('\n'));
    store.close();
  });

  it('a cursor saved for another store is not trusted: snapshot', async () => {
    const { dir, store } = setup();
    sandbox(store, 'a');
    writeFileSync(join(dir, 'ctnetd.cursor'), JSON.stringify({ instance: 'ffff', cursor: 0 }));
    const s = recorder();
    const agent = await startAgent({ stateDir: dir, instance: store.instance, services: [s], log: () => {} });
    await agent.stop();
    assert.deepEqual(s.got, [`resync@1 the saved cursor belongs to store ffff, not ${store.instance} (a)`]);
    store.close();
  });
});
