// ctnet's errors as the CNI spec's codes: the one place that maps them. The engine throws
// CtnetErrors (or CniErrors it never sees: those come from parsing, in this folder).
import { CtnetError, KernelError } from '../errors.ts';
import { CniError, CODE, type Command } from './protocol.ts';

/** Store and kernel errors keep their text; the code tells the runtime what kind of failure it was. */
export function toCniError(e: unknown, command?: Command): CniError {
  if (e instanceof CniError) return e;
  if (e instanceof KernelError) return new CniError(CODE.IO_FAILURE, e.message, e.hint ?? '');
  if (e instanceof CtnetError) return new CniError(codeOf(e, command), e.message, e.hint ?? '');
  const err = e as Error & { code?: string };
  if (err?.code === 'ERR_SQLITE_ERROR' && /locked|busy/i.test(err.message)) {
    return new CniError(CODE.TRY_AGAIN, `ctnet's state is locked by another operation: ${err.message}`, 'try again in a moment');
  }
  return new CniError(CODE.IO_FAILURE, err?.message ?? String(e), 'see the ctnetd log in the state directory');
}

function codeOf(e: CtnetError, command: Command | undefined): number {
  if (command === 'STATUS') {
    // STATUS answers "can ADDs be done" (50) and "do existing attachments work" (51).
    if (e.code === 'DEGRADED') return CODE.LIMITED_CONNECTIVITY;
    if (e.code === 'NOT_FOUND' || e.code === 'STATE' || e.code === 'UNAVAILABLE') return CODE.NOT_AVAILABLE;
  }
  switch (e.code) {
    case 'INVALID_ARGUMENT':
    case 'CONFLICT':
    case 'NOT_FOUND':
    case 'MISMATCH':
      return CODE.INVALID_CONFIG;
    case 'UNSUPPORTED': return CODE.UNSUPPORTED_FIELD;
    case 'GONE': return CODE.UNKNOWN_CONTAINER;
    case 'INVALID_TARGET': return CODE.INVALID_ENV;
    case 'STATE': return CODE.TRY_AGAIN;
    case 'UNAVAILABLE': return CODE.NOT_AVAILABLE;
    case 'DEGRADED': return CODE.LIMITED_CONNECTIVITY;
    default: return CODE.IO_FAILURE;
  }
}
