// Operations as the equivalent shell commands: what --explain and --dry-run print, and (for the
// iproute2 ones) the very argv the exec backend runs. Pure.
import { netnsPath, type Netns } from '../model/netns.ts';
import type { DirShape } from '../model/shape.ts';
import { describeFilter } from './flows.ts';
import { resolvedArgvs, resolvText, type Op } from './ops.ts';

// Renders argv as a line a POSIX shell would run unchanged.
const SAFE = /^[A-Za-z0-9_@%+=:,./-]+$/;

export function quote(arg: string): string {
  return arg !== '' && SAFE.test(arg) ? arg : `'${arg.replaceAll("'", `'\\''`)}'`;
}

export function shellLine(argv: readonly string[]): string {
  return argv.map(quote).join(' ');
}

/** An iproute2 command: its arguments, and the namespace it runs in (undefined: ctnet's own). */
export interface IpCommand {
  readonly netns?: Netns | undefined;
  readonly args: readonly string[];
}

const mtuArgs = (mtu: number | undefined) => (mtu ? ['mtu', String(mtu)] : []);
const v6 = (addr: string) => (addr.includes(':') ? ['-6'] : []);

/** The iproute2 command of an operation, or undefined for one that is not an `ip` command. */
export function ipCommand(op: Op): IpCommand | undefined {
  switch (op.kind) {
    case 'netns.add': return { args: ['netns', 'add', op.name] };
    case 'netns.del': return { args: ['netns', 'del', op.name] };
    case 'link.add.bridge':
      return { args: ['link', 'add', op.name, 'address', op.mac, ...mtuArgs(op.mtu), 'type', 'bridge'] };
    case 'link.add.veth':
      return {
        netns: op.netns,
        args: ['link', 'add', op.name, ...mtuArgs(op.mtu), 'type', 'veth', 'peer', 'name', op.peer, ...mtuArgs(op.mtu),
          ...(op.peerMac ? ['address', op.peerMac] : []), 'netns', 'name' in op.peerNetns ? op.peerNetns.name : op.peerNetns.path],
      };
    case 'link.add.vxlan':
      return {
        args: ['link', 'add', op.name, 'address', op.mac, ...mtuArgs(op.mtu), 'type', 'vxlan', 'id', String(op.vni), 'local', op.local, 'dev', op.dev,
          'dstport', String(op.port), 'nolearning'],
      };
    // Made in ctnet's namespace (where the parent is), moved at once into the sandbox's.
    case 'link.add.lower':
      return {
        args: ['link', 'add', 'link', op.parent, 'name', op.name, ...(op.netns ? ['netns', 'name' in op.netns ? op.netns.name : op.netns.path] : []),
          ...(op.mac ? ['address', op.mac] : []), ...mtuArgs(op.mtu), 'type', op.type, 'mode', op.mode],
      };
    // Made up: packets redirected to a down ifb are dropped.
    case 'link.add.ifb': return { args: ['link', 'add', op.name, 'up', 'type', 'ifb'] };
    case 'link.del': return { netns: op.netns, args: ['link', 'del', op.name] };
    case 'link.set.master': return { args: ['link', 'set', op.name, 'master', op.master] };
    // Lets the bridge send a frame back out of the port it came in on: with br_netfilter, a sandbox
    // reaching its own published port through the host's address is DNATed inside the bridge.
    case 'link.set.hairpin': return { args: ['link', 'set', op.name, 'type', 'bridge_slave', 'hairpin', 'on'] };
    case 'link.set.up': return { netns: op.netns, args: ['link', 'set', op.name, 'up'] };
    case 'link.set.mtu': return { netns: op.netns, args: ['link', 'set', op.name, 'mtu', String(op.mtu)] };
    // IPv4 gets its subnet's broadcast address (brd +), as the bridge plugin and Docker set it.
    case 'addr.add': return { netns: op.netns, args: ['addr', 'add', op.cidr, ...(op.cidr.includes(':') ? [] : ['brd', '+']), 'dev', op.dev, ...(op.cidr.includes(':') ? ['nodad'] : [])] };
    case 'addr.del': return { netns: op.netns, args: ['addr', 'del', op.cidr, 'dev', op.dev] };
    // replace: a network with a way out takes the default over from an --internal one.
    case 'route.replace.default': return { netns: op.netns, args: [...v6(op.via), 'route', 'replace', 'default', 'via', op.via, 'dev', op.dev] };
    case 'route.del.default': return { netns: op.netns, args: [...v6(op.via), 'route', 'del', 'default', 'via', op.via, 'dev', op.dev] };
    // permanent: never aged out or probed; the control plane is its only writer.
    case 'neigh.replace': return { args: ['neigh', 'replace', op.addr, 'lladdr', op.lladdr, 'dev', op.dev, 'nud', 'permanent'] };
    case 'neigh.del': return { args: ['neigh', 'del', op.addr, 'dev', op.dev] };
    // onlink: the gateway is a peer's VTEP address, reached through the device without a connected route.
    case 'route.replace': return { args: ['route', 'replace', op.dst, 'via', op.via, 'dev', op.dev, ...(op.onlink ? ['onlink'] : [])] };
    case 'route.del': return { args: ['route', 'del', op.dst, 'via', op.via, 'dev', op.dev] };
    default: return undefined;
  }
}

/** The `bridge` (iproute2) command of an operation, or undefined for one that is not one. */
export function bridgeCommand(op: Op): readonly string[] | undefined {
  switch (op.kind) {
    // self: the entry is the VXLAN device's own (its VTEP table), not a bridge master's.
    case 'fdb.replace': return ['fdb', 'replace', op.mac, 'dev', op.dev, 'dst', op.dst, 'self', 'permanent'];
    case 'fdb.del': return ['fdb', 'del', op.mac, 'dev', op.dev, 'dst', op.dst, 'self'];
    default: return undefined;
  }
}

/** Queueing the shaper may do: 100 ms at the rate (beyond that, drop: TCP learns the rate from it). */
const QUEUE_MS = 100;

/** netem's queue in packets: the delay plus QUEUE_MS at the rate (line rate taken as 10 Gbit/s), at least 1000. */
export function netemLimit(d: DirShape): number {
  const bytes = ((d.rate ?? 10e9) / 8) * ((d.delayMs ?? 0) + QUEUE_MS) / 1000;
  return Math.min(1_000_000, Math.max(1000, Math.ceil(bytes / 1500)));
}

function netemArgs(d: DirShape): string[] {
  return ['netem', ...(d.delayMs !== undefined ? ['delay', `${d.delayMs}ms`] : []), ...(d.lossPct !== undefined ? ['loss', `${d.lossPct}%`] : []), 'limit', String(netemLimit(d))];
}

/** The `tc` commands (without the leading `tc`) of an operation, or undefined for one that is not one. */
export function tcCommands(op: Op): string[][] | undefined {
  switch (op.kind) {
    case 'qdisc.shape': {
      const d = op.shape;
      if (d.rate === undefined) return [['qdisc', 'replace', 'dev', op.dev, 'root', 'handle', '1:', ...netemArgs(d)]];
      const burst = d.burst ?? 16384;
      return [
        // latency bounds tbf's own queue; its child below replaces that queue with a fixed one, so
        // a change from delay to none leaves no netem behind.
        ['qdisc', 'replace', 'dev', op.dev, 'root', 'handle', '1:', 'tbf', 'rate', `${d.rate}bit`, 'burst', String(burst), 'latency', `${QUEUE_MS}ms`],
        d.delayMs !== undefined || d.lossPct !== undefined
          ? ['qdisc', 'replace', 'dev', op.dev, 'parent', '1:1', 'handle', '10:', ...netemArgs(d)]
          : ['qdisc', 'replace', 'dev', op.dev, 'parent', '1:1', 'handle', '10:', 'bfifo', 'limit', String(Math.max(2 * burst, Math.ceil(d.rate / 8 * QUEUE_MS / 1000)))],
      ];
    }
    case 'qdisc.del': return [['qdisc', 'del', 'dev', op.dev, op.parent]];
    // u32 matching zero bits of the first word is "every packet" (cls_matchall is not in every kernel).
    case 'filter.redirect':
      return [
        ['qdisc', 'replace', 'dev', op.dev, 'handle', 'ffff:', 'ingress'],
        ['filter', 'replace', 'dev', op.dev, 'parent', 'ffff:', 'protocol', 'all', 'prio', '1', 'handle', '800::800', 'u32', 'match', 'u32', '0', '0',
          'action', 'mirred', 'egress', 'redirect', 'dev', op.to],
      ];
    default: return undefined;
  }
}

/** argv that runs `ip ARGS...` in ns. `ip -n` takes only names, so other paths go through nsenter. */
export function ipArgv(ns: Netns | undefined, args: readonly string[]): string[] {
  if (!ns) return ['ip', ...args];
  if ('name' in ns) return ['ip', '-n', ns.name, ...args];
  return ['nsenter', `--net=${ns.path}`, 'ip', ...args];
}

/** argv of `nsenter --net=NS -- CMD ARGS`. */
export function nsenterArgv(ns: Netns, cmd: readonly string[]): string[] {
  return ['nsenter', `--net=${netnsPath(ns)}`, '--', ...cmd];
}

/** A heredoc that feeds an nft script to `nft -f -`, as a person would paste it. */
export const nftLine = (lines: readonly string[]) => `nft -f - <<'EOF'\n${lines.join('\n')}\nEOF`;

/** The iptables commands of a forward.accept (verb -I) or forward.unaccept (verb -D). */
export function forwardArgvs(verb: '-I' | '-D', t: { family: 4 | 6; legacy: boolean }, bridge: string): string[][] {
  const tool = `${t.family === 4 ? 'iptables' : 'ip6tables'}${t.legacy ? '-legacy' : ''}`;
  return (['-i', '-o'] as const).map((dir) => [tool, '-w', verb, 'FORWARD', dir, bridge, '-m', 'comment', '--comment', 'ctnet', '-j', 'ACCEPT']);
}

/** The shell lines equivalent to one operation. */
export function renderOp(op: Op): string[] {
  const ip = ipCommand(op);
  if (ip) return [shellLine(ipArgv(ip.netns, ip.args))];
  const bridge = bridgeCommand(op);
  if (bridge) return [shellLine(['bridge', ...bridge])];
  const tc = tcCommands(op);
  if (tc) return tc.map((c) => shellLine(['tc', ...c]));
  switch (op.kind) {
    case 'netns.kill': return [`ip netns pids ${quote('name' in op.netns ? op.netns.name : op.netns.path)} | xargs -r kill -KILL`];
    case 'sysctl.set': return [`sysctl ${op.ifExists ? '-e ' : ''}-w ${op.key}=${op.value}`];
    case 'nft': return [nftLine(op.lines)];
    case 'nft.delete': return [nftLine(op.lines)];
    case 'conntrack.forget': return [`# conntrack -D: ${describeFilter(op.filter)}`];
    case 'conntrack.drain': return [`# wait up to ${op.timeoutMs / 1000} s for open connections to finish: ${describeFilter(op.filter)}`];
    case 'forward.accept': return forwardArgvs('-I', op.target, op.bridge).map(shellLine);
    case 'forward.unaccept': return forwardArgvs('-D', op.target, op.bridge).map(shellLine);
    case 'resolv.write': return [`mkdir -p /etc/netns/${quote(op.netns)} && cat >/etc/netns/${quote(op.netns)}/resolv.conf <<'EOF'\n${resolvText(op.nameservers, op.search)}EOF`];
    case 'resolv.remove': return [`rm -f /etc/netns/${quote(op.netns)}/resolv.conf && rmdir --ignore-fail-on-non-empty /etc/netns/${quote(op.netns)}`];
    case 'resolved.link': return resolvedArgvs(op).map((argv) => argv.map(quote).join(' '));
    case 'resolved.revert': return [`resolvectl revert ${quote(op.dev)}`];
    default: throw new Error(`no rendering for ${op.kind}`);
  }
}
