// A tiny traffic tool for labs, tests and the demo (no external tools needed):
//   netcheck serve NAME [--tcp PORT] [--udp PORT] [--http PORT]   answers with {server, client}
//   netcheck probe tcp|udp|http HOST PORT [--timeout MS]          prints the answer; exit 1 on failure
//   netcheck serve NAME --echo PORT                                 a TCP echo server (for hold)
//   netcheck serve NAME ... --stop FILE    the server exits once FILE exists (a backend that stops)
//   netcheck hold HOST PORT --for MS    one TCP connection pinging every 100 ms; exit 0 if it kept
//       answering for MS, 1 (printing how many answers came) once an answer is 1 s late
//   netcheck flow HOST PORT --until NAME [--timeout MS]           one UDP flow (a fixed source port)
//       sending every 100 ms, printing each new server that answers; exit 0 once NAME answered
//   netcheck count HOST PORT --n N    N TCP connections one after another to a netcheck tcp server;
//       prints {"servers": {NAME: count}, "failed": n} (a service's balance)
//   netcheck loop HOST PORT --log FILE --stop FILE   TCP connections one after another to a netcheck tcp
//       server until FILE (--stop) exists; appends "START_MS SERVER" (SERVER "-" for a failure) to
//       the log as each ends; prints {"servers": {NAME: count}, "failed": n} at the end (load for scaling)
//   netcheck serve NAME --dns PORT [--answer IPV4]   a DNS server for a lab's world: every A query
//       gets IPV4 (default 203.0.113.10, the lab's remote4), any other type an empty NOERROR answer
// Every answer names the server and the client address it saw, so a test can check NAT.
import { createSocket } from 'node:dgram';
import { appendFileSync, existsSync } from 'node:fs';
import { createServer, connect } from 'node:net';
import { createServer as createHttpServer, get } from 'node:http';
import { networkInterfaces } from 'node:os';

const [mode, ...rest] = process.argv.slice(2);
const flag = (name: string) => {
  const i = rest.indexOf(name);
  return i >= 0 ? rest[i + 1] : undefined;
};
const unmap = (a: string | undefined) => (a ?? '').replace(/^::ffff:/, '');
const answer = (server: string, client: string | undefined) => JSON.stringify({ server, client: unmap(client) }) + '\n';

if (mode === 'serve') {
  const name = rest[0] ?? 'server';
  const tcp = flag('--tcp');
  const udp = flag('--udp');
  const http = flag('--http');
  const echo = flag('--echo');
  // A connection cut by a test (policy revoked) ends in a reset: that must not end the server.
  if (echo) createServer((s) => s.on('error', () => {}).pipe(s)).listen(Number(echo), '::');
  if (tcp) createServer((s) => s.on('error', () => {}).end(answer(name, s.remoteAddress))).listen(Number(tcp), '::');
  if (http) createHttpServer((req, res) => res.end(answer(name, req.socket.remoteAddress))).listen(Number(http), '::');
  const stop = flag('--stop');
  if (stop) setInterval(() => existsSync(stop) && process.exit(0), 100);
  const dns = flag('--dns');
  if (dns) {
    const answer = (flag('--answer') ?? '203.0.113.10').split('.').map(Number);
    for (const a of Object.values(networkInterfaces()).flat()) {
      if (!a || a.family !== 'IPv4') continue;
      const sock = createSocket('udp4');
      sock.on('message', (m, r) => {
        const reply = dnsReply(m, answer);
        if (reply) sock.send(reply, r.port, r.address);
      });
      sock.bind(Number(dns), a.address); // per address, as for --udp: the reply must come from the address asked
    }
  }
  if (udp) {
    // One socket per local address: a wildcard UDP socket would answer from whatever address the
    // route prefers, not the one the client asked (and NAT would not match the reply).
    for (const a of Object.values(networkInterfaces()).flat()) {
      if (!a || (a.family === 'IPv6' && a.scopeid)) continue;
      const sock = createSocket(a.family === 'IPv6' ? 'udp6' : 'udp4');
      sock.on('message', (_m, r) => sock.send(answer(name, r.address), r.port, r.address));
      sock.bind(Number(udp), a.address);
    }
  }
} else if (mode === 'count' || mode === 'loop') {
  const [host, port] = rest;
  const n = Number(flag('--n') ?? 100);
  const log = flag('--log');
  const stop = flag('--stop');
  const servers: Record<string, number> = {};
  let failed = 0;
  const once = () => new Promise<string | undefined>((resolve) => {
    let data = '';
    const s = connect({ host: host!, port: Number(port), timeout: 2000 });
    s.on('data', (d) => (data += d));
    s.on('end', () => {
      try {
        resolve((JSON.parse(data) as { server: string }).server);
      } catch {
        resolve(undefined);
      }
    });
    s.on('timeout', () => s.destroy());
    s.on('error', () => resolve(undefined));
    s.on('close', () => resolve(undefined));
  });
  const more = mode === 'loop' ? () => !existsSync(stop!) : (i: number) => i < n;
  for (let i = 0; more(i); i++) {
    const start = Date.now();
    const server = await once();
    if (server === undefined) failed++;
    else servers[server] = (servers[server] ?? 0) + 1;
    if (log) appendFileSync(log, `${start} ${server ?? '-'}\n`);
  }
  process.stdout.write(JSON.stringify({ servers, failed }) + '\n');
} else if (mode === 'probe') {
  const [proto, host, port] = rest;
  const timeout = Number(flag('--timeout') ?? 2000);
  const done = (text: string | undefined, err?: string) => {
    if (text) process.stdout.write(text.endsWith('\n') ? text : text + '\n');
    else process.stderr.write(`netcheck: ${proto} ${host}:${port}: ${err ?? 'no answer'}\n`);
    process.exit(text ? 0 : 1);
  };
  setTimeout(() => done(undefined, 'timed out'), timeout).unref();
  if (proto === 'tcp') {
    const s = connect({ host: host!, port: Number(port) });
    let buf = '';
    s.on('data', (d) => (buf += d));
    s.on('end', () => done(buf || undefined));
    s.on('error', (e) => done(undefined, e.message));
  } else if (proto === 'udp') {
    const sock = createSocket(host!.includes(':') ? 'udp6' : 'udp4');
    sock.on('message', (m) => done(m.toString()));
    sock.on('error', (e) => done(undefined, e.message));
    sock.send('ping', Number(port), host!);
  } else if (proto === 'http') {
    get({ host: host!, port: Number(port), path: '/', timeout }, (res) => {
      let buf = '';
      res.on('data', (d) => (buf += d));
      res.on('end', () => done(buf || undefined));
    }).on('error', (e) => done(undefined, e.message));
  } else {
    done(undefined, `unknown protocol ${proto}`);
  }
} else if (mode === 'hold') {
  const [host, port] = rest;
  const duration = Number(flag('--for') ?? 3000);
  let answers = 0;
  let last = Date.now();
  const s = connect({ host: host!, port: Number(port) });
  const fail = (why: string) => {
    process.stdout.write(`broken after ${answers} answers: ${why}\n`);
    process.exit(1);
  };
  s.on('data', (d) => {
    answers += d.length;
    last = Date.now();
  });
  s.on('error', (e) => fail(e.message));
  // 5 s: a loaded lab machine can take seconds to complete a first connection across an overlay.
  const connecting = setTimeout(() => fail('no connection'), 5000);
  s.on('connect', () => {
    clearTimeout(connecting);
    last = Date.now();
    setInterval(() => {
      if (Date.now() - last > 1000) fail('no answer for 1 s');
      s.write('.');
    }, 100);
    setTimeout(() => {
      process.stdout.write(`held: ${answers} answers\n`);
      process.exit(0);
    }, duration);
  });
} else if (mode === 'flow') {
  const [host, port] = rest;
  const until = flag('--until');
  const sock = createSocket(host!.includes(':') ? 'udp6' : 'udp4');
  let last = '';
  sock.on('message', (m) => {
    const { server } = JSON.parse(m.toString()) as { server: string };
    if (server !== last) process.stdout.write(`${server}\n`);
    last = server;
    if (server === until) process.exit(0);
  });
  sock.on('error', () => {}); // ICMP errors while nothing is published: keep sending
  setInterval(() => sock.send('ping', Number(port), host!), 100);
  setTimeout(() => process.exit(1), Number(flag('--timeout') ?? 30000)).unref();
} else {
  process.stderr.write('usage: netcheck serve NAME [--tcp P] [--udp P] [--http P] | netcheck probe tcp|udp|http HOST PORT\n');
  process.exit(2);
}

/** A reply to one DNS query (RFC 1035): the question echoed, one A record for type A, none otherwise. */
function dnsReply(q: Buffer, a: number[]): Buffer | undefined {
  if (q.length < 12 || q.readUInt16BE(4) !== 1) return undefined;
  let i = 12;
  while (i < q.length && q[i] !== 0) i += q[i]! + 1; // the name's labels
  if (i + 5 > q.length) return undefined;
  const question = q.subarray(12, i + 5);
  const isA = q.readUInt16BE(i + 1) === 1;
  const head = Buffer.alloc(12);
  head.writeUInt16BE(q.readUInt16BE(0), 0); // id
  head.writeUInt16BE(0x8180 | (q.readUInt16BE(2) & 0x0100), 2); // response, recursion available, RD copied, NOERROR
  head.writeUInt16BE(1, 4);
  head.writeUInt16BE(isA ? 1 : 0, 6);
  const rr = Buffer.from([0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, ...a]); // name -> the question, A, IN, TTL 60
  return Buffer.concat([head, question, ...(isA ? [rr] : [])]);
}
