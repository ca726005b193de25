/**
 * `shoal import` and `shoal verify`: one streaming pass over a bundle's tar, then a decision.
 *
 * While the tar streams, every blob goes straight into the target's staging area, verified against its digest
 * before it becomes visible (import/tar-pass.ts). At the end, the images are planned from what arrived, by the
 * planner of the bundle's format (import/plan-oci-layout.ts for Shoal bundles, OCI layouts and oci-archive tars;
 * import/plan-docker-archive.ts for `docker save` archives); if any blob an image names is neither in the bundle
 * nor already on the target, or anything else is wrong, the bundle is refused before a single manifest or tag is
 * written. Only then are manifests written (children before parents, tags last) and the images pinned
 * (import/writer.ts).
 *
 * Idempotent: a blob already on the target is skipped (not written again), so running an import twice, or
 * again after an interruption, only writes what is missing.
 */
import { BundleRefusedError } from './errors.ts';
import { DOCKER_MANIFEST_FILE, MAX_METADATA_BYTES, OCI_INDEX_FILE, formatBytes } from './format.ts';
import { SilentProgress, type ProgressReporter } from './progress.ts';
import { BundleContents, ImportLedger } from './import/contents.ts';
import { judgeImages } from './import/policy.ts';
import type { ImagePlan, PlanContext } from './import/plan.ts';
import { planDockerArchive } from './import/plan-docker-archive.ts';
import { planOciLayout } from './import/plan-oci-layout.ts';
import { ReferrerIndex } from './import/referrers.ts';
import { TarPass } from './import/tar-pass.ts';
import type { BundleFormat, ImportOptions, ImportResult } from './import/types.ts';
import { writeImages } from './import/writer.ts';

export type { BundleFormat, ImportOptions, ImportResult, ImportedImage, PolicyVerdict } from './import/types.ts';

/** The images of the bundle, by the planner of its format. */
async function planImages(ctx: PlanContext): Promise<{ format: BundleFormat; plans: ImagePlan[] }> {
  const { held, streamed, bundle } = ctx.contents;
  if (held.has(OCI_INDEX_FILE)) return { format: bundle ? 'shoal' : 'oci-layout', plans: await planOciLayout(ctx) };
  if (held.has(DOCKER_MANIFEST_FILE)) return { format: 'docker-archive', plans: await planDockerArchive(ctx) };
  if (streamed.has(OCI_INDEX_FILE) || streamed.has(DOCKER_MANIFEST_FILE)) {
    throw new BundleRefusedError('format', `the bundle's ${streamed.has(OCI_INDEX_FILE) ? OCI_INDEX_FILE : DOCKER_MANIFEST_FILE} is larger than ${formatBytes(MAX_METADATA_BYTES)}`);
  }
  throw new BundleRefusedError('format', `the file has neither ${OCI_INDEX_FILE} (an OCI image layout) nor ${DOCKER_MANIFEST_FILE} (a docker save archive): it is not an image bundle`);
}

/** The pass, the plan, the policy, the writing: for one bundle and one target. */
async function runImport(opts: ImportOptions & { progress: ProgressReporter }): Promise<ImportResult> {
  const { target, progress, signal } = opts;
  const warnings: string[] = [];
  const warn = (message: string): void => {
    warnings.push(message);
    progress.event({ event: 'warning', message });
  };
  const contents = new BundleContents();
  const ledger = new ImportLedger();
  const pass = new TarPass(opts, contents, ledger);
  await pass.run();
  const referrers = new ReferrerIndex(contents.manifests);
  const { format, plans } = await planImages({ contents, ledger, target, referrers, repository: opts.repository, signal });
  const policy = opts.policy ? await judgeImages({ contents, referrers, policy: opts.policy, onVerdict: opts.onVerdict, warn, signal }, plans) : undefined;
  const images = await writeImages({ target, writtenDigests: ledger.writtenDigests, progress, warn, pin: opts.pin, pinReason: opts.pinReason, signal }, plans);
  if (target.keepsContent) await target.releaseStaging([...ledger.staged], { signal });
  return {
    format,
    images,
    blobsWritten: ledger.blobsWritten,
    bytesWritten: ledger.bytesWritten,
    blobsPresent: ledger.blobsPresent,
    omitted: contents.bundle?.manifest.omitted.length ?? 0,
    omittedChecked: target.keepsContent,
    bytesRead: pass.bytesRead,
    signature: contents.signature,
    warnings,
    ...(policy ? { policy } : {}),
  };
}

/** Imports (or, with a VerifyTarget, verifies) a bundle. Throws BundleRefusedError for a bad bundle. */
export async function importBundle(opts: ImportOptions): Promise<ImportResult> {
  const progress = opts.progress ?? new SilentProgress();
  progress.start(opts.target.keepsContent ? 'import' : 'verify', opts.input.size);
  try {
    const result = await runImport({ ...opts, progress });
    progress.finish();
    return result;
  } catch (err) {
    progress.finish(true);
    throw err;
  }
}

/** One line per fact, for the end of `shoal import` and `shoal verify`. */
export function describeImport(r: ImportResult, verifying: boolean): string[] {
  const lines: string[] = [];
  const kind = r.format === 'shoal' ? 'Shoal bundle' : r.format === 'oci-layout' ? 'OCI image layout' : 'docker save archive';
  lines.push(`${kind}, ${formatBytes(r.bytesRead)} read`);
  if (r.signature) lines.push(r.signature.trusted ? `signature: good, by trusted key ${r.signature.keyId}` : `signature: intact, by key ${r.signature.keyId} (not checked against a trusted key: use --trust PUBKEY)`);
  else if (r.format === 'shoal') lines.push('signature: none (the bundle is not signed)');
  if (verifying) {
    lines.push(`${r.blobsWritten} blob(s) verified, ${formatBytes(r.bytesWritten)}`);
    if (r.omitted > 0) lines.push(`${r.omitted} blob(s) left out (a delta bundle): the import checks that the node has them`);
  } else {
    lines.push(`${r.blobsWritten} blob(s) written (${formatBytes(r.bytesWritten)}), ${r.blobsPresent} already present${r.omitted > 0 ? `, ${r.omitted} left out by the bundle and present` : ''}`);
  }
  for (const i of r.images) lines.push(`  ${i.action} ${i.reference} ${i.digest}${i.referrers ? ` +${i.referrers} referrer(s)` : ''}${i.pinned ? ' (pinned)' : ''}`);
  for (const v of r.policy ?? []) lines.push(`  signature policy: ${v.allowed ? 'allowed' : 'refused'} ${v.image} (${v.reason})`);
  return lines;
}
