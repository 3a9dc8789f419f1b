// Makes a network podman's tests create with `podman network create` a ctnet network too, for
// test/lab/podman-bats.test.ts. The PODMAN wrapper runs it after podman, inside the lab host:
//   podman-networks.ts NAME
// podman wrote CONF_DIR/NAME.conflist (bridge, portmap, firewall, tuning, and dnsname when
// installed): make a ctnet network NAME with the same subnets, and replace the conflist by ctnet's
// followed by podman's dnsname entry, if any (podman's DNS server for the network, chained after
// ctnet as it was after bridge). Prints NAME when it did. (The wrapper removes the ctnet network
// when podman removed the conflist.)
// Environment: CONF_DIR (podman's network_config_dir), TEMPLATE (the network whose conflist
// `ctnet cni install` wrote there), CTNET (the ctnet executable), CTNET_STATE_DIR (the lab's).
import { execFileSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

interface Plugin {
  type: string;
  ipam?: { ranges?: { subnet: string; gateway?: string }[][] };
  [k: string]: unknown;
}

const env = (k: string): string => {
  const v = process.env[k];
  if (!v) throw new Error(`podman-networks.ts: ${k} is not set`);
  return v;
};
const ctnet = (args: string[]): string => execFileSync(env('CTNET'), args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] });

const [name] = process.argv.slice(2);
if (!name) {
  process.stderr.write('usage: podman-networks.ts NAME\n');
  process.exit(2);
}
const confDir = env('CONF_DIR');
const file = join(confDir, `${name}.conflist`);
const list = JSON.parse(readFileSync(file, 'utf8')) as { cniVersion: string; plugins: Plugin[] };
const bridge = list.plugins.find((p) => p.type === 'bridge');
if (bridge) { // macvlan, ipvlan: not a bridge network, left to podman
  const ranges = (bridge.ipam?.ranges ?? []).flat();
  // --dns off: podman's DNS server for its networks is the dnsname plugin (dnsmasq on the gateway),
  // kept below, as before ctnet served DNS; two servers cannot share the gateway's port 53.
  ctnet(['network', 'create', name, '--dns', 'off', ...ranges.flatMap((r) => ['--subnet', r.subnet])]);
  // What `ctnet cni install --network NAME` writes, made from the default network's conflist (one
  // ctnet start fewer per network: they are slow on a loaded machine).
  const template = JSON.parse(readFileSync(join(confDir, `${env('TEMPLATE')}.conflist`), 'utf8')) as { plugins: Plugin[] };
  const plugin = { ...template.plugins[0]!, network: name };
  writeFileSync(file, JSON.stringify({ cniVersion: list.cniVersion, name, plugins: [plugin, ...list.plugins.filter((p) => p.type === 'dnsname')] }, null, 2));
  process.stdout.write(`${name}\n`);
}
