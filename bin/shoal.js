#!/usr/bin/env node
// Entry point of the `shoal` command: runs the compiled program in dist/ (`npm run build`; `npm ci` builds it).
// In a checkout where a source under src/ or cli/ changed after that build, it runs the TypeScript sources
// through tsx instead (a development install has it), so an edit is never shadowed by an old build.
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { buildState } from './build-state.js';

const root = new URL('..', import.meta.url);
const state = buildState(fileURLToPath(root));
let entry = new URL('dist/shoal.js', root);
if (state !== 'fresh') {
  let tsx;
  try {
    tsx = await import('tsx/esm/api');
  } catch {
    // No tsx: a production install. Run the build there is, or say how to make one.
  }
  if (tsx) {
    tsx.register();
    entry = new URL('cli/main.ts', root);
  } else if (!existsSync(entry)) {
    process.stderr.write('shoal: the compiled program is missing (dist/); run `npm run build` (npm ci runs it)\n');
    process.exit(1);
  }
}
const { main } = await import(entry.href);
process.exitCode = await main(process.argv);
