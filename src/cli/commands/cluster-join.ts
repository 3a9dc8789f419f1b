import { hostname } from 'node:os';
import { joinCluster, parseJoinSpec, DEFAULT_LEASE_TTL } from '../../engine/cluster.ts';
import { daemonPid } from '../../daemon/server.ts';
import { startDaemon } from '../../daemon/spawn.ts';
import { defineCommand } from '../command.ts';

export default defineCommand({
  name: 'cluster join',
  summary: 'make this host a member of a cluster whose shared state is in etcd (docs/overlay.md)',
  options: [
    { flags: '--etcd <urls>', description: 'etcd client URLs, comma-separated (http://HOST:2379,...)', required: true },
    { flags: '--underlay <ip|ifname>', description: 'the address (or interface) that carries the overlay (default: the default route\'s)' },
    { flags: '--host-name <name>', description: 'this host\'s name in the cluster (default: the hostname)' },
    { flags: '--lease-ttl <seconds>', description: `how long the host stays listed after its ctnetd stops renewing (default ${DEFAULT_LEASE_TTL})` },
  ],
  async run({ ctx, opts, io }) {
    const spec = parseJoinSpec({ etcd: opts.etcd, underlay: opts.underlay, hostName: opts.hostName, leaseTtl: opts.leaseTtl }, hostname());
    const m = await joinCluster(ctx, spec);
    // ctnetd renews the lease; without it the host drops out after the TTL.
    let pid = daemonPid(io.stateDir);
    const started = pid === undefined;
    if (started) pid = startDaemon(io.stateDir);
    io.out(`joined the cluster at ${m.endpoints.join(',')} as ${m.host} (underlay ${m.underlay}, VTEP MAC ${m.vtepMac}, lease TTL ${m.leaseTtl} s)`);
    io.warn(started
      ? `started ctnetd (pid ${pid}): it keeps this host's etcd lease alive and must keep running (e.g. as a service)`
      : `ctnetd (pid ${pid}) keeps this host's etcd lease alive`);
  },
});
