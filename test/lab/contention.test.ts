// Issue 12, point 5: under load nothing fails for contention. 100 mixed operations at once, from
// the CLI and through the CNI plugin (ctnetd): each succeeds or fails for its own reason, never
// with an internal error or "database is locked", and the store and the kernel agree afterwards.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Lab } from '../../src/lab/lab.ts';
import { checkConsistent, readStore } from './consistency.ts';
import { execPlugin, pluginConfigs } from './cni-driver.ts';

describe('contention', () => {
  let lab: Lab;
  let dir: string;
  const netnses: string[] = [];

  before(async () => {
    lab = await Lab.create();
    dir = mkdtempSync(join(tmpdir(), `ctcont-${lab.id}-`));
    await lab.ctnetOk(['network', 'create', 'n1', '--subnet', '10.66.0.0/22']);
    await lab.ctnetOk(['network', 'create', 'n2', '--subnet', '10.67.0.0/22']);
  });
  after(async () => {
    await lab?.destroy();
    for (const n of netnses) {
      try {
        execFileSync('ip', ['netns', 'del', n], { stdio: 'ignore' });
      } catch {
        // gone already
      }
    }
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('100 mixed operations at once (CLI and CNI): none fails for contention, and no address is held twice', async () => {
    const written = (await lab.ctnetOk(['cni', 'install', '--bin-dir', join(dir, 'bin'), '--conf-dir', join(dir, 'conf'), '--network', 'n1'])).trim().split('\n');
    const plugin = written[0]!;
    const conf = JSON.stringify(pluginConfigs(written[1]!)[0]!);
    for (let i = 0; i < 5; i++) await lab.ctnetOk(['create', `pre${i}`, '--network', 'n1', '-p', `${31000 + i}:80`]);
    const ops: (() => Promise<{ code: number; stdout: string; stderr: string; what: string }>)[] = [];
    const cli = (args: string[]) => async () => ({ ...(await lab.ctnet(args)), what: `ctnet ${args.join(' ')}` });
    for (let i = 0; i < 100; i++) {
      switch (i % 8) {
        case 0: ops.push(cli(['create', `s${i}`, '--network', 'n1'])); break;
        case 1: ops.push(cli(['create', `s${i}`, '--network', 'n2', '-p', `${32000 + i}:80`, '--label', 'tier=web'])); break;
        case 2: ops.push(cli(['rm', `pre${(i >> 3) % 5}`])); break;
        case 3: ops.push(cli(['policy', 'allow', '--from', 'label:tier=web', '--to', 'net:n1', '--port', String(1000 + i)])); break;
        case 4: ops.push(cli(['port', 'add', `pre${(i >> 3) % 5}`, `${33000 + i}:81`])); break;
        case 5: ops.push(cli(['network', 'create', `x${i}`, '--subnet', `10.68.${i}.0/24`])); break;
        default: {
          const ns = `ctcont-${lab.id}-${i}`;
          execFileSync('ip', ['netns', 'add', ns]);
          netnses.push(ns);
          const env = (command: string) => ({ CNI_COMMAND: command, CNI_CONTAINERID: `c${i}`, CNI_NETNS: `/run/netns/${ns}`, CNI_IFNAME: 'eth0', CNI_PATH: '/usr/lib/cni' });
          ops.push(async () => {
            const add = await execPlugin(lab, plugin, env('ADD'), conf);
            const del = i % 16 === 6 ? await execPlugin(lab, plugin, env('DEL'), conf) : add;
            return { code: add.code || del.code, stdout: add.stdout + del.stdout, stderr: add.stderr + del.stderr, what: `CNI ADD${del === add ? '' : '+DEL'} c${i}` };
          });
        }
      }
    }
    const results = await Promise.all(ops.map((op) => op()));
    const contention = results.filter((r) => /database is locked|internal error|"code":11|SQLITE_BUSY/.test(r.stdout + r.stderr));
    assert.deepEqual(contention.map((r) => `${r.what}: ${(r.stdout + r.stderr).trim().slice(0, 300)}`), [], 'operations failed for contention');
    // Each failure is one a user can act on (e.g. a port already taken), with a message.
    const failed = results.filter((r) => r.code !== 0);
    for (const r of failed) assert.match(r.stderr + r.stdout, /ctnet: |"msg"/, `${r.what} failed without a message`);
    const s = readStore(lab);
    assert.equal(new Set(s.addresses.map((a) => a.ip)).size, s.addresses.length, 'no address is held twice');
    assert.deepEqual(await checkConsistent(lab), []);
    const slow = results.filter((r) => /waiting for/.test(r.stderr)).length;
    const ok = results.length - failed.length;
    console.log(`# ${ok} of ${results.length} operations succeeded, ${failed.length} failed for their own reasons; ${slow} said they were waiting`);
  });
});
