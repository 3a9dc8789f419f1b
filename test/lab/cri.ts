// A small client of Kubernetes' CRI (runtime.v1) for tests: what kubelet does to run a pod, over
// gRPC on a unix socket, with Node's http2 and a hand-written protobuf codec for the few messages
// the tests use (Debian has no crictl). Field numbers are from k8s.io/cri-api
// pkg/apis/runtime/v1/api.proto (cri-tools v1.26.1 vendors it).
import { connect as http2Connect, type ClientHttp2Session } from 'node:http2';
import { connect as netConnect } from 'node:net';

// ---------------------------------------------------------------------------------------------
// protobuf: a message is a list of [field number, value]; a repeated field is several entries;
// map<string,string> is repeated {1: key, 2: value}. Numbers are varints (enums, int32, int64 >= 0).

export type Value = string | number | boolean | Buffer | Msg;
export type Msg = readonly (readonly [number, Value | undefined])[];

function varint(n: bigint): Buffer {
  const out: number[] = [];
  do {
    let b = Number(n & 0x7fn);
    n >>= 7n;
    if (n > 0n) b |= 0x80;
    out.push(b);
  } while (n > 0n);
  return Buffer.from(out);
}

export function encode(msg: Msg): Buffer {
  const parts: Buffer[] = [];
  for (const [field, v] of msg) {
    if (v === undefined) continue;
    if (typeof v === 'number' || typeof v === 'boolean') {
      parts.push(varint(BigInt(field << 3)), varint(BigInt(Number(v))));
    } else {
      const body = typeof v === 'string' ? Buffer.from(v) : Buffer.isBuffer(v) ? v : encode(v);
      parts.push(varint(BigInt((field << 3) | 2)), varint(BigInt(body.length)), body);
    }
  }
  return Buffer.concat(parts);
}

/** A decoded message: field number -> values (varints as bigint, length-delimited as Buffer). */
export type Decoded = Map<number, (bigint | Buffer)[]>;

export function decode(buf: Buffer): Decoded {
  const out: Decoded = new Map();
  let i = 0;
  const readVarint = (): bigint => {
    let n = 0n;
    for (let shift = 0n; ; shift += 7n) {
      const b = buf[i++];
      if (b === undefined) throw new Error('protobuf: truncated varint');
      n |= BigInt(b & 0x7f) << shift;
      if ((b & 0x80) === 0) return n;
    }
  };
  while (i < buf.length) {
    const key = readVarint();
    const field = Number(key >> 3n);
    const wire = Number(key & 7n);
    let v: bigint | Buffer;
    if (wire === 0) v = readVarint();
    else if (wire === 2) {
      const len = Number(readVarint());
      v = buf.subarray(i, i + len);
      i += len;
    } else if (wire === 1) {
      v = buf.subarray(i, i + 8);
      i += 8;
    } else if (wire === 5) {
      v = buf.subarray(i, i + 4);
      i += 4;
    } else throw new Error(`protobuf: wire type ${wire} not supported`);
    out.set(field, [...(out.get(field) ?? []), v]);
  }
  return out;
}

const str = (m: Decoded, f: number): string => {
  const v = m.get(f)?.[0];
  return Buffer.isBuffer(v) ? v.toString('utf8') : '';
};
const num = (m: Decoded, f: number): number => {
  const v = m.get(f)?.[0];
  return typeof v === 'bigint' ? Number(BigInt.asIntN(64, v)) : 0;
};
const sub = (m: Decoded, f: number): Decoded => {
  const v = m.get(f)?.[0];
  return Buffer.isBuffer(v) ? decode(v) : new Map();
};
const subs = (m: Decoded, f: number): Decoded[] => (m.get(f) ?? []).filter(Buffer.isBuffer).map((b) => decode(b));
const map = (m: Decoded, f: number): Record<string, string> => Object.fromEntries(subs(m, f).map((e) => [str(e, 1), str(e, 2)]));
const mapEntries = (o: Readonly<Record<string, string>> | undefined, field: number): [number, Msg][] =>
  Object.entries(o ?? {}).map(([k, v]) => [field, [[1, k], [2, v]]]);

// ---------------------------------------------------------------------------------------------

export interface PodSpec {
  readonly name: string;
  readonly namespace: string;
  readonly uid?: string;
  readonly hostname?: string;
  readonly labels?: Readonly<Record<string, string>>;
  readonly portMappings?: readonly { readonly containerPort: number; readonly hostPort?: number; readonly protocol?: 'TCP' | 'UDP' }[];
  readonly dns?: { readonly servers: readonly string[]; readonly searches?: readonly string[]; readonly options?: readonly string[] };
}

/** PodSandboxConfig (metadata 1, hostname 2, dns_config 4, port_mappings 5, labels 6, linux 8). */
function podConfig(p: PodSpec): Msg {
  const protocol = { TCP: 0, UDP: 1 } as const;
  return [
    [1, [[1, p.name], [2, p.uid ?? `uid-${p.namespace}-${p.name}`], [3, p.namespace], [4, 0]]],
    [2, p.hostname],
    [4, p.dns ? [...p.dns.servers.map((s): [number, Value] => [1, s]), ...(p.dns.searches ?? []).map((s): [number, Value] => [2, s]), ...(p.dns.options ?? []).map((s): [number, Value] => [3, s])] : undefined],
    ...(p.portMappings ?? []).map((m): [number, Msg] => [5, [[1, protocol[m.protocol ?? 'TCP']], [2, m.containerPort], [3, m.hostPort]]]),
    ...mapEntries(p.labels, 6),
    [8, []],
  ];
}

export interface PodStatus {
  readonly id: string;
  /** 0 SANDBOX_READY, 1 SANDBOX_NOTREADY. */
  readonly state: number;
  readonly ip: string;
  /** containerd's verbose info (pid, netns path, CNI result, runtime spec), parsed. */
  readonly info: Record<string, unknown> | undefined;
}

export interface ExecResult {
  readonly stdout: string;
  readonly stderr: string;
  readonly exitCode: number;
}

export class CriError extends Error {
  readonly grpcStatus: number;
  constructor(method: string, status: number, message: string) {
    super(`CRI ${method}: grpc status ${status}: ${message}`);
    this.grpcStatus = status;
  }
}

const RUNTIME = 'runtime.v1.RuntimeService';
const IMAGE = 'runtime.v1.ImageService';

export class CriClient {
  readonly socket: string;
  #session: ClientHttp2Session | undefined;

  constructor(socket: string) {
    this.socket = socket;
  }

  #connect(): ClientHttp2Session {
    if (!this.#session || this.#session.closed || this.#session.destroyed) {
      this.#session = http2Connect('http://localhost', { createConnection: () => netConnect(this.socket) });
      this.#session.on('error', () => {}); // each call reports its own failure
    }
    return this.#session;
  }

  /** One unary gRPC call: length-prefixed message out, the reply's message back, grpc-status checked. */
  call(service: string, method: string, req: Msg, timeoutMs = 120_000): Promise<Decoded> {
    return new Promise((resolve, reject) => {
      const body = encode(req);
      const frame = Buffer.alloc(5 + body.length);
      frame.writeUInt32BE(body.length, 1);
      body.copy(frame, 5);
      const stream = this.#connect().request({
        ':method': 'POST', ':path': `/${service}/${method}`, 'content-type': 'application/grpc', te: 'trailers',
        'grpc-timeout': `${timeoutMs}m`,
      });
      const chunks: Buffer[] = [];
      let status: number | undefined;
      let message = '';
      const note = (h: Record<string, unknown>) => {
        if (h['grpc-status'] !== undefined) status = Number(h['grpc-status']);
        if (h['grpc-message'] !== undefined) message = decodeURIComponent(String(h['grpc-message']));
      };
      stream.setTimeout(timeoutMs + 5_000, () => stream.close());
      stream.on('response', note);
      stream.on('trailers', note);
      stream.on('data', (c: Buffer) => chunks.push(c));
      stream.on('error', (e) => reject(new Error(`CRI ${method}: ${e.message}`)));
      stream.on('close', () => {
        if (status === undefined) return reject(new Error(`CRI ${method}: no grpc-status (stream closed)`));
        if (status !== 0) return reject(new CriError(method, status, message));
        const all = Buffer.concat(chunks);
        resolve(all.length >= 5 ? decode(all.subarray(5, 5 + all.readUInt32BE(1))) : new Map());
      });
      stream.end(frame);
    });
  }

  close(): void {
    this.#session?.close();
  }

  async pullImage(image: string): Promise<string> {
    return str(await this.call(IMAGE, 'PullImage', [[1, [[1, image]]]]), 1);
  }

  async runPodSandbox(p: PodSpec): Promise<string> {
    return str(await this.call(RUNTIME, 'RunPodSandbox', [[1, podConfig(p)]]), 1);
  }

  async stopPodSandbox(id: string): Promise<void> {
    await this.call(RUNTIME, 'StopPodSandbox', [[1, id]]);
  }

  async removePodSandbox(id: string): Promise<void> {
    await this.call(RUNTIME, 'RemovePodSandbox', [[1, id]]);
  }

  async podSandboxStatus(id: string): Promise<PodStatus> {
    const r = await this.call(RUNTIME, 'PodSandboxStatus', [[1, id], [2, true]]);
    const s = sub(r, 1);
    const info = map(r, 2)['info'];
    return { id: str(s, 1), state: num(s, 3), ip: str(sub(s, 5), 1), info: info ? (JSON.parse(info) as Record<string, unknown>) : undefined };
  }

  /** Ids of every pod sandbox (ListPodSandbox without a filter). */
  async listPodSandboxes(): Promise<string[]> {
    return subs(await this.call(RUNTIME, 'ListPodSandbox', []), 1).map((p) => str(p, 1));
  }

  /** CreateContainer (ContainerConfig: metadata 1, image 2, command 3, args 4) in a pod made from spec. */
  async createContainer(podId: string, pod: PodSpec, c: { name: string; image: string; command?: readonly string[] }): Promise<string> {
    const config: Msg = [
      [1, [[1, c.name], [2, 0]]],
      [2, [[1, c.image]]],
      ...(c.command ?? []).map((a): [number, Value] => [3, a]),
      [15, []],
    ];
    return str(await this.call(RUNTIME, 'CreateContainer', [[1, podId], [2, config], [3, podConfig(pod)]]), 1);
  }

  async startContainer(id: string): Promise<void> {
    await this.call(RUNTIME, 'StartContainer', [[1, id]]);
  }

  async execSync(id: string, cmd: readonly string[], timeoutS = 30): Promise<ExecResult> {
    const r = await this.call(RUNTIME, 'ExecSync', [[1, id], ...cmd.map((a): [number, Value] => [2, a]), [3, timeoutS]], (timeoutS + 10) * 1000);
    return { stdout: str(r, 1), stderr: str(r, 2), exitCode: num(r, 3) };
  }
}
