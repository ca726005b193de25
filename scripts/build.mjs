#!/usr/bin/env node
// Compiles the program into dist/ (`npm run build`; `npm ci` runs it as `prepare`):
//   1. type-checks src/ and cli/ (tsc, tsconfig.build.json);
//   2. bundles cli/main.ts and everything it imports into ES modules (esbuild): dist/shoal.js, plus one chunk
//      per command loaded only when that command runs, so `shoal --help` reads little and `shoal serve` starts
//      without resolving hundreds of module files. Native addons stay outside (EXTERNAL), loaded from
//      node_modules at run time;
//   3. copies the node's web page (src/ui/assets: HTML, CSS, script) to dist/ui/, where src/ui/static.ts finds it;
//   4. writes dist/licenses.txt (the license of every package inside the bundle) and dist/build.json.
//
//   node scripts/build.mjs               all of it
//   node scripts/build.mjs --if-stale    only when a source is newer than the last build (npm start, npm test)
//   node scripts/build.mjs --no-check    skip the type check (the test suite runs its own)
//
// The build goes to a temporary directory that replaces dist/ only when it is complete, so a `shoal` started
// while a build runs never loads half a tree. dist/build.json records when the build started: bin/shoal.js
// compares it with the sources' modification times.
import { spawnSync } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, readFileSync, readdirSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, relative, sep } from 'node:path';
import { fileURLToPath } from 'node:url';
import { buildState } from '../bin/build-state.js';

/** Packages the bundle does not contain: native addons (LevelDB's binding) must be loaded from node_modules. */
const EXTERNAL = ['classic-level'];

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const dist = join(root, 'dist');
const args = new Set(process.argv.slice(2));

function fail(message) {
  process.stderr.write(`build: ${message}\n`);
  process.exit(1);
}

const state = buildState(root);
if (args.has('--if-stale') && state === 'fresh') process.exit(0);

const require = createRequire(join(root, 'package.json'));
let esbuild;
let tsc;
try {
  esbuild = await import(require.resolve('esbuild'));
  tsc = require.resolve('typescript/bin/tsc');
} catch {
  // An install without devDependencies (npm ci --omit=dev) keeps the build it came with.
  if (state !== 'missing') {
    process.stderr.write('build: esbuild and TypeScript are not installed (devDependencies left out); keeping the existing dist/\n');
    process.exit(0);
  }
  fail('esbuild and TypeScript are not installed and there is no dist/: run `npm ci` (with devDependencies), then `npm run build`');
}

const started = Date.now();
if (!args.has('--no-check')) {
  const res = spawnSync(process.execPath, [tsc, '--noEmit', '-p', join(root, 'tsconfig.build.json')], { cwd: root, stdio: 'inherit' });
  if (res.status !== 0) fail(`type check failed (tsc exit ${res.status ?? res.signal}); dist/ is unchanged`);
}

const tmp = join(root, `dist.tmp-${process.pid}`);
rmSync(tmp, { recursive: true, force: true });
mkdirSync(tmp, { recursive: true });
let result;
try {
  result = await esbuild.build({
    absWorkingDir: root,
    entryPoints: { shoal: 'cli/main.ts' },
    outdir: tmp,
    bundle: true,
    splitting: true,
    format: 'esm',
    platform: 'node',
    target: 'node20',
    external: EXTERNAL,
    chunkNames: 'chunks/[name]-[hash]',
    // Bundled CommonJS packages call require() for Node's own modules; an ES module has none of its own.
    banner: { js: "import { createRequire as __shoalCreateRequire } from 'node:module';\nconst require = __shoalCreateRequire(import.meta.url);" },
    legalComments: 'none',
    metafile: true,
    logLevel: 'warning',
  });
} catch (err) {
  rmSync(tmp, { recursive: true, force: true });
  fail(`bundling failed: ${err.message}`);
}

// The web page's files are served as they are: the bundle's chunks find them in dist/ui/.
cpSync(join(root, 'src', 'ui', 'assets'), join(tmp, 'ui'), { recursive: true });

/** The directory of the package a bundled file belongs to, or undefined for our own sources. */
function packageDir(file) {
  const parts = file.split(/[/\\]/);
  const i = parts.lastIndexOf('node_modules');
  if (i < 0) return undefined;
  const n = parts[i + 1]?.startsWith('@') ? 2 : 1;
  return join(root, ...parts.slice(0, i + 1 + n));
}

// Every package whose code is inside the bundle, with its license text.
const packages = new Map();
for (const input of Object.keys(result.metafile.inputs)) {
  const dir = packageDir(input);
  if (dir && !packages.has(dir)) packages.set(dir, JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8')));
}
const notices = [...packages]
  .sort((a, b) => a[1].name.localeCompare(b[1].name))
  .map(([dir, pkg]) => {
    const file = readdirSync(dir).find((f) => /^(licen[cs]e|copying)/i.test(f));
    const text = file ? readFileSync(join(dir, file), 'utf8').trim() : `License: ${pkg.license ?? 'see the package'}`;
    return `${pkg.name}@${pkg.version}\n${'-'.repeat(60)}\n${text}\n`;
  });
writeFileSync(join(tmp, 'licenses.txt'), `Packages bundled into dist/ and their licenses.\n\n${notices.join('\n')}`);
writeFileSync(join(tmp, 'build.json'), JSON.stringify({ started, node: process.version, external: EXTERNAL }) + '\n');

const old = join(root, `dist.old-${process.pid}`);
if (existsSync(dist)) renameSync(dist, old);
renameSync(tmp, dist);
rmSync(old, { recursive: true, force: true });
const shown = relative(process.cwd(), dist) || '.';
process.stderr.write(`build: ${shown}${sep}shoal.js and its chunks (${packages.size} packages bundled) in ${((Date.now() - started) / 1000).toFixed(1)} s\n`);
