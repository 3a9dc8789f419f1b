// Who is doing an operation: a process token (pid and start time, so a reused pid never matches)
// lets gc tell an operation that died from one still running.
import { readFileSync } from 'node:fs';

function stat(pid: number): string[] | undefined {
  try {
    const text = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // Fields from 3 on; the command name (field 2) may hold spaces, so count from its closing paren.
    return text.slice(text.lastIndexOf(')') + 2).split(' ');
  } catch {
    return undefined;
  }
}

/** Field 22, the start time: with the pid, it names one process for ever. */
const startTime = (pid: number) => stat(pid)?.[19];

export function processToken(pid: number = process.pid): string {
  return `${pid}:${startTime(pid) ?? '?'}`;
}

/** True while the process runs; a zombie nobody reaped (a killed daemon re-parented to a PID 1 that does not reap) is dead. */
export function isAlive(token: string): boolean {
  const [pid, start] = token.split(':');
  const f = stat(Number(pid));
  return f !== undefined && f[19] === start && f[0] !== 'Z' && f[0] !== 'X';
}

/**
 * Signals the process TOKEN names and its process group (a command ctnet started detached leads
 * its own group, so its children go too), if it is still that process. True if it was alive.
 */
export function signalProcess(token: string, signal: NodeJS.Signals = 'SIGTERM'): boolean {
  if (!isAlive(token)) return false;
  const pid = Number(token.split(':')[0]);
  try {
    process.kill(-pid, signal);
  } catch {
    try {
      process.kill(pid, signal); // not a group leader after all
    } catch {
      return false; // gone between the check and the signal
    }
  }
  return true;
}
