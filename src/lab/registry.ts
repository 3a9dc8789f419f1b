// A read-only OCI registry for labs: serves the images test/lab/images.ts wrote into DIR, over plain
// HTTP, so that a runtime inside a lab (containerd's CRI plugin always pulls) gets its images
// without a registry outside. Only what a pull uses: GET/HEAD of /v2/, manifests (by tag or digest)
// and blobs. Start it inside the lab host:
//   nsenter --net=/run/netns/LAB scripts/node src/lab/registry.ts DIR [--port 5000]
// It prints "listening on 127.0.0.1:PORT" once it accepts connections.
//   DIR/blobs/sha256/HEX      content-addressed blobs (configs, layers, manifests)
//   DIR/tags.json             {"NAME:TAG": {"digest": "sha256:…", "mediaType": "…"}}
import { createReadStream, existsSync, readFileSync, statSync } from 'node:fs';
import { createServer, type ServerResponse } from 'node:http';
import { join } from 'node:path';

export interface TagEntry {
  readonly digest: string;
  readonly mediaType: string;
}

const DIGEST = /^sha256:[0-9a-f]{64}$/;

function notFound(res: ServerResponse, code: string, head: boolean): void {
  const body = JSON.stringify({ errors: [{ code, message: code.toLowerCase().replace(/_/g, ' ') }] });
  res.writeHead(404, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body) });
  res.end(head ? undefined : body);
}

function sendBlob(res: ServerResponse, dir: string, digest: string, mediaType: string, head: boolean): void {
  const path = join(dir, 'blobs', 'sha256', digest.slice('sha256:'.length));
  res.writeHead(200, { 'Content-Type': mediaType, 'Content-Length': statSync(path).size, 'Docker-Content-Digest': digest });
  if (head) res.end();
  else createReadStream(path).pipe(res);
}

export function serveRegistry(dir: string, port: number, host = '127.0.0.1'): Promise<() => Promise<void>> {
  const tags = JSON.parse(readFileSync(join(dir, 'tags.json'), 'utf8')) as Record<string, TagEntry>;
  const manifests = new Map(Object.values(tags).map((t) => [t.digest, t.mediaType]));
  const server = createServer((req, res) => {
    const head = req.method === 'HEAD';
    if (req.method !== 'GET' && !head) {
      res.writeHead(405).end();
      return;
    }
    const path = new URL(req.url ?? '/', 'http://registry').pathname;
    if (path === '/v2/' || path === '/v2') {
      res.writeHead(200, { 'Content-Type': 'application/json', 'Docker-Distribution-API-Version': 'registry/2.0' }).end(head ? undefined : '{}');
      return;
    }
    const m = /^\/v2\/(.+)\/(manifests|blobs)\/([^/]+)$/.exec(path);
    if (!m) {
      notFound(res, 'NAME_UNKNOWN', head);
      return;
    }
    const [, name, kind, ref] = m as unknown as [string, string, string, string];
    if (kind === 'manifests') {
      const byTag = tags[`${name}:${ref}`];
      const digest = byTag?.digest ?? (DIGEST.test(ref) && manifests.has(ref) ? ref : undefined);
      if (!digest) notFound(res, 'MANIFEST_UNKNOWN', head);
      else sendBlob(res, dir, digest, manifests.get(digest)!, head);
      return;
    }
    if (!DIGEST.test(ref) || !existsSync(join(dir, 'blobs', 'sha256', ref.slice(7)))) notFound(res, 'BLOB_UNKNOWN', head);
    else sendBlob(res, dir, ref, 'application/octet-stream', head);
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => resolve(() => new Promise((r) => server.close(() => r()))));
  });
}

if (import.meta.filename === process.argv[1]) {
  const [dir, ...rest] = process.argv.slice(2);
  const i = rest.indexOf('--port');
  const port = i >= 0 ? Number(rest[i + 1]) : 5000;
  if (!dir || !Number.isInteger(port) || port <= 0 || port > 65535) {
    process.stderr.write('usage: registry.ts DIR [--port PORT]\n');
    process.exit(2);
  }
  await serveRegistry(dir, port);
  process.stdout.write(`listening on 127.0.0.1:${port}\n`);
}
