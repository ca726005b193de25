/**
 * The images a store holds, as an operator reads them (`shoal ls`, `GET /shoal/images`, the node's page): one row
 * per manifest that a tag or a pin names, with its tags, total size, platforms, pin and when it was last read.
 * Child manifests of an index, and untagged, unpinned manifests (referrers, leftovers GC will take) are not rows.
 */
import { text } from 'node:stream/consumers';
import { isIndexType, parseManifest, type ParsedManifest } from '../oci/index.ts';
import type { ContentStore, IoOptions, ManifestEntry } from '../store/index.ts';

export interface ImageSummary {
  repository: string;
  /** Tags pointing at it on this node, sorted. */
  tags: string[];
  digest: string;
  mediaType: string;
  /** Bytes of the manifest, its config and layers (and, for an index, of every child held), each blob once. */
  size: number;
  /** `os/arch[/variant]` of each platform (an index: of its children; a manifest: from its config when held). */
  platforms: string[];
  /** Blobs the image names that this node does not hold (0: complete). */
  missingBlobs: number;
  pinned: boolean;
  pinReason?: string;
  /** When it was last read (pulled, served to a peer), ms since the epoch; its content's newest access time. */
  lastPulled?: number;
  created: number;
}

export interface ListImagesOptions extends IoOptions {
  /** Only repositories starting with this. */
  prefix?: string;
}

/** A config blob larger than this is not read for its platform. */
const MAX_CONFIG_BYTES = 1 << 20;

function platformText(p: { os?: unknown; architecture?: unknown; variant?: unknown }): string | undefined {
  if (typeof p.os !== 'string' || typeof p.architecture !== 'string') return undefined;
  return [p.os, p.architecture, typeof p.variant === 'string' ? p.variant : undefined].filter(Boolean).join('/');
}

interface ImageRow {
  entry: ManifestEntry;
  tags: string[];
  pin?: { reason: string };
}

/** The images a store holds (its tagged or pinned manifests) by `repository@digest`, without reading a manifest. */
async function imageRows(store: ContentStore, opts: ListImagesOptions): Promise<Map<string, ImageRow>> {
  const prefix = opts.prefix ?? '';
  const [manifests, tags, pins] = await Promise.all([store.listManifests(opts), store.listAllTags(opts), store.listPins(opts)]);
  const byKey = new Map<string, ManifestEntry>();
  for (const m of manifests) if (m.repository.startsWith(prefix)) byKey.set(`${m.repository}@${m.digest}`, m);
  const rows = new Map<string, ImageRow>();
  const row = (repository: string, digest: string): ImageRow | undefined => {
    const key = `${repository}@${digest}`;
    let r = rows.get(key);
    if (!r) {
      const entry = byKey.get(key);
      if (!entry) return undefined;
      rows.set(key, (r = { entry, tags: [] }));
    }
    return r;
  };
  for (const t of tags) if (t.repository.startsWith(prefix)) row(t.repository, t.digest)?.tags.push(t.tag);
  for (const p of pins) {
    if (!p.repository.startsWith(prefix)) continue;
    const r = row(p.repository, p.digest);
    if (r) r.pin = { reason: p.reason };
  }
  return rows;
}

/** How many images the store holds (what listImages would list), reading no manifest. */
export async function countImages(store: ContentStore, opts: ListImagesOptions = {}): Promise<number> {
  return (await imageRows(store, opts)).size;
}

/** The store's images, sorted by repository then tag. */
export async function listImages(store: ContentStore, opts: ListImagesOptions = {}): Promise<ImageSummary[]> {
  const [rows, entries] = await Promise.all([imageRows(store, opts), store.listEntries(opts)]);
  const content = new Map(entries.map((e) => [e.digest, e]));
  // Each manifest and config is read once per listing, however many images share it (a platform manifest under two
  // indexes, one image in two repositories).
  const manifestBytes = new Map<string, Promise<Buffer | undefined>>();
  const parsedManifests = new Map<string, ParsedManifest | undefined>();
  const parsed = async (digest: string, mediaType: string): Promise<ParsedManifest | undefined> => {
    const key = `${mediaType} ${digest}`;
    if (parsedManifests.has(key)) return parsedManifests.get(key);
    let bytes = manifestBytes.get(digest);
    if (!bytes) {
      bytes = store
        .readContent(digest, undefined, { signal: opts.signal, touch: false })
        .then(async (stream) => Buffer.from(await text(stream), 'utf8'))
        .catch(() => undefined);
      manifestBytes.set(digest, bytes);
    }
    let result: ParsedManifest | undefined;
    try {
      const b = await bytes;
      result = b ? parseManifest(b, mediaType) : undefined;
    } catch {
      result = undefined;
    }
    parsedManifests.set(key, result);
    return result;
  };
  const configPlatforms = new Map<string, Promise<string | undefined>>();
  const configPlatform = (digest: string): Promise<string | undefined> => {
    let platform = configPlatforms.get(digest);
    if (!platform) {
      platform = (async () => {
        try {
          const config = JSON.parse(await text(await store.readContent(digest, undefined, { signal: opts.signal, touch: false }))) as Record<string, unknown>;
          return platformText(config);
        } catch {
          // an artifact's config need not be JSON of an image
          return undefined;
        }
      })();
      configPlatforms.set(digest, platform);
    }
    return platform;
  };
  const out: ImageSummary[] = [];
  for (const { entry, tags: names, pin } of rows.values()) {
    if (opts.signal?.aborted) throw opts.signal.reason;
    const blobs = new Map<string, number>([[entry.digest, entry.size]]);
    const platforms: string[] = [];
    const missing = new Set<string>();
    const addImage = async (m: ParsedManifest): Promise<void> => {
      for (const b of m.blobs) {
        // Foreign layers (with urls) live elsewhere by design: never missing here.
        if (b.urls && b.urls.length > 0) continue;
        if (content.has(b.digest)) blobs.set(b.digest, b.size);
        else missing.add(b.digest);
      }
    };
    const root = await parsed(entry.digest, entry.mediaType);
    if (root?.kind === 'index' || isIndexType(entry.mediaType)) {
      for (const child of root?.manifests ?? []) {
        const shown = child.platform ? platformText(child.platform) : undefined;
        if (shown && !platforms.includes(shown)) platforms.push(shown);
        if (!content.has(child.digest)) {
          missing.add(child.digest);
          continue;
        }
        blobs.set(child.digest, child.size);
        const m = await parsed(child.digest, child.mediaType);
        if (m) await addImage(m);
      }
    } else if (root) {
      await addImage(root);
      if (root.config && content.has(root.config.digest) && root.config.size <= MAX_CONFIG_BYTES) {
        const shown = await configPlatform(root.config.digest);
        if (shown) platforms.push(shown);
      }
    }
    const accessed = [...blobs.keys()].map((d) => content.get(d)?.accessed ?? 0);
    const lastPulled = Math.max(0, ...accessed);
    out.push({
      repository: entry.repository,
      tags: names.sort(),
      digest: entry.digest,
      mediaType: entry.mediaType,
      size: [...blobs.values()].reduce((n, s) => n + s, 0),
      platforms,
      missingBlobs: missing.size,
      pinned: pin !== undefined,
      ...(pin ? { pinReason: pin.reason } : {}),
      ...(lastPulled > 0 ? { lastPulled } : {}),
      created: entry.created,
    });
  }
  return out.sort((a, b) => (a.repository === b.repository ? (a.tags[0] ?? '~').localeCompare(b.tags[0] ?? '~') : a.repository < b.repository ? -1 : 1));
}
