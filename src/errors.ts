// One error type for everything a user can be told. Rendered once, at the edge (CLI or CNI).
export type ErrorCode =
  | 'INVALID_ARGUMENT' // bad user input, caught before any change
  | 'NOT_FOUND'
  | 'CONFLICT' // name taken, address taken, overlapping subnet
  | 'IN_USE' // still referenced (network with sandboxes)
  | 'KERNEL' // a kernel command failed
  | 'STATE' // the store disagrees with itself; run ctnet gc
  | 'ENVIRONMENT'; // missing tool, not root, ...

export class CtnetError extends Error {
  readonly code: ErrorCode;
  readonly hint: string | undefined;
  constructor(code: ErrorCode, message: string, hint?: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'CtnetError';
    this.code = code;
    this.hint = hint;
  }
}

/** A kernel command that failed: names the command, its exit status and its stderr. */
export class KernelError extends CtnetError {
  readonly command: string;
  readonly stderr: string;
  readonly exitCode: number | null;
  constructor(command: string, exitCode: number | null, stderr: string, hint?: string) {
    const detail = stderr.trim().split('\n').slice(-3).join('; ') || `exit status ${exitCode}`;
    super('KERNEL', `${command}: ${detail}`, hint);
    this.name = 'KernelError';
    this.command = command;
    this.stderr = stderr;
    this.exitCode = exitCode;
  }
  /** True when the kernel said the object does not exist (for idempotent deletes). */
  get isNotFound(): boolean {
    return /Cannot find device|No such file or directory|does not exist|No such process|Cannot find|not found|No such device|Cannot remove namespace|Invalid "netns"/i.test(this.stderr);
  }
  get isExists(): boolean {
    return /File exists|already exists/i.test(this.stderr);
  }
}

export function invalid(message: string, hint?: string): CtnetError {
  return new CtnetError('INVALID_ARGUMENT', message, hint);
}
