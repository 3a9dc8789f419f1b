// Issue #2, point 12: `ctnet demo` proves connectivity with real requests and cleans up after itself.
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
  assert.match(stdout, /Connectivity matrix/);
  assert.match(stdout, /web1\s+-\s+ok\s+blocked\s+ok \(world saw 198\.51\.100\.2\)/);
  assert.match(stdout, /All 9 expectations hold/);
  assert.match(stdout, /nftables tables left in the lab host: none/);
});
