/**
 * The one streaming pass over a bundle's tar. Every blob goes straight into the target's staging area, verified
 * against its digest before it becomes visible (nothing is extracted to disk). Small JSON files (index.json,
 * manifests, configs of `docker save` archives) are kept in memory, because foreign tars may put index.json after
 * the blobs. A Shoal bundle starts with its manifest and signature, so trust and completeness are decided (admit)
 * before any blob is written.
 */
import { createHash } from 'node:crypto';
import { pipeline } from 'node:stream/promises';
import { createGunzip } from 'node:zlib';
import tar, { type Header as TarHeader } from 'tar-stream';
import { Digest, ShoalError, isShoalError } from '../../oci/index.ts';
import { BundleRefusedError } from '../errors.ts';
import {
  BUNDLE_MANIFEST_FILE,
  BUNDLE_SIGNATURE_FILE,
  MAX_BUNDLE_MANIFEST_BYTES,
  MAX_METADATA_BYTES,
  blobDigestOfPath,
  checkEntryPath,
  formatBytes,
  parseBundleManifest,
  type BundleFile,
} from '../format.ts';
import type { ProgressReporter } from '../progress.ts';
import { checkBundleSignature } from '../signing.ts';
import type { BundleTarget } from '../targets.ts';
import type { BundleContents, ImportLedger } from './contents.ts';
import type { ImportOptions } from './types.ts';

/** Small non-JSON files (VERSION, repositories) are held too; anything else streams into the target. */
const SMALL_FILE_BYTES = 64 * 1024;
const MAX_SIGNATURE_BYTES = 64 * 1024;
/** JSON blobs up to this size are held for the signature policy (simple-signing payloads, Sigstore bundles). */
const SIGNATURE_JSON_BYTES = 256 * 1024;

/** One entry of the tar being read: its header, then its bytes. */
interface TarEntry extends AsyncIterable<Uint8Array> {
  header: TarHeader;
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

/** What a target's failure to take a blob means for the bundle. */
function blobFailure(err: unknown, entryFailure: unknown, path: string): Error {
  if (entryFailure) return tarFailure(entryFailure, `${path}`);
  if (isShoalError(err) && (err.code === 'DIGEST_INVALID' || err.code === 'SIZE_INVALID')) {
    return new BundleRefusedError('corrupt', `${path} does not match its digest: the bundle is damaged (${err.message}); nothing refers to it`, { path });
  }
  return err as Error;
}

/** A file whose bytes are not the ones the bundle manifest lists for it. */
function notAsListed(path: string): BundleRefusedError {
  return new BundleRefusedError('corrupt', `${path} does not match its sha256 in the bundle manifest: the bundle is damaged`, { path });
}

/** The first chunk of a stream, and the whole stream again: that chunk (unless it is empty), then the rest. */
async function peek<T extends Uint8Array>(source: AsyncIterable<T>): Promise<{ first: T | undefined; all: AsyncIterable<T> }> {
  const iterator = source[Symbol.asyncIterator]();
  const n = await iterator.next();
  const first = n.done ? undefined : n.value;
  const all = (async function* () {
    if (first !== undefined && first.length > 0) yield first;
    for (;;) {
      const next = await iterator.next();
      if (next.done) return;
      yield next.value;
    }
  })();
  return { first, all };
}

/** Gunzips on the fly when the bytes start with the gzip magic (`docker save | gzip`). */
async function* tarBytes(source: AsyncIterable<Buffer>): AsyncGenerator<Buffer> {
  const { first, all } = await peek(source);
  if (first === undefined) return;
  if (first[0] === 0x1f && first[1] === 0x8b) {
    const gunzip = createGunzip();
    const feeding = pipeline(all, gunzip).catch((err: unknown) => {
      gunzip.destroy(err as Error);
    });
    for await (const c of gunzip) yield c as Buffer;
    await feeding;
  } else {
    yield* all;
  }
}

/** Passes the entry's bytes on, remembering the first error the entry itself raised. */
function observed(entry: AsyncIterable<Uint8Array>, keep: (chunk: Buffer) => void): { bytes: AsyncGenerator<Uint8Array>; failure: () => unknown } {
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

/** Reads a bundle's tar once, into `contents` (what was kept) and `ledger` (what was written). */
export class TarPass {
  private readonly opts: ImportOptions;
  private readonly target: BundleTarget;
  private readonly progress: ProgressReporter;
  private readonly contents: BundleContents;
  private readonly ledger: ImportLedger;

  private sawSignature = false;
  private firstFile = true;
  private admitted = false;
  private readonly paths = new Set<string>();
  /** Where the pass is, for messages. */
  private current = 'its first entry';
  bytesRead = 0;

  constructor(opts: ImportOptions & { progress: ProgressReporter }, contents: BundleContents, ledger: ImportLedger) {
    this.opts = opts;
    this.target = opts.target;
    this.progress = opts.progress;
    this.contents = contents;
    this.ledger = ledger;
  }

  private get signal(): AbortSignal | undefined {
    return this.opts.signal;
  }

  /** Reads the whole tar; then refuses a Shoal bundle that lacks files its manifest lists. */
  async run(): Promise<void> {
    const input = this.opts.input;
    const pass = this;
    const counted = (async function* () {
      for await (const chunk of input.read({ signal: pass.signal })) {
        pass.bytesRead += chunk.length;
        pass.progress.advance(chunk.length);
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
    const bundle = this.contents.bundle;
    if (bundle) {
      const missing = bundle.manifest.files.filter((f) => !bundle.seen.has(f.path));
      if (missing.length > 0) {
        throw new BundleRefusedError(
          'truncated',
          `the bundle is truncated: ${missing.length} file(s) listed in ${BUNDLE_MANIFEST_FILE} are not in it (first: ${missing[0]!.path}); copy it again`,
          { missing: missing.slice(0, 20).map((f) => f.path) },
        );
      }
    }
  }

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
        this.contents.bundle = { manifest, bytes, files: new Map(manifest.files.map((f) => [f.path, f])), seen: new Set() };
        return;
      }
    }
    const bundle = this.contents.bundle;
    if (path === BUNDLE_MANIFEST_FILE) throw new BundleRefusedError('format', `${BUNDLE_MANIFEST_FILE} must be the first file of a bundle; this one was rearranged`);
    if (path === BUNDLE_SIGNATURE_FILE) {
      if (!bundle || this.admitted || this.sawSignature) throw new BundleRefusedError('format', `${BUNDLE_SIGNATURE_FILE} must directly follow ${BUNDLE_MANIFEST_FILE}`);
      this.sawSignature = true;
      const bytes = await readAll(entry, MAX_SIGNATURE_BYTES, BUNDLE_SIGNATURE_FILE);
      this.contents.signature = checkBundleSignature(bytes, bundle.bytes, this.opts.trust ?? []);
      return;
    }
    if (!this.admitted) await this.admit();
    let listed: BundleFile | undefined;
    if (bundle) {
      listed = bundle.files.get(path);
      if (!listed) throw new BundleRefusedError('corrupt', `${path} is in the bundle but not in its manifest: the bundle was altered after it was made`, { path });
      if (listed.size !== size) {
        throw new BundleRefusedError('corrupt', `${path} is ${size} bytes but the bundle manifest says ${listed.size}: the bundle is damaged`, { path });
      }
      bundle.seen.add(path);
    }
    const digest = blobDigestOfPath(path);
    if (digest) await this.blob(entry, path, digest, size, listed);
    else await this.file(entry, path, size, listed);
  }

  private link(path: string, target: string): void {
    if (this.contents.bundle || path.startsWith('blobs/')) {
      throw new BundleRefusedError('unsafe', `the bundle has a link ${path} -> ${target}; Shoal refuses bundles with links`, { path, target });
    }
    // `docker save` archives made by skopeo have links that nothing names; the plan refuses any that is used.
    this.contents.links.set(path, target);
  }

  /** Decides, before the first content file, whether the bundle may be read on. */
  private async admit(): Promise<void> {
    this.admitted = true;
    const trust = this.opts.trust ?? [];
    const { bundle, signature } = this.contents;
    if (!bundle) {
      if (trust.length > 0) {
        throw new BundleRefusedError('signature', 'the file has no Shoal bundle manifest and no signature, but --trust asks for a signed bundle; nothing was imported');
      }
      return;
    }
    if (trust.length > 0 && !signature) throw new BundleRefusedError('signature', 'the bundle is not signed, but --trust asks for a signed bundle; nothing was imported');
    if (signature && !signature.valid && !signature.trusted) {
      throw new BundleRefusedError('signature', `the bundle's signature does not match its manifest: the bundle was altered after it was signed; nothing was imported`);
    }
    const omitted = bundle.manifest.omitted;
    if (omitted.length > 0 && this.target.keepsContent) {
      const missing: string[] = [];
      for (const o of omitted) {
        if (await this.target.hasBlob(o.digest, { signal: this.signal })) this.ledger.staged.add(o.digest);
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
    const { bytes, failure } = observed(entry, (chunk) => {
      extraHash?.update(chunk);
      if (!keepJson) return;
      if (first && chunk.length > 0) {
        first = false;
        json = firstNonSpace(chunk) === 0x7b;
      }
      if (json) chunks.push(chunk);
    });
    const present = await this.target.hasBlob(digest, { signal: this.signal });
    this.ledger.staged.add(digest);
    if (present) {
      try {
        await drain(bytes);
      } catch (err) {
        throw tarFailure(failure() ?? err, path);
      }
      this.ledger.blobsPresent++;
      this.progress.event({ event: 'blob', digest, size, action: 'present' });
    } else {
      try {
        await this.target.writeBlob(bytes, { digest, size }, { signal: this.signal });
      } catch (err) {
        throw blobFailure(err, failure(), path);
      }
      this.ledger.wrote(digest, size);
      this.progress.event({ event: 'blob', digest, size, action: this.target.keepsContent ? 'written' : 'verified' });
    }
    if (extraHash && extraHash.digest('hex') !== listed!.sha256) throw notAsListed(path);
    this.contents.blobs.set(digest, { size });
    if (json) {
      const data = Buffer.concat(chunks);
      if (isManifestJson(data)) this.contents.holdManifest(digest, data);
      else if (this.opts.policy && data.length <= SIGNATURE_JSON_BYTES) this.contents.holdSmallJson(digest, data);
    }
  }

  private async file(entry: TarEntry, path: string, size: number, listed: BundleFile | undefined): Promise<void> {
    let peeked: { first: Uint8Array | undefined; all: AsyncIterable<Uint8Array> };
    try {
      peeked = await peek<Uint8Array>(entry);
    } catch (err) {
      throw tarFailure(err, path);
    }
    const head = peeked.first ? Buffer.from(peeked.first) : Buffer.alloc(0);
    const rest = peeked.all;
    const leading = firstNonSpace(head);
    const small = size <= SMALL_FILE_BYTES || (size <= MAX_METADATA_BYTES && (leading === 0x7b || leading === 0x5b));
    if (small) {
      let bytes: Buffer;
      try {
        bytes = await readAll(rest, MAX_METADATA_BYTES, path);
      } catch (err) {
        throw tarFailure(err, path);
      }
      if (listed && Digest.of(bytes).hex !== listed.sha256) throw notAsListed(path);
      this.contents.holdFile(path, bytes);
      return;
    }
    // A large file outside blobs/: a layer of a `docker save` archive. Its digest is what it hashes to.
    const { bytes, failure } = observed(rest, () => undefined);
    let info;
    try {
      info = await this.target.writeBlob(bytes, { size }, { signal: this.signal });
    } catch (err) {
      throw blobFailure(err, failure(), path);
    }
    if (listed && Digest.parse(info.digest).hex !== listed.sha256) throw notAsListed(path);
    this.ledger.staged.add(info.digest);
    this.ledger.wrote(info.digest, size);
    this.contents.streamed.set(path, { digest: info.digest, size, magic: head.subarray(0, 4) });
  }
}
