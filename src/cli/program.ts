// The ctnet command line. Each action parses its input into typed values (src/model/spec.ts),
// calls one engine use case, and prints the result; errors are rendered once, in main.ts.
import { Command, Option } from 'commander';
import { CtnetError, invalid } from '../errors.ts';
import { Runner } from '../kernel/runner.ts';
import { DEFAULT_STATE_DIR, Store } from '../store/store.ts';
import type { Ctx } from '../engine/context.ts';
import { createNetwork, removeNetwork } from '../engine/network.ts';
import { connect, connectExternal, createSandbox, disconnect, removeSandbox } from '../engine/sandbox.ts';
import { inspectNetwork, inspectSandbox, networkSummary, publishedPorts, sandboxSummary } from '../engine/inspect.ts';
import { publish, unpublish } from '../engine/publish.ts';
import type { PublishRequest } from '../engine/ports.ts';
import { parsePortSpec } from '../model/ports.ts';
import { parseLabel } from '../model/policy.ts';
import { addPolicies, addPolicy, changeLabels, parseRulesFile, checkPolicy, listPolicies, removePolicies } from '../engine/policy.ts';
import { execInSandbox, startInSandbox } from '../engine/process.ts';
import { gc } from '../engine/gc.ts';
import { doctor } from '../engine/doctor.ts';
import { parseAttachSpec, parseNetworkSpec } from '../model/spec.ts';
import { parseName } from '../model/names.ts';
import { parseAddr, formatAddr } from '../model/cidr.ts';
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { table } from './table.ts';
import { renderNetwork, renderSandbox } from './render.ts';
import { runDemo } from './demo.ts';
import { handleCni } from '../cni/handler.ts';
import { installCni } from '../cni/install.ts';
import { daemonPid, runDaemon, stopDaemon } from '../daemon/server.ts';
import { eventsCommand } from '../daemon/events.ts';

interface Globals {
  stateDir?: string;
  explain?: boolean;
  dryRun?: boolean;
  json?: boolean;
}

const out = (text: string): void => void process.stdout.write(text.endsWith("\n") ? text : text + "\n");
const collect = (v: string, prev: string[] = []) => [...prev, v];

/** Opens the store and runner for one command. The caller closes the store. */
export function openCtx(g: Globals): Ctx {
  const dir = g.stateDir ?? process.env.CTNET_STATE_DIR ?? DEFAULT_STATE_DIR;
  if (process.getuid?.() !== 0) {
    throw new CtnetError('ENVIRONMENT', 'ctnet programs the kernel and must run as root', 'run it with sudo');
  }
  const explain = g.explain || g.dryRun;
  return {
    store: new Store(dir),
    runner: new Runner({ dryRun: g.dryRun ?? false, explain: explain ? (line) => out(line) : undefined }),
    warn: (m) => process.stderr.write(`ctnet: ${m}\n`),
  };
}

/** Wraps an action: opens the context from the merged global options and always closes it. */
function act<A extends unknown[]>(fn: (ctx: Ctx, g: Globals, ...args: A) => Promise<number | void>) {
  return async (...args: unknown[]) => {
    const cmd = args[args.length - 1] as Command;
    const g = cmd.optsWithGlobals<Globals>();
    const ctx = openCtx(g);
    try {
      const code = await fn(ctx, g, ...(args.slice(0, -1) as A));
      if (typeof code === 'number') process.exitCode = code;
    } finally {
      ctx.store.close();
    }
  };
}

function globals(cmd: Command, json = false): Command {
  cmd.addOption(new Option('--state-dir <dir>', `state directory (env CTNET_STATE_DIR, default ${DEFAULT_STATE_DIR})`))
    .option('--explain', 'print the equivalent ip/nft commands as they run')
    .option('--dry-run', 'print the equivalent ip/nft commands and change nothing');
  if (json) cmd.option('--json', 'print data as JSON');
  return cmd;
}

export function buildProgram(): Command {
  const program = new Command('ctnet')
    .description('container networking for Linux: bridges, network namespaces, IPAM, NAT, programmed into the kernel')
    .showHelpAfterError('(run with --help for usage)')
    .configureOutput({ outputError: (s, write) => write(`ctnet: ${s.replace(/^error: /, '')}`) });
  globals(program);

  // ---- networks ----
  const network = program.command('network').description('manage bridge networks');
  globals(network.command('create <name>'))
    .description('create a bridge network')
    .option('--subnet <cidr>', 'a subnet (repeat for IPv4 + IPv6)', collect)
    .option('--gateway <ip>', 'gateway address (default: first address of the subnet)', collect)
    .option('--bridge <ifname>', 'bridge interface name (default: ctbr-NAME)')
    .option('--internal', 'no egress: sandboxes reach only their own network')
    .option('--isolate', 'sandboxes on this network may not talk to each other unless a policy allows it')
    .option('--mtu <n>', 'MTU of the bridge and the sandboxes\' interfaces')
    .action(act(async (ctx, g, name: string) => {
      const opts = g as Globals & { subnet?: string[]; gateway?: string[]; bridge?: string; internal?: boolean; isolate?: boolean; mtu?: string };
      const spec = parseNetworkSpec({ name, subnet: opts.subnet, gateway: opts.gateway, bridge: opts.bridge, internal: opts.internal, isolate: opts.isolate, mtu: opts.mtu });
      const n = await createNetwork(ctx, spec);
      if (!g.explain && !g.dryRun) out(n.name);
    }));
  globals(network.command('ls'), true).alias('list').description('list networks')
    .action(act(async (ctx, g) => {
      const rows = ctx.store.networks().map((n) => networkSummary(ctx, n.name));
      if (g.json) return out(JSON.stringify(rows, null, 2));
      out(table(['NAME', 'BRIDGE', 'SUBNETS', 'INTERNAL', 'SANDBOXES', 'STATE'],
        rows.map((r) => [r.name, r.bridge, r.subnets.join(','), r.internal ? 'yes' : 'no', String(r.sandboxes), r.state])));
    }));
  globals(network.command('inspect <name>'), true).description('show a network: bridge, ports, learned FDB entries, sandboxes')
    .action(act(async (ctx, g, name: string) => {
      const v = await inspectNetwork(ctx, name);
      out(g.json ? JSON.stringify(v, null, 2) : renderNetwork(v));
    }));
  globals(network.command('rm <name...>')).alias('remove').description('remove networks (refused while sandboxes are attached, unless --force)')
    .option('-f, --force', 'disconnect attached sandboxes first')
    .action(act(async (ctx, g, names: string[]) => {
      const force = (g as { force?: boolean }).force ?? false;
      for (const name of names) {
        parseName('network', name);
        if (!ctx.store.network(name)) ctx.warn(`no network named ${name}: nothing to remove`);
        await removeNetwork(ctx, name, { force });
      }
    }));

  // ---- sandboxes ----
  const attachOptions = (cmd: Command) => cmd
    .option('--network <name>', 'network to join (repeat for more: eth0, eth1, ...)', collect)
    .option('--ip <ip>', 'a fixed address (one per subnet; repeatable)', collect)
    .option('--mac <mac>', 'MAC address of the first interface')
    .option('-p, --publish <spec>', 'publish a port: [HOST_IP:]HOST_PORT[-END]:CONTAINER_PORT[-END][/tcp|/udp|/sctp] (repeatable)', collect)
    .option('--force', 'publish even when a host process listens on the host port')
    .option('--label <key=value>', 'a label policy rules can select (label:KEY=VALUE; repeatable)', collect);
  type AttachOpts = Globals & { network?: string[]; ip?: string[]; mac?: string; publish?: string[]; force?: boolean; label?: string[] };
  const labelsOf = (o: { label?: string[] }) => {
    const labels = (o.label ?? []).map((l) => parseLabel('--label', l));
    const dup = labels.find((l, i) => labels.findIndex((x) => x.key === l.key) !== i);
    if (dup) throw invalid(`--label ${dup.key} is given twice`);
    return labels;
  };
  const publishRequest = (o: { publish?: string[]; force?: boolean }): PublishRequest =>
    ({ mappings: (o.publish ?? []).map(parsePortSpec), force: o.force ?? false });

  attachOptions(globals(program.command('create <name>'))).description('create a sandbox (a network namespace) on networks')
    .action(act(async (ctx, g, name: string) => {
      const spec = parseAttachSpec(g as AttachOpts);
      const s = await createSandbox(ctx, parseName('sandbox', name), spec, publishRequest(g as AttachOpts), labelsOf(g as AttachOpts));
      if (!g.explain && !g.dryRun) out(s.name);
    }));

  attachOptions(globals(program.command('run')))
    .description('create a sandbox and run a command in it')
    .option('--name <name>', 'sandbox name (default: a generated one)')
    .option('--rm', 'remove the sandbox when the command exits')
    .option('-d, --detach', 'run in the background; output goes to STATE_DIR/logs/NAME.log')
    .argument('<cmd...>', 'command and arguments, after --')
    .action(act(async (ctx, g, cmd: string[]) => {
      const o = g as AttachOpts & { name?: string; rm?: boolean; detach?: boolean };
      if (o.rm && o.detach) throw invalid('--rm and -d cannot be used together', 'remove a detached sandbox with "ctnet rm NAME"');
      const name = parseName('sandbox', o.name ?? `sbx-${randomBytes(3).toString('hex')}`);
      const spec = parseAttachSpec(o);
      await createSandbox(ctx, name, spec, publishRequest(o), labelsOf(o));
      if (o.detach) {
        const pid = startInSandbox(ctx, name, cmd);
        if (!g.explain && !g.dryRun) out(`${name}\t${pid}`);
        return 0;
      }
      try {
        return await execInSandbox(ctx, name, cmd);
      } finally {
        if (o.rm) await removeSandbox(ctx, name);
      }
    }));

  globals(program.command('exec <name>')).description('run a command in a sandbox')
    .argument('<cmd...>', 'command and arguments, after --')
    .action(act(async (ctx, _g, name: string, cmd: string[]) => execInSandbox(ctx, name, cmd)));

  globals(program.command('connect <network> [name]'))
    .description('connect a sandbox to one more network, or a namespace made elsewhere (--netns/--pid with --name)')
    .option('--ip <ip>', 'a fixed address (repeatable)', collect)
    .addOption(new Option('--netns <path>', 'a network namespace file made by someone else').conflicts('pid'))
    .option('--pid <pid>', 'the network namespace of this process')
    .option('--name <name>', 'the sandbox name to record a --netns/--pid namespace under')
    .action(act(async (ctx, g, net: string, name: string | undefined) => {
      const o = g as Globals & { ip?: string[]; netns?: string; pid?: string; name?: string };
      const ips = (o.ip ?? []).map((t) => { const a = parseAddr('--ip', t); return { ...a, text: formatAddr(a.family, a.n) }; });
      parseName('network', net);
      if (o.netns !== undefined || o.pid !== undefined) {
        if (name !== undefined) throw invalid('give either a sandbox NAME or --netns/--pid with --name, not both');
        if (o.name === undefined) throw invalid('--netns and --pid need --name', 'e.g. ctnet connect web --pid 1234 --name app');
        if (o.pid !== undefined && !/^[1-9]\d*$/.test(o.pid)) throw invalid(`--pid ${JSON.stringify(o.pid)} is not a process id`);
        const path = o.netns ?? `/proc/${o.pid}/ns/net`;
        return void await connectExternal(ctx, net, path, parseName('sandbox', o.name), ips);
      }
      if (name === undefined) throw invalid('name the sandbox to connect', 'ctnet connect NETWORK SANDBOX');
      await connect(ctx, net, parseName('sandbox', name), ips);
    }));

  globals(program.command('disconnect <network> <name>')).description('disconnect a sandbox from a network')
    .action(act(async (ctx, _g, net: string, name: string) => {
      await disconnect(ctx, parseName('network', net), parseName('sandbox', name));
    }));

  globals(program.command('ls'), true).alias('list').description('list sandboxes')
    .action(act(async (ctx, g) => {
      const rows = ctx.store.sandboxes().map((s) => sandboxSummary(ctx, s));
      if (g.json) return out(JSON.stringify(rows, null, 2));
      out(table(['NAME', 'NETWORKS', 'ADDRESSES', 'PORTS', 'STATE', 'NETNS'],
        rows.map((r) => [r.name, r.networks.join(','), r.addresses.join(','), r.ports.join(',') || '-', r.state, r.netns])));
    }));

  globals(program.command('inspect <name>'), true).description('show a sandbox: interfaces with their host peers, addresses, routes, neighbours')
    .action(act(async (ctx, g, name: string) => {
      const v = await inspectSandbox(ctx, parseName('sandbox', name));
      out(g.json ? JSON.stringify(v, null, 2) : renderSandbox(v));
    }));

  globals(program.command('rm <name...>')).alias('remove').description('remove sandboxes: stop their processes, remove their interfaces and addresses')
    .option('-f, --force', 'accepted for docker compatibility; rm always stops the processes')
    .action(act(async (ctx, _g, names: string[]) => {
      for (const name of names) {
        if (!(await removeSandbox(ctx, parseName('sandbox', name)))) ctx.warn(`no sandbox named ${name}: nothing to remove`);
      }
    }));

  // ---- published ports ----
  const port = globals(program.command('port'), true)
    .description('list a sandbox\'s published ports; add or remove them on a live sandbox')
    .argument('[name]', 'the sandbox')
    .action(act(async (ctx, g, name: string | undefined) => {
      if (name === undefined) throw invalid('name the sandbox', 'ctnet port NAME, ctnet port add NAME SPEC, ctnet port rm NAME SPEC');
      const sandbox = parseName('sandbox', name);
      if (!ctx.store.sandbox(sandbox)) throw new CtnetError('NOT_FOUND', `no sandbox named ${sandbox}`, 'list sandboxes with "ctnet ls"');
      const rows = publishedPorts(ctx.store, sandbox);
      if (g.json) return out(JSON.stringify(rows, null, 2));
      if (rows.length) out(rows.flatMap((r) => r.bindings.length ? r.bindings : [`${r.spec} (inactive: no network with a way out)`]).join('\n'));
    }));
  globals(port.command('add <name> <spec...>'))
    .description('publish more ports of a live sandbox')
    .option('--force', 'publish even when a host process listens on the host port')
    .action(act(async (ctx, g, name: string, specs: string[]) => {
      const req = { mappings: specs.map(parsePortSpec), force: (g as { force?: boolean }).force ?? false };
      await publish(ctx, parseName('sandbox', name), req);
    }));
  globals(port.command('rm <name> <spec...>')).alias('remove')
    .description('unpublish ports of a live sandbox (and end the flows still using them)')
    .action(act(async (ctx, _g, name: string, specs: string[]) => {
      await unpublish(ctx, parseName('sandbox', name), specs.map(parsePortSpec));
    }));

  // ---- labels and policy ----
  globals(program.command('label <name> [labels...]'), true)
    .description('show a sandbox\'s labels, or set KEY=VALUE labels (policy selects them as label:KEY=VALUE)')
    .option('--rm <key>', 'remove a label (repeatable)', collect)
    .action(act(async (ctx, g, name: string, labels: string[]) => {
      const sandbox = parseName('sandbox', name);
      const set = labels.map((l) => parseLabel('label', l));
      const remove = (g as { rm?: string[] }).rm ?? [];
      if (set.length || remove.length) await changeLabels(ctx, sandbox, set, remove);
      else if (!ctx.store.sandbox(sandbox)) throw new CtnetError('NOT_FOUND', `no sandbox named ${sandbox}`, 'list sandboxes with "ctnet ls"');
      const rows = ctx.store.labels(sandbox);
      if (g.json) return out(JSON.stringify(Object.fromEntries(rows.map((r) => [r.key, r.value])), null, 2));
      if (!g.explain && !g.dryRun && rows.length) out(rows.map((r) => `${r.key}=${r.value}`).join('\n'));
    }));

  const policy = program.command('policy').description('allow or deny traffic between sandboxes, networks, labels, CIDRs and the world');
  for (const action of ['allow', 'deny'] as const) {
    globals(policy.command(action))
      .description(`${action} new connections --from SEL --to SEL (SEL: sandbox, net:NAME, label:KEY=VALUE, CIDR, world)`)
      .requiredOption('--from <sel>', 'where connections come from')
      .requiredOption('--to <sel>', 'where they go')
      .option('--port <port>', 'PORT[-END][/tcp|/udp|/sctp] or icmp (default: every protocol and port)')
      .option('--name <name>', 'a name for the rule (default: rule-ID)')
      .action(act(async (ctx, g) => {
        const o = g as Globals & { from: string; to: string; port?: string; name?: string };
        const row = await addPolicy(ctx, { action, from: o.from, to: o.to, port: o.port, name: o.name });
        if (!g.explain && !g.dryRun) out(row.name);
      }));
  }
  globals(policy.command('apply <file>'))
    .description('add every rule of a rules file in one transaction (one rule per line: allow|deny --from SEL --to SEL [--port P] [--name N]; - reads stdin)')
    .action(act(async (ctx, g, file: string) => {
      let text: string;
      try {
        text = readFileSync(file === '-' ? 0 : file, 'utf8');
      } catch (e) {
        throw invalid(`cannot read ${file}: ${(e as Error).message}`);
      }
      const rows = await addPolicies(ctx, parseRulesFile(file, text));
      if (!g.explain && !g.dryRun) out(rows.map((r) => r.name).join('\n'));
    }));
  globals(policy.command('ls'), true).alias('list').description('list rules with their hit counters (new connections each decided)')
    .action(act(async (ctx, g) => {
      const rows = await listPolicies(ctx);
      if (g.json) return out(JSON.stringify(rows, null, 2));
      out(table(['ID', 'NAME', 'ACTION', 'FROM', 'TO', 'PORT', 'HITS'],
        rows.map((r) => [String(r.id), r.name, r.action, r.from, r.to, r.port ?? 'any', String(r.hits.packets)])));
    }));
  globals(policy.command('rm <rule...>')).alias('remove').description('remove rules (by name or ID); connections they allowed and nothing else allows are cut')
    .action(act(async (ctx, _g, rules: string[]) => {
      await removePolicies(ctx, rules);
    }));
  globals(policy.command('check <from> <to> [port]'), true)
    .description('say whether a new connection FROM -> TO (sandboxes or addresses) is allowed, and which rule or default decides')
    .action(act(async (ctx, g, from: string, to: string, port: string | undefined) => {
      const rows = checkPolicy(ctx, from, to, port);
      if (g.json) return out(JSON.stringify(rows, null, 2));
      out(rows.map((r) => `${r.allowed ? 'allowed' : 'denied '}  ${r.from} -> ${r.to} ${r.port}: ${r.by}`).join('\n'));
    }));

  globals(program.command('gc')).description('reconcile the store and the kernel after a crash')
    .action(act(async (ctx, g) => {
      const done = await gc(ctx);
      if (!g.explain && !g.dryRun) out(done.length ? done.join('\n') : 'gc: store and kernel agree');
    }));

  globals(program.command('doctor'), true).description('check what on this host keeps ctnet\'s networks from working (forward policies, br_netfilter, sysctls, state)')
    .action(act(async (ctx, g) => {
      const findings = await doctor(ctx);
      if (g.json) out(JSON.stringify(findings, null, 2));
      else {
        out(findings.map((f) => `${f.status.padEnd(4)}  ${f.check.padEnd(15)}  ${f.detail}${f.hint && f.status !== 'ok' ? `\n      ${''.padEnd(15)}  fix: ${f.hint}` : ''}`).join('\n'));
      }
      return findings.some((f) => f.status === 'fail') ? 1 : 0;
    }));

  // ---- CNI ----
  const cni = program.command('cni').description('ctnet as a CNI plugin for podman, containerd, Kubernetes (docs/cni.md)');
  globals(cni.command('install')).description('install the ctnet CNI plugin, and a .conflist for a ctnet network')
    .option('--bin-dir <dir>', 'CNI plugin directory', '/opt/cni/bin')
    .option('--conf-dir <dir>', 'CNI configuration directory', '/etc/cni/net.d')
    .option('--network <name>', 'write CONF_DIR/NAME.conflist for this ctnet network')
    .option('--cni-version <v>', 'cniVersion of the conflist (podman 4.3 and containerd 1.6 need 1.0.0 at most)', '1.0.0')
    .action(act(async (ctx, g) => {
      const o = g as Globals & { binDir: string; confDir: string; network?: string; cniVersion: string };
      if (o.network !== undefined) parseName('network', o.network);
      for (const f of installCni(ctx.store, { binDir: o.binDir, confDir: o.confDir, network: o.network, cniVersion: o.cniVersion })) out(f);
    }));
  globals(cni.command('exec')).description('run one CNI command in this process (CNI_* env, config on stdin), without the daemon')
    .action(act(async (ctx) => {
      const reply = await handleCni(ctx, process.env, readFileSync(0, 'utf8'));
      process.stdout.write(reply.stdout);
      process.stderr.write(reply.stderr);
      return reply.exit;
    }));

  const daemon = globals(program.command('daemon')).description('run ctnetd, the daemon behind the CNI plugin (the plugin starts it on demand)')
    .option('--idle-exit <seconds>', 'exit after this long without a request (0: never)', '0')
    .action(async (_o: unknown, cmd: Command) => {
      const o = cmd.optsWithGlobals<Globals & { idleExit: string }>();
      const dir = o.stateDir ?? process.env.CTNET_STATE_DIR ?? DEFAULT_STATE_DIR;
      const idle = Number(o.idleExit);
      if (!Number.isFinite(idle) || idle < 0) throw invalid(`--idle-exit ${o.idleExit} is not a number of seconds`);
      process.exitCode = await runDaemon({ stateDir: dir, idleExitMs: idle * 1000 });
    });
  globals(daemon.command('stop')).description('stop the ctnetd of a state directory')
    .action(async (_o: unknown, cmd: Command) => {
      const g = cmd.optsWithGlobals<Globals>();
      const dir = g.stateDir ?? process.env.CTNET_STATE_DIR ?? DEFAULT_STATE_DIR;
      out(await stopDaemon(dir) ? `ctnetd for ${dir} stopped` : `no ctnetd runs for ${dir}`);
    });
  eventsCommand(globals(daemon.command('events'), true));
  globals(daemon.command('status')).description('say whether ctnetd runs for a state directory, and its pid')
    .action(async (_o: unknown, cmd: Command) => {
      const g = cmd.optsWithGlobals<Globals>();
      const dir = g.stateDir ?? process.env.CTNET_STATE_DIR ?? DEFAULT_STATE_DIR;
      const pid = daemonPid(dir);
      out(pid ? `ctnetd for ${dir} runs as pid ${pid}` : `no ctnetd runs for ${dir}`);
      process.exitCode = pid ? 0 : 3;
    });

  program.command('demo').description('build a lab of its own, prove connectivity, print a matrix, clean up')
    .action(async () => {
      process.exitCode = await runDemo();
    });

  return program;
}
