// Issue #2, point 8 (and published ports, issue #3): a ctnet killed with SIGKILL at any point of create or rm leaves nothing that
// `ctnet gc` cannot bring back to agreement with the store; no address is lost or duplicated.
//
// CTNET_CRASH_AT=N makes ctnet SIGKILL itself at its N-th crash point (between two state changes),
// so every point is hit deterministically; a second part kills from outside at random moments.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { join } from 'node:path';
import { Lab, ROOT } from '../../src/lab/lab.ts';
import { checkConsistent, readStore } from './consistency.ts';

describe('crash safety', () => {
  let lab: Lab;
  before(async () => {
    lab = await Lab.create();
    await lab.ctnetOk(['network', 'create', 'net', '--subnet', '10.45.0.0/24', '--subnet', 'fd00:45::/64']);
    await lab.ctnetOk(['network', 'create', 'side', '--subnet', '10.46.0.0/24']);
  });
  after(() => lab?.destroy());

  /** Runs args with a crash at each point in turn until it completes; checks gc after each crash. */
  async function crashEverywhere(args: (n: number) => string[], prepare?: (n: number) => Promise<void>): Promise<number> {
    for (let n = 0; n < 30; n++) {
      await prepare?.(n);
      const r = await lab.ctnet(args(n), { CTNET_CRASH_AT: String(n) });
      if (r.code === 0) return n; // ran past its last crash point
      await lab.ctnetOk(['gc']);
      assert.deepEqual(await checkConsistent(lab), [], `after a crash at point ${n} of ctnet ${args(n).join(' ')} and gc`);
      const second = await lab.ctnetOk(['gc']);
      assert.match(second, /store and kernel agree/, `gc converged after crash point ${n}`);
    }
    assert.fail('never completed');
  }

  it('create, killed at every point, then gc', async () => {
    const points = await crashEverywhere((n) => ['create', `c${n}`, '--network', 'net', '--network', 'side', '-p', `${20000 + n}:80`]);
    assert.ok(points >= 5, `create has crash points (${points})`);
    // Every address gc released can be handed out again; none is held twice.
    const s = readStore(lab);
    assert.equal(new Set(s.addresses.map((a) => a.ip)).size, s.addresses.length);
  });

  it('rm, killed at every point, then gc', async () => {
    const points = await crashEverywhere((n) => ['rm', `r${n}`], async (n) => {
      await lab.ctnetOk(['run', '-d', '--name', `r${n}`, '--network', 'net', '--', 'sleep', '300']);
    });
    assert.ok(points >= 3, `rm has crash points (${points})`);
    assert.deepEqual(readStore(lab).sandboxes.filter((s) => String(s.name).startsWith('r')).map((s) => s.name), []);
  });

  it('port add and port rm, killed at every point, then gc', async () => {
    await lab.ctnetOk(['create', 'p', '--network', 'net']);
    await crashEverywhere((n) => ['port', 'add', 'p', `${21000 + n}:80/udp`]);
    await crashEverywhere((n) => ['port', 'rm', 'p', `${21100 + n}:80`], async (n) => {
      await lab.ctnetOk(['port', 'add', 'p', `${21100 + n}:80`]);
    });
  });

  it('CNI ADD and DEL in ctnetd, the daemon killed at every point, then gc', async () => {
    const dir = (await lab.ctnetOk(['cni', 'install', '--bin-dir', `${lab.stateDir}/cni-bin`])).trim();
    const conf = JSON.stringify({ cniVersion: '1.0.0', name: 'net', type: 'ctnet', stateDir: lab.stateDir,
      runtimeConfig: { portMappings: [{ hostPort: 22000, containerPort: 80 }] } });
    const nsName = `ctcrash-${lab.id}`;
    await lab.inHost(['ip', 'netns', 'add', nsName]);
    const netns = `/run/netns/${nsName}`;
    const cni = (command: string, crashAt?: number) => lab.inHost(['sh', '-c', `${dir} <<'EOF'\n${conf}\nEOF`],
      { CNI_COMMAND: command, CNI_CONTAINERID: 'crash', CNI_NETNS: netns, CNI_IFNAME: 'eth7', CNI_PATH: '/usr/lib/cni',
        ...(crashAt === undefined ? {} : { CTNET_CRASH_AT: String(crashAt) }) });
    // Each call below starts a fresh ctnetd with CTNET_CRASH_AT from its environment.
    try {
      for (const command of ['ADD', 'DEL']) {
        let n = 0;
        for (; n < 30; n++) {
          await lab.ctnetOk(['daemon', 'stop']);
          if (command === 'DEL') assert.equal((await cni('ADD')).code, 0);
          await lab.ctnetOk(['daemon', 'stop']);
          const r = await cni(command, n);
          await lab.ctnetOk(['daemon', 'stop']);
          if (r.code === 0) break;
          assert.match(r.stdout, /"code":11/, `a crash at point ${n} of ${command} tells the runtime to try again: ${r.stdout}${r.stderr}`);
          await lab.ctnetOk(['gc']);
          assert.deepEqual(await checkConsistent(lab), [], `after a crash at point ${n} of CNI ${command} and gc`);
          assert.equal((await cni('DEL')).code, 0, 'the runtime\'s DEL after a failed call succeeds');
          assert.deepEqual(readStore(lab).cni, []);
          assert.deepEqual(await checkConsistent(lab), []);
        }
        assert.ok(n >= 2 && n < 30, `CNI ${command} has crash points and completes (${n})`);
        await lab.ctnetOk(['daemon', 'stop']);
        assert.equal((await cni('DEL')).code, 0);
      }
    } finally {
      await lab.inHost(['ip', 'netns', 'del', nsName]);
    }
    assert.deepEqual(readStore(lab).sandboxes.filter((s) => String(s.name).startsWith('cni-')), []);
  });

  it('create and rm killed from outside at random moments, then gc: consistent, no address twice', async () => {
    // The points above are where ctnet itself stops; here SIGKILL lands wherever the process is,
    // including inside a kernel tool it runs (whose orphan may stay a zombie: gc treats it as dead).
    const { spawn } = await import('node:child_process');
    const killedRun = (args: string[], afterMs: number) => new Promise<void>((resolve) => {
      const child = spawn('nsenter', [`--net=/run/netns/${lab.host}`, join(ROOT, 'bin', 'ctnet'), ...args],
        { env: { ...process.env, CTNET_STATE_DIR: lab.stateDir }, stdio: 'ignore' });
      const timer = setTimeout(() => child.kill('SIGKILL'), afterMs);
      child.on('exit', () => {
        clearTimeout(timer);
        resolve();
      });
    });
    for (let i = 0; i < 12; i++) {
      const delay = Math.floor(Math.random() * 250);
      await killedRun(['create', `k${i}`, '--network', 'net', '-p', `${23000 + i}:80`], delay);
      await lab.ctnetOk(['gc']);
      assert.deepEqual(await checkConsistent(lab), [], `after create k${i} killed at ${delay} ms and gc`);
      if (readStore(lab).sandboxes.some((s) => s.name === `k${i}`)) {
        await killedRun(['rm', `k${i}`], Math.floor(Math.random() * 150));
        await lab.ctnetOk(['gc']);
        assert.deepEqual(await checkConsistent(lab), [], `after rm k${i} killed and gc`);
      }
      assert.match(await lab.ctnetOk(['gc']), /store and kernel agree/);
    }
    const s = readStore(lab);
    assert.equal(new Set(s.addresses.map((a) => a.ip)).size, s.addresses.length);
    for (const x of s.sandboxes.filter((x) => String(x.name).startsWith('k'))) await lab.ctnetOk(['rm', String(x.name)]);
  });

  it('ctnetd SIGKILLed at a random moment under 10 parallel ADDs: gc, then the runtime\'s DELs, leave nothing', async () => {
    const plugin = (await lab.ctnetOk(['cni', 'install', '--bin-dir', `${lab.stateDir}/cni-bin`])).trim();
    const conf = JSON.stringify({ cniVersion: '1.0.0', name: 'net', type: 'ctnet', stateDir: lab.stateDir });
    const nss = Array.from({ length: 10 }, (_, i) => `ctrand-${lab.id}-${i}`);
    for (const n of nss) await lab.inHost(['ip', 'netns', 'add', n]);
    const cni = (command: string, i: number) => lab.inHost(['sh', '-c', `${plugin} <<'EOF'\n${conf}\nEOF`],
      { CNI_COMMAND: command, CNI_CONTAINERID: `rand${i}`, CNI_NETNS: `/run/netns/${nss[i]}`, CNI_IFNAME: 'eth0', CNI_PATH: '/usr/lib/cni' });
    try {
      assert.equal((await cni('DEL', 0)).code, 0); // starts ctnetd
      const pid = Number(/pid (\d+)/.exec(await lab.ctnetOk(['daemon', 'status']))![1]);
      const adds = Promise.all(nss.map((_, i) => cni('ADD', i)));
      await new Promise((r) => setTimeout(r, 20 + Math.floor(Math.random() * 150)));
      process.kill(pid, 'SIGKILL');
      const results = await adds;
      assert.ok(results.every((r) => r.code === 0 || /"code":11/.test(r.stdout)), 'each ADD succeeded or was told to try again');
      await lab.ctnetOk(['gc']);
      assert.deepEqual(await checkConsistent(lab), []);
      for (const i of nss.keys()) assert.equal((await cni('DEL', i)).code, 0);
      assert.deepEqual(readStore(lab).cni, []);
      assert.deepEqual(await checkConsistent(lab), []);
    } finally {
      await lab.ctnetOk(['daemon', 'stop']);
      for (const n of nss) await lab.inHost(['ip', 'netns', 'del', n]);
    }
  });

  it('network create and network rm, killed at every point, then gc', async () => {
    await crashEverywhere((n) => ['network', 'create', `n${n}`, '--subnet', `10.47.${n}.0/24`]);
    await crashEverywhere((n) => ['network', 'rm', `m${n}`], async (n) => {
      await lab.ctnetOk(['network', 'create', `m${n}`, '--subnet', `10.48.${n}.0/24`]);
    });
  });
});
