import type { Runner } from '../kernel/runner.ts';
import type { Store } from '../store/store.ts';

/** What every use case needs: the kernel runner (explain/dry-run aware) and the store. */
export interface Ctx {
  readonly runner: Runner;
  readonly store: Store;
  /** Progress and warnings for humans (stderr in the CLI). */
  readonly warn: (message: string) => void;
  /**
   * Where work that may follow the answer goes (the daemon runs it after replying, before the next
   * request): clearing stale conntrack entries. Absent: it runs at once.
   */
  readonly defer?: (fn: () => Promise<void>) => void;
}
