// ctnetd's DNS service: names for every network with DNS on (zone.ts), served on its gateways
// (server.ts), forwarded upstream otherwise (upstream.ts).
//
// Answers come straight from the store, read again whenever its change counter moved (NameReader):
// a name answers as soon as the transaction that made its sandbox ready commits, before `create`,
// `run` or CNI ADD returns, and is gone as soon as `rm`/DEL marks it removing. Nobody has to tell
// ctnetd, and there is no window in which the feed has not caught up. The change feed only drives
// the listeners (which gateways to bind), which a network's creation precedes any sandbox on it by
// far more than the feed's few milliseconds.
import { NameReader } from '../../store/names.ts';
import type { Service, ServiceContext } from '../service.ts';
import { Listener, type Resolver } from './server.ts';
import { hostResolvers, UpstreamPool } from './upstream.ts';
import { buildZone, type Zone } from './zone.ts';

/** A gateway that cannot be bound yet (IPv6 duplicate address detection, a bridge not up) is tried again this often. */
const RETRY_MS = 500;

export function dnsService(): Service {
  let reader: NameReader | undefined;
  let zone: Zone | undefined;
  let log: (m: string) => void = () => {};
  const listeners = new Map<string, Listener>(); // address -> its sockets
  const pending = new Map<string, string>(); // address -> network, not bound yet
  const failedOnce = new Set<string>();
  let retry: NodeJS.Timeout | undefined;
  let stopped = false;

  let asked = 0;
  const current = (): Zone => {
    // The WAL-index header unchanged: nothing was committed, the zone is current without a query
    // (and, should the header ever not move with a commit, the counter is still read every second).
    const now = performance.now();
    if (zone && !reader!.moved() && now - asked < 1_000) return zone;
    asked = now;
    const serial = reader!.serial();
    if (!zone || zone.serial !== serial) zone = buildZone(reader!.rows());
    return zone;
  };
  const upstream = new UpstreamPool();
  const resolver: Resolver = { zone: current, hostResolvers: () => hostResolvers(), upstream, log: (m) => log(m) };

  const bind = async (address: string, network: string) => {
    const l = new Listener(address, network);
    try {
      await l.open(resolver);
    } catch (e) {
      if (!failedOnce.has(address)) log(`cannot listen on ${address} port 53 yet (${(e as Error).message}); trying again every ${RETRY_MS} ms`);
      failedOnce.add(address);
      pending.set(address, network);
      return;
    }
    if (stopped || !pending.has(address)) return l.close(); // gone (or stopped) while binding
    pending.delete(address);
    failedOnce.delete(address);
    listeners.set(address, l);
    log(`answering for network ${network} on ${address} port 53 (udp, tcp)`);
  };

  /** Opens what is missing and closes what is no longer wanted; the others are left alone. */
  const reconcile = async () => {
    if (stopped) return;
    const want = new Map<string, string>();
    for (const n of current().networks.values()) for (const g of n.gateways) want.set(g, n.name);
    for (const [address, l] of listeners) {
      if (want.get(address) === l.network) continue;
      l.close();
      listeners.delete(address);
      log(`stopped answering for network ${l.network} on ${address}`);
    }
    for (const address of pending.keys()) if (!want.has(address)) pending.delete(address);
    for (const [address, network] of want) if (!listeners.has(address)) pending.set(address, network);
    await Promise.all([...pending].map(([a, n]) => bind(a, n)));
    clearTimeout(retry);
    if (pending.size && !stopped) retry = setTimeout(() => void reconcile().catch((e: Error) => log(e.message)), RETRY_MS);
  };

  return {
    name: 'dns',
    async start(ctx: ServiceContext) {
      log = ctx.log;
      reader = new NameReader(ctx.stateDir);
      await reconcile();
    },
    async changes(events) {
      if (events.some((e) => e.kind === 'network' || e.kind === 'subnet')) await reconcile();
    },
    async resync() {
      await reconcile();
    },
    stop() {
      stopped = true;
      clearTimeout(retry);
      for (const l of listeners.values()) l.close();
      listeners.clear();
      upstream.close();
      reader?.close();
    },
  };
}
