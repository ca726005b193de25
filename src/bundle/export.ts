/**
 * `shoal export`: reads images from a source and writes one bundle (an OCI image layout in a tar, see
 * format.ts). Manifests are read first (small, kept in memory) to know every blob and its digest; then the
 * tar is written in one pass, each blob streamed from the source straight into the tar and verified on the
 * way. The output appears under its name only when it is complete.
 */
import { SIGNATURE_TAG, cosignSignatureTag } from '../policy/index.ts';
import { once } from 'node:events';
import { pipeline } from 'node:stream/promises';
import tar, { type Header as FullTarHeader, type Pack as TarPack } from 'tar-stream';
import {
  Digest,
  InvalidError,
  MediaType,
  NotFoundError,
  UnsupportedError,
  isShoalError,
  parseManifest,
  parseReference,
  formatReference,
  type Descriptor,
  type ParsedManifest,
  type Reference,
} from '../oci/index.ts';
import type { IoOptions } from '../store/index.ts';
import { BundleFileWriter, partName, partsListPath } from './files.ts';
import {
  BUNDLE_MANIFEST_FILE,
  BUNDLE_MEDIA_TYPE,
  BUNDLE_SIGNATURE_FILE,
  CONTAINERD_NAME_ANNOTATION,
  OCI_INDEX_FILE,
  OCI_LAYOUT_CONTENT,
  OCI_LAYOUT_FILE,
  REF_NAME_ANNOTATION,
  blobPathOf,
  formatBytes,
  formatPlatform,
  platformMatches,
  type BundleFile,
  type BundleImage,
  type BundleManifest,
  type BundlePart,
  type Inventory,
  type OmittedBlob,
  type PlatformSelector,
} from './format.ts';
import { SilentProgress, type ProgressReporter } from './progress.ts';
import { signBundleManifest, type SigningKey } from './signing.ts';
import type { ImageSource } from './sources.ts';

export interface ExportOptions extends IoOptions {
  /** Image references, e.g. `registry.local/team/app:1.2` or `nginx:1.27` (docker.io/library/nginx). */
  references: string[];
  source: ImageSource;
  /** The bundle file; with `splitSize`, the parts are `<output>.part001`... and `<output>.parts.json`. */
  output: string;
  /** Only these platforms of multi-platform images. */
  platforms?: PlatformSelector[];
  /** What the target site has: its blobs are left out. */
  have?: Inventory;
  signingKey?: SigningKey;
  splitSize?: number;
  /** Take signatures, SBOMs and other referrers along (default true). */
  referrers?: boolean;
  progress?: ProgressReporter;
  now?: () => Date;
}

export interface ExportResult {
  /** Files written: the bundle, or its parts and parts list. */
  files: string[];
  parts?: BundlePart[];
  /** Bytes of the tar. */
  size: number;
  images: BundleImage[];
  /** Blobs in the bundle (manifests included) and their bytes. */
  blobs: number;
  blobBytes: number;
  omitted: OmittedBlob[];
  signedBy?: string;
  notices: string[];
}

/** A blob the bundle carries; manifests have their bytes. */
interface PlannedBlob {
  digest: string;
  size: number;
  mediaType: string;
  /** Repository on the source to read it from. */
  repository: string;
  /** The first image that needs it, for messages. */
  image: string;
  manifest?: Buffer;
}

/** Referrers of referrers are followed this deep (a signature of an SBOM of an image). */
const MAX_REFERRER_DEPTH = 3;
const TAR_BLOCK = 512;

type TarHeader = Partial<FullTarHeader> & Pick<FullTarHeader, 'name'>;

function tarEntrySize(size: number): number {
  return TAR_BLOCK + Math.ceil(size / TAR_BLOCK) * TAR_BLOCK;
}

/** Everything the bundle will hold, found by walking manifests before any blob is read. */
class ExportPlan {
  readonly blobs = new Map<string, PlannedBlob>();
  readonly images: BundleImage[] = [];
  private readonly source: ImageSource;
  private readonly opts: ExportOptions;

  constructor(opts: ExportOptions) {
    this.source = opts.source;
    this.opts = opts;
  }

  private add(blob: PlannedBlob): void {
    if (!this.blobs.has(blob.digest)) this.blobs.set(blob.digest, blob);
  }

  /** Adds a manifest (its bytes already known) and everything it references. Returns the parsed manifest. */
  private async addManifestBytes(repository: string, image: string, digest: string, mediaType: string, bytes: Buffer): Promise<ParsedManifest> {
    const parsed = parseManifest(bytes, mediaType);
    this.add({ digest, size: bytes.length, mediaType: parsed.mediaType, repository, image, manifest: bytes });
    for (const child of parsed.manifests) await this.addManifest(repository, image, child.digest);
    for (const blob of parsed.blobs) {
      // Foreign layers (with urls) are not distributable: they stay out, as registries treat them.
      if (blob.urls && blob.urls.length > 0) continue;
      this.add({ digest: blob.digest, size: blob.size, mediaType: blob.mediaType, repository, image });
    }
    return parsed;
  }

  private async addManifest(repository: string, image: string, digest: string): Promise<ParsedManifest> {
    const existing = this.blobs.get(digest);
    if (existing?.manifest) return parseManifest(existing.manifest, existing.mediaType);
    const m = await this.source.getManifest(repository, digest, { signal: this.opts.signal });
    return this.addManifestBytes(repository, image, digest, m.mediaType, m.bytes);
  }

  /** Referrers of `digests`, their blobs, and their own referrers. Returns the referrer digests. */
  private async addReferrers(repository: string, image: string, digests: string[]): Promise<string[]> {
    const found: string[] = [];
    let frontier = digests;
    for (let depth = 0; depth < MAX_REFERRER_DEPTH && frontier.length > 0; depth++) {
      const next: string[] = [];
      for (const subject of frontier) {
        for (const r of await this.source.listReferrers(repository, subject, { signal: this.opts.signal })) {
          if (found.includes(r.digest) || digests.includes(r.digest)) continue;
          await this.addManifest(repository, image, r.digest);
          found.push(r.digest);
          next.push(r.digest);
        }
      }
      frontier = next;
    }
    return found;
  }

  /** Reads the config of a single-platform image to tell its platform. */
  private async platformOfManifest(repository: string, parsed: ParsedManifest): Promise<string | undefined> {
    if (!parsed.config || parsed.config.size > 4 * 1024 * 1024) return undefined;
    const chunks: Buffer[] = [];
    for await (const c of await this.source.openBlob(repository, parsed.config.digest, { signal: this.opts.signal })) chunks.push(Buffer.from(c));
    try {
      const cfg = JSON.parse(Buffer.concat(chunks).toString('utf8')) as { os?: string; architecture?: string; variant?: string };
      return cfg.os && cfg.architecture ? formatPlatform({ os: cfg.os, architecture: cfg.architecture, variant: cfg.variant }) : undefined;
    } catch {
      return undefined;
    }
  }

  async addImage(text: string): Promise<void> {
    let ref: Reference;
    try {
      ref = parseReference(text);
    } catch (err) {
      throw new InvalidError('NAME_INVALID', `${JSON.stringify(text)} is not an image reference: ${(err as Error).message}`);
    }
    const reference = formatReference(ref);
    if (this.images.some((i) => i.reference === reference)) return;
    const signal = this.opts.signal;
    let resolved;
    try {
      resolved = await this.source.resolve(ref, { signal });
    } catch (err) {
      if (isShoalError(err) && (err.code === 'MANIFEST_UNKNOWN' || err.code === 'NAME_UNKNOWN')) {
        throw new NotFoundError('MANIFEST_UNKNOWN', `image ${reference} is not in ${this.source.description}: ${err.message}`);
      }
      throw err;
    }
    const { repository } = resolved;
    const top = await this.source.getManifest(repository, resolved.digest, { signal });
    let bytes = top.bytes;
    let digest = top.digest;
    let parsed = parseManifest(bytes, top.mediaType);
    const image: BundleImage = { reference, digest, mediaType: parsed.mediaType };
    const platforms = this.opts.platforms;
    if (parsed.kind === 'index') {
      let children = parsed.manifests;
      if (platforms) {
        const selected = children.filter((c) => platformMatches(c.platform, platforms));
        if (selected.length === 0) {
          const has = children.map((c) => (c.platform ? formatPlatform(c.platform) : 'unknown')).join(', ');
          throw new NotFoundError('MANIFEST_UNKNOWN', `image ${reference} has no manifest for ${platforms.map(formatPlatform).join(', ')}; it has: ${has}`);
        }
        if (selected.length < children.length) {
          // A subset is a new index: the same JSON with fewer entries, so a new digest.
          const json = JSON.parse(bytes.toString('utf8')) as { manifests: unknown[] };
          json.manifests = json.manifests.filter((_m, i) => selected.includes(children[i]!));
          bytes = Buffer.from(JSON.stringify(json));
          digest = Digest.of(bytes).toString();
          image.sourceDigest = top.digest;
          image.digest = digest;
          parsed = parseManifest(bytes, parsed.mediaType);
          children = selected;
        }
      }
      image.platforms = children.map((c) => (c.platform ? formatPlatform(c.platform) : 'unknown'));
    } else if (platforms && parsed.config?.mediaType !== MediaType.OciEmpty) {
      const platform = await this.platformOfManifest(repository, parsed);
      if (platform && !platforms.some((p) => platformMatches(parsePlatformText(platform), [p]))) {
        throw new NotFoundError('MANIFEST_UNKNOWN', `image ${reference} is a single-platform image for ${platform}, not ${platforms.map(formatPlatform).join(', ')}`);
      }
      if (platform) image.platforms = [platform];
    }
    await this.addManifestBytes(repository, reference, digest, parsed.mediaType, bytes);
    if (this.opts.referrers !== false) {
      const subjects = [top.digest, ...(parsed.kind === 'index' ? parsed.manifests.map((m: Descriptor) => m.digest) : [])];
      const referrers = await this.addReferrers(repository, reference, subjects);
      if (referrers.length > 0) image.referrers = referrers;
    }
    this.images.push(image);
    // cosign's signatures by tag (`sha256-<hex>.sig`) go along as images of their own, so that they keep their tag.
    if (this.opts.referrers !== false && !(ref.tag && SIGNATURE_TAG.test(ref.tag))) await this.addSignatureTag(ref, top.digest);
  }

  /** The cosign `.sig` tag of `digest` in the image's repository, when the source has one. */
  private async addSignatureTag(ref: Reference, digest: string): Promise<void> {
    const tag = cosignSignatureTag(digest);
    try {
      await this.addImage(formatReference({ registry: ref.registry, repository: ref.repository, tag }));
    } catch (err) {
      if (isShoalError(err) && (err.code === 'MANIFEST_UNKNOWN' || err.code === 'NAME_UNKNOWN')) return;
      throw err;
    }
  }
}

function parsePlatformText(text: string): { os: string; architecture: string; variant?: string } {
  const [os, architecture, variant] = text.split('/');
  return { os: os!, architecture: architecture!, variant };
}

/** What goes into the tar, in order, with every file's size and sha256 known up front. */
interface LayoutEntry {
  path: string;
  size: number;
  sha256: string;
  bytes?: Buffer;
  blob?: PlannedBlob;
}

function layoutOf(plan: ExportPlan, omittedDigests: Set<string>): { entries: LayoutEntry[]; index: Buffer } {
  const index = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: MediaType.OciIndex,
      manifests: plan.images.map((img) => ({
        mediaType: img.mediaType,
        digest: img.digest,
        size: plan.blobs.get(img.digest)!.size,
        annotations: { [REF_NAME_ANNOTATION]: img.reference, [CONTAINERD_NAME_ANNOTATION]: img.reference },
      })),
    }),
  );
  const layout = Buffer.from(OCI_LAYOUT_CONTENT);
  const entries: LayoutEntry[] = [
    { path: OCI_LAYOUT_FILE, size: layout.length, sha256: Digest.of(layout).hex, bytes: layout },
    { path: OCI_INDEX_FILE, size: index.length, sha256: Digest.of(index).hex, bytes: index },
  ];
  const blobs = [...plan.blobs.values()];
  // Manifests first: an importer knows every image before the large layers arrive.
  for (const blob of [...blobs.filter((b) => b.manifest), ...blobs.filter((b) => !b.manifest)]) {
    if (omittedDigests.has(blob.digest)) continue;
    const d = Digest.parse(blob.digest);
    if (d.algorithm !== 'sha256') throw new UnsupportedError(`blob ${blob.digest} of ${blob.image} uses ${d.algorithm}; bundles carry sha256 blobs only`);
    entries.push({ path: blobPathOf(blob.digest), size: blob.size, sha256: d.hex, bytes: blob.manifest, blob });
  }
  return { entries, index };
}

/** Writes one tar entry, streaming `body` with backpressure; fails as soon as the output fails. */
async function writeEntry(
  pack: TarPack,
  header: TarHeader,
  body: Buffer | AsyncIterable<Uint8Array> | undefined,
  outputFailed: Promise<never>,
): Promise<void> {
  let settle!: (err?: Error | null) => void;
  const written = new Promise<void>((ok, fail) => (settle = (err) => (err ? fail(err) : ok())));
  if (body === undefined || Buffer.isBuffer(body)) {
    pack.entry(header, body ?? Buffer.alloc(0), (err) => settle(err));
    await Promise.race([written, outputFailed]);
    return;
  }
  const sink = pack.entry(header, (err) => settle(err));
  try {
    for await (const chunk of body) {
      if (!sink.write(chunk)) await Promise.race([once(sink as unknown as NodeJS.EventEmitter, 'drain'), outputFailed, written]);
    }
  } catch (err) {
    sink.destroy(err as Error);
    throw err;
  }
  sink.end(undefined);
  await Promise.race([written, outputFailed]);
}

/** Exports images into a bundle. Nothing is left under the output name when it fails. */
export async function exportBundle(opts: ExportOptions): Promise<ExportResult> {
  const progress = opts.progress ?? new SilentProgress();
  const signal = opts.signal;
  const created = (opts.now?.() ?? new Date()).toISOString();
  if (opts.references.length === 0) throw new InvalidError('NAME_INVALID', 'no images to export: name at least one reference');

  const plan = new ExportPlan(opts);
  for (const text of opts.references) await plan.addImage(text);

  const have = new Set((opts.have?.blobs ?? []).map((b) => b.digest));
  const omitted: OmittedBlob[] = [...plan.blobs.values()].filter((b) => !b.manifest && have.has(b.digest)).map((b) => ({ digest: b.digest, size: b.size }));
  const { entries } = layoutOf(plan, new Set(omitted.map((o) => o.digest)));
  const files: BundleFile[] = entries.map((e) => ({ path: e.path, size: e.size, sha256: e.sha256 }));
  const manifest: BundleManifest = { schemaVersion: 1, mediaType: BUNDLE_MEDIA_TYPE, created, images: plan.images, files, omitted };
  const manifestBytes = Buffer.from(JSON.stringify(manifest, null, 1) + '\n');
  const signatureBytes = opts.signingKey ? signBundleManifest(manifestBytes, opts.signingKey) : undefined;

  const mtime = new Date(created);
  const fileHeader = (name: string, size: number): TarHeader => ({ name, size, mode: 0o644, mtime, uid: 0, gid: 0, type: 'file' });
  const dirHeader = (name: string): TarHeader => ({ name, mode: 0o755, mtime, uid: 0, gid: 0, type: 'directory' });
  const dirs = ['blobs/', 'blobs/sha256/'];
  const total =
    tarEntrySize(manifestBytes.length) +
    (signatureBytes ? tarEntrySize(signatureBytes.length) : 0) +
    dirs.length * TAR_BLOCK +
    entries.reduce((n, e) => n + tarEntrySize(e.size), 0) +
    2 * TAR_BLOCK;

  const writer = new BundleFileWriter(opts.output, opts.splitSize);
  // A deep buffer between the tar and the disk, so reading the source and writing the file overlap.
  const pack = tar.pack({ highWaterMark: 8 * 1024 * 1024 });
  const writing = pipeline(
    pack as unknown as NodeJS.ReadableStream,
    async function* count(source: AsyncIterable<string | Buffer>) {
      for await (const chunk of source) {
        progress.advance(chunk.length);
        yield chunk;
      }
    },
    writer,
    { signal },
  );
  const outputFailed = writing.then(
    () => new Promise<never>(() => undefined),
    (err: unknown) => Promise.reject(err),
  );
  outputFailed.catch(() => undefined);
  progress.start('export', total);
  let blobBytes = 0;
  try {
    await writeEntry(pack, fileHeader(BUNDLE_MANIFEST_FILE, manifestBytes.length), manifestBytes, outputFailed);
    if (signatureBytes) await writeEntry(pack, fileHeader(BUNDLE_SIGNATURE_FILE, signatureBytes.length), signatureBytes, outputFailed);
    for (const [i, e] of entries.entries()) {
      if (i === 2) for (const d of dirs) await writeEntry(pack, dirHeader(d), undefined, outputFailed);
      if (e.bytes) {
        await writeEntry(pack, fileHeader(e.path, e.size), e.bytes, outputFailed);
      } else {
        const blob = e.blob!;
        let body: AsyncIterable<Uint8Array>;
        try {
          body = await opts.source.openBlob(blob.repository, blob.digest, { signal });
        } catch (err) {
          if (isShoalError(err) && err.code === 'BLOB_UNKNOWN') {
            throw new NotFoundError('BLOB_UNKNOWN', `blob ${blob.digest} of image ${blob.image} is missing in ${opts.source.description}: ${err.message}`);
          }
          throw err;
        }
        await writeEntry(pack, fileHeader(e.path, e.size), body, outputFailed);
      }
      if (e.blob) {
        blobBytes += e.size;
        progress.event({ event: 'blob', digest: e.blob.digest, size: e.size, action: 'written' });
      }
    }
    if (entries.length <= 2) for (const d of dirs) await writeEntry(pack, dirHeader(d), undefined, outputFailed);
    pack.finalize();
    await writing;
  } catch (err) {
    pack.destroy();
    await writing.catch(() => undefined);
    await writer.discard();
    progress.finish(true);
    throw err;
  }
  const parts = await writer.commit(created);
  for (const img of plan.images) progress.event({ event: 'image', reference: img.reference, digest: img.digest, action: 'exported' });
  for (const n of opts.source.notices) progress.event({ event: 'warning', message: n });
  progress.finish();
  const split = opts.splitSize !== undefined;
  return {
    files: split ? [...parts.map((_p, i) => partName(opts.output, i + 1)), partsListPath(opts.output)] : [opts.output],
    parts: split ? parts : undefined,
    size: writer.bytesWritten,
    images: plan.images,
    blobs: entries.filter((e) => e.path.startsWith('blobs/')).length,
    blobBytes,
    omitted,
    signedBy: opts.signingKey?.keyId,
    notices: [...opts.source.notices],
  };
}

/** One line per fact, for the end of `shoal export`. */
export function describeExport(r: ExportResult): string[] {
  const lines = [
    `${r.images.length} image(s), ${r.blobs} blob(s), ${formatBytes(r.blobBytes)} of content, ${formatBytes(r.size)} bundle`,
    ...r.images.map((i) => `  ${i.reference} ${i.digest}${i.platforms ? ` [${i.platforms.join(', ')}]` : ''}${i.referrers ? ` +${i.referrers.length} referrer(s)` : ''}`),
  ];
  if (r.omitted.length > 0) lines.push(`left out ${r.omitted.length} blob(s), ${formatBytes(r.omitted.reduce((n, o) => n + o.size, 0))}, that the site already has`);
  lines.push(r.signedBy ? `signed with key ${r.signedBy}` : 'not signed (use --sign KEY to sign)');
  lines.push(r.parts ? `wrote ${r.parts.length} part(s): ${r.files.join(', ')}` : `wrote ${r.files[0]}`);
  return lines;
}
