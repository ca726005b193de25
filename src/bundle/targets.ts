/**
 * Where `shoal import` puts what a bundle holds: the store of a stopped node, a running node (through its
 * registry API), or nowhere (`shoal verify` hashes everything and keeps nothing). Blobs arrive first, into a
 * staging repository, each verified before it becomes visible; manifests and tags are written only after the
 * import has checked that every blob they name is present.
 */
import { DigestHasher, DigestMismatchError, InvalidError, ShoalError, UnavailableError, effectiveArtifactType, isShoalError, parseManifest, Digest } from '../oci/index.ts';
import type { BlobInfo, ContentStore, IoOptions } from '../store/index.ts';
import { STAGING_REPOSITORY } from './format.ts';
import { NodePinClient } from './node-pins.ts';
import { RegistryHttp, errorCodeOf, errorMessageOf, type HttpAnswer, type RegistryHttpOptions } from './registry-http.ts';

export interface BlobExpectation {
  /** Unknown for files of a `docker save` archive: the digest is what the bytes hash to. */
  digest?: string;
  size: number;
}

export interface BundleTarget {
  /** `store /var/lib/shoal`, `node http://...`, for messages. */
  readonly description: string;
  /** False for verification: nothing is kept, every blob is hashed. */
  readonly keepsContent: boolean;
  /** True when hasManifest and resolveTag only look at local records (a running node may ask further). */
  readonly cheapLookups: boolean;
  /** True when the blob is there already (the site had it, or an earlier run of the import wrote it). */
  hasBlob(digest: string, opts?: IoOptions): Promise<boolean>;
  /** Streams a blob in; it becomes visible only if it has the expected size (and digest). */
  writeBlob(source: AsyncIterable<Uint8Array> | Iterable<Uint8Array>, expect: BlobExpectation, opts?: IoOptions): Promise<BlobInfo>;
  /** Makes a present blob part of `repository`. False when the blob is not there. */
  linkBlob(repository: string, digest: string, opts?: IoOptions): Promise<boolean>;
  /** The digest a tag points at, when the target can tell cheaply. */
  resolveTag(repository: string, tag: string, opts?: IoOptions): Promise<string | undefined>;
  hasManifest(repository: string, digest: string, opts?: IoOptions): Promise<boolean>;
  /** Stores a manifest under a tag or its digest; its blobs and child manifests are in the repository. */
  putManifest(repository: string, reference: string, bytes: Buffer, mediaType: string, opts?: IoOptions): Promise<void>;
  /** Pins a manifest so the node keeps it. False when the target cannot pin. */
  pin(repository: string, digest: string, reason: string, opts?: IoOptions): Promise<boolean>;
  /** Drops the staging links of these blobs (the bytes stay while an image uses them). */
  releaseStaging(digests: string[], opts?: IoOptions): Promise<void>;
  close(): Promise<void>;
}

/** The store of a stopped node (`--data DIR`). */
export class StoreTarget implements BundleTarget {
  readonly description: string;
  readonly keepsContent = true;
  readonly cheapLookups = true;
  private readonly store: ContentStore;

  constructor(store: ContentStore, dataDir: string) {
    this.store = store;
    this.description = `store ${dataDir}`;
  }

  async hasBlob(digest: string, opts: IoOptions = {}): Promise<boolean> {
    return (await this.store.statContent(digest, opts)) !== undefined;
  }

  writeBlob(source: AsyncIterable<Uint8Array> | Iterable<Uint8Array>, expect: BlobExpectation, opts: IoOptions = {}): Promise<BlobInfo> {
    return this.store.writeBlob(STAGING_REPOSITORY, source, expect, opts);
  }

  async linkBlob(repository: string, digest: string, opts: IoOptions = {}): Promise<boolean> {
    return (await this.store.mountBlob(repository, digest, undefined, opts)) !== undefined;
  }

  resolveTag(repository: string, tag: string, opts: IoOptions = {}): Promise<string | undefined> {
    return this.store.resolveTag(repository, tag, opts);
  }

  async hasManifest(repository: string, digest: string, opts: IoOptions = {}): Promise<boolean> {
    return (await this.store.getManifest(repository, digest, opts)) !== undefined;
  }

  async putManifest(repository: string, reference: string, bytes: Buffer, mediaType: string, opts: IoOptions = {}): Promise<void> {
    const parsed = parseManifest(bytes, mediaType);
    await this.store.putManifest(
      {
        repository,
        bytes,
        mediaType: parsed.mediaType,
        tag: reference.includes(':') ? undefined : reference,
        subject: parsed.subject?.digest,
        artifactType: effectiveArtifactType(parsed),
        annotations: parsed.annotations,
      },
      opts,
    );
  }

  async pin(repository: string, digest: string, reason: string, opts: IoOptions = {}): Promise<boolean> {
    await this.store.pinManifest(repository, digest, reason, opts);
    return true;
  }

  async releaseStaging(digests: string[], opts: IoOptions = {}): Promise<void> {
    for (const digest of digests) {
      try {
        await this.store.deleteBlob(STAGING_REPOSITORY, digest, opts);
      } catch (err) {
        if (!(isShoalError(err) && err.code === 'BLOB_UNKNOWN')) throw err;
      }
    }
  }

  async close(): Promise<void> {
    await this.store.close();
  }
}

/** A running node, through its registry API (`--node URL`). */
export class NodeTarget implements BundleTarget {
  readonly description: string;
  readonly keepsContent = true;
  readonly cheapLookups = false;
  private readonly http: RegistryHttp;
  /** Upload sessions a missed mount opened, used for the blob's upload. */
  private readonly sessions = new Map<string, string>();
  private deleteRefused = false;
  /** The node's pin API, and whether it has one (asked once, at the first pin). */
  private readonly pins: NodePinClient;
  private pinsAvailable: boolean | undefined;

  constructor(opts: RegistryHttpOptions) {
    this.http = new RegistryHttp(opts);
    this.pins = new NodePinClient(this.http);
    this.description = `node ${this.http.url}`;
  }

  private fail(what: string, answer: HttpAnswer, digest?: string): never {
    const message = `${this.description} refused ${what} (HTTP ${answer.status}: ${errorMessageOf(answer.body)})`;
    const code = errorCodeOf(answer.body);
    if (code === 'DIGEST_INVALID' && digest) throw new DigestMismatchError(digest, 'other', message);
    if (code === 'SIZE_INVALID') throw new InvalidError('SIZE_INVALID', message);
    if (code === 'MANIFEST_BLOB_UNKNOWN') throw new InvalidError('MANIFEST_BLOB_UNKNOWN', message);
    if (answer.status === 401 || answer.status === 403) throw new ShoalError('UNAUTHORIZED', `${message}; check --username and --password`);
    throw new UnavailableError(message);
  }

  /** A mount (from `from`, or from anywhere on the node): 201 means present; 202 opened a session instead. */
  private async mount(repository: string, digest: string, opts: IoOptions, from?: string): Promise<{ present: true } | { present: false; location: string }> {
    const query = `mount=${encodeURIComponent(digest)}${from ? `&from=${encodeURIComponent(from)}` : ''}`;
    const answer = await this.http.send({ method: 'POST', path: `/v2/${repository}/blobs/uploads/?${query}`, repository, push: true, signal: opts.signal });
    if (answer.status === 201) return { present: true };
    if (answer.status === 202 && answer.headers.location) return { present: false, location: answer.headers.location };
    return this.fail(`a mount of ${digest} into ${repository}`, answer);
  }

  private async cancel(location: string, opts: IoOptions = {}): Promise<void> {
    await this.http.send({ method: 'DELETE', path: location, repository: STAGING_REPOSITORY, push: true, signal: opts.signal }).catch(() => undefined);
  }

  async hasBlob(digest: string, opts: IoOptions = {}): Promise<boolean> {
    const r = await this.mount(STAGING_REPOSITORY, digest, opts);
    if (r.present) return true;
    const old = this.sessions.get(digest);
    if (old) await this.cancel(old, opts);
    this.sessions.set(digest, r.location);
    return false;
  }

  private async session(opts: IoOptions): Promise<string> {
    const answer = await this.http.send({ method: 'POST', path: `/v2/${STAGING_REPOSITORY}/blobs/uploads/`, repository: STAGING_REPOSITORY, push: true, signal: opts.signal });
    if (answer.status !== 202 || !answer.headers.location) this.fail('an upload session', answer);
    return answer.headers.location!;
  }

  async writeBlob(source: AsyncIterable<Uint8Array> | Iterable<Uint8Array>, expect: BlobExpectation, opts: IoOptions = {}): Promise<BlobInfo> {
    const location = (expect.digest && this.sessions.get(expect.digest)) || (await this.session(opts));
    if (expect.digest) this.sessions.delete(expect.digest);
    const target = new URL(location, this.http.url);
    const headers = { 'content-type': 'application/octet-stream', 'content-length': String(expect.size) };
    try {
      if (expect.digest) {
        target.searchParams.set('digest', expect.digest);
        const body = Symbol.asyncIterator in source ? source : Buffer.concat([...source]);
        const answer = await this.http.send({ method: 'PUT', path: target.toString(), headers, body, repository: STAGING_REPOSITORY, push: true, signal: opts.signal });
        if (answer.status !== 201) this.fail(`blob ${expect.digest}`, answer, expect.digest);
        return { digest: expect.digest, size: expect.size };
      }
      // Digest unknown until the last byte: stream the bytes, then close the session with what they hash to.
      const hasher = new DigestHasher('sha256');
      const hashed = (async function* () {
        for await (const c of source) {
          hasher.update(c);
          yield c;
        }
      })();
      const patch = await this.http.send({ method: 'PATCH', path: target.toString(), headers, body: hashed, repository: STAGING_REPOSITORY, push: true, signal: opts.signal });
      if (patch.status !== 202) this.fail('an upload', patch);
      const digest = hasher.digest().toString();
      const done = new URL(patch.headers.location ?? location, this.http.url);
      done.searchParams.set('digest', digest);
      const put = await this.http.send({ method: 'PUT', path: done.toString(), repository: STAGING_REPOSITORY, push: true, signal: opts.signal });
      if (put.status !== 201) this.fail(`blob ${digest}`, put, digest);
      return { digest, size: hasher.size };
    } catch (err) {
      await this.cancel(target.toString());
      throw err;
    }
  }

  async linkBlob(repository: string, digest: string, opts: IoOptions = {}): Promise<boolean> {
    // Every blob the import saw is in staging; a mount without `from` (anywhere on the node) is the fallback.
    for (const from of [STAGING_REPOSITORY, undefined]) {
      const r = await this.mount(repository, digest, opts, from);
      if (r.present) return true;
      await this.cancel(r.location, opts);
    }
    return false;
  }

  async resolveTag(): Promise<string | undefined> {
    // A tag lookup on a node asks its seed first; the manifest PUT is idempotent, so it is simply sent.
    // (So a tag that moves back to a manifest the node already has is reported as unchanged.)
    return undefined;
  }

  async hasManifest(repository: string, digest: string, opts: IoOptions = {}): Promise<boolean> {
    const answer = await this.http.send({ method: 'HEAD', path: `/v2/${repository}/manifests/${digest}`, repository, signal: opts.signal });
    return answer.status === 200;
  }

  async putManifest(repository: string, reference: string, bytes: Buffer, mediaType: string, opts: IoOptions = {}): Promise<void> {
    const answer = await this.http.send({
      method: 'PUT',
      path: `/v2/${repository}/manifests/${reference}`,
      headers: { 'content-type': mediaType },
      body: bytes,
      repository,
      push: true,
      signal: opts.signal,
    });
    if (answer.status !== 201) this.fail(`manifest ${repository}:${reference}`, answer);
  }

  async pin(repository: string, digest: string, reason: string, opts: IoOptions = {}): Promise<boolean> {
    // A registry that is not a Shoal node has no pins: the import says so.
    this.pinsAvailable ??= await this.pins.available(opts);
    if (!this.pinsAvailable) return false;
    await this.pins.pin(repository, { digest }, reason, opts);
    return true;
  }

  async releaseStaging(digests: string[], opts: IoOptions = {}): Promise<void> {
    for (const digest of digests) {
      if (this.deleteRefused) return;
      const answer = await this.http.send({ method: 'DELETE', path: `/v2/${STAGING_REPOSITORY}/blobs/${digest}`, repository: STAGING_REPOSITORY, push: true, signal: opts.signal });
      if (answer.status === 405) this.deleteRefused = true;
    }
  }

  async close(): Promise<void> {
    for (const location of this.sessions.values()) await this.cancel(location);
    this.sessions.clear();
    await this.http.close();
  }
}

/** Keeps nothing: every blob is read and hashed (`shoal verify`). */
export class VerifyTarget implements BundleTarget {
  readonly description = 'verification';
  readonly keepsContent = false;
  readonly cheapLookups = true;

  async hasBlob(): Promise<boolean> {
    return false;
  }

  async writeBlob(source: AsyncIterable<Uint8Array> | Iterable<Uint8Array>, expect: BlobExpectation, opts: IoOptions = {}): Promise<BlobInfo> {
    const hasher = new DigestHasher(expect.digest ? Digest.parse(expect.digest).algorithm : 'sha256');
    for await (const chunk of source) {
      if (opts.signal?.aborted) throw new UnavailableError('verification was interrupted');
      hasher.update(chunk);
    }
    const actual = hasher.digest().toString();
    if (hasher.size !== expect.size) throw new InvalidError('SIZE_INVALID', `content is ${hasher.size} bytes, expected ${expect.size}`);
    if (expect.digest && actual !== expect.digest) throw new DigestMismatchError(expect.digest, actual);
    return { digest: actual, size: hasher.size };
  }

  async linkBlob(): Promise<boolean> {
    return true;
  }
  async resolveTag(): Promise<string | undefined> {
    return undefined;
  }
  async hasManifest(): Promise<boolean> {
    return false;
  }
  async putManifest(): Promise<void> {}
  async pin(): Promise<boolean> {
    return true;
  }
  async releaseStaging(): Promise<void> {}
  async close(): Promise<void> {}
}

