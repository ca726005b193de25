/**
 * What can be checked on this amd64 machine of the image's arm64 build (edge machines are often arm64):
 * - the only native addon among the production packages is LevelDB's binding (classic-level): a new one shows
 *   up here and must pass the same checks;
 * - it ships a prebuilt binary for linux-arm64 that is an AArch64 ELF needing no newer glibc than Debian 12's
 *   (2.36), and one for linux-x64 likewise, so `npm ci` on either needs no compiler;
 * - the build stage's own native tool, esbuild, has its linux-arm64 package in the lockfile;
 * - deploy/Dockerfile names no architecture (its base, the Node image, is published for both).
 * What cannot be checked here: building the arm64 image and running it. Its RUN steps execute arm64 binaries,
 * which needs binfmt_misc with a qemu-aarch64 handler; that is kernel state shared by the whole machine, not
 * set up in this sandbox, and no arm64 Node.js is at hand to make an offline arm64 base.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { readFile, readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { ROOT } from '../helpers/deploy.ts';

const EM_X86_64 = 62;
const EM_AARCH64 = 183;
/** Debian 12's glibc. */
const GLIBC_MAX = [2, 36];

interface Lock {
  packages: Record<string, { version?: string; dev?: boolean; optional?: boolean; os?: string[]; cpu?: string[] }>;
}

async function filesUnder(dir: string): Promise<string[]> {
  return (await readdir(dir, { recursive: true })).map(String);
}

/** ELF class, machine and the newest GLIBC_x.y symbol version a shared object needs. */
async function elfInfo(path: string): Promise<{ is64: boolean; machine: number; glibc: number[] }> {
  const b = await readFile(path);
  assert.equal(b.subarray(0, 4).toString('latin1'), '\x7fELF', `${path} is an ELF file`);
  const littleEndian = b[5] === 1;
  const machine = littleEndian ? b.readUInt16LE(18) : b.readUInt16BE(18);
  let glibc = [0, 0];
  for (const m of b.toString('latin1').matchAll(/GLIBC_(\d+)\.(\d+)/g)) {
    const v = [Number(m[1]), Number(m[2])];
    if (v[0]! > glibc[0]! || (v[0] === glibc[0] && v[1]! > glibc[1]!)) glibc = v;
  }
  return { is64: b[4] === 2, machine, glibc };
}

describe('arm64: what this amd64 machine can check', () => {
  it('the only native addon of the production packages is LevelDB\'s, with prebuilt linux-arm64 and linux-x64 binaries for Debian 12', async () => {
    const lock = JSON.parse(await readFile(join(ROOT, 'package-lock.json'), 'utf8')) as Lock;
    const native: string[] = [];
    for (const [path, entry] of Object.entries(lock.packages)) {
      if (!path || entry.dev || entry.os || entry.cpu) continue;
      const dir = join(ROOT, path);
      const files = await filesUnder(dir).catch(() => [] as string[]);
      if (files.some((f) => f === 'binding.gyp' || f.endsWith('.node'))) native.push(path);
    }
    assert.deepEqual(native, ['node_modules/classic-level']);
    const prebuilds = join(ROOT, 'node_modules/classic-level/prebuilds');
    for (const [platform, machine] of [['linux-arm64', EM_AARCH64], ['linux-x64', EM_X86_64]] as const) {
      const binaries = (await readdir(join(prebuilds, platform))).filter((f) => f.endsWith('.node') && !f.includes('musl'));
      assert.ok(binaries.length > 0, `a ${platform} prebuild`);
      for (const f of binaries) {
        const info = await elfInfo(join(prebuilds, platform, f));
        assert.ok(info.is64, `${platform}/${f} is 64-bit`);
        assert.equal(info.machine, machine, `${platform}/${f} is for ${platform}`);
        const [major, minor] = info.glibc;
        assert.ok(major! < GLIBC_MAX[0]! || (major === GLIBC_MAX[0] && minor! <= GLIBC_MAX[1]!), `${platform}/${f} needs glibc ${info.glibc.join('.')}, Debian 12 has ${GLIBC_MAX.join('.')}`);
        assert.ok((await stat(join(prebuilds, platform, f))).size > 0);
      }
    }
  });

  it('the build stage\'s esbuild has its linux-arm64 binary package in the lockfile', async () => {
    const lock = JSON.parse(await readFile(join(ROOT, 'package-lock.json'), 'utf8')) as Lock;
    const arm = lock.packages['node_modules/@esbuild/linux-arm64'];
    assert.ok(arm, '@esbuild/linux-arm64 is locked');
    assert.deepEqual([arm.os, arm.cpu], [['linux'], ['arm64']]);
    assert.equal(arm.version, lock.packages['node_modules/esbuild']!.version);
  });

  it('deploy/Dockerfile names no architecture', async () => {
    const text = (await readFile(join(ROOT, 'deploy/Dockerfile'), 'utf8')).split('\n').filter((l) => !l.trimStart().startsWith('#')).join('\n');
    assert.doesNotMatch(text, /amd64|x86_64|x64|arm64|aarch64|--platform/i);
  });
});
