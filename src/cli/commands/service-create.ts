import { createService } from '../../engine/services.ts';
import { formatPublish } from '../../model/service.ts';
import { defineCommand } from '../command.ts';

export default defineCommand({
  name: 'service create',
  summary: 'a virtual address on a network, balanced by the kernel over the sandboxes a label selects (docs/services.md)',
  args: ['<name>'],
  options: [
    { flags: '--network <name>', description: 'the network whose subnet the VIP comes from', required: true },
    { flags: '--port <port>', description: 'the service port: PORT, PORT/tcp or PORT/udp', required: true },
    { flags: '--to <selector>', description: 'the backends: label:KEY=VALUE[:TARGET_PORT] (the target port defaults to --port)', required: true },
    { flags: '--vip <ip>', description: 'the virtual address (default: the next free address of the network); on a dual-stack network the service has one of each family: give one or both', repeatable: true },
    { flags: '--affinity <mode>', description: 'client-ip: a client always lands on the same backend (while the backends stay the same)' },
    { flags: '--check <check>', description: 'tcp or http:PATH: ctnetd probes each backend; 2 failures in a row take it out, 1 pass puts it back; a new backend is in after its first pass' },
    { flags: '--check-interval <duration>', description: 'how often --check probes (500ms, 2s, 1m; default 2s)' },
    { flags: '--publish <[host_ip:]host_port>', description: 'the world reaches the service on this host port (every IPv4 address of the host, or HOST_IP), balanced the same way; backends see the real client' },
  ],
  json: true,
  async run({ ctx, args, opts, io }) {
    const s = await createService(ctx, { name: args.name, network: opts.network, port: opts.port, to: opts.to, vip: opts.vip, affinity: opts.affinity, publish: opts.publish,
      check: opts.check, checkInterval: opts.checkInterval });
    if (io.json) return io.out(JSON.stringify(s, null, 2));
    if (!io.quiet) io.out(`${s.name} ${s.vip}${s.vip6 ? ` [${s.vip6}]` : ''}:${s.port}/${s.proto}${s.publish ? `, published on ${formatPublish(s.publish)}` : ''} (${s.backends.length} backends)`);
  },
});
