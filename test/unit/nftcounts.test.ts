import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { countsOfNftJson, parseNftCountOutput } from '../../src/kernel/nftcounts.ts';

describe('nft counts', () => {
  it('reads ctnet-nftcount output: counts per chain and set, null for a missing table', () => {
    const c = parseNftCountOutput('{"inet":{"chains":{"forward":3,"guard":0},"sets":{"ports4":2}},"bridge":null}\n');
    assert.deepEqual(Object.fromEntries(c.inet!.chains), { forward: 3, guard: 0 });
    assert.deepEqual(Object.fromEntries(c.inet!.sets), { ports4: 2 });
    assert.equal(c.bridge, undefined);
  });

  it('refuses output that is not counts, naming what is wrong', () => {
    assert.throws(() => parseNftCountOutput('oops'), /not JSON/);
    assert.throws(() => parseNftCountOutput('{"inet":null}'), /no inet and bridge/);
    assert.throws(() => parseNftCountOutput('{"inet":{"chains":{"x":-1},"sets":{}},"bridge":null}'), /inet\.chains\.x is not a count/);
    assert.throws(() => parseNftCountOutput('{"inet":[],"bridge":null}'), /inet is neither null nor an object/);
  });

  it('counts nft -j items as ctnet-nftcount does: anonymous sets left out, empty chains kept', () => {
    const c = countsOfNftJson([
      { table: { family: 'inet', name: 'ctnet' } },
      { set: { name: 'ports4', elem: ['a', 'b'] } },
      { map: { name: 'vm', elem: [['k', 'v']] } },
      { set: { name: '__set0', elem: ['x'] } },
      { set: { name: 'empty' } },
      { chain: { name: 'forward' } },
      { chain: { name: 'guard' } },
      { rule: { chain: 'forward' } },
      { rule: { chain: 'forward' } },
    ]);
    assert.deepEqual(Object.fromEntries(c.sets), { ports4: 2, vm: 1, empty: 0 });
    assert.deepEqual(Object.fromEntries(c.chains), { forward: 2, guard: 0 });
  });
});
