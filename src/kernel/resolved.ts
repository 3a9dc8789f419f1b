// Whether systemd-resolved serves the network namespace ctnet runs in. resolved keeps its runtime
// directory (/run/systemd/resolve/, RuntimeDirectory= in its unit) while it runs, and lives in the
// init network namespace: ctnet running in another one (a lab host, a container) must never name
// its links to the host's resolver, which would look them up by name among the host's own links.
import { existsSync, readlinkSync } from 'node:fs';

const RUNTIME_DIR = '/run/systemd/resolve';
const RESOLVECTL = ['/usr/bin/resolvectl', '/bin/resolvectl'];

export function resolvedHere(runtimeDir = RUNTIME_DIR): boolean {
  if (!existsSync(runtimeDir) || !RESOLVECTL.some((p) => existsSync(p))) return false;
  try {
    return readlinkSync('/proc/self/ns/net') === readlinkSync('/proc/1/ns/net');
  } catch {
    return false; // /proc/1/ns/net unreadable (not root): not provably the same namespace
  }
}
