/**
 * Writing planned images to the target, once the whole bundle has been found good: blobs linked into each image's
 * repository, child manifests and referrers before the image, the tag last; then the pins.
 */
import { MediaType, effectiveArtifactType, type Descriptor } from '../../oci/index.ts';
import { isSignatureArtifact, referrersFallbackTag } from '../../policy/index.ts';
import { BundleRefusedError } from '../errors.ts';
import type { ProgressReporter } from '../progress.ts';
import type { BundleTarget } from '../targets.ts';
import { parseBundledManifest } from './contents.ts';
import type { ImagePlan } from './plan.ts';
import type { ImportedImage } from './types.ts';

export interface WriteContext {
  target: BundleTarget;
  /** Blobs this run wrote: an image with any of them is new, and its lookups are skipped. */
  writtenDigests: ReadonlySet<string>;
  progress: ProgressReporter;
  warn: (message: string) => void;
  /** False: do not pin. */
  pin?: boolean;
  pinReason?: string;
  signal?: AbortSignal;
}

/**
 * The signatures among an image's referrers also under the OCI referrers tag schema (an index tagged
 * `sha256-<hex>`): peers find referrers by tag, so the image's signatures reach every node of the cluster.
 */
async function writeReferrersTag(at: WriteContext, plan: ImagePlan): Promise<void> {
  const signal = at.signal;
  const entries: Descriptor[] = [];
  for (const m of plan.manifests) {
    if (!m.isReferrer) continue;
    const parsed = parseBundledManifest(m.bytes, m.mediaType, `referrer ${m.digest}`);
    const artifactType = effectiveArtifactType(parsed);
    if (parsed.subject?.digest !== plan.digest || !isSignatureArtifact(m.bytes, undefined)) continue;
    entries.push({ mediaType: parsed.mediaType, digest: m.digest, size: m.bytes.length, ...(artifactType ? { artifactType } : {}), ...(parsed.annotations ? { annotations: parsed.annotations } : {}) });
  }
  if (entries.length === 0) return;
  const tag = referrersFallbackTag(plan.digest);
  if ((await at.target.resolveTag(plan.repository, tag, { signal })) !== undefined) return;
  const bytes = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MediaType.OciIndex, manifests: entries }));
  await at.target.putManifest(plan.repository, tag, bytes, MediaType.OciIndex, { signal });
}

export async function writeImages(at: WriteContext, plans: ImagePlan[]): Promise<ImportedImage[]> {
  const { target, signal, progress } = at;
  const out: ImportedImage[] = [];
  let pinWarned = false;
  for (const plan of plans) {
    if (!target.keepsContent) {
      out.push({ reference: plan.reference, repository: plan.repository, tag: plan.tag, digest: plan.digest, action: 'verified', referrers: plan.referrers.length, pinned: false });
      progress.event({ event: 'image', reference: plan.reference, digest: plan.digest, action: 'verified' });
      continue;
    }
    const wrote = [...plan.blobs].some((d) => at.writtenDigests.has(d));
    let changed = wrote;
    for (const digest of plan.blobs) {
      if (!(await target.linkBlob(plan.repository, digest, { signal }))) {
        throw new BundleRefusedError('incomplete', `blob ${digest} of ${plan.reference} disappeared from ${target.description} during the import; run the import again`);
      }
    }
    // A lookup on a running node may go on to its peers and seeds: worth it only when nothing new arrived.
    const look = target.cheapLookups || !wrote;
    // Children and referrers (already dependency-ordered), then the image itself under its tag.
    for (const m of plan.manifests) {
      if (look && (await target.hasManifest(plan.repository, m.digest, { signal }))) continue;
      await target.putManifest(plan.repository, m.digest, m.bytes, m.mediaType, { signal });
      changed = true;
    }
    const existed = look && (await target.hasManifest(plan.repository, plan.digest, { signal }));
    if (!existed) changed = true;
    if (plan.tag) {
      // A target that cannot tell where a tag points gets the (idempotent) PUT every time.
      const current = await target.resolveTag(plan.repository, plan.tag, { signal });
      if (current !== plan.digest) {
        await target.putManifest(plan.repository, plan.tag, plan.bytes, plan.mediaType, { signal });
        if (current !== undefined) changed = true;
      }
    } else if (!existed) {
      await target.putManifest(plan.repository, plan.digest, plan.bytes, plan.mediaType, { signal });
    }
    await writeReferrersTag(at, plan);
    const reason = at.pinReason ?? 'imported bundle';
    let pinned = false;
    if (at.pin !== false) {
      pinned = await target.pin(plan.repository, plan.digest, reason, { signal });
      for (const r of plan.referrers) pinned = (await target.pin(plan.repository, r, reason, { signal })) && pinned;
    }
    if (!pinned && at.pin !== false && !pinWarned) {
      pinWarned = true;
      at.warn(`${target.description} is not a Shoal node and cannot pin images: they were imported but not pinned`);
    }
    const action = changed ? 'imported' : 'unchanged';
    out.push({ reference: plan.reference, repository: plan.repository, tag: plan.tag, digest: plan.digest, action, referrers: plan.referrers.length, pinned });
    progress.event({ event: 'image', reference: plan.reference, digest: plan.digest, action });
  }
  return out;
}
