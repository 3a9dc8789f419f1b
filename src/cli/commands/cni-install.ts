import { installCni } from '../../cni/install.ts';
import { parseName } from '../../model/names.ts';
import { defineCommand } from '../command.ts';

export default defineCommand({
  name: 'cni install',
  summary: 'install the ctnet CNI plugin, and a .conflist for a ctnet network',
  options: [
    { flags: '--bin-dir <dir>', description: 'CNI plugin directory', default: '/opt/cni/bin' },
    { flags: '--conf-dir <dir>', description: 'CNI configuration directory', default: '/etc/cni/net.d' },
    { flags: '--network <name>', description: 'write CONF_DIR/NAME.conflist for this ctnet network' },
    { flags: '--cni-version <v>', description: 'cniVersion of the conflist (podman 4.3 and containerd 1.6 need 1.0.0 at most)', default: '1.0.0' },
  ],
  async run({ ctx, opts: o, io }) {
    if (o.network !== undefined) parseName('network', o.network);
    for (const f of installCni(ctx.store, { binDir: o.binDir, confDir: o.confDir, network: o.network, cniVersion: o.cniVersion })) io.out(f);
  },
});
