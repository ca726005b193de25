#!/usr/bin/env node
// Writes the tree the program runs from, after `npm run build`, into OUT (the image's runtime stage copies it):
//   OUT/bin/            the `shoal` entry point
//   OUT/dist/           the bundle, its chunks, licenses.txt, build.json
//   OUT/node_modules/   only the packages the bundle leaves outside (dist/build.json: "external", e.g. LevelDB's
//                       native binding) and what they require, resolved from package-lock.json as npm placed them
//   OUT/package.json    name, version, license, "type": "module"
//
//   node scripts/runtime-tree.mjs OUT
import { cpSync, existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const out = process.argv[2];
if (!out) {
  process.stderr.write('usage: node scripts/runtime-tree.mjs OUT\n');
  process.exit(2);
}
const build = JSON.parse(readFileSync(join(root, 'dist', 'build.json'), 'utf8'));
const lock = JSON.parse(readFileSync(join(root, 'package-lock.json'), 'utf8'));
const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8'));

/** Where npm put `name` for a package at `from` (a lockfile path): the nearest node_modules up the tree. */
function resolve(name, from) {
  for (let base = from; ; ) {
    const candidate = `${base ? `${base}/` : ''}node_modules/${name}`;
    if (lock.packages[candidate]) return candidate;
    if (!base) return undefined;
    const at = base.lastIndexOf('node_modules/');
    base = at <= 0 ? '' : base.slice(0, at - 1);
  }
}

const needed = new Set();
const queue = build.external.map((name) => {
  const at = resolve(name, '');
  if (!at) throw new Error(`${name} (outside the bundle) is not in package-lock.json`);
  return at;
});
while (queue.length > 0) {
  const at = queue.pop();
  if (needed.has(at)) continue;
  const entry = lock.packages[at];
  if (entry.dev) throw new Error(`${at} is a devDependency, but the runtime needs it`);
  needed.add(at);
  for (const dep of Object.keys({ ...entry.dependencies, ...entry.optionalDependencies })) {
    const found = resolve(dep, at);
    if (found) queue.push(found);
    else if (!entry.optionalDependencies?.[dep]) throw new Error(`${at} requires ${dep}, which package-lock.json does not have`);
  }
}

rmSync(out, { recursive: true, force: true });
mkdirSync(out, { recursive: true });
cpSync(join(root, 'bin'), join(out, 'bin'), { recursive: true });
cpSync(join(root, 'dist'), join(out, 'dist'), { recursive: true });
for (const at of [...needed].sort()) {
  if (!existsSync(join(root, at))) throw new Error(`${at} is not installed: run npm ci first`);
  cpSync(join(root, at), join(out, at), { recursive: true, dereference: true });
}
writeFileSync(
  join(out, 'package.json'),
  JSON.stringify({ name: pkg.name, version: pkg.version, description: pkg.description, license: pkg.license, type: 'module', private: true, bin: pkg.bin, engines: pkg.engines }, null, 2) + '\n',
);
process.stderr.write(`runtime tree in ${out}: bin/, dist/, ${needed.size} package(s) in node_modules (${[...needed].map((p) => p.slice(p.lastIndexOf('node_modules/') + 13)).join(', ')})\n`);
