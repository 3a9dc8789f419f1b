// `ctnet demo`: the main job, in a lab of its own. Seed 003's three-tier application built from
// its topology file, examples/three-tier/three-tier.yaml, with `ctnet apply` (three networks,
// published web port, policy by label, a server in each sandbox), real HTTP
// requests between every pair and to and from the lab's world, a connectivity matrix, cleanup.
import { join } from 'node:path';
import { Lab, ROOT, UPLINK } from '../lab/lab.ts';

interface Cell {
  readonly ok: boolean;
  readonly text: string;
}

const EXAMPLE = join(ROOT, 'examples', 'three-tier');
const PORTS: Record<string, number> = { web: 80, api: 80, db: 3306 };
const say = (s = '') => process.stdout.write(s + '\n');
const indent = (s: string) => s.trimEnd().split('\n').map((l) => `  ${l}`).join('\n');

export async function runDemo(): Promise<number> {
  say('ctnet demo: building a lab (a throwaway "host" namespace where ctnet runs, and a "world"');
  say(`namespace behind its uplink ${UPLINK.host4} -> ${UPLINK.world4}); the machine's own network is not touched.\n`);
  const lab = await Lab.create();
  const stop = () => void lab.destroy().then(() => process.exit(130));
  process.once('SIGINT', stop).once('SIGTERM', stop);
  try {
    const step = async (args: string[]) => {
      say(`$ ctnet ${args.join(' ')}`);
      const out = await lab.ctnetOk(args);
      if (out.trim()) say(indent(out));
      return out;
    };
    say('Seed 003\'s three-tier application, from its topology file (SERVE: the demo\'s test server):');
    const file = join(EXAMPLE, 'three-tier.yaml');
    say(`$ ctnet apply -f ${file}`);
    const serve = { SERVE: Lab.serveCommand() };
    say(indent(await lab.ctnetOk(['apply', '-f', file], serve)));
    say(`$ ctnet diff -f ${file}`);
    say(indent(await lab.ctnetOk(['diff', '-f', file], serve)));
    lab.serveInWorld('world', { http: 80 });
    say('');
    await step(['ls']);
    await step(['port', 'web']);

    const tiers = ['web', 'api', 'db'];
    const ips = new Map<string, string>();
    for (const s of tiers) {
      const v = JSON.parse(await lab.ctnetOk(['inspect', s, '--json'])) as { interfaces: { addresses: string[] }[] };
      ips.set(s, v.interfaces[0]!.addresses[0]!.split('/')[0]!);
    }
    await waitForServers(lab, ips);

    const http = async (from: string, host: string, port: number): Promise<Cell> => {
      const argv = Lab.probeArgv('http', host, port, 1500);
      const r = from === 'host' ? await lab.inHost(argv) : from === 'world' ? await lab.inWorld(argv) : await lab.ctnet(['exec', from, '--', ...argv]);
      if (r.code !== 0) return { ok: false, text: 'blocked' };
      const seen = (JSON.parse(r.stdout) as { client: string }).client;
      return { ok: true, text: from === 'world' || host === UPLINK.remote4 ? `ok (saw ${seen})` : 'ok' };
    };
    const cols = [...tiers, 'world'];
    const matrix = new Map<string, Cell>();
    for (const from of [...tiers, 'host', 'world']) {
      for (const to of cols) {
        if (from === to) continue;
        if (from === 'world') {
          // Unpublished addresses are not reachable from outside; web is, through the host's port 8080.
          if (to === 'web') matrix.set('world>web:8080', await http('world', UPLINK.host4, 8080));
          matrix.set(`world>${to}`, await http('world', ips.get(to)!, PORTS[to]!));
          continue;
        }
        matrix.set(`${from}>${to}`, await http(from, to === 'world' ? UPLINK.remote4 : ips.get(to)!, to === 'world' ? 80 : PORTS[to]!));
      }
    }

    say('\nConnectivity matrix (HTTP GET from row to column; every cell is a real request):\n');
    const width = 28;
    const head = (c: string) => (c === 'world' ? `world ${UPLINK.remote4}` : `${c} ${ips.get(c)}:${PORTS[c]}`);
    say('from \\ to'.padEnd(10) + cols.map((c) => head(c).padEnd(width)).join(''));
    for (const from of [...tiers, 'host', 'world']) {
      say(from.padEnd(10) + cols.map((to) => (from === to ? '-' : matrix.get(`${from}>${to}`)?.text ?? '-').padEnd(width)).join(''));
    }
    say(`world -> ${UPLINK.host4}:8080 (web's published port): ${matrix.get('world>web:8080')!.text}`);

    const expect: [string, boolean, string][] = [
      ['web>api', true, 'policy web-to-api allows it'],
      ['api>db', true, 'policy api-to-db allows it'],
      ['web>db', false, 'policy no-web-to-db denies it'],
      ['api>web', false, 'rules go one way (replies pass, new connections back do not)'],
      ['db>api', false, 'rules go one way'],
      ['web>world', true, 'only the frontend has internet access'],
      ['api>world', false, 'backend is --internal'],
      ['db>world', false, 'database is --internal'],
      ['host>db', true, 'the host reaches its sandboxes'],
      ['world>web:8080', true, 'web is published on port 8080'],
      ['world>web', false, 'unpublished addresses are not reachable from outside'],
      ['world>db', false, 'unpublished addresses are not reachable from outside'],
    ];
    let failures = 0;
    for (const [key, want, why] of expect) {
      const cell = matrix.get(key)!;
      if (cell.ok !== want) {
        failures++;
        say(`UNEXPECTED: ${key.replace('>', ' -> ')} is "${cell.text}", but ${why}`);
      }
    }
    if (!matrix.get('web>world')!.text.includes(UPLINK.host4)) {
      failures++;
      say(`UNEXPECTED: web's egress was not masqueraded to ${UPLINK.host4}`);
    }
    if (!matrix.get('world>web:8080')!.text.includes(UPLINK.world4)) {
      failures++;
      say(`UNEXPECTED: web did not see the world's real address ${UPLINK.world4}`);
    }
    say(failures === 0
      ? `\nAll ${expect.length + 2} expectations hold: policy decides between tiers, only the frontend has egress (masqueraded\nto ${UPLINK.host4}), web is published on port 8080 and sees the real client address.`
      : `\n${failures} expectation(s) failed.`);

    say('\nWhy (ctnet policy check says which rule or default decides; ls counts what each rule decided):');
    for (const [from, to, port] of [['web', 'api', '80/tcp'], ['web', 'db', '3306/tcp'], ['api', 'web', '80/tcp'], ['api', UPLINK.remote4, '80/tcp']] as const) {
      await step(['policy', 'check', from, to, port]);
    }
    await step(['policy', 'ls']);

    say('\nCleaning up (exactly what the file made):');
    await step(['down', '-f', file]);
    const table = await lab.inHost(['nft', 'list', 'tables']);
    say(`  nftables tables left in the lab host: ${table.stdout.trim() || 'none'}`);
    return failures === 0 ? 0 : 1;
  } finally {
    await lab.destroy();
    say('lab removed.');
  }
}

async function waitForServers(lab: Lab, ips: Map<string, string>): Promise<void> {
  // The servers were just started; give each up to 5 s to answer (from the lab host).
  for (const [s, ip] of ips) {
    for (let i = 0; i < 50; i++) {
      if ((await lab.inHost(Lab.probeArgv('http', ip, PORTS[s]!, 500))).code === 0) break;
      await new Promise((res) => setTimeout(res, 100));
    }
  }
}
