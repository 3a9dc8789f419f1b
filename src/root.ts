// Where this checkout is: the directory of ctnet's package.json, found from this module's own
// location, so the same code works from src/ (type stripping) and from the bundle in build/.
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

function findRoot(): string {
  for (let dir = dirname(fileURLToPath(import.meta.url)); ; dir = dirname(dir)) {
    const pkg = join(dir, 'package.json');
    if (existsSync(pkg) && (JSON.parse(readFileSync(pkg, 'utf8')) as { name?: string }).name === 'ctnet') return dir;
    if (dirname(dir) === dir) throw new Error(`cannot find ctnet's package.json above ${fileURLToPath(import.meta.url)}`);
  }
}

export const ROOT = findRoot();
