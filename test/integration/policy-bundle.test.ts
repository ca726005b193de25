/**
 * The signature policy across bundles and peers: images signed here (cosign `.sig` tag, Sigstore bundle
 * referrer) are exported from the real distribution registry, imported under a policy, and pulled over the
 * peer network by a node that enforces the same policy.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BundleRefusedError, NodeTarget, RegistryImageSource, exportBundle, importBundle, openBundleInput } from '../../src/bundle/index.ts';
import { SilentProgress } from '../../src/bundle/progress.ts';
import { readPolicyFile } from '../../src/policy/index.ts';
import { Cluster, waitFor, type ClusterNode } from '../helpers/cluster.ts';
import { bundleReferrer, generateSigningKey, pushSignature, sigTag, writePublicKey, type SigningKey } from '../helpers/cosign.ts';
import { pushManifest, pushRandomImage, startDockerRegistry, type DockerRegistry, type PushedImage } from '../helpers/seed-registry.ts';
import { runShoal } from '../helpers/spawn-node.ts';

const ACCEPT = 'application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json';

async function get(url: string): Promise<{ status: number; body: string }> {
  const res = await fetch(url, { headers: { accept: ACCEPT }, signal: AbortSignal.timeout(30_000) });
  return { status: res.status, body: await res.text() };
}

let seed: DockerRegistry;
let dir: string;
let keyA: SigningKey;
let policyFile: string;
const images: Record<string, PushedImage> = {};
let goodBundle: string;
let badBundle: string;
let sneakyBundle: string;

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'shoal-policy-bundle-'));
  keyA = generateSigningKey('ed25519');
  await writePublicKey(dir, 'release.pub', keyA);
  policyFile = join(dir, 'policy.json');
  await writeFile(policyFile, JSON.stringify({ default: [{ type: 'sigstoreSigned', keyPath: 'release.pub' }] }));
  seed = await startDockerRegistry();
  const push = async (repo: string) => (images[repo] = await pushRandomImage(seed.url, repo, 'v1', { layerSizes: [4096] }));
  const a = await push('apps/a');
  await pushSignature(seed.url, 'apps/a', sigTag(keyA, a.manifestDigest));
  const b = await push('apps/b');
  const subject = { mediaType: b.manifestMediaType, digest: b.manifestDigest, size: b.manifestBytes.length };
  await pushSignature(seed.url, 'apps/b', bundleReferrer(keyA, subject), { referrersTag: { subject: b.manifestDigest, artifactType: 'application/vnd.dev.sigstore.bundle.v0.3+json' } });
  const unsigned = await push('apps/unsigned');
  // An unsigned image behind an index tagged like a referrers index (sha256-<hex>): it must be judged all the same.
  const indexType = 'application/vnd.oci.image.index.v1+json';
  const disguise = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: indexType, manifests: [{ mediaType: unsigned.manifestMediaType, digest: unsigned.manifestDigest, size: unsigned.manifestBytes.length }] }));
  await pushManifest(seed.url, 'apps/unsigned', `sha256-${'0'.repeat(64)}`, disguise, indexType);
  const source = new RegistryImageSource({ url: seed.url });
  try {
    goodBundle = join(dir, 'good.tar');
    await exportBundle({ references: [`${seed.hostPort}/apps/a:v1`, `${seed.hostPort}/apps/b:v1`], source, output: goodBundle });
    sneakyBundle = join(dir, 'sneaky.tar');
    await exportBundle({ references: [`${seed.hostPort}/apps/a:v1`, `${seed.hostPort}/apps/unsigned:sha256-${'0'.repeat(64)}`], source, output: sneakyBundle });
    badBundle = join(dir, 'bad.tar');
    await exportBundle({ references: [`${seed.hostPort}/apps/a:v1`, `${seed.hostPort}/apps/unsigned:v1`], source, output: badBundle });
  } finally {
    await source.close();
  }
});

after(async () => {
  await seed?.stop();
  await rm(dir, { recursive: true, force: true });
});

describe('signature policy: bundles and peers', () => {
  let cluster: Cluster;
  let plain: ClusterNode;
  let guarded: ClusterNode;
  let other: ClusterNode;
  before(async () => {
    cluster = await Cluster.create({ size: 0 });
    plain = await cluster.add();
    guarded = await cluster.add({ policyFile });
    other = await cluster.add();
    await waitFor('the policy node to connect to the importing node', () => guarded.node.peers!.peers().includes(plain.peerId));
  });
  after(async () => {
    await cluster?.stop();
  });

  it('one unsigned image refuses the whole import, saying why, with nothing visible', async () => {
    const target = new NodeTarget({ url: other.url });
    try {
      await assert.rejects(
        importBundle({ input: await openBundleInput(badBundle), target, progress: new SilentProgress(), policy: await readPolicyFile(policyFile) }),
        (err: unknown) => {
          assert.ok(err instanceof BundleRefusedError, String(err));
          assert.equal(err.reason, 'policy');
          assert.match(err.message, /refuses 1 of the bundle's 2 image\(s\); nothing was imported/);
          assert.match(err.message, /apps\/unsigned:v1: no signature/);
          return true;
        },
      );
    } finally {
      await target.close();
    }
    const catalog = (await (await fetch(`${other.url}/v2/_catalog`)).json()) as { repositories: string[] };
    // Blobs wait in the import's staging area (collected later), which names no image and no tag.
    assert.deepEqual(catalog.repositories.filter((r) => r !== 'shoal-import'), [], 'no repository of the refused bundle is visible');
    assert.equal((await get(`${other.url}/v2/${seed.hostPort.replace(':', '-')}/apps/a/manifests/v1`)).status, 404, 'not even its signed image');
    const pins = (await (await fetch(`${other.url}/shoal/pins`)).json()) as unknown[] | { pins: unknown[] };
    assert.equal(Array.isArray(pins) ? pins.length : pins.pins.length, 0);
  });

  it('an unsigned image listed by an index tagged like a referrers index is judged, and refuses the import', async () => {
    const target = new NodeTarget({ url: other.url });
    try {
      await assert.rejects(
        importBundle({ input: await openBundleInput(sneakyBundle), target, progress: new SilentProgress(), policy: await readPolicyFile(policyFile) }),
        (err: unknown) => err instanceof BundleRefusedError && err.reason === 'policy' && /apps\/unsigned@sha256:[0-9a-f]{64} is refused by the default rule: no signature/.test(err.message),
      );
    } finally {
      await target.close();
    }
  });

  it('the CLI refuses the bundle with the unsigned image, with exit 3 and the reason', async () => {
    const r = await runShoal(['import', badBundle, '--node', other.url, '--policy', policyFile]);
    assert.equal(r.code, 3, r.stderr);
    assert.match(r.stderr, /bundle refused: the signature policy .* refuses 1 .*apps\/unsigned:v1: no signature/);
  });

  it('in warn mode, the same bundle imports, with a warning naming the unsigned image', async () => {
    const warnFile = join(dir, 'warn.json');
    await writeFile(warnFile, JSON.stringify({ mode: 'warn', default: [{ type: 'sigstoreSigned', keyPath: 'release.pub' }] }));
    const target = new NodeTarget({ url: other.url });
    try {
      const result = await importBundle({ input: await openBundleInput(badBundle), target, progress: new SilentProgress(), policy: await readPolicyFile(warnFile) });
      assert.deepEqual(result.images.map((i) => i.action), ['imported', 'imported', 'imported'], 'two images and the .sig tag of the signed one');
      assert.ok(result.warnings.some((w) => /warn mode\): imported, but would be refused: .*apps\/unsigned@sha256:[0-9a-f]{64} is refused by the default rule: no signature/.test(w)), result.warnings.join('\n'));
    } finally {
      await target.close();
    }
    assert.equal((await get(`${other.url}/v2/${seed.hostPort.replace(':', '-')}/apps/unsigned/manifests/v1`)).status, 200);
  });

  it('signed images import under the policy with their signatures, and a policy node pulls them from the peer', async () => {
    const target = new NodeTarget({ url: plain.url });
    let result;
    try {
      result = await importBundle({ input: await openBundleInput(goodBundle), target, progress: new SilentProgress(), policy: await readPolicyFile(policyFile) });
    } finally {
      await target.close();
    }
    assert.deepEqual(result.policy?.map((v) => [v.image.replace(/^.*\/apps/, 'apps'), v.allowed, v.reason]), [
      ['apps/a:v1', true, 'signed'],
      ['apps/b:v1', true, 'signed'],
    ]);
    const repo = (r: string) => `${seed.hostPort.replace(':', '-')}/${r}`;
    // The signature artifacts came along: the .sig tag, and the bundle referrer (by the referrers API).
    const a = images['apps/a']!;
    const sigTagName = `sha256-${a.manifestDigest.slice(7)}.sig`;
    assert.equal((await get(`${plain.url}/v2/${repo('apps/a')}/manifests/${sigTagName}`)).status, 200);
    const b = images['apps/b']!;
    const refs = JSON.parse((await get(`${plain.url}/v2/${repo('apps/b')}/referrers/${b.manifestDigest}`)).body) as { manifests: Array<{ artifactType: string }> };
    assert.deepEqual(refs.manifests.map((m) => m.artifactType), ['application/vnd.dev.sigstore.bundle.v0.3+json']);
    // The policy node has no seed: it gets the images, and their signatures, from its peer, and accepts them.
    for (const [name, img] of [['apps/a', a], ['apps/b', b]] as const) {
      await waitFor(`the policy node to see its peer hold ${name}`, () => guarded.node.peers!.holders(img.layers[0]!.digest).length > 0);
      const m = await get(`${guarded.url}/v2/${name}/manifests/v1?ns=${seed.hostPort}`);
      assert.equal(m.status, 200, m.body);
      const layer = await get(`${guarded.url}/v2/${name}/blobs/${img.layers[0]!.digest}?ns=${seed.hostPort}`);
      assert.equal(layer.status, 200, layer.body);
    }
  });
});
