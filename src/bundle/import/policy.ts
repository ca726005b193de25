/**
 * The signature policy on an import (`import --policy FILE`): every image of the bundle is judged against the
 * bundle's own signatures before anything is written.
 */
import { BundleRefusedError } from '../errors.ts';
import { SIGNATURE_TAG, describeReason, judgeImage, ruleFor, signatureArtifactKind, type DenyReason, type Policy, type SignatureSource, type Verdict } from '../../policy/index.ts';
import { parseBundledManifest, type BundleContents } from './contents.ts';
import type { ImagePlan } from './plan.ts';
import type { ReferrerIndex } from './referrers.ts';
import type { ImportOptions, PolicyVerdict } from './types.ts';

export interface PolicyContext {
  contents: BundleContents;
  referrers: ReferrerIndex;
  policy: Policy;
  onVerdict?: ImportOptions['onVerdict'];
  warn: (message: string) => void;
  signal?: AbortSignal;
}

/** The bundle's own content as the place signatures are read from (nothing is written yet). */
function signatureSource(at: PolicyContext, plans: ImagePlan[], repository: string): SignatureSource {
  const { manifests, smallJson } = at.contents;
  return {
    tagged: async (tag) => {
      const plan = plans.find((p) => p.repository === repository && p.tag === tag);
      return plan ? { digest: plan.digest, bytes: plan.bytes } : undefined;
    },
    referrers: async (digest) => at.referrers.of(digest).map((r) => ({ mediaType: r.mediaType, digest: r.digest, size: r.size, artifactType: r.artifactType })),
    manifest: async (digest) => manifests.get(digest),
    blob: async (digest) => smallJson.get(digest) ?? manifests.get(digest),
  };
}

/**
 * Every image of the bundle under the policy, before anything is written. Signature artifacts themselves (cosign
 * `.sig` tags, referrer indexes) are not judged: they travel with the images they sign. Refuses the bundle when
 * the policy (in enforce mode) refuses any image; in warn mode, warns of each.
 */
export async function judgeImages(at: PolicyContext, plans: ImagePlan[]): Promise<PolicyVerdict[]> {
  const { policy, contents } = at;
  const verdicts: PolicyVerdict[] = [];
  const refused: Array<{ plan: ImagePlan; verdict: Verdict }> = [];
  for (const plan of plans) {
    const name = `${plan.ref.registry}/${plan.ref.repository}`;
    // Signatures are not judged; a referrers index is not either, but each entry that is not a signature is.
    const kind = plan.tag && SIGNATURE_TAG.test(plan.tag) ? signatureArtifactKind(plan.bytes, plan.tag) : undefined;
    if (kind === 'signature') continue;
    const roots =
      kind === 'referrers-index'
        ? parseBundledManifest(plan.bytes, plan.mediaType, plan.reference)
            .manifests.map((d) => d.digest)
            .filter((d) => signatureArtifactKind(contents.manifests.get(d) ?? Buffer.alloc(0), undefined) !== 'signature')
        : [plan.digest];
    for (const digest of roots) {
      const verdict = await judgeImage(signatureSource(at, plans, plan.repository), name, digest, ruleFor(policy, name), { signal: at.signal });
      const image = digest === plan.digest ? plan.reference : `${name}@${digest}`;
      at.onVerdict?.({ ...verdict, image });
      verdicts.push({ image, digest, allowed: verdict.allowed, reason: verdict.reason, message: verdict.message });
      if (!verdict.allowed) refused.push({ plan, verdict });
    }
  }
  if (refused.length === 0) return verdicts;
  if (policy.mode === 'warn') {
    for (const r of refused) at.warn(`signature policy (warn mode): imported, but would be refused: ${r.verdict.message}`);
    return verdicts;
  }
  const first = refused[0]!;
  throw new BundleRefusedError(
    'policy',
    `the signature policy ${policy.source} refuses ${refused.length} of the bundle's ${verdicts.length} image(s); nothing was imported. ${refused.map((r) => `${r.plan.reference}: ${describeReason(r.verdict.reason as DenyReason)} (${r.verdict.message})`).join('; ')}`,
    { refused: refused.map((r) => ({ image: r.plan.reference, digest: r.plan.digest, rule: r.verdict.rule, reason: r.verdict.reason })), first: first.plan.reference },
  );
}
