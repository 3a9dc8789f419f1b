// Issue 19: two applies at once on one host are serialized (the state directory's topology lock):
// without it both plan "create" from the same store and the later one fails on what the first made.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Lab } from '../../src/lab/lab.ts';

let lab: Lab;
let dir: string;
before(async () => {
  lab = await Lab.create();
  dir = mkdtempSync(join(tmpdir(), 'ctnet-topo-lock-'));
});
after(async () => {
  await lab?.destroy();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe('concurrent applies (issue 19)', () => {
  it('two applies of one file at once: both succeed, the later one finds nothing to do; the kernel holds the file once', async () => {
    const path = join(dir, 'pair.yaml');
    const sandboxes = Array.from({ length: 6 }, (_, i) => `  s${i}: { networks: [p], labels: { g: "${i % 2}" } }`).join('\n');
    writeFileSync(path, `name: pair\nnetworks:\n  p: { subnets: [10.74.0.0/24] }\nsandboxes:\n${sandboxes}\npolicy:\n  - { name: g0-g1, action: allow, from: "label:g=0", to: "label:g=1", port: 80/tcp }\n`);
    const [a, b] = await Promise.all([lab.ctnet(['apply', '-f', path, '--yes']), lab.ctnet(['apply', '-f', path, '--yes'])]);
    assert.equal(a.code, 0, a.stderr);
    assert.equal(b.code, 0, b.stderr);
    assert.equal([a, b].filter((r) => /^No changes/m.test(r.stdout)).length, 1, `${a.stdout}\n---\n${b.stdout}`);
    assert.equal(JSON.parse(await lab.ctnetOk(['ls', '--json'])).length, 6);
    assert.equal(JSON.parse(await lab.ctnetOk(['policy', 'ls', '--json'])).length, 1);
    assert.equal((await lab.ctnet(['diff', '-f', path, '--detailed-exitcode'])).code, 0);
    // down at the same time as an apply: one after the other, whichever first; never half of each.
    const [d, e] = await Promise.all([lab.ctnet(['down', '-f', path]), lab.ctnet(['apply', '-f', path, '--yes'])]);
    assert.equal(d.code, 0, d.stderr);
    assert.equal(e.code, 0, e.stderr);
    const left = JSON.parse(await lab.ctnetOk(['ls', '--json'])).length;
    assert.ok(left === 0 || left === 6, `all or nothing: ${left} sandboxes`);
    await lab.ctnetOk(['down', '-f', path]);
    assert.deepEqual(JSON.parse(await lab.ctnetOk(['network', 'ls', '--json'])), []);
  });
});
