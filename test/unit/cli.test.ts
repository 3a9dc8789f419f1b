// The CLI dispatcher: every command module is reachable by its name and aliases, and what commander
// parses reaches `run` with the types the declarations promise. No kernel, no store.
import assert from 'node:assert/strict';
import { afterEach, describe, it } from 'node:test';
import type { Command } from 'commander';
import { defineCommand, type CommandModule, type RunInput } from '../../src/cli/command.ts';
import { COMMANDS } from '../../src/cli/commands/index.ts';
import { buildProgram } from '../../src/cli/program.ts';

/** Throw instead of exiting, and keep commander's messages out of the test output, on every level. */
function quiet(cmd: Command): Command {
  cmd.exitOverride().configureOutput({ writeOut: () => {}, writeErr: () => {}, outputError: () => {} });
  for (const sub of cmd.commands) quiet(sub);
  return cmd;
}

const parse = (program: Command, argv: string[]) => quiet(program).parseAsync(argv, { from: 'user' });

/** Enough positional arguments and required options for commander to accept the module. */
function minimalArgv(m: CommandModule): string[] {
  const args = (m.args ?? []).map((a) => (typeof a === 'string' ? a : a.spec)).filter((s) => s.startsWith('<')).map(() => 'x');
  const required = (m.options ?? []).filter((o) => o.required).flatMap((o) => [o.flags.match(/--[a-z-]+/)![0], 'x']);
  return [...args, ...required];
}

afterEach(() => {
  process.exitCode = undefined;
});

describe('the command list', () => {
  it('has no two modules with the same name or alias under one parent', () => {
    const seen = new Map<string, string>();
    for (const m of COMMANDS) {
      const words = m.name.split(' ');
      const parent = words.slice(0, -1).join(' ');
      for (const w of [words.at(-1)!, ...(m.aliases ?? [])]) {
        const key = `${parent} ${w}`;
        assert.equal(seen.get(key), undefined, `"${m.name}" and "${seen.get(key)}" are both called ${key.trim()}`);
        seen.set(key, m.name);
      }
    }
  });

  it('reaches every module by its name and by each alias', async () => {
    for (const m of COMMANDS) {
      const words = m.name.split(' ');
      const calls = [words, ...(m.aliases ?? []).map((a) => [...words.slice(0, -1), a])];
      for (const call of calls) {
        let ran: string | undefined;
        // The real module's declarations, with a run that only records; no context is opened.
        const stand = COMMANDS.map((c): CommandModule => ({ ...c, needsCtx: false, run: async () => void (ran = c.name) }));
        await parse(buildProgram(stand), [...call, ...minimalArgv(m)]);
        assert.equal(ran, m.name, `ctnet ${call.join(' ')}`);
      }
    }
  });

  it('lists the global options (and --json where declared) in the help of every module but the demos', () => {
    const program = buildProgram();
    const find = (words: string[]) => words.reduce((c: Command | undefined, w) => c?.commands.find((s) => s.name() === w), program);
    for (const m of COMMANDS) {
      const cmd = find(m.name.split(' '));
      assert.ok(cmd, m.name);
      const longs = cmd.options.map((o) => o.long);
      const globals = ['--state-dir', '--explain', '--dry-run'].filter((l) => longs.includes(l));
      assert.deepEqual(globals, m.name === 'demo' || m.name === 'demo cluster' ? [] : ['--state-dir', '--explain', '--dry-run'], m.name);
      assert.equal(longs.includes('--json'), m.json === true, m.name);
    }
  });

  it('refuses a module declared twice, one after its subcommands, or one under an unknown group', () => {
    const leaf = (name: string) => defineCommand({ name, summary: name, needsCtx: false, async run() {} });
    assert.throws(() => buildProgram([leaf('a'), leaf('a')], {}), /"a" is declared twice/);
    assert.throws(() => buildProgram([leaf('g b'), leaf('g')], { g: 'group' }), /"g" is declared twice, or after its subcommands/);
    assert.throws(() => buildProgram([leaf('nogroup b')], {}), /no command or group named "nogroup"/);
  });
});

describe('what reaches run', () => {
  type InputOf<M> = M extends CommandModule<infer O, infer A, infer N> ? RunInput<O, A, N> : never;
  type Input = InputOf<typeof probe>;
  let got: Input | undefined;
  const probe = defineCommand({
    name: 'grp probe',
    summary: 'every kind of option and argument',
    args: ['<first>', '[second]', { spec: '[rest...]', description: 'the rest' }],
    options: [
      { flags: '--many <v>', description: 'repeatable', repeatable: true },
      { flags: '-f, --flag', description: 'boolean with a short form' },
      { flags: '--one-value <v>', description: 'kebab-case, one value' },
      { flags: '--with-default <v>', description: 'defaulted', default: 'dflt' },
      { flags: '--needed <v>', description: 'required', required: true },
      { flags: '--this <v>', description: 'conflicts with --that', conflicts: 'that' },
      { flags: '--that <v>', description: 'conflicts with --this' },
    ],
    json: true,
    needsCtx: false,
    async run(input) {
      got = input;
      return 3;
    },
  });
  const plain = defineCommand({ name: 'plain', summary: 'no --json', needsCtx: false, async run(input) { io = input.io; } });
  let io: Input['io'] | undefined;
  const program = () => buildProgram([probe, plain], { grp: 'a group' });

  it('gives run the parsed values with their types, and sets the exit code it returns', async () => {
    await parse(program(), ['grp', 'probe', 'a', 'b', 'c', 'd', '--many', '1', '--many', '2', '-f', '--one-value', 'v', '--needed', 'n', '--this', 't']);
    assert.ok(got);
    assert.equal(got.ctx, undefined);
    assert.deepEqual({ ...got.args }, { first: 'a', second: 'b', rest: ['c', 'd'] });
    // These assignments are also checked by tsc: the declared types are the parsed ones.
    const many: string[] | undefined = got.opts.many;
    const flag: true | undefined = got.opts.flag;
    const oneValue: string | undefined = got.opts.oneValue;
    const withDefault: string = got.opts.withDefault;
    const needed: string = got.opts.needed;
    assert.deepEqual({ many, flag, oneValue, withDefault, needed, that: got.opts.that }, {
      many: ['1', '2'], flag: true, oneValue: 'v', withDefault: 'dflt', needed: 'n', that: undefined,
    });
    assert.equal(process.exitCode, 3);
  });

  it('leaves absent optional arguments and options out', async () => {
    await parse(program(), ['grp', 'probe', 'a', '--needed', 'n']);
    assert.ok(got);
    assert.deepEqual({ ...got.args }, { first: 'a', second: undefined, rest: [] });
    assert.equal(got.opts.many, undefined);
    assert.equal(got.opts.flag, undefined);
    assert.equal(got.opts.withDefault, 'dflt');
  });

  it('lets commander refuse conflicting, missing and unknown options', async () => {
    await assert.rejects(parse(program(), ['grp', 'probe', 'a', '--needed', 'n', '--this', '1', '--that', '2']), { code: 'commander.conflictingOption' });
    await assert.rejects(parse(program(), ['grp', 'probe', 'a']), { code: 'commander.missingMandatoryOptionValue' });
    await assert.rejects(parse(program(), ['plain', '--json']), { code: 'commander.unknownOption' });
  });

  it('says json only to a command that takes --json (not to a subcommand of one)', async () => {
    let seen: boolean | undefined;
    const parent = defineCommand({ name: 'par', summary: 'takes --json', json: true, needsCtx: false, async run() {} });
    const kid = defineCommand({ name: 'par kid', summary: 'does not', needsCtx: false, async run(input) { seen = input.io.json; } });
    await parse(buildProgram([parent, kid], {}), ['par', '--json', 'kid']);
    assert.equal(seen, false);
  });

  it('works out the global options once: --state-dir before or after the name, the env, quiet, json', async () => {
    const env = process.env.CTNET_STATE_DIR;
    try {
      process.env.CTNET_STATE_DIR = '/from/env';
      await parse(program(), ['plain']);
      assert.deepEqual({ ...io, out: undefined, warn: undefined }, { out: undefined, warn: undefined, json: false, quiet: false, stateDir: '/from/env' });
      await parse(program(), ['--state-dir', '/before', 'plain', '--dry-run']);
      assert.equal(io?.stateDir, '/before');
      assert.equal(io?.quiet, true);
      await parse(program(), ['plain', '--state-dir', '/after', '--explain']);
      assert.equal(io?.stateDir, '/after');
      assert.equal(io?.quiet, true);
      await parse(program(), ['grp', 'probe', 'a', '--needed', 'n', '--json']);
      assert.equal(got?.io.json, true);
      assert.equal(got?.io.quiet, false);
      assert.equal(got?.io.stateDir, '/from/env');
    } finally {
      if (env === undefined) delete process.env.CTNET_STATE_DIR;
      else process.env.CTNET_STATE_DIR = env;
    }
  });
});
