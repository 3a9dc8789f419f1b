// New TCP connections per second between two sandboxes (run inside them with `ctnet exec`):
//   connrate.ts serve PORT                            accept, answer one byte, close
//   connrate.ts connect HOST PORT SECONDS PARALLEL    open, read the byte, close, as fast as it goes;
//                                                     prints {"connections": N, "seconds": S,
//                                                     "p50Ms": .., "p99Ms": ..} (connect to answer)
import { connect, createServer } from 'node:net';

const [mode, ...args] = process.argv.slice(2);
if (mode === 'serve') {
  // The client closes first: its TIME_WAIT stays with the client, whose port allocator (with
  // tcp_tw_reuse in its namespace) knows it. A server that closed first kept TIME_WAIT for tuples the
  // client then reused, and through a NAT (or after conntrack was cleared) SYNs were dropped and
  // retransmitted a second later.
  createServer((s) => { s.on('error', () => {}); s.write('x'); }).listen(Number(args[0]), '::');
} else if (mode === 'connect') {
  const [host, port, seconds, parallel] = [args[0]!, Number(args[1]), Number(args[2]), Number(args[3])];
  const end = performance.now() + seconds * 1000;
  let done = 0;
  const times: number[] = [];
  const one = () => new Promise<void>((resolve, reject) => {
    const t0 = performance.now();
    const s = connect({ host, port });
    s.on('data', () => {
      times.push(performance.now() - t0);
      s.end();
    });
    s.on('close', () => {
      done++;
      resolve();
    });
    s.on('error', reject);
  });
  const worker = async () => {
    while (performance.now() < end) await one();
  };
  const started = performance.now();
  await Promise.all(Array.from({ length: parallel }, worker));
  times.sort((a, b) => a - b);
  const q = (f: number) => Math.round((times[Math.min(times.length - 1, Math.floor(f * times.length))] ?? NaN) * 1000) / 1000;
  process.stdout.write(JSON.stringify({ connections: done, seconds: (performance.now() - started) / 1000, p50Ms: q(0.5), p99Ms: q(0.99) }) + '\n');
} else {
  process.stderr.write('usage: connrate.ts serve PORT | connect HOST PORT SECONDS PARALLEL\n');
  process.exitCode = 2;
}
