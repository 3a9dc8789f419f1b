// The front end (src/cli/front.c): with ctnetd running, the hot commands (create, rm, connect,
// disconnect, port add, port rm) run inside it, and print, exit and change the same as the Node
// command does on its own. Two labs run the same commands: one with ctnetd (the front end hands
// them over), one without (every command a Node process); outputs must match, once the names
// that differ by design between two state directories (instance ids, veth names, MACs, paths) are
// masked.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Lab, type Result } from '../../src/lab/lab.ts';

describe('the front end hands hot commands to ctnetd, with the same result', () => {
  let fast: Lab;
  let direct: Lab;

  const mask = (lab: Lab, text: string) => text
    .replaceAll(lab.stateDir, 'STATE')
    .replace(/ctnet-[0-9a-f]{4}-/g, 'ctnet-ID-')
    .replace(/\bct[a-z][0-9a-f]{8,}\b/g, 'IFNAME')
    .replace(/([0-9a-f]{2}:){5}[0-9a-f]{2}/g, 'MAC')
    .replace(/0x[0-9a-f]{32}/g, 'ND')
    .replace(/fe80::[0-9a-f:]+/g, 'LINKLOCAL')
    .replace(/ctnet-nft-\w+/g, 'TMP')
    .replace(/\d{4}-\d\d-\d\d[T ][\d:.]+Z?/g, 'TIME');
  const norm = (lab: Lab, r: Result) => ({ code: r.code, stdout: mask(lab, r.stdout), stderr: mask(lab, r.stderr) });
  /** The lines ctnetd logged for commands it ran itself (not those it left to the front end). */
  const ranInDaemon = (lab: Lab) => readFileSync(join(lab.stateDir, 'ctnetd.log'), 'utf8').split('\n').filter((l) => / ctnet .*: exit \d+ in /.test(l));

  /** Runs args in both labs; asserts the same exit code, stdout and stderr; returns the fast lab's. */
  async function both(args: readonly string[] | ((lab: Lab) => string[]), env: NodeJS.ProcessEnv = {}): Promise<Result> {
    const argv = (lab: Lab) => (typeof args === 'function' ? args(lab) : args);
    const [a, b] = await Promise.all([fast.ctnet(argv(fast), env), direct.ctnet(argv(direct), env)]);
    assert.deepEqual(norm(fast, a), norm(direct, b), `ctnet ${argv(fast).join(' ')}`);
    return a;
  }

  before(async () => {
    [fast, direct] = await Promise.all([Lab.create(), Lab.create()]);
    for (const lab of [fast, direct]) {
      await lab.ctnetOk(['network', 'create', 'n1', '--subnet', '10.210.0.0/24']);
      await lab.ctnetOk(['network', 'create', 'n2', '--subnet', '10.211.0.0/24', '--subnet', 'fd00:211::/64']);
    }
    await fast.startDaemon();
  });
  after(async () => {
    await fast?.destroy();
    await direct?.destroy();
  });

  it('runs create, connect, port add/rm, disconnect and rm in ctnetd, printing what the Node command prints', async () => {
    const before = ranInDaemon(fast).length;
    assert.equal((await both(['create', 'a', '--network', 'n1', '--label', 'app=web'])).stdout, 'a\n');
    await both(['create', 'b', '--network', 'n1', '--network', 'n2', '-p', '8081:81']);
    await both(['connect', 'n2', 'a']);
    await both(['port', 'add', 'a', '8080:80', '9090:90/udp']);
    await both(['port', 'a']); // not a hot command: the Node command in both labs
    await both(['port', 'rm', 'a', '9090:90/udp']);
    await both(['disconnect', 'n2', 'a']);
    await both(['policy', 'allow', '--from', 'label:app=web', '--to', 'b', '--port', '81/tcp', '--name', 'web-to-b']);
    await both(['policy', 'deny', '--from', 'b', '--to', 'label:app=web']);
    await both(['label', 'a', 'app=db']);
    await both(['policy', 'rm', 'web-to-b']);
    await both(['policy', 'rm', 'no-such-rule']); // an error: the same message and exit status
    await both(['policy', 'ls']);
    await both((lab) => ['--state-dir', lab.stateDir, 'rm', 'b']); // a global option before the command
    const ran = ranInDaemon(fast).slice(before).join('\n');
    for (const c of ['create a', 'create b', 'connect n2 a', 'port add a', 'port rm a', 'disconnect n2 a', 'policy allow', 'policy deny', 'label a', 'policy rm web-to-b', 'rm b']) {
      assert.match(ran, new RegExp(`ctnet (--state-dir \\S+ )?${c}`), `ctnetd ran "ctnet ${c}"`);
    }
    // The same world on both sides: records and kernel.
    const ls = await both(['ls', '--json']);
    assert.equal((JSON.parse(ls.stdout) as unknown[]).length, 1);
    await both(['inspect', 'a']);
    for (const lab of [fast, direct]) {
      const links = await lab.ctnetOk(['exec', 'a', '--', 'ip', '-br', 'addr']);
      assert.match(links, /eth0\S*\s+UP\s+10\.210\.0\.\d+\/24/);
      assert.doesNotMatch(links, /eth1/);
    }
  });

  it('prints the same --explain and --dry-run lines', async () => {
    await both(['--dry-run', 'create', 'd', '--network', 'n1', '--network', 'n2']);
    await both(['create', 'e', '--network', 'n1', '--explain']);
    await both(['connect', '--explain', 'n2', 'e']);
    await both(['port', 'add', 'e', '7070:70', '--dry-run']);
    await both(['rm', 'e', '--explain']);
  });

  it('gives the same errors, hints and exit codes for bad input, changing nothing', async () => {
    const before = await both(['ls', '--json']);
    const fails = [
      ['create', 'a', '--network', 'n1'], // exists
      ['create'], // commander: missing argument (a subcommand's usage error)
      ['create', 'x', '--bogus'], // commander: unknown option
      ['create', 'x', '--network', 'nope'],
      ['create', 'bad name!', '--network', 'n1'],
      ['create', 'x', '--network', 'n1', '--ip', '10.99.0.5'],
      ['create', 'x', '--network', 'n1', '-p', '70000:80'],
      ['connect', 'n1', 'a'], // already connected
      ['connect', 'n2', 'nobody'],
      ['connect', 'n2'],
      ['port', 'add', 'a', 'notaport'],
      ['port', 'add', 'nobody', '8000:80'],
      ['port', 'rm', 'a', '1234:80'],
      ['disconnect', 'nope', 'a'],
    ];
    for (const args of fails) assert.notEqual((await both(args)).code, 0, `ctnet ${args.join(' ')} fails`);
    assert.match((await both(['rm', 'nobody'])).stderr, /no sandbox named nobody/);
    await both(['port', 'add', 'a', '8080:80']); // published already, in both
    await both(['disconnect', 'n2', 'a']); // not connected: nothing to do, in both
    assert.deepEqual(norm(fast, await fast.ctnet(['ls', '--json'])), norm(fast, before), 'nothing changed');
  });

  it('leaves to the Node command what ctnetd cannot run as that process would', async () => {
    const before = ranInDaemon(fast).length;
    // Help and version; another state directory; a CTNET_* setting.
    await both(['create', '--help']);
    await both((lab) => ['--state-dir', join(lab.stateDir, 'other'), 'rm', 'x']);
    await both(['create', 'f', '--network', 'n1'], { CTNET_DEBUG: '1' });
    await both(['rm', 'f'], { CTNET_DIRECT: '1' });
    assert.equal(ranInDaemon(fast).length, before, 'ctnetd ran none of them');
    // A crash point kills the process that runs the command: the Node command, not ctnetd.
    const crash = await both(['create', 'g', '--network', 'n1'], { CTNET_CRASH_AT: '1' });
    assert.notEqual(crash.code, 0);
    assert.equal((await fast.ctnet(['daemon', 'status'])).code, 0, 'ctnetd still runs');
    await both(['gc']);
    await both(['ls', '--json']);
  });

  it('without ctnetd, runs everything in Node as before', async () => {
    await fast.ctnetOk(['daemon', 'stop']);
    const before = ranInDaemon(fast).length;
    await both(['create', 'h', '--network', 'n1']);
    await both(['rm', 'h']);
    assert.equal(ranInDaemon(fast).length, before);
  });
});
