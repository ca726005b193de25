// Whether dist/ holds a build of the current sources; shared by bin/shoal.js and scripts/build.mjs.
// Only modification times are compared (a few ms for the whole tree), nothing is read or hashed.
import { readFileSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';

/** Sources: TypeScript, and the web page's files (src/ui/assets), which the build copies. */
const SOURCE = /\.(ts|html|css|js)$/;

/** The newest modification time (ms) of the source files under `dir`, 0 when there are none. */
function newestSource(dir) {
  let newest = 0;
  let entries;
  try {
    entries = readdirSync(dir, { recursive: true, withFileTypes: true });
  } catch {
    return 0;
  }
  for (const e of entries) {
    if (!e.isFile() || !SOURCE.test(e.name)) continue;
    const m = statSync(join(e.parentPath ?? e.path, e.name)).mtimeMs;
    if (m > newest) newest = m;
  }
  return newest;
}

/**
 * 'missing' (no build), 'stale' (a source under src/ or cli/, or the build config, changed after the build
 * started) or 'fresh'. A tree without sources (an image, a package) is 'fresh' when it has a build.
 */
export function buildState(root) {
  let started;
  try {
    started = JSON.parse(readFileSync(join(root, 'dist', 'build.json'), 'utf8')).started;
  } catch {
    return 'missing';
  }
  if (typeof started !== 'number') return 'missing';
  let config = 0;
  for (const f of ['tsconfig.json', 'tsconfig.build.json']) {
    try {
      config = Math.max(config, statSync(join(root, f)).mtimeMs);
    } catch {
      // not in this tree
    }
  }
  const newest = Math.max(config, newestSource(join(root, 'src')), newestSource(join(root, 'cli')));
  return newest > started ? 'stale' : 'fresh';
}
