// The daemon's wire format, shared with the C client (src/cni/client.c), chosen so the client
// needs no JSON encoder: request = "KEY=VALUE\0"... "\0" STDIN (the client then half-closes);
// reply = "EXIT\nSTDOUT_LENGTH\n" STDOUT STDERR (the daemon then closes).

export interface Request {
  readonly env: Record<string, string>;
  readonly stdin: string;
}

import type { Reply } from '../cni/handler.ts';

export type { Reply };

export function decodeRequest(buf: Buffer): Request {
  const env: Record<string, string> = {};
  let i = 0;
  for (;;) {
    const j = buf.indexOf(0, i);
    if (j < 0) throw new Error('request has no end of environment');
    if (j === i) return { env, stdin: buf.subarray(j + 1).toString('utf8') };
    const entry = buf.subarray(i, j).toString('utf8');
    const eq = entry.indexOf('=');
    if (eq > 0) env[entry.slice(0, eq)] = entry.slice(eq + 1);
    i = j + 1;
  }
}

export function encodeRequest(r: Request): Buffer {
  const head = Object.entries(r.env).map(([k, v]) => `${k}=${v}\0`).join('') + '\0';
  return Buffer.concat([Buffer.from(head), Buffer.from(r.stdin)]);
}

/**
 * A reply to the front end (src/cli/front.c) writes its exit as "cli:EXIT": a ctnetd older than
 * the front end answers its request as a failed CNI request, which the front end then tells
 * apart (and runs the command itself: that ctnetd changed nothing).
 */
export function encodeReply(r: Reply, cli = false): Buffer {
  const out = Buffer.from(r.stdout);
  return Buffer.concat([Buffer.from(`${cli ? 'cli:' : ''}${r.exit}\n${out.length}\n`), out, Buffer.from(r.stderr)]);
}

export function decodeReply(buf: Buffer): Reply {
  const a = buf.indexOf(10);
  const b = buf.indexOf(10, a + 1);
  if (a < 0 || b < 0) throw new Error('malformed reply');
  const exit = Number(buf.subarray(0, a).toString());
  const len = Number(buf.subarray(a + 1, b).toString());
  const body = buf.subarray(b + 1);
  return { exit, stdout: body.subarray(0, len).toString('utf8'), stderr: body.subarray(len).toString('utf8') };
}
