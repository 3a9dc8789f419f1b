// Lab scaffolding, not a ctnet command: until the control plane (etcd, ctnetd's watch) hands a host
// its overlay network and peers, tests and bench/overlay.ts hand them over by running this inside a
// lab host (nsenter --net, CTNET_STATE_DIR set), through the very engine functions the control
// plane calls: createNetwork with an overlay, syncPeers, peerStatus. Prints JSON on stdout.
//   overlay-agent.ts create NAME LEASE OVERLAY_JSON   (OVERLAY_JSON: an OverlaySpec)
//   overlay-agent.ts peers NAME PEERS_JSON            (PEERS_JSON: Peer[]; this host may be listed)
//   overlay-agent.ts status NAME
//   overlay-agent.ts vtep NAME                        (this host's own record: what it would publish)
import { createCtx } from '../engine/context.ts';
import { createNetwork, type OverlaySpec } from '../engine/network.ts';
import { peerStatus, syncPeers } from '../engine/overlay.ts';
import { CtnetError } from '../errors.ts';
import { parsePeer, type Peer } from '../model/overlay.ts';
import { parseNetworkSpec } from '../model/spec.ts';
import { Store } from '../store/store.ts';

const [cmd, name, ...rest] = process.argv.slice(2);
const dir = process.env.CTNET_STATE_DIR;
if (!dir || !cmd || !name) {
  process.stderr.write('usage: CTNET_STATE_DIR=DIR overlay-agent.ts create|peers|status|vtep NAME ...\n');
  process.exit(2);
}
const store = new Store(dir);
const ctx = createCtx({ store, warn: (m) => void process.stderr.write(`overlay-agent: ${m}\n`) });
try {
  let result: unknown;
  switch (cmd) {
    case 'create': {
      const n = await createNetwork(ctx, parseNetworkSpec({ name, subnet: [rest[0]!] }), JSON.parse(rest[1]!) as OverlaySpec);
      result = { network: n.name, bridge: n.bridge, mtu: n.mtu };
      break;
    }
    case 'peers':
      result = await syncPeers(ctx, name, (JSON.parse(rest[0]!) as Peer[]).map(parsePeer));
      break;
    case 'status':
      result = await peerStatus(ctx, name);
      break;
    case 'vtep': {
      const o = store.overlay(name);
      const lease = store.subnets(name).find((s) => s.family === 4);
      if (!o || !lease) throw new CtnetError('NOT_FOUND', `no overlay network ${name}`);
      result = { subnet: lease.cidr, underlay: o.underlayIp, vtepMac: o.vtepMac, device: o.device };
      break;
    }
    default:
      throw new Error(`unknown command ${cmd}`);
  }
  process.stdout.write(`${JSON.stringify(result)}\n`);
} catch (e) {
  process.stderr.write(`overlay-agent: ${(e as Error).message}${e instanceof CtnetError && e.hint ? ` (${e.hint})` : ''}\n`);
  process.exitCode = 1;
} finally {
  store.close();
}
