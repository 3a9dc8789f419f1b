// Entry point of the ctnet command: parse, run, render errors once.
import module from 'node:module';
module.enableCompileCache?.();

const { CommanderError } = await import('commander');
const { CtnetError, KernelError } = await import('../errors.ts');
const { buildProgram } = await import('./program.ts');

// `ctnet ls | head`: a reader that goes away is not an error.
process.stdout.on('error', (e: NodeJS.ErrnoException) => {
  if (e.code === 'EPIPE') process.exit(process.exitCode ?? 0);
  throw e;
});

try {
  await buildProgram().exitOverride().parseAsync(process.argv);
} catch (e) {
  if (e instanceof CommanderError) {
    // commander has printed its message already; help and version are not failures.
    process.exitCode = e.exitCode === 0 ? 0 : 2;
  } else if (e instanceof CtnetError) {
    process.stderr.write(`ctnet: ${e.message}\n`);
    if (e instanceof KernelError && process.env.CTNET_DEBUG) process.stderr.write(`${e.stderr}\n`);
    if (e.hint) process.stderr.write(`hint: ${e.hint}\n`);
    process.exitCode = 1;
  } else {
    process.stderr.write(`ctnet: internal error: ${(e as Error).stack ?? String(e)}\n`);
    process.exitCode = 70;
  }
}
