// New TCP connections per second between two sandboxes (run inside them with `ctnet exec`):
//   connrate.ts serve PORT                            accept, answer one byte, close
//   connrate.ts connect HOST PORT SECONDS PARALLEL    open, read the byte, close, as fast as it goes;
//                                                     prints {"connections": N, "seconds": S}
import { connect, createServer } from 'node:net';

const [mode, ...args] = process.argv.slice(2);
if (mode === 'serve') {
  createServer((s) => s.end('x')).listen(Number(args[0]), '::');
} else if (mode === 'connect') {
  const [host, port, seconds, parallel] = [args[0]!, Number(args[1]), Number(args[2]), Number(args[3])];
  const end = performance.now() + seconds * 1000;
  let done = 0;
  const one = () => new Promise<void>((resolve, reject) => {
    const s = connect({ host, port });
    s.on('data', () => {});
    s.on('end', () => {
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
  process.stdout.write(JSON.stringify({ connections: done, seconds: (performance.now() - started) / 1000 }) + '\n');
} else {
  process.stderr.write('usage: connrate.ts serve PORT | connect HOST PORT SECONDS PARALLEL\n');
  process.exitCode = 2;
}
