// Small container images for tests, made from Debian's busybox-static (no registry outside is
// reachable here): a busybox root filesystem (every applet linked in /bin, /www/index.html), and OCI
// images of it that src/lab/registry.ts serves to containerd. Used by test/lab/podman.ts (podman
// imports the rootfs as a tar), test/lab/containerd.ts and the CRI, ctr and podman-bats tests.
import { execFile, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmodSync, copyFileSync, existsSync, mkdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { promisify } from 'node:util';
import { gzipSync } from 'node:zlib';
import { ROOT, type Lab } from '../../src/lab/lab.ts';

const exec = promisify(execFile);
export const BUSYBOX = '/bin/busybox';
/** What the web image and the busybox rootfs serve at / (busybox httpd -h /www). */
export const INDEX_HTML = 'hello\n';

export interface RootfsOptions {
  /** More files, path (relative to the root) -> content, or {copy: a host file} (made executable). */
  readonly files?: Readonly<Record<string, string | { readonly copy: string }>>;
}

/**
 * Writes a busybox root filesystem into root: /bin/busybox and a link per applet (plus
 * busybox-extras, the name podman's test image uses), /etc/passwd and group, /www/index.html,
 * /tmp and /var/www. Needs busybox-static.
 */
export async function busyboxRootfs(root: string, opts: RootfsOptions = {}): Promise<void> {
  if (!existsSync(BUSYBOX)) throw new Error(`${BUSYBOX} is missing: install busybox-static (scripts/install.sh)`);
  for (const sub of ['bin', 'etc', 'www', 'tmp', 'var/www', 'root']) mkdirSync(join(root, sub), { recursive: true });
  copyFileSync(BUSYBOX, join(root, 'bin', 'busybox'));
  const { stdout } = await exec(BUSYBOX, ['--list']);
  // busybox runs a name beginning with "busybox" as `busybox ARGS`: busybox-extras httpd works.
  for (const applet of [...stdout.split('\n'), 'busybox-extras']) {
    if (applet && applet !== 'busybox') symlinkSync('busybox', join(root, 'bin', applet));
  }
  writeFileSync(join(root, 'etc', 'passwd'), 'root:x:0:0:root:/root:/bin/sh\n');
  writeFileSync(join(root, 'etc', 'group'), 'root:x:0:\n');
  writeFileSync(join(root, 'www', 'index.html'), INDEX_HTML);
  for (const [path, content] of Object.entries(opts.files ?? {})) {
    const to = join(root, path);
    mkdirSync(dirname(to), { recursive: true });
    rmSync(to, { force: true }); // it may be an applet's link: replace it, not busybox
    if (typeof content === 'string') writeFileSync(to, content);
    else {
      copyFileSync(content.copy, to);
      chmodSync(to, 0o755);
    }
  }
}

/** A tar of root with numeric root ownership and no timestamps, so equal trees give equal digests. */
export async function tarOf(root: string, out: string): Promise<void> {
  await exec('tar', ['--sort=name', '--owner=0', '--group=0', '--numeric-owner', '--mtime=@0', '-C', root, '-cf', out, '.'], { maxBuffer: 1 << 20 });
}

export interface ImageSpec {
  /** Repository and tag: "rc-busybox:1". */
  readonly ref: string;
  readonly entrypoint?: readonly string[];
  readonly cmd?: readonly string[];
}

const sha256 = (b: Buffer | string) => createHash('sha256').update(b).digest('hex');

/**
 * Writes OCI images that share one layer (the tar at layerTar) into dir as blobs plus tags.json,
 * the layout src/lab/registry.ts serves. Returns the refs written.
 */
export function writeImages(dir: string, layerTar: string, images: readonly ImageSpec[]): string[] {
  const blobs = join(dir, 'blobs', 'sha256');
  mkdirSync(blobs, { recursive: true });
  const put = (data: Buffer | string) => {
    const hex = sha256(data);
    writeFileSync(join(blobs, hex), data);
    return { digest: `sha256:${hex}`, size: Buffer.byteLength(data) };
  };
  const tar = readFileSync(layerTar);
  const layer = put(gzipSync(tar));
  const diffId = `sha256:${sha256(tar)}`;
  const tags: Record<string, { digest: string; mediaType: string }> = {};
  for (const img of images) {
    const config = put(JSON.stringify({
      architecture: 'amd64',
      os: 'linux',
      config: {
        Env: ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'],
        ...(img.entrypoint ? { Entrypoint: img.entrypoint } : {}),
        ...(img.cmd ? { Cmd: img.cmd } : {}),
        WorkingDir: '/',
      },
      rootfs: { type: 'layers', diff_ids: [diffId] },
    }));
    const mediaType = 'application/vnd.oci.image.manifest.v1+json';
    const manifest = put(JSON.stringify({
      schemaVersion: 2,
      mediaType,
      config: { mediaType: 'application/vnd.oci.image.config.v1+json', ...config },
      layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', ...layer }],
    }));
    tags[img.ref] = { digest: manifest.digest, mediaType };
  }
  writeFileSync(join(dir, 'tags.json'), JSON.stringify(tags, null, 2));
  return Object.keys(tags);
}

/**
 * Starts src/lab/registry.ts serving dir on 127.0.0.1:port inside the lab host, and waits until it
 * listens. It ends with stop(), or with the lab (lab.destroy() kills what runs in its namespaces).
 */
export async function startRegistry(lab: Lab, dir: string, port = 5000): Promise<{ readonly host: string; stop(): void }> {
  const child = spawn('nsenter', [`--net=/run/netns/${lab.host}`, join(ROOT, 'scripts', 'node'), join(ROOT, 'src', 'lab', 'registry.ts'), dir, '--port', String(port)],
    { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, NODE_EXTRA_CA_CERTS: '' } });
  let err = '';
  child.stderr.setEncoding('utf8').on('data', (d: string) => (err += d));
  await new Promise<void>((resolve, reject) => {
    child.stdout.setEncoding('utf8').on('data', (d: string) => d.includes('listening') && resolve());
    child.once('exit', (code) => reject(new Error(`the lab registry exited (${code}): ${err.trim()}`)));
  });
  return { host: `127.0.0.1:${port}`, stop: () => child.kill('SIGKILL') };
}
