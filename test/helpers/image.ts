/**
 * Building deploy/Dockerfile on a machine without a reachable image registry, as test/integration/image.test.ts
 * does: the base comes from scripts/offline-base.sh (mmdebstrap + this machine's Node.js), the npm packages from
 * an npm cache filled on the host, and podman builds with vfs storage and chroot isolation (podman cannot start
 * OCI runtime containers in this kind of sandbox; RUN steps under chroot isolation need none).
 *
 * The slow inputs are cached between runs, keyed by content, under SHOAL_TEST_CACHE (default
 * /var/tmp/shoal-test-cache): the base root filesystem (by the script, the apt sources, the Node binary and npm)
 * and the npm cache (by package-lock.json). Everything else lives in a temp dir per run.
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { copyFile, mkdir, mkdtemp, readFile, readdir, rename, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { promisify } from 'node:util';
import { ROOT } from './deploy.ts';

const execFileP = promisify(execFile);

export const CACHE = process.env.SHOAL_TEST_CACHE ?? '/var/tmp/shoal-test-cache';

/** Runs a command; a failure carries its output's tail. */
export async function run(cmd: string, args: string[], opts: { env?: NodeJS.ProcessEnv; cwd?: string; timeoutMs?: number } = {}): Promise<string> {
  try {
    const r = await execFileP(cmd, args, { env: opts.env ?? process.env, cwd: opts.cwd, timeout: opts.timeoutMs ?? 600_000, killSignal: 'SIGKILL', maxBuffer: 64 << 20 });
    return r.stdout + r.stderr;
  } catch (err) {
    const e = err as { stdout?: string; stderr?: string; killed?: boolean; code?: unknown };
    const out = `${e.stdout ?? ''}${e.stderr ?? ''}`.trim().split('\n').slice(-40).join('\n');
    throw new Error(`${cmd} ${args.join(' ')}: ${e.killed ? 'killed after its timeout' : `exit ${String(e.code)}`}\n${out}`, { cause: err });
  }
}

async function sha256File(path: string): Promise<string> {
  const h = createHash('sha256');
  await pipeline(createReadStream(path), h);
  return h.digest('hex');
}

async function exists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    () => false,
  );
}

/** The apt sources scripts/offline-base.sh uses on this machine. */
async function aptSources(): Promise<string> {
  for (const f of ['/etc/apt/sources.list.d/debian.sources', '/etc/apt/sources.list']) {
    const text = await readFile(f, 'utf8').catch(() => '');
    if (text.trim()) return text;
  }
  return '';
}

/** The base root filesystem tar (Debian + this machine's Node.js and npm), made once per content key. */
export async function offlineBase(): Promise<{ tar: string; key: string }> {
  const node = process.execPath;
  const script = join(ROOT, 'scripts', 'offline-base.sh');
  const npmVersion = (await run(node, ['-p', "require(require('path').join(require('path').dirname(process.execPath), '../lib/node_modules/npm/package.json')).version"]).catch(() => 'unknown')).trim();
  const key = createHash('sha256')
    .update(await readFile(script))
    .update(await aptSources())
    .update(await sha256File(node))
    .update(npmVersion)
    .digest('hex')
    .slice(0, 16);
  await mkdir(CACHE, { recursive: true });
  const tar = join(CACHE, `base-${key}.tar`);
  if (await exists(tar)) return { tar, key };
  // mmdebstrap picks its output format from the name: it must end in .tar.
  const partial = join(CACHE, `base-${key}.partial-${process.pid}.tar`);
  await run('bash', [script, partial], { env: { ...process.env, NODE: node }, timeoutMs: 1_200_000 });
  await rename(partial, tar);
  // Older bases are of no more use.
  for (const f of await readdir(CACHE)) if (f.startsWith('base-') && join(CACHE, f) !== tar) await rm(join(CACHE, f), { recursive: true, force: true });
  return { tar, key };
}

/** An npm cache holding every package of package-lock.json (filled on the host, which reaches the registry). */
export async function npmCache(): Promise<string> {
  const dir = join(CACHE, 'npm');
  const lockHash = (await sha256File(join(ROOT, 'package-lock.json'))).slice(0, 16);
  const marker = join(dir, `.filled-${lockHash}`);
  if (await exists(marker)) return dir;
  await mkdir(dir, { recursive: true });
  const work = await mkdtemp(join(tmpdir(), 'shoal-npmfill-'));
  try {
    for (const f of ['package.json', 'package-lock.json']) await copyFile(join(ROOT, f), join(work, f));
    await run('npm', ['ci', '--prefer-offline', '--ignore-scripts', '--no-audit', '--no-fund', '--cache', dir], { cwd: work, timeoutMs: 900_000 });
  } finally {
    await rm(work, { recursive: true, force: true });
  }
  await writeFile(marker, new Date().toISOString() + '\n');
  return dir;
}

/** podman with its own vfs storage and configuration under `dir`; nothing of the host's podman state is used. */
export async function isolatedPodman(dir: string): Promise<(args: string[], timeoutMs?: number) => Promise<string>> {
  for (const d of ['root', 'run', 'tmp', 'net']) await mkdir(join(dir, d), { recursive: true });
  await writeFile(join(dir, 'storage.conf'), `[storage]\ndriver = "vfs"\ngraphroot = "${join(dir, 'root')}"\nrunroot = "${join(dir, 'run')}"\n`);
  await writeFile(join(dir, 'containers.conf'), `[engine]\ncgroup_manager = "cgroupfs"\nevents_logger = "file"\n[network]\nnetwork_config_dir = "${join(dir, 'net')}"\n`);
  await writeFile(join(dir, 'policy.json'), JSON.stringify({ default: [{ type: 'insecureAcceptAnything' }] }));
  const env: NodeJS.ProcessEnv = {
    PATH: process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin',
    HOME: dir,
    TMPDIR: join(dir, 'tmp'),
    XDG_RUNTIME_DIR: join(dir, 'run'),
    CONTAINERS_CONF: join(dir, 'containers.conf'),
    CONTAINERS_STORAGE_CONF: join(dir, 'storage.conf'),
    CONTAINERS_POLICY: join(dir, 'policy.json'),
  };
  const base = ['--root', join(dir, 'root'), '--runroot', join(dir, 'run'), '--tmpdir', join(dir, 'tmp'), '--storage-driver', 'vfs'];
  return (args, timeoutMs) => run('podman', [...base, ...args], { env, cwd: ROOT, timeoutMs });
}

/** The image config of an OCI layout's only image: entry point, command, user, environment, working dir. */
export interface ImageConfig {
  architecture: string;
  os: string;
  config: { User?: string; Entrypoint?: string[]; Cmd?: string[]; Env?: string[]; WorkingDir?: string; ExposedPorts?: Record<string, unknown> };
}

export async function readImageConfig(layout: string): Promise<{ refName: string; config: ImageConfig }> {
  const blob = (digest: string): Promise<Buffer> => readFile(join(layout, 'blobs', ...digest.split(':')));
  const index = JSON.parse(await readFile(join(layout, 'index.json'), 'utf8')) as { manifests: Array<{ digest: string; annotations?: Record<string, string> }> };
  const [entry] = index.manifests;
  if (!entry || index.manifests.length !== 1) throw new Error(`${layout}: expected one image, found ${index.manifests.length}`);
  const manifest = JSON.parse((await blob(entry.digest)).toString('utf8')) as { config: { digest: string } };
  return { refName: entry.annotations?.['org.opencontainers.image.ref.name'] ?? '', config: JSON.parse((await blob(manifest.config.digest)).toString('utf8')) as ImageConfig };
}

