import type { KernelBackend } from '../kernel/backend.ts';
import type { Store } from '../store/store.ts';
import { ExecBackend } from '../kernel/exec/backend.ts';
import { Applier, type CrashPoints } from './applier.ts';

/** What every use case needs: the store, the kernel (for reads) and the applier (for changes). */
export interface Ctx {
  readonly store: Store;
  readonly kernel: KernelBackend;
  readonly applier: Applier;
  /** Progress and warnings for humans (stderr in the CLI). */
  readonly warn: (message: string) => void;
}

/** A context on the real kernel (the exec backend), for the CLI and the daemon. */
export function createCtx(o: {
  store: Store;
  warn: (message: string) => void;
  explain?: ((line: string) => void) | undefined;
  dryRun?: boolean | undefined;
  defer?: ((fn: () => Promise<void>) => void) | undefined;
  crash?: CrashPoints | undefined;
  kernel?: KernelBackend | undefined;
}): Ctx {
  const kernel = o.kernel ?? new ExecBackend();
  return { store: o.store, kernel, warn: o.warn, applier: new Applier({ backend: kernel, ...o }) };
}
