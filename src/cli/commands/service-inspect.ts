import { listServices } from '../../engine/services.ts';
import { parseName } from '../../model/names.ts';
import { formatCheck, formatPublish } from '../../model/service.ts';
import { defineCommand } from '../command.ts';

export default defineCommand({
  name: 'service inspect',
  summary: 'one service: its VIP, selector, backends and the connections it balanced',
  args: ['<name>'],
  json: true,
  async run({ ctx, args, io }) {
    const [s] = await listServices(ctx, parseName('service', args.name));
    if (io.json) return io.out(JSON.stringify(s, null, 2));
    io.out([
      `service ${s!.name}  (network ${s!.network})`,
      ...(s!.host ? [`  host         ${s!.host}${s!.ownerHost ? ' (removed there)' : ' (this host; every member of the cluster balances it)'}`] : []),
      `  vip          ${s!.vip}:${s!.port}/${s!.proto}`,
      ...(s!.vip6 ? [`  vip6         [${s!.vip6}]:${s!.port}/${s!.proto}`] : []),
      `  to           ${s!.to}`,
      `  affinity     ${s!.affinity}`,
      `  published    ${s!.publish ? `${formatPublish(s!.publish)}/${s!.proto}` : 'no'}`,
      `  backends     ${s!.backends.join(' ') || 'none (clients are refused)'}`,
      `  not ready    ${s!.notReady.join(' ') || '-'}`,
      `  check        ${s!.check ? formatCheck(s!.check) : 'none'}`,
      `  connections  ${s!.connections}`,
      `  created      ${s!.created}`,
    ].join('\n'));
  },
});
