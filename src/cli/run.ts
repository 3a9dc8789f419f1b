// One run of the command line, rendered once: parse, run, errors to stderr, the exit code. main.ts
// runs it in this process; ctnetd runs it for the front end (src/daemon/cli.ts) with a host that
// collects the output, so both ways print the same bytes and exit with the same code.
import { Command, CommanderError } from 'commander';
import { CtnetError, KernelError } from '../errors.ts';
import { type CliHost, NotHere, PROCESS_HOST } from './context.ts';
import { buildProgram } from './program.ts';

/**
 * What `process.exit(code)` would have done in a process of its own. commander exits the process
 * itself on a subcommand's usage error (and after its help) unless told otherwise; a host that is
 * not this process makes it throw this instead.
 */
class ProcessExit extends Error {
  readonly code: number;
  constructor(code: number) {
    super(`exit ${code}`);
    this.code = code;
  }
}

function throwOnExit(cmd: Command): void {
  for (const sub of cmd.commands) {
    sub.exitOverride((e) => { throw new ProcessExit(e.exitCode); });
    throwOnExit(sub);
  }
}

/** Runs `ctnet ARGS` (args without node and the script) and returns the exit code. */
export async function runCli(args: readonly string[], host: CliHost = PROCESS_HOST): Promise<number> {
  let code = 0;
  const exit = (c: number) => {
    code = c;
    host.exit(c);
  };
  const h: CliHost = { ...host, exit };
  try {
    const program = buildProgram(undefined, undefined, h).exitOverride();
    if (host !== PROCESS_HOST) throwOnExit(program);
    await program.parseAsync(args, { from: 'user' });
  } catch (e) {
    if (e instanceof NotHere) throw e; // nothing ran: the caller runs the command another way
    else if (e instanceof ProcessExit) {
      exit(e.code);
    } else if (e instanceof CommanderError) {
      // commander has printed its message already; help and version are not failures.
      exit(e.exitCode === 0 ? 0 : 2);
    } else if (e instanceof CtnetError) {
      host.stderr(`ctnet: ${e.message}\n`);
      if (e instanceof KernelError && host.env.CTNET_DEBUG) host.stderr(`${e.stderr}\n`);
      if (e.hint) host.stderr(`hint: ${e.hint}\n`);
      exit(1);
    } else {
      host.stderr(`ctnet: internal error: ${(e as Error).stack ?? String(e)}\n`);
      exit(70);
    }
  }
  return code;
}
