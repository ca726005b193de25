/**
 * Bundles end to end with real programs: a real docker-registry (distribution 2.8, no referrers API) filled
 * by skopeo from the offline fixtures, `exportBundle` reading it, skopeo reading the bundle back
 * (`oci-archive:`), imports into fresh nodes (through the API and into a stopped node's store) that skopeo
 * then pulls identical digests from; platform subsets, referrers, --have deltas, split parts, signatures,
 * docker save / skopeo archives, resumed imports, and every kind of bad bundle.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createHash, generateKeyPairSync, randomBytes } from 'node:crypto';
import { mkdir, readFile, readdir, rm, stat, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import tar from 'tar-stream';
import { buildImageLayout, REF_NAME_ANNOTATION, type ImageLayout } from '../fixtures/images.ts';
import { startDockerRegistry, type DockerRegistry } from '../helpers/seed-registry.ts';
import { startTestNode, type TestNode } from '../helpers/node.ts';
import {
  BundleRefusedError,
  NodeTarget,
  RegistryImageSource,
  RegistryInventorySource,
  StoreImageSource,
  StoreInventorySource,
  StoreTarget,
  VerifyTarget,
  exportBundle,
  importBundle,
  loadSigningKey,
  loadTrustedKey,
  openBundleInput,
  takeInventory,
  type BundleTarget,
  type ExportOptions,
  type ImportResult,
} from '../../src/bundle/index.ts';
import { SilentProgress, type BundleEvent } from '../../src/bundle/progress.ts';
import { openDiskStore, openMemoryStore, type ContentStore } from '../../src/store/index.ts';

const execFileP = promisify(execFile);
const sha256 = (b: Buffer | string) => `sha256:${createHash('sha256').update(b).digest('hex')}`;
const REG = 'registry.example';

interface TarEntry {
  header: tar.Header;
  data: Buffer;
}

/** Every entry of a (small) tar, in order. */
async function readTar(file: string): Promise<TarEntry[]> {
  const out: TarEntry[] = [];
  const extract = tar.extract();
  const done = (async () => {
    for await (const e of extract) {
      const chunks: Buffer[] = [];
      for await (const c of e) chunks.push(c as Buffer);
      out.push({ header: e.header, data: Buffer.concat(chunks) });
    }
  })();
  extract.end(await readFile(file));
  await done;
  return out;
}

async function writeTar(file: string, entries: TarEntry[], opts: { noEnd?: boolean } = {}): Promise<void> {
  const pack = tar.pack();
  const chunks: Buffer[] = [];
  const done = (async () => {
    for await (const c of pack) chunks.push(c as Buffer);
  })();
  for (const e of entries) {
    await new Promise<void>((ok, fail) =>
      pack.entry({ ...e.header, size: e.header.type === 'file' ? e.data.length : 0 }, e.header.type === 'file' ? e.data : Buffer.alloc(0), (err) => (err ? fail(err) : ok())),
    );
  }
  pack.finalize();
  await done;
  const bytes = Buffer.concat(chunks);
  await writeFile(file, opts.noEnd ? bytes.subarray(0, bytes.length - 1024) : bytes);
}

function tarEntrySize(size: number): number {
  return 512 + Math.ceil(size / 512) * 512;
}

describe('bundles with real registries and clients', () => {
  let work = '';
  let layout: ImageLayout;
  let registry: DockerRegistry;
  let env: NodeJS.ProcessEnv = {};
  let policy = '';
  const nodes: TestNode[] = [];
  const stores: ContentStore[] = [];
  let fullBundle = '';
  let signingKeyFile = '';
  let trustedFile = '';
  let otherTrustedFile = '';

  const skopeo = async (...args: string[]): Promise<string> => {
    try {
      const r = await execFileP('skopeo', ['--policy', policy, ...args], { env, timeout: 60_000, maxBuffer: 64 << 20 });
      return r.stdout;
    } catch (err) {
      throw new Error(`skopeo ${args.join(' ')}: ${(err as { stderr?: string }).stderr ?? err}`);
    }
  };
  const source = () => new RegistryImageSource({ url: registry.url });
  const memoryStore = async () => {
    const s = await openMemoryStore();
    stores.push(s);
    return s;
  };
  const file = (name: string) => join(work, name);
  const exportTo = async (name: string, refs: string[], extra: Partial<ExportOptions> = {}) => {
    const src = extra.source ?? source();
    try {
      return await exportBundle({ references: refs, source: src, output: file(name), ...extra });
    } finally {
      if (!extra.source) await src.close();
    }
  };
  const importInto = async (target: BundleTarget, bundle: string, extra: { trust?: string[]; repository?: string; signal?: AbortSignal; onEvent?: (e: BundleEvent) => void } = {}) => {
    const progress = new SilentProgress();
    if (extra.onEvent) progress.event = extra.onEvent as () => void;
    return importBundle({
      input: await openBundleInput(bundle),
      target,
      trust: await Promise.all((extra.trust ?? []).map((f) => loadTrustedKey(f))),
      repository: extra.repository,
      progress,
      signal: extra.signal,
    });
  };
  const verify = async (bundle: string, trust: string[] = []) => importInto(new VerifyTarget(), bundle, { trust });

  /** Refused for `reason`, and the store names nothing: no image repository, tag or pin. */
  const assertRefused = async (run: Promise<unknown>, reason: string, message: RegExp, store?: ContentStore) => {
    await assert.rejects(run, (err: unknown) => {
      assert.ok(err instanceof BundleRefusedError, `expected a refusal, got ${(err as Error)?.stack ?? String(err)}`);
      assert.equal(err.reason, reason, err.message);
      assert.match(err.message, message);
      return true;
    });
    if (store) {
      const repos = await store.listRepositories();
      assert.deepEqual(repos.filter((r) => r !== 'shoal-import'), [], 'a refused bundle left repositories behind');
      assert.deepEqual(await store.listPins(), []);
    }
  };

  before(async () => {
    work = join(tmpdir(), `shoal-bundle-${randomBytes(6).toString('hex')}`);
    await mkdir(join(work, 'tmp'), { recursive: true });
    layout = await buildImageLayout(join(work, 'layout'), { layerSize: 48 * 1024 });
    policy = join(work, 'policy.json');
    await writeFile(policy, JSON.stringify({ default: [{ type: 'insecureAcceptAnything' }] }));
    await writeFile(join(work, 'registries.conf'), 'unqualified-search-registries = []\n');
    env = {
      PATH: process.env.PATH ?? '/usr/bin:/bin',
      HOME: work,
      TMPDIR: join(work, 'tmp'),
      CONTAINERS_REGISTRIES_CONF: join(work, 'registries.conf'),
    };
    registry = await startDockerRegistry();
    const dest = (repo: string) => `docker://${registry.hostPort}/${repo}`;
    await skopeo('copy', '--all', '--dest-tls-verify=false', `oci:${layout.dir}:multi`, dest('team/multi:v1'));
    await skopeo('copy', '--dest-tls-verify=false', `oci:${layout.dir}:single`, dest('team/single:v1'));
    await skopeo('copy', '--dest-tls-verify=false', `oci:${layout.dir}:sbom`, dest('team/single:sbom'));
    // distribution 2.8 has no referrers API: referrers are found by the OCI tag schema, as cosign and oras push them.
    const referrers = JSON.stringify({
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.index.v1+json',
      manifests: [{ mediaType: layout.sbom.mediaType, digest: layout.sbom.digest, size: layout.sbom.size, artifactType: layout.sbom.artifactType }],
    });
    const res = await fetch(`${registry.url}/v2/team/single/manifests/sha256-${layout.single.digest.slice(7)}`, {
      method: 'PUT',
      headers: { 'content-type': 'application/vnd.oci.image.index.v1+json' },
      body: referrers,
    });
    assert.equal(res.status, 201, await res.text());
    const a = generateKeyPairSync('ed25519');
    const b = generateKeyPairSync('ed25519');
    signingKeyFile = file('sign.pem');
    trustedFile = file('sign.pub');
    otherTrustedFile = file('other.pub');
    await writeFile(signingKeyFile, a.privateKey.export({ type: 'pkcs8', format: 'pem' }));
    await writeFile(trustedFile, a.publicKey.export({ type: 'spki', format: 'pem' }));
    await writeFile(otherTrustedFile, b.publicKey.export({ type: 'spki', format: 'pem' }));
    fullBundle = file('full.tar');
    await exportTo('full.tar', [`${REG}/team/multi:v1`, `${REG}/team/single:v1`]);
  });

  after(async () => {
    for (const n of nodes) await n.stop().catch(() => undefined);
    for (const s of stores) await s.close().catch(() => undefined);
    await registry?.stop();
    await rm(work, { recursive: true, force: true });
  });

  it('exports from a real registry: one entry per image, each blob once, referrers along; skopeo reads it', async () => {
    const entries = await readTar(fullBundle);
    const names = entries.filter((e) => e.header.type === 'file').map((e) => e.header.name);
    assert.deepEqual(names.slice(0, 3), ['shoal-bundle.json', 'oci-layout', 'index.json']);
    const index = JSON.parse(entries.find((e) => e.header.name === 'index.json')!.data.toString());
    assert.deepEqual(
      index.manifests.map((m: { digest: string; annotations: Record<string, string> }) => [m.digest, m.annotations[REF_NAME_ANNOTATION], m.annotations['io.containerd.image.name']]),
      [
        [layout.multi.digest, `${REG}/team/multi:v1`, `${REG}/team/multi:v1`],
        [layout.single.digest, `${REG}/team/single:v1`, `${REG}/team/single:v1`],
      ],
    );
    const blobNames = names.filter((n) => n.startsWith('blobs/'));
    assert.equal(new Set(blobNames).size, blobNames.length, 'a blob is in the bundle twice');
    const expected = new Set([...layout.multi.allBlobs, ...layout.single.allBlobs, ...layout.sbom.allBlobs].map((b) => `blobs/sha256/${b.digest.slice(7)}`));
    assert.deepEqual(new Set(blobNames), expected, 'the bundle has exactly the blobs of both images and the SBOM referrer');
    for (const e of entries.filter((x) => x.header.name.startsWith('blobs/sha256/') && x.header.type === 'file')) {
      assert.equal(sha256(e.data), `sha256:${e.header.name.slice('blobs/sha256/'.length)}`);
    }
    const manifest = JSON.parse(entries[0]!.data.toString());
    assert.deepEqual(manifest.images[1].referrers, [layout.sbom.digest]);
    for (const f of manifest.files) assert.equal(sha256(entries.find((e) => e.header.name === f.path)!.data), `sha256:${f.sha256}`);

    // skopeo, an independent reader of OCI layouts, finds both images by their full reference.
    const raw = await skopeo('inspect', '--raw', `oci-archive:${fullBundle}:${REG}/team/multi:v1`);
    assert.equal(sha256(raw), layout.multi.digest);
    const out = file('skopeo-out');
    await skopeo('copy', '--all', `oci-archive:${fullBundle}:${REG}/team/single:v1`, `oci:${out}:single`);
    const outIndex = JSON.parse(await readFile(join(out, 'index.json'), 'utf8'));
    assert.equal(outIndex.manifests[0].digest, layout.single.digest);
    const verified = await verify(fullBundle);
    assert.equal(verified.format, 'shoal');
    assert.equal(verified.blobsWritten, expected.size);
  });

  it('imports into a fresh node with no seed and no peers, through its API; skopeo pulls identical digests; runs twice without writing twice', async () => {
    const node = await startTestNode();
    nodes.push(node);
    const target = new NodeTarget({ url: node.url });
    let first: ImportResult;
    try {
      first = await importInto(target, fullBundle);
    } finally {
      await target.close();
    }
    assert.deepEqual(first.images.map((i) => [i.reference, i.repository, i.action]), [
      [`${REG}/team/multi:v1`, `${REG}/team/multi`, 'imported'],
      [`${REG}/team/single:v1`, `${REG}/team/single`, 'imported'],
    ]);
    assert.equal(first.images[1]!.referrers, 1);
    for (const [img, fixture] of [
      ['team/multi:v1', layout.multi],
      ['team/single:v1', layout.single],
    ] as const) {
      const raw = await skopeo('inspect', '--raw', '--tls-verify=false', `docker://${node.hostPort}/${REG}/${img}`);
      assert.equal(sha256(raw), fixture.digest);
    }
    const out = file('pulled');
    await skopeo('copy', '--all', '--src-tls-verify=false', `docker://${node.hostPort}/${REG}/team/multi:v1`, `oci:${out}:m`);
    const pulled = new Set((await readdir(join(out, 'blobs', 'sha256'))).map((h) => `sha256:${h}`));
    for (const b of layout.multi.allBlobs) assert.ok(pulled.has(b.digest), `skopeo did not get ${b.digest}`);
    const referrers = (await (await fetch(`${node.url}/v2/${REG}/team/single/referrers/${layout.single.digest}`)).json()) as { manifests: Array<{ digest: string }> };
    assert.deepEqual(referrers.manifests.map((m) => m.digest), [layout.sbom.digest]);

    // The node's inventory (what `shoal inventory --node` writes) lists every config and layer it now has.
    const inventory = await takeInventory(new RegistryInventorySource({ url: node.url }));
    const listed = new Set(inventory.blobs.map((b) => b.digest));
    for (const img of [layout.multi, layout.single, layout.sbom]) for (const b of img.blobs) assert.ok(listed.has(b.digest), `inventory misses ${b.digest}`);
    assert.equal(inventory.images[`${REG}/team/multi:v1`], layout.multi.digest);

    const again = new NodeTarget({ url: node.url });
    try {
      const second = await importInto(again, fullBundle);
      assert.equal(second.blobsWritten, 0);
      assert.equal(second.blobsPresent, first.blobsWritten);
      assert.deepEqual(second.images.map((i) => i.action), ['unchanged', 'unchanged']);
    } finally {
      await again.close();
    }
  });

  it("imports into a stopped node's store, pins the images, and the node then serves them", async () => {
    const dataDir = file('stopped-node');
    const store = await openDiskStore(dataDir);
    const result = await importInto(new StoreTarget(store, dataDir), fullBundle);
    assert.ok(result.images.every((i) => i.pinned));
    const pins = (await store.listPins()).map((p) => `${p.repository}@${p.digest}`).sort();
    assert.deepEqual(pins, [`${REG}/team/multi@${layout.multi.digest}`, `${REG}/team/single@${layout.sbom.digest}`, `${REG}/team/single@${layout.single.digest}`].sort());
    assert.equal(await store.statBlob('shoal-import', layout.single.digest), undefined, 'staging links are released');
    await store.close();
    const node = await startTestNode({ dataDir });
    nodes.push(node);
    const raw = await skopeo('inspect', '--raw', '--tls-verify=false', `docker://${node.hostPort}/${REG}/team/single:v1`);
    assert.equal(sha256(raw), layout.single.digest);
  });

  it('resumes an interrupted import without writing what was done twice; nothing is tagged before the end', async () => {
    const store = await memoryStore();
    const target = new StoreTarget(store, 'memory');
    const controller = new AbortController();
    let seen = 0;
    await assert.rejects(
      importInto(target, fullBundle, {
        signal: controller.signal,
        onEvent: (e) => {
          if (e.event === 'blob' && ++seen === 6) controller.abort();
        },
      }),
    );
    assert.deepEqual((await store.listRepositories()).filter((r) => r !== 'shoal-import'), []);
    const resumed = await importInto(target, fullBundle);
    assert.ok(resumed.blobsPresent >= 6, `only ${resumed.blobsPresent} blobs were kept from the first run`);
    const blobFiles = (await readTar(fullBundle)).filter((e) => e.header.name.startsWith('blobs/sha256/') && e.header.type === 'file').length;
    assert.equal(resumed.blobsPresent + resumed.blobsWritten, blobFiles);
    assert.equal(await store.resolveTag(`${REG}/team/multi`, 'v1'), layout.multi.digest);
  });

  it('exports a subset of platforms as a new index; skopeo and the importer read it', async () => {
    const r = await exportTo('arm64.tar', [`${REG}/team/multi:v1`], { platforms: [{ os: 'linux', architecture: 'arm64' }] });
    const image = r.images[0]!;
    assert.equal(image.sourceDigest, layout.multi.digest);
    assert.notEqual(image.digest, layout.multi.digest);
    assert.deepEqual(image.platforms, ['linux/arm64/v8']);
    const [amd, arm] = layout.multi.manifests;
    const names = new Set((await readTar(file('arm64.tar'))).map((e) => e.header.name));
    for (const b of [arm!, arm!.config, ...arm!.layers]) assert.ok(names.has(`blobs/sha256/${b.digest.slice(7)}`), `missing ${b.digest}`);
    for (const b of [amd!, amd!.config, ...amd!.layers.slice(1)]) assert.ok(!names.has(`blobs/sha256/${b.digest.slice(7)}`), `amd64 blob ${b.digest} is in an arm64 bundle`);
    const raw = JSON.parse(await skopeo('inspect', '--raw', `oci-archive:${file('arm64.tar')}:${REG}/team/multi:v1`));
    assert.deepEqual(raw.manifests.map((m: { digest: string }) => m.digest), [arm!.digest]);
    const store = await memoryStore();
    const imported = await importInto(new StoreTarget(store, 'memory'), file('arm64.tar'));
    assert.equal(imported.images[0]!.digest, image.digest);
    await assert.rejects(exportTo('s390x.tar', [`${REG}/team/multi:v1`], { platforms: [{ os: 'linux', architecture: 's390x' }] }), /no manifest for linux\/s390x; it has: linux\/amd64, linux\/arm64\/v8/);
    await assert.rejects(exportTo('single-arm.tar', [`${REG}/team/single:v1`], { platforms: [{ os: 'linux', architecture: 'arm64' }] }), /single-platform image for linux\/amd64/);
    await assert.rejects(stat(file('s390x.tar')), 'a failed export leaves no file behind');
  });

  it("takes referrers from a Shoal node's referrers API, and images it pulled through from <registry>/<repository>", async () => {
    const node = await startTestNode();
    nodes.push(node);
    const target = new NodeTarget({ url: node.url });
    try {
      await importInto(target, fullBundle);
    } finally {
      await target.close();
    }
    const src = new RegistryImageSource({ url: node.url });
    const r = await exportTo('from-node.tar', [`${REG}/team/single:v1`], { source: src });
    await src.close();
    assert.deepEqual(r.images[0]!.referrers, [layout.sbom.digest]);
    assert.deepEqual(r.notices, [], 'a Shoal node has the referrers API');
    const none = await exportTo('no-referrers.tar', [`${REG}/team/single:v1`], { referrers: false });
    assert.equal(none.images[0]!.referrers, undefined);
  });

  it('makes --have deltas smaller by exactly the known blobs; they import where those blobs are, and are refused elsewhere', async () => {
    const site = await memoryStore();
    await importInto(new StoreTarget(site, 'memory'), file('arm64.tar'));
    const inventory = await takeInventory(new StoreInventorySource(site, 'site'));
    const known = new Set(inventory.blobs.map((b) => b.digest));
    assert.ok(known.size > 0);
    const delta = await exportTo('delta.tar', [`${REG}/team/multi:v1`, `${REG}/team/single:v1`], { have: inventory });
    const fullEntries = await readTar(fullBundle);
    const deltaEntries = await readTar(file('delta.tar'));
    const blobSet = (es: TarEntry[]) => new Map(es.filter((e) => e.header.name.startsWith('blobs/sha256/') && e.header.type === 'file').map((e) => [`sha256:${e.header.name.slice(13)}`, e.data.length]));
    const fullBlobs = blobSet(fullEntries);
    const deltaBlobs = blobSet(deltaEntries);
    const left = [...fullBlobs.keys()].filter((d) => !deltaBlobs.has(d));
    assert.deepEqual(new Set(left), new Set(delta.omitted.map((o) => o.digest)));
    assert.ok(left.every((d) => known.has(d)), 'only known blobs are left out');
    assert.deepEqual(new Set(left), new Set([...fullBlobs.keys()].filter((d) => known.has(d) && !layout.multi.manifests.some((m) => m.digest === d))));
    const contentSize = (es: TarEntry[]) => es.filter((e) => e.header.name !== 'shoal-bundle.json').reduce((n, e) => n + tarEntrySize(e.header.type === 'file' ? e.data.length : 0), 0);
    assert.equal(contentSize(fullEntries) - contentSize(deltaEntries), left.reduce((n, d) => n + tarEntrySize(fullBlobs.get(d)!), 0));
    assert.ok((await stat(file('delta.tar'))).size < (await stat(fullBundle)).size);

    const verified = await verify(file('delta.tar'));
    assert.equal(verified.omitted, left.length);
    const imported = await importInto(new StoreTarget(site, 'memory'), file('delta.tar'));
    assert.equal(imported.omitted, left.length);
    assert.equal(await site.resolveTag(`${REG}/team/multi`, 'v1'), layout.multi.digest);
    const fresh = await memoryStore();
    await assertRefused(importInto(new StoreTarget(fresh, 'memory'), file('delta.tar')), 'incomplete', /delta bundle leaves out .* not on store memory/, fresh);
    assert.equal((await fresh.stats()).blobs, 0, 'a delta for another site is refused before any blob is written');
  });

  it('splits a bundle into parts with their own sha256, reads them back in order, and refuses missing or damaged parts', async () => {
    const r = await exportTo('split.tar', [`${REG}/team/multi:v1`, `${REG}/team/single:v1`], { splitSize: 40_000 });
    assert.ok(r.parts && r.parts.length >= 4, `expected several parts, got ${r.parts?.length}`);
    for (const [i, p] of r.parts!.entries()) {
      const bytes = await readFile(file(p.name));
      assert.equal(p.name, `split.tar.part${String(i + 1).padStart(3, '0')}`);
      assert.equal(sha256(bytes), `sha256:${p.sha256}`);
      assert.ok(bytes.length <= 40_000);
    }
    const list = JSON.parse(await readFile(file('split.tar.parts.json'), 'utf8'));
    assert.deepEqual(list.parts, r.parts);
    assert.equal((await verify(file('split.tar'))).format, 'shoal');
    const store = await memoryStore();
    await importInto(new StoreTarget(store, 'memory'), file('split.tar.parts.json'));
    assert.equal(await store.resolveTag(`${REG}/team/single`, 'v1'), layout.single.digest);

    const part2 = file(r.parts![1]!.name);
    const original = await readFile(part2);
    const damaged = Buffer.from(original);
    damaged[damaged.length - 700] ^= 0xff;
    await writeFile(part2, damaged);
    await assertRefused(verify(file('split.tar')), 'corrupt', /damaged|does not match/);
    await truncate(part2, 1000);
    await assertRefused(verify(file('split.tar')), 'truncated', /part002 is .* says 40000 bytes/);
    await rm(part2);
    await assertRefused(verify(file('split.tar.part001')), 'truncated', /part 2 of \d+ \(split.tar.part002\) is missing/);
    await writeFile(part2, original);
  });

  it('signs bundles and refuses unsigned, untrusted and altered ones when trust is asked for', async () => {
    const key = await loadSigningKey(signingKeyFile);
    await exportTo('signed.tar', [`${REG}/team/single:v1`], { signingKey: key });
    const ok = await verify(file('signed.tar'), [trustedFile]);
    assert.deepEqual(ok.signature, { keyId: key.keyId, trusted: true, valid: true });
    const store = await memoryStore();
    await importInto(new StoreTarget(store, 'memory'), file('signed.tar'), { trust: [otherTrustedFile, trustedFile] });
    const untrusted = await memoryStore();
    await assertRefused(importInto(new StoreTarget(untrusted, 'memory'), file('signed.tar'), { trust: [otherTrustedFile] }), 'signature', /not trusted/, untrusted);
    assert.equal((await untrusted.stats()).blobs, 0, 'nothing is written before the signature is checked');
    await assertRefused(verify(fullBundle, [trustedFile]), 'signature', /not signed/);
    const entries = await readTar(file('signed.tar'));
    entries[0]!.data = Buffer.from(entries[0]!.data.toString().replace(`${REG}/team/single:v1`, `${REG}/team/evil:v1`));
    await writeTar(file('altered.tar'), entries);
    await assertRefused(verify(file('altered.tar')), 'signature', /altered after it was signed/);
    await assertRefused(verify(file('altered.tar'), [trustedFile]), 'signature', /does not verify/);
  });

  it('refuses bad bundles with a clear reason and leaves nothing that refers to incomplete content', async () => {
    const good = await readTar(fullBundle);
    const size = (await stat(fullBundle)).size;
    const cases: Array<[string, (f: string) => Promise<void>, string, RegExp]> = [
      ['truncated in the middle', async (f) => void (await writeFile(f, (await readFile(fullBundle)).subarray(0, Math.floor(size * 0.6)))), 'truncated', /truncated/],
      ['truncated between entries', async (f) => writeTar(f, good.slice(0, -3), { noEnd: true }), 'truncated', /truncated: 3 file\(s\)/],
      [
        'a blob that does not match its digest',
        async (f) => {
          const es = good.map((e) => ({ ...e }));
          const layer = es.find((e) => e.header.name === `blobs/sha256/${layout.single.manifests[0]!.layers[2]!.digest.slice(7)}`)!;
          layer.data = Buffer.from(layer.data);
          layer.data[100] ^= 1;
          await writeTar(f, es);
        },
        'corrupt',
        /does not match its digest/,
      ],
      ['a path with ..', async (f) => writeTar(f, [...good.slice(0, 3), { header: { name: 'blobs/../../evil', type: 'file', size: 1 } as tar.Header, data: Buffer.from('x') }]), 'unsafe', /goes up/],
      ['an absolute path', async (f) => writeTar(f, [{ header: { name: '/etc/cron.d/evil', type: 'file', size: 1 } as tar.Header, data: Buffer.from('x') }]), 'unsafe', /absolute/],
      ['a symlink', async (f) => writeTar(f, [...good.slice(0, 3), { header: { name: 'blobs/sha256/link', type: 'symlink', linkname: '/etc/passwd' } as tar.Header, data: Buffer.alloc(0) }]), 'unsafe', /link/],
      [
        'a manifest that names a missing blob',
        async (f) => {
          const missing = `blobs/sha256/${layout.multi.manifests[0]!.layers[1]!.digest.slice(7)}`;
          const es = good.filter((e) => e.header.name !== missing && e.header.name !== 'shoal-bundle.json');
          await writeTar(f, es);
        },
        'incomplete',
        /team\/multi:v1 names 1 blob\(s\) that are neither in the bundle nor on/,
      ],
      ['a file that is not a tar', async (f) => writeFile(f, randomBytes(4096)), 'corrupt', /not a readable tar/],
      ['a tar that is no image layout', async (f) => writeTar(f, [{ header: { name: 'README', type: 'file' } as tar.Header, data: Buffer.from('hi') }]), 'format', /neither index.json/],
      [
        'a file the bundle manifest does not list',
        async (f) => writeTar(f, [...good.slice(0, 3), { header: { name: 'extra.txt', type: 'file' } as tar.Header, data: Buffer.from('x') }, ...good.slice(3)]),
        'corrupt',
        /not in its manifest/,
      ],
    ];
    for (const [name, make, reason, message] of cases) {
      const f = file(`bad-${name.replace(/\W+/g, '-')}.tar`);
      await make(f);
      const store = await memoryStore();
      await assertRefused(importInto(new StoreTarget(store, 'memory'), f), reason, message, store).catch((err: Error) => {
        throw new Error(`case "${name}": ${err.message}`);
      });
      await assertRefused(verify(f), reason, message);
    }
  });

  it('imports tars made by skopeo (oci-archive and docker-archive) and by docker save, gzipped or not', async () => {
    const oci = file('skopeo-oci.tar');
    await skopeo('copy', '--all', `oci:${layout.dir}:multi`, `oci-archive:${oci}:${REG}/team/multi:v2`);
    const store = await memoryStore();
    const r1 = await importInto(new StoreTarget(store, 'memory'), oci);
    assert.equal(r1.format, 'oci-layout');
    assert.equal(await store.resolveTag(`${REG}/team/multi`, 'v2'), layout.multi.digest);

    const docker = file('skopeo-docker.tar');
    await skopeo('copy', `oci:${layout.dir}:single`, `docker-archive:${docker}:${REG}/team/single:v2`);
    const node = await startTestNode();
    nodes.push(node);
    const target = new NodeTarget({ url: node.url });
    let r2: ImportResult;
    try {
      r2 = await importInto(target, docker);
    } finally {
      await target.close();
    }
    assert.equal(r2.format, 'docker-archive');
    const manifest = JSON.parse(await skopeo('inspect', '--raw', '--tls-verify=false', `docker://${node.hostPort}/${REG}/team/single:v2`));
    assert.equal(manifest.mediaType, 'application/vnd.docker.distribution.manifest.v2+json');
    const config = JSON.parse(await readFile(join(layout.dir, 'blobs', 'sha256', layout.single.manifests[0]!.config.digest.slice(7)), 'utf8'));
    assert.deepEqual(manifest.layers.map((l: { digest: string }) => l.digest), config.rootfs.diff_ids, 'docker archives carry uncompressed layers: their digests are the diff_ids');
    await skopeo('copy', '--src-tls-verify=false', `docker://${node.hostPort}/${REG}/team/single:v2`, `oci:${file('pulled-docker')}:s`);

    // The classic `docker save` layout: <id>/layer.tar, <id>/json, repositories; and gzipped.
    const entries = await readTar(docker);
    const manifestJson = JSON.parse(entries.find((e) => e.header.name === 'manifest.json')!.data.toString());
    const layerFiles: TarEntry[] = [];
    const layerPaths = (manifestJson[0].Layers as string[]).map((p, i) => {
      const data = entries.find((e) => e.header.name === p)!.data;
      layerFiles.push({ header: { name: `layer${i}/layer.tar`, type: 'file' } as tar.Header, data });
      return `layer${i}/layer.tar`;
    });
    const classic: TarEntry[] = [
      ...layerFiles,
      ...entries.filter((e) => e.header.name.endsWith('.json') && e.header.name !== 'manifest.json'),
      { header: { name: 'manifest.json', type: 'file' } as tar.Header, data: Buffer.from(JSON.stringify([{ ...manifestJson[0], RepoTags: ['team/classic:v1'], Layers: layerPaths }])) },
      { header: { name: 'repositories', type: 'file' } as tar.Header, data: Buffer.from('{}') },
    ];
    await writeTar(file('classic.tar'), classic);
    const { gzipSync } = await import('node:zlib');
    await writeFile(file('classic.tar.gz'), gzipSync(await readFile(file('classic.tar'))));
    const r3 = await importInto(new StoreTarget(store, 'memory'), file('classic.tar.gz'));
    assert.deepEqual(r3.images.map((i) => i.reference), ['docker.io/team/classic:v1']);
    assert.equal(r3.images[0]!.digest, r2.images[0]!.digest, 'the same config and layers give the same manifest, whatever the archive layout');
    assert.equal(await store.resolveTag('docker.io/team/classic', 'v1'), r3.images[0]!.digest);

    // A layer that is not what the config says is refused; so is a tag-less image without --repository.
    const bad = classic.map((e) => ({ ...e }));
    bad[0] = { ...bad[0]!, data: Buffer.concat([bad[0]!.data.subarray(0, 600), Buffer.from('x'), bad[0]!.data.subarray(601)]) };
    await writeTar(file('classic-bad.tar'), bad);
    const fresh = await memoryStore();
    await assertRefused(importInto(new StoreTarget(fresh, 'memory'), file('classic-bad.tar')), 'corrupt', /layer layer0\/layer.tar hashes to .* but the image config says/, fresh);
    const untagged = classic.map((e) => (e.header.name === 'manifest.json' ? { ...e, data: Buffer.from(JSON.stringify([{ ...manifestJson[0], RepoTags: null, Layers: layerPaths }])) } : e));
    await writeTar(file('untagged.tar'), untagged);
    await assertRefused(verify(file('untagged.tar')), 'format', /no RepoTags; give --repository/);
    const byDigest = await importInto(new StoreTarget(fresh, 'memory'), file('untagged.tar'), { repository: `${REG}/team/untagged` });
    assert.equal(byDigest.images[0]!.tag, undefined);
    assert.ok(await fresh.getManifest(`${REG}/team/untagged`, byDigest.images[0]!.digest));
  });

  it("exports from a stopped node's store (--data)", async () => {
    const dataDir = file('export-store');
    const store = await openDiskStore(dataDir);
    await importInto(new StoreTarget(store, dataDir), fullBundle);
    const src = new StoreImageSource(store, dataDir);
    try {
      const r = await exportTo('from-store.tar', [`${REG}/team/multi:v1`, `${REG}/team/single:v1`], { source: src });
      assert.deepEqual(r.images.map((i) => i.digest), [layout.multi.digest, layout.single.digest]);
      assert.deepEqual(r.images[1]!.referrers, [layout.sbom.digest]);
    } finally {
      await src.close();
    }
    const a = (await readTar(file('from-store.tar'))).filter((e) => e.header.name !== 'shoal-bundle.json').map((e) => [e.header.name, sha256(e.data)]);
    const b = (await readTar(fullBundle)).filter((e) => e.header.name !== 'shoal-bundle.json').map((e) => [e.header.name, sha256(e.data)]);
    assert.deepEqual(a, b, 'the same images give the same layout, wherever they were read');
  });
});
