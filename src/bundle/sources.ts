/**
 * Where `shoal export` reads images: any OCI registry (through SeedClient, with the same auth options as a
 * seed), or the store of a stopped node. Both hand out verified bytes only.
 */
import {
  Digest,
  DigestHasher,
  DigestMismatchError,
  MediaType,
  NotFoundError,
  isShoalError,
  formatReference,
  parseDescriptor,
  type Descriptor,
  type Reference,
} from '../oci/index.ts';
import type { ContentStore, IoOptions } from '../store/index.ts';
import { SeedClient, type SeedClientOptions } from '../upstream/index.ts';
import { storeRepository } from './format.ts';
import { RegistryHttp } from './registry-http.ts';

export interface ManifestContent {
  digest: string;
  mediaType: string;
  bytes: Buffer;
}

export interface ResolvedImage {
  /** The repository on this source that holds the image. */
  repository: string;
  digest: string;
}

export interface ImageSource {
  /** `registry http://...` or `store /path`, for messages. */
  readonly description: string;
  /** Finds the image a reference names. NotFoundError when it is not there. */
  resolve(ref: Reference, opts?: IoOptions): Promise<ResolvedImage>;
  /** A manifest or index by digest, verified. */
  getManifest(repository: string, digest: string, opts?: IoOptions): Promise<ManifestContent>;
  /** A blob's bytes; they fail (DigestMismatchError) at their end when they are not the digest's. */
  openBlob(repository: string, digest: string, opts?: IoOptions): Promise<AsyncIterable<Uint8Array>>;
  /** Manifests whose subject is `digest` (signatures, SBOMs). */
  listReferrers(repository: string, digest: string, opts?: IoOptions): Promise<Descriptor[]>;
  /** Things worth telling the operator (e.g. the registry has no referrers API), at most once each. */
  readonly notices: string[];
  close(): Promise<void>;
}

/** Yields `source` and fails at the end unless the bytes hash to `digest` and are `size` long. */
export async function* verifiedBytes(source: AsyncIterable<Uint8Array>, digest: string, size: number | undefined, what: string): AsyncGenerator<Uint8Array> {
  const expected = Digest.parse(digest);
  const hasher = new DigestHasher(expected.algorithm);
  for await (const chunk of source) {
    hasher.update(chunk);
    yield chunk;
  }
  const actual = hasher.digest().toString();
  if (actual !== expected.toString() || (size !== undefined && hasher.size !== size)) {
    throw new DigestMismatchError(expected.toString(), actual, `${what} hashes to ${actual} (${hasher.size} bytes), not to ${digest}; the source is damaged`);
  }
}

function referrerDescriptors(indexBytes: Buffer): Descriptor[] {
  const json = JSON.parse(indexBytes.toString('utf8')) as { manifests?: unknown[] };
  return (json.manifests ?? []).map((m, i) => parseDescriptor(m, `referrers[${i}]`));
}

export interface RegistrySourceOptions extends Pick<SeedClientOptions, 'url' | 'username' | 'password' | 'caFile' | 'insecureSkipVerify'> {}

/** Any OCI registry. The reference's registry host is not contacted: `--from` says where the images are. */
export class RegistryImageSource implements ImageSource {
  readonly description: string;
  readonly notices: string[] = [];
  private readonly seed: SeedClient;
  private readonly http: RegistryHttp;
  /** False once the registry answered the referrers API with 404: then only the tag schema is tried. */
  private referrersApi = true;

  constructor(opts: RegistrySourceOptions) {
    this.seed = new SeedClient({ ...opts, retries: 3 });
    this.http = new RegistryHttp(opts);
    this.description = `registry ${this.seed.url}`;
  }

  /**
   * On a Shoal node, what it pulled through or imported lives under `<registry>/<repository>`; elsewhere the
   * repository is as the reference says. The node's name goes first: asked for the plain name, a node would
   * go to its seeds.
   */
  async resolve(ref: Reference, opts: IoOptions = {}): Promise<ResolvedImage> {
    const repositories = [storeRepository(ref), ref.repository];
    for (const [i, repository] of repositories.entries()) {
      try {
        const digest = ref.digest ?? (await this.seed.resolveTag(repository, ref.tag!, opts)).digest;
        if (ref.digest) await this.seed.getManifest(repository, ref.digest, opts);
        return { repository, digest };
      } catch (err) {
        // Registries with token auth often answer 401/403 for a repository that does not exist.
        const missing = isShoalError(err) && ['MANIFEST_UNKNOWN', 'NAME_UNKNOWN', 'NAME_INVALID', 'UNAUTHORIZED', 'DENIED'].includes(err.code);
        if (!missing || i === repositories.length - 1) throw err;
      }
    }
    throw new NotFoundError('MANIFEST_UNKNOWN', `${formatReference(ref)} is not in ${this.description}`);
  }

  async getManifest(repository: string, digest: string, opts: IoOptions = {}): Promise<ManifestContent> {
    const m = await this.seed.getManifest(repository, digest, opts);
    return { digest: m.digest, mediaType: m.mediaType, bytes: m.bytes };
  }

  async openBlob(repository: string, digest: string, opts: IoOptions = {}): Promise<AsyncIterable<Uint8Array>> {
    return (await this.seed.getBlob(repository, digest, opts)).stream;
  }

  /**
   * The referrers API (`GET /v2/<name>/referrers/<digest>`); registries without it (distribution 2.8) answer
   * 404, and then the tag schema of the OCI spec is used: an index tagged `sha256-<hex>`.
   */
  async listReferrers(repository: string, digest: string, opts: IoOptions = {}): Promise<Descriptor[]> {
    if (this.referrersApi) {
      const answer = await this.http.send({
        method: 'GET',
        path: `/v2/${repository}/referrers/${digest}`,
        headers: { accept: MediaType.OciIndex },
        repository,
        signal: opts.signal,
      });
      if (answer.status === 200) return referrerDescriptors(answer.body);
      if (answer.status !== 404) {
        this.notices.push(`${this.description} answered the referrers API with HTTP ${answer.status}; using the sha256-<hex> tag schema instead`);
      } else {
        this.notices.push(`${this.description} has no referrers API; looking for referrers by the sha256-<hex> tag schema instead`);
      }
      this.referrersApi = false;
    }
    const d = Digest.parse(digest);
    try {
      const index = await this.seed.getManifest(repository, `${d.algorithm}-${d.hex}`, opts);
      return referrerDescriptors(index.bytes);
    } catch (err) {
      if (isShoalError(err) && (err.code === 'MANIFEST_UNKNOWN' || err.code === 'NAME_UNKNOWN')) return [];
      throw err;
    }
  }

  async close(): Promise<void> {
    await Promise.allSettled([this.seed.close(), this.http.close()]);
  }
}

/** The store of a stopped node (`--data DIR`). Images pulled through the node live under `<registry>/<repo>`. */
export class StoreImageSource implements ImageSource {
  readonly description: string;
  readonly notices: string[] = [];
  private readonly store: ContentStore;

  constructor(store: ContentStore, dataDir: string) {
    this.store = store;
    this.description = `store ${dataDir}`;
  }

  async resolve(ref: Reference, opts: IoOptions = {}): Promise<ResolvedImage> {
    for (const repository of [storeRepository(ref), ref.repository]) {
      if (ref.digest) {
        if (await this.store.getManifest(repository, ref.digest, opts)) return { repository, digest: ref.digest };
      } else {
        const digest = await this.store.resolveTag(repository, ref.tag!, opts);
        if (digest) return { repository, digest };
      }
    }
    throw new NotFoundError('MANIFEST_UNKNOWN', `${ref.digest ?? ref.tag} is not in ${this.description} (looked in repositories ${storeRepository(ref)} and ${ref.repository})`);
  }

  async getManifest(repository: string, digest: string, opts: IoOptions = {}): Promise<ManifestContent> {
    const record = await this.store.getManifest(repository, digest, opts);
    if (!record) throw new NotFoundError('MANIFEST_UNKNOWN', `manifest ${digest} is not in repository ${repository} of ${this.description}`);
    const chunks: Buffer[] = [];
    for await (const c of await this.store.readContent(digest, undefined, opts)) chunks.push(c as Buffer);
    const bytes = Buffer.concat(chunks);
    Digest.parse(digest).verify(bytes);
    return { digest, mediaType: record.mediaType, bytes };
  }

  async openBlob(repository: string, digest: string, opts: IoOptions = {}): Promise<AsyncIterable<Uint8Array>> {
    const info = await this.store.statContent(digest, opts);
    if (!info) throw new NotFoundError('BLOB_UNKNOWN', `blob ${digest} of ${repository} is not in ${this.description}`);
    const stream = await this.store.readContent(digest, undefined, opts);
    return verifiedBytes(stream, digest, info.size, `blob ${digest} in ${this.description}`);
  }

  async listReferrers(repository: string, digest: string, opts: IoOptions = {}): Promise<Descriptor[]> {
    return (await this.store.listReferrers(repository, digest, opts)).map((r) => ({ ...r }));
  }

  async close(): Promise<void> {
    await this.store.close();
  }
}
