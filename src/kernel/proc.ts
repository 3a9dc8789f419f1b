// Who is doing an operation: a process token (pid and start time, so a reused pid never matches)
// lets gc tell an operation that died from one still running.
import { readFileSync } from 'node:fs';

function startTime(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // Field 22; the command name (field 2) may hold spaces, so count from its closing paren.
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19];
  } catch {
    return undefined;
  }
}

export function processToken(pid: number = process.pid): string {
  return `${pid}:${startTime(pid) ?? '?'}`;
}

export function isAlive(token: string): boolean {
  const [pid, start] = token.split(':');
  return startTime(Number(pid)) === start;
}
