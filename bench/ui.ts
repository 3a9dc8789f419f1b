// Benchmark: the live page (`ctnet ui`) with N real sandboxes (default 10 and 500), in a lab each:
// - first load: navigation until the page has drawn the graph of all N, next to the peer, the
//   same data from the terminal (`ctnet graph --json`), timed in the same lab and run;
// - event to picture: a sandbox created from the CLI, from the commit of its last change (the
//   change event's time) to the first picture that shows it ready, split into the part before the
//   page has the event (the feed, ctnetd's update of its graph, SSE) and the page's (patching the
//   delta in and drawing, or fetching the graph whole when it must); with the same peer;
// - ctnetd's RSS (and how much of it is anonymous memory, the heap's side) and CPU over a window
//   with the page open (counters every 2 s) and the same window without it (the peer: ctnetd
//   serving no page). --heap-snapshots DIR: ctnetd starts with --heapsnapshot-signal and writes a
//   heap snapshot into DIR after the windows (open it in Chrome's DevTools, Memory).
// The sandboxes come from one `ctnet apply -f` of a generated topology file (two networks, label
// policy). Chromium runs in the lab's namespace, as in test/lab/ui.test.ts.
//
//   scripts/node bench/ui.ts [--sizes 10,500] [--samples N] [--window SECONDS] [--heap-snapshots DIR] [--json]
import { chmodSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { cpus, release, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { chromium, type Browser } from 'playwright-core';
import { Lab } from '../src/lab/lab.ts';
import { execOk, intOption, loadAverage, progress, round, stats, timed, type Stats } from './lib.ts';

const { values } = parseArgs({ options: { sizes: { type: 'string' }, samples: { type: 'string' }, window: { type: 'string' }, 'heap-snapshots': { type: 'string' }, json: { type: 'boolean' } } });
const heapDir = values['heap-snapshots'];
if (heapDir) {
  mkdirSync(heapDir, { recursive: true });
  // Inherited by every Node process the labs start, ctnetd among them; only ctnetd gets the signal.
  process.env.NODE_OPTIONS = `${process.env.NODE_OPTIONS ?? ''} --heapsnapshot-signal=SIGUSR2 --diagnostic-dir=${heapDir}`.trim();
}
const sizes = (values.sizes ?? '10,500').split(',').map((s) => intOption('sizes', s, 10, 1, 2000));
const samples = intOption('samples', values.samples, 5, 1, 50);
const windowS = intOption('window', values.window, 20, 2, 600);

function topology(n: number): string {
  const lines = ['name: uibench', 'networks:', '  n0: { subnets: [10.210.0.0/16] }', '  n1: { subnets: [10.211.0.0/16] }', 'sandboxes:'];
  for (let i = 0; i < n; i++) lines.push(`  s${i}: { networks: [n${i % 2}], labels: { tier: ${i % 3 === 0 ? 'a' : 'b'} } }`);
  lines.push('policy:', '  - { name: a-to-b, action: allow, from: "label:tier=a", to: "label:tier=b", port: 80 }', '  - { name: b-not-a, action: deny, from: "label:tier=b", to: "label:tier=a" }');
  return lines.join('\n') + '\n';
}

/** utime+stime (clock ticks), VmRSS and its anonymous part (KiB) of a process. */
function usage(pid: number): { ticks: number; rssKiB: number; anonKiB: number } {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kib = (field: string) => Number(new RegExp(`${field}:\\s+(\\d+)`).exec(status)?.[1] ?? 0);
  return { ticks: Number(f[11]) + Number(f[12]), rssKiB: kib('VmRSS'), anonKiB: kib('RssAnon') };
}

/** Asks ctnetd for a heap snapshot (SIGUSR2, see --heap-snapshots) and waits until its file stops growing. */
async function heapSnapshot(pid: number, dir: string): Promise<string | undefined> {
  const before = new Set(readdirSync(dir));
  process.kill(pid, 'SIGUSR2');
  let last = -1;
  for (let i = 0; i < 300; i++) {
    await new Promise((r) => setTimeout(r, 2000));
    const f = readdirSync(dir).find((x) => !before.has(x) && x.endsWith('.heapsnapshot'));
    const size = f ? statSync(join(dir, f)).size : -1;
    if (f && size > 0 && size === last) return join(dir, f);
    last = size;
  }
  return undefined;
}
const TICK = 100; // USER_HZ on Linux

/** What the page keeps for this benchmark (window.ctnetPage). */
interface PageStats {
  readonly sandboxes: number;
  readonly seen: Record<string, number>;
  readonly events: { at: number; received: number }[];
  readonly fullFetches?: number;
}
// Functions, not strings: the page's Content-Security-Policy forbids eval, which string predicates use.
const stat = () => (globalThis as unknown as { ctnetPage?: PageStats }).ctnetPage;
const drawnAll = (n: number) => (globalThis as unknown as { ctnetPage?: PageStats }).ctnetPage?.sandboxes === n;
const hasSeen = (name: string) => name in ((globalThis as unknown as { ctnetPage?: PageStats }).ctnetPage?.seen ?? {});

async function cpuWindow(pid: number, seconds: number): Promise<{ cpuPct: number; rssMiB: number; anonMiB: number }> {
  const a = usage(pid);
  const t0 = performance.now();
  await new Promise((r) => setTimeout(r, seconds * 1000));
  const b = usage(pid);
  return { cpuPct: round(((b.ticks - a.ticks) / TICK) / ((performance.now() - t0) / 1000) * 100), rssMiB: round(b.rssKiB / 1024), anonMiB: round(b.anonKiB / 1024) };
}

interface Result {
  readonly sandboxes: number;
  readonly applyMs: number;
  readonly firstLoad: Stats;
  readonly graphCli: Stats;
  readonly eventToPicture: Stats;
  readonly feedPart: Stats;
  readonly pagePart: Stats;
  readonly idle: { withPage: { cpuPct: number; rssMiB: number; anonMiB: number }; withoutPage: { cpuPct: number; rssMiB: number; anonMiB: number } };
  /** How many times the open page fetched the whole graph during the event samples (0: every event was a patch). */
  readonly fullFetches: number;
  readonly heapSnapshot?: string | undefined;
}

async function measure(n: number): Promise<Result> {
  const lab = await Lab.create();
  const tmp = mkdtempSync(join(tmpdir(), 'ctnet-uibench-'));
  let browser: Browser | undefined;
  try {
    const file = join(tmp, 'uibench.yaml');
    writeFileSync(file, topology(n));
    progress(`${n} sandboxes: ctnet apply`);
    // Not lab.ctnet(): its two-minute limit is too short for 500 sandboxes on a loaded machine.
    const applyMs = await timed(() => execOk(['nsenter', `--net=/run/netns/${lab.host}`, lab.ctnetBin, 'apply', '-f', file], { env: lab.scriptEnv }));
    const url = (await lab.ctnetOk(['ui', '--listen', '127.0.0.1:0'])).trim();
    const pid = Number(/pid (\d+)/.exec(await lab.ctnetOk(['daemon', 'status']))?.[1]);
    const wrapper = join(tmp, 'chromium');
    writeFileSync(wrapper, `#!/bin/sh\nexec nsenter --net=/run/netns/${lab.host} /usr/bin/chromium "$@"\n`);
    chmodSync(wrapper, 0o755);
    browser = await chromium.launch({ executablePath: wrapper, args: ['--no-sandbox'] });
    const peer: number[] = [];
    const load: number[] = [];
    for (let i = 0; i < samples; i++) {
      progress(`${n} sandboxes: first load ${i + 1}/${samples}`);
      peer.push(await timed(() => lab.ctnetOk(['graph', '--json'])));
      const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
      load.push(await timed(async () => {
        await page.goto(url);
        await page.waitForFunction(drawnAll, n, { timeout: 300_000 });
      }));
      await page.close();
    }
    // One page stays open for the rest.
    const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
    await page.goto(url);
    await page.waitForFunction(drawnAll, n, { timeout: 300_000 });
    const fetchesBefore = (await page.evaluate(stat))!.fullFetches ?? 0;
    const e2p: number[] = [];
    const feed: number[] = [];
    const drawn: number[] = [];
    for (let i = 0; i < samples; i++) {
      progress(`${n} sandboxes: event to picture ${i + 1}/${samples}`);
      const name = `extra${i}`;
      await lab.ctnetOk(['create', name, '--network', 'n0', '--label', 'tier=b']);
      await page.waitForFunction(hasSeen, name, { timeout: 120_000 });
      const p = (await page.evaluate(stat))!;
      const at = p.seen[name]!;
      const e = p.events.filter((x) => x.received <= at).pop()!;
      const r = { at, changeAt: e.at, received: e.received };
      e2p.push(r.at - r.changeAt);
      feed.push(r.received - r.changeAt);
      drawn.push(r.at - r.received);
    }
    const fullFetches = ((await page.evaluate(stat))!.fullFetches ?? 0) - fetchesBefore;
    progress(`${n} sandboxes: ctnetd over ${windowS} s with the page open`);
    const withPage = await cpuWindow(pid, windowS);
    await page.close();
    progress(`${n} sandboxes: ctnetd over ${windowS} s without a page`);
    const withoutPage = await cpuWindow(pid, windowS);
    const snapshot = heapDir ? await heapSnapshot(pid, heapDir) : undefined;
    return { sandboxes: n, applyMs: round(applyMs), firstLoad: stats(load), graphCli: stats(peer), eventToPicture: stats(e2p), feedPart: stats(feed), pagePart: stats(drawn), idle: { withPage, withoutPage }, fullFetches, heapSnapshot: snapshot };
  } finally {
    await browser?.close();
    await lab.ctnet(['daemon', 'stop']);
    await lab.destroy();
    rmSync(tmp, { recursive: true, force: true });
  }
}

const results: Result[] = [];
for (const n of sizes) results.push(await measure(n));
if (values.json) console.log(JSON.stringify(results, null, 2));
else {
  const ms = (s: Stats) => `${round(s.p50)} / ${round(s.p95)}`;
  console.log(`ctnet ui benchmark: ${cpus().length} cores, kernel ${release()}, load ${loadAverage()}, ${samples} samples, p50 / p95 ms`);
  for (const r of results) {
    console.log(`\n${r.sandboxes} sandboxes (ctnet apply: ${round(r.applyMs / 1000)} s)`);
    console.log(`  first load (page drawn)        ${ms(r.firstLoad)}    peer ctnet graph --json ${ms(r.graphCli)}    ratio p50 ${round(r.firstLoad.p50 / r.graphCli.p50)}`);
    console.log(`  event to picture               ${ms(r.eventToPicture)}    (feed+update+SSE ${ms(r.feedPart)}, page ${ms(r.pagePart)}; whole graph fetched ${r.fullFetches} times in ${samples} events)    ratio to peer p50 ${round(r.eventToPicture.p50 / r.graphCli.p50)}`);
    console.log(`  ctnetd with the page open      CPU ${r.idle.withPage.cpuPct}%  RSS ${r.idle.withPage.rssMiB} MiB (anonymous ${r.idle.withPage.anonMiB})`);
    console.log(`  ctnetd without a page (peer)   CPU ${r.idle.withoutPage.cpuPct}%  RSS ${r.idle.withoutPage.rssMiB} MiB (anonymous ${r.idle.withoutPage.anonMiB})`);
    if (r.heapSnapshot) console.log(`  ctnetd heap snapshot           ${r.heapSnapshot}`);
  }
}
