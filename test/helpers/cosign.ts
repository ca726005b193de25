/**
 * Signs images for tests the way cosign lays its signatures out, with keys node:crypto generates:
 * - `sigTag`: cosign 2's `sha256-<hex>.sig` tag (simple-signing payload layers, base64 signature annotation);
 * - `sigReferrer`: the same manifest as an OCI 1.1 referrer (artifactType + subject);
 * - `bundleReferrer`: cosign 3's Sigstore bundle v0.3 referrer (DSSE envelope over an in-toto statement).
 * Each returns the artifact's blobs and manifest, to push anywhere (a seed, a node, a bundle).
 *
 * Nothing here imports src/: it writes the formats from their description, so the verifier is tested against an
 * independent writer.
 */
import { generateKeyPairSync, sign, type KeyObject } from 'node:crypto';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { MediaTypes, sha256, type Descriptor } from './oci-client.ts';
import { pushBlob, pushManifest } from './seed-registry.ts';

/** What a signature names as its subject. */
export interface Subject {
  mediaType: string;
  digest: string;
  size: number;
}

export type KeyKind = 'ecdsa' | 'ed25519' | 'rsa';

export interface SigningKey {
  kind: KeyKind;
  privateKey: KeyObject;
  publicKey: KeyObject;
  publicPem: string;
}

export function generateSigningKey(kind: KeyKind = 'ecdsa'): SigningKey {
  const pair =
    kind === 'ecdsa'
      ? generateKeyPairSync('ec', { namedCurve: 'prime256v1' })
      : kind === 'ed25519'
        ? generateKeyPairSync('ed25519')
        : generateKeyPairSync('rsa', { modulusLength: 2048 });
  return { kind, ...pair, publicPem: pair.publicKey.export({ type: 'spki', format: 'pem' }).toString() };
}

/** Writes a key's public PEM into `dir` as `name`; returns the path. */
export async function writePublicKey(dir: string, name: string, key: SigningKey): Promise<string> {
  await mkdir(dir, { recursive: true });
  const path = join(dir, name);
  await writeFile(path, key.publicPem);
  return path;
}

function signBytes(key: SigningKey, data: Buffer): Buffer {
  return sign(key.kind === 'ed25519' ? null : 'sha256', data, key.privateKey);
}

/** A signature artifact: blobs to upload, then the manifest (under `reference`: a tag, or its digest). */
export interface SignatureArtifact {
  blobs: Buffer[];
  manifest: Buffer;
  mediaType: string;
  digest: string;
  /** The tag it goes under (`sha256-<hex>.sig`), or undefined for a referrer (pushed by digest). */
  tag?: string;
}

const EMPTY = Buffer.from('{}');

function descriptor(data: Buffer, mediaType: string, extra: Record<string, unknown> = {}): Descriptor {
  return { mediaType, digest: sha256(data), size: data.length, ...extra };
}

/** cosign's simple-signing payload naming `signedDigest` (normally the image's own digest). */
export function simpleSigningPayload(reference: string, signedDigest: string): Buffer {
  return Buffer.from(
    JSON.stringify({ critical: { identity: { 'docker-reference': reference }, image: { 'docker-manifest-digest': signedDigest }, type: 'cosign container image signature' }, optional: null }),
  );
}

export interface SignOptions {
  /** The image name written into the payload. */
  reference?: string;
  /** Sign this digest instead of the image's (a signature over another digest). */
  signedDigest?: string;
  /** Embed a transparency-log entry for the signature, its timestamp signed by this (test) Rekor key. */
  rekor?: SigningKey;
}

/** A Rekor entry for `signature` and its signed entry timestamp (over the canonical JSON of the entry). */
export function rekorEntry(rekor: SigningKey, signature: string): { body: string; integratedTime: number; logIndex: number; logIDHex: string; set: string } {
  const body = Buffer.from(JSON.stringify({ apiVersion: '0.0.1', kind: 'hashedrekord', spec: { signature: { content: signature } } })).toString('base64');
  const integratedTime = 1_764_000_000;
  const logIndex = 4242;
  const logIDHex = sha256(Buffer.from(rekor.publicPem)).slice(7);
  // Keys in sorted order, no spaces: the canonical form Rekor signs.
  const canonical = JSON.stringify({ body, integratedTime, logID: logIDHex, logIndex });
  return { body, integratedTime, logIndex, logIDHex, set: signBytes(rekor, Buffer.from(canonical)).toString('base64') };
}

function cosignRekorBundle(rekor: SigningKey, signature: string): string {
  const e = rekorEntry(rekor, signature);
  return JSON.stringify({ SignedEntryTimestamp: e.set, Payload: { body: e.body, integratedTime: e.integratedTime, logIndex: e.logIndex, logID: e.logIDHex } });
}

function simpleSigningManifest(key: SigningKey, digest: string, opts: SignOptions, extra: Record<string, unknown>): { blobs: Buffer[]; manifest: Buffer } {
  const payload = simpleSigningPayload(opts.reference ?? 'registry.local/image', opts.signedDigest ?? digest);
  const signature = signBytes(key, payload).toString('base64');
  const config = Buffer.from(JSON.stringify({ architecture: '', os: '', config: {}, rootfs: { type: 'layers', diff_ids: [sha256(payload)] } }));
  const configDescriptor = extra.artifactType ? descriptor(EMPTY, MediaTypes.OciEmpty) : descriptor(config, MediaTypes.OciConfig);
  const doc = {
    schemaVersion: 2,
    mediaType: MediaTypes.OciManifest,
    ...(extra.artifactType ? { artifactType: extra.artifactType } : {}),
    config: configDescriptor,
    layers: [
      descriptor(payload, 'application/vnd.dev.cosign.simplesigning.v1+json', {
        annotations: {
          'dev.cosignproject.cosign/signature': signature,
          ...(opts.rekor ? { 'dev.sigstore.cosign/bundle': cosignRekorBundle(opts.rekor, signature) } : {}),
        },
      }),
    ],
    ...(extra.subject ? { subject: extra.subject } : {}),
  };
  return { blobs: [extra.artifactType ? EMPTY : config, payload], manifest: Buffer.from(JSON.stringify(doc)) };
}

/** cosign 2: the `sha256-<hex>.sig` tag. */
export function sigTag(key: SigningKey, digest: string, opts: SignOptions = {}): SignatureArtifact {
  const { blobs, manifest } = simpleSigningManifest(key, digest, opts, {});
  return { blobs, manifest, mediaType: MediaTypes.OciManifest, digest: sha256(manifest), tag: `sha256-${digest.slice('sha256:'.length)}.sig` };
}

/** cosign with `--registry-referrers-mode=oci-1-1`: the simple-signing manifest as a referrer of `subject`. */
export function sigReferrer(key: SigningKey, subject: Subject, opts: SignOptions = {}): SignatureArtifact {
  const { blobs, manifest } = simpleSigningManifest(key, subject.digest, opts, {
    artifactType: 'application/vnd.dev.cosign.artifact.sig.v1+json',
    subject: { mediaType: subject.mediaType, digest: subject.digest, size: subject.size },
  });
  return { blobs, manifest, mediaType: MediaTypes.OciManifest, digest: sha256(manifest) };
}

function pae(type: string, body: Buffer): Buffer {
  const t = Buffer.from(type);
  return Buffer.concat([Buffer.from(`DSSEv1 ${t.length} `), t, Buffer.from(` ${body.length} `), body]);
}

function bundleTlogEntry(rekor: SigningKey, signature: string): Record<string, unknown> {
  const e = rekorEntry(rekor, signature);
  return {
    logIndex: String(e.logIndex),
    logId: { keyId: Buffer.from(e.logIDHex, 'hex').toString('base64') },
    kindVersion: { kind: 'dsse', version: '0.0.1' },
    integratedTime: String(e.integratedTime),
    inclusionPromise: { signedEntryTimestamp: e.set },
    canonicalizedBody: e.body,
  };
}

const BUNDLE_TYPE = 'application/vnd.dev.sigstore.bundle.v0.3+json';

/** cosign 3's default: a Sigstore bundle v0.3 referrer (DSSE over an in-toto statement of the image digest). */
export function bundleReferrer(key: SigningKey, subject: Subject, opts: SignOptions & { bundleMediaType?: string } = {}): SignatureArtifact {
  const signed = opts.signedDigest ?? subject.digest;
  const statement = Buffer.from(
    JSON.stringify({
      _type: 'https://in-toto.io/Statement/v1',
      subject: [{ name: opts.reference ?? 'registry.local/image', digest: { sha256: signed.slice('sha256:'.length) } }],
      predicateType: 'https://sigstore.dev/cosign/sign/v1',
      predicate: {},
    }),
  );
  const payloadType = 'application/vnd.in-toto+json';
  const sig = signBytes(key, pae(payloadType, statement)).toString('base64');
  const bundle = Buffer.from(
    JSON.stringify({
      mediaType: opts.bundleMediaType ?? BUNDLE_TYPE,
      verificationMaterial: {
        publicKey: { hint: sha256(Buffer.from(key.publicPem)).slice(7, 39) },
        ...(opts.rekor ? { tlogEntries: [bundleTlogEntry(opts.rekor, sig)] } : {}),
      },
      dsseEnvelope: { payload: statement.toString('base64'), payloadType, signatures: [{ sig, keyid: '' }] },
    }),
  );
  const doc = {
    schemaVersion: 2,
    mediaType: MediaTypes.OciManifest,
    artifactType: BUNDLE_TYPE,
    config: descriptor(EMPTY, MediaTypes.OciEmpty),
    layers: [descriptor(bundle, BUNDLE_TYPE)],
    subject: { mediaType: subject.mediaType, digest: subject.digest, size: subject.size },
    annotations: { 'dev.sigstore.bundle.content': 'dsse-envelope', 'dev.sigstore.bundle.predicateType': 'https://sigstore.dev/cosign/sign/v1' },
  };
  const manifest = Buffer.from(JSON.stringify(doc));
  return { blobs: [EMPTY, bundle], manifest, mediaType: MediaTypes.OciManifest, digest: sha256(manifest) };
}

/**
 * Pushes a signature artifact to a registry: its blobs, then its manifest (by tag, or by digest). For a referrer,
 * `referrersTag` also writes the OCI tag schema's index (`sha256-<hex>`), as cosign does on a registry without the
 * referrers API (docker-registry 2.8).
 */
export async function pushSignature(base: string, repo: string, artifact: SignatureArtifact, opts: { referrersTag?: { subject: string; artifactType: string } } = {}): Promise<void> {
  for (const b of artifact.blobs) await pushBlob(base, repo, b);
  await pushManifest(base, repo, artifact.tag ?? artifact.digest, artifact.manifest, artifact.mediaType);
  if (opts.referrersTag) {
    const index = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: MediaTypes.OciIndex,
        manifests: [{ mediaType: artifact.mediaType, digest: artifact.digest, size: artifact.manifest.length, artifactType: opts.referrersTag.artifactType }],
      }),
    );
    const tag = `sha256-${opts.referrersTag.subject.slice('sha256:'.length)}`;
    await pushManifest(base, repo, tag, index, MediaTypes.OciIndex);
  }
}
