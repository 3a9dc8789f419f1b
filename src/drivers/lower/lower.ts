// The macvlan and ipvlan drivers: sandboxes sit directly on a host interface's segment (the parent),
// each with its own address from ctnet's IPAM (macvlan: its own MAC too; ipvlan shares the parent's).
// No bridge, no veth, no NAT: the segment's router is the gateway, and a sandbox's packets leave
// through the parent without passing this host's routing or netfilter (so ctnet's policy, isolation
// and published ports do not apply to them).
//
// The kernel never passes frames between a macvlan/ipvlan parent and its children: the host cannot
// reach its own sandboxes through the parent. --host-shim gives the host a macvlan/ipvlan of its own
// on the parent (the network's device, ctmv-NAME) with an address of the subnet, whose connected
// route takes the subnet: host <-> sandbox then goes child to child, as Docker users do by hand.
// Pure but for observe().
import { CtnetError } from '../../errors.ts';
import type { KernelBackend } from '../../kernel/backend.ts';
import type { Op } from '../../plan/ops.ts';
import { step, type Step } from '../../plan/plan.ts';
import { normalise } from '../bridge/bridge.ts';
import { overlaps, parseSubnet } from '../../model/cidr.ts';
import type { DriverNetwork, Drift, HostView, NetworkDriver } from '../driver.ts';

const prefixOf = (cidr: string) => cidr.split('/')[1];

function lowerOf(n: DriverNetwork) {
  if (!n.lower) throw new Error(`network ${n.name} has no recorded parent`);
  return n.lower;
}

/** Equivalent to: ip link add link PARENT name SHIM type macvlan mode bridge; ip addr add SHIM_IP/LEN dev SHIM; ip link set SHIM up */
function shimOps(n: DriverNetwork): Op[] {
  const l = lowerOf(n);
  if (!l.shimIp) return [];
  const s = n.subnets[0]!;
  // macvlan: bridge mode, the one in which children of one parent reach each other directly.
  const mode = l.kind === 'macvlan' ? 'bridge' : l.mode;
  return [
    { kind: 'link.add.lower', type: l.kind, name: n.device, parent: l.parent, mode, mac: l.kind === 'macvlan' ? n.mac ?? undefined : undefined },
    { kind: 'addr.add', cidr: `${l.shimIp}/${prefixOf(s.cidr)}`, dev: n.device },
    { kind: 'link.set.up', name: n.device },
  ];
}

export function lowerDriver(kind: 'macvlan' | 'ipvlan'): NetworkDriver {
  return {
    name: kind,

    validate(n: DriverNetwork, host: HostView): void {
      const l = lowerOf(n);
      if (!host.interfaces.has(l.parent)) {
        throw new CtnetError('NOT_FOUND', `no interface named ${l.parent} on this host`, 'give the interface whose segment the sandboxes join (ip link)');
      }
      if (host.bridges?.has(l.parent)) {
        throw new CtnetError('CONFLICT', `${l.parent} is the bridge of a ctnet network`, `a ${kind} parent is a host interface on a real segment; attach sandboxes to that network with --network instead`);
      }
      if (host.interfaces.has(n.device) && l.shimIp) {
        throw new CtnetError('CONFLICT', `an interface named ${n.device} exists already`, 'choose another network name');
      }
      // The parent's own segment may be routed through it (the host's LAN address); anything else is a conflict.
      for (const s of n.subnets) {
        for (const r of host.routes) {
          if (r.via === l.parent) continue;
          let routed;
          try {
            routed = parseSubnet('route', normalise(r.dst));
          } catch {
            continue;
          }
          if (overlaps(parseSubnet('subnet', s.cidr), routed)) {
            throw new CtnetError('CONFLICT', `subnet ${s.cidr} overlaps ${r.dst}, routed via ${r.via} on this host`, `choose the subnet of ${l.parent}'s segment`);
          }
        }
      }
    },

    planCreate(n: DriverNetwork): Step[] {
      const l = lowerOf(n);
      return [step(shimOps(n), `network ${n.name}: ${kind} (mode ${l.mode}) on ${l.parent}, ${n.subnets.map((s) => `${s.cidr} (gateway ${s.gateway})`).join(', ')}${l.shimIp ? `; host shim ${n.device} ${l.shimIp}` : ''}`)];
    },

    planAttach(n, a): Step[] {
      const l = lowerOf(n);
      return [
        step([
          { kind: 'link.add.lower', type: kind, name: a.ifname, parent: l.parent, mode: l.mode, netns: a.netns, mac: kind === 'macvlan' ? a.mac : undefined, mtu: n.mtu ?? undefined },
          ...a.addresses.map((x): Op => ({ kind: 'addr.add', cidr: `${x.ip}/${prefixOf(x.cidr)}`, dev: a.ifname, netns: a.netns })),
          { kind: 'link.set.up', name: a.ifname, netns: a.netns },
          ...a.defaults.map((d): Op => ({ kind: 'route.replace.default', via: d.via, dev: a.ifname, netns: a.netns, previous: d.previous })),
        ], `${a.sandbox}: ${a.ifname} (${kind} on ${l.parent}) on network ${n.name} (${a.addresses.map((x) => x.ip).join(', ')})`),
      ];
    },

    planDetach(n, a): Step[] {
      // The interface lives only in the sandbox's namespace (it goes with a namespace ctnet removes).
      return a.netns ? [step([{ kind: 'link.del', name: a.ifname, netns: a.netns }], `${a.sandbox}: remove ${a.ifname} from network ${n.name}`)] : [];
    },

    planRemove(n): Step[] {
      return n.lower?.shimIp ? [step([{ kind: 'link.del', name: n.device }], `remove network ${n.name}: host shim ${n.device}`)] : [];
    },

    planRepair(n, drift): Step[] {
      if (drift.kind === 'device-missing') return [step(shimOps(n), `recreate host shim ${n.device} of network ${n.name}`)];
      return [];
    },

    async observe(kernel: KernelBackend, n: DriverNetwork): Promise<Drift[]> {
      if (!n.lower?.shimIp) return [];
      return (await kernel.link(n.device)) ? [] : [{ kind: 'device-missing' }];
    },
  };
}

export const macvlanDriver = lowerDriver('macvlan');
export const ipvlanDriver = lowerDriver('ipvlan');
