// The smallest Node client of ctnetd that could replace src/cni/client.c (same wire format, no
// checks): bench/cni-client.ts times it to show what a Node plugin executable would cost.
import { connect } from 'node:net';
import { readFileSync } from 'node:fs';

const stdin = readFileSync(0);
if (process.env.CNI_COMMAND === 'VERSION') {
  process.stdout.write('{"cniVersion":"1.0.0","supportedVersions":["1.0.0"]}\n');
  process.exit(0);
}
const env = Object.entries(process.env).filter(([k]) => k.startsWith('CNI_')).map(([k, v]) => `${k}=${v}\0`).join('') + '\0';
const sock = connect(`${JSON.parse(stdin.toString()).stateDir}/ctnetd.sock`);
const chunks = [];
sock.on('connect', () => {
  sock.write(env);
  sock.end(stdin);
});
sock.on('data', (b) => chunks.push(b));
sock.on('end', () => {
  const b = Buffer.concat(chunks);
  const a = b.indexOf(10);
  const c = b.indexOf(10, a + 1);
  process.stdout.write(b.subarray(c + 1, c + 1 + Number(b.subarray(a + 1, c))));
  process.exit(Number(b.subarray(0, a)));
});
