/**
 * `shoal inventory`: what a site already has, as a small JSON file of blob digests, so that the connected
 * side can export only what is missing (`shoal export --have FILE`). Lists everything a node holds (running,
 * through its API; or stopped, through its store): every image, tagged or not (an image pulled by digest has
 * no tag), with its children and referrers, and every stored blob. A registry that is not a Shoal node lists
 * only its tagged images and the configs and layers they name.
 */
import { rename, writeFile } from 'node:fs/promises';
import { Digest, MediaType, isIndexType, parseDescriptor, parseManifest, type Descriptor } from '../oci/index.ts';
import type { ContentStore, IoOptions } from '../store/index.ts';
import { MANIFEST_ACCEPT } from '../upstream/index.ts';
import { INVENTORY_MEDIA_TYPE, type Inventory, type InventoryBlob } from './format.ts';
import { RegistryHttp, errorMessageOf, type RegistryHttpOptions } from './registry-http.ts';

export interface InventorySource {
  readonly description: string;
  listRepositories(opts?: IoOptions): Promise<string[]>;
  listTags(repository: string, opts?: IoOptions): Promise<string[]>;
  /** A manifest by tag or digest, or undefined when it is not there. */
  getManifest(repository: string, reference: string, opts?: IoOptions): Promise<{ digest: string; mediaType: string; bytes: Buffer } | undefined>;
  listReferrers(repository: string, digest: string, opts?: IoOptions): Promise<Descriptor[]>;
  /** Everything held, tagged or not, when the source can tell (a Shoal node); undefined otherwise. */
  listHeld?(opts?: IoOptions): Promise<HeldContent | undefined>;
  close(): Promise<void>;
}

/** Every manifest (in its repository) and every stored blob (manifest bytes included) of a node. */
export interface HeldContent {
  manifests: Array<{ repository: string; digest: string; mediaType: string }>;
  blobs: Array<{ digest: string; size: number }>;
}

/** The store of a stopped node. */
export class StoreInventorySource implements InventorySource {
  readonly description: string;
  private readonly store: ContentStore;
  constructor(store: ContentStore, dataDir: string) {
    this.store = store;
    this.description = `store ${dataDir}`;
  }
  listRepositories(opts: IoOptions = {}): Promise<string[]> {
    return this.store.listRepositories(opts);
  }
  listTags(repository: string, opts: IoOptions = {}): Promise<string[]> {
    return this.store.listTags(repository, opts);
  }
  async getManifest(repository: string, reference: string, opts: IoOptions = {}): Promise<{ digest: string; mediaType: string; bytes: Buffer } | undefined> {
    const digest = reference.includes(':') ? reference : await this.store.resolveTag(repository, reference, opts);
    if (!digest) return undefined;
    const record = await this.store.getManifest(repository, digest, opts);
    if (!record || !(await this.store.statContent(digest, opts))) return undefined;
    const chunks: Buffer[] = [];
    for await (const c of await this.store.readContent(digest, undefined, opts)) chunks.push(c as Buffer);
    return { digest, mediaType: record.mediaType, bytes: Buffer.concat(chunks) };
  }
  async listReferrers(repository: string, digest: string, opts: IoOptions = {}): Promise<Descriptor[]> {
    return (await this.store.listReferrers(repository, digest, opts)).map((r) => ({ ...r }));
  }
  async listHeld(opts: IoOptions = {}): Promise<HeldContent> {
    const [manifests, blobs] = await Promise.all([this.store.listManifests(opts), this.store.listContent(opts)]);
    return { manifests: manifests.map((m) => ({ repository: m.repository, digest: m.digest, mediaType: m.mediaType })), blobs };
  }
  async close(): Promise<void> {
    await this.store.close();
  }
}

/** A running node (or any registry with the catalog and referrers APIs). */
export class RegistryInventorySource implements InventorySource {
  readonly description: string;
  private readonly http: RegistryHttp;
  constructor(opts: RegistryHttpOptions) {
    this.http = new RegistryHttp(opts);
    this.description = `node ${this.http.url}`;
  }

  private async paged(path: string, key: 'repositories' | 'tags', opts: IoOptions): Promise<string[]> {
    const out: string[] = [];
    let next: string | undefined = path;
    while (next) {
      const answer = await this.http.send({ method: 'GET', path: next, signal: opts.signal });
      if (answer.status === 404) return out;
      if (answer.status !== 200) throw new Error(`${this.description} answered GET ${next} with HTTP ${answer.status}: ${errorMessageOf(answer.body)}`);
      const body = JSON.parse(answer.body.toString('utf8')) as Record<string, unknown>;
      const items = body[key];
      if (Array.isArray(items)) out.push(...items.filter((x): x is string => typeof x === 'string'));
      const link = /<([^>]+)>\s*;\s*rel="?next"?/.exec(answer.headers.link ?? '');
      next = link ? new URL(link[1]!, this.http.url).pathname + new URL(link[1]!, this.http.url).search : undefined;
    }
    return out;
  }

  listRepositories(opts: IoOptions = {}): Promise<string[]> {
    return this.paged('/v2/_catalog?n=1000', 'repositories', opts);
  }
  listTags(repository: string, opts: IoOptions = {}): Promise<string[]> {
    return this.paged(`/v2/${repository}/tags/list?n=1000`, 'tags', opts);
  }
  async getManifest(repository: string, reference: string, opts: IoOptions = {}): Promise<{ digest: string; mediaType: string; bytes: Buffer } | undefined> {
    const answer = await this.http.send({ method: 'GET', path: `/v2/${repository}/manifests/${reference}`, headers: { accept: MANIFEST_ACCEPT }, signal: opts.signal });
    if (answer.status === 404) return undefined;
    if (answer.status !== 200) throw new Error(`${this.description} answered GET manifest ${repository}:${reference} with HTTP ${answer.status}: ${errorMessageOf(answer.body)}`);
    const digest = reference.includes(':') ? reference : Digest.of(answer.body).toString();
    Digest.parse(digest).verify(answer.body);
    return { digest, mediaType: (answer.headers['content-type'] ?? '').split(';')[0]!.trim(), bytes: answer.body };
  }
  async listReferrers(repository: string, digest: string, opts: IoOptions = {}): Promise<Descriptor[]> {
    const answer = await this.http.send({ method: 'GET', path: `/v2/${repository}/referrers/${digest}`, headers: { accept: MediaType.OciIndex }, signal: opts.signal });
    if (answer.status !== 200) return [];
    const json = JSON.parse(answer.body.toString('utf8')) as { manifests?: unknown[] };
    return (json.manifests ?? []).map((m, i) => parseDescriptor(m, `referrers[${i}]`));
  }
  /** A Shoal node's `GET /shoal/content`; undefined from a registry without it. */
  async listHeld(opts: IoOptions = {}): Promise<HeldContent | undefined> {
    const answer = await this.http.send({ method: 'GET', path: '/shoal/content', signal: opts.signal });
    if (answer.status !== 200) return undefined;
    let body: { manifests?: unknown; blobs?: unknown };
    try {
      body = JSON.parse(answer.body.toString('utf8')) as { manifests?: unknown; blobs?: unknown };
    } catch {
      return undefined;
    }
    if (!Array.isArray(body.manifests) || !Array.isArray(body.blobs)) return undefined;
    const isDigest = (d: unknown): d is string => typeof d === 'string' && Digest.isValid(d);
    return {
      manifests: body.manifests.filter(
        (m): m is HeldContent['manifests'][number] => typeof m?.repository === 'string' && isDigest(m?.digest) && typeof m?.mediaType === 'string',
      ),
      blobs: body.blobs.filter((b): b is HeldContent['blobs'][number] => isDigest(b?.digest) && Number.isSafeInteger(b?.size) && b.size >= 0),
    };
  }
  async close(): Promise<void> {
    await this.http.close();
  }
}

/**
 * What `source` holds: every image (by tag, and untagged ones by digest) with its children and referrers, and
 * every stored config and layer blob. From a source that cannot list what it holds, the tagged images and the
 * blobs they name.
 */
export async function takeInventory(source: InventorySource, opts: IoOptions & { now?: () => Date } = {}): Promise<Inventory> {
  const blobs = new Map<string, number>();
  const images: Record<string, string> = {};
  const held = await source.listHeld?.(opts);
  // Indexes first, so that the platform manifests of an untagged index count as its children, not as images.
  const untagged = new Map<string, string[]>();
  for (const m of [...(held?.manifests ?? [])].sort((a, b) => Number(isIndexType(b.mediaType)) - Number(isIndexType(a.mediaType)) || (a.digest < b.digest ? -1 : 1))) {
    untagged.set(m.repository, [...(untagged.get(m.repository) ?? []), m.digest]);
  }
  const repositories = new Set([...(await source.listRepositories(opts)), ...untagged.keys()]);
  for (const repository of [...repositories].sort()) {
    const seen = new Set<string>();
    const walk = async (reference: string, depth: number): Promise<string | undefined> => {
      const m = await source.getManifest(repository, reference, opts);
      if (!m || seen.has(m.digest)) return m?.digest;
      seen.add(m.digest);
      let parsed;
      try {
        parsed = parseManifest(m.bytes, m.mediaType || undefined);
      } catch {
        return m.digest;
      }
      for (const b of parsed.blobs) if (!b.urls?.length) blobs.set(b.digest, b.size);
      for (const child of parsed.manifests) await walk(child.digest, depth);
      if (depth < 3) for (const r of await source.listReferrers(repository, m.digest, opts)) await walk(r.digest, depth + 1);
      return m.digest;
    };
    for (const tag of (await source.listTags(repository, opts)).sort()) {
      const digest = await walk(tag, 0);
      if (digest) images[`${repository}:${tag}`] = digest;
    }
    for (const digest of untagged.get(repository) ?? []) {
      if (seen.has(digest)) continue;
      if (await walk(digest, 0)) images[`${repository}@${digest}`] = digest;
    }
  }
  if (held) {
    // What the node holds is the truth: a layer an image names may have been evicted, an image pulled by
    // digest or a blob pushed alone are held all the same. Manifest bytes are not blobs of the inventory.
    const manifestDigests = new Set(held.manifests.map((m) => m.digest));
    blobs.clear();
    for (const b of held.blobs) if (!manifestDigests.has(b.digest)) blobs.set(b.digest, b.size);
  }
  const list: InventoryBlob[] = [...blobs].map(([digest, size]) => ({ digest, size })).sort((a, b) => (a.digest < b.digest ? -1 : 1));
  return {
    schemaVersion: 1,
    mediaType: INVENTORY_MEDIA_TYPE,
    created: (opts.now?.() ?? new Date()).toISOString(),
    source: source.description,
    images,
    blobs: list,
  };
}

/** Writes an inventory file (through a temporary name, so a half-written file never has the real name). */
export async function saveInventory(inventory: Inventory, file: string): Promise<number> {
  const text = JSON.stringify(inventory, null, 1) + '\n';
  await writeFile(`${file}.partial`, text);
  await rename(`${file}.partial`, file);
  return Buffer.byteLength(text);
}
