// The window after someone changes ctnet's ruleset under running traffic (test/lab/guard.test.ts;
// also run against another checkout's ctnet to compare): what ctnet denies that passes, and what it
// allows that is lost, while its tables are gone.
import { spawn } from 'node:child_process';
import { Lab, UPLINK } from '../../src/lab/lab.ts';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Sandboxes a1 (network a) and b1 (network b, -p 8282:80); the world answers UDP on 7001. */
export async function windowLab(lab: Lab): Promise<void> {
  lab.serveInWorld('world', { udp: 7001 });
  await lab.ctnetOk(['network', 'create', 'a', '--subnet', '10.88.1.0/24']);
  await lab.ctnetOk(['network', 'create', 'b', '--subnet', '10.88.2.0/24']);
  await lab.ctnetOk(['create', 'a1', '--network', 'a']);
  await lab.ctnetOk(['run', '-d', '--name', 'b1', '--network', 'b', '-p', '8282:80', '--', ...Lab.serverArgv('b1', { http: 80 })]);
  for (let i = 0; i < 50 && !(await published(lab)); i++) await sleep(100);
}

export const published = async (lab: Lab) => (await lab.inWorld(Lab.probeArgv('http', UPLINK.host4, 8282))).code === 0;

/**
 * From inside a sandbox: COUNT new UDP flows (each from a new socket, so a new conntrack entry),
 * one every INTERVAL ms, to HOST:PORT; prints how many were answered.
 */
const NEW_FLOWS = `
import socket, sys, time, select
host, port, count, interval = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]) / 1000
socks = []
print('started', flush=True)
start = time.monotonic()
for i in range(count):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setblocking(False)
    s.sendto(b'ping', (host, port))
    socks.append(s)
    time.sleep(max(0, start + (i + 1) * interval - time.monotonic()))
deadline = time.monotonic() + 1
answered = set()
while time.monotonic() < deadline and len(answered) < count:
    ready, _, _ = select.select([s for s in socks if s not in answered], [], [], 0.1)
    for s in ready:
        try:
            s.recv(512)
            answered.add(s)
        except OSError:
            pass
print(len(answered))
`;

export interface Window {
  /** Denied pings (a1 -> b1, across isolated networks) that passed. */
  readonly deniedPassed: number;
  /** Allowed pings (a1 -> the world, one flow established before the change) lost. */
  readonly allowedLost: number;
  /** Allowed new flows (a1 -> the world, a new UDP flow every 10 ms) not answered. */
  readonly newLost: number;
  /** Of each kind. */
  readonly count: number;
}

/**
 * Runs `ctnet exec a1 -- ARGV`; `started` resolves at its first line of output (the probe runs:
 * starting ctnet and entering the sandbox takes a while), `done` with all of it.
 */
function probe(lab: Lab, argv: readonly string[]): { started: Promise<void>; done: Promise<string> } {
  const child = spawn('nsenter', [`--net=/run/netns/${lab.host}`, lab.ctnetBin, 'exec', 'a1', '--', ...argv], {
    env: { ...process.env, CTNET_STATE_DIR: lab.stateDir }, stdio: ['ignore', 'pipe', 'inherit'],
  });
  let out = '';
  let started!: () => void;
  const first = new Promise<void>((r) => (started = r));
  child.stdout.on('data', (b: Buffer) => {
    out += b.toString();
    started();
  });
  return { started: first, done: new Promise((r) => child.on('close', () => { started(); r(out); })) };
}

/** Runs the three probes for 3 s and makes the change once all of them have been running for 0.5 s. */
export async function measureWindow(lab: Lab, change: readonly string[]): Promise<Window> {
  const COUNT = 300;
  const received = (out: string) => Number(/(\d+) received/.exec(out)?.[1] ?? 0);
  const probes = [
    // stdbuf: ping's first line (printed at once) says it runs.
    probe(lab, ['stdbuf', '-oL', 'ping', '-i', '0.01', '-c', String(COUNT), '-W', '1', '10.88.2.2']),
    probe(lab, ['stdbuf', '-oL', 'ping', '-i', '0.01', '-c', String(COUNT), '-W', '1', UPLINK.remote4]),
    probe(lab, ['python3', '-c', NEW_FLOWS, UPLINK.remote4, '7001', String(COUNT), '10']),
  ];
  await Promise.all(probes.map((p) => p.started));
  await sleep(500);
  await lab.inHost(change);
  const [denied, allowed, flows] = await Promise.all(probes.map((p) => p.done));
  const answered = Number(/^(\d+)$/m.exec(flows!)?.[1] ?? 0);
  return { deniedPassed: received(denied!), allowedLost: COUNT - received(allowed!), newLost: COUNT - answered, count: COUNT };
}

export const describeWindow = (w: Window) =>
  `denied pings that passed: ${w.deniedPassed} of ${w.count}; allowed pings (an established flow) lost: ${w.allowedLost} of ${w.count}; ` +
  `allowed new flows lost: ${w.newLost} of ${w.count} (one of each every 10 ms)`;
