// The client of bench/policy.ts, run inside a client namespace (`ctnet exec` or `nsenter --net`):
// sequential TCP connect + close to HOST:PORT, WARMUP untimed connections first, then COUNT timed.
// Prints one JSON line on stdout: {elapsedMs, latenciesUs}; exits 1 (message on stderr) as soon as
// one connection fails, so a filter that drops the traffic is reported, not measured.
//
//   scripts/node bench/policy-client.ts HOST PORT COUNT WARMUP
import { connect } from 'node:net';

/** A connect that takes this long is a dropped SYN (the kernel retries after 1 s), not a sample. */
const CONNECT_TIMEOUT_MS = 3000;

/** One connection: resolves to the handshake time in µs once the socket has closed again. */
function connectOnce(host: string, port: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const start = performance.now();
    const socket = connect({ host, port, noDelay: true });
    socket.setTimeout(CONNECT_TIMEOUT_MS, () => socket.destroy(new Error(`no answer in ${CONNECT_TIMEOUT_MS} ms`)));
    socket.once('error', (e) => reject(new Error(`connect ${host}:${port}: ${e.message}`)));
    socket.once('connect', () => {
      const us = (performance.now() - start) * 1000;
      // Closing right away is the point: only the connection setup goes through the filter's
      // new-connection path; everything after it matches the "established" rule first.
      socket.once('close', () => resolve(us));
      socket.destroy();
    });
  });
}

async function main(): Promise<void> {
  const [host, portText, countText, warmupText] = process.argv.slice(2);
  const port = Number(portText);
  const count = Number(countText);
  const warmup = Number(warmupText ?? 0);
  if (!host || !Number.isInteger(port) || !Number.isInteger(count) || count < 1 || !Number.isInteger(warmup) || warmup < 0) {
    throw new Error('usage: policy-client.ts HOST PORT COUNT WARMUP');
  }
  // Warm-up: JIT, the server's accept path, ARP/neighbour entries on both bridges.
  for (let i = 0; i < warmup; i++) await connectOnce(host, port);
  const latenciesUs: number[] = [];
  const start = performance.now();
  for (let i = 0; i < count; i++) latenciesUs.push(await connectOnce(host, port));
  const elapsedMs = performance.now() - start;
  process.stdout.write(JSON.stringify({ elapsedMs, latenciesUs: latenciesUs.map((x) => Math.round(x * 10) / 10) }) + '\n');
}

main().catch((e: unknown) => {
  process.stderr.write(`policy-client: ${(e as Error).message}\n`);
  process.exitCode = 1;
});
