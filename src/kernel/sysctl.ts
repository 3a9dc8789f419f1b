// sysctls of ctnet's own network namespace (/proc/sys/net shows the reader's namespace).
import { readFileSync, writeFileSync } from 'node:fs';
import type { Runner } from './runner.ts';

const path = (key: string) => `/proc/sys/${key.replaceAll('.', '/')}`;

export function sysctlGet(key: string): string {
  return readFileSync(path(key), 'utf8').trim();
}

/** Equivalent to: sysctl -w KEY=VALUE. Nothing is done (or printed) when it already holds VALUE. */
export function sysctlEnsure(runner: Runner, key: string, value: string): void {
  if (sysctlGet(key) === value) return;
  if (runner.willChange(`sysctl -w ${key}=${value}`)) writeFileSync(path(key), value);
}
