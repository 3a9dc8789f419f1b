// nftables. Scripts are built as text by src/nft/ (nft 1.0.6's JSON input cannot declare
// concatenated set types) and applied here as one atomic transaction.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { KernelError } from '../errors.ts';
import type { Runner } from './runner.ts';

/** Equivalent to: nft -f FILE. `nft -f -` cannot read Node's stdin pipe, so a temp file carries it. */
export async function nftApply(runner: Runner, script: string): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'ctnet-nft-'));
  const file = join(dir, 'ruleset.nft');
  try {
    writeFileSync(file, script);
    await runner.run(['nft', '-f', file], {
      mutates: true,
      explain: [`nft -f - <<'EOF'\n${script.trimEnd()}\nEOF`],
    });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Equivalent to: nft -j list table FAMILY NAME; undefined when the table does not exist. */
export async function nftListTable(runner: Runner, family: string, name: string): Promise<unknown[] | undefined> {
  try {
    const { stdout } = await runner.run(['nft', '-j', 'list', 'table', family, name]);
    return (JSON.parse(stdout) as { nftables: unknown[] }).nftables;
  } catch (e) {
    if (e instanceof KernelError && /No such file or directory/.test(e.stderr)) return undefined;
    throw e;
  }
}

/** Equivalent to: nft list table FAMILY NAME (text, for humans). */
export async function nftListTableText(runner: Runner, family: string, name: string): Promise<string | undefined> {
  try {
    return (await runner.run(['nft', 'list', 'table', family, name])).stdout;
  } catch (e) {
    if (e instanceof KernelError && /No such file or directory/.test(e.stderr)) return undefined;
    throw e;
  }
}

/** Equivalent to: nft -j list tables; true when table FAMILY NAME exists. */
export async function nftTableExists(runner: Runner, family: string, name: string): Promise<boolean> {
  const { stdout } = await runner.run(['nft', '-j', 'list', 'tables']);
  const items = (JSON.parse(stdout) as { nftables: { table?: { family: string; name: string } }[] }).nftables;
  return items.some((i) => i.table?.family === family && i.table.name === name);
}

export interface NftChain {
  readonly family: string;
  readonly table: string;
  readonly name: string;
  readonly hook?: string;
  readonly policy?: string;
  readonly prio?: number;
}

/** Equivalent to: nft -j list chains; every chain of every table (base chains carry hook and policy). */
export async function nftChains(runner: Runner): Promise<NftChain[]> {
  const { stdout } = await runner.run(['nft', '-j', 'list', 'chains']);
  const items = (JSON.parse(stdout) as { nftables: { chain?: NftChain }[] }).nftables;
  return items.flatMap((i) => (i.chain ? [i.chain] : []));
}
