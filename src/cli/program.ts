// The ctnet command line: the commander tree, built from the command modules.
// A new command goes in src/cli/commands/NAME.ts (see src/cli/command.ts for its shape) and in the
// list in src/cli/commands/index.ts; nothing here changes. Errors are rendered once, in main.ts.
import { Command, Option } from 'commander';
import type { ArgSpec, CommandModule, OptionSpec } from './command.ts';
import { type CliHost, GLOBAL_OPTIONS, JSON_OPTION, makeIo, openCtx, PROCESS_HOST, resolveGlobals } from './context.ts';
import { COMMANDS, GROUPS } from './commands/index.ts';

const collect = (v: string, prev: string[] = []) => [...prev, v];

function addOption(cmd: Command, o: OptionSpec): void {
  const opt = new Option(o.flags, o.description);
  if (o.repeatable) opt.argParser(collect);
  if (o.default !== undefined) opt.default(o.default);
  if (o.required) opt.makeOptionMandatory();
  if (o.conflicts !== undefined) opt.conflicts(o.conflicts);
  cmd.addOption(opt);
}

function addArgument(cmd: Command, a: ArgSpec): void {
  if (typeof a === 'string') cmd.argument(a);
  else cmd.argument(a.spec, a.description);
}

/** The leaf command of one module, under its parent; runs the module with its context. */
function addModule(parent: Command, word: string, m: CommandModule, host: CliHost): Command {
  const cmd = parent.command(word).description(m.summary);
  for (const a of m.aliases ?? []) cmd.alias(a);
  for (const a of m.args ?? []) addArgument(cmd, a);
  if (m.globalOptions !== false) {
    for (const o of GLOBAL_OPTIONS) addOption(cmd, o);
    if (m.json) addOption(cmd, JSON_OPTION);
  }
  for (const o of m.options ?? []) addOption(cmd, o);
  cmd.action(async () => {
    // --state-dir and the rest may come before or after the command's name.
    const opts = cmd.optsWithGlobals();
    const g = resolveGlobals({ ...opts, json: m.json ? opts.json : undefined }, host.env);
    const args = Object.fromEntries(cmd.registeredArguments.map((a, i) => [a.name(), cmd.processedArgs[i]]));
    const io = makeIo(g, host);
    const ctx = m.needsCtx === false ? undefined : openCtx(g, io, host);
    try {
      const code = await m.run({ ctx, args, opts, io });
      if (typeof code === 'number') host.exit(code);
    } finally {
      ctx?.store.close();
    }
  });
  return cmd;
}

/**
 * The program with every command of `modules` (default: all of ctnet's), parents made from the
 * first words of the names: a module of that name if it comes first in the list, else a group.
 */
export function buildProgram(modules: readonly CommandModule[] = COMMANDS, groups: Readonly<Record<string, string>> = GROUPS, host: CliHost = PROCESS_HOST): Command {
  const program = new Command('ctnet')
    .description('container networking for Linux: bridges, network namespaces, IPAM, NAT, programmed into the kernel')
    .showHelpAfterError('(run with --help for usage)')
    .configureOutput({
      writeOut: host.stdout,
      writeErr: host.stderr,
      outputError: (s, write) => write(`ctnet: ${s.replace(/^error: /, '')}`),
    });
  for (const o of GLOBAL_OPTIONS) addOption(program, o);

  const made = new Map<string, Command>([['', program]]);
  const groupsMade = new Set<string>();
  const commandAt = (path: string): Command => {
    const found = made.get(path);
    if (found) return found;
    const summary = groups[path];
    if (summary === undefined) throw new Error(`ctnet: no command or group named "${path}"`);
    const words = path.split(' ');
    const cmd = commandAt(words.slice(0, -1).join(' ')).command(words.at(-1)!).description(summary);
    made.set(path, cmd);
    groupsMade.add(path);
    return cmd;
  };
  for (const m of modules) {
    const words = m.name.split(' ');
    if (made.has(m.name)) {
      throw new Error(`ctnet: command "${m.name}" is declared twice${groupsMade.has(m.name) ? ', or after its subcommands' : ''}`);
    }
    made.set(m.name, addModule(commandAt(words.slice(0, -1).join(' ')), words.at(-1)!, m, host));
  }
  return program;
}
