// Issue #2, point 12, and issue #4, point 6: `ctnet demo` runs examples/three-tier, proves with real
// requests what policy allows and denies, and cleans up after itself; issue 19, point 6: from the topology file.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { it } from 'node:test';
import { ROOT } from '../../src/lab/lab.ts';

it('ctnet demo prints the matrix, all expectations hold, and removes its lab (leakcheck in CI checks the rest)', async () => {
  const { code, stdout } = await new Promise<{ code: number; stdout: string }>((resolve) =>
    execFile(join(ROOT, 'bin', 'ctnet'), ['demo'], { timeout: 300_000 }, (err, stdout) =>
      resolve({ code: err ? 1 : 0, stdout })));
  assert.equal(code, 0, stdout);
  // Built from the topology file (issue 19, point 6): the plan, then nothing left to change.
  assert.match(stdout, /\$ ctnet apply -f \S+three-tier\.yaml\n\s+Plan for three-tier/);
  assert.match(stdout, /Plan: 9 to add, 0 to change, 0 to replace, 0 to remove\./);
  assert.match(stdout, /\$ ctnet diff -f \S+\n\s+No changes/);
  assert.match(stdout, /\$ ctnet down -f \S+\n\s+ctnet: removed policy web-to-api, api-to-db, no-web-to-db/);
  assert.match(stdout, /Connectivity matrix/);
  assert.match(stdout, /\nweb\s+-\s+ok\s+blocked\s+ok \(saw 198\.51\.100\.2\)/);
  assert.match(stdout, /\napi\s+blocked\s+-\s+ok\s+blocked/);
  assert.match(stdout, /web's published port\): ok \(saw 198\.51\.100\.1\)/);
  assert.match(stdout, /denied {3}web \(192\.168\.10\.2\) -> db \(192\.168\.30\.2\) 3306\/tcp: rule no-web-to-db/);
  assert.match(stdout, /All 14 expectations hold/);
  assert.match(stdout, /nftables tables left in the lab host: none/);
});
