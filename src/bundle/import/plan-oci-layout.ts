/**
 * Planning an OCI image layout: a Shoal bundle, a layout tarred by hand, or an `oci-archive` tar (skopeo, podman).
 * index.json lists the images; each is walked to its children and blobs, and takes its referrers along.
 */
import { MediaType, type Reference } from '../../oci/index.ts';
import { BundleRefusedError } from '../errors.ts';
import { OCI_INDEX_FILE, imageNameOf } from '../format.ts';
import { parseBundledManifest } from './contents.ts';
import { collect, collectReferrers, completePlans, digestReference, newPlan, type ImagePlan, type PlanContext } from './plan.ts';

export async function planOciLayout(ctx: PlanContext): Promise<ImagePlan[]> {
  const { contents } = ctx;
  if (contents.links.size > 0) {
    const [path, target] = [...contents.links][0]!;
    throw new BundleRefusedError('unsafe', `the layout has a link ${path} -> ${target}; Shoal refuses bundles with links`, { path, target });
  }
  const index = parseBundledManifest(contents.held.get(OCI_INDEX_FILE)!, MediaType.OciIndex, OCI_INDEX_FILE);
  const bundle = contents.bundle;
  if (bundle && bundle.files.get(OCI_INDEX_FILE) === undefined) throw new BundleRefusedError('corrupt', `${OCI_INDEX_FILE} is not listed in the bundle manifest`);
  const sourceDigests = new Map((bundle?.manifest.images ?? []).filter((i) => i.sourceDigest).map((i) => [i.digest, i.sourceDigest!]));
  const plans: ImagePlan[] = [];
  for (const [i, d] of index.manifests.entries()) {
    const who = `${OCI_INDEX_FILE} entry ${i + 1}`;
    const bytes = contents.manifestBytes(d.digest, who);
    if (bytes.length !== d.size) throw new BundleRefusedError('corrupt', `${who} says ${d.digest} has ${d.size} bytes, but it has ${bytes.length}`);
    const parsed = parseBundledManifest(bytes, d.mediaType, `manifest ${d.digest}`);
    let ref: Reference | undefined;
    try {
      ref = imageNameOf(d.annotations, ctx.repository);
    } catch (err) {
      if (err instanceof BundleRefusedError) throw err;
      throw new BundleRefusedError('format', `${who} names an image that is not a valid reference: ${(err as Error).message}`);
    }
    if (!ref) {
      if (parsed.subject) continue; // a referrer listed in index.json: it goes with its subject
      ref = digestReference(ctx, d.digest, `${who} (${d.digest}) has no image name`);
    }
    const plan = newPlan(ref, d.digest, parsed.mediaType, bytes);
    collect(ctx, plan, d.digest, d.mediaType, who, false, d.size);
    collectReferrers(ctx, plan, sourceDigests.get(d.digest));
    plans.push(plan);
  }
  return completePlans(ctx, plans, OCI_INDEX_FILE);
}
