// A small CNI runtime for tests: execs a plugin in the lab host the way libcni does (CNI_* env,
// the network configuration on stdin, the result or error as JSON on stdout).
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import type { Lab } from '../../src/lab/lab.ts';

export interface CniCall {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
  /** stdout parsed, when it is JSON. */
  readonly json: Record<string, unknown> | undefined;
}

export interface CniEnv {
  CNI_COMMAND: string;
  CNI_CONTAINERID?: string;
  CNI_NETNS?: string;
  CNI_IFNAME?: string;
  CNI_PATH?: string;
  CNI_ARGS?: string;
  [k: string]: string | undefined;
}

/** Runs PLUGIN in the lab host with exactly this CNI environment (plus PATH) and stdin. */
export function execPlugin(lab: Lab, plugin: string, env: CniEnv, stdin: string, extraEnv: Record<string, string> = {}): Promise<CniCall> {
  return new Promise((resolve) => {
    const child = spawn('nsenter', [`--net=/run/netns/${lab.host}`, plugin], {
      // CTNET_KERNEL (cni-exec.test.ts): the ctnetd the plugin starts inherits it and runs that backend.
      env: { PATH: process.env.PATH, ...(process.env.CTNET_KERNEL ? { CTNET_KERNEL: process.env.CTNET_KERNEL } : {}), ...extraEnv, ...(Object.fromEntries(Object.entries(env).filter(([, v]) => v !== undefined)) as Record<string, string>) },
    });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    child.stdin.on('error', () => {});
    child.stdin.end(stdin);
    child.on('close', (code) => {
      let json: Record<string, unknown> | undefined;
      try {
        json = stdout.trim() ? (JSON.parse(stdout) as Record<string, unknown>) : undefined;
      } catch {
        json = undefined;
      }
      resolve({ code: code ?? 1, stdout, stderr, json });
    });
  });
}

/** The conflist's plugins with name and cniVersion copied in, as libcni hands them out. */
export function pluginConfigs(conflistPath: string): Record<string, unknown>[] {
  const list = JSON.parse(readFileSync(conflistPath, 'utf8')) as { cniVersion: string; name: string; plugins: Record<string, unknown>[] };
  return list.plugins.map((p) => ({ ...p, cniVersion: list.cniVersion, name: list.name }));
}
