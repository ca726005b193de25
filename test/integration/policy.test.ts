/**
 * The signature policy on the pull-through path: the real distribution registry (`docker-registry`) as seed,
 * images and their signatures (made here with node:crypto keys, in cosign's three layouts) pushed to it, and a
 * node in enforce or warn mode in front of it.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startTestNode, type TestNode } from '../helpers/node.ts';
import { SHOAL_BIN, runShoal } from '../helpers/spawn-node.ts';
import { spawn } from 'node:child_process';
import { dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { scrape } from '../helpers/metrics.ts';
import { pushManifest, pushRandomImage, sha256, startDockerRegistry, type DockerRegistry } from '../helpers/seed-registry.ts';
import { bundleReferrer, generateSigningKey, pushSignature, sigReferrer, sigTag, writePublicKey, type SigningKey } from '../helpers/cosign.ts';

const ACCEPT = [
  'application/vnd.oci.image.index.v1+json',
  'application/vnd.oci.image.manifest.v1+json',
  'application/vnd.docker.distribution.manifest.list.v2+json',
  'application/vnd.docker.distribution.manifest.v2+json',
].join(', ');

async function get(url: string, method = 'GET'): Promise<{ status: number; body: string; digest: string | null }> {
  const res = await fetch(url, { method, headers: { accept: ACCEPT }, signal: AbortSignal.timeout(30_000) });
  return { status: res.status, body: await res.text(), digest: res.headers.get('docker-content-digest') };
}

function errorOf(body: string): { code: string; message: string; detail?: { reason?: string; rule?: string } } {
  return (JSON.parse(body) as { errors: Array<{ code: string; message: string; detail?: { reason?: string; rule?: string } }> }).errors[0]!;
}

interface PushedImage {
  digest: string;
  descriptor: { mediaType: string; digest: string; size: number };
  config: { digest: string };
  layers: Array<{ digest: string }>;
}

/** A small random image pushed to `base` under `tag`. */
async function makeImage(base: string, repo: string, opts: { tag?: string } = {}): Promise<PushedImage> {
  const img = await pushRandomImage(base, repo, opts.tag ?? `t${Math.random().toString(36).slice(2, 10)}`, { layerSizes: [2048, 1024] });
  return {
    digest: img.manifestDigest,
    descriptor: { mediaType: img.manifestMediaType, digest: img.manifestDigest, size: img.manifestBytes.length },
    config: img.config,
    layers: img.layers,
  };
}

/** An OCI index over pushed manifests (amd64, arm64), under `tag`. */
async function makeIndex(base: string, repo: string, children: PushedImage['descriptor'][], opts: { tag: string }): Promise<{ digest: string }> {
  const mediaType = 'application/vnd.oci.image.index.v1+json';
  const bytes = Buffer.from(
    JSON.stringify({ schemaVersion: 2, mediaType, manifests: children.map((c, i) => ({ ...c, platform: { architecture: i % 2 ? 'arm64' : 'amd64', os: 'linux' } })) }),
  );
  await pushManifest(base, repo, opts.tag, bytes, mediaType);
  return { digest: sha256(bytes) };
}

let seed: DockerRegistry;
let dir: string;
let keyA: SigningKey;
let keyB: SigningKey;
let keyAPath: string;
const images: Record<string, PushedImage> = {};
let signedIndex: { digest: string; children: PushedImage[] };

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'shoal-policy-it-'));
  keyA = generateSigningKey('ecdsa');
  keyB = generateSigningKey('ecdsa');
  keyAPath = await writePublicKey(dir, 'a.pub', keyA);
  seed = await startDockerRegistry();
  const push = async (repo: string): Promise<PushedImage> => (images[repo] = await makeImage(seed.url, repo, { tag: 'v1' }));
  // cosign 2: the .sig tag
  await pushSignature(seed.url, 'apps/signed', sigTag(keyA, (await push('apps/signed')).digest, { reference: 'registry.local/apps/signed' }));
  // cosign 3: a Sigstore bundle referrer; the seed has no referrers API, so the tag schema's index goes with it
  const bundled = await push('apps/bundled');
  await pushSignature(seed.url, 'apps/bundled', bundleReferrer(keyA, bundled.descriptor), { referrersTag: { subject: bundled.digest, artifactType: 'application/vnd.dev.sigstore.bundle.v0.3+json' } });
  // cosign --registry-referrers-mode=oci-1-1
  const referred = await push('apps/referred');
  await pushSignature(seed.url, 'apps/referred', sigReferrer(keyA, referred.descriptor), { referrersTag: { subject: referred.digest, artifactType: 'application/vnd.dev.cosign.artifact.sig.v1+json' } });
  await push('apps/unsigned');
  await pushSignature(seed.url, 'apps/otherkey', sigTag(keyB, (await push('apps/otherkey')).digest));
  const decoy = await makeImage(seed.url, 'apps/otherdigest', { tag: 'v0' });
  await pushSignature(seed.url, 'apps/otherdigest', sigTag(keyA, (await push('apps/otherdigest')).digest, { signedDigest: decoy.digest }));
  await push('tools/jq');
  await push('library/nginx');
  // A multi-platform index, signed at the index.
  const children = [await makeImage(seed.url, 'apps/multi'), await makeImage(seed.url, 'apps/multi')];
  const index = await makeIndex(seed.url, 'apps/multi', children.map((c) => c.descriptor), { tag: 'v1' });
  await pushSignature(seed.url, 'apps/multi', sigTag(keyA, index.digest));
  signedIndex = { digest: index.digest, children };
});

after(async () => {
  await seed?.stop();
  await rm(dir, { recursive: true, force: true });
});

/** A node whose registries `registry.local`, `docker.io` and `other.local` (no scope names it) all pull through the one seed. */
async function policyNode(policy: unknown): Promise<{ node: TestNode; file: string }> {
  const file = join(dir, `policy-${Math.random().toString(36).slice(2)}.json`);
  await writeFile(file, JSON.stringify(policy));
  const node = await startTestNode({
    config: {
      registries: { 'registry.local': [{ url: seed.url }], 'docker.io': [{ url: seed.url }], 'other.local': [{ url: seed.url }] },
      policyFile: file,
      tagTimeoutMs: 2_000,
    },
  });
  return { node, file };
}

const SITE_POLICY = {
  default: [{ type: 'reject' }],
  transports: {
    docker: {
      'docker.io': [{ type: 'reject' }],
      'registry.local/apps': [{ type: 'sigstoreSigned', keyPath: 'a.pub' }],
      'registry.local/tools': [{ type: 'insecureAcceptAnything' }],
    },
  },
};

describe('signature policy, enforce mode, pull-through', () => {
  let node: TestNode;
  before(async () => {
    ({ node } = await policyNode(SITE_POLICY));
  });
  after(async () => {
    await node?.stop();
  });

  for (const repo of ['apps/signed', 'apps/bundled', 'apps/referred']) {
    it(`serves ${repo}, signed by the trusted key, with its layers`, async () => {
      const m = await get(`${node.url}/v2/${repo}/manifests/v1?ns=registry.local`);
      assert.equal(m.status, 200, m.body);
      assert.equal(m.digest, images[repo]!.digest);
      for (const layer of [images[repo]!.config, ...images[repo]!.layers]) {
        const b = await get(`${node.url}/v2/${repo}/blobs/${layer.digest}?ns=registry.local`);
        assert.equal(b.status, 200, b.body);
      }
    });
  }

  it('keeps the signatures it fetched, so that they travel on (to peers, into bundles)', async () => {
    const tags = JSON.parse((await get(`${node.url}/v2/apps/signed/tags/list?ns=registry.local`)).body) as { tags: string[] };
    assert.deepEqual(tags.tags.sort(), [`sha256-${images['apps/signed']!.digest.slice(7)}.sig`, 'v1']);
    const bundled = JSON.parse((await get(`${node.url}/v2/apps/bundled/referrers/${images['apps/bundled']!.digest}?ns=registry.local`)).body) as { manifests: Array<{ artifactType: string }> };
    assert.deepEqual(bundled.manifests.map((m) => m.artifactType), ['application/vnd.dev.sigstore.bundle.v0.3+json']);
  });

  it('serves a signed index, its platform manifests and their blobs', async () => {
    const top = await get(`${node.url}/v2/apps/multi/manifests/v1?ns=registry.local`);
    assert.equal(top.status, 200, top.body);
    assert.equal(top.digest, signedIndex.digest);
    for (const child of signedIndex.children) {
      const c = await get(`${node.url}/v2/apps/multi/manifests/${child.digest}?ns=registry.local`);
      assert.equal(c.status, 200, c.body);
      const b = await get(`${node.url}/v2/apps/multi/blobs/${child.layers[0]!.digest}?ns=registry.local`);
      assert.equal(b.status, 200, b.body);
    }
  });

  const refusals: Array<[string, string, RegExp]> = [
    ['apps/unsigned', 'no-signature', /no signature was found/],
    ['apps/otherkey', 'wrong-key', /wrong key: the signature does not verify with any trusted key/],
    ['apps/otherdigest', 'digest-mismatch', /digest mismatch: it signs sha256:[0-9a-f]{64}, not sha256:/],
  ];
  for (const [repo, reason, message] of refusals) {
    it(`refuses ${repo} (${reason}) with 403 DENIED naming the rule and the reason, for GET and HEAD`, async () => {
      const m = await get(`${node.url}/v2/${repo}/manifests/v1?ns=registry.local`);
      assert.equal(m.status, 403, m.body);
      const e = errorOf(m.body);
      assert.equal(e.code, 'DENIED');
      assert.match(e.message, /rule transports\.docker\["registry\.local\/apps"\]/);
      assert.match(e.message, message);
      assert.equal(e.detail?.reason, reason);
      assert.equal((await get(`${node.url}/v2/${repo}/manifests/v1?ns=registry.local`, 'HEAD')).status, 403);
      // Its blobs are not served on their own either.
      const b = await get(`${node.url}/v2/${repo}/blobs/${images[repo]!.layers[0]!.digest}?ns=registry.local`);
      assert.equal(b.status, 403, b.body);
      assert.equal(errorOf(b.body).detail?.reason, 'unreached');
    });
  }

  it('an index tagged like a referrers index serves, but the unsigned image it lists does not', async () => {
    const unsigned = images['apps/unsigned']!;
    const mediaType = 'application/vnd.oci.image.index.v1+json';
    const bytes = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType, manifests: [unsigned.descriptor] }));
    const tag = `sha256-${'0'.repeat(64)}`;
    await pushManifest(seed.url, 'apps/unsigned', tag, bytes, mediaType);
    assert.equal((await get(`${node.url}/v2/apps/unsigned/manifests/${tag}?ns=registry.local`)).status, 200);
    const child = await get(`${node.url}/v2/apps/unsigned/manifests/${unsigned.digest}?ns=registry.local`);
    assert.equal(child.status, 403, child.body);
    assert.equal(errorOf(child.body).detail?.reason, 'no-signature');
    const blob = await get(`${node.url}/v2/apps/unsigned/blobs/${unsigned.layers[0]!.digest}?ns=registry.local`);
    assert.equal(blob.status, 403);
    assert.equal(errorOf(blob.body).detail?.reason, 'unreached');
  });

  it('per scope: docker.io is rejected, registry.local/tools allows anything, the default rejects', async () => {
    const hub = await get(`${node.url}/v2/library/nginx/manifests/v1?ns=docker.io`);
    assert.equal(hub.status, 403, hub.body);
    assert.match(errorOf(hub.body).message, /rule transports\.docker\["docker\.io"\]: it rejects every image/);
    const tools = await get(`${node.url}/v2/tools/jq/manifests/v1?ns=registry.local`);
    assert.equal(tools.status, 200, tools.body);
    assert.equal((await get(`${node.url}/v2/tools/jq/blobs/${images['tools/jq']!.layers[0]!.digest}?ns=registry.local`)).status, 200);
    // The same seed's image under a registry no scope names: the default rule.
    const other = await get(`${node.url}/v2/apps/signed/manifests/v1?ns=127.0.0.1:${new URL(seed.url).port}`);
    assert.equal(other.status, 404, 'no seeds for that registry: not found, before any policy');
    // A registry with a seed that no scope names: the default rule, which rejects.
    const unnamed = await get(`${node.url}/v2/apps/signed/manifests/v1?ns=other.local`);
    assert.equal(unnamed.status, 403, unnamed.body);
    assert.match(errorOf(unnamed.body).message, /the default rule: it rejects every image/);
  });

  it('counts decisions, writes refusals to the audit log, and explains a verdict at /shoal/policy/verify', async () => {
    const metrics = await scrape(node.url);
    assert.ok(metrics.get('shoal_policy_decisions_total', { result: 'allowed', reason: 'signed' }) >= 4);
    assert.ok(metrics.get('shoal_policy_decisions_total', { result: 'denied', reason: 'no-signature' }) >= 1);
    assert.ok(metrics.get('shoal_policy_decisions_total', { result: 'denied', reason: 'wrong-key' }) >= 1);
    assert.ok(metrics.get('shoal_policy_decisions_total', { result: 'denied', reason: 'digest-mismatch' }) >= 1);
    assert.ok(metrics.get('shoal_policy_decisions_total', { result: 'denied', reason: 'rejected' }) >= 1);
    const audit = (await readFile(join(node.dataDir, 'audit.log'), 'utf8')).trim().split('\n').map((l) => JSON.parse(l) as Record<string, string>);
    const denied = audit.find((e) => e.repository === 'registry.local/apps/unsigned' && e.result === 'denied');
    assert.ok(denied, 'a refusal is in the audit log');
    assert.match(denied.detail!, /signature policy: .*no signature/);
    assert.equal(audit.filter((e) => e.repository === 'registry.local/apps/signed').length, 0, 'allowed pulls are not audited');
    const res = await fetch(`${node.url}/shoal/policy/verify?repository=apps/otherkey&reference=v1&ns=registry.local`);
    assert.equal(res.status, 200);
    const v = (await res.json()) as { result: string; reason: string; rule: string; served: boolean; signatures: Array<{ format: string; outcome: string }> };
    assert.equal(v.result, 'denied');
    assert.equal(v.served, false);
    assert.equal(v.reason, 'wrong-key');
    assert.deepEqual(v.signatures.map((s) => [s.format, s.outcome]), [['simple-signing-tag', 'wrong-key']]);
  });
});

describe('shoal verify-image', () => {
  let node: TestNode;
  before(async () => {
    ({ node } = await policyNode(SITE_POLICY));
  });
  after(async () => {
    await node?.stop();
  });

  it('explains an allowed image (exit 0) and a refused one (exit 1), naming rule, signatures and reason', async () => {
    const ok = await runShoal(['verify-image', 'registry.local/apps/bundled:v1', '--node', node.url]);
    assert.equal(ok.code, 0, ok.stderr);
    assert.match(ok.stdout, /verdict: allowed \(signed\)/);
    assert.match(ok.stdout, /sigstore-bundle sha256:[0-9a-f]{64}: valid: signed by .*a\.pub/);
    const refused = await runShoal(['verify-image', 'registry.local/apps/otherdigest:v1', '--node', node.url]);
    assert.equal(refused.code, 1, refused.stderr);
    assert.match(refused.stdout, /rule: rule transports\.docker\["registry\.local\/apps"\]/);
    assert.match(refused.stdout, /verdict: denied \(digest-mismatch\): not served/);
    const hub = await runShoal(['verify-image', 'nginx:v1', '--node', node.url, '--json']);
    assert.equal(hub.code, 1, hub.stderr);
    const v = JSON.parse(hub.stdout) as { image: string; reason: string };
    assert.equal(v.image, 'docker.io/library/nginx');
    assert.equal(v.reason, 'rejected');
  });
});

describe('deploy/containerd/shoal-image-verifier', () => {
  let node: TestNode;
  before(async () => {
    ({ node } = await policyNode(SITE_POLICY));
  });
  after(async () => {
    await node?.stop();
  });

  /** Runs the verifier as containerd's bindir plugin does: flags, and the image's descriptor on stdin. */
  const verifier = (name: string, digest: string): Promise<{ code: number; stdout: string }> =>
    new Promise((resolve, reject) => {
      const script = join(dirname(fileURLToPath(import.meta.url)), '../../deploy/containerd/shoal-image-verifier');
      const child = spawn(script, ['-name', name, '-digest', digest, '-stdin-media-type', 'application/vnd.oci.descriptor.v1+json'], {
        env: { PATH: process.env.PATH ?? '/usr/bin:/bin', SHOAL: SHOAL_BIN, SHOAL_NODE: node.url },
        stdio: ['pipe', 'pipe', 'inherit'],
      });
      let stdout = '';
      child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
      child.on('error', reject);
      child.on('close', (code) => resolve({ code: code ?? -1, stdout }));
      child.stdin.end(JSON.stringify({ mediaType: 'application/vnd.oci.image.manifest.v1+json', digest, size: 1 }));
    });

  it('allows a signed image (exit 0) and blocks an unsigned one, the reason on its first line', async () => {
    const ok = await verifier('registry.local/apps/signed:v1', images['apps/signed']!.digest);
    assert.equal(ok.code, 0, ok.stdout);
    assert.match(ok.stdout.split('\n')[0]!, /is allowed by rule transports\.docker\["registry\.local\/apps"\]: signed by/);
    const no = await verifier('registry.local/apps/unsigned:v1', images['apps/unsigned']!.digest);
    assert.notEqual(no.code, 0);
    assert.match(no.stdout.split('\n')[0]!, /registry\.local\/apps\/unsigned@sha256:[0-9a-f]{64} is refused by .*: no signature was found/);
  });
});

describe('a policy file that cannot be used', () => {
  it('stops `shoal serve` from starting, saying what is wrong and where', async () => {
    const bad = join(dir, 'bad-policy.json');
    await writeFile(bad, JSON.stringify({ default: [{ type: 'sigstoreSigned', keyPath: 'missing.pub' }] }));
    const data = await mkdtemp(join(tmpdir(), 'shoal-policy-bad-'));
    try {
      const r = await runShoal(['serve', '--data', data, '--listen', '127.0.0.1:0', '--policy', bad]);
      assert.notEqual(r.code, 0);
      assert.match(r.stderr, /bad-policy\.json: default\[0\]\.keyPath: cannot read key .*missing\.pub: ENOENT/);
    } finally {
      await rm(data, { recursive: true, force: true });
    }
  });
});

describe('signature policy, warn mode', () => {
  let node: TestNode;
  before(async () => {
    ({ node } = await policyNode({ ...SITE_POLICY, mode: 'warn' }));
  });
  after(async () => {
    await node?.stop();
  });

  it('serves unsigned, wrongly signed and mis-signed images, and counts each as warned', async () => {
    for (const repo of ['apps/unsigned', 'apps/otherkey', 'apps/otherdigest']) {
      const m = await get(`${node.url}/v2/${repo}/manifests/v1?ns=registry.local`);
      assert.equal(m.status, 200, m.body);
      const b = await get(`${node.url}/v2/${repo}/blobs/${images[repo]!.layers[0]!.digest}?ns=registry.local`);
      assert.equal(b.status, 200, b.body);
    }
    const metrics = await scrape(node.url);
    assert.equal(metrics.get('shoal_policy_decisions_total', { result: 'warned', reason: 'no-signature' }), 1);
    assert.equal(metrics.get('shoal_policy_decisions_total', { result: 'warned', reason: 'wrong-key' }), 1);
    assert.equal(metrics.get('shoal_policy_decisions_total', { result: 'warned', reason: 'digest-mismatch' }), 1);
    assert.equal(metrics.get('shoal_policy_decisions_total', { result: 'denied' }), 0);
    const audit = (await readFile(join(node.dataDir, 'audit.log'), 'utf8')).trim().split('\n').map((l) => JSON.parse(l) as Record<string, string>);
    const warned = audit.filter((e) => e.result === 'ok' && /warn mode, served/.test(e.detail ?? ''));
    assert.deepEqual(warned.map((e) => e.repository).sort(), ['registry.local/apps/otherdigest', 'registry.local/apps/otherkey', 'registry.local/apps/unsigned']);
  });
});
