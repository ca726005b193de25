/**
 * `shoal inventory`: what a site already has, as a small JSON file of blob digests, so that the connected
 * side can export only what is missing (`shoal export --have FILE`). Walks every tagged image of a node
 * (running, through its API; or stopped, through its store): manifests, their children, their referrers,
 * and the configs and layers they name.
 */
import { rename, writeFile } from 'node:fs/promises';
import { Digest, MediaType, parseDescriptor, parseManifest, type Descriptor } from '../oci/index.ts';
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
  close(): Promise<void>;
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
  async close(): Promise<void> {
    await this.http.close();
  }
}

/** Every config and layer blob of every tagged image (and its referrers) that `source` holds. */
export async function takeInventory(source: InventorySource, opts: IoOptions & { now?: () => Date } = {}): Promise<Inventory> {
  const blobs = new Map<string, number>();
  const images: Record<string, string> = {};
  for (const repository of (await source.listRepositories(opts)).sort()) {
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
