// One CNI invocation: environment + stdin in, exit status + stdout + stderr out. The daemon runs
// it for the plugin client; `ctnet cni exec` runs it in-process (no daemon) with the same result.
import type { Ctx } from '../engine/context.ts';
import { cniAdd, cniCheck, cniDel, cniGc, cniStatus } from '../engine/cni.ts';
import { toCniError } from './errors.ts';
import { parseLabel } from '../model/policy.ts';
import { parseDnsLabel } from '../model/names.ts';
import {
  type CniEnv, CniError, CODE, type Command, decode, mergeResult, nameForDel, parseConfig, parseEnv, renderError, renderResult, renderVersion,
  SUPPORTED_VERSIONS, withArgsClaims,
} from './protocol.ts';

const LATEST = SUPPORTED_VERSIONS[SUPPORTED_VERSIONS.length - 1]!;

/** What a plugin process answers: its exit status, stdout and stderr. */
export interface Reply {
  readonly exit: number;
  readonly stdout: string;
  readonly stderr: string;
}

export async function handleCni(ctx: Ctx, env: Readonly<Record<string, string | undefined>>, stdin: string): Promise<Reply> {
  let version: string = LATEST;
  let command: Command | undefined;
  const warnings: string[] = [];
  try {
    const e = parseEnv(env);
    command = e.command;
    if (e.command === 'DEL') return await del(ctx, e, stdin, warnings);
    const raw = e.command === 'VERSION' && stdin.trim() === '' ? {} : decode(stdin);
    if (typeof raw.cniVersion === 'string') version = raw.cniVersion;
    if (e.command === 'VERSION') return ok(JSON.stringify(renderVersion(version)));
    const parsed = parseConfig(raw, e.command);
    warnings.push(...parsed.warnings);
    const conf = {
      ...withArgsClaims(parsed.conf, e.args), labels: withRuntimeLabels(parsed.conf.labels, e.args, warnings),
      aliases: withPodName(parsed.conf.aliases, e.args),
    };
    const req = { containerId: e.containerId, netns: e.netns, ifname: e.ifname, conf };
    switch (e.command) {
      case 'ADD': {
        const result = mergeResult(conf.prevResult, await cniAdd(ctx, req));
        return ok(JSON.stringify(renderResult(result, version)), warnings);
      }
      case 'CHECK':
        await cniCheck(ctx, req);
        return ok('', warnings);
      case 'GC': {
        if (!conf.validAttachments) {
          throw new CniError(CODE.INVALID_CONFIG, 'GC needs "cni.dev/valid-attachments" in the configuration', 'list the attachments still in use (an empty list removes all)');
        }
        const removed = await cniGc(ctx, conf.name, conf.validAttachments);
        if (removed.length) warnings.push(`gc removed ${removed.join(', ')}`);
        return ok('', warnings);
      }
      case 'STATUS':
        await cniStatus(ctx, conf);
        return ok('', warnings);
    }
  } catch (err) {
    const ce = toCniError(err, command);
    return { exit: 1, stdout: JSON.stringify(renderError(ce, version)) + '\n', stderr: stderrOf(warnings) };
  }
}

/**
 * DEL works from the store: whatever else is wrong in the request (a runtimeConfig ctnet cannot
 * read, a version it does not speak), it succeeds when the store can answer it, and says on stderr
 * what it ignored. Otherwise containerd marks the pod SANDBOX_UNKNOWN and its namespace leaks.
 */
async function del(ctx: Ctx, e: CniEnv, stdin: string, warnings: string[]): Promise<Reply> {
  let raw: Record<string, unknown> = {};
  let name: string | undefined;
  try {
    raw = decode(stdin);
    const parsed = parseConfig(raw, 'DEL');
    warnings.push(...parsed.warnings);
    name = parsed.conf.name;
  } catch (err) {
    name = nameForDel(raw);
    warnings.push(`DEL ignored what it does not need: ${(err as Error).message}`);
  }
  await cniDel(ctx, { containerId: e.containerId, ifname: e.ifname, cniNetwork: name });
  return ok('', warnings);
}

/**
 * The pod (podman: container) name and namespace runtimes pass in CNI_ARGS become the labels
 * Kubernetes uses for them, so policy can select by them; args.cni.labels win over these.
 */
function withRuntimeLabels(labels: readonly { key: string; value: string }[], args: ReadonlyMap<string, string>,
  warnings: string[]): { key: string; value: string }[] {
  const out = [...labels];
  for (const [arg, key] of [['K8S_POD_NAME', 'io.kubernetes.pod.name'], ['K8S_POD_NAMESPACE', 'io.kubernetes.pod.namespace']] as const) {
    const value = args.get(arg);
    if (!value || out.some((l) => l.key === key)) continue;
    try {
      out.push(parseLabel(`CNI_ARGS ${arg}`, `${key}=${value}`));
    } catch (err) {
      warnings.push(`not a label: ${(err as Error).message}`);
    }
  }
  return out;
}

/**
 * The pod (podman: container) name in CNI_ARGS is also the sandbox's first DNS name on the network,
 * as the dnsname plugin made it: podman's CNI backend passes only the short id in runtimeConfig.aliases.
 * Not a DNS label (a name with "_"): left out, the aliases still answer.
 */
function withPodName(aliases: readonly string[], args: ReadonlyMap<string, string>): string[] {
  const pod = args.get('K8S_POD_NAME')?.toLowerCase();
  if (!pod || aliases.includes(pod)) return [...aliases];
  try {
    return [parseDnsLabel('CNI_ARGS K8S_POD_NAME', pod), ...aliases];
  } catch {
    return [...aliases];
  }
}

const stderrOf = (warnings: readonly string[]) => warnings.map((w) => `ctnet: warning: ${w}\n`).join('');
const ok = (stdout: string, warnings: readonly string[] = []): Reply => ({ exit: 0, stdout: stdout ? stdout + '\n' : '', stderr: stderrOf(warnings) });
