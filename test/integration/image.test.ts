/**
 * deploy/Dockerfile builds and runs on this kind of machine, with no registry to pull a base from:
 * - the base is made offline (scripts/offline-base.sh: a Debian root filesystem from mmdebstrap plus this
 *   machine's Node.js) and given to the build as --build-arg BASE; npm packages come from a filled npm cache
 *   mounted into the build stage (NPM_CONFIG_OFFLINE=true);
 * - podman builds it with vfs storage (chroot isolation: podman cannot start OCI runtime containers here);
 * - the runtime stage holds the base, the compiled program and the production packages the bundle needs, no
 *   TypeScript, no sources, no build tools; it runs as user 10001 with `shoal` as its entry point;
 * - a container from it answers /v2/ and pulls an image through a seed. `podman run` cannot start containers in
 *   this sandbox (runc: "error setting rlimit type 6/7"), so the image is saved, unpacked with umoci, and its
 *   entry point is run in that root filesystem with unshare (mount and pid namespaces) and chroot, as its user,
 *   with its environment and working directory, on the host's network;
 * - containerd imports the saved image under the name the DaemonSet uses.
 * The base and the npm cache are kept between runs (test/helpers/image.ts); the first run takes minutes more.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdir, mkdtemp, readFile, readdir, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildImageLayout, type ImageLayout } from '../fixtures/images.ts';
import { startContainerd } from '../helpers/containerd.ts';
import { DEPLOY, ROOT, loadYamlDir } from '../helpers/deploy.ts';
import { isolatedPodman, npmCache, offlineBase, readImageConfig, run, type ImageConfig } from '../helpers/image.ts';
import { assertLayoutHolds } from '../helpers/layout.ts';
import { freePort, startDockerRegistry, type DockerRegistry } from '../helpers/seed-registry.ts';
import { skopeoIn } from '../helpers/skopeo.ts';
import { eachLine } from '../helpers/spawn-node.ts';

const IMAGE = 'localhost/shoal:0.1.0';

describe('deploy/Dockerfile: built by podman from an offline base, run from its root filesystem', { concurrency: 1, timeout: 1_800_000 }, () => {
  let work = '';
  let archive = '';
  let rootfs = '';
  let image: ImageConfig;
  let refName = '';
  let seed: DockerRegistry | undefined;
  let layout: ImageLayout;
  let container: ChildProcess | undefined;

  before(async () => {
    const [{ tar: base, key }, cache] = await Promise.all([offlineBase(), npmCache()]);
    work = await mkdtemp(join(tmpdir(), 'shoal-image-'));
    const podman = await isolatedPodman(join(work, 'podman'));
    const baseName = `localhost/shoal-base:${key}`;
    await podman(['import', '--change', 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', base, baseName]);
    await podman(
      [
        'build',
        '--layers=false',
        '--isolation', 'chroot',
        '--volume', `${cache}:/root/.npm`,
        '--build-arg', `BASE=${baseName}`,
        '--build-arg', 'NPM_CONFIG_OFFLINE=true',
        '--file', join(DEPLOY, 'Dockerfile'),
        '--tag', IMAGE,
        ROOT,
      ],
      1_200_000,
    );
    archive = join(work, 'shoal.tar');
    await podman(['save', '--format', 'oci-archive', '--output', archive, IMAGE]);
    // The podman storage (hundreds of MB with vfs) is not needed any more.
    await rm(join(work, 'podman'), { recursive: true, force: true });
    const oci = join(work, 'oci');
    await mkdir(oci);
    await run('tar', ['-xf', archive, '-C', oci]);
    ({ refName, config: image } = await readImageConfig(oci));
    await run('umoci', ['unpack', '--image', `${oci}:${refName}`, join(work, 'bundle')]);
    rootfs = join(work, 'bundle', 'rootfs');

    seed = await startDockerRegistry();
    layout = await buildImageLayout(join(work, 'layout'));
    const skopeo = await skopeoIn(join(work, 'skopeo'));
    await skopeo('copy', '--all', '--retry-times', '0', '--dest-tls-verify=false', `oci:${layout.dir}:multi`, `docker://${seed.hostPort}/library/app:v1`);
  });

  after(async () => {
    if (container && container.exitCode === null && container.signalCode === null) {
      const exited = new Promise((ok) => container!.once('exit', ok));
      container.kill('SIGKILL');
      await exited;
    }
    await seed?.stop();
    if (work) await rm(work, { recursive: true, force: true, maxRetries: 3 });
  });

  it('is named as the DaemonSet names it, runs as user 10001, with `shoal serve` as its entry point', async () => {
    assert.equal(refName, IMAGE);
    const ds = (await loadYamlDir(DEPLOY)).map((s) => s.object).find((o) => o.kind === 'DaemonSet') as unknown as { spec: { template: { spec: { containers: Array<{ image: string }> } } } };
    assert.equal(ds.spec.template.spec.containers[0]!.image, IMAGE);
    assert.equal(image.config.User, '10001:10001');
    assert.deepEqual(image.config.Entrypoint, ['node', '/opt/shoal/bin/shoal.js']);
    assert.equal(image.config.Cmd?.[0], 'serve');
    assert.equal(image.os, 'linux');
    assert.equal((await stat(join(rootfs, 'var/lib/shoal'))).uid, 10001, 'the data directory belongs to that user');
  });

  it('holds the compiled program and only the production packages it needs: no TypeScript, no sources, no build tools', async () => {
    const app = join(rootfs, 'opt/shoal');
    assert.deepEqual((await readdir(app)).sort(), ['bin', 'dist', 'node_modules', 'package.json']);
    const files = (await readdir(app, { recursive: true })).map(String);
    assert.deepEqual(files.filter((f) => /\.ts$/.test(f) && !f.endsWith('.d.ts')), [], 'no TypeScript sources');
    const lock = JSON.parse(await readFile(join(ROOT, 'package-lock.json'), 'utf8')) as { packages: Record<string, { dev?: boolean }> };
    const packages = files.filter((f) => /(^|\/)node_modules\/(@[^/]+\/)?[^/@]+$/.test(f) && !f.endsWith('/.bin'));
    assert.ok(packages.includes('node_modules/classic-level'), 'LevelDB\'s binding is there');
    for (const p of packages) {
      assert.ok(lock.packages[p], `${p} is a package of the lockfile`);
      assert.ok(!lock.packages[p]!.dev, `${p} is a production package`);
    }
    for (const tool of ['typescript', 'tsx', 'esbuild', 'kubernetes-models', '@types']) assert.ok(!packages.some((p) => p.endsWith(`node_modules/${tool}`)), `no ${tool}`);
    assert.ok(files.includes('dist/shoal.js') && files.includes('dist/licenses.txt'));
  });

  it('a container from it answers /v2/ and pulls an image through a seed', async () => {
    const port = await freePort();
    const env = image.config.Env ?? [];
    const user = image.config.User!;
    // The image's entry point, with `serve` and this test's addresses as its command.
    const command = [...image.config.Entrypoint!, 'serve', '--listen', `127.0.0.1:${port}`, '--seed', seed!.url];
    // The first process of the new pid namespace is a shell that keeps root's credentials, so unshare's
    // --kill-child reaches it (a change of user, as chroot --userspec makes, clears that signal); when it dies,
    // the kernel ends every process of the namespace: the node goes with it even if this test dies first.
    const argv = [
      '--mount', '--propagation', 'private', '--pid', '--fork', '--kill-child', `--mount-proc=${join(rootfs, 'proc')}`,
      '/bin/sh', '-c', 'user=$1 root=$2; shift 2; chroot --userspec="$user" "$root" "$@" & wait $!', 'sh', user, rootfs,
      '/usr/bin/env', '-i', '-C', image.config.WorkingDir ?? '/', ...env, ...command,
    ];
    container = spawn('unshare', argv, { stdio: ['ignore', 'pipe', 'pipe'] });
    const logs: Array<Record<string, unknown>> = [];
    let stderr = '';
    eachLine(container.stdout!, (l) => {
      try {
        logs.push(JSON.parse(l) as Record<string, unknown>);
      } catch {
        // not a log line
      }
    });
    container.stderr!.setEncoding('utf8').on('data', (c: string) => (stderr += c));
    const deadline = Date.now() + 60_000;
    while (!logs.some((l) => l.msg === 'listening')) {
      assert.ok(container.exitCode === null, `the container exited (${container.exitCode}): ${stderr}`);
      assert.ok(Date.now() < deadline, `no "listening" line within 60 s: ${stderr}`);
      await new Promise((ok) => setTimeout(ok, 100));
    }
    const listening = logs.find((l) => l.msg === 'listening')!;
    assert.equal(listening.dataDir, '/var/lib/shoal', 'the data directory of the image');
    const v2 = await fetch(`http://127.0.0.1:${port}/v2/`);
    assert.equal(v2.status, 200);
    assert.equal(v2.headers.get('docker-distribution-api-version'), 'registry/2.0');
    // The node's web page ships in the image (dist/ui).
    const page = await fetch(`http://127.0.0.1:${port}/ui/`);
    assert.equal(page.status, 200);
    assert.match(await page.text(), /<title>Shoal node<\/title>/);
    assert.equal((await fetch(`http://127.0.0.1:${port}/ui/app.js`)).status, 200);

    const skopeo = await skopeoIn(join(work, 'skopeo-pull'));
    await skopeo('copy', '--all', '--retry-times', '0', '--src-tls-verify=false', `docker://127.0.0.1:${port}/library/app:v1`, `oci:${join(work, 'pulled')}:v1`);
    await assertLayoutHolds(join(work, 'pulled'), 'v1', layout.multi);
    assert.ok(logs.some((l) => l.msg === 'request' && String(l.path).startsWith('/v2/library/app/blobs/') && l.status === 200));
    const metrics = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
    assert.match(metrics, /^shoal_pull_bytes_total\{source="seed"\} [1-9]/m, 'the blobs came through the seed');
  });

  it('containerd imports the saved image under the DaemonSet\'s image name', async () => {
    const dir = join(work, 'c');
    await mkdir(dir);
    const containerd = await startContainerd(dir);
    try {
      await containerd.ctrOk(['images', 'import', '--snapshotter', 'native', archive], { timeoutMs: 120_000 });
      assert.ok((await containerd.ctrOk(['images', 'ls', '-q'])).split('\n').includes(IMAGE));
    } finally {
      await containerd.stop();
    }
  });
});
