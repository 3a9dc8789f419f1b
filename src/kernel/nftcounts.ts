// How many rules each chain and how many elements each named set of ctnet's nft tables hold: what
// the drift check (engine/tables.ts) compares with the store, without the elements themselves.

/** One table's counts: chain -> rules, named set or map -> elements. */
export interface TableCounts {
  readonly chains: ReadonlyMap<string, number>;
  readonly sets: ReadonlyMap<string, number>;
}

/** Both of ctnet's tables; undefined where the table does not exist. */
export interface NftCounts {
  readonly inet: TableCounts | undefined;
  readonly bridge: TableCounts | undefined;
}

type Item = Record<string, { name?: string; chain?: string; elem?: unknown[] } | undefined>;

/** The counts of one table from `nft -j list table` (its `nftables` array). */
export function countsOfNftJson(items: readonly unknown[]): TableCounts {
  const chains = new Map<string, number>();
  const sets = new Map<string, number>();
  for (const item of items as Item[]) {
    const set = item.set ?? item.map;
    // Anonymous sets (__setN) belong to the rules that name them.
    if (set?.name && !set.name.startsWith('__')) sets.set(set.name, set.elem?.length ?? 0);
    if (item.chain?.name) chains.set(item.chain.name, chains.get(item.chain.name) ?? 0);
    if (item.rule?.chain) chains.set(item.rule.chain, (chains.get(item.rule.chain) ?? 0) + 1);
  }
  return { chains, sets };
}

/** Parses the output of build/ctnet-nftcount (src/kernel/exec/nftcount.c); throws on anything else. */
export function parseNftCountOutput(text: string): NftCounts {
  const bad = (why: string) => new Error(`ctnet-nftcount printed something unexpected (${why}): ${text.slice(0, 200)}`);
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch {
    throw bad('not JSON');
  }
  const counts = (x: unknown, where: string): Map<string, number> => {
    if (typeof x !== 'object' || x === null || Array.isArray(x)) throw bad(`${where} is not an object`);
    return new Map(Object.entries(x).map(([k, n]) => {
      if (!Number.isSafeInteger(n) || (n as number) < 0) throw bad(`${where}.${k} is not a count`);
      return [k, n as number];
    }));
  };
  const table = (x: unknown, family: string): TableCounts | undefined => {
    if (x === null) return undefined;
    if (typeof x !== 'object' || Array.isArray(x)) throw bad(`${family} is neither null nor an object`);
    const t = x as { chains?: unknown; sets?: unknown };
    return { chains: counts(t.chains, `${family}.chains`), sets: counts(t.sets, `${family}.sets`) };
  };
  if (typeof v !== 'object' || v === null || !('inet' in v) || !('bridge' in v)) throw bad('no inet and bridge');
  return { inet: table((v as { inet: unknown }).inet, 'inet'), bridge: table((v as { bridge: unknown }).bridge, 'bridge') };
}
