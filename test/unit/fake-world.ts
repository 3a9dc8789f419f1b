// The fake world the engine's unit tests run in: a store in a fresh scratch directory, the fake
// kernel, and an engine context over both; removed after the test, also when it fails. Not a test
// file of its own (the unit glob runs *.test.ts only).
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Applier } from '../../src/engine/applier.ts';
import type { Ctx } from '../../src/engine/context.ts';
import { FakeKernel } from '../../src/kernel/fake.ts';
import { Store } from '../../src/store/store.ts';

/** tmpfs when there is one: the store's fsyncs cost nothing there. */
const SCRATCH = existsSync('/dev/shm') ? '/dev/shm' : tmpdir();

export interface World {
  readonly dir: string;
  readonly store: Store;
  readonly fake: FakeKernel;
  readonly ctx: Ctx;
}

/** Runs fn in a new world whose directory is named after prefix (ctnet-PREFIX-XXXXXX). */
export async function withWorld<T>(prefix: string, fn: (w: World) => Promise<T>): Promise<T> {
  const dir = mkdtempSync(join(SCRATCH, `ctnet-${prefix}-`));
  const store = new Store(dir);
  const fake = new FakeKernel();
  const warn = () => {};
  try {
    return await fn({ dir, store, fake, ctx: { store, kernel: fake, warn, applier: new Applier({ backend: fake, store, warn }) } });
  } finally {
    store.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

/** The rules of service NAME's chain in the fake kernel, one a line ('' when there is no chain). */
export const serviceRules = (w: World, name: string) => (w.fake.snapshot().nft!.chains[`svc_${name}`]?.rules ?? []).join('\n');
