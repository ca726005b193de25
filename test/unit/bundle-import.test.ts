/**
 * The import's referrers: each image of a bundle takes along the manifests that refer to it (and theirs), and
 * no others; and the referrer index finds them in the order a scan of the bundle's manifests, repeated until it
 * finds nothing more, would. The import runs on an in-memory tar into an in-memory store.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import tar from 'tar-stream';
import { StoreTarget, importBundle, type BundleInput } from '../../src/bundle/index.ts';
import { ReferrerIndex } from '../../src/bundle/import/referrers.ts';
import { MediaType } from '../../src/oci/index.ts';
import { openMemoryStore } from '../../src/store/index.ts';

const sha256 = (b: Buffer | string): string => `sha256:${createHash('sha256').update(b).digest('hex')}`;
const json = (value: unknown): Buffer => Buffer.from(JSON.stringify(value));
const SIGSTORE_BUNDLE = 'application/vnd.dev.sigstore.bundle.v0.3+json';
const IN_TOTO = 'application/vnd.in-toto+json';
const EMPTY = Buffer.from('{}');
const EMPTY_DESCRIPTOR = { mediaType: 'application/vnd.oci.empty.v1+json', digest: sha256(EMPTY), size: EMPTY.length };

interface Blob {
  digest: string;
  bytes: Buffer;
}

function blob(bytes: Buffer): Blob {
  return { digest: sha256(bytes), bytes };
}

function descriptor(b: Blob, mediaType: string): { mediaType: string; digest: string; size: number } {
  return { mediaType, digest: b.digest, size: b.bytes.length };
}

/** An image: a config and one layer, all its own. */
function image(name: string): { manifest: Blob; blobs: Blob[] } {
  const layer = blob(Buffer.from(`layer of ${name}`));
  const config = blob(json({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [layer.digest] }, name }));
  const manifest = blob(json({ schemaVersion: 2, mediaType: MediaType.OciManifest, config: descriptor(config, MediaType.OciConfig), layers: [descriptor(layer, 'application/vnd.oci.image.layer.v1.tar')] }));
  return { manifest, blobs: [config, layer] };
}

/** An artifact whose subject is `subject`: one layer of `layerType` (a Sigstore bundle makes it a signature). */
function referrer(subject: Blob, layerType: string, content: string): { manifest: Blob; blobs: Blob[] } {
  const payload = blob(json({ content }));
  const manifest = blob(
    json({
      schemaVersion: 2,
      mediaType: MediaType.OciManifest,
      artifactType: layerType,
      config: EMPTY_DESCRIPTOR,
      layers: [descriptor(payload, layerType)],
      subject: descriptor(subject, MediaType.OciManifest),
    }),
  );
  return { manifest, blobs: [payload] };
}

/** An OCI layout tar of these blobs (in this order), whose index.json names `images`. */
async function layoutTar(blobs: Blob[], images: Array<{ name: string; manifest: Blob }>): Promise<Buffer> {
  const pack = tar.pack();
  const chunks: Buffer[] = [];
  const done = (async () => {
    for await (const c of pack) chunks.push(c as Buffer);
  })();
  const index = json({
    schemaVersion: 2,
    mediaType: MediaType.OciIndex,
    manifests: images.map((i) => ({ ...descriptor(i.manifest, MediaType.OciManifest), annotations: { 'io.containerd.image.name': i.name } })),
  });
  const entries: Array<[string, Buffer]> = [['oci-layout', json({ imageLayoutVersion: '1.0.0' })], ...blobs.map((b): [string, Buffer] => [`blobs/sha256/${b.digest.slice(7)}`, b.bytes]), ['index.json', index]];
  for (const [name, data] of entries) {
    await new Promise<void>((ok, fail) => pack.entry({ name, size: data.length }, data, (err) => (err ? fail(err) : ok())));
  }
  pack.finalize();
  await done;
  return Buffer.concat(chunks);
}

function input(bytes: Buffer): BundleInput {
  return {
    name: 'test.tar',
    size: bytes.length,
    read: async function* () {
      yield bytes;
    },
  };
}

describe('bundle import: referrers', () => {
  it('two images each with a signature: each takes only its own signature (and what refers to it) along', async () => {
    const a = image('a');
    const b = image('b');
    const sigA = referrer(a.manifest, SIGSTORE_BUNDLE, 'signs a');
    const sigB = referrer(b.manifest, SIGSTORE_BUNDLE, 'signs b');
    // An attestation on a's signature, standing before the signature in the bundle: found by a second scan.
    const onSigA = referrer(sigA.manifest, IN_TOTO, 'about the signature of a');
    const unique = new Map<string, Blob>();
    for (const part of [sigB, onSigA, b, sigA, a]) for (const x of [part.manifest, ...part.blobs]) unique.set(x.digest, x);
    unique.set(EMPTY_DESCRIPTOR.digest, blob(EMPTY));
    const bytes = await layoutTar([...unique.values()], [
      { name: 'registry.example/team/a:v1', manifest: a.manifest },
      { name: 'registry.example/team/b:v1', manifest: b.manifest },
    ]);

    const store = await openMemoryStore();
    try {
      const result = await importBundle({ input: input(bytes), target: new StoreTarget(store, 'memory') });
      assert.equal(result.format, 'oci-layout');
      const byRef = new Map(result.images.map((i) => [i.reference, i]));
      assert.deepEqual([...byRef.keys()].sort(), ['registry.example/team/a:v1', 'registry.example/team/b:v1']);
      assert.equal(byRef.get('registry.example/team/a:v1')!.referrers, 2, 'a: its signature and the attestation on it');
      assert.equal(byRef.get('registry.example/team/b:v1')!.referrers, 1, 'b: its signature only');

      const repoA = 'registry.example/team/a';
      const repoB = 'registry.example/team/b';
      assert.deepEqual((await store.listReferrers(repoA, a.manifest.digest)).map((r) => r.digest), [sigA.manifest.digest]);
      assert.deepEqual((await store.listReferrers(repoA, sigA.manifest.digest)).map((r) => r.digest), [onSigA.manifest.digest]);
      assert.deepEqual((await store.listReferrers(repoB, b.manifest.digest)).map((r) => r.digest), [sigB.manifest.digest]);
      for (const [repo, other] of [
        [repoA, sigB.manifest.digest],
        [repoB, sigA.manifest.digest],
        [repoB, onSigA.manifest.digest],
      ] as const) {
        assert.equal(await store.getManifest(repo, other), undefined, `${other} was written into ${repo}, whose image it does not refer to`);
      }

      // The referrers tag-schema index of each image lists its own signature only.
      for (const [repo, subject, sig] of [
        [repoA, a.manifest.digest, sigA.manifest.digest],
        [repoB, b.manifest.digest, sigB.manifest.digest],
      ] as const) {
        const tagged = await store.resolveTag(repo, subject.replace(':', '-'));
        assert.ok(tagged, `${repo} has the referrers tag of ${subject}`);
        const index = JSON.parse((await store.readSmallContent(tagged)).toString('utf8')) as { manifests: Array<{ digest: string }> };
        assert.deepEqual(index.manifests.map((m) => m.digest), [sig]);
      }

      const pins = (await store.listPins()).map((p) => `${p.repository} ${p.digest}`).sort();
      const expected = [
        `${repoA} ${a.manifest.digest}`,
        `${repoA} ${sigA.manifest.digest}`,
        `${repoA} ${onSigA.manifest.digest}`,
        `${repoB} ${b.manifest.digest}`,
        `${repoB} ${sigB.manifest.digest}`,
      ].sort();
      assert.deepEqual(pins, expected);
    } finally {
      await store.close();
    }
  });

  it('the index finds referrers in the order repeated scans of the bundle would, for any order of the bundle', () => {
    // A deterministic pseudo-random source, so a failure can be replayed.
    let seed = 12345;
    const random = (n: number): number => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      return seed % n;
    };
    for (let round = 0; round < 200; round++) {
      // A few images, and referrers whose subject is an image or an earlier referrer, shuffled into bundle order.
      const nodes: Array<{ digest: string; bytes: Buffer; subject?: string }> = [];
      const images = 1 + random(3);
      for (let i = 0; i < images; i++) {
        const m = image(`round ${round} image ${i}`).manifest;
        nodes.push({ digest: m.digest, bytes: m.bytes });
      }
      const referrers = random(10);
      for (let i = 0; i < referrers; i++) {
        const subjectNode = nodes[random(nodes.length)]!;
        const m = referrer({ digest: subjectNode.digest, bytes: subjectNode.bytes }, random(2) ? SIGSTORE_BUNDLE : IN_TOTO, `round ${round} referrer ${i}`).manifest;
        nodes.push({ digest: m.digest, bytes: m.bytes, subject: subjectNode.digest });
      }
      for (let i = nodes.length - 1; i > 0; i--) {
        const j = random(i + 1);
        [nodes[i], nodes[j]] = [nodes[j]!, nodes[i]!];
      }
      const index = new ReferrerIndex(new Map(nodes.map((n) => [n.digest, n.bytes])));
      for (const start of nodes.filter((n) => !n.subject)) {
        // What the import did before it had an index: scan every manifest until a scan adds nothing.
        const expected: string[] = [];
        const seen = new Set([start.digest]);
        for (let changed = true; changed; ) {
          changed = false;
          for (const n of nodes) {
            if (seen.has(n.digest) || !n.subject || !seen.has(n.subject)) continue;
            expected.push(n.digest);
            seen.add(n.digest);
            changed = true;
          }
        }
        const found: string[] = [];
        index.walk(new Set([start.digest]), (r) => {
          found.push(r.digest);
          return [r.digest];
        });
        assert.deepEqual(found, expected, `round ${round}`);
        for (const digest of found) assert.ok(nodes.some((n) => n.digest === digest && n.subject !== undefined));
      }
    }
  });
});
