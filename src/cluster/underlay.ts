// Which address of this host carries the overlay (the VTEP's underlay address): --underlay IP,
// --underlay IFNAME, or by default the address of the interface holding the default route, as
// flannel picks its --iface. Pure: decided from the kernel's address and route lists.
import { invalid } from '../errors.ts';
import type { AddrInfo, RouteInfo } from '../kernel/backend.ts';
import { formatAddr, parseAddr } from '../model/cidr.ts';
import { parseIfname } from '../model/names.ts';

export interface Underlay {
  readonly ip: string;
  readonly dev: string;
}

/** Global addresses of one interface, IPv4 first. */
function usable(a: AddrInfo): string[] {
  const globals = a.addr_info.filter((x) => x.scope === 'global');
  return [...globals.filter((x) => x.family === 'inet'), ...globals.filter((x) => x.family === 'inet6')].map((x) => x.local);
}

const listing = (addrs: readonly AddrInfo[]) =>
  addrs.filter((a) => a.ifname !== 'lo' && usable(a).length).map((a) => `${a.ifname} ${usable(a).join(' ')}`).join(', ') || 'none';

export function chooseUnderlay(spec: string | undefined, addrs: readonly AddrInfo[], routes: readonly RouteInfo[]): Underlay {
  if (spec !== undefined && (spec.includes('.') || spec.includes(':'))) {
    const a = parseAddr('--underlay', spec);
    const ip = formatAddr(a.family, a.n);
    const holder = addrs.find((x) => x.ifname !== 'lo' && x.addr_info.some((i) => i.local === ip && i.scope === 'global'));
    if (!holder) throw invalid(`--underlay ${spec} is not a global address of an interface of this host`, `addresses here: ${listing(addrs)}`);
    return { ip, dev: holder.ifname };
  }
  if (spec !== undefined) {
    const dev = parseIfname('--underlay', spec);
    const a = addrs.find((x) => x.ifname === dev);
    if (!a) throw invalid(`--underlay ${dev}: this host has no interface of that name`, `interfaces with addresses here: ${listing(addrs)}`);
    const ip = usable(a)[0];
    if (ip === undefined) throw invalid(`--underlay ${dev} has no global address to carry the overlay`, 'give the interface an address, or name another (--underlay IP|IFNAME)');
    return { ip, dev };
  }
  const dflt = routes.find((r) => r.dst === 'default' && r.dev !== undefined);
  const a = dflt && addrs.find((x) => x.ifname === dflt.dev);
  const ip = a && usable(a)[0];
  if (!dflt || !ip) {
    throw invalid('this host has no default route with an address to carry the overlay', `say which with --underlay IP|IFNAME (addresses here: ${listing(addrs)})`);
  }
  return { ip, dev: dflt.dev! };
}
