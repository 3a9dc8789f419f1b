// Carries a plan out through the engine's use cases (the same ones the CLI commands call: there is
// no second way to change the kernel), in dependency order: repairs, removals, networks, sandboxes,
// their connections, labels and ports, commands, then every policy change in one nft transaction.
// Each use case is a transaction of its own; a failure part-way undoes what this apply did before
// it, newest first, and says what failed and what could not be undone.
import { setEgress } from '../engine/egress.ts';
import { shapeSandbox } from '../engine/shape.ts';
import { CtnetError } from '../errors.ts';
import type { Ctx } from '../engine/context.ts';
import { parseAddr } from '../model/cidr.ts';
import { repairNetns, repairNetwork } from '../engine/gc.ts';
import { createNetwork, removeNetwork, setNetworkMtu } from '../engine/network.ts';
import { ensureOverlayNetwork, removeOverlaySide } from '../engine/overlay-network.ts';
import { changePolicies, changeLabels, cutDeniedFlows } from '../engine/policy.ts';
import { startCommand, stopCommand } from '../engine/process.ts';
import { publish, unpublish } from '../engine/publish.ts';
import { connect, createSandbox, disconnect, moveDefaultRoute, removeSandbox } from '../engine/sandbox.ts';
import { createService, removeService } from '../engine/services.ts';
import { checkFlags, formatPublish, formatTarget } from '../model/service.ts';
import { restoreTables } from '../engine/tables.ts';
import { withLock } from '../store/lock.ts';
import type { OwnedKind } from '../store/store.ts';
import type { TopoNetwork, TopoSandbox, TopoService, Topology } from './model.ts';
import type { Action, Plan } from './plan.ts';

const PHASES: readonly Action['do'][] = [
  'repair.tables', 'repair.network', 'repair.netns',
  'service.remove', 'sandbox.remove', 'network.remove', 'network.replace', 'network.create', 'network.mtu',
  'sandbox.replace', 'sandbox.create', 'disconnect', 'connect', 'labels', 'ports', 'egress', 'route', 'shape', 'command', 'policy', 'service.create',
];

interface Undo {
  readonly what: string;
  readonly run?: () => Promise<void>;
}

/** Applies PLAN (computed for TOPO); returns a line per thing done. */
export async function applyPlan(ctx: Ctx, topo: Topology, plan: Plan): Promise<string[]> {
  const { store, applier } = ctx;
  const done: string[] = [];
  const journal: Undo[] = [];
  const own = (kind: OwnedKind, name: string) => applier.record({ kind: 'owner.set', row: { kind, name, topology: topo.name, file: topo.file } });
  const makeSandbox = async (s: TopoSandbox) => {
    await createSandbox(ctx, s.name, { networks: s.networks.map((a) => a.network), ips: s.networks.flatMap((a) => a.ips), mac: undefined, aliases: s.aliases, defaultRoute: s.defaultRoute },
      { mappings: s.ports, force: false }, Object.entries(s.labels).map(([key, value]) => ({ key, value })), s.egress, s.shape);
    own('sandbox', s.name);
    if (s.command) startCommand(ctx, s.name, s.command);
  };
  const actions = [...plan.actions].sort((a, b) => PHASES.indexOf(a.do) - PHASES.indexOf(b.do));
  let current = '';
  try {
    for (const a of actions) {
      switch (a.do) {
        case 'repair.tables':
          current = 'rewrite ctnet\'s nft tables';
          await restoreTables(ctx);
          await cutDeniedFlows(ctx); // flows begun while the tables were gone: end those they deny
          done.push('rewrote ctnet\'s nft tables from the store');
          break;
        case 'repair.network': {
          current = `repair network ${a.name}`;
          done.push(...await repairNetwork(ctx, store.network(a.name)!));
          break;
        }
        case 'repair.netns':
          current = `repair sandbox ${a.name}`;
          done.push(...await repairNetns(ctx, store.sandbox(a.name)!));
          break;
        case 'sandbox.remove':
          current = `remove sandbox ${a.name}`;
          await stopCommand(ctx, a.name);
          await removeSandbox(ctx, a.name);
          journal.push({ what: `removed sandbox ${a.name}` });
          done.push(`removed sandbox ${a.name}`);
          break;
        case 'network.remove':
          current = `remove network ${a.name}`;
          await removeNet(ctx, a.name, { force: true });
          journal.push({ what: `removed network ${a.name}` });
          done.push(`removed network ${a.name}`);
          break;
        case 'network.replace': {
          current = `replace network ${a.net.name}`;
          await removeNet(ctx, a.net.name, { force: true });
          journal.push({ what: `removed network ${a.net.name} (to replace it)` });
          await createNet(ctx, a.net);
          own('network', a.net.name);
          for (const s of a.reattach) {
            const sbx = topo.sandboxes.find((x) => x.name === s)!;
            const at = sbx.networks.find((x) => x.network === a.net.name)!;
            await connect(ctx, a.net.name, s, at.ips, false, sbx.aliases);
          }
          done.push(`replaced network ${a.net.name}${a.reattach.length ? ` and re-attached ${a.reattach.join(', ')}` : ''}`);
          break;
        }
        case 'network.create':
          current = `create network ${a.net.name}`;
          await createNet(ctx, a.net);
          own('network', a.net.name);
          journal.push({ what: `created network ${a.net.name}`, run: () => removeNet(ctx, a.net.name, { force: true }) });
          done.push(`created network ${a.net.name}`);
          break;
        case 'network.mtu':
          current = `change the MTU of network ${a.name}`;
          await setNetworkMtu(ctx, a.name, a.mtu);
          journal.push({ what: `changed the MTU of network ${a.name}`, run: () => setNetworkMtu(ctx, a.name, a.was) });
          done.push(`set the MTU of network ${a.name} to ${a.mtu ?? 'the default'}`);
          break;
        case 'sandbox.replace':
          current = `replace sandbox ${a.sbx.name}`;
          await stopCommand(ctx, a.sbx.name);
          await removeSandbox(ctx, a.sbx.name);
          journal.push({ what: `removed sandbox ${a.sbx.name} (to replace it)` });
          await makeSandbox(a.sbx);
          done.push(`replaced sandbox ${a.sbx.name}`);
          break;
        case 'sandbox.create':
          current = `create sandbox ${a.sbx.name}`;
          await makeSandbox(a.sbx);
          journal.push({ what: `created sandbox ${a.sbx.name}`, run: async () => { await stopCommand(ctx, a.sbx.name); await removeSandbox(ctx, a.sbx.name); } });
          done.push(`created sandbox ${a.sbx.name}`);
          break;
        case 'disconnect': {
          current = `disconnect ${a.sandbox} from ${a.network}`;
          if (!store.network(a.network)) break; // removed above (--prune) with its attachments
          const ips = store.addresses({ sandbox: a.sandbox }).filter((x) => x.network === a.network).map((x) => x.ip);
          await disconnect(ctx, a.network, a.sandbox);
          journal.push({ what: `disconnected ${a.sandbox} from ${a.network}`, run: () => connect(ctx, a.network, a.sandbox, ips.map((text) => ({ ...parseAddr('ip', text), text }))) });
          done.push(`disconnected ${a.sandbox} from ${a.network}`);
          break;
        }
        case 'connect':
          current = `connect ${a.sandbox} to ${a.attach.network}`;
          await connect(ctx, a.attach.network, a.sandbox, a.attach.ips, false, topo.sandboxes.find((x) => x.name === a.sandbox)?.aliases ?? []);
          journal.push({ what: `connected ${a.sandbox} to ${a.attach.network}`, run: () => disconnect(ctx, a.attach.network, a.sandbox) });
          done.push(`connected ${a.sandbox} to ${a.attach.network}`);
          break;
        case 'labels': {
          current = `change the labels of ${a.sandbox}`;
          const before = store.labels(a.sandbox);
          await changeLabels(ctx, a.sandbox, a.set, a.remove);
          const added = a.set.filter((l) => !before.some((b) => b.key === l.key)).map((l) => l.key);
          journal.push({ what: `changed the labels of ${a.sandbox}`, run: () => changeLabels(ctx, a.sandbox, before.filter((b) => a.remove.includes(b.key) || a.set.some((l) => l.key === b.key)), added) });
          done.push(`changed the labels of ${a.sandbox}`);
          break;
        }
        case 'ports':
          current = `change the published ports of ${a.sandbox}`;
          if (a.remove.length) await unpublish(ctx, a.sandbox, a.remove);
          if (a.add.length) {
            try {
              await publish(ctx, a.sandbox, { mappings: a.add, force: false });
            } catch (e) {
              if (a.remove.length) await publish(ctx, a.sandbox, { mappings: a.remove, force: true }).catch(() => undefined);
              throw e;
            }
          }
          journal.push({ what: `changed the published ports of ${a.sandbox}`, run: async () => {
            if (a.add.length) await unpublish(ctx, a.sandbox, a.add);
            if (a.remove.length) await publish(ctx, a.sandbox, { mappings: a.remove, force: true });
          } });
          done.push(`changed the published ports of ${a.sandbox}`);
          break;
        case 'egress':
          current = `change the egress address of ${a.scope} ${a.name}`;
          await setEgress(ctx, a.scope, a.name, a.egress);
          journal.push({ what: `changed the egress address of ${a.scope} ${a.name}`, run: () => setEgress(ctx, a.scope, a.name, a.was) });
          done.push(`${a.scope} ${a.name}: egress ${a.egress.length ? `from ${a.egress.map((e) => e.ip).join(', ')}` : 'masqueraded'}`);
          break;
        case 'route':
          current = `move the default route of ${a.sandbox} to ${a.network}`;
          await moveDefaultRoute(ctx, a.sandbox, a.network);
          journal.push({ what: `moved the default route of ${a.sandbox} to ${a.network}` });
          done.push(`${a.sandbox}: default route via ${a.network}`);
          break;
        case 'shape': {
          current = `shape ${a.sandbox}`;
          // Exactly the file's shaping: cleared first, since ctnet shape keeps settings it is not given.
          const put = async (s: typeof a.shape) => {
            await shapeSandbox(ctx, a.sandbox, undefined, 'clear');
            if (s) await shapeSandbox(ctx, a.sandbox, undefined, s);
          };
          await put(a.shape);
          journal.push({ what: `shaped ${a.sandbox}`, run: () => put(a.was) });
          done.push(`${a.sandbox}: ${a.shape ? 'shaped' : 'no longer shaped'}`);
          break;
        }
        case 'command':
          current = `${a.argv ? 'start' : 'stop'} the command of ${a.sandbox}`;
          if (!a.argv) {
            await stopCommand(ctx, a.sandbox);
            done.push(`stopped the command of ${a.sandbox}`);
            break;
          }
          await stopCommand(ctx, a.sandbox, { forget: false });
          startCommand(ctx, a.sandbox, a.argv);
          done.push(`started ${a.argv.join(' ')} in ${a.sandbox}`);
          break;
        case 'service.remove': {
          current = `remove service ${a.name}`;
          const was = store.service(a.name)!;
          await removeService(ctx, a.name);
          const back: TopoService = { name: was.name, network: was.network, port: `${was.port}/${was.proto}`,
            to: formatTarget(was.selector, was.targetPort), vip: was.vip, affinity: was.affinity, publish: was.publish, check: was.check, at: '' };
          // Put back with its VIP, unless its network went too (then nothing can hold it).
          journal.push({ what: `removed service ${a.name}`, run: async () => { if (store.network(back.network)) { await makeService(ctx, back); own('service', back.name); } } });
          done.push(`removed service ${a.name}`);
          break;
        }
        case 'service.create':
          current = `create service ${a.svc.name}`;
          await makeService(ctx, a.svc);
          own('service', a.svc.name);
          journal.push({ what: `created service ${a.svc.name}`, run: async () => { await removeService(ctx, a.svc.name); } });
          done.push(`created service ${a.svc.name} (VIP ${store.service(a.svc.name)?.vip ?? '?'})`);
          break;
        case 'policy': {
          current = 'change the policy rules';
          const rows = await changePolicies(ctx, a.remove, a.add.map((p) => ({ action: p.action, from: p.from, to: p.to, port: p.port ?? undefined, name: p.name })));
          for (const r of rows) own('policy', r.name);
          done.push(`policy: ${a.remove.length} rule(s) out, ${rows.length} in (one nft transaction)`);
          break;
        }
      }
    }
    // Objects the file already owned follow the file if it moved (never a change to the kernel).
    for (const o of store.owned({ topology: topo.name })) if (o.file !== topo.file) own(o.kind, o.name);
  } catch (e) {
    const failed: string[] = [];
    const lost: string[] = [];
    for (const u of journal.reverse()) {
      if (!u.run) { lost.push(u.what); continue; }
      try {
        await u.run();
      } catch (ue) {
        failed.push(`${u.what}: ${(ue as Error).message}`);
      }
    }
    const msg = (e as Error).message;
    const undone = journal.filter((u) => u.run).length - failed.length;
    throw new CtnetError(e instanceof CtnetError ? e.code : 'STATE',
      `apply failed at "${current}": ${msg}; undid ${undone} earlier change(s) of this apply${lost.length ? `; cannot undo: ${lost.join(', ')}` : ''}${failed.length ? `; undo failed: ${failed.join('; ')}` : ''}`,
      e instanceof CtnetError ? e.hint : undefined, { cause: e });
  }
  return done;
}

/**
 * Runs fn (a plan and its apply, or a down) holding the state directory's topology lock: two applies
 * at once would plan from the same store and the later one trip over what the first made. The
 * second waits (up to 10 minutes: a large apply on a busy host takes minutes), then plans from what
 * the first left.
 */
export function withTopologyLock<T>(ctx: Ctx, fn: () => Promise<T>): Promise<T> {
  return withLock(ctx.store.dir, 'topology', fn, 600_000);
}

const makeService = (ctx: Ctx, v: TopoService) => createService(ctx, {
  name: v.name, network: v.network, port: v.port, to: v.to, vip: v.vip, affinity: v.affinity,
  publish: v.publish && formatPublish(v.publish), ...(v.check && checkFlags(v.check)),
});

/** A network as the file says: an overlay is defined in the cluster (or joined) and gets this host's side. */
async function createNet(ctx: Ctx, net: TopoNetwork): Promise<void> {
  if (!net.overlay) {
    await createNetwork(ctx, net.spec);
    return;
  }
  const o = net.overlay;
  await ensureOverlayNetwork(ctx, {
    name: net.name, subnet: o.subnet, hostPrefix: String(o.hostPrefix), vni: o.vni === undefined ? undefined : String(o.vni), port: String(o.port),
    internal: o.internal, isolate: o.isolate, hostAccess: net.spec.hostAccess, mtu: net.spec.mtu === undefined ? undefined : String(net.spec.mtu),
    dns: net.spec.dns ? 'on' : 'off', dnsForward: net.spec.dnsForward.length ? net.spec.dnsForward.join(',') : undefined,
  });
}

/** Removes a network; an overlay's side gives its lease back (and the definition goes with the last host's). */
async function removeNet(ctx: Ctx, name: string, options: { force: boolean }): Promise<void> {
  if (ctx.store.network(name)?.driver === 'vxlan') await removeOverlaySide(ctx, name, options);
  else await removeNetwork(ctx, name, options);
}

/**
 * Removes exactly what the topology owns: its rules (one transaction), its sandboxes (their commands
 * first), its networks. Refuses, changing nothing, if a sandbox it does not own is on one of its networks.
 */
export async function downTopology(ctx: Ctx, topology: string): Promise<string[]> {
  const { store } = ctx;
  const owned = store.owned({ topology });
  const sbx = new Set(owned.filter((o) => o.kind === 'sandbox').map((o) => o.name));
  const nets = owned.filter((o) => o.kind === 'network' && store.network(o.name)).map((o) => o.name);
  for (const n of nets) {
    const foreign = store.attachments({ network: n }).map((a) => a.sandbox).filter((s) => !sbx.has(s));
    if (foreign.length) {
      throw new CtnetError('IN_USE', `network ${n} of ${topology} is in use by sandboxes it does not own: ${foreign.join(', ')}`, `disconnect them (ctnet disconnect ${n} NAME), then run down again`);
    }
    const services = store.services({ network: n }).map((v) => v.name).filter((v) => !owned.some((o) => o.kind === 'service' && o.name === v));
    if (services.length) {
      throw new CtnetError('IN_USE', `network ${n} of ${topology} carries services it does not own: ${services.join(', ')}`, `remove them (ctnet service rm ${services.join(' ')}), then run down again`);
    }
  }
  const done: string[] = [];
  for (const o of owned.filter((x) => x.kind === 'service' && store.service(x.name))) {
    await removeService(ctx, o.name);
    done.push(`removed service ${o.name}`);
  }
  const rules = store.policies().filter((p) => owned.some((o) => o.kind === 'policy' && o.name === p.name));
  if (rules.length) {
    await changePolicies(ctx, rules, []);
    done.push(`removed policy ${rules.map((r) => r.name).join(', ')}`);
  }
  for (const s of sbx) {
    if (!store.sandbox(s)) continue;
    await stopCommand(ctx, s);
    await removeSandbox(ctx, s);
    done.push(`removed sandbox ${s}`);
  }
  for (const n of nets) {
    await removeNet(ctx, n, { force: false });
    done.push(`removed network ${n}`);
  }
  return done;
}
