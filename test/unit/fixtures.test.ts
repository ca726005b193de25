import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtemp, readFile, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { gunzipSync } from 'node:zlib';
import {
  buildImageLayout,
  buildDockerSchema2Images,
  blobPath,
  EMPTY_JSON_DIGEST,
  MT,
  REF_NAME_ANNOTATION,
  SBOM_ARTIFACT_TYPE,
  type ImageLayout,
} from '../fixtures/images.ts';

const run = promisify(execFile);
const sha = (b: Buffer) => `sha256:${createHash('sha256').update(b).digest('hex')}`;

describe('test fixtures: OCI image layout generator', () => {
  const dirs: string[] = [];
  let a: ImageLayout;
  let b: ImageLayout;

  before(async () => {
    for (let i = 0; i < 2; i++) dirs.push(await mkdtemp(join(tmpdir(), 'shoal-fixture-')));
    a = await buildImageLayout(dirs[0]!);
    b = await buildImageLayout(dirs[1]!);
  });
  after(async () => {
    await Promise.all(dirs.map((d) => rm(d, { recursive: true, force: true })));
  });

  it('is deterministic: the same options give the same digests and bytes', async () => {
    assert.deepEqual(
      a.images.map((i) => [i.tag, i.digest, i.size]),
      b.images.map((i) => [i.tag, i.digest, i.size]),
    );
    assert.deepEqual(a.files, b.files);
    assert.deepEqual(await readFile(join(a.dir, 'index.json')), await readFile(join(b.dir, 'index.json')));
    for (const f of a.files) assert.deepEqual(await readFile(blobPath(a.dir, f.digest)), await readFile(blobPath(b.dir, f.digest)));
  });

  it('another seed gives other digests', async () => {
    const d = await mkdtemp(join(tmpdir(), 'shoal-fixture-'));
    dirs.push(d);
    const c = await buildImageLayout(d, { seed: 2, layerSize: 4096 });
    const ours = new Set(a.files.map((f) => f.digest));
    const shared = c.files.filter((f) => ours.has(f.digest)).map((f) => f.digest);
    assert.deepEqual(shared, [EMPTY_JSON_DIGEST]); // only the `{}` blob is common
  });

  it('every blob file is named by its sha256 and has the described size', async () => {
    const names = (await readdir(join(a.dir, 'blobs', 'sha256'))).sort();
    assert.deepEqual(names, a.files.map((f) => f.digest.slice('sha256:'.length)).sort());
    for (const f of a.files) {
      const data = await readFile(blobPath(a.dir, f.digest));
      assert.equal(sha(data), f.digest);
      assert.equal(data.length, f.size);
    }
    for (const img of a.images) {
      assert.equal(sha(img.bytes), img.digest);
      const fileDigests = new Set(a.files.map((f) => f.digest));
      for (const bl of img.allBlobs) assert.ok(fileDigests.has(bl.digest), `${img.tag}: ${bl.digest} written`);
    }
  });

  it('has the promised shape: multi-arch index, shared layer, diff_ids, artifact with subject', async () => {
    const index = JSON.parse(await readFile(join(a.dir, 'index.json'), 'utf8'));
    assert.deepEqual(
      index.manifests.map((m: any) => [m.annotations[REF_NAME_ANNOTATION], m.digest]),
      a.images.map((i) => [i.tag, i.digest]),
    );

    assert.equal(a.multi.mediaType, MT.OciIndex);
    const idx = JSON.parse(a.multi.bytes.toString());
    assert.deepEqual(idx.manifests.map((m: any) => `${m.platform.os}/${m.platform.architecture}`), ['linux/amd64', 'linux/arm64']);
    const [amd, arm] = a.multi.manifests;
    assert.equal(amd!.layers.length, 3);
    assert.equal(arm!.layers.length, 3);
    assert.equal(amd!.layers[0]!.digest, arm!.layers[0]!.digest, 'base layer shared');
    assert.notEqual(amd!.layers[1]!.digest, arm!.layers[1]!.digest);
    // 1 index + 2 manifests + 2 configs + 5 distinct layers
    assert.equal(a.multi.allBlobs.length, 10);

    for (const m of [...a.multi.manifests, ...a.single.manifests]) {
      const cfg = JSON.parse((await readFile(blobPath(a.dir, m.config.digest))).toString());
      assert.equal(cfg.os, 'linux');
      assert.equal(cfg.architecture, m.platform!.architecture);
      assert.equal(cfg.rootfs.type, 'layers');
      const diffIds: string[] = [];
      for (const l of m.layers) {
        const gz = await readFile(blobPath(a.dir, l.digest));
        assert.ok(gz.length > 200 * 1024, 'default layers are a few hundred KiB');
        diffIds.push(sha(gunzipSync(gz)));
      }
      assert.deepEqual(cfg.rootfs.diff_ids, diffIds);
      assert.deepEqual(m.layers.map((l) => l.diffId), diffIds);
    }

    const sb = JSON.parse(a.sbom.bytes.toString());
    assert.equal(sb.artifactType, SBOM_ARTIFACT_TYPE);
    assert.equal(sb.config.mediaType, MT.OciEmpty);
    assert.equal(sb.config.digest, EMPTY_JSON_DIGEST);
    assert.equal(sb.layers.length, 1);
    assert.deepEqual(sb.subject, { mediaType: MT.OciManifest, digest: a.single.digest, size: a.single.size });
    assert.equal(a.sbom.subject?.digest, a.single.digest);
    assert.equal((await readFile(blobPath(a.dir, EMPTY_JSON_DIGEST))).toString(), '{}');
  });

  it('the docker schema2 variant keeps the layers and changes the media types', async () => {
    const d = await buildDockerSchema2Images();
    assert.equal(d.multi.mediaType, MT.DockerManifestList);
    assert.equal(d.single.mediaType, MT.DockerManifest);
    assert.deepEqual(d.single.manifests[0]!.layers.map((l) => l.digest), a.single.manifests[0]!.layers.map((l) => l.digest));
    assert.notEqual(d.single.digest, a.single.digest);
    const m = JSON.parse(d.single.bytes.toString());
    assert.equal(m.config.mediaType, MT.DockerConfig);
    assert.ok(m.layers.every((l: any) => l.mediaType === MT.DockerLayerGzip));
    for (const img of [d.multi, d.single]) {
      for (const bl of img.allBlobs) {
        const data = d.blobs.get(bl.digest);
        assert.ok(data, `${bl.digest} in map`);
        assert.equal(sha(data), bl.digest);
      }
    }
  });

  it('skopeo and umoci accept the layout', { timeout: 60_000 }, async () => {
    const raw = await run('skopeo', ['inspect', '--raw', `oci:${a.dir}:multi`], { timeout: 30_000, encoding: 'buffer' });
    assert.deepEqual(raw.stdout, a.multi.bytes);
    for (const img of [a.single, a.sbom]) {
      const r = await run('skopeo', ['inspect', '--raw', `oci:${a.dir}:${img.tag}`], { timeout: 30_000, encoding: 'buffer' });
      assert.deepEqual(r.stdout, img.bytes);
    }
    for (const [arch, m] of [['amd64', a.multi.manifests[0]!], ['arm64', a.multi.manifests[1]!]] as const) {
      const { stdout } = await run('skopeo', ['--override-arch', arch, '--override-os', 'linux', 'inspect', `oci:${a.dir}:multi`], { timeout: 30_000 });
      const info = JSON.parse(stdout);
      assert.equal(info.Architecture, arch);
      assert.deepEqual(info.Layers, m.layers.map((l) => l.digest));
    }
    const { stdout } = await run('skopeo', ['inspect', `oci:${a.dir}:single`], { timeout: 30_000 });
    assert.deepEqual(JSON.parse(stdout).Layers, a.single.manifests[0]!.layers.map((l) => l.digest));

    // umoci unpacks the layers and checks them against the config's diff_ids.
    const bundle = await mkdtemp(join(tmpdir(), 'shoal-fixture-bundle-'));
    dirs.push(bundle);
    await run('umoci', ['unpack', '--rootless', '--image', `${a.dir}:single`, join(bundle, 'b')], { timeout: 30_000 });
    assert.deepEqual((await readdir(join(bundle, 'b', 'rootfs'))).sort(), ['single-0', 'single-1', 'single-2']);
  });
});
