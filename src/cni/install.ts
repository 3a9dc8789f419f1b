// `ctnet cni install`: builds the plugin client (once), copies it into a CNI bin directory as
// `ctnet`, and writes a .conflist for an existing ctnet network.
import { execFileSync } from 'node:child_process';
import { chmodSync, copyFileSync, existsSync, mkdirSync, renameSync, statSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { CtnetError } from '../errors.ts';
import type { Store } from '../store/store.ts';
import { SUPPORTED_VERSIONS } from './protocol.ts';
import { ROOT } from '../root.ts';

const SOURCE = join(ROOT, 'src', 'cni', 'client.c');
export const CLIENT = join(ROOT, 'build', 'ctnet-cni');
/** What the client starts as the daemon: this checkout's launcher. */
export const CTNET_BIN = join(ROOT, 'bin', 'ctnet');

/** Compiles src/cni/client.c into build/ctnet-cni when it is missing or older than its inputs. */
export function buildClient(): string {
  // The versions come from protocol.ts: a change there rebuilds the client too.
  const inputs = [SOURCE, join(ROOT, 'src', 'cni', 'protocol.ts')];
  if (existsSync(CLIENT) && inputs.every((f) => statSync(CLIENT).mtimeMs >= statSync(f).mtimeMs)) return CLIENT;
  mkdirSync(dirname(CLIENT), { recursive: true });
  const tmp = `${CLIENT}.${process.pid}.tmp`;
  try {
    execFileSync('cc', ['-O2', '-Wall', '-Wextra', `-DCTNET_DEFAULT_BIN="${CTNET_BIN}"`,
      `-DSUPPORTED_VERSIONS=${JSON.stringify(JSON.stringify(SUPPORTED_VERSIONS))}`, '-o', tmp, SOURCE, '-ljansson'], { stdio: ['ignore', 'ignore', 'pipe'] });
  } catch (e) {
    const err = e as { stderr?: Buffer; message: string };
    throw new CtnetError('ENVIRONMENT', `cannot build the CNI plugin client: ${(err.stderr?.toString() || err.message).trim().split('\n').slice(-3).join('; ')}`,
      'install gcc and libjansson-dev (scripts/install.sh does it)');
  }
  renameSync(tmp, CLIENT); // atomic: a concurrent install never copies half a file
  return CLIENT;
}

export interface InstallOptions {
  readonly binDir: string;
  readonly confDir: string;
  readonly network: string | undefined;
  readonly cniVersion: string;
}

export function conflist(store: Store, network: string, cniVersion: string): Record<string, unknown> {
  return {
    cniVersion,
    name: network,
    plugins: [{
      type: 'ctnet',
      network,
      stateDir: resolve(store.dir),
      ctnetBin: CTNET_BIN,
      capabilities: { portMappings: true, ips: true, mac: true, dns: true, bandwidth: true, aliases: true },
    }],
  };
}

/** Installs the plugin (and a conflist); returns the paths written. */
export function installCni(store: Store, o: InstallOptions): string[] {
  if (!(SUPPORTED_VERSIONS as readonly string[]).includes(o.cniVersion)) {
    throw new CtnetError('INVALID_ARGUMENT', `--cni-version ${o.cniVersion} is not one ctnet speaks`, `use one of ${SUPPORTED_VERSIONS.join(', ')}`);
  }
  if (o.network !== undefined) {
    const n = store.network(o.network);
    if (!n) throw new CtnetError('NOT_FOUND', `no network named ${o.network}`, `create it first: ctnet network create ${o.network} --subnet CIDR`);
  }
  const client = buildClient();
  const written: string[] = [];
  mkdirSync(o.binDir, { recursive: true });
  const bin = join(o.binDir, 'ctnet');
  const tmp = `${bin}.${process.pid}.tmp`;
  copyFileSync(client, tmp);
  chmodSync(tmp, 0o755);
  renameSync(tmp, bin); // replacing a running executable in place would fail with ETXTBSY
  written.push(bin);
  if (o.network !== undefined) {
    mkdirSync(o.confDir, { recursive: true });
    const file = join(o.confDir, `${o.network}.conflist`);
    writeFileSync(file, JSON.stringify(conflist(store, o.network, o.cniVersion), null, 2) + '\n');
    written.push(file);
  }
  return written;
}
