/**
 * `shoal import` and `shoal verify`: one streaming pass over a bundle's tar, then a decision.
 *
 * While the tar streams, every blob goes straight into the target's staging area, verified against its digest
 * before it becomes visible (nothing is extracted to disk). Small JSON files (index.json, manifests, configs of
 * `docker save` archives) are kept in memory, because foreign tars may put index.json after the blobs.
 * A Shoal bundle starts with its manifest and signature, so trust and completeness are decided before any
 * blob is written. At the end, the images are planned from what arrived; if any blob an image names is
 * neither in the bundle nor already on the target, or anything else is wrong, the bundle is refused before a
 * single manifest or tag is written. Only then are manifests written (children before parents, tags last)
 * and the images pinned.
 *
 * Idempotent: a blob already on the target is skipped (not written again), so running an import twice, or
 * again after an interruption, only writes what is missing.
 */
import { createHash } from 'node:crypto';
import { pipeline } from 'node:stream/promises';
import { createGunzip } from 'node:zlib';
import tar, { type Header as TarHeader } from 'tar-stream';
import {
  Digest,
  effectiveArtifactType,
  MediaType,
  ShoalError,
  isShoalError,
  parseManifest,
  parseReference,
  type Descriptor,
  type ParsedManifest,
  type Reference,
} from '../oci/index.ts';
import type { IoOptions } from '../store/index.ts';
import { BundleRefusedError } from './errors.ts';
import type { BundleInput } from './files.ts';
import {
  BUNDLE_MANIFEST_FILE,
  BUNDLE_SIGNATURE_FILE,
  DOCKER_MANIFEST_FILE,
  MAX_BUNDLE_MANIFEST_BYTES,
  MAX_METADATA_BYTES,
  OCI_INDEX_FILE,
  blobDigestOfPath,
  checkEntryPath,
  formatBytes,
  imageNameOf,
  parseBundleManifest,
  storeRepository,
  type BundleFile,
  type BundleManifest,
} from './format.ts';
import { SilentProgress, type ProgressReporter } from './progress.ts';
import { checkBundleSignature, type SignatureCheck, type TrustedKey } from './signing.ts';
import type { BundleTarget } from './targets.ts';
import { SIGNATURE_TAG, describeReason, isSignatureArtifact, judgeImage, referrersFallbackTag, ruleFor, signatureArtifactKind, type DenyReason, type Policy, type SignatureSource, type Verdict } from '../policy/index.ts';

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
  policy?: Array<{ image: string; digest: string; allowed: boolean; reason: string; message: string }>;
}

/** Metadata held in memory is capped: a bundle with more is not one Shoal made or expects. */
const MAX_HELD_BYTES = 256 * 1024 * 1024;
/** Small non-JSON files (VERSION, repositories) are held too; anything else streams into the target. */
const SMALL_FILE_BYTES = 64 * 1024;
const MAX_SIGNATURE_BYTES = 64 * 1024;
/** JSON blobs up to this size are held for the signature policy (simple-signing payloads, Sigstore bundles). */
const SIGNATURE_JSON_BYTES = 256 * 1024;

/** One entry of the tar being read: its header, then its bytes. */
interface TarEntry extends AsyncIterable<Uint8Array> {
  header: TarHeader;
}

interface StreamedFile {
  digest: string;
  size: number;
  /** The first bytes, to tell gzip from zstd from tar. */
  magic: Buffer;
}

/** One image to write: what it names, in the order it must be written. */
interface ImagePlan {
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

function firstNonSpace(chunk: Uint8Array): number | undefined {
  for (const b of chunk) if (b !== 0x20 && b !== 0x0a && b !== 0x0d && b !== 0x09) return b;
  return undefined;
}

function isManifestJson(bytes: Buffer): boolean {
  try {
    const json = JSON.parse(bytes.toString('utf8')) as Record<string, unknown>;
    return typeof json === 'object' && json !== null && json.schemaVersion === 2 && (Array.isArray(json.manifests) || Array.isArray(json.layers) || typeof json.config === 'object');
  } catch {
    return false;
  }
}

async function drain(stream: AsyncIterable<unknown>): Promise<void> {
  for await (const _ of stream) {
    // discard
  }
}

async function readAll(stream: AsyncIterable<Uint8Array>, limit: number, what: string): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const c of stream) {
    size += c.length;
    if (size > limit) throw new BundleRefusedError('format', `${what} is larger than ${formatBytes(limit)}`);
    chunks.push(Buffer.from(c));
  }
  return Buffer.concat(chunks, size);
}

/** Turns what a failed tar read threw into the refusal it means. */
function tarFailure(err: unknown, where: string): Error {
  if (err instanceof BundleRefusedError || (isShoalError(err) && err.name === 'AbortedError')) return err as Error;
  const message = (err as Error)?.message ?? String(err);
  if (/Unexpected end of data|premature|unexpected end of file/i.test(message)) {
    return new BundleRefusedError('truncated', `the bundle ends in the middle of ${where}: it is truncated; copy it again`);
  }
  if (/Invalid tar header|Header exceeds|incorrect header check|invalid (block|distance|code)/i.test(message)) {
    return new BundleRefusedError('corrupt', `the bundle is not a readable tar file at ${where} (${message}): it is damaged or not a bundle`);
  }
  return err as Error;
}

/** Gunzips on the fly when the bytes start with the gzip magic (`docker save | gzip`). */
async function* tarBytes(source: AsyncIterable<Buffer>): AsyncGenerator<Buffer> {
  const iterator = source[Symbol.asyncIterator]();
  const first = await iterator.next();
  if (first.done) return;
  const rest = (async function* () {
    yield first.value;
    for (;;) {
      const n = await iterator.next();
      if (n.done) return;
      yield n.value;
    }
  })();
  if (first.value[0] === 0x1f && first.value[1] === 0x8b) {
    const gunzip = createGunzip();
    const feeding = pipeline(rest, gunzip).catch((err: unknown) => {
      gunzip.destroy(err as Error);
    });
    for await (const c of gunzip) yield c as Buffer;
    await feeding;
  } else {
    yield* rest;
  }
}

/** The streaming pass and the decision, for one bundle and one target. */
class BundleReader {
  private readonly opts: ImportOptions;
  private readonly target: BundleTarget;
  private readonly progress: ProgressReporter;
  private readonly warnings: string[] = [];

  private bundle?: { manifest: BundleManifest; bytes: Buffer; files: Map<string, BundleFile>; seen: Set<string> };
  private signature?: SignatureCheck;
  private sawSignature = false;
  private firstFile = true;
  private admitted = false;

  /** Small non-blob files by path (index.json, manifest.json, configs of docker archives). */
  private readonly held = new Map<string, Buffer>();
  private heldBytes = 0;
  /** Blob files that look like manifests, by digest. */
  private readonly manifests = new Map<string, Buffer>();
  /** Small JSON blobs (signature payloads, Sigstore bundles), held when a signature policy will read them. */
  private readonly smallJson = new Map<string, Buffer>();
  private policyVerdicts?: ImportResult['policy'];
  /** Every blob file of the bundle, by digest. */
  private readonly blobs = new Map<string, { size: number }>();
  /** Larger non-blob files (layers of docker archives), streamed into the target. */
  private readonly streamed = new Map<string, StreamedFile>();
  private readonly links = new Map<string, string>();
  private readonly paths = new Set<string>();
  /** Digests the target may have linked into staging; released when the import is done. */
  private readonly staged = new Set<string>();
  /** Blobs this run wrote (not the ones the target already had). */
  private readonly writtenDigests = new Set<string>();

  private blobsWritten = 0;
  private bytesWritten = 0;
  private blobsPresent = 0;
  private bytesRead = 0;
  private current = 'its first entry';

  constructor(opts: ImportOptions) {
    this.opts = opts;
    this.target = opts.target;
    this.progress = opts.progress ?? new SilentProgress();
  }

  private get signal(): AbortSignal | undefined {
    return this.opts.signal;
  }

  private warn(message: string): void {
    this.warnings.push(message);
    this.progress.event({ event: 'warning', message });
  }

  private hold(path: string, bytes: Buffer): void {
    this.heldBytes += bytes.length;
    if (this.heldBytes > MAX_HELD_BYTES) {
      throw new BundleRefusedError('format', `the bundle has more than ${formatBytes(MAX_HELD_BYTES)} of manifests and metadata; Shoal does not import it`);
    }
    this.held.set(path, bytes);
  }

  async run(): Promise<ImportResult> {
    const input = this.opts.input;
    const reader = this;
    const counted = (async function* () {
      for await (const chunk of input.read({ signal: reader.signal })) {
        reader.bytesRead += chunk.length;
        reader.progress.advance(chunk.length);
        yield chunk;
      }
    })();
    const extract = tar.extract();
    let feedError: unknown;
    const feeding = pipeline(tarBytes(counted), extract as unknown as NodeJS.WritableStream).catch((err: unknown) => {
      feedError ??= err;
    });
    try {
      for await (const entry of extract) {
        await this.entry(entry as unknown as TarEntry);
      }
    } catch (err) {
      extract.destroy();
      await feeding;
      // A part that failed its hash, or a truncated file, is the cause; the tar error only follows from it.
      throw tarFailure(isShoalError(feedError) ? feedError : err, this.current);
    }
    await feeding;
    if (feedError) throw tarFailure(feedError, this.current);
    this.current = 'the end';
    if (!this.admitted) await this.admit();
    if (this.bundle) {
      const missing = this.bundle.manifest.files.filter((f) => !this.bundle!.seen.has(f.path));
      if (missing.length > 0) {
        throw new BundleRefusedError(
          'truncated',
          `the bundle is truncated: ${missing.length} file(s) listed in ${BUNDLE_MANIFEST_FILE} are not in it (first: ${missing[0]!.path}); copy it again`,
          { missing: missing.slice(0, 20).map((f) => f.path) },
        );
      }
    }
    const { format, plans } = await this.plan();
    if (this.opts.policy) await this.judge(plans, this.opts.policy);
    const images = await this.write(plans);
    if (this.target.keepsContent) await this.target.releaseStaging([...this.staged], { signal: this.signal });
    const omitted = this.bundle?.manifest.omitted.length ?? 0;
    return {
      format,
      images,
      blobsWritten: this.blobsWritten,
      bytesWritten: this.bytesWritten,
      blobsPresent: this.blobsPresent,
      omitted,
      omittedChecked: this.target.keepsContent,
      bytesRead: this.bytesRead,
      signature: this.signature,
      warnings: this.warnings,
      ...(this.policyVerdicts ? { policy: this.policyVerdicts } : {}),
    };
  }

  // ---- the signature policy ----------------------------------------------------------------------

  /** The bundle's own content as the place signatures are read from (nothing is written yet). */
  private signatureSource(plans: ImagePlan[], repository: string): SignatureSource {
    const manifests = this.manifests;
    const blobs = this.smallJson;
    return {
      tagged: async (tag) => {
        const plan = plans.find((p) => p.repository === repository && p.tag === tag);
        return plan ? { digest: plan.digest, bytes: plan.bytes } : undefined;
      },
      referrers: async (digest) => {
        const out = [];
        for (const [d, bytes] of manifests) {
          let parsed: ParsedManifest;
          try {
            parsed = parseManifest(bytes, undefined);
          } catch {
            continue;
          }
          if (parsed.subject?.digest !== digest) continue;
          out.push({ mediaType: parsed.mediaType, digest: d, size: bytes.length, artifactType: effectiveArtifactType(parsed) });
        }
        return out;
      },
      manifest: async (digest) => manifests.get(digest),
      blob: async (digest) => blobs.get(digest) ?? manifests.get(digest),
    };
  }

  /**
   * Every image of the bundle under the policy, before anything is written. Signature artifacts themselves (cosign
   * `.sig` tags, referrer indexes) are not judged: they travel with the images they sign.
   */
  private async judge(plans: ImagePlan[], policy: Policy): Promise<void> {
    const verdicts: NonNullable<ImportResult['policy']> = [];
    const refused: Array<{ plan: ImagePlan; verdict: Verdict }> = [];
    for (const plan of plans) {
      const name = `${plan.ref.registry}/${plan.ref.repository}`;
      // Signatures are not judged; a referrers index is not either, but each entry that is not a signature is.
      const kind = plan.tag && SIGNATURE_TAG.test(plan.tag) ? signatureArtifactKind(plan.bytes, plan.tag) : undefined;
      if (kind === 'signature') continue;
      const roots = kind === 'referrers-index' ? this.parse(plan.bytes, plan.mediaType, plan.reference).manifests.map((d) => d.digest).filter((d) => signatureArtifactKind(this.manifests.get(d) ?? Buffer.alloc(0), undefined) !== 'signature') : [plan.digest];
      for (const digest of roots) {
        const verdict = await judgeImage(this.signatureSource(plans, plan.repository), name, digest, ruleFor(policy, name), { signal: this.signal });
        const image = digest === plan.digest ? plan.reference : `${name}@${digest}`;
        this.opts.onVerdict?.({ ...verdict, image });
        verdicts.push({ image, digest, allowed: verdict.allowed, reason: verdict.reason, message: verdict.message });
        if (!verdict.allowed) refused.push({ plan, verdict });
      }
    }
    this.policyVerdicts = verdicts;
    if (refused.length === 0) return;
    if (policy.mode === 'warn') {
      for (const r of refused) this.warn(`signature policy (warn mode): imported, but would be refused: ${r.verdict.message}`);
      return;
    }
    const first = refused[0]!;
    throw new BundleRefusedError(
      'policy',
      `the signature policy ${policy.source} refuses ${refused.length} of the bundle's ${verdicts.length} image(s); nothing was imported. ${refused.map((r) => `${r.plan.reference}: ${describeReason(r.verdict.reason as DenyReason)} (${r.verdict.message})`).join('; ')}`,
      { refused: refused.map((r) => ({ image: r.plan.reference, digest: r.plan.digest, rule: r.verdict.rule, reason: r.verdict.reason })), first: first.plan.reference },
    );
  }

  // ---- the streaming pass ------------------------------------------------------------------------

  private async entry(entry: TarEntry): Promise<void> {
    if (this.signal?.aborted) throw new ShoalError('UNAVAILABLE', 'the import was interrupted');
    const h = entry.header;
    this.current = `entry ${JSON.stringify(h.name)}`;
    if (h.type === 'directory') {
      checkEntryPath(h.name);
      await drain(entry);
      return;
    }
    if (h.type === 'symlink' || h.type === 'link') {
      const path = checkEntryPath(h.name);
      this.link(path, h.linkname ?? '');
      await drain(entry);
      return;
    }
    if (h.type !== 'file' && h.type !== 'contiguous-file') {
      throw new BundleRefusedError('unsafe', `the bundle has an entry ${JSON.stringify(h.name)} of type ${h.type}; bundles hold regular files only`);
    }
    const path = checkEntryPath(h.name);
    const size = h.size ?? 0;
    if (this.paths.has(path)) throw new BundleRefusedError('format', `the bundle has ${path} twice`);
    this.paths.add(path);
    if (this.firstFile) {
      this.firstFile = false;
      if (path === BUNDLE_MANIFEST_FILE) {
        const bytes = await readAll(entry, MAX_BUNDLE_MANIFEST_BYTES, BUNDLE_MANIFEST_FILE);
        const manifest = parseBundleManifest(bytes);
        this.bundle = { manifest, bytes, files: new Map(manifest.files.map((f) => [f.path, f])), seen: new Set() };
        return;
      }
    }
    if (path === BUNDLE_MANIFEST_FILE) throw new BundleRefusedError('format', `${BUNDLE_MANIFEST_FILE} must be the first file of a bundle; this one was rearranged`);
    if (path === BUNDLE_SIGNATURE_FILE) {
      if (!this.bundle || this.admitted || this.sawSignature) throw new BundleRefusedError('format', `${BUNDLE_SIGNATURE_FILE} must directly follow ${BUNDLE_MANIFEST_FILE}`);
      this.sawSignature = true;
      const bytes = await readAll(entry, MAX_SIGNATURE_BYTES, BUNDLE_SIGNATURE_FILE);
      this.signature = checkBundleSignature(bytes, this.bundle.bytes, this.opts.trust ?? []);
      return;
    }
    if (!this.admitted) await this.admit();
    let listed: BundleFile | undefined;
    if (this.bundle) {
      listed = this.bundle.files.get(path);
      if (!listed) throw new BundleRefusedError('corrupt', `${path} is in the bundle but not in its manifest: the bundle was altered after it was made`, { path });
      if (listed.size !== size) {
        throw new BundleRefusedError('corrupt', `${path} is ${size} bytes but the bundle manifest says ${listed.size}: the bundle is damaged`, { path });
      }
      this.bundle.seen.add(path);
    }
    const digest = blobDigestOfPath(path);
    if (digest) await this.blob(entry, path, digest, size, listed);
    else await this.file(entry, path, size, listed);
  }

  private link(path: string, target: string): void {
    if (this.bundle || path.startsWith('blobs/')) {
      throw new BundleRefusedError('unsafe', `the bundle has a link ${path} -> ${target}; Shoal refuses bundles with links`, { path, target });
    }
    // `docker save` archives made by skopeo have links that nothing names; the plan refuses any that is used.
    this.links.set(path, target);
  }

  /** Decides, before the first content file, whether the bundle may be read on. */
  private async admit(): Promise<void> {
    this.admitted = true;
    const trust = this.opts.trust ?? [];
    if (!this.bundle) {
      if (trust.length > 0) {
        throw new BundleRefusedError('signature', 'the file has no Shoal bundle manifest and no signature, but --trust asks for a signed bundle; nothing was imported');
      }
      return;
    }
    if (trust.length > 0 && !this.signature) throw new BundleRefusedError('signature', 'the bundle is not signed, but --trust asks for a signed bundle; nothing was imported');
    if (this.signature && !this.signature.valid && !this.signature.trusted) {
      throw new BundleRefusedError('signature', `the bundle's signature does not match its manifest: the bundle was altered after it was signed; nothing was imported`);
    }
    const omitted = this.bundle.manifest.omitted;
    if (omitted.length > 0 && this.target.keepsContent) {
      const missing: string[] = [];
      for (const o of omitted) {
        if (await this.target.hasBlob(o.digest, { signal: this.signal })) this.staged.add(o.digest);
        else missing.push(o.digest);
      }
      if (missing.length > 0) {
        throw new BundleRefusedError(
          'incomplete',
          `this delta bundle leaves out ${omitted.length} blob(s) the site was said to have, but ${missing.length} of them are not on ${this.target.description} (first: ${missing[0]}); import it where its inventory was taken, or export a full bundle`,
          { missing: missing.slice(0, 20) },
        );
      }
    }
  }

  /** Passes the entry's bytes on, remembering the first error the entry itself raised. */
  private observed(entry: AsyncIterable<Uint8Array>, keep: (chunk: Buffer) => void): { bytes: AsyncGenerator<Uint8Array>; failure: () => unknown } {
    let failure: unknown;
    const bytes = (async function* () {
      try {
        for await (const c of entry) {
          const chunk = c as Buffer;
          keep(chunk);
          yield chunk;
        }
      } catch (err) {
        failure = err;
        throw err;
      }
    })();
    return { bytes, failure: () => failure };
  }

  /** What a target's failure to take a blob means for the bundle. */
  private blobFailure(err: unknown, entryFailure: unknown, path: string): Error {
    if (entryFailure) return tarFailure(entryFailure, `${path}`);
    if (isShoalError(err) && (err.code === 'DIGEST_INVALID' || err.code === 'SIZE_INVALID')) {
      return new BundleRefusedError('corrupt', `${path} does not match its digest: the bundle is damaged (${err.message}); nothing refers to it`, { path });
    }
    return err as Error;
  }

  private async blob(entry: TarEntry, path: string, digest: string, size: number, listed: BundleFile | undefined): Promise<void> {
    const d = Digest.parse(digest);
    if (listed && d.algorithm === 'sha256' && listed.sha256 !== d.hex) {
      throw new BundleRefusedError('corrupt', `${path} is listed with sha256 ${listed.sha256} in the bundle manifest: the bundle is inconsistent`, { path });
    }
    const extraHash = listed && d.algorithm !== 'sha256' ? createHash('sha256') : undefined;
    const chunks: Buffer[] = [];
    let first = true;
    let json = false;
    const keepJson = size <= MAX_METADATA_BYTES;
    const { bytes, failure } = this.observed(entry, (chunk) => {
      extraHash?.update(chunk);
      if (!keepJson) return;
      if (first && chunk.length > 0) {
        first = false;
        json = firstNonSpace(chunk) === 0x7b;
      }
      if (json) chunks.push(chunk);
    });
    const present = await this.target.hasBlob(digest, { signal: this.signal });
    this.staged.add(digest);
    if (present) {
      try {
        await drain(bytes);
      } catch (err) {
        throw tarFailure(failure() ?? err, path);
      }
      this.blobsPresent++;
      this.progress.event({ event: 'blob', digest, size, action: 'present' });
    } else {
      try {
        await this.target.writeBlob(bytes, { digest, size }, { signal: this.signal });
      } catch (err) {
        throw this.blobFailure(err, failure(), path);
      }
      this.blobsWritten++;
      this.bytesWritten += size;
      this.writtenDigests.add(digest);
      this.progress.event({ event: 'blob', digest, size, action: this.target.keepsContent ? 'written' : 'verified' });
    }
    if (extraHash && extraHash.digest('hex') !== listed!.sha256) {
      throw new BundleRefusedError('corrupt', `${path} does not match its sha256 in the bundle manifest: the bundle is damaged`, { path });
    }
    this.blobs.set(digest, { size });
    if (json) {
      const data = Buffer.concat(chunks);
      if (isManifestJson(data)) {
        this.heldBytes += data.length;
        if (this.heldBytes > MAX_HELD_BYTES) throw new BundleRefusedError('format', `the bundle has more than ${formatBytes(MAX_HELD_BYTES)} of manifests; Shoal does not import it`);
        this.manifests.set(digest, data);
      } else if (this.opts.policy && data.length <= SIGNATURE_JSON_BYTES) {
        this.heldBytes += data.length;
        if (this.heldBytes > MAX_HELD_BYTES) throw new BundleRefusedError('format', `the bundle has more than ${formatBytes(MAX_HELD_BYTES)} of manifests and metadata; Shoal does not import it`);
        this.smallJson.set(digest, data);
      }
    }
  }

  private async file(entry: TarEntry, path: string, size: number, listed: BundleFile | undefined): Promise<void> {
    const iterator = (entry as AsyncIterable<Uint8Array>)[Symbol.asyncIterator]();
    let head: Buffer;
    try {
      const n = await iterator.next();
      head = n.done ? Buffer.alloc(0) : Buffer.from(n.value);
    } catch (err) {
      throw tarFailure(err, path);
    }
    const rest: AsyncIterable<Uint8Array> = (async function* () {
      if (head.length > 0) yield head;
      for (;;) {
        const n = await iterator.next();
        if (n.done) return;
        yield n.value;
      }
    })();
    const leading = firstNonSpace(head);
    const small = size <= SMALL_FILE_BYTES || (size <= MAX_METADATA_BYTES && (leading === 0x7b || leading === 0x5b));
    if (small) {
      let bytes: Buffer;
      try {
        bytes = await readAll(rest, MAX_METADATA_BYTES, path);
      } catch (err) {
        throw tarFailure(err, path);
      }
      if (listed && Digest.of(bytes).hex !== listed.sha256) {
        throw new BundleRefusedError('corrupt', `${path} does not match its sha256 in the bundle manifest: the bundle is damaged`, { path });
      }
      this.hold(path, bytes);
      return;
    }
    // A large file outside blobs/: a layer of a `docker save` archive. Its digest is what it hashes to.
    const { bytes, failure } = this.observed(rest, () => undefined);
    let info;
    try {
      info = await this.target.writeBlob(bytes, { size }, { signal: this.signal });
    } catch (err) {
      throw this.blobFailure(err, failure(), path);
    }
    if (listed && Digest.parse(info.digest).hex !== listed.sha256) {
      throw new BundleRefusedError('corrupt', `${path} does not match its sha256 in the bundle manifest: the bundle is damaged`, { path });
    }
    this.staged.add(info.digest);
    this.writtenDigests.add(info.digest);
    this.blobsWritten++;
    this.bytesWritten += size;
    this.streamed.set(path, { digest: info.digest, size, magic: head.subarray(0, 4) });
  }

  // ---- the decision ------------------------------------------------------------------------------

  private async plan(): Promise<{ format: BundleFormat; plans: ImagePlan[] }> {
    if (this.held.has(OCI_INDEX_FILE)) {
      if (this.links.size > 0) {
        const [path, target] = [...this.links][0]!;
        throw new BundleRefusedError('unsafe', `the layout has a link ${path} -> ${target}; Shoal refuses bundles with links`, { path, target });
      }
      return { format: this.bundle ? 'shoal' : 'oci-layout', plans: await this.planLayout() };
    }
    if (this.held.has(DOCKER_MANIFEST_FILE)) return { format: 'docker-archive', plans: await this.planDockerArchive() };
    if (this.streamed.has(OCI_INDEX_FILE) || this.streamed.has(DOCKER_MANIFEST_FILE)) {
      throw new BundleRefusedError('format', `the bundle's ${this.streamed.has(OCI_INDEX_FILE) ? OCI_INDEX_FILE : DOCKER_MANIFEST_FILE} is larger than ${formatBytes(MAX_METADATA_BYTES)}`);
    }
    throw new BundleRefusedError('format', `the file has neither ${OCI_INDEX_FILE} (an OCI image layout) nor ${DOCKER_MANIFEST_FILE} (a docker save archive): it is not an image bundle`);
  }

  /** A manifest's bytes from the bundle, checked against its digest (a skipped blob was not hashed). */
  private manifestBytes(digest: string, who: string): Buffer {
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

  private parse(bytes: Buffer, mediaType: string | undefined, who: string): ParsedManifest {
    try {
      return parseManifest(bytes, mediaType);
    } catch (err) {
      throw new BundleRefusedError('format', `${who} is not a valid manifest: ${(err as Error).message}`);
    }
  }

  /** Blob availability: in the bundle, or already on the target (a delta's omitted blobs). */
  private async requireBlobs(plan: ImagePlan): Promise<void> {
    const missing: string[] = [];
    const omitted = new Set(this.bundle?.manifest.omitted.map((o) => o.digest) ?? []);
    for (const digest of plan.blobs) {
      if (this.blobs.has(digest)) continue;
      if (!this.target.keepsContent && omitted.has(digest)) continue;
      if (this.target.keepsContent && (await this.target.hasBlob(digest, { signal: this.signal }))) {
        this.staged.add(digest);
        continue;
      }
      missing.push(digest);
    }
    if (missing.length > 0) {
      throw new BundleRefusedError(
        'incomplete',
        `image ${plan.reference} names ${missing.length} blob(s) that are neither in the bundle nor on ${this.target.description} (first: ${missing[0]}); nothing was imported`,
        { image: plan.reference, missing: missing.slice(0, 20) },
      );
    }
  }

  /** Walks a manifest: its children first, then its blobs. */
  private collect(plan: ImagePlan, digest: string, mediaType: string | undefined, who: string, isReferrer: boolean, declaredSize?: number): ParsedManifest {
    const bytes = this.manifestBytes(digest, who);
    if (declaredSize !== undefined && declaredSize !== bytes.length) {
      throw new BundleRefusedError('corrupt', `${who} says manifest ${digest} has ${declaredSize} bytes, but it has ${bytes.length}`, { digest });
    }
    const parsed = this.parse(bytes, mediaType, `manifest ${digest}`);
    for (const child of parsed.manifests) this.collect(plan, child.digest, child.mediaType, `index ${digest}`, isReferrer, child.size);
    for (const b of parsed.blobs) {
      if (b.urls && b.urls.length > 0) continue;
      const have = this.blobs.get(b.digest);
      if (have && have.size !== b.size) {
        throw new BundleRefusedError('corrupt', `manifest ${digest} says blob ${b.digest} has ${b.size} bytes, but the bundle's has ${have.size}`, { digest: b.digest });
      }
      plan.blobs.add(b.digest);
    }
    if (digest !== plan.digest && !plan.manifests.some((m) => m.digest === digest)) plan.manifests.push({ digest, mediaType: parsed.mediaType, bytes, isReferrer });
    return parsed;
  }

  /** Adds every manifest of the bundle whose subject is in the image (signatures, SBOMs, and theirs). */
  private collectReferrers(plan: ImagePlan, sourceDigest: string | undefined): void {
    const inImage = new Set([plan.digest, ...plan.manifests.map((m) => m.digest)]);
    if (sourceDigest) inImage.add(sourceDigest);
    for (let changed = true; changed; ) {
      changed = false;
      for (const [digest, bytes] of this.manifests) {
        if (inImage.has(digest)) continue;
        let parsed: ParsedManifest;
        try {
          parsed = parseManifest(bytes, undefined);
        } catch {
          continue;
        }
        if (!parsed.subject || !inImage.has(parsed.subject.digest)) continue;
        this.collect(plan, digest, parsed.mediaType, `referrer ${digest}`, true);
        plan.referrers.push(digest);
        for (const m of plan.manifests) inImage.add(m.digest);
        inImage.add(digest);
        changed = true;
      }
    }
  }

  private newPlan(ref: Reference, digest: string, mediaType: string, bytes: Buffer): ImagePlan {
    const reference = `${ref.registry}/${ref.repository}${ref.tag ? `:${ref.tag}` : `@${digest}`}`;
    return { ref, reference, repository: storeRepository(ref), tag: ref.tag, digest, mediaType, bytes, manifests: [], blobs: new Set(), referrers: [] };
  }

  private async planLayout(): Promise<ImagePlan[]> {
    const index = this.parse(this.held.get(OCI_INDEX_FILE)!, MediaType.OciIndex, OCI_INDEX_FILE);
    if (this.bundle && this.bundle.files.get(OCI_INDEX_FILE) === undefined) throw new BundleRefusedError('corrupt', `${OCI_INDEX_FILE} is not listed in the bundle manifest`);
    const sourceDigests = new Map((this.bundle?.manifest.images ?? []).filter((i) => i.sourceDigest).map((i) => [i.digest, i.sourceDigest!]));
    const plans: ImagePlan[] = [];
    for (const [i, d] of index.manifests.entries()) {
      const who = `${OCI_INDEX_FILE} entry ${i + 1}`;
      const bytes = this.manifestBytes(d.digest, who);
      if (bytes.length !== d.size) throw new BundleRefusedError('corrupt', `${who} says ${d.digest} has ${d.size} bytes, but it has ${bytes.length}`);
      const parsed = this.parse(bytes, d.mediaType, `manifest ${d.digest}`);
      let ref: Reference | undefined;
      try {
        ref = imageNameOf(d.annotations, this.opts.repository);
      } catch (err) {
        if (err instanceof BundleRefusedError) throw err;
        throw new BundleRefusedError('format', `${who} names an image that is not a valid reference: ${(err as Error).message}`);
      }
      if (!ref) {
        if (parsed.subject) continue; // a referrer listed in index.json: it goes with its subject
        if (this.opts.repository === undefined) {
          throw new BundleRefusedError('format', `${who} (${d.digest}) has no image name; give --repository REGISTRY/REPOSITORY to import it by digest`);
        }
        ref = { ...parseReference(this.opts.repository), tag: undefined, digest: d.digest };
      }
      const plan = this.newPlan(ref, d.digest, parsed.mediaType, bytes);
      this.collect(plan, d.digest, d.mediaType, who, false, d.size);
      this.collectReferrers(plan, sourceDigests.get(d.digest));
      plans.push(plan);
    }
    if (plans.length === 0) throw new BundleRefusedError('format', `${OCI_INDEX_FILE} names no images`);
    for (const plan of plans) await this.requireBlobs(plan);
    return plans;
  }

  /** A `docker save` archive: manifest.json lists each image's config file and layer files. */
  private async planDockerArchive(): Promise<ImagePlan[]> {
    let entries: Array<{ Config?: unknown; RepoTags?: unknown; Layers?: unknown }>;
    try {
      entries = JSON.parse(this.held.get(DOCKER_MANIFEST_FILE)!.toString('utf8')) as typeof entries;
      if (!Array.isArray(entries)) throw new Error('not a list');
    } catch (err) {
      throw new BundleRefusedError('format', `${DOCKER_MANIFEST_FILE} is not a docker save manifest: ${(err as Error).message}`);
    }
    const plans: ImagePlan[] = [];
    for (const [i, e] of entries.entries()) {
      const who = `${DOCKER_MANIFEST_FILE} entry ${i + 1}`;
      if (typeof e.Config !== 'string' || !Array.isArray(e.Layers) || e.Layers.some((l) => typeof l !== 'string')) {
        throw new BundleRefusedError('format', `${who} needs Config and Layers`);
      }
      const configPath = this.resolveArchivePath(checkEntryPath(e.Config), who);
      const configBytes = this.held.get(configPath);
      if (!configBytes) throw new BundleRefusedError('incomplete', `${who} names config ${configPath}, which is not in the archive`);
      const configDigest = Digest.of(configBytes).toString();
      const stem = /(?:^|\/)(?:sha256\/)?([a-f0-9]{64})(?:\.json)?$/.exec(configPath)?.[1];
      if (stem && stem !== Digest.parse(configDigest).hex) {
        throw new BundleRefusedError('corrupt', `config ${configPath} hashes to ${configDigest}, not to the digest its name says: the archive is damaged`);
      }
      let diffIds: string[] = [];
      try {
        const cfg = JSON.parse(configBytes.toString('utf8')) as { rootfs?: { diff_ids?: string[] } };
        diffIds = cfg.rootfs?.diff_ids ?? [];
      } catch {
        throw new BundleRefusedError('format', `config ${configPath} is not JSON`);
      }
      const layers: Descriptor[] = [];
      for (const [j, raw] of (e.Layers as string[]).entries()) {
        const path = this.resolveArchivePath(checkEntryPath(raw), who);
        const layer = await this.archiveLayer(path, who);
        const compressed = layer.magic[0] === 0x1f && layer.magic[1] === 0x8b;
        const zstd = layer.magic.readUInt32LE(0) === 0xfd2fb528;
        if (!compressed && !zstd && diffIds[j] !== undefined && diffIds[j] !== layer.digest) {
          throw new BundleRefusedError('corrupt', `layer ${path} hashes to ${layer.digest}, but the image config says ${diffIds[j]}: the archive is damaged`, { path });
        }
        layers.push({
          mediaType: zstd ? 'application/vnd.oci.image.layer.v1.tar+zstd' : compressed ? 'application/vnd.docker.image.rootfs.diff.tar.gzip' : 'application/vnd.docker.image.rootfs.diff.tar',
          digest: layer.digest,
          size: layer.size,
        });
      }
      if (!this.blobs.has(configDigest) && !(await this.target.hasBlob(configDigest, { signal: this.signal }))) {
        await this.target.writeBlob([configBytes], { digest: configDigest, size: configBytes.length }, { signal: this.signal });
        this.writtenDigests.add(configDigest);
        this.blobsWritten++;
        this.bytesWritten += configBytes.length;
      }
      this.blobs.set(configDigest, { size: configBytes.length });
      this.staged.add(configDigest);
      const manifest = Buffer.from(
        JSON.stringify({
          schemaVersion: 2,
          mediaType: MediaType.DockerManifest,
          config: { mediaType: MediaType.DockerConfig, size: configBytes.length, digest: configDigest },
          layers,
        }),
      );
      const digest = Digest.of(manifest).toString();
      const tags = Array.isArray(e.RepoTags) ? (e.RepoTags as unknown[]).filter((t): t is string => typeof t === 'string') : [];
      const refs: Reference[] = tags.map((t) => {
        try {
          return parseReference(t);
        } catch (err) {
          throw new BundleRefusedError('format', `${who} has an image name ${JSON.stringify(t)} that is not a valid reference: ${(err as Error).message}`);
        }
      });
      if (refs.length === 0) {
        if (this.opts.repository === undefined) throw new BundleRefusedError('format', `${who} has no RepoTags; give --repository REGISTRY/REPOSITORY to import it by digest`);
        refs.push({ ...parseReference(this.opts.repository), tag: undefined, digest });
      }
      for (const ref of refs) {
        const plan = this.newPlan(ref, digest, MediaType.DockerManifest, manifest);
        plan.blobs.add(configDigest);
        for (const l of layers) plan.blobs.add(l.digest);
        plans.push(plan);
      }
    }
    if (plans.length === 0) throw new BundleRefusedError('format', `${DOCKER_MANIFEST_FILE} names no images`);
    for (const plan of plans) await this.requireBlobs(plan);
    return plans;
  }

  private resolveArchivePath(path: string, who: string): string {
    const target = this.links.get(path);
    if (target !== undefined) throw new BundleRefusedError('unsafe', `${who} names ${path}, which is a link (-> ${target}); Shoal does not follow links in bundles`, { path });
    return path;
  }

  /** A layer file of a docker archive, written to the target if it was small enough to be held. */
  private async archiveLayer(path: string, who: string): Promise<StreamedFile> {
    const streamed = this.streamed.get(path);
    if (streamed) return streamed;
    const blobDigest = blobDigestOfPath(path);
    if (blobDigest && this.blobs.has(blobDigest)) {
      return { digest: blobDigest, size: this.blobs.get(blobDigest)!.size, magic: Buffer.alloc(4) };
    }
    const held = this.held.get(path);
    if (!held) throw new BundleRefusedError('incomplete', `${who} names layer ${path}, which is not in the archive`, { path });
    const digest = Digest.of(held).toString();
    if (!(await this.target.hasBlob(digest, { signal: this.signal }))) {
      await this.target.writeBlob([held], { digest, size: held.length }, { signal: this.signal });
      this.writtenDigests.add(digest);
      this.blobsWritten++;
      this.bytesWritten += held.length;
    }
    this.staged.add(digest);
    this.blobs.set(digest, { size: held.length });
    const file: StreamedFile = { digest, size: held.length, magic: Buffer.concat([held.subarray(0, 4), Buffer.alloc(4)]).subarray(0, 4) };
    this.streamed.set(path, file);
    return file;
  }

  // ---- writing -------------------------------------------------------------------------------------

  /**
   * The signatures among an image's referrers also under the OCI referrers tag schema (an index tagged
   * `sha256-<hex>`): peers find referrers by tag, so the image's signatures reach every node of the cluster.
   */
  private async writeReferrersTag(plan: ImagePlan): Promise<void> {
    const signal = this.signal;
    const entries: Descriptor[] = [];
    for (const m of plan.manifests) {
      if (!m.isReferrer) continue;
      const parsed = this.parse(m.bytes, m.mediaType, `referrer ${m.digest}`);
      const artifactType = effectiveArtifactType(parsed);
      if (parsed.subject?.digest !== plan.digest || !isSignatureArtifact(m.bytes, undefined)) continue;
      entries.push({ mediaType: parsed.mediaType, digest: m.digest, size: m.bytes.length, ...(artifactType ? { artifactType } : {}), ...(parsed.annotations ? { annotations: parsed.annotations } : {}) });
    }
    if (entries.length === 0) return;
    const tag = referrersFallbackTag(plan.digest);
    if ((await this.target.resolveTag(plan.repository, tag, { signal })) !== undefined) return;
    const bytes = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MediaType.OciIndex, manifests: entries }));
    await this.target.putManifest(plan.repository, tag, bytes, MediaType.OciIndex, { signal });
  }

  private async write(plans: ImagePlan[]): Promise<ImportedImage[]> {
    const signal = this.signal;
    const out: ImportedImage[] = [];
    let pinWarned = false;
    for (const plan of plans) {
      if (!this.target.keepsContent) {
        out.push({ reference: plan.reference, repository: plan.repository, tag: plan.tag, digest: plan.digest, action: 'verified', referrers: plan.referrers.length, pinned: false });
        this.progress.event({ event: 'image', reference: plan.reference, digest: plan.digest, action: 'verified' });
        continue;
      }
      const wrote = [...plan.blobs].some((d) => this.writtenDigests.has(d));
      let changed = wrote;
      for (const digest of plan.blobs) {
        if (!(await this.target.linkBlob(plan.repository, digest, { signal }))) {
          throw new BundleRefusedError('incomplete', `blob ${digest} of ${plan.reference} disappeared from ${this.target.description} during the import; run the import again`);
        }
      }
      // A lookup on a running node may go on to its peers and seeds: worth it only when nothing new arrived.
      const look = this.target.cheapLookups || !wrote;
      // Children and referrers (already dependency-ordered), then the image itself under its tag.
      for (const m of plan.manifests) {
        if (look && (await this.target.hasManifest(plan.repository, m.digest, { signal }))) continue;
        await this.target.putManifest(plan.repository, m.digest, m.bytes, m.mediaType, { signal });
        changed = true;
      }
      const existed = look && (await this.target.hasManifest(plan.repository, plan.digest, { signal }));
      if (!existed) changed = true;
      if (plan.tag) {
        // A target that cannot tell where a tag points gets the (idempotent) PUT every time.
        const current = await this.target.resolveTag(plan.repository, plan.tag, { signal });
        if (current !== plan.digest) {
          await this.target.putManifest(plan.repository, plan.tag, plan.bytes, plan.mediaType, { signal });
          if (current !== undefined) changed = true;
        }
      } else if (!existed) {
        await this.target.putManifest(plan.repository, plan.digest, plan.bytes, plan.mediaType, { signal });
      }
      await this.writeReferrersTag(plan);
      const reason = this.opts.pinReason ?? 'imported bundle';
      let pinned = false;
      if (this.opts.pin !== false) {
        pinned = await this.target.pin(plan.repository, plan.digest, reason, { signal });
        for (const r of plan.referrers) pinned = (await this.target.pin(plan.repository, r, reason, { signal })) && pinned;
      }
      if (!pinned && this.opts.pin !== false && !pinWarned) {
        pinWarned = true;
        this.warn(`${this.target.description} is not a Shoal node and cannot pin images: they were imported but not pinned`);
      }
      const action = changed ? 'imported' : 'unchanged';
      out.push({ reference: plan.reference, repository: plan.repository, tag: plan.tag, digest: plan.digest, action, referrers: plan.referrers.length, pinned });
      this.progress.event({ event: 'image', reference: plan.reference, digest: plan.digest, action });
    }
    return out;
  }
}

/** Imports (or, with a VerifyTarget, verifies) a bundle. Throws BundleRefusedError for a bad bundle. */
export async function importBundle(opts: ImportOptions): Promise<ImportResult> {
  const progress = opts.progress ?? new SilentProgress();
  progress.start(opts.target.keepsContent ? 'import' : 'verify', opts.input.size);
  try {
    const result = await new BundleReader({ ...opts, progress }).run();
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
