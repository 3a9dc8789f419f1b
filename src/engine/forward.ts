// Living beside Docker: a host whose shared FORWARD chain drops by default (Docker sets iptables'
// FORWARD policy to DROP) drops ctnet's traffic there too, whatever ctnet's own table accepts. With
// the user's consent (`ctnet doctor --fix`), each network adds the narrowest accept for its own
// bridge to that chain, marked "ctnet", and takes it away when the network goes (as netavark and
// libvirt do). Without consent ctnet changes nothing outside its own tables.
import type { NftChain } from '../kernel/backend.ts';
import type { ForwardTarget } from '../plan/ops.ts';
import { step, type Step } from '../plan/plan.ts';
import type { Store } from '../store/store.ts';
import type { Ctx } from './context.ts';

const CONSENT = 'forward_accept';

/** The shared chains the user agreed ctnet may add its accepts to. */
export function forwardTargets(store: Store): ForwardTarget[] {
  const v = store.meta(CONSENT);
  return v ? (JSON.parse(v) as ForwardTarget[]) : [];
}

/** A network's accepts (add) or their removal (remove), where the user consented. */
export function forwardSteps(store: Store, bridge: string, verb: 'add' | 'remove'): Step[] {
  const targets = forwardTargets(store);
  if (targets.length === 0) return [];
  return [step(targets.map((target) => (verb === 'add' ? { kind: 'forward.accept', target, bridge } : { kind: 'forward.unaccept', target, bridge })),
    `${verb === 'add' ? 'accept' : 'remove the accept of'} bridge ${bridge} in the host's FORWARD chain (ctnet doctor --fix)`)];
}

/** Chains of other tables whose forward hook drops by default: the ones iptables manages, and the rest. */
export function droppingChains(chains: readonly NftChain[]): { fixable: ForwardTarget[]; other: NftChain[] } {
  const drops = chains.filter((c) => c.hook === 'forward' && c.policy === 'drop' && !(c.family === 'inet' && c.table === 'ctnet'));
  const iptables = (c: NftChain) => (c.family === 'ip' || c.family === 'ip6') && c.table === 'filter' && c.name === 'FORWARD';
  return {
    fixable: drops.filter(iptables).map((c) => ({ family: c.family === 'ip' ? 4 as const : 6 as const, legacy: false })),
    other: drops.filter((c) => !iptables(c)),
  };
}

/**
 * doctor --fix: records consent for the shared chains that drop now and adds the accept of every
 * network's bridge to them. Returns what it did, and what it cannot fix.
 */
export async function acceptForward(ctx: Ctx): Promise<{ done: string[]; cannot: string[] }> {
  const { store, kernel, applier } = ctx;
  const { fixable, other } = droppingChains(await kernel.nftChains());
  const legacy = await kernel.legacyForward();
  if (legacy !== undefined && /^-P FORWARD DROP/m.test(legacy)) fixable.push({ family: 4, legacy: true });
  const had = forwardTargets(store);
  const fresh = fixable.filter((t) => !had.some((h) => h.family === t.family && h.legacy === t.legacy));
  const done: string[] = [];
  if (fresh.length > 0) {
    await applier.transaction(async (tx) => {
      tx.decide((rec) => rec.record({ kind: 'meta.set', key: CONSENT, value: JSON.stringify([...had, ...fresh]) }));
      for (const n of store.networks()) {
        await tx.run([step(fresh.map((target) => ({ kind: 'forward.accept', target, bridge: n.bridge })), `accept bridge ${n.bridge} in the host's FORWARD chain`)]);
      }
      tx.commit();
    });
    for (const t of fresh) done.push(`${t.family === 4 ? 'iptables' : 'ip6tables'}${t.legacy ? '-legacy' : ''} FORWARD: accepts ctnet's bridges (${store.networks().map((n) => n.bridge).join(', ') || 'none yet'}), now and for every network made later`);
  }
  return { done, cannot: other.map((c) => `chain ${c.family} ${c.table} ${c.name} drops forwarded packets and is not iptables' FORWARD: add an accept for ctnet's bridges to it yourself`) };
}
