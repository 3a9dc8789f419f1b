// Benchmark: one policy rule added and removed by the command a user types, with 10 and with
// 10,000 rules present (issue 20, point 1), in one lab: `ctnet policy allow` / `ctnet policy rm`
// handed by the front end to a running ctnetd (the node agent), the same commands as a Node
// process of their own (CTNET_DIRECT=1), and `iptables -A` / `iptables -D` on a FORWARD chain of
// as many rules, in the same lab host, the sides taken in turn; and the fills, timed once: ctnet's
// `policy apply` of the rules (a Node process) against one iptables-nft-restore. See bench/README.md.
//
//   scripts/node bench/policy-cli.ts [--rules 10000] [--samples 15] [--json]
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { table } from '../src/cli/table.ts';
import { Lab } from '../src/lab/lab.ts';
import { intOption, loadAverage, progress, round, stats, timed, trapSignals } from './lib.ts';

const { values } = parseArgs({ options: { rules: { type: 'string' }, samples: { type: 'string' }, json: { type: 'boolean', default: false } } });
const RULES = intOption('rules', values.rules, 10_000, 20, 60_000);
const SAMPLES = intOption('samples', values.samples, 15, 3, 1000);
const LEVELS = [10, RULES];
/** Decoy rule K: from one address of 10.64.0.0/10 to network b, port 7000 (never the measured pair). */
const decoy = (k: number) => `10.${64 + (k >> 16)}.${(k >> 8) & 255}.${k & 255}/32`;

const { interrupted } = trapSignals();
const tmp = mkdtempSync(join(tmpdir(), 'ctnet-bench-'));
let lab: Lab | undefined;
const results: { rules: number; side: string; addP50: number; rmP50: number }[] = [];
/** ctnetd's own time for the commands handed to it, from its log: what the front end's handoff and the process starts around it leave out. */
const inDaemon: { rules: number; addP50: number; rmP50: number; addWaitedP50: number; rmWaitedP50: number; addCount: number; rmCount: number }[] = [];
/** ctnetd's logged times (ms) for `ctnet policy allow|rm ... measured`, and how long each waited in its queue first. */
const daemonTimes = (log: string, verb: 'allow' | 'rm') => [...log.matchAll(new RegExp(`ctnet policy ${verb} [^\\n]*measured[^\\n]*: exit 0 in ([\\d.]+) ms[^\\n]*?(?:, after ([\\d.]+) ms in the queue)?$`, 'gm'))]
  .map((m) => ({ ms: Number(m[1]), waited: Number(m[2] ?? 0) }));
/** The fills, timed once each: ctnet's `policy apply` (a Node process) and one iptables-nft-restore. */
const fills: { rules: number; added: number; policyApplyMs: number; iptablesRestoreMs: number }[] = [];
try {
  progress(`load average ${loadAverage()}`);
  lab = await Lab.create();
  const l = lab;
  await l.ctnetOk(['network', 'create', 'a', '--subnet', '10.230.0.0/24']);
  await l.ctnetOk(['network', 'create', 'b', '--subnet', '10.231.0.0/24']);
  await l.ctnetOk(['create', 'client', '--network', 'a']);
  await l.ctnetOk(['create', 'server', '--network', 'b']);
  await l.startDaemon();
  let have = 0;
  for (const level of LEVELS) {
    if (interrupted()) break;
    // Fill: ctnet's rules in one policy apply, iptables' in one iptables-restore (untimed).
    const file = join(tmp, 'rules.txt');
    writeFileSync(file, Array.from({ length: level - have }, (_, i) => `allow --from ${decoy(have + i)} --to net:b --port 7000/tcp`).join('\n') + '\n');
    const policyApplyMs = await timed(() => l.ctnetOk(['policy', 'apply', file]));
    const restore = ['*filter', ...Array.from({ length: level - have }, (_, i) => `-A FORWARD -s ${decoy(have + i)} -d 10.231.0.0/24 -p tcp --dport 7000 -j ACCEPT`), 'COMMIT', ''].join('\n');
    writeFileSync(join(tmp, 'ipt.txt'), restore);
    let r: Awaited<ReturnType<typeof l.inHost>> | undefined;
    const iptablesRestoreMs = await timed(async () => (r = await l.inHost(['sh', '-c', `iptables-nft-restore --noflush < ${join(tmp, 'ipt.txt')}`])));
    if (r!.code !== 0) throw new Error(`iptables-nft-restore: ${r!.stderr}`);
    fills.push({ rules: level, added: level - have, policyApplyMs: round(policyApplyMs), iptablesRestoreMs: round(iptablesRestoreMs) });
    have = level;
    progress(`${level} rules in place; sampling (load ${loadAverage()})`);
    const sides: Record<string, { add: () => Promise<unknown>; rm: () => Promise<unknown> }> = {
      'ctnet via ctnetd': { add: () => l.ctnetOk(['policy', 'allow', '--from', 'client', '--to', 'server', '--port', '80/tcp', '--name', 'measured']), rm: () => l.ctnetOk(['policy', 'rm', 'measured']) },
      'ctnet, Node process': { add: () => l.ctnetOk(['policy', 'allow', '--from', 'client', '--to', 'server', '--port', '80/tcp', '--name', 'measured'], { CTNET_DIRECT: '1' }), rm: () => l.ctnetOk(['policy', 'rm', 'measured'], { CTNET_DIRECT: '1' }) },
      'iptables-nft': {
        add: async () => { const x = await l.inHost(['iptables-nft', '-A', 'FORWARD', '-s', '10.230.0.2', '-d', '10.231.0.2', '-p', 'tcp', '--dport', '80', '-j', 'ACCEPT']); if (x.code) throw new Error(x.stderr); },
        rm: async () => { const x = await l.inHost(['iptables-nft', '-D', 'FORWARD', '-s', '10.230.0.2', '-d', '10.231.0.2', '-p', 'tcp', '--dport', '80', '-j', 'ACCEPT']); if (x.code) throw new Error(x.stderr); },
      },
    };
    const logFile = join(l.stateDir, 'ctnetd.log');
    const logFrom = readFileSync(logFile, 'utf8').length;
    const names = Object.keys(sides);
    const add = new Map(names.map((n) => [n, [] as number[]]));
    const rm = new Map(names.map((n) => [n, [] as number[]]));
    for (let i = 0; i < SAMPLES && !interrupted(); i++) {
      for (const n of [...names.slice(i % names.length), ...names.slice(0, i % names.length)]) {
        add.get(n)!.push(await timed(sides[n]!.add));
        rm.get(n)!.push(await timed(sides[n]!.rm));
      }
    }
    for (const n of names) results.push({ rules: level, side: n, addP50: round(stats(add.get(n)!).p50), rmP50: round(stats(rm.get(n)!).p50) });
    const log = readFileSync(logFile, 'utf8').slice(logFrom);
    const [adds, rms] = [daemonTimes(log, 'allow'), daemonTimes(log, 'rm')];
    const p50 = (xs: { ms: number; waited: number }[], k: 'ms' | 'waited') => round(stats(xs.map((x) => x[k])).p50);
    if (adds.length && rms.length) {
      inDaemon.push({ rules: level, addP50: p50(adds, 'ms'), rmP50: p50(rms, 'ms'), addWaitedP50: p50(adds, 'waited'), rmWaitedP50: p50(rms, 'waited'), addCount: adds.length, rmCount: rms.length });
    }
  }
  progress(`done (load ${loadAverage()})`);
  if (values.json) console.log(JSON.stringify({ samples: SAMPLES, results, inDaemon, fills }, null, 2));
  else {
    const ipt = (rules: number) => results.find((x) => x.rules === rules && x.side === 'iptables-nft')!;
    console.log(table(['rules', 'side', 'add p50 ms', 'rm p50 ms', 'add / iptables', 'rm / iptables'],
      results.map((x) => [String(x.rules), x.side, String(x.addP50), String(x.rmP50), (x.addP50 / ipt(x.rules).addP50).toFixed(2), (x.rmP50 / ipt(x.rules).rmP50).toFixed(2)])));
    console.log();
    console.log(table(['rules', 'in ctnetd: add p50 ms', 'rm p50 ms', 'queued first: add', 'rm', 'outside ctnetd: add', 'rm', 'logged'],
      inDaemon.map((d) => {
        const via = results.find((x) => x.rules === d.rules && x.side === 'ctnet via ctnetd')!;
        return [String(d.rules), String(d.addP50), String(d.rmP50), String(d.addWaitedP50), String(d.rmWaitedP50),
          String(round(via.addP50 - d.addP50)), String(round(via.rmP50 - d.rmP50)), `${d.addCount}+${d.rmCount}/${2 * SAMPLES}`];
      })));
    console.log();
    console.log(table(['rules after', 'rules added', 'ctnet policy apply ms', 'iptables-nft-restore ms', 'ratio'],
      fills.map((f) => [String(f.rules), String(f.added), String(f.policyApplyMs), String(f.iptablesRestoreMs), (f.policyApplyMs / f.iptablesRestoreMs).toFixed(2)])));
  }
} finally {
  await lab?.destroy();
  rmSync(tmp, { recursive: true, force: true });
}
