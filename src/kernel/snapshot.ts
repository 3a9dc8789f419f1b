// A read view of the kernel for code that asks about many links in a row (a plan's drift check
// reads every network's device and ports): the host namespace's links are read once, with one
// `ip -j -d link show`, and link()/linksOf() on the host are answered from that list. Reads of
// other kinds and of other namespaces, and every change, go to the kernel as before. Only for a
// read that must not see its own changes: the list is as the kernel was when the view was made.
import type { KernelBackend, LinkInfo } from './backend.ts';

/** KERNEL with its host links read once, now (one `ip -j -d link show`). */
export async function withLinkSnapshot(kernel: KernelBackend): Promise<KernelBackend> {
  const all = await kernel.links();
  const byName = new Map(all.map((l) => [l.ifname, l]));
  const link = async (name: string, ns?: Parameters<KernelBackend['link']>[1]): Promise<LinkInfo | undefined> =>
    ns === undefined ? byName.get(name) : kernel.link(name, ns);
  /** Equivalent to: ip -j link show master BRIDGE (nothing when there is no such bridge). */
  const linksOf = async (bridge: string): Promise<LinkInfo[]> => all.filter((l) => l.master === bridge);
  return new Proxy(kernel, {
    get(target, prop) {
      if (prop === 'link') return link;
      if (prop === 'linksOf') return linksOf;
      const v: unknown = Reflect.get(target, prop, target);
      return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
    },
  });
}
