// Renders argv as a line a POSIX shell would run unchanged (for --explain and --dry-run).
const SAFE = /^[A-Za-z0-9_@%+=:,./-]+$/;

export function quote(arg: string): string {
  return arg !== '' && SAFE.test(arg) ? arg : `'${arg.replaceAll("'", `'\\''`)}'`;
}

export function shellLine(argv: readonly string[]): string {
  return argv.map(quote).join(' ');
}
