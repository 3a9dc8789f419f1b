// Deleting nft objects whichever backend sends them (exec's nft, the netlink backend's libnftables).
import { KernelError } from '../errors.ts';

/**
 * Deletes set elements (or other objects), treating ones already gone as deleted. nft 1.0.6 has no
 * `destroy`, and one missing element fails the whole transaction, so on failure each line is
 * retried alone through the same apply.
 */
export async function deleteTolerant(lines: readonly string[], apply: (lines: readonly string[]) => Promise<void> | void): Promise<void> {
  if (lines.length === 0) return;
  try {
    await apply(lines);
  } catch (e) {
    if (!(e instanceof KernelError)) throw e;
    for (const line of lines) {
      try {
        await apply([line]);
      } catch (e2) {
        if (!(e2 instanceof KernelError && e2.isNotFound)) throw e2;
      }
    }
  }
}
