import { KernelError } from '../errors.ts';
import { nftApply } from '../kernel/nft.ts';
import type { Runner } from '../kernel/runner.ts';

/**
 * Deletes set elements, treating ones already gone as deleted. nft 1.0.6 has no `destroy`, and one
 * missing element fails the whole transaction, so on failure each line is retried alone.
 */
export async function applyNftDelete(runner: Runner, lines: readonly string[]): Promise<void> {
  if (lines.length === 0) return;
  try {
    await nftApply(runner, lines.join('\n') + '\n');
  } catch (e) {
    if (!(e instanceof KernelError)) throw e;
    for (const line of lines) {
      try {
        await nftApply(runner, line + '\n');
      } catch (e2) {
        if (!(e2 instanceof KernelError && /No such file or directory|does not exist/.test(e2.stderr))) throw e2;
      }
    }
  }
}
