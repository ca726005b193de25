/**
 * Real clients against a real Shoal node: skopeo and podman push the offline fixtures
 * (test/fixtures/images.ts) and pull them back, byte for byte.
 *
 * Every client runs hermetically: its own trust policy, registries.conf, auth file, TMPDIR and
 * (podman) vfs storage under one temp dir that `after` removes. Nothing touches the host's
 * image storage.
 *
 * Debugging aid: SHOAL_CLIENTS_TEST_REGISTRY=host:port runs the same checks against another
 * registry (e.g. the CNCF distribution registry) instead of starting a Shoal node.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, readFile, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { startTestNode, type TestNode } from '../helpers/node.ts';
import { buildImageLayout, blobPath, REF_NAME_ANNOTATION, type FixtureImage, type ImageLayout } from '../fixtures/images.ts';
import { cleanUp } from '../helpers/cleanup.ts';

const execFileP = promisify(execFile);
const sha = (b: Buffer) => `sha256:${createHash('sha256').update(b).digest('hex')}`;
const EXEC_TIMEOUT_MS = 120_000;

interface RunResult {
  stdout: Buffer;
  stderr: string;
}

/** Runs a command (no shell) with a timeout; a failure names the command and carries its stderr. */
async function run(cmd: string, args: string[], env: NodeJS.ProcessEnv): Promise<RunResult> {
  try {
    const r = await execFileP(cmd, args, { env, timeout: EXEC_TIMEOUT_MS, killSignal: 'SIGKILL', encoding: 'buffer', maxBuffer: 64 << 20 });
    return { stdout: r.stdout, stderr: r.stderr.toString() };
  } catch (err) {
    const e = err as NodeJS.ErrnoException & { stderr?: Buffer; stdout?: Buffer; killed?: boolean; code?: unknown };
    const why = e.killed ? `killed after ${EXEC_TIMEOUT_MS} ms` : `exit ${String(e.code)}`;
    const stderr = e.stderr?.toString().trim() ?? '';
    throw new Error(`${cmd} ${args.join(' ')}: ${why}${stderr ? `\n${stderr}` : ''}`, { cause: err });
  }
}

const text = async (p: Promise<RunResult>) => (await p).stdout.toString().trim();

describe('real clients (skopeo, podman) against a Shoal node', () => {
  let work = '';
  let layout: ImageLayout;
  let node: TestNode | undefined;
  let hostPort = '';
  let env: NodeJS.ProcessEnv = {};
  let policy = '';

  const skopeo = (...args: string[]) => run('skopeo', ['--policy', policy, ...args], env);

  before(async () => {
    // Lowercase on purpose: `podman pull oci:DIR:tag` names the image after DIR.
    work = join(tmpdir(), `shoal-clients-${randomBytes(6).toString('hex')}`);
    await mkdir(work, { mode: 0o700 });
    for (const d of ['tmp', 'podman/root', 'podman/run', 'podman/tmp', 'podman/net', 'out']) await mkdir(join(work, d), { recursive: true });
    layout = await buildImageLayout(join(work, 'layout'));

    policy = join(work, 'policy.json');
    await writeFile(policy, JSON.stringify({ default: [{ type: 'insecureAcceptAnything' }] }));
    await writeFile(join(work, 'registries.conf'), 'unqualified-search-registries = []\n');
    await writeFile(
      join(work, 'storage.conf'),
      `[storage]\ndriver = "vfs"\ngraphroot = "${join(work, 'podman/root')}"\nrunroot = "${join(work, 'podman/run')}"\n`,
    );
    await writeFile(join(work, 'auth.json'), '{"auths":{}}\n'); // podman insists that it exists
    await writeFile(join(work, 'containers.conf'), `[engine]\ncgroup_manager = "cgroupfs"\nevents_logger = "file"\n[network]\nnetwork_config_dir = "${join(work, 'podman/net')}"\n`);
    env = {
      PATH: process.env.PATH ?? '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
      HOME: work,
      TMPDIR: join(work, 'tmp'),
      XDG_RUNTIME_DIR: join(work, 'podman/run'),
      XDG_CONFIG_HOME: join(work, 'config'),
      XDG_DATA_HOME: join(work, 'data'),
      REGISTRY_AUTH_FILE: join(work, 'auth.json'),
      CONTAINERS_REGISTRIES_CONF: join(work, 'registries.conf'),
      CONTAINERS_STORAGE_CONF: join(work, 'storage.conf'),
      CONTAINERS_CONF: join(work, 'containers.conf'),
    };

    const external = process.env.SHOAL_CLIENTS_TEST_REGISTRY;
    if (external) {
      hostPort = external;
    } else {
      node = await startTestNode();
      hostPort = node.hostPort;
    }
  });

  after(async () => {
    await cleanUp('clients test', [() => node?.stop(), () => (work ? rm(work, { recursive: true, force: true }) : undefined)]);
  });

  /** Pushes one fixture tag from the layout to docker://hostPort/repo:tag, keeping every digest. */
  async function skopeoPush(img: FixtureImage, repoTag: string) {
    await skopeo('copy', '--all', '--preserve-digests', '--retry-times', '0', '--dest-tls-verify=false', `oci:${layout.dir}:${img.tag}`, `docker://${hostPort}/${repoTag}`);
  }

  async function rawManifest(ref: string): Promise<Buffer> {
    return (await skopeo('inspect', '--raw', '--tls-verify=false', `docker://${hostPort}/${ref}`)).stdout;
  }

  /** Asserts that an OCI layout dir holds `img` under its tag with every blob byte-identical. */
  async function assertLayoutHolds(dir: string, img: FixtureImage) {
    const index = JSON.parse(await readFile(join(dir, 'index.json'), 'utf8')) as { manifests: Array<{ digest: string; size: number; mediaType: string; annotations?: Record<string, string> }> };
    const entry = index.manifests.find((m) => m.annotations?.[REF_NAME_ANNOTATION] === img.tag);
    assert.ok(entry, `${img.tag} is tagged in ${dir}/index.json`);
    assert.equal(entry.digest, img.digest, `${img.tag}: pulled digest`);
    assert.equal(entry.size, img.size);
    assert.equal(entry.mediaType, img.mediaType);
    assert.deepEqual(await readFile(blobPath(dir, img.digest)), img.bytes, `${img.tag}: pulled manifest bytes`);
    for (const m of img.manifests) assert.deepEqual(await readFile(blobPath(dir, m.digest)), m.bytes, `${img.tag}: child manifest ${m.digest}`);
    for (const b of img.allBlobs) {
      const data = await readFile(blobPath(dir, b.digest));
      assert.equal(data.length, b.size, `${img.tag}: size of ${b.digest}`);
      assert.equal(sha(data), b.digest, `${img.tag}: content of ${b.digest}`);
    }
    const raw = await skopeo('inspect', '--raw', `oci:${dir}:${img.tag}`);
    assert.deepEqual(raw.stdout, img.bytes);
  }

  it('skopeo: pushes a multi-arch index, an image and an artifact, and pulls them back byte-identical', { timeout: 600_000 }, async () => {
    const pushes: Array<[FixtureImage, string]> = [
      [layout.multi, 'test/multi:v1'],
      [layout.single, 'test/single:v1'],
      // The artifact lives in its subject's repository, where referrers are looked up.
      [layout.sbom, 'test/single:sbom'],
    ];
    for (const [img, ref] of pushes) await skopeoPush(img, ref);

    // The registry serves exactly the bytes pushed, by tag and by digest.
    for (const [img, ref] of pushes) {
      const repo = ref.split(':')[0]!;
      assert.deepEqual(await rawManifest(ref), img.bytes, `${ref}: manifest bytes by tag`);
      assert.deepEqual(await rawManifest(`${repo}@${img.digest}`), img.bytes, `${ref}: manifest bytes by digest`);
      for (const m of img.manifests) assert.deepEqual(await rawManifest(`${repo}@${m.digest}`), m.bytes, `${ref}: child ${m.digest}`);
    }

    // skopeo inspect (which reads the config blob) by digest, for each platform of the index.
    for (const m of layout.multi.manifests) {
      const info = JSON.parse(await text(skopeo('inspect', '--tls-verify=false', `docker://${hostPort}/test/multi@${m.digest}`)));
      assert.equal(info.Digest, m.digest);
      assert.equal(info.Architecture, m.platform!.architecture);
      assert.deepEqual(info.Layers, m.layers.map((l) => l.digest));
    }
    const arm = layout.multi.manifests[1]!;
    const viaIndex = JSON.parse(
      await text(skopeo('--override-arch', 'arm64', '--override-os', 'linux', 'inspect', '--tls-verify=false', `docker://${hostPort}/test/multi:v1`)),
    );
    assert.deepEqual(viaIndex.Layers, arm.layers.map((l) => l.digest), 'index resolves to the arm64 manifest');
    const single = JSON.parse(await text(skopeo('inspect', '--tls-verify=false', `docker://${hostPort}/test/single@${layout.single.digest}`)));
    assert.equal(single.Digest, layout.single.digest);
    assert.deepEqual(single.Layers, layout.single.manifests[0]!.layers.map((l) => l.digest));

    // Tags.
    const tags = async (repo: string) => (JSON.parse(await text(skopeo('list-tags', '--tls-verify=false', `docker://${hostPort}/${repo}`))).Tags as string[]).sort();
    assert.deepEqual(await tags('test/multi'), ['v1']);
    assert.deepEqual(await tags('test/single'), ['sbom', 'v1']);

    // Pull everything back into a fresh layout and compare bytes.
    const out = join(work, 'out', 'skopeo');
    for (const [img, ref] of pushes) {
      await skopeo('copy', '--all', '--preserve-digests', '--retry-times', '0', '--src-tls-verify=false', `docker://${hostPort}/${ref}`, `oci:${out}:${img.tag}`);
    }
    for (const [img] of pushes) await assertLayoutHolds(out, img);
    const pulled = (await readdir(join(out, 'blobs', 'sha256'))).sort();
    assert.deepEqual(pulled, layout.files.map((f) => f.digest.slice('sha256:'.length)).sort(), 'exactly the fixture blobs came back');
  });

  it('podman: pushes an image, pulls it back with the same digest, and pulls one platform of an index', { timeout: 600_000 }, async () => {
    const podmanArgs = [
      '--root', join(work, 'podman/root'),
      '--runroot', join(work, 'podman/run'),
      '--tmpdir', join(work, 'podman/tmp'),
      '--storage-driver', 'vfs',
      '--cgroup-manager', 'cgroupfs',
      '--events-backend', 'file',
    ];
    const podman = (...args: string[]) => run('podman', [...podmanArgs, ...args], env);
    // Hidden in `--help` but supported by podman pull/push: keep the host's policy.json out of it.
    const pol = ['--signature-policy', policy];

    try {
      await podman('info', '--format', '{{.Store.GraphDriverName}}');
    } catch (err) {
      throw new Error(
        'podman cannot run in this environment, so the podman client test cannot run. ' +
          `It was started rootful with vfs storage under ${work} (--root/--runroot/--storage-driver vfs, ` +
          'cgroupfs, file events). Fix the environment (install podman with scripts/test-deps.sh, run as root) ' +
          `rather than skipping: ${(err as Error).message}`,
        { cause: err },
      );
    }

    const single = layout.single.manifests[0]!;
    const configHex = single.config.digest.slice('sha256:'.length);

    // Load the fixture into podman's (temp) storage straight from the OCI layout.
    const loadedId = await text(podman('pull', ...pol, '-q', `oci:${layout.dir}:single`));
    assert.equal(loadedId, configHex, 'image ID is the config digest');

    // Push it to Shoal.
    const digestFile = join(work, 'podman-push.digest');
    await podman('push', ...pol, '--tls-verify=false', '--digestfile', digestFile, loadedId, `${hostPort}/test/podman:v1`);
    const pushedDigest = (await readFile(digestFile, 'utf8')).trim();
    assert.match(pushedDigest, /^sha256:[a-f0-9]{64}$/);

    // The registry serves a manifest whose digest is what podman reported, for the same config.
    const served = await rawManifest('test/podman:v1');
    assert.equal(sha(served), pushedDigest, 'registry manifest digest == podman --digestfile');
    const manifest = JSON.parse(served.toString());
    assert.equal(manifest.config.digest, single.config.digest);
    assert.equal(manifest.layers.length, single.layers.length);
    const info = JSON.parse(await text(skopeo('inspect', '--tls-verify=false', `docker://${hostPort}/test/podman:v1`)));
    assert.equal(info.Digest, pushedDigest);

    // Forget the image, pull it back from Shoal, compare.
    await podman('rmi', '--all', '--force');
    assert.equal(await text(podman('images', '-q')), '');
    const pulledId = await text(podman('pull', ...pol, '-q', '--tls-verify=false', `${hostPort}/test/podman:v1`));
    assert.equal(pulledId, configHex);
    const inspected = JSON.parse(await text(podman('image', 'inspect', `${hostPort}/test/podman:v1`)))[0];
    assert.equal(inspected.Id, configHex);
    assert.equal(inspected.Digest, pushedDigest, 'pulled image digest == pushed digest');
    assert.ok((inspected.RepoDigests as string[]).includes(`${hostPort}/test/podman@${pushedDigest}`), `RepoDigests: ${inspected.RepoDigests}`);

    // A multi-arch index: podman picks the requested platform's manifest.
    await skopeoPush(layout.multi, 'test/podman-multi:v1');
    const arm = layout.multi.manifests[1]!;
    const armId = await text(podman('pull', ...pol, '-q', '--tls-verify=false', '--platform', 'linux/arm64/v8', `${hostPort}/test/podman-multi:v1`));
    assert.equal(armId, arm.config.digest.slice('sha256:'.length), 'arm64 image pulled through the index');
    const armInfo = JSON.parse(await text(podman('image', 'inspect', armId)))[0];
    assert.equal(armInfo.Architecture, 'arm64');
    assert.equal(armInfo.Digest, layout.multi.digest, 'podman records the index digest');
    assert.ok((armInfo.RepoDigests as string[]).includes(`${hostPort}/test/podman-multi@${arm.digest}`));

    // And podman can push that platform image on again, to another repo.
    const armDigestFile = join(work, 'podman-push-arm.digest');
    await podman('push', ...pol, '--tls-verify=false', '--digestfile', armDigestFile, armId, `${hostPort}/test/podman-arm:v1`);
    const armPushed = (await readFile(armDigestFile, 'utf8')).trim();
    const armServed = await rawManifest(`test/podman-arm@${armPushed}`);
    assert.equal(sha(armServed), armPushed);
    assert.equal(JSON.parse(armServed.toString()).config.digest, arm.config.digest);
    assert.ok((await stat(join(work, 'podman/root'))).isDirectory(), 'podman used the temp storage');
  });
});
