/** What `shoal import` and `shoal verify` are told, and what they answer. */
import type { IoOptions } from '../../store/index.ts';
import type { Policy, Verdict } from '../../policy/index.ts';
import type { BundleInput } from '../files.ts';
import type { ProgressReporter } from '../progress.ts';
import type { SignatureCheck, TrustedKey } from '../signing.ts';
import type { BundleTarget } from '../targets.ts';

export interface ImportOptions extends IoOptions {
  input: BundleInput;
  target: BundleTarget;
  /** Public keys one of which must have signed the bundle. */
  trust?: TrustedKey[];
  /** For foreign tars whose images are named by a bare tag (or not at all): the repository to put them in. */
  repository?: string;
  progress?: ProgressReporter;
  /** Why the images are pinned (shown by the node's pin list). */
  pinReason?: string;
  /** False: import without pinning (default true: each image and its referrers are pinned). */
  pin?: boolean;
  /**
   * The signature policy every image must satisfy (`import --policy FILE`): one image it refuses (in enforce mode)
   * refuses the whole bundle before anything is written; in warn mode it is imported with a warning.
   */
  policy?: Policy;
  /** Told each verdict (for counting). */
  onVerdict?: (verdict: Verdict & { image: string }) => void;
}

export type BundleFormat = 'shoal' | 'oci-layout' | 'docker-archive';

export interface ImportedImage {
  reference: string;
  /** The target repository, `<registry>/<repository>`. */
  repository: string;
  tag?: string;
  digest: string;
  action: 'imported' | 'unchanged' | 'verified';
  referrers: number;
  pinned: boolean;
}

/** The signature policy's verdict on one image. */
export interface PolicyVerdict {
  image: string;
  digest: string;
  allowed: boolean;
  reason: string;
  message: string;
}

export interface ImportResult {
  format: BundleFormat;
  images: ImportedImage[];
  /** Blobs written (or, verifying, hashed) and their bytes. */
  blobsWritten: number;
  bytesWritten: number;
  /** Blobs in the bundle that the target already had (not written again). */
  blobsPresent: number;
  /** Blobs the bundle left out (made with --have); `omittedChecked` says whether the target was checked. */
  omitted: number;
  omittedChecked: boolean;
  bytesRead: number;
  signature?: SignatureCheck;
  warnings: string[];
  /** The signature policy's verdict on each image, when a policy was given. */
  policy?: PolicyVerdict[];
}
