// Every ctnet command, in the order `ctnet --help` lists them. A parent word that is not a command
// itself ('network', 'policy', 'cni') is a group with its help line here.
import type { CommandModule } from '../command.ts';
import networkCreate from './network-create.ts';
import networkLs from './network-ls.ts';
import networkInspect from './network-inspect.ts';
import networkRm from './network-rm.ts';
import networkUpdate from './network-update.ts';
import update from './update.ts';
import route from './route.ts';
import graph from './graph.ts';
import trace from './trace.ts';
import ui from './ui.ts';
import create from './create.ts';
import run from './run.ts';
import exec from './exec.ts';
import connect from './connect.ts';
import disconnect from './disconnect.ts';
import ls from './ls.ts';
import inspect from './inspect.ts';
import rm from './rm.ts';
import port from './port.ts';
import portAdd from './port-add.ts';
import portRm from './port-rm.ts';
import label from './label.ts';
import shape from './shape.ts';
import { policyRule } from './policy-rule.ts';
import policyApply from './policy-apply.ts';
import policyLs from './policy-ls.ts';
import policyRm from './policy-rm.ts';
import policyCheck from './policy-check.ts';
import serviceCreate from './service-create.ts';
import serviceLs from './service-ls.ts';
import serviceInspect from './service-inspect.ts';
import serviceRm from './service-rm.ts';
import gc from './gc.ts';
import doctor from './doctor.ts';
import cniInstall from './cni-install.ts';
import cniExec from './cni-exec.ts';
import daemon from './daemon.ts';
import daemonStop from './daemon-stop.ts';
import daemonEvents from './daemon-events.ts';
import daemonStatus from './daemon-status.ts';
import clusterJoin from './cluster-join.ts';
import clusterLs from './cluster-ls.ts';
import clusterLeave from './cluster-leave.ts';
import apply from './apply.ts';
import diff from './diff.ts';
import down from './down.ts';
import demo from './demo.ts';
import demoCluster from './demo-cluster.ts';

export const GROUPS: Readonly<Record<string, string>> = {
  network: 'manage bridge networks',
  policy: 'allow or deny traffic between sandboxes, networks, labels, CIDRs and the world',
  cni: 'ctnet as a CNI plugin for podman, containerd, Kubernetes (docs/cni.md)',
  service: 'a virtual address balanced over the sandboxes a label selects (docs/services.md)',
  cluster: 'many hosts: membership of a cluster whose shared state is in etcd (docs/overlay.md)',
};

export const COMMANDS: readonly CommandModule[] = [
  networkCreate, networkLs, networkInspect, networkRm, networkUpdate,
  create, run, exec, connect, disconnect, ls, inspect, rm, update, route,
  port, portAdd, portRm,
  label,
  shape,
  policyRule('allow'), policyRule('deny'), policyApply, policyLs, policyRm, policyCheck,
  serviceCreate, serviceLs, serviceInspect, serviceRm,
  apply, diff, down,
  graph, trace, ui, gc, doctor,
  cniInstall, cniExec,
  daemon, daemonStop, daemonEvents, daemonStatus,
  clusterJoin, clusterLs, clusterLeave,
  demo, demoCluster,
];
