/**
 * The verdict on one image (a root manifest digest in a repository) under a policy rule: every signature the
 * image has, in any of the formats, is read and checked; one valid signature by a trusted key over this very
 * digest satisfies a `sigstoreSigned` requirement.
 */
import { Digest, parseManifest, type Descriptor, type ParsedManifest } from '../oci/index.ts';
import { describeRule, type PolicyRule, type Requirement } from './file.ts';
import {
  COSIGN_SIGNATURE_ARTIFACT_TYPE,
  NOTATION_SIGNATURE_ARTIFACT_TYPE,
  SIMPLE_SIGNING_MEDIA_TYPE,
  checkSigstoreBundle,
  checkSimpleSigning,
  cosignSignatureTag,
  isSigstoreBundleType,
  referrersFallbackTag,
  type SignatureCheck,
} from './formats.ts';

/** Why an image was refused (or would have been, in warn mode). */
export type DenyReason = 'no-signature' | 'wrong-key' | 'digest-mismatch' | 'unreadable' | 'tlog-invalid' | 'rejected';
/** Why an image was allowed. */
export type AllowReason = 'signed' | 'accept-anything';

export interface Verdict {
  allowed: boolean;
  reason: AllowReason | DenyReason;
  /** The rule that decided, as messages name it. */
  rule: string;
  /** One sentence: what was decided and why. */
  message: string;
  /** Each signature found, and what came of it. */
  signatures: SignatureCheck[];
}

/** Where the signatures of an image are read from (the node's pull path, or a bundle being imported). */
export interface SignatureSource {
  /** The manifest a tag of the image's repository points at, or undefined. */
  tagged(tag: string, opts: { signal?: AbortSignal }): Promise<{ digest: string; bytes: Buffer } | undefined>;
  /** Referrers of a digest known without asking further (e.g. stored ones). */
  referrers(digest: string, opts: { signal?: AbortSignal }): Promise<Descriptor[]>;
  /** A manifest's bytes by digest, or undefined. */
  manifest(digest: string, opts: { signal?: AbortSignal }): Promise<Buffer | undefined>;
  /** A small blob's bytes by digest, or undefined. */
  blob(digest: string, opts: { signal?: AbortSignal }): Promise<Buffer | undefined>;
}

/** Largest signature payload or bundle read. */
const MAX_SIGNATURE_BLOB = 1024 * 1024;

const REASON_TEXT: Record<DenyReason, string> = {
  'no-signature': 'no signature',
  'wrong-key': 'wrong key',
  'digest-mismatch': 'digest mismatch',
  unreadable: 'unreadable signature format',
  'tlog-invalid': 'transparency-log entry not valid',
  rejected: 'rejected by policy',
};

export function describeReason(reason: DenyReason): string {
  return REASON_TEXT[reason];
}

function tryParse(bytes: Buffer): ParsedManifest | undefined {
  try {
    return parseManifest(bytes, undefined);
  } catch {
    return undefined;
  }
}

/** A manifest of simple-signing layers: each layer checked. */
async function checkSimpleSigningManifest(
  source: SignatureSource,
  parsed: ParsedManifest,
  digest: string,
  requirement: Extract<Requirement, { type: 'sigstoreSigned' }>,
  where: Pick<SignatureCheck, 'format' | 'artifact'>,
  signal: AbortSignal | undefined,
): Promise<SignatureCheck[]> {
  const out: SignatureCheck[] = [];
  const layers = parsed.blobs.filter((b) => b !== parsed.config);
  for (const layer of layers) {
    if (layer.mediaType !== SIMPLE_SIGNING_MEDIA_TYPE) {
      out.push({ ...where, outcome: 'unreadable', detail: `a layer of media type ${layer.mediaType} is not a simple-signing payload` });
      continue;
    }
    const payload = layer.size <= MAX_SIGNATURE_BLOB ? await source.blob(layer.digest, { signal }) : undefined;
    if (!payload || !Digest.names(layer.digest, payload)) {
      out.push({ ...where, outcome: 'unreadable', detail: `its payload ${layer.digest} is ${payload ? 'not the bytes it names' : 'not available'}` });
      continue;
    }
    out.push(checkSimpleSigning({ payload, annotations: layer.annotations ?? {} }, digest, requirement.keys, requirement.rekorKey, where));
  }
  if (layers.length === 0) out.push({ ...where, outcome: 'unreadable', detail: 'the signature manifest has no layers' });
  return out;
}

/** Every signature of `digest` in the formats this node reads, each checked against the requirement's keys. */
export async function checkSignatures(
  source: SignatureSource,
  digest: string,
  requirement: Extract<Requirement, { type: 'sigstoreSigned' }>,
  opts: { signal?: AbortSignal } = {},
): Promise<SignatureCheck[]> {
  const { signal } = opts;
  const checks: SignatureCheck[] = [];
  // cosign's tag: sha256-<hex>.sig
  const tagged = await source.tagged(cosignSignatureTag(digest), { signal });
  if (tagged) {
    const parsed = tryParse(tagged.bytes);
    const where = { format: 'simple-signing-tag' as const, artifact: tagged.digest };
    if (!parsed || parsed.kind !== 'manifest') checks.push({ ...where, outcome: 'unreadable', detail: `tag ${cosignSignatureTag(digest)} is not an image manifest of signatures` });
    else checks.push(...(await checkSimpleSigningManifest(source, parsed, digest, requirement, where, signal)));
  }
  // Referrers: stored ones, and the tag schema's index (what a registry without the referrers API holds).
  const referrers = new Map<string, Descriptor>();
  for (const d of await source.referrers(digest, { signal })) referrers.set(d.digest, d);
  const fallback = await source.tagged(referrersFallbackTag(digest), { signal });
  const fallbackIndex = fallback ? tryParse(fallback.bytes) : undefined;
  for (const d of fallbackIndex?.kind === 'index' ? fallbackIndex.manifests : []) if (!referrers.has(d.digest)) referrers.set(d.digest, d);
  for (const d of referrers.values()) {
    const type = d.artifactType;
    const known = type === COSIGN_SIGNATURE_ARTIFACT_TYPE || isSigstoreBundleType(type) || type === NOTATION_SIGNATURE_ARTIFACT_TYPE;
    if (!known) continue; // an SBOM, an attestation of another kind: not a signature
    if (type === NOTATION_SIGNATURE_ARTIFACT_TYPE) {
      checks.push({ format: 'notation', artifact: d.digest, outcome: 'unreadable', detail: 'Notation (X.509) signatures are not supported yet' });
      continue;
    }
    const bytes = await source.manifest(d.digest, { signal });
    const parsed = bytes && Digest.names(d.digest, bytes) ? tryParse(bytes) : undefined;
    if (!parsed || parsed.kind !== 'manifest') {
      checks.push({ format: 'unknown', artifact: d.digest, outcome: 'unreadable', detail: `signature manifest ${d.digest} is ${bytes ? 'not a valid image manifest' : 'not available'}` });
      continue;
    }
    if (parsed.subject && parsed.subject.digest !== digest) continue;
    if (type === COSIGN_SIGNATURE_ARTIFACT_TYPE) {
      checks.push(...(await checkSimpleSigningManifest(source, parsed, digest, requirement, { format: 'simple-signing-referrer', artifact: d.digest }, signal)));
      continue;
    }
    const layers = parsed.blobs.filter((b) => b !== parsed.config && isSigstoreBundleType(b.mediaType));
    if (layers.length === 0) checks.push({ format: 'sigstore-bundle', artifact: d.digest, outcome: 'unreadable', detail: 'the referrer has no Sigstore bundle layer' });
    for (const layer of layers) {
      const b = layer.size <= MAX_SIGNATURE_BLOB ? await source.blob(layer.digest, { signal }) : undefined;
      if (!b || !Digest.names(layer.digest, b)) {
        checks.push({ format: 'sigstore-bundle', artifact: d.digest, outcome: 'unreadable', detail: `the bundle ${layer.digest} is ${b ? 'not the bytes it names' : 'not available'}` });
        continue;
      }
      checks.push(checkSigstoreBundle(b, digest, requirement.keys, requirement.rekorKey, d.digest));
    }
  }
  return checks;
}

/** The most telling failure among the signatures found (none valid). */
function failureOf(checks: SignatureCheck[]): DenyReason {
  const outcomes = new Set(checks.map((c) => c.outcome));
  if (outcomes.has('digest-mismatch')) return 'digest-mismatch';
  if (outcomes.has('tlog-invalid')) return 'tlog-invalid';
  if (outcomes.has('wrong-key')) return 'wrong-key';
  if (outcomes.has('unreadable')) return 'unreadable';
  return 'no-signature';
}

/** The verdict of `rule` on the image `name@digest` (every requirement must hold). */
export async function judgeImage(
  source: SignatureSource,
  name: string,
  digest: string,
  rule: PolicyRule,
  opts: { signal?: AbortSignal } = {},
): Promise<Verdict> {
  const ruleText = describeRule(rule);
  const signatures: SignatureCheck[] = [];
  let signed = false;
  for (const req of rule.requirements) {
    if (req.type === 'insecureAcceptAnything') continue;
    if (req.type === 'reject') {
      return { allowed: false, reason: 'rejected', rule: ruleText, message: `${name}@${digest} is refused by ${ruleText}: it rejects every image`, signatures };
    }
    const checks = await checkSignatures(source, digest, req, opts);
    signatures.push(...checks);
    const valid = checks.find((c) => c.outcome === 'valid');
    if (!valid) {
      const reason = failureOf(checks);
      const first = checks.find((c) => c.outcome === (reason === 'no-signature' ? undefined : reason));
      const why = reason === 'no-signature' ? 'no signature was found (no cosign .sig tag, no signature referrer)' : `${describeReason(reason)}: ${first?.detail ?? ''}`;
      return { allowed: false, reason, rule: ruleText, message: `${name}@${digest} is refused by ${ruleText}: ${why}`, signatures };
    }
    signed = true;
  }
  const reason: AllowReason = signed ? 'signed' : 'accept-anything';
  const by = signatures.find((c) => c.outcome === 'valid');
  return {
    allowed: true,
    reason,
    rule: ruleText,
    message: signed ? `${name}@${digest} is allowed by ${ruleText}: ${by?.detail ?? 'signed'} (${by?.format})` : `${name}@${digest} is allowed by ${ruleText}: it accepts any image`,
    signatures,
  };
}
