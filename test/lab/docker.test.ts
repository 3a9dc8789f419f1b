// Issue 12, point 3: beside Docker. A Docker-shaped iptables ruleset (DOCKER, DOCKER-USER,
// DOCKER-ISOLATION chains, FORWARD policy DROP) stops ctnet's traffic; without consent ctnet changes
// nothing and says what to do; with `ctnet doctor --fix` each network accepts its own bridge in the
// shared FORWARD chain, marked ctnet, and takes it away when it goes.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { Lab, UPLINK } from '../../src/lab/lab.ts';

describe('beside Docker', () => {
  let lab: Lab;
  const egress = async () => (await lab.ctnet(['exec', 's', '--', ...Lab.probeArgv('tcp', UPLINK.remote4, 7000)])).code === 0;
  const published = async () => (await lab.inWorld(Lab.probeArgv('tcp', UPLINK.host4, 8484))).code === 0;
  const ctnetRules = async () => (await lab.inHost(['iptables', '-S', 'FORWARD'])).stdout.split('\n').filter((l) => /--comment "?ctnet/.test(l));
  const until = async (f: () => Promise<boolean>) => {
    for (let i = 0; i < 30; i++) {
      if (await f()) return true;
      await new Promise((r) => setTimeout(r, 100));
    }
    return false;
  };

  before(async () => {
    lab = await Lab.create();
    lab.serveInWorld('remote', { tcp: 7000 });
    await lab.ctnetOk(['network', 'create', 'web', '--subnet', '10.44.0.0/24']);
    await lab.ctnetOk(['run', '-d', '--name', 's', '--network', 'web', '-p', '8484:80', '--', ...Lab.serverArgv('s', { tcp: 80 })]);
    assert.ok(await until(egress) && await until(published), 'both work before Docker');
    // What dockerd leaves in iptables (nft backend), in the lab host only.
    for (const cmd of [
      '-N DOCKER', '-N DOCKER-USER', '-N DOCKER-ISOLATION-STAGE-1', '-N DOCKER-ISOLATION-STAGE-2',
      '-A FORWARD -j DOCKER-USER', '-A FORWARD -j DOCKER-ISOLATION-STAGE-1',
      '-A FORWARD -o docker0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT', '-A FORWARD -o docker0 -j DOCKER',
      '-A DOCKER-ISOLATION-STAGE-1 -j RETURN', '-A DOCKER-ISOLATION-STAGE-2 -j RETURN', '-A DOCKER-USER -j RETURN', '-P FORWARD DROP',
    ]) assert.equal((await lab.inHost(['iptables', ...cmd.split(' ')])).code, 0, `iptables ${cmd}`);
  });
  after(() => lab?.destroy());

  it('without consent: ctnet changes nothing outside its tables, and doctor says what breaks and what to do', async () => {
    assert.equal(await egress(), false, 'Docker\'s FORWARD DROP drops egress');
    assert.equal(await published(), false, 'and published ports');
    const r = await lab.ctnet(['doctor']);
    assert.equal(r.code, 1);
    assert.match(r.stdout, /fail +forward policy +chain ip filter FORWARD drops forwarded packets by default.*\n.*fix: run "ctnet doctor --fix"/);
    await lab.ctnetOk(['network', 'create', 'other', '--subnet', '10.45.0.0/24']);
    assert.deepEqual(await ctnetRules(), []);
    await lab.ctnetOk(['network', 'rm', 'other']);
  });

  it('doctor --fix: each network accepts its own bridge, marked ctnet; new networks too; each takes its rules away', async () => {
    const fix = await lab.ctnet(['doctor', '--fix']);
    assert.match(fix.stdout, /fixed: iptables FORWARD: accepts ctnet's bridges \(ctbr-web\)/);
    assert.ok(await until(egress), 'egress works');
    assert.ok(await until(published), 'published ports work');
    assert.equal(fix.code, 0, fix.stdout);
    assert.deepEqual((await ctnetRules()).sort(), [
      '-A FORWARD -i ctbr-web -m comment --comment ctnet -j ACCEPT',
      '-A FORWARD -o ctbr-web -m comment --comment ctnet -j ACCEPT',
    ]);
    await lab.ctnetOk(['network', 'create', 'two', '--subnet', '10.46.0.0/24']);
    assert.equal((await ctnetRules()).filter((l) => l.includes('ctbr-two')).length, 2, 'a new network accepts its own bridge');
    await lab.ctnetOk(['network', 'rm', 'two']);
    assert.equal((await ctnetRules()).filter((l) => l.includes('ctbr-two')).length, 0, 'and takes it away');
    await lab.ctnetOk(['rm', 's']);
    await lab.ctnetOk(['network', 'rm', 'web']);
    assert.deepEqual(await ctnetRules(), [], 'nothing of ctnet\'s is left in the shared chain with the last network');
    assert.match((await lab.inHost(['iptables', '-S', 'FORWARD'])).stdout, /-P FORWARD DROP[\s\S]*-A FORWARD -j DOCKER-USER/, 'Docker\'s rules are as they were');
  });
});
