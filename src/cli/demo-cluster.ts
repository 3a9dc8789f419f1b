// `ctnet demo cluster`: issue 14's overlay in a lab of its own. etcd in its own namespace on a lab
// underlay, three lab hosts (each with its own state directory and ctnetd) joining it, one overlay
// network, a sandbox per host, every pair talking across hosts, a host leaving and coming back
// with its subnet; then everything is removed. The machine's own network is not touched.
import { EtcdLab } from '../lab/etcd.ts';
import { Lab } from '../lab/lab.ts';

const say = (s = '') => process.stdout.write(s + '\n');
const indent = (s: string) => s.trimEnd().split('\n').map((l) => `    ${l}`).join('\n');
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export async function runClusterDemo(): Promise<number> {
  say('ctnet demo cluster: etcd in a namespace of its own on a lab underlay (192.0.2.0/24), and three');
  say('lab hosts h1, h2, h3 on it, each a namespace with its own ctnet state and ctnetd.\n');
  const etcd = await EtcdLab.create();
  const hosts: Lab[] = [];
  const names = ['h1', 'h2', 'h3'];
  let code = 0;
  const stop = () => void cleanup().then(() => process.exit(130));
  process.once('SIGINT', stop).once('SIGTERM', stop);
  async function cleanup(): Promise<void> {
    for (const h of hosts) await h.destroy();
    await etcd.destroy();
  }
  try {
    for (let i = 0; i < 3; i++) {
      const lab = await Lab.create();
      hosts.push(lab);
      await etcd.connect(lab.host);
    }
    const on = async (i: number, args: string[], quiet = false) => {
      say(`${names[i]}$ ctnet ${args.join(' ')}`);
      const out = await hosts[i]!.ctnetOk(args);
      if (out.trim() && !quiet) say(indent(out));
      return out;
    };
    const ipOf = async (i: number, s: string) =>
      ((JSON.parse(await hosts[i]!.ctnetOk(['inspect', s, '--json'])) as { interfaces: { addresses: string[] }[] }).interfaces[0]!.addresses[0]!).split('/')[0]!;
    const reach = async (i: number, s: string, to: string) => (await hosts[i]!.ctnet(['exec', s, '--', ...Lab.probeArgv('tcp', to, 80)])).code === 0;
    const until = async (cond: () => Promise<boolean>, ms = 30_000) => {
      const start = performance.now();
      while (performance.now() - start < ms) {
        if (await cond()) return performance.now() - start;
        await sleep(100);
      }
      return undefined;
    };

    for (const [i, n] of names.entries()) await on(i, ['cluster', 'join', '--etcd', etcd.url, '--underlay', 'underlay0', '--host-name', n, '--lease-ttl', '10'], true);
    say('');
    await on(0, ['network', 'create', 'ov', '--driver', 'vxlan', '--subnet', '10.50.0.0/16']);
    const sandboxes = ['web', 'api', 'db'];
    for (const [i, s] of sandboxes.entries()) await on(i, ['run', '-d', '--name', s, '--network', 'ov', '--', ...Lab.serverArgv(s, { tcp: 80 })], true);
    const ips = await Promise.all(sandboxes.map((s, i) => ipOf(i, s)));
    say('');
    sandboxes.forEach((s, i) => say(`  ${s} on ${names[i]}: ${ips[i]} (${names[i]}'s lease ${ips[i]!.split('.').slice(0, 3).join('.')}.0/24)`));
    say('');
    const matrix = async (title: string, members: number[]) => {
      const t = await until(async () => {
        for (const a of members) for (const b of members) if (a !== b && !(await reach(a, sandboxes[a]!, ips[b]!))) return false;
        return true;
      });
      // (How fast hosts converge is measured in bench/ and test/lab/overlay.test.ts, not here: these
      // probes run one after another, each a process or two.)
      say(`${title}${t === undefined ? ' (not all within 30 s)' : ''}:`);
      say(`  ${'from \\ to'.padEnd(12)}${members.map((b) => sandboxes[b]!.padEnd(10)).join('')}`);
      let ok = true;
      for (const a of members) {
        const cells: string[] = [];
        for (const b of members) {
          if (a === b) cells.push('-'.padEnd(10));
          else {
            const r = await reach(a, sandboxes[a]!, ips[b]!);
            ok &&= r;
            cells.push((r ? 'ok' : 'FAILED').padEnd(10));
          }
        }
        say(`  ${`${sandboxes[a]}@${names[a]}`.padEnd(12)}${cells.join('')}`);
      }
      say('');
      return ok;
    };
    let ok = await matrix('TCP between every pair, across hosts', [0, 1, 2]);
    await on(0, ['cluster', 'ls']);
    await on(0, ['network', 'inspect', 'ov']);
    say('\nh3 leaves the cluster (its sandbox first, then its side of the network):');
    await on(2, ['rm', 'db'], true);
    await on(2, ['network', 'rm', 'ov'], true);
    await on(2, ['cluster', 'leave'], true);
    const gone = await until(async () => !(await hosts[0]!.inHost(['ip', 'route', 'show', 'dev', 'ctov-ov'])).stdout.includes(ips[2]!.split('.').slice(0, 3).join('.')));
    say(`  h3's entries left h1's kernel ${gone === undefined ? 'NOT within 30 s' : `after ${(gone / 1000).toFixed(1)} s`}`);
    ok &&= gone !== undefined;
    await on(0, ['cluster', 'ls']);
    say('\nh3 comes back: it joins again, and its first sandbox on ov takes back the same subnet:');
    await on(2, ['cluster', 'join', '--etcd', etcd.url, '--underlay', 'underlay0', '--host-name', 'h3', '--lease-ttl', '10'], true);
    await on(2, ['run', '-d', '--name', 'db', '--network', 'ov', '--', ...Lab.serverArgv('db', { tcp: 80 })], true);
    const back = await ipOf(2, 'db');
    const same = back.split('.').slice(0, 3).join('.') === ips[2]!.split('.').slice(0, 3).join('.');
    say(`  db on h3: ${back} (${same ? 'the same subnet as before' : 'ANOTHER subnet'})`);
    ips[2] = back;
    ok &&= same;
    say('');
    ok &&= await matrix('TCP between every pair again', [0, 1, 2]);
    say(ok ? 'All of it held.' : 'Something did not hold: see FAILED above.');
    code = ok ? 0 : 1;
  } catch (e) {
    say(`demo failed: ${(e as Error).message}`);
    code = 1;
  } finally {
    await cleanup();
    say('\nRemoved: the three hosts (their sandboxes, networks, ctnetd), etcd and its data, the underlay.');
  }
  return code;
}
