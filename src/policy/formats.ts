/**
 * The signature formats cosign and other Sigstore clients store next to an image, read with node:crypto alone:
 *
 * - `simple-signing`: cosign's `sha256-<hex>.sig` tag. An image manifest whose layers are simple-signing payloads
 *   (`application/vnd.dev.cosign.simplesigning.v1+json`, a JSON document naming the signed manifest digest under
 *   `critical.image.docker-manifest-digest`); each layer's annotation `dev.cosignproject.cosign/signature` is the
 *   base64 signature over the payload bytes.
 * - the same manifest as an OCI 1.1 referrer (artifactType `application/vnd.dev.cosign.artifact.sig.v1+json`, a
 *   `subject` naming the image).
 * - `sigstore-bundle`: cosign 3's default, a referrer whose one layer is a Sigstore bundle (v0.1 to v0.3) holding a
 *   DSSE envelope over an in-toto statement whose subject digest is the image's.
 *
 * Nothing here contacts Rekor, Fulcio or a TUF repository; a transparency-log entry embedded in a signature is
 * checked only when a Rekor public key is pinned in the policy.
 */
import { constants, verify, type KeyObject } from 'node:crypto';
import type { TrustedPublicKey } from './file.ts';

export const SIMPLE_SIGNING_MEDIA_TYPE = 'application/vnd.dev.cosign.simplesigning.v1+json';
export const COSIGN_SIGNATURE_ANNOTATION = 'dev.cosignproject.cosign/signature';
/** The Rekor bundle cosign attaches to a simple-signing layer (signed entry timestamp and the entry). */
export const COSIGN_REKOR_BUNDLE_ANNOTATION = 'dev.sigstore.cosign/bundle';
/** artifactType of cosign's simple-signing signatures stored as OCI 1.1 referrers. */
export const COSIGN_SIGNATURE_ARTIFACT_TYPE = 'application/vnd.dev.cosign.artifact.sig.v1+json';
export const SIGSTORE_BUNDLE_V03 = 'application/vnd.dev.sigstore.bundle.v0.3+json';
export const NOTATION_SIGNATURE_ARTIFACT_TYPE = 'application/vnd.cncf.notary.signature';
export const IN_TOTO_PAYLOAD_TYPE = 'application/vnd.in-toto+json';
/** The predicate cosign 3 signs an image with. */
export const COSIGN_SIGN_PREDICATE = 'https://sigstore.dev/cosign/sign/v1';

/** The tag cosign stores an image's simple-signing signatures under. */
export function cosignSignatureTag(digest: string): string {
  const [alg, hex] = digest.split(':');
  return `${alg}-${hex}.sig`;
}

/** The OCI 1.1 referrers tag schema: an index of referrers tagged `sha256-<hex>` (registries without the API). */
export function referrersFallbackTag(digest: string): string {
  const [alg, hex] = digest.split(':');
  return `${alg}-${hex}`;
}

/** Tags that hold signatures and referrer indexes rather than images. */
export const SIGNATURE_TAG = /^sha(256|512)-[0-9a-f]{64,128}(\.sig|\.att|\.sbom)?$/;

/** A Sigstore bundle media type (either spelling, any version): `v0.3+json` or `+json;version=0.2`. */
export function isSigstoreBundleType(mediaType: string | undefined): boolean {
  return mediaType !== undefined && mediaType.startsWith('application/vnd.dev.sigstore.bundle');
}

/** Which Sigstore bundle versions this node reads. */
function bundleVersionReadable(mediaType: string): boolean {
  return /^application\/vnd\.dev\.sigstore\.bundle(\.v0\.[123]\+json|\+json;version=0\.[123])$/.test(mediaType);
}

/** Checks a signature with a key the way Sigstore clients make them: ECDSA (DER) with SHA-256, Ed25519, RSA. */
export function signatureMatches(key: KeyObject, data: Buffer, signature: Buffer): boolean {
  try {
    const type = key.asymmetricKeyType;
    if (type === 'ed25519') return verify(null, data, key, signature);
    if (type === 'ec') return verify(key.asymmetricKeyDetails?.namedCurve === 'secp384r1' ? 'sha384' : 'sha256', data, key, signature);
    if (type === 'rsa' || type === 'rsa-pss') {
      if (type === 'rsa' && verify('sha256', data, key, signature)) return true;
      return verify('sha256', data, { key, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: constants.RSA_PSS_SALTLEN_AUTO }, signature);
    }
  } catch {
    // a malformed signature is a signature that does not match
  }
  return false;
}

/** DSSE's pre-authentication encoding: what a DSSE signature is made over. */
export function preAuthEncoding(payloadType: string, payload: Buffer): Buffer {
  const type = Buffer.from(payloadType, 'utf8');
  return Buffer.concat([Buffer.from(`DSSEv1 ${type.length} `), type, Buffer.from(` ${payload.length} `), payload]);
}

/** What one signature said. */
export type SignatureOutcome = 'valid' | 'wrong-key' | 'digest-mismatch' | 'unreadable' | 'tlog-invalid';

export interface SignatureCheck {
  format: 'simple-signing-tag' | 'simple-signing-referrer' | 'sigstore-bundle' | 'notation' | 'unknown';
  /** Where it was found: the manifest digest of the signature artifact. */
  artifact: string;
  outcome: SignatureOutcome;
  /** The key that verified it (file name, or `keyData`). */
  key?: string;
  /** The digest the signature names, when it names another. */
  signedDigest?: string;
  detail: string;
}

function decodeBase64(text: unknown): Buffer | undefined {
  if (typeof text !== 'string' || text === '' || !/^[A-Za-z0-9+/=_-]+$/.test(text.replace(/\s/g, ''))) return undefined;
  return Buffer.from(text, 'base64');
}

function firstKey(keys: TrustedPublicKey[], data: Buffer, signature: Buffer): TrustedPublicKey | undefined {
  return keys.find((k) => signatureMatches(k.key, data, signature));
}

/** JSON with sorted keys and no spaces (what Rekor signs its entry timestamps over). */
function canonicalJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(',')}]`;
  if (typeof value === 'object' && value !== null) {
    const entries = Object.entries(value as Record<string, unknown>).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${canonicalJson(v)}`).join(',')}}`;
  }
  return JSON.stringify(value);
}

/** A Rekor entry as its signed entry timestamp covers it. */
export interface RekorEntry {
  /** base64 of the canonicalized entry body. */
  body: string;
  integratedTime: number;
  /** hex of the log's key id. */
  logID: string;
  logIndex: number;
}

/** The bytes Rekor signs as an entry's signed entry timestamp. */
export function rekorSetPayload(entry: RekorEntry): Buffer {
  return Buffer.from(canonicalJson({ body: entry.body, integratedTime: entry.integratedTime, logID: entry.logID, logIndex: entry.logIndex }));
}

/** Checks a signed entry timestamp, and that the entry's body carries this signature. */
function rekorEntryHolds(rekorKey: TrustedPublicKey, entry: RekorEntry, set: Buffer, signature: Buffer): string | undefined {
  if (!signatureMatches(rekorKey.key, rekorSetPayload(entry), set)) return `its transparency-log entry's timestamp is not signed by the pinned Rekor key ${rekorKey.source}`;
  const body = Buffer.from(entry.body, 'base64').toString('utf8');
  if (!body.includes(signature.toString('base64'))) return 'its transparency-log entry is for another signature';
  return undefined;
}

/** The Rekor bundle of a simple-signing layer (`{"SignedEntryTimestamp", "Payload": {...}}`). */
function checkCosignRekorBundle(annotation: string | undefined, rekorKey: TrustedPublicKey, signature: Buffer): string | undefined {
  if (annotation === undefined) return 'it has no transparency-log entry, and the policy pins a Rekor key';
  try {
    const json = JSON.parse(annotation) as { SignedEntryTimestamp?: string; Payload?: { body?: string; integratedTime?: number; logIndex?: number; logID?: string } };
    const set = decodeBase64(json.SignedEntryTimestamp);
    const p = json.Payload;
    if (!set || !p || typeof p.body !== 'string' || typeof p.integratedTime !== 'number' || typeof p.logIndex !== 'number' || typeof p.logID !== 'string') {
      return 'its transparency-log entry is malformed';
    }
    return rekorEntryHolds(rekorKey, { body: p.body, integratedTime: p.integratedTime, logIndex: p.logIndex, logID: p.logID }, set, signature);
  } catch {
    return 'its transparency-log entry is not JSON';
  }
}

/** The digest a simple-signing payload names, or why it cannot be read. */
function simpleSigningDigest(payload: Buffer): { digest: string } | { error: string } {
  try {
    const json = JSON.parse(payload.toString('utf8')) as { critical?: { type?: unknown; image?: { 'docker-manifest-digest'?: unknown } } };
    const type = json.critical?.type;
    if (type !== 'cosign container image signature' && type !== 'atomic container signature') return { error: `its payload has type ${JSON.stringify(type)}, not a container image signature` };
    const digest = json.critical?.image?.['docker-manifest-digest'];
    if (typeof digest !== 'string') return { error: 'its payload names no docker-manifest-digest' };
    return { digest };
  } catch {
    return { error: 'its payload is not JSON' };
  }
}

export interface SimpleSigningLayer {
  /** The payload bytes (already checked against the layer's digest). */
  payload: Buffer;
  annotations: Record<string, string>;
}

/** One simple-signing layer: signed by a trusted key, over this digest? */
export function checkSimpleSigning(
  layer: SimpleSigningLayer,
  digest: string,
  keys: TrustedPublicKey[],
  rekorKey: TrustedPublicKey | undefined,
  where: Pick<SignatureCheck, 'format' | 'artifact'>,
): SignatureCheck {
  const signature = decodeBase64(layer.annotations[COSIGN_SIGNATURE_ANNOTATION]);
  if (!signature) return { ...where, outcome: 'unreadable', detail: `the layer has no base64 ${COSIGN_SIGNATURE_ANNOTATION} annotation` };
  const key = firstKey(keys, layer.payload, signature);
  if (!key) return { ...where, outcome: 'wrong-key', detail: 'the signature does not verify with any trusted key' };
  const named = simpleSigningDigest(layer.payload);
  if ('error' in named) return { ...where, outcome: 'unreadable', key: key.source, detail: named.error };
  if (named.digest !== digest) return { ...where, outcome: 'digest-mismatch', key: key.source, signedDigest: named.digest, detail: `it signs ${named.digest}, not ${digest}` };
  if (rekorKey) {
    const problem = checkCosignRekorBundle(layer.annotations[COSIGN_REKOR_BUNDLE_ANNOTATION], rekorKey, signature);
    if (problem) return { ...where, outcome: 'tlog-invalid', key: key.source, detail: problem };
  }
  return { ...where, outcome: 'valid', key: key.source, detail: `signed by ${key.source}` };
}

interface BundleJson {
  mediaType?: unknown;
  verificationMaterial?: { tlogEntries?: Array<{ logIndex?: unknown; logId?: { keyId?: unknown }; integratedTime?: unknown; inclusionPromise?: { signedEntryTimestamp?: unknown }; canonicalizedBody?: unknown }> };
  dsseEnvelope?: { payload?: unknown; payloadType?: unknown; signatures?: Array<{ sig?: unknown }> };
  messageSignature?: unknown;
}

/** The embedded tlog entry of a Sigstore bundle, against the pinned Rekor key. */
function checkBundleTlog(bundle: BundleJson, rekorKey: TrustedPublicKey, signature: Buffer): string | undefined {
  const entry = bundle.verificationMaterial?.tlogEntries?.[0];
  if (!entry) return 'it has no transparency-log entry, and the policy pins a Rekor key';
  const set = decodeBase64(entry.inclusionPromise?.signedEntryTimestamp);
  const keyId = decodeBase64(entry.logId?.keyId);
  const body = entry.canonicalizedBody;
  const integratedTime = Number(entry.integratedTime);
  const logIndex = Number(entry.logIndex);
  if (!set || !keyId || typeof body !== 'string' || !Number.isSafeInteger(integratedTime) || !Number.isSafeInteger(logIndex)) return 'its transparency-log entry has no inclusion promise to check offline';
  return rekorEntryHolds(rekorKey, { body, integratedTime, logIndex, logID: keyId.toString('hex') }, set, signature);
}

/** A Sigstore bundle (the JSON of the referrer's layer): a DSSE envelope over an in-toto statement about `digest`. */
export function checkSigstoreBundle(bytes: Buffer, digest: string, keys: TrustedPublicKey[], rekorKey: TrustedPublicKey | undefined, artifact: string): SignatureCheck {
  const where = { format: 'sigstore-bundle' as const, artifact };
  let bundle: BundleJson;
  try {
    bundle = JSON.parse(bytes.toString('utf8')) as BundleJson;
  } catch {
    return { ...where, outcome: 'unreadable', detail: 'the Sigstore bundle is not JSON' };
  }
  const mediaType = typeof bundle.mediaType === 'string' ? bundle.mediaType : '';
  if (!bundleVersionReadable(mediaType)) return { ...where, outcome: 'unreadable', detail: `Sigstore bundle media type ${JSON.stringify(mediaType)} is not one this node reads (v0.1 to v0.3)` };
  const env = bundle.dsseEnvelope;
  if (!env) {
    return { ...where, outcome: 'unreadable', detail: bundle.messageSignature ? 'the bundle holds a message signature, not a DSSE envelope over the image' : 'the bundle has no DSSE envelope' };
  }
  const payload = decodeBase64(env.payload);
  if (!payload || typeof env.payloadType !== 'string' || !Array.isArray(env.signatures) || env.signatures.length === 0) {
    return { ...where, outcome: 'unreadable', detail: 'the DSSE envelope lacks its payload, payload type or signatures' };
  }
  const pae = preAuthEncoding(env.payloadType, payload);
  let key: TrustedPublicKey | undefined;
  let signature: Buffer | undefined;
  for (const s of env.signatures) {
    const sig = decodeBase64(s?.sig);
    if (!sig) continue;
    key = firstKey(keys, pae, sig);
    if (key) {
      signature = sig;
      break;
    }
  }
  if (!key || !signature) return { ...where, outcome: 'wrong-key', detail: 'the DSSE signature does not verify with any trusted key' };
  if (env.payloadType !== IN_TOTO_PAYLOAD_TYPE) return { ...where, outcome: 'unreadable', key: key.source, detail: `the DSSE payload type is ${JSON.stringify(env.payloadType)}, not an in-toto statement` };
  let subjects: Array<{ digest?: Record<string, unknown> }>;
  try {
    const statement = JSON.parse(payload.toString('utf8')) as { _type?: unknown; subject?: unknown };
    if (typeof statement._type !== 'string' || !statement._type.startsWith('https://in-toto.io/Statement/') || !Array.isArray(statement.subject)) throw new Error('not a statement');
    subjects = statement.subject as typeof subjects;
  } catch {
    return { ...where, outcome: 'unreadable', key: key.source, detail: 'the DSSE payload is not an in-toto statement' };
  }
  const [alg, hex] = digest.split(':');
  const named = subjects.map((s) => s?.digest?.[alg!]).filter((d): d is string => typeof d === 'string');
  if (!named.includes(hex!)) {
    const other = named[0] ? `${alg}:${named[0]}` : undefined;
    return { ...where, outcome: 'digest-mismatch', key: key.source, signedDigest: other, detail: other ? `it signs ${other}, not ${digest}` : `its statement names no ${alg} digest` };
  }
  if (rekorKey) {
    const problem = checkBundleTlog(bundle, rekorKey, signature);
    if (problem) return { ...where, outcome: 'tlog-invalid', key: key.source, detail: problem };
  }
  return { ...where, outcome: 'valid', key: key.source, detail: `signed by ${key.source}` };
}
