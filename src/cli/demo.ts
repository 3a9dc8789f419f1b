// `ctnet demo`: the main job, in a lab of its own. Two networks, three sandboxes serving HTTP,
// real requests between all of them and out to the lab's world, a connectivity matrix, cleanup.
import { Lab, UPLINK } from '../lab/lab.ts';

interface Cell {
  readonly ok: boolean;
  readonly text: string;
}

const say = (s = '') => process.stdout.write(s + '\n');

export async function runDemo(): Promise<number> {
  say('ctnet demo: building a lab (a throwaway "host" namespace where ctnet runs, and a "world"');
  say(`namespace behind its uplink ${UPLINK.host4} -> ${UPLINK.world4}); the machine's own network is not touched.\n`);
  const lab = await Lab.create();
  const stop = () => void lab.destroy().then(() => process.exit(130));
  process.once('SIGINT', stop).once('SIGTERM', stop);
  try {
    const step = async (args: string[], show = true) => {
      if (show) say(`$ ctnet ${args.join(' ')}`);
      const out = await lab.ctnetOk(args);
      if (show && out.trim()) say(out.trimEnd().split('\n').map((l) => `  ${l}`).join('\n'));
    };
    await step(['network', 'create', 'frontend', '--subnet', '10.10.0.0/24', '--subnet', 'fd00:10::/64']);
    await step(['network', 'create', 'backend', '--subnet', '10.20.0.0/24']);
    say('\nWhat `ctnet create` does to the kernel (--explain prints the equivalent commands):');
    await step(['run', '-d', '--explain', '--name', 'web1', '--network', 'frontend', '--', ...Lab.serverArgv('web1', { http: 80 })]);
    await step(['run', '-d', '--name', 'web2', '--network', 'frontend', '--', ...Lab.serverArgv('web2', { http: 80 })]);
    await step(['run', '-d', '--name', 'db', '--network', 'backend', '--', ...Lab.serverArgv('db', { http: 80 })]);
    lab.serveInWorld('world', { http: 80 });
    say('');
    await step(['ls']);

    const sandboxes = ['web1', 'web2', 'db'];
    const ips = new Map<string, string>();
    for (const s of sandboxes) {
      const v = JSON.parse(await lab.ctnetOk(['inspect', s, '--json'])) as { interfaces: { addresses: string[] }[] };
      ips.set(s, v.interfaces[0]!.addresses[0]!.split('/')[0]!);
    }
    await waitForServers(lab, ips);

    const targets = [...sandboxes, 'world'];
    const http = async (from: string, host: string): Promise<Cell> => {
      const argv = Lab.probeArgv('http', host, 80, 1500);
      const r = from === 'host' ? await lab.inHost(argv) : await lab.ctnet(['exec', from, '--', ...argv]);
      if (r.code !== 0) return { ok: false, text: 'blocked' };
      const seen = (JSON.parse(r.stdout) as { client: string }).client;
      return { ok: true, text: host === UPLINK.remote4 ? `ok (world saw ${seen})` : 'ok' };
    };
    const matrix = new Map<string, Cell>();
    for (const from of [...sandboxes, 'host']) {
      for (const to of targets) {
        if (from === to) continue;
        matrix.set(`${from}>${to}`, await http(from, to === 'world' ? UPLINK.remote4 : ips.get(to)!));
      }
    }
    // The world reaching in: nothing is published, so no sandbox is reachable from outside.
    for (const to of sandboxes) {
      const r = await lab.inWorld(Lab.probeArgv('http', ips.get(to)!, 80, 1000));
      matrix.set(`world>${to}`, r.code === 0 ? { ok: true, text: 'ok' } : { ok: false, text: 'blocked' });
    }

    say('\nConnectivity matrix (HTTP GET from row to column; every cell is a real request):\n');
    const cols = targets;
    const width = 26;
    say('from \\ to'.padEnd(10) + cols.map((c) => `${c} ${c === 'world' ? UPLINK.remote4 : ips.get(c)}`.padEnd(width)).join(''));
    for (const from of [...sandboxes, 'host', 'world']) {
      say(from.padEnd(10) + cols.map((to) => (from === to ? '-' : matrix.get(`${from}>${to}`)?.text ?? '-').padEnd(width)).join(''));
    }

    // What must hold (issue: same network reachable, networks isolated, masqueraded egress).
    const expect: [string, boolean, string][] = [
      ['web1>web2', true, 'sandboxes on one network reach each other'],
      ['web2>web1', true, 'sandboxes on one network reach each other'],
      ['web1>db', false, 'networks are isolated'],
      ['db>web1', false, 'networks are isolated'],
      ['host>web1', true, 'the host reaches its sandboxes'],
      ['host>db', true, 'the host reaches its sandboxes'],
      ['web1>world', true, 'egress works'],
      ['db>world', true, 'egress works'],
      ['world>web1', false, 'nothing is published to the world'],
    ];
    let failures = 0;
    for (const [key, want, why] of expect) {
      const cell = matrix.get(key)!;
      const egressOk = !key.endsWith('>world') || cell.text.includes(UPLINK.host4);
      if (cell.ok !== want || !egressOk) {
        failures++;
        say(`UNEXPECTED: ${key.replace('>', ' -> ')} is "${cell.text}", but ${why}`);
      }
    }
    say(failures === 0
      ? `\nAll ${expect.length} expectations hold: same network reachable, networks isolated, egress masqueraded to ${UPLINK.host4}.`
      : `\n${failures} expectation(s) failed.`);

    say('\nCleaning up:');
    await step(['rm', ...sandboxes]);
    await step(['network', 'rm', 'frontend', 'backend']);
    const table = await lab.inHost(['nft', 'list', 'tables']);
    say(`  nftables tables left in the lab host: ${table.stdout.trim() || 'none'}`);
    return failures === 0 ? 0 : 1;
  } finally {
    await lab.destroy();
    say('lab removed.');
  }
}

async function waitForServers(lab: Lab, ips: Map<string, string>): Promise<void> {
  const targets = [...ips.entries()].map(([s, ip]) => ({ from: s, ip })).concat([{ from: 'web1', ip: UPLINK.remote4 }]);
  for (const t of targets) {
    // The servers were just started; give each up to 5 s to answer (a probe from its own sandbox).
    const from = t.ip === UPLINK.remote4 ? 'web1' : t.from;
    for (let i = 0; i < 50; i++) {
      const r = await lab.ctnet(['exec', from, '--', ...Lab.probeArgv('http', t.ip, 80, 500)]);
      if (r.code === 0) break;
      await new Promise((res) => setTimeout(res, 100));
    }
  }
}
