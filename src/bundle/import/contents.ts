/**
 * What the pass over a bundle's tar gathered (held files, manifests, which blobs arrived), and the ledger of what
 * the import wrote to its target. The planners read the first; everything that writes a blob counts in the second.
 */
import { Digest, parseManifest, type ParsedManifest } from '../../oci/index.ts';
import { BundleRefusedError } from '../errors.ts';
import { formatBytes, type BundleFile, type BundleManifest } from '../format.ts';
import type { SignatureCheck } from '../signing.ts';
import type { BundleTarget } from '../targets.ts';

/** Metadata held in memory is capped: a bundle with more is not one Shoal made or expects. */
const MAX_HELD_BYTES = 256 * 1024 * 1024;

/** A file outside blobs/ (a layer of a `docker save` archive) written to the target as it streamed. */
export interface StreamedFile {
  digest: string;
  size: number;
  /** The first bytes, to tell gzip from zstd from tar. */
  magic: Buffer;
}

/** A Shoal bundle's own manifest, and which of the files it lists have arrived. */
export interface ShoalBundle {
  manifest: BundleManifest;
  bytes: Buffer;
  files: Map<string, BundleFile>;
  seen: Set<string>;
}

/** Everything the tar pass kept of a bundle. */
export class BundleContents {
  /** Set when the bundle starts with a Shoal bundle manifest. */
  bundle?: ShoalBundle;
  signature?: SignatureCheck;
  /** Small non-blob files by path (index.json, manifest.json, configs of docker archives). */
  readonly held = new Map<string, Buffer>();
  /** Blob files that look like manifests, by digest, in the order the bundle holds them. */
  readonly manifests = new Map<string, Buffer>();
  /** Small JSON blobs (signature payloads, Sigstore bundles), held when a signature policy will read them. */
  readonly smallJson = new Map<string, Buffer>();
  /** Every blob file of the bundle, by digest. */
  readonly blobs = new Map<string, { size: number }>();
  /** Larger non-blob files (layers of docker archives), streamed into the target, by path. */
  readonly streamed = new Map<string, StreamedFile>();
  /** Links of a foreign tar, by path: refused as soon as anything names one. */
  readonly links = new Map<string, string>();
  private heldBytes = 0;

  /** Counts bytes about to be kept in memory against the cap; `what` says what the bundle has too much of. */
  private count(bytes: Buffer, what: string): void {
    this.heldBytes += bytes.length;
    if (this.heldBytes > MAX_HELD_BYTES) throw new BundleRefusedError('format', `the bundle has more than ${formatBytes(MAX_HELD_BYTES)} of ${what}; Shoal does not import it`);
  }

  holdFile(path: string, bytes: Buffer): void {
    this.count(bytes, 'manifests and metadata');
    this.held.set(path, bytes);
  }

  holdManifest(digest: string, bytes: Buffer): void {
    this.count(bytes, 'manifests');
    this.manifests.set(digest, bytes);
  }

  holdSmallJson(digest: string, bytes: Buffer): void {
    this.count(bytes, 'manifests and metadata');
    this.smallJson.set(digest, bytes);
  }

  /** A manifest's bytes from the bundle, checked against its digest (a skipped blob was not hashed). */
  manifestBytes(digest: string, who: string): Buffer {
    const bytes = this.manifests.get(digest);
    if (!bytes) {
      const present = this.blobs.has(digest);
      throw new BundleRefusedError(
        present ? 'format' : 'incomplete',
        present ? `${who} names ${digest} as a manifest, but that blob is not a manifest` : `${who} names manifest ${digest}, which is not in the bundle`,
        { digest },
      );
    }
    const actual = Digest.of(bytes, Digest.parse(digest).algorithm).toString();
    if (actual !== digest) throw new BundleRefusedError('corrupt', `manifest ${digest} in the bundle hashes to ${actual}: the bundle is damaged`, { digest });
    return bytes;
  }
}

/** A manifest of the bundle, parsed; one that does not parse refuses the bundle, saying which it was (`who`). */
export function parseBundledManifest(bytes: Buffer, mediaType: string | undefined, who: string): ParsedManifest {
  try {
    return parseManifest(bytes, mediaType);
  } catch (err) {
    throw new BundleRefusedError('format', `${who} is not a valid manifest: ${(err as Error).message}`);
  }
}

/** What the import did to its target's blobs, for the result and for the clean-up at the end. */
export class ImportLedger {
  /** Digests the target may have linked into staging; released when the import is done. */
  readonly staged = new Set<string>();
  /** Blobs this run wrote (not the ones the target already had). */
  readonly writtenDigests = new Set<string>();
  blobsWritten = 0;
  bytesWritten = 0;
  blobsPresent = 0;

  wrote(digest: string, size: number): void {
    this.writtenDigests.add(digest);
    this.blobsWritten++;
    this.bytesWritten += size;
  }
}

/**
 * Puts a blob held in memory (a config or small layer of a `docker save` archive) into the target, unless it is
 * there already; `known`: the bundle carried it as a blob file, so the target is not asked.
 */
export async function putHeldBlob(
  at: { contents: BundleContents; ledger: ImportLedger; target: BundleTarget; signal?: AbortSignal },
  digest: string,
  bytes: Buffer,
  known: boolean,
): Promise<void> {
  if (!known && !(await at.target.hasBlob(digest, { signal: at.signal }))) {
    await at.target.writeBlob([bytes], { digest, size: bytes.length }, { signal: at.signal });
    at.ledger.wrote(digest, bytes.length);
  }
  at.contents.blobs.set(digest, { size: bytes.length });
  at.ledger.staged.add(digest);
}
