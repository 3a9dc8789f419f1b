// The kernel backend that runs the tools a person would: iproute2 (`ip -batch` for consecutive
// commands in one namespace), nft (one transaction per operation), conntrack and ss, and writes to
// /proc/sys. In-process netlink can replace it behind the same interface.
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { KernelError } from '../../errors.ts';
import { sameNetns, type Netns } from '../../model/netns.ts';
import { openConnection, pickFlows, type Flow, type FlowFilter } from '../../plan/flows.ts';
import { removes, resolvedArgvs, resolvText, type Op } from '../../plan/ops.ts';
import { resolvedHere } from '../resolved.ts';
import { bridgeCommand, forwardArgvs, ipArgv, ipCommand, shellLine, tcCommands, type IpCommand } from '../../plan/render.ts';
import type { AddrInfo, FdbInfo, KernelBackend, LinkInfo, LinkStats, Listener, NeighInfo, NftChain, ProbeResult, ProbeSpec, RouteInfo, TraceMarker, TraceMonitor } from '../backend.ts';
import { routeGet, sendProbe, startTraceMonitor } from './trace.ts';
import { conntrackDeleteArgvs, parseFlows, parseProcFlows } from '../conntrack.ts';
import { isNetnsFile, netnsKillAll, netnsNames, netnsPids, removeResolv, resolvNames, writeResolv } from '../netns.ts';
import { listenersArgv, parseListeners, socketPorts } from '../sockets.ts';
import { sysctlRead, sysctlWrite } from '../sysctl.ts';
import type { NftSession } from './nftlive.ts';
import { run, SpawnStats } from './run.ts';
import { deleteTolerant } from '../nft-delete.ts';
import { countsOfNftJson, parseNftCountOutput, type NftCounts } from '../nftcounts.ts';
import { ROOT } from '../../root.ts';

/** src/kernel/exec/nftcount.c, made by scripts/build.sh. */
const NFTCOUNT = join(ROOT, 'build', 'ctnet-nftcount');

const TABLE = ['inet', 'ctnet'] as const;
const PROC_CONNTRACK = '/proc/net/nf_conntrack';

export class ExecBackend implements KernelBackend {
  /** Processes spawned and the time they took (the daemon reports a request's own time apart from them). */
  readonly stats = new SpawnStats();
  readonly #run = (op: string, argv: readonly string[], input?: string) => run(op, argv, input, this.stats);
  readonly #nft: NftSession | undefined;

  /**
   * nft: a long-lived `nft -i` (ctnetd's, for the commands it runs) that applies each nft
   * transaction (`include` of the same file `nft -f` would read: one transaction, all or nothing)
   * without a process start. In ctnetd a spawn costs more than the nft work of one policy change:
   * the fork copies the daemon's page tables, and nft starts and reads the ruleset's cache.
   */
  constructor(options: { nft?: NftSession } = {}) {
    this.#nft = options.nft;
  }

  async apply(ops: readonly Op[]): Promise<void> {
    let i = 0;
    while (i < ops.length) {
      const op = ops[i]!;
      if (op.kind === 'link.add.ifb') {
        await this.#ensureIfb(op.name);
        i++;
        continue;
      }
      const ip = ipCommand(op);
      if (ip) {
        // Neighbours in the same namespace go in one `ip -batch -`. `-6` is a global option, not
        // allowed inside a batch: such commands run alone.
        const group: IpCommand[] = [ip];
        let j = i + 1;
        for (; j < ops.length && batchable(ip); j++) {
          const next = ipCommand(ops[j]!);
          if (!next || !batchable(next) || !sameNetns(next.netns, ip.netns)) break;
          group.push(next);
        }
        await this.#runIp(op.kind, group);
        i = j;
        continue;
      }
      if (bridgeCommand(op)) {
        // Consecutive fdb entries go in one `bridge -batch -`.
        const group: (readonly string[])[] = [];
        for (; i < ops.length && bridgeCommand(ops[i]!); i++) group.push(bridgeCommand(ops[i]!)!);
        await (group.length === 1
          ? this.#run(op.kind, ['bridge', ...group[0]!])
          : this.#run(op.kind, ['bridge', '-batch', '-'], group.map((c) => shellLine(c)).join('\n') + '\n'));
        continue;
      }
      const tc = tcCommands(op);
      if (tc) {
        // Consecutive tc commands go in one `tc -batch -` (which stops at the first failure); a
        // removal runs alone, so one already gone does not keep the next from running.
        const group: string[][] = [...tc];
        for (i++; !removes(op) && i < ops.length && tcCommands(ops[i]!) && !removes(ops[i]!); i++) group.push(...tcCommands(ops[i]!)!);
        await (group.length === 1
          ? this.#run(op.kind, ['tc', ...group[0]!])
          : this.#run(op.kind, ['tc', '-batch', '-'], group.map((c) => shellLine(c)).join('\n') + '\n'));
        continue;
      }
      if (op.kind === 'conntrack.forget') {
        // Consecutive filters share one listing of the flows.
        const filters: FlowFilter[] = [];
        for (; i < ops.length && ops[i]!.kind === 'conntrack.forget'; i++) filters.push((ops[i] as { filter: FlowFilter }).filter);
        await this.#forget(filters);
        continue;
      }
      await this.#one(op);
      i++;
    }
  }

  async #one(op: Op): Promise<void> {
    switch (op.kind) {
      case 'conntrack.drain':
        return this.#drain(op.filter, op.timeoutMs);
      case 'sysctl.set': {
        const now = sysctlRead(op.key);
        if (now === op.value || (now === undefined && op.ifExists)) return;
        try {
          sysctlWrite(op.key, op.value);
        } catch (e) {
          const err = e as NodeJS.ErrnoException;
          throw new KernelError({
            kind: err.code === 'ENOENT' ? 'not-found' : err.code === 'EACCES' || err.code === 'EPERM' ? 'permission' : 'failed',
            op: op.kind, command: `sysctl -w ${op.key}=${op.value}`, stderr: err.message, errno: err.code,
          });
        }
        return;
      }
      case 'netns.kill':
        netnsKillAll(op.netns);
        return;
      case 'nft':
        return this.#nftApply(op.kind, op.lines);
      case 'nft.delete':
        return this.#nftDelete(op.lines);
      case 'forward.accept':
        for (const argv of forwardArgvs('-I', op.target, op.bridge)) await this.#run(op.kind, argv);
        return;
      case 'resolv.write':
        writeResolv(op.netns, resolvText(op.nameservers, op.search));
        return;
      case 'resolv.remove':
        removeResolv(op.netns);
        return;
      case 'resolved.link':
        for (const argv of resolvedArgvs(op)) await this.#run(op.kind, argv);
        return;
      case 'resolved.revert':
        // resolved forgets a link's settings when the link goes: a link that is gone is done.
        if (!(await this.link(op.dev))) return;
        await this.#run(op.kind, ['resolvectl', 'revert', op.dev]);
        return;
      case 'forward.unaccept':
        for (const argv of forwardArgvs('-D', op.target, op.bridge)) {
          try {
            await this.#run(op.kind, argv);
          } catch (e) {
            if (!(e instanceof KernelError && e.isNotFound)) throw e;
          }
        }
        return;
      default:
        throw new Error(`the exec backend cannot apply ${op.kind}`);
    }
  }

  /**
   * ip link add NAME up type ifb, where an ifb of that name counts as made: it is also the inverse
   * of deleting one, which runs for a deletion that may never have happened.
   */
  async #ensureIfb(name: string): Promise<void> {
    const ip = ipCommand({ kind: 'link.add.ifb', name })!;
    try {
      await this.#run('link.add.ifb', ipArgv(undefined, ip.args));
    } catch (e) {
      if (!(e instanceof KernelError && e.isExists && (await this.links()).some((l) => l.ifname === name && l.linkinfo?.info_kind === 'ifb'))) throw e;
    }
  }

  /** Polls the flows until none the filter picks is an open connection, or the time is up. */
  async #drain(filter: FlowFilter, timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    let local: Promise<ReadonlySet<string>> | undefined;
    const localAddrs = () => (local ??= this.addrs().then((ls) => new Set(ls.flatMap((l) => (l.addr_info ?? []).map((a) => a.local)))));
    for (;;) {
      const open = (await pickFlows(filter, (await this.flows()).filter(openConnection), localAddrs));
      if (open.length === 0 || Date.now() >= deadline) return;
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  async #forget(filters: readonly FlowFilter[]): Promise<void> {
    const flows = await this.flows();
    if (flows.length === 0) return;
    let local: Promise<ReadonlySet<string>> | undefined;
    const localAddrs = () => (local ??= this.addrs().then((ls) => new Set(ls.flatMap((l) => (l.addr_info ?? []).map((a) => a.local)))));
    const chosen = new Set((await Promise.all(filters.map((f) => pickFlows(f, flows, localAddrs)))).flat());
    for (const argv of conntrackDeleteArgvs([...chosen], flows)) {
      try {
        await this.#run('conntrack.forget', argv);
      } catch (e) {
        if (!(e instanceof KernelError && e.isNotFound)) throw e; // expired meanwhile: deleted
      }
    }
  }

  // ---- reads ----
  async netnsIds(): Promise<{ nsid: number; name?: string }[]> {
    return netnsIdsFromList(await this.#ipJson('netns.ids', undefined, ['netns', 'list']));
  }
  links(ns?: Netns): Promise<LinkInfo[]> {
    return this.#ipJson('link.list', ns, ['-d', 'link', 'show']);
  }
  async link(name: string, ns?: Netns): Promise<LinkInfo | undefined> {
    try {
      return (await this.#ipJson<LinkInfo>('link.show', ns, ['link', 'show', 'dev', name]))[0];
    } catch (e) {
      if (e instanceof KernelError && e.isNotFound) return undefined;
      throw e;
    }
  }
  async linkStats(ns?: Netns): Promise<LinkStats[]> {
    type Raw = { ifname: string; stats64?: { rx?: { bytes?: number; packets?: number }; tx?: { bytes?: number; packets?: number } } };
    const zero = (x: { bytes?: number; packets?: number } | undefined) => ({ bytes: x?.bytes ?? 0, packets: x?.packets ?? 0 });
    return (await this.#ipJson<Raw>('link.stats', ns, ['-s', 'link', 'show'])).map((l) => ({ ifname: l.ifname, rx: zero(l.stats64?.rx), tx: zero(l.stats64?.tx) }));
  }
  linksOf(bridge: string): Promise<LinkInfo[]> {
    return this.#ipJson('link.list', undefined, ['link', 'show', 'master', bridge]);
  }
  addrs(ns?: Netns): Promise<AddrInfo[]> {
    return this.#ipJson('addr.list', ns, ['addr', 'show']);
  }
  async routes(ns?: Netns): Promise<RouteInfo[]> {
    const [v4, v6] = await Promise.all([this.#ipJson<RouteInfo>('route.list', ns, ['-4', 'route', 'show']), this.#ipJson<RouteInfo>('route.list', ns, ['-6', 'route', 'show'])]);
    return [...v4, ...v6];
  }
  neighbours(ns?: Netns): Promise<NeighInfo[]> {
    return this.#ipJson('neigh.list', ns, ['neigh', 'show']);
  }
  async fdb(bridge: string): Promise<FdbInfo[]> {
    const { stdout } = await this.#run('fdb.list', ['bridge', '-j', 'fdb', 'show', 'br', bridge]);
    return stdout.trim() ? (JSON.parse(stdout) as FdbInfo[]) : [];
  }
  async fdbOf(dev: string): Promise<FdbInfo[]> {
    const { stdout } = await this.#run('fdb.list', ['bridge', '-j', 'fdb', 'show', 'dev', dev]);
    return stdout.trim() ? (JSON.parse(stdout) as FdbInfo[]) : [];
  }
  async nftTable(family: 'inet' | 'bridge' = 'inet', options: { readonly terse?: boolean } = {}): Promise<unknown[] | undefined> {
    try {
      const { stdout } = await this.#run('nft.list', ['nft', ...(options.terse ? ['-t'] : []), '-j', 'list', 'table', family, 'ctnet']);
      return (JSON.parse(stdout) as { nftables: unknown[] }).nftables;
    } catch (e) {
      if (e instanceof KernelError && e.isNotFound) return undefined;
      throw e;
    }
  }
  async nftCounts(): Promise<NftCounts> {
    // The netlink counter when it was built (scripts/build.sh, with libnftnl); else nft's listings.
    if (existsSync(NFTCOUNT)) return parseNftCountOutput((await this.#run('nft.count', [NFTCOUNT, 'ctnet'])).stdout);
    const [inet, bridge] = await Promise.all([this.nftTable('inet'), this.nftTable('bridge')]);
    return { inet: inet && countsOfNftJson(inet), bridge: bridge && countsOfNftJson(bridge) };
  }
  async nftTableText(): Promise<string | undefined> {
    try {
      return (await this.#run('nft.list', ['nft', 'list', 'table', ...TABLE])).stdout;
    } catch (e) {
      if (e instanceof KernelError && e.isNotFound) return undefined;
      throw e;
    }
  }
  async nftChains(): Promise<NftChain[]> {
    const { stdout } = await this.#run('nft.list', ['nft', '-j', 'list', 'chains']);
    const items = (JSON.parse(stdout) as { nftables: { chain?: NftChain }[] }).nftables;
    return items.flatMap((i) => (i.chain ? [i.chain] : []));
  }
  async nftTables(): Promise<{ family: string; table: string }[]> {
    // Text, not -j: nft 1.0.6 aborts in `nft -j list tables` ("corrupted double-linked list") while
    // ctnetd holds its owner-flagged tables; `table FAMILY NAME` lines are all this needs.
    const { stdout } = await this.#run('nft.list', ['nft', 'list', 'tables']);
    return stdout.split('\n').flatMap((l) => {
      const m = /^table (\S+) (\S+)/.exec(l.trim());
      return m ? [{ family: m[1]!, table: m[2]! }] : [];
    });
  }
  /**
   * Equivalent to: conntrack -L. Read from /proc/net/nf_conntrack (this namespace's table, the
   * same entries) when the kernel has it: in ctnetd a process start costs tens of ms (the fork
   * copies the daemon's page tables), more than the policy change that wants the listing.
   */
  async flows(): Promise<Flow[]> {
    let text: string | undefined;
    try {
      text = await readFile(PROC_CONNTRACK, 'utf8');
    } catch {
      // A kernel without CONFIG_NF_CONNTRACK_PROCFS (or conntrack not loaded yet): ask the tool.
    }
    if (text !== undefined) return parseProcFlows(text);
    return parseFlows((await this.#run('conntrack.list', ['conntrack', '-L'])).stdout);
  }
  async listeners(sctp: boolean, only?: (proto: 'tcp' | 'udp', port: number) => boolean): Promise<Listener[]> {
    // /proc/net/{tcp,udp}[6] is read without a spawn; ss (which names the processes) only runs
    // when a socket there could matter.
    if (only && !sctp && !socketPorts().some((s) => only(s.proto, s.port))) return [];
    return parseListeners((await this.#run('socket.list', listenersArgv(sctp))).stdout);
  }
  sysctl(key: string): string | undefined {
    return sysctlRead(key);
  }
  netnsNames(): string[] {
    return netnsNames();
  }
  resolvNames(): string[] {
    return resolvNames();
  }

  async resolvedHere(): Promise<boolean> {
    return resolvedHere();
  }

  async resolvedLink(dev: string): Promise<{ dns: string[]; domains: string[] } | undefined> {
    if (!(await this.link(dev))) return undefined;
    // "Link 7 (ctbr-front): 10.61.1.1 fd00:61:1::1" (older resolvectl: "Link 7 (ctbr-front): 10.61.1.1")
    const after = (text: string) => (/\):\s*(.*)$/m.exec(text)?.[1] ?? '').split(/\s+/).filter(Boolean);
    const dns = after((await this.#run('resolvectl', ['resolvectl', 'dns', dev])).stdout);
    const domains = after((await this.#run('resolvectl', ['resolvectl', 'domain', dev])).stdout);
    return { dns, domains };
  }
  isNetns(path: string): boolean {
    return isNetnsFile(path);
  }
  netnsPids(ns: Netns): number[] {
    return netnsPids(ns);
  }
  async toolVersion(tool: 'ip' | 'nft' | 'conntrack'): Promise<string | undefined> {
    try {
      const { stdout, stderr } = await this.#run('tool.version', [tool, tool === 'ip' ? '-V' : '--version']);
      return (stdout || stderr).trim().split('\n')[0];
    } catch {
      return undefined;
    }
  }
  traceMonitor(marker?: TraceMarker): Promise<TraceMonitor> {
    return startTraceMonitor(marker);
  }
  probe(ns: Netns | undefined, p: ProbeSpec): Promise<ProbeResult> {
    return sendProbe(ns, p);
  }
  routeGet(ns: Netns | undefined, dst: string) {
    return routeGet(ns, dst);
  }
  async legacyForward(): Promise<string | undefined> {
    try {
      return (await this.#run('iptables.list', ['iptables-legacy', '-S', 'FORWARD'])).stdout;
    } catch {
      return undefined; // not installed, or no legacy tables loaded
    }
  }

  async #runIp(op: string, group: readonly IpCommand[]): Promise<void> {
  const first = group[0]!;
  if (group.length === 1) {
    await this.#run(op, ipArgv(first.netns, first.args));
    return;
  }
  await this.#run(op, ipArgv(first.netns, ['-batch', '-']), group.map((c) => shellLine(c.args)).join('\n') + '\n');
}

  async #ipJson<T>(op: string, ns: Netns | undefined, args: string[]): Promise<T[]> {
  const { stdout } = await this.#run(op, ipArgv(ns, ['-j', ...args]));
  return stdout.trim() ? (JSON.parse(stdout) as T[]) : [];
}

/** Equivalent to: nft -f FILE. `nft -f -` cannot read Node's stdin pipe, so a temp file carries it. */
  async #nftApply(op: string, lines: readonly string[]): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'ctnet-nft-'));
  const file = join(dir, 'ruleset.nft');
  try {
    writeFileSync(file, lines.join('\n') + '\n');
    if (this.#nft) await this.#viaSession(this.#nft, op, file);
    else await this.#run(op, ['nft', '-f', file]);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

  async #viaSession(session: NftSession, op: string, file: string): Promise<void> {
  this.stats.started(performance.now());
  try {
    await session.runFile(file, op);
  } finally {
    this.stats.ended(performance.now(), false);
  }
}

  #nftDelete(lines: readonly string[]): Promise<void> {
    return deleteTolerant(lines, (l) => this.#nftApply('nft.delete', l));
  }
}

const batchable = (c: IpCommand) => c.args[0] !== '-6';

/**
 * `ip -j netns list` ([{name, id?}]) as the ids of named namespaces. A name without an id is a
 * namespace ctnet's namespace has no link into (nothing to match): left out.
 */
export function netnsIdsFromList(raw: readonly { readonly name?: unknown; readonly id?: unknown }[]): { nsid: number; name: string }[] {
  return raw.flatMap((x) => (typeof x.name === 'string' && typeof x.id === 'number' && Number.isInteger(x.id) && x.id >= 0 ? [{ nsid: x.id, name: x.name }] : []));
}
