// Benchmark for issue 18, points 3 and 4, in one lab:
//  - shaping accuracy: iperf3 at several limits, both directions (sandbox <-> world), measured rate
//    against the limit;
//  - shaping's CPU cost: CPU seconds (the whole machine's, from /proc/stat) per Gbit carried, shaped
//    at 1gbit against unshaped, measured in the same run;
//  - macvlan against the bridge driver: throughput sandbox -> world, each sandbox on its own path
//    (bridge: veth, bridge, masquerade out of the uplink; macvlan: straight on a second link to the world).
//
//   scripts/node bench/shaping.ts [--seconds N] [--repeat N]
//
// The machine is shared: /proc/stat counts other work too, so the CPU figures are upper bounds, and
// sides are measured in turns so that load changes hit them alike; the median is reported.
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { Lab, UPLINK } from '../src/lab/lab.ts';
import { intOption, loadAverage, progress } from './lib.ts';

const PORT = 5201;
const { values } = parseArgs({ options: { seconds: { type: 'string' }, repeat: { type: 'string' } } });
const SECONDS = intOption('seconds', values.seconds, 5, 2, 30);
const REPEAT = intOption('repeat', values.repeat, 3, 1, 10);

/** Busy and total jiffies of all CPUs. */
function cpuTimes(): { busy: number; total: number } {
  const f = readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1).map(Number);
  const idle = f[3]! + f[4]!;
  const total = f.reduce((a, b) => a + b, 0);
  return { busy: total - idle, total };
}
const HZ = 100;

interface Run {
  readonly bps: number;
  /** Busy CPU seconds of the whole machine during the test (others' work included). */
  readonly cpuSeconds: number;
  /** CPU seconds of the two iperf3 processes (iperf3's own count: their user and system time, softirq work done in them included). */
  readonly iperfCpuSeconds: number;
}

async function iperf(lab: Lab, sandbox: string, target: string, reverse: boolean): Promise<Run> {
  for (let i = 0; i < 20; i++) {
    const before = cpuTimes();
    const r = await lab.ctnet(['exec', sandbox, '--', 'iperf3', '-c', target, '-p', String(PORT), '-t', String(SECONDS), '-O', '1', '-J', ...(reverse ? ['-R'] : [])]);
    const after = cpuTimes();
    if (r.code === 0) {
      const end = (JSON.parse(r.stdout) as { end: { sum_received: { bits_per_second: number; seconds: number }; cpu_utilization_percent: { host_total: number; remote_total: number } } }).end;
      const cpu = end.cpu_utilization_percent;
      return { bps: end.sum_received.bits_per_second, cpuSeconds: (after.busy - before.busy) / HZ, iperfCpuSeconds: ((cpu.host_total + cpu.remote_total) / 100) * end.sum_received.seconds };
    }
    await new Promise((res) => setTimeout(res, 500));
  }
  throw new Error(`iperf3 from ${sandbox} to ${target} kept failing`);
}

const median = (xs: readonly number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const mbit = (bps: number) => `${(bps / 1e6).toFixed(1)} Mbit/s`;

async function main(): Promise<void> {
  progress(`load average ${loadAverage()}; ${SECONDS} s per test, ${REPEAT} repeats, medians`);
  const lab = await Lab.create();
  try {
    await lab.ctnetOk(['network', 'create', 'br', '--subnet', '10.201.0.0/24']);
    await lab.inHost(['ip', 'link', 'add', 'lan0', 'type', 'veth', 'peer', 'name', 'lanw', 'netns', lab.world]);
    await lab.inHost(['ip', 'link', 'set', 'lan0', 'up']);
    await lab.inWorld(['ip', 'addr', 'add', '10.202.0.1/24', 'dev', 'lanw']);
    await lab.inWorld(['ip', 'link', 'set', 'lanw', 'up']);
    await lab.ctnetOk(['network', 'create', 'mv', '--driver', 'macvlan', '--parent', 'lan0', '--subnet', '10.202.0.0/24', '--gateway', '10.202.0.1']);
    await lab.ctnetOk(['create', 's', '--network', 'br']);
    await lab.ctnetOk(['create', 'm', '--network', 'mv']);
    await lab.inWorld(['iperf3', '-s', '-D', '-p', String(PORT)]);

    // 1. Accuracy.
    console.log('shaping accuracy (iperf3 goodput; tbf counts frames, so TCP/IP/Ethernet headers take ~4.5 %)');
    console.log('limit      | into the sandbox            | out of the sandbox');
    for (const limit of ['10mbit', '100mbit', '1gbit']) {
      await lab.ctnetOk(['shape', 's', '--rate-in', limit, '--rate-out', limit]);
      const l = Number(limit.replace(/[a-z]+$/, '')) * (limit.endsWith('gbit') ? 1e9 : 1e6);
      const ins: number[] = []; const outs: number[] = [];
      for (let i = 0; i < REPEAT; i++) {
        ins.push((await iperf(lab, 's', UPLINK.remote4, true)).bps);
        outs.push((await iperf(lab, 's', UPLINK.remote4, false)).bps);
      }
      const fmt = (x: number) => `${mbit(x).padStart(14)} (${((100 * (x - l)) / l).toFixed(1).padStart(5)} %)`;
      console.log(`${limit.padEnd(10)} | ${fmt(median(ins)).padEnd(27)} | ${fmt(median(outs))}`);
    }

    // 2. CPU per Gbit: shaped at 1gbit against unshaped, in turns.
    const cost = { shaped: [] as number[], unshaped: [] as number[], shapedBps: [] as number[], unshapedBps: [] as number[], shapedIperf: [] as number[], unshapedIperf: [] as number[] };
    for (let i = 0; i < REPEAT; i++) {
      for (const side of (i % 2 ? ['unshaped', 'shaped'] : ['shaped', 'unshaped']) as ('shaped' | 'unshaped')[]) {
        await lab.ctnetOk(side === 'shaped' ? ['shape', 's', '--rate-in', '1gbit', '--rate-out', '1gbit'] : ['shape', 's', '--clear']);
        const r = await iperf(lab, 's', UPLINK.remote4, false);
        cost[side].push(r.cpuSeconds / ((r.bps * SECONDS) / 1e9));
        cost[side === 'shaped' ? 'shapedIperf' : 'unshapedIperf'].push(r.iperfCpuSeconds / ((r.bps * SECONDS) / 1e9));
        cost[side === 'shaped' ? 'shapedBps' : 'unshapedBps'].push(r.bps);
      }
    }
    console.log('\nCPU cost, sandbox -> world (machine-wide CPU seconds per Gbit carried; both sides in the same run)');
    console.log(`unshaped          : ${median(cost.unshaped).toFixed(3)} CPU-s/Gbit at ${mbit(median(cost.unshapedBps))}`);
    console.log(`shaped at 1gbit   : ${median(cost.shaped).toFixed(3)} CPU-s/Gbit at ${mbit(median(cost.shapedBps))}`);
    console.log(`ratio shaped/unshaped: ${(median(cost.shaped) / median(cost.unshaped)).toFixed(2)}x  (meaningless when the machine is saturated: see the load average)`);
    console.log(`iperf3's own CPU (both ends): unshaped ${median(cost.unshapedIperf).toFixed(3)}, shaped ${median(cost.shapedIperf).toFixed(3)} CPU-s/Gbit, ratio ${(median(cost.shapedIperf) / median(cost.unshapedIperf)).toFixed(2)}x`);

    // 3. macvlan against bridge: sandbox -> world, in turns.
    await lab.ctnetOk(['shape', 's', '--clear']);
    const tp = { bridge: [] as number[], macvlan: [] as number[] };
    for (let i = 0; i < REPEAT; i++) {
      for (const side of (i % 2 ? ['macvlan', 'bridge'] : ['bridge', 'macvlan']) as ('bridge' | 'macvlan')[]) {
        tp[side].push((await iperf(lab, side === 'bridge' ? 's' : 'm', side === 'bridge' ? UPLINK.remote4 : '10.202.0.1', false)).bps);
      }
    }
    console.log('\nthroughput sandbox -> world (one TCP stream)');
    console.log(`bridge (veth, bridge, masquerade) : ${mbit(median(tp.bridge))}`);
    console.log(`macvlan (on the parent's segment) : ${mbit(median(tp.macvlan))}`);
    console.log(`ratio macvlan/bridge: ${(median(tp.macvlan) / median(tp.bridge)).toFixed(2)}x`);
    progress(`load average at the end ${loadAverage()}`);
  } finally {
    await lab.destroy();
  }
}

await main();
