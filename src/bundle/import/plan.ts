/**
 * An image to write, planned from what the bundle holds, and the steps every format's planner shares: walking a
 * manifest to its blobs, taking its referrers along, and checking that every blob is at hand.
 */
import { parseReference, type ParsedManifest, type Reference } from '../../oci/index.ts';
import { BundleRefusedError } from '../errors.ts';
import { storeRepository } from '../format.ts';
import type { BundleTarget } from '../targets.ts';
import { parseBundledManifest, type BundleContents, type ImportLedger } from './contents.ts';
import type { ReferrerIndex } from './referrers.ts';

/** One image to write: what it names, in the order it must be written. */
export interface ImagePlan {
  ref: Reference;
  reference: string;
  repository: string;
  tag?: string;
  digest: string;
  mediaType: string;
  bytes: Buffer;
  /** Child manifests and referrers (and their children), dependencies first. */
  manifests: Array<{ digest: string; mediaType: string; bytes: Buffer; isReferrer: boolean }>;
  blobs: Set<string>;
  referrers: string[];
}

/** What a planner reads and where it may write (a `docker save` archive's configs go to the target). */
export interface PlanContext {
  readonly contents: BundleContents;
  readonly ledger: ImportLedger;
  readonly target: BundleTarget;
  readonly referrers: ReferrerIndex;
  /** For images the bundle does not name: the repository to put them in (`--repository`). */
  readonly repository?: string;
  readonly signal?: AbortSignal;
}

export function newPlan(ref: Reference, digest: string, mediaType: string, bytes: Buffer): ImagePlan {
  const reference = `${ref.registry}/${ref.repository}${ref.tag ? `:${ref.tag}` : `@${digest}`}`;
  return { ref, reference, repository: storeRepository(ref), tag: ref.tag, digest, mediaType, bytes, manifests: [], blobs: new Set(), referrers: [] };
}

/**
 * The reference of an image the bundle does not name: by its digest, in the `--repository` given.
 * `unnamed` says what the bundle lacks, for the refusal when no repository was given.
 */
export function digestReference(ctx: PlanContext, digest: string, unnamed: string): Reference {
  if (ctx.repository === undefined) throw new BundleRefusedError('format', `${unnamed}; give --repository REGISTRY/REPOSITORY to import it by digest`);
  return { ...parseReference(ctx.repository), tag: undefined, digest };
}

/** Walks a manifest: its children first, then its blobs. */
export function collect(ctx: PlanContext, plan: ImagePlan, digest: string, mediaType: string | undefined, who: string, isReferrer: boolean, declaredSize?: number): ParsedManifest {
  const bytes = ctx.contents.manifestBytes(digest, who);
  if (declaredSize !== undefined && declaredSize !== bytes.length) {
    throw new BundleRefusedError('corrupt', `${who} says manifest ${digest} has ${declaredSize} bytes, but it has ${bytes.length}`, { digest });
  }
  const parsed = parseBundledManifest(bytes, mediaType, `manifest ${digest}`);
  for (const child of parsed.manifests) collect(ctx, plan, child.digest, child.mediaType, `index ${digest}`, isReferrer, child.size);
  for (const b of parsed.blobs) {
    if (b.urls && b.urls.length > 0) continue;
    const have = ctx.contents.blobs.get(b.digest);
    if (have && have.size !== b.size) {
      throw new BundleRefusedError('corrupt', `manifest ${digest} says blob ${b.digest} has ${b.size} bytes, but the bundle's has ${have.size}`, { digest: b.digest });
    }
    plan.blobs.add(b.digest);
  }
  if (digest !== plan.digest && !plan.manifests.some((m) => m.digest === digest)) plan.manifests.push({ digest, mediaType: parsed.mediaType, bytes, isReferrer });
  return parsed;
}

/**
 * Adds every manifest of the bundle whose subject is in the image (signatures, SBOMs, and theirs).
 * `sourceDigest`: the index the image was selected from, whose referrers go with it too.
 */
export function collectReferrers(ctx: PlanContext, plan: ImagePlan, sourceDigest: string | undefined): void {
  const inImage = new Set([plan.digest, ...plan.manifests.map((m) => m.digest)]);
  if (sourceDigest) inImage.add(sourceDigest);
  ctx.referrers.walk(inImage, (referrer) => {
    const before = plan.manifests.length;
    collect(ctx, plan, referrer.digest, referrer.mediaType, `referrer ${referrer.digest}`, true);
    plan.referrers.push(referrer.digest);
    return plan.manifests.slice(before).map((m) => m.digest);
  });
}

/** Blob availability: in the bundle, or already on the target (a delta's omitted blobs). */
async function requireBlobs(ctx: PlanContext, plan: ImagePlan): Promise<void> {
  const { contents, target } = ctx;
  const missing: string[] = [];
  const omitted = new Set(contents.bundle?.manifest.omitted.map((o) => o.digest) ?? []);
  for (const digest of plan.blobs) {
    if (contents.blobs.has(digest)) continue;
    if (!target.keepsContent && omitted.has(digest)) continue;
    if (target.keepsContent && (await target.hasBlob(digest, { signal: ctx.signal }))) {
      ctx.ledger.staged.add(digest);
      continue;
    }
    missing.push(digest);
  }
  if (missing.length > 0) {
    throw new BundleRefusedError(
      'incomplete',
      `image ${plan.reference} names ${missing.length} blob(s) that are neither in the bundle nor on ${target.description} (first: ${missing[0]}); nothing was imported`,
      { image: plan.reference, missing: missing.slice(0, 20) },
    );
  }
}

/** A planner's images, once it is sure there are some (`list`: the file that named them) and that each is whole. */
export async function completePlans(ctx: PlanContext, plans: ImagePlan[], list: string): Promise<ImagePlan[]> {
  if (plans.length === 0) throw new BundleRefusedError('format', `${list} names no images`);
  for (const plan of plans) await requireBlobs(ctx, plan);
  return plans;
}
