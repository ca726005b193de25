import { parseManifest } from '../oci/index.ts';
import type { ContentStore, IoOptions, ManifestEntry } from '../store/index.ts';

/** What a manifest names: child manifests (index), config and layers (image), and its subject. */
export interface ManifestLinks {
  children: string[];
  blobs: string[];
}

/**
 * Reads and parses stored manifests once per walk, and follows them: from a set of root manifests to everything
 * they reach (child manifests of an index, every platform, configs, layers) and to their referrers (signatures,
 * SBOMs) found in the same repository, recursively. Content that is missing is skipped, not an error.
 */
export class ReachabilityWalk {
  private readonly links = new Map<string, ManifestLinks | null>();
  private readonly referrers = new Map<string, string[]>();
  /** Digests a closure met as manifests (roots, children of indexes, referrers), as opposed to blobs. */
  readonly manifestDigests = new Set<string>();

  constructor(
    private readonly store: ContentStore,
    manifests: ManifestEntry[],
  ) {
    // Referrers by subject, across repositories: a signature pushed next to its image keeps with it.
    for (const m of manifests) {
      if (!m.subject) continue;
      const list = this.referrers.get(m.subject) ?? [];
      list.push(m.digest);
      this.referrers.set(m.subject, list);
    }
  }

  async linksOf(digest: string, opts: IoOptions): Promise<ManifestLinks | null> {
    const cached = this.links.get(digest);
    if (cached !== undefined) return cached;
    let result: ManifestLinks | null = null;
    const info = await this.store.statContent(digest, opts);
    if (info && info.size <= 4 * 1024 * 1024) {
      try {
        const stream = await this.store.readContent(digest, undefined, opts);
        const bytes = Buffer.concat((await stream.toArray()) as Buffer[]);
        const parsed = parseManifest(bytes, undefined);
        // Foreign layers (with urls) live elsewhere by design: never stored here, never missing.
        result = { children: parsed.manifests.map((d) => d.digest), blobs: parsed.blobs.filter((d) => !(d.urls && d.urls.length > 0)).map((d) => d.digest) };
      } catch {
        result = null;
      }
    }
    this.links.set(digest, result);
    return result;
  }

  /** Every digest reachable from `roots` (the roots included). */
  async closure(roots: Iterable<string>, opts: IoOptions = {}): Promise<Set<string>> {
    const seen = new Set<string>();
    const queue = [...roots];
    while (queue.length > 0) {
      const digest = queue.pop()!;
      if (seen.has(digest)) continue;
      seen.add(digest);
      this.manifestDigests.add(digest);
      const links = await this.linksOf(digest, opts);
      if (links) {
        for (const b of links.blobs) seen.add(b);
        queue.push(...links.children);
      }
      queue.push(...(this.referrers.get(digest) ?? []));
    }
    return seen;
  }
}

/** Every digest that pins hold: each pinned manifest and what it reaches. */
export async function pinnedDigests(store: ContentStore, opts: IoOptions = {}): Promise<Set<string>> {
  const pins = await store.listPins(opts);
  if (pins.length === 0) return new Set();
  const walk = new ReachabilityWalk(store, await store.listManifests(opts));
  return walk.closure(
    pins.map((p) => p.digest),
    opts,
  );
}
