// sysctls of ctnet's own network namespace (/proc/sys/net shows the reader's namespace).
import { readFileSync, writeFileSync } from 'node:fs';

// Keys naming an interface (which may contain dots) are written with slashes, as sysctl allows.
const path = (key: string) => `/proc/sys/${key.includes('/') ? key : key.replaceAll('.', '/')}`;

/** The key of a per-interface IPv4 setting, e.g. net/ipv4/conf/ctbr-web/route_localnet. */
export const ipv4ConfKey = (ifname: string, setting: string) => `net/ipv4/conf/${ifname}/${setting}`;

export function sysctlGet(key: string): string {
  return readFileSync(path(key), 'utf8').trim();
}

/** Like sysctlGet, but undefined when the key does not exist (a module not loaded, an interface gone). */
export function sysctlRead(key: string): string | undefined {
  try {
    return sysctlGet(key);
  } catch {
    return undefined;
  }
}

/** Equivalent to: sysctl -w KEY=VALUE */
export function sysctlWrite(key: string, value: string): void {
  writeFileSync(path(key), value);
}
