import { strict as assert } from 'node:assert';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import pino from 'pino';
import { Registry } from 'prom-client';
import { parseManifest, type Descriptor } from '../../src/oci/index.ts';
import { PolicyEngine, PolicyError, isSignatureArtifact, signatureArtifactKind, judgeImage, parsePolicy, preAuthEncoding, ruleFor, type SignatureSource } from '../../src/policy/index.ts';
import { bundleReferrer, generateSigningKey, sigReferrer, sigTag, writePublicKey, type KeyKind, type SignatureArtifact, type SigningKey } from '../helpers/cosign.ts';
import { sha256 } from '../helpers/oci-client.ts';
import { policyImageName } from '../../src/registry/policy.ts';

/** A registry in memory: tags, manifests and blobs, as a SignatureSource. */
class MemorySource implements SignatureSource {
  readonly tags = new Map<string, string>();
  readonly manifests = new Map<string, Buffer>();
  readonly blobs = new Map<string, Buffer>();

  add(artifact: SignatureArtifact): this {
    for (const b of artifact.blobs) this.blobs.set(sha256(b), b);
    this.manifests.set(artifact.digest, artifact.manifest);
    if (artifact.tag) this.tags.set(artifact.tag, artifact.digest);
    return this;
  }

  async tagged(tag: string) {
    const digest = this.tags.get(tag);
    return digest ? { digest, bytes: this.manifests.get(digest)! } : undefined;
  }

  async referrers(digest: string): Promise<Descriptor[]> {
    const out: Descriptor[] = [];
    for (const [d, bytes] of this.manifests) {
      const parsed = parseManifest(bytes, undefined);
      if (parsed.subject?.digest === digest) out.push({ mediaType: parsed.mediaType, digest: d, size: bytes.length, artifactType: parsed.artifactType });
    }
    return out;
  }

  async manifest(digest: string) {
    return this.manifests.get(digest);
  }

  async blob(digest: string) {
    return this.blobs.get(digest);
  }
}

const image: Descriptor = { mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: sha256('an image manifest'), size: 17 };
const other = sha256('another image manifest');

let dir: string;
const keys = new Map<KeyKind, SigningKey>();
const paths = new Map<KeyKind, string>();
let stranger: SigningKey;

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'shoal-policy-'));
  for (const kind of ['ecdsa', 'ed25519', 'rsa'] as const) {
    keys.set(kind, generateSigningKey(kind));
    paths.set(kind, await writePublicKey(dir, `${kind}.pub`, keys.get(kind)!));
  }
  stranger = generateSigningKey('ecdsa');
});

after(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function policyFor(kind: KeyKind, extra: Record<string, unknown> = {}) {
  return parsePolicy(JSON.stringify({ default: [{ type: 'sigstoreSigned', keyPath: paths.get(kind) }], ...extra }), 'policy.json', dir);
}

describe('policy file', () => {
  it('picks the most specific scope, on path boundaries, and the default otherwise', async () => {
    const p = await parsePolicy(
      JSON.stringify({
        default: [{ type: 'reject' }],
        transports: {
          docker: {
            'docker.io': [{ type: 'reject' }],
            'registry.local/apps': [{ type: 'sigstoreSigned', keyPath: 'ecdsa.pub' }],
            'registry.local/apps/web': [{ type: 'insecureAcceptAnything' }],
            'registry.local/tools': [{ type: 'insecureAcceptAnything' }],
          },
        },
      }),
      'policy.json',
      dir,
    );
    assert.equal(p.mode, 'enforce');
    assert.equal(ruleFor(p, 'docker.io/library/nginx').scope, 'docker.io');
    assert.equal(ruleFor(p, 'registry.local/apps/api').scope, 'registry.local/apps');
    assert.equal(ruleFor(p, 'registry.local/apps/web').scope, 'registry.local/apps/web');
    assert.equal(ruleFor(p, 'registry.local/apps/webshop').scope, 'registry.local/apps');
    assert.equal(ruleFor(p, 'registry.local/appsx/a').scope, 'default');
    assert.equal(ruleFor(p, 'registry.local/tools/jq').requirements[0]!.type, 'insecureAcceptAnything');
  });

  it('reads keyData (base64 of the PEM) and keyPaths', async () => {
    const p = await parsePolicy(
      JSON.stringify({
        mode: 'warn',
        default: [{ type: 'sigstoreSigned', keyData: Buffer.from(keys.get('ed25519')!.publicPem).toString('base64') }],
        transports: { docker: { 'registry.local': [{ type: 'sigstoreSigned', keyPaths: [paths.get('ecdsa'), paths.get('rsa')] }] } },
      }),
      'policy.json',
      dir,
    );
    assert.equal(p.mode, 'warn');
    const def = p.default.requirements[0]!;
    assert.equal(def.type === 'sigstoreSigned' && def.keys[0]!.key.asymmetricKeyType, 'ed25519');
    const scoped = p.scopes[0]!.requirements[0]!;
    assert.equal(scoped.type === 'sigstoreSigned' && scoped.keys.length, 2);
  });

  const bad: Array<[string, string, RegExp]> = [
    ['not JSON', '{', /not JSON/],
    ['no default', '{"transports":{}}', /"default" is missing/],
    ['unknown type', '{"default":[{"type":"signedBy"}]}', /unknown requirement type "signedBy".*GPG/],
    ['bad mode', '{"mode":"audit","default":[{"type":"reject"}]}', /mode "audit" is neither/],
    ['missing key file', '{"default":[{"type":"sigstoreSigned","keyPath":"nope.pub"}]}', /cannot read key .*nope\.pub: ENOENT/],
    ['two key fields', '{"default":[{"type":"sigstoreSigned","keyPath":"a","keyData":"b"}]}', /exactly one of keyPath, keyPaths or keyData/],
    ['not a key', '{"default":[{"type":"sigstoreSigned","keyData":"aGVsbG8="}]}', /not a PEM public key/],
    ['scope without host', '{"default":[{"type":"reject"}],"transports":{"docker":{"library/nginx":[{"type":"reject"}]}}}', /must start with a registry host/],
    ['other transport', '{"default":[{"type":"reject"}],"transports":{"atomic":{}}}', /transport "atomic" is not supported/],
    ['unknown field', '{"default":[{"type":"reject","keyPath":"x"}]}', /reject has no field "keyPath"/],
    ['empty requirements', '{"default":[]}', /non-empty list/],
    ['signedIdentity', '{"default":[{"type":"sigstoreSigned","keyData":"aGVsbG8=","signedIdentity":{"type":"matchRepository"}}]}', /signedIdentity is not supported/],
  ];
  for (const [what, text, message] of bad) {
    it(`refuses a policy with ${what}, saying what is wrong`, async () => {
      await assert.rejects(parsePolicy(text, 'policy.json', dir), (err: Error) => err instanceof PolicyError && message.test(err.message));
    });
  }
});

describe('the image name scopes are matched against', () => {
  it('is the ?ns= registry plus the path, else the stored repository with its registry restored', () => {
    assert.equal(policyImageName({ repository: 'docker.io/library/nginx', upstream: 'library/nginx', namespace: 'docker.io' }), 'docker.io/library/nginx');
    assert.equal(policyImageName({ repository: 'registry.local-5000/apps/web', upstream: 'apps/web', namespace: 'registry.local:5000' }), 'registry.local:5000/apps/web');
    assert.equal(policyImageName({ repository: 'registry.local-5000/apps/web', upstream: 'registry.local-5000/apps/web' }), 'registry.local:5000/apps/web');
    assert.equal(policyImageName({ repository: 'apps/web', upstream: 'apps/web' }), 'apps/web');
  });
});

describe('signature formats', () => {
  for (const kind of ['ecdsa', 'ed25519', 'rsa'] as const) {
    const formats: Array<[string, (k: SigningKey, o?: { signedDigest?: string }) => SignatureArtifact]> = [
      ['a cosign .sig tag', (k, o) => sigTag(k, image.digest, o)],
      ['an OCI 1.1 simple-signing referrer', (k, o) => sigReferrer(k, image, o)],
      ['a Sigstore bundle v0.3 referrer', (k, o) => bundleReferrer(k, image, o)],
    ];
    for (const [name, make] of formats) {
      it(`${kind}: ${name} by the trusted key allows the image`, async () => {
        const policy = await policyFor(kind);
        const v = await judgeImage(new MemorySource().add(make(keys.get(kind)!)), 'registry.local/app', image.digest, policy.default);
        assert.equal(v.allowed, true, v.message);
        assert.equal(v.reason, 'signed');
        assert.match(v.message, new RegExp(`signed by .*${kind}\\.pub`));
      });
      it(`${kind}: ${name} by another key is refused as wrong key`, async () => {
        const policy = await policyFor(kind);
        const v = await judgeImage(new MemorySource().add(make(stranger)), 'registry.local/app', image.digest, policy.default);
        assert.equal(v.allowed, false);
        assert.equal(v.reason, 'wrong-key');
        assert.match(v.message, /refused by the default rule: wrong key/);
      });
      it(`${kind}: ${name} over another digest is refused as digest mismatch`, async () => {
        const policy = await policyFor(kind);
        const v = await judgeImage(new MemorySource().add(make(keys.get(kind)!, { signedDigest: other })), 'registry.local/app', image.digest, policy.default);
        assert.equal(v.allowed, false);
        assert.equal(v.reason, 'digest-mismatch');
        assert.ok(v.message.includes(`it signs ${other}, not ${image.digest}`), v.message);
      });
    }
  }

  it('an image without signatures is refused as no signature', async () => {
    const v = await judgeImage(new MemorySource(), 'registry.local/app', image.digest, (await policyFor('ecdsa')).default);
    assert.equal(v.reason, 'no-signature');
    assert.match(v.message, /no signature was found/);
  });

  it('a bundle version it cannot read, or a Notation signature, is refused as unreadable, not skipped', async () => {
    const policy = await policyFor('ecdsa');
    const future = bundleReferrer(keys.get('ecdsa')!, image, { bundleMediaType: 'application/vnd.dev.sigstore.bundle.v0.9+json' });
    const v = await judgeImage(new MemorySource().add(future), 'registry.local/app', image.digest, policy.default);
    assert.equal(v.reason, 'unreadable');
    assert.match(v.message, /unreadable signature format: .*v0\.9/);
    const notation = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: 'application/vnd.oci.image.manifest.v1+json',
        artifactType: 'application/vnd.cncf.notary.signature',
        config: { mediaType: 'application/vnd.oci.empty.v1+json', digest: sha256('{}'), size: 2 },
        layers: [{ mediaType: 'application/jose+json', digest: sha256('jws'), size: 3 }],
        subject: image,
      }),
    );
    const source = new MemorySource();
    source.manifests.set(sha256(notation), notation);
    const n = await judgeImage(source, 'registry.local/app', image.digest, policy.default);
    assert.equal(n.reason, 'unreadable');
    assert.match(n.message, /Notation/);
  });

  it('a valid signature wins over bad ones beside it', async () => {
    const source = new MemorySource().add(sigTag(stranger, image.digest)).add(bundleReferrer(keys.get('ecdsa')!, image));
    const v = await judgeImage(source, 'registry.local/app', image.digest, (await policyFor('ecdsa')).default);
    assert.equal(v.allowed, true);
    assert.deepEqual(v.signatures.map((s) => s.outcome).sort(), ['valid', 'wrong-key']);
  });

  it('reject refuses, insecureAcceptAnything allows, without reading signatures', async () => {
    const p = await parsePolicy('{"default":[{"type":"reject"}],"transports":{"docker":{"registry.local/tools":[{"type":"insecureAcceptAnything"}]}}}', 'p', dir);
    const r = await judgeImage(new MemorySource(), 'docker.io/library/nginx', image.digest, ruleFor(p, 'docker.io/library/nginx'));
    assert.equal(r.reason, 'rejected');
    const a = await judgeImage(new MemorySource(), 'registry.local/tools/jq', image.digest, ruleFor(p, 'registry.local/tools/jq'));
    assert.equal(a.reason, 'accept-anything');
  });

  it('with a pinned Rekor key, a signature needs a transparency-log entry that key signed (checked offline)', async () => {
    const rekor = generateSigningKey('ecdsa');
    const fake = generateSigningKey('ecdsa');
    const rekorPath = await writePublicKey(dir, 'rekor.pub', rekor);
    const policy = await parsePolicy(JSON.stringify({ default: [{ type: 'sigstoreSigned', keyPath: paths.get('ecdsa'), rekorPublicKeyPath: rekorPath }] }), 'p', dir);
    const k = keys.get('ecdsa')!;
    for (const make of [(o: { rekor?: SigningKey }) => sigTag(k, image.digest, o), (o: { rekor?: SigningKey }) => bundleReferrer(k, image, o)]) {
      const good = await judgeImage(new MemorySource().add(make({ rekor })), 'registry.local/app', image.digest, policy.default);
      assert.equal(good.allowed, true, good.message);
      const none = await judgeImage(new MemorySource().add(make({})), 'registry.local/app', image.digest, policy.default);
      assert.equal(none.reason, 'tlog-invalid');
      assert.match(none.message, /no transparency-log entry/);
      const forged = await judgeImage(new MemorySource().add(make({ rekor: fake })), 'registry.local/app', image.digest, policy.default);
      assert.equal(forged.reason, 'tlog-invalid');
      assert.match(forged.message, /not signed by the pinned Rekor key/);
    }
  });

  it('PAE is the DSSE encoding', () => {
    assert.equal(preAuthEncoding('application/example', Buffer.from('hello world')).toString(), 'DSSEv1 19 application/example 11 hello world');
  });

  it('tells signature artifacts from images', () => {
    const k = keys.get('ecdsa')!;
    assert.equal(isSignatureArtifact(sigTag(k, image.digest).manifest, undefined), true);
    assert.equal(isSignatureArtifact(sigReferrer(k, image).manifest, undefined), true);
    assert.equal(isSignatureArtifact(bundleReferrer(k, image).manifest, undefined), true);
    const plain = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: image.mediaType, config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: other, size: 2 }, layers: [] }));
    assert.equal(isSignatureArtifact(plain, 'latest'), false);
    // Dressed as a signature (subject, artifactType) but with layers a runtime unpacks: an image, judged as one.
    const disguised = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: image.mediaType,
        artifactType: 'application/vnd.dev.sigstore.bundle.v0.3+json',
        config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: other, size: 2 },
        layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', digest: other, size: 2 }],
        subject: image,
      }),
    );
    assert.equal(isSignatureArtifact(disguised, 'sha256-' + 'a'.repeat(64) + '.sig'), false);
    const index = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: 'application/vnd.oci.image.index.v1+json', manifests: [image] }));
    assert.equal(signatureArtifactKind(index, 'sha256-' + 'a'.repeat(64)), 'referrers-index');
    assert.equal(signatureArtifactKind(index, 'v1'), undefined);
  });
});

describe('policy engine', () => {
  it('counts decisions, keeps verdicts, and reloads the file when it changes (a broken file keeps the last good one)', async () => {
    const file = join(dir, 'engine.json');
    await writeFile(file, JSON.stringify({ default: [{ type: 'sigstoreSigned', keyPath: paths.get('ecdsa') }] }));
    const metrics = new Registry();
    const engine = await PolicyEngine.open({ file, logger: pino({ level: 'silent' }), metrics, checkIntervalMs: 20 });
    try {
      const d = await engine.decide('registry.local/app', 'registry.local/app', image.digest, new MemorySource());
      assert.equal(d.result, 'denied');
      assert.equal(engine.kept('registry.local/app', image.digest)?.reason, 'no-signature');
      const text = await metrics.metrics();
      assert.match(text, /shoal_policy_decisions_total\{result="denied",reason="no-signature"\} 1/);
      await writeFile(file, JSON.stringify({ mode: 'warn', default: [{ type: 'sigstoreSigned', keyPath: paths.get('ecdsa') }] }));
      for (let i = 0; i < 500 && engine.mode !== 'warn'; i++) await new Promise((r) => setTimeout(r, 10));
      assert.equal(engine.mode, 'warn');
      assert.equal(engine.kept('registry.local/app', image.digest), undefined, 'verdicts of the old policy are forgotten');
      const w = await engine.decide('registry.local/app', 'registry.local/app', image.digest, new MemorySource());
      assert.equal(w.result, 'warned');
      assert.equal(engine.reaches('registry.local/app', image.digest), true);
      await writeFile(file, '{ broken');
      await new Promise((r) => setTimeout(r, 200));
      assert.equal(engine.mode, 'warn');
    } finally {
      await engine.stop();
    }
  });

  it('answers with a kept verdict that let the image through, and judges a kept refusal again', async () => {
    const file = join(dir, 'kept.json');
    await writeFile(file, JSON.stringify({ default: [{ type: 'sigstoreSigned', keyPath: paths.get('ecdsa') }] }));
    const engine = await PolicyEngine.open({ file, logger: pino({ level: 'silent' }) });
    try {
      const source = new MemorySource();
      let lookups = 0;
      const tagged = source.tagged.bind(source);
      source.tagged = (tag: string) => {
        lookups++;
        return tagged(tag);
      };
      const decide = (fresh?: boolean) => engine.decide('registry.local/app', 'registry.local/app', image.digest, source, { fresh });
      const refused = await decide();
      assert.deepEqual([refused.result, refused.fresh], ['denied', true]);
      // A refusal is not the last word: asked again, the image is judged again.
      const before = lookups;
      const again = await decide();
      assert.deepEqual([again.result, again.fresh], ['denied', true]);
      assert.ok(lookups > before, 'a kept refusal was served without judging again');
      // The signature comes; the next ask lets the image through and keeps that.
      source.add(sigTag(keys.get('ecdsa')!, image.digest));
      const allowed = await decide();
      assert.deepEqual([allowed.result, allowed.fresh], ['allowed', true]);
      const judged = lookups;
      const kept = await decide();
      assert.deepEqual([kept.result, kept.fresh, kept.reason], ['allowed', false, 'signed']);
      assert.equal(lookups, judged, 'a kept verdict that let the image through is not judged again');
      assert.equal(engine.reaches('registry.local/app', image.digest), true);
      // `fresh` judges again even then.
      const verified = await decide(true);
      assert.deepEqual([verified.result, verified.fresh], ['allowed', true]);
      assert.ok(lookups > judged);
    } finally {
      await engine.stop();
    }
  });
});
