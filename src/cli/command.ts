// The shape of every ctnet command: a module that declares its name, arguments and options as data
// and one `run(input)`; src/cli/program.ts turns the list of modules into the commander tree.
// The types of `input.args` and `input.opts` are inferred from those declarations, so a command
// module never casts what commander parsed.
import type { Ctx } from '../engine/context.ts';

/** One option as data. `flags` as commander spells them: '-f, --force', '--subnet <cidr>'. */
export interface OptionSpec {
  readonly flags: string;
  readonly description: string;
  /** Each use adds one more value: the option's value is a string[]. */
  readonly repeatable?: boolean;
  /** Shown in the help; the option always has a value (a string). */
  readonly default?: string;
  /** commander refuses the command without it; the option always has a value. */
  readonly required?: boolean;
  /** The option (by its camelCase name) this one cannot be used with. */
  readonly conflicts?: string;
}

/** A positional argument as commander spells it ('<name>', '[name]', '<cmd...>'), with a help line if given. */
export type ArgSpec = string | { readonly spec: string; readonly description: string };

/** What every command prints through; the output mode is worked out once (src/cli/context.ts). */
export interface Io {
  /** A result line on stdout (a newline is added unless the text ends with one). */
  out(text: string): void;
  /** A warning or progress line on stderr, as "ctnet: TEXT". */
  warn(text: string): void;
  /** --json was given (only commands with `json: true` accept it). */
  readonly json: boolean;
  /** --explain or --dry-run: stdout carries the commands, so the usual result lines are left out. */
  readonly quiet: boolean;
  readonly stateDir: string;
}

export interface RunInput<O extends readonly OptionSpec[], A extends readonly ArgSpec[], N extends boolean> {
  /** The store, kernel and applier; undefined for the commands that declare `needsCtx: false`. */
  readonly ctx: N extends false ? undefined : Ctx;
  readonly args: ArgsOf<A>;
  readonly opts: OptsOf<O>;
  readonly io: Io;
}

export interface CommandModule<
  O extends readonly OptionSpec[] = readonly OptionSpec[],
  A extends readonly ArgSpec[] = readonly ArgSpec[],
  N extends boolean = boolean,
> {
  /** The words that call it: 'ls', 'network create'. A parent word is another module or a group (commands/index.ts). */
  readonly name: string;
  readonly aliases?: readonly string[];
  /** The help line. */
  readonly summary: string;
  readonly args?: A;
  readonly options?: O;
  /** Accepts --json. */
  readonly json?: boolean;
  /** Opens the store (and checks for root) before `run`; default true. */
  readonly needsCtx?: N;
  /** Takes --state-dir, --explain and --dry-run; default true (only `demo` takes none). */
  readonly globalOptions?: boolean;
  // A method, not a property: a list of modules with different option types is a list of
  // CommandModule (method parameters are compared bivariantly); the dispatcher fills `opts` from
  // the same declarations these types come from, and test/unit/cli.test.ts checks that it does.
  /** Returns the exit code, or nothing for 0. */
  run(input: RunInput<O, A, N>): Promise<number | void>;
}

/** Declares a command; only here so that TypeScript infers the types of `args` and `opts` for `run`. */
export function defineCommand<
  const O extends readonly OptionSpec[] = [],
  const A extends readonly ArgSpec[] = [],
  const N extends boolean = true,
>(m: CommandModule<O, A, N>): CommandModule<O, A, N> {
  return m;
}

// ---- the types of parsed values, from the declarations ----

/** 'bin-dir' -> 'binDir', as commander names option values. */
type Camel<S extends string> = S extends `${infer Head}-${infer Tail}` ? `${Head}${Capitalize<Camel<Tail>>}` : S;
/** '-f, --force' -> 'force'; '--subnet <cidr>' -> 'subnet'. */
type LongName<F extends string> = F extends `${string}--${infer Rest}` ? (Rest extends `${infer Name} ${string}` ? Name : Rest) : never;
type OptKey<O extends OptionSpec> = Camel<LongName<O['flags']>>;
type OptValue<O extends OptionSpec> =
  O['flags'] extends `${string}<${string}>` ? (O extends { readonly repeatable: true } ? string[] : string) : true;
type AlwaysSet<O extends OptionSpec> = O extends { readonly default: string } | { readonly required: true } ? true : false;

export type OptsOf<Os extends readonly OptionSpec[]> = {
  readonly [O in Os[number] as AlwaysSet<O> extends true ? OptKey<O> : never]: OptValue<O>;
} & {
  readonly [O in Os[number] as AlwaysSet<O> extends true ? never : OptKey<O>]?: OptValue<O>;
};

type SpecText<A extends ArgSpec> = A extends { readonly spec: infer S extends string } ? S : A & string;
type ArgName<S extends string> =
  S extends `<${infer N}...>` | `[${infer N}...]` ? N : S extends `<${infer N}>` | `[${infer N}]` ? N : never;
/** '<x>': string; '[x]': string or undefined; '<x...>' and '[x...]': string[] (empty when none). */
type ArgValue<S extends string> =
  S extends `${string}...${'>' | ']'}` ? string[] : S extends `[${string}]` ? string | undefined : string;

export type ArgsOf<As extends readonly ArgSpec[]> = {
  readonly [A in As[number] as ArgName<SpecText<A>>]: ArgValue<SpecText<A>>;
};
