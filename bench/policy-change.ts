// Benchmark: what one policy change costs ctnet's engine with 10 and with 10,000 rules present,
// without process start. In one lab per level, ctnet's engine runs in process (this script enters
// nothing: it runs itself again inside the lab host with nsenter --net) and times
//   - plan:    adding one allow rule as a dry run (the store, the index, the incremental compile;
//              no kernel): the work that must not grow with the rule count,
//   - apply:   adding one allow rule for real (plan + one nft transaction),
//   - remove:  removing it (plan + nft + the conntrack listing that finds flows to cut),
// next to the peers in the same lab: `nft add element` of one element into the same set (the
// process ctnet's apply spawns) and `iptables-nft -A` of one rule into a FORWARD chain of the same
// size. See bench/README.md.
//
//   scripts/node bench/policy-change.ts [--rules N] [--samples N] [--json]
import { writeFileSync } from 'node:fs';
import { loadavg } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { table } from '../src/cli/table.ts';
import { Lab, ROOT } from '../src/lab/lab.ts';
import { check, exec, intOption, optionsOrExit, progress, quantile, timed, trapSignals } from './lib.ts';

const SMALL = 10;
const NODE = join(ROOT, 'scripts', 'node');
const SELF = join(ROOT, 'bench', 'policy-change.ts');
const decoy = (i: number) => `10.${128 + (i >> 16)}.${(i >> 8) & 255}.${i & 255}/32`;

interface Options { readonly rules: number; readonly samples: number; readonly json: boolean }

const USAGE = `usage: scripts/node bench/policy-change.ts [--rules N] [--samples N] [--json]
  --rules N     rules in the big level (default 10000; the small level is ${SMALL})
  --samples N   changes timed per kind and level (default 15)
  --json        print the results as JSON`;

function parseOptions(argv: readonly string[]): Options | 'help' {
  const { values } = parseArgs({
    args: [...argv],
    options: { rules: { type: 'string' }, samples: { type: 'string' }, json: { type: 'boolean', default: false }, help: { type: 'boolean', short: 'h', default: false } },
    strict: true, allowPositionals: false,
  });
  if (values.help) return 'help';
  return { rules: intOption('rules', values.rules, 10_000, SMALL + 1, 100_000), samples: intOption('samples', values.samples, 15, 1, 1000), json: values.json };
}

type Samples = Record<'plan' | 'apply' | 'remove' | 'nftAdd' | 'iptablesAdd', number[]>;

/** Inside the lab host (argv: --inside STATE_DIR SAMPLES): the engine in process; prints Samples as JSON. */
async function inside(stateDir: string, samples: number): Promise<void> {
  const { Store } = await import('../src/store/store.ts');
  const { createCtx } = await import('../src/engine/context.ts');
  const { addPolicy, removePolicies } = await import('../src/engine/policy.ts');
  const store = new Store(stateDir);
  const ctx = createCtx({ store, warn: () => {} });
  const dry = createCtx({ store, warn: () => {}, dryRun: true, explain: () => {} });
  const out: Samples = { plan: [], apply: [], remove: [], nftAdd: [], iptablesAdd: [] };
  const req = (k: number) => ({ action: 'allow' as const, from: 'client', to: 'server', port: `${9000 + k}/tcp`, name: `change${k}` });
  try {
    for (let k = 0; k < samples; k++) {
      out.plan.push(await timed(() => addPolicy(dry, req(k))));
      out.apply.push(await timed(() => addPolicy(ctx, req(k))));
      out.remove.push(await timed(() => removePolicies(ctx, [`change${k}`])));
      const el = `10.250.0.${k} . 10.211.0.10 . 6 . 8080`;
      out.nftAdd.push(await timed(async () => check(['nft'], await exec(['nft', `add element inet ctnet policy_allow4 { ${el} }`]))));
      check(['nft'], await exec(['nft', `delete element inet ctnet policy_allow4 { ${el} }`]));
      out.iptablesAdd.push(await timed(async () => check(['iptables-nft'], await exec(['iptables-nft', '-w', '-A', 'FORWARD', '-s', `10.250.1.${k}/32`, '-j', 'ACCEPT']))));
    }
  } finally {
    store.close();
  }
  process.stdout.write(`${JSON.stringify(out)}\n`);
}

async function level(rules: number, samples: number): Promise<Samples> {
  const lab = await Lab.create();
  try {
    await lab.ctnetOk(['network', 'create', 'a', '--subnet', '10.210.0.0/24']);
    await lab.ctnetOk(['network', 'create', 'b', '--subnet', '10.211.0.0/24']);
    await lab.ctnetOk(['create', 'client', '--network', 'a', '--ip', '10.210.0.10']);
    await lab.ctnetOk(['create', 'server', '--network', 'b', '--ip', '10.211.0.10']);
    const file = join(lab.stateDir, 'rules.txt');
    writeFileSync(file, Array.from({ length: rules }, (_, i) => `allow --from ${decoy(i)} --to net:b --port 8080/tcp`).join('\n') + '\n');
    await lab.ctnetOk(['policy', 'apply', file]);
    // The peer's chain holds as many rules as ctnet's sets.
    const restore = `*filter\n${Array.from({ length: rules }, (_, i) => `-A FORWARD -s ${decoy(i)} -d 10.211.0.0/24 -p tcp --dport 8080 -j ACCEPT`).join('\n')}\nCOMMIT\n`;
    check(['iptables-nft-restore'], await exec(['nsenter', `--net=/run/netns/${lab.host}`, 'iptables-nft-restore', '-w', '--noflush'], { input: restore }));
    const r = await lab.inHost([NODE, SELF, '--inside', lab.stateDir, String(samples)], { NODE_EXTRA_CA_CERTS: '' });
    return JSON.parse(check(['policy-change --inside'], r).trim().split('\n').pop()!) as Samples;
  } finally {
    await lab.destroy();
  }
}

async function main(): Promise<number> {
  if (process.argv[2] === '--inside') {
    await inside(process.argv[3]!, Number(process.argv[4]));
    return 0;
  }
  const opts = optionsOrExit(parseOptions, USAGE);
  if (typeof opts === 'number') return opts;
  const { abort } = trapSignals();
  const loadStart = loadavg()[0]!;
  const results: { rules: number; samples: Samples }[] = [];
  for (const rules of [SMALL, opts.rules]) {
    abort.signal.throwIfAborted();
    progress(`${rules} rules`);
    results.push({ rules, samples: await level(rules, opts.samples) });
  }
  const loadEnd = loadavg()[0]!;
  const p50 = (xs: readonly number[]) => quantile([...xs].sort((a, b) => a - b), 0.5);
  const kinds = ['plan', 'apply', 'remove', 'nftAdd', 'iptablesAdd'] as const;
  const rows = results.map((r) => ({ rules: r.rules, ...Object.fromEntries(kinds.map((k) => [k, p50(r.samples[k])])) as Record<(typeof kinds)[number], number> }));
  const [small, big] = rows as [typeof rows[number], typeof rows[number]];
  const ratios = {
    growth: Object.fromEntries(kinds.map((k) => [k, big[k] / small[k]])),
    applyVsIptables: rows.map((r) => ({ rules: r.rules, ratio: r.apply / r.iptablesAdd })),
    applyVsNft: rows.map((r) => ({ rules: r.rules, ratio: r.apply / r.nftAdd })),
  };
  if (opts.json) {
    process.stdout.write(`${JSON.stringify({ benchmark: 'policy-change', date: new Date().toISOString(), loadStart, loadEnd, samples: opts.samples, p50Ms: rows, ratios, all: results }, null, 2)}\n`);
    return 0;
  }
  const f = (x: number) => x.toFixed(1);
  process.stdout.write([
    `one policy change in process, p50 of ${opts.samples} (ms); load average (1 min) ${loadStart.toFixed(2)} at the start, ${loadEnd.toFixed(2)} at the end`,
    table(['rules', 'plan (dry run)', 'apply (plan + nft)', 'remove', 'nft add element', 'iptables-nft -A'], rows.map((r) => [String(r.rules), f(r.plan), f(r.apply), f(r.remove), f(r.nftAdd), f(r.iptablesAdd)])),
    `${opts.rules}/${SMALL}: ${kinds.map((k) => `${k} ${ratios.growth[k]!.toFixed(2)}`).join(', ')}`,
    `apply / iptables-nft -A: ${ratios.applyVsIptables.map((x) => `${x.rules} rules ${x.ratio.toFixed(2)}`).join(', ')}`,
    `apply / nft add element: ${ratios.applyVsNft.map((x) => `${x.rules} rules ${x.ratio.toFixed(2)}`).join(', ')}`,
    '',
  ].join('\n'));
  return 0;
}

process.exitCode = await main();
