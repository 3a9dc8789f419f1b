// Entry point of the ctnet command: parse, run, render errors once (run.ts).
import module from 'node:module';
module.enableCompileCache?.();

const { runCli } = await import('./run.ts');

// `ctnet ls | head`: a reader that goes away is not an error.
process.stdout.on('error', (e: NodeJS.ErrnoException) => {
  if (e.code === 'EPIPE') process.exit(process.exitCode ?? 0);
  throw e;
});

process.exitCode = await runCli(process.argv.slice(2));
