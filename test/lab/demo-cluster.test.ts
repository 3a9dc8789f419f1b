// Issue 14, point 10: `ctnet demo cluster` builds three lab hosts and etcd, shows sandboxes on
// different hosts talking, a host leaving and coming back with its subnet, and removes everything
// (leakcheck in CI checks the rest).
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { it } from 'node:test';
import { ROOT } from '../../src/lab/lab.ts';

it('ctnet demo cluster: every pair talks across hosts, a host leaves and comes back with its subnet, all is removed', async () => {
  const { code, stdout } = await new Promise<{ code: number; stdout: string }>((resolve) =>
    execFile(join(ROOT, 'bin', 'ctnet'), ['demo', 'cluster'], { timeout: 600_000 }, (err, stdout) =>
      resolve({ code: err ? 1 : 0, stdout })));
  assert.equal(code, 0, stdout);
  assert.match(stdout, /TCP between every pair, across hosts:\n.*\n\s+web@h1\s+-\s+ok\s+ok\s*\n\s+api@h2\s+ok\s+-\s+ok\s*\n\s+db@h3\s+ok\s+ok\s+-/);
  assert.match(stdout, /h2\s+10\.50\.1\.0\/24\s+192\.0\.2\.11\s+\S+\s+yes\s+yes\s+yes/);
  assert.match(stdout, /h3's entries left h1's kernel after/);
  assert.match(stdout, /db on h3: 10\.50\.2\.\d+ \(the same subnet as before\)/);
  assert.match(stdout, /All of it held\./);
  assert.match(stdout, /Removed: the three hosts/);
});
