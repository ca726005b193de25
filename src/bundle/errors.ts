import { ShoalError } from '../oci/index.ts';

/**
 * Why a bundle was refused. Each names a different thing for the operator to do: copy the disk again
 * (`corrupt`, `truncated`), get a bundle from a trusted maker (`unsafe`, `signature`), import the delta where
 * its inventory came from (`incomplete`), or use another kind of file (`format`); an image the signature policy
 * refuses (`policy`) needs a signature by a trusted key.
 */
export type BundleRefusal = 'corrupt' | 'truncated' | 'unsafe' | 'signature' | 'incomplete' | 'format' | 'policy';

/**
 * A bundle that is refused as a whole: damaged, unsafe, incomplete or untrusted. Nothing it would have named
 * (tags, manifests, pins) has been written when this is thrown. The CLI exits with BUNDLE_REFUSED_EXIT_CODE.
 *
 * A Shoal error like the others (it would belong in src/oci/errors.ts if another module ever needs it).
 */
export class BundleRefusedError extends ShoalError {
  override readonly name = 'BundleRefusedError';
  readonly reason: BundleRefusal;
  constructor(reason: BundleRefusal, message: string, detail?: unknown) {
    super(reason === 'signature' || reason === 'policy' ? 'DENIED' : reason === 'incomplete' ? 'MANIFEST_BLOB_UNKNOWN' : 'BLOB_UPLOAD_INVALID', message, detail);
    this.reason = reason;
  }
}

/** Exit code of `shoal import` and `shoal verify` for a refused bundle (1 is other failures, 2 usage errors). */
export const BUNDLE_REFUSED_EXIT_CODE = 3;
