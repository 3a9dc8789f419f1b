// One error type for everything a user can be told. Rendered once, at the edge (CLI or CNI).
export type ErrorCode =
  | 'INVALID_ARGUMENT' // bad user input, caught before any change
  | 'NOT_FOUND'
  | 'CONFLICT' // name taken, address taken, overlapping subnet
  | 'IN_USE' // still referenced (network with sandboxes)
  | 'KERNEL' // a kernel command failed
  | 'STATE' // the store disagrees with itself, or an operation on it is under way; run ctnet gc
  | 'ENVIRONMENT' // missing tool, not root, ...
  | 'UNSUPPORTED' // a setting ctnet cannot honour (a CNI config's claim about the network)
  | 'GONE' // what a request names (a namespace, an attachment) no longer exists
  | 'INVALID_TARGET' // what a request names exists but cannot be used (not a namespace, an interface taken)
  | 'MISMATCH' // the kernel differs from what was recorded (CNI CHECK)
  | 'UNAVAILABLE' // a network cannot take new attachments now
  | 'DEGRADED'; // a network's existing attachments have lost connectivity

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

/**
 * What kind of failure the kernel reported, decided once, in the kernel backend (never by matching
 * text above it): not-found (the object does not exist), exists, busy, permission, or failed.
 */
export type KernelErrorKind = 'not-found' | 'exists' | 'busy' | 'permission' | 'failed';

/** A kernel operation that failed: names the operation, the command (or syscall) it ran, errno and stderr. */
export class KernelError extends CtnetError {
  readonly kind: KernelErrorKind;
  /** The plan operation (e.g. link.add.veth), or the read (e.g. link.list). */
  readonly op: string;
  /** The command line (or syscall) that failed. */
  readonly command: string;
  readonly stderr: string;
  readonly exitCode: number | null;
  readonly errno: string | undefined;
  constructor(init: { kind: KernelErrorKind; op: string; command: string; stderr: string; exitCode?: number | null; errno?: string; hint?: string }) {
    const detail = init.stderr.trim().split('\n').slice(-3).join('; ') || (init.errno ?? `exit status ${init.exitCode}`);
    super('KERNEL', `${init.command}: ${detail}`, init.hint);
    this.name = 'KernelError';
    this.kind = init.kind;
    this.op = init.op;
    this.command = init.command;
    this.stderr = init.stderr;
    this.exitCode = init.exitCode ?? null;
    this.errno = init.errno;
  }
  /** True when the kernel said the object does not exist (for idempotent deletes). */
  get isNotFound(): boolean {
    return this.kind === 'not-found';
  }
  get isExists(): boolean {
    return this.kind === 'exists';
  }
}

export function invalid(message: string, hint?: string): CtnetError {
  return new CtnetError('INVALID_ARGUMENT', message, hint);
}
