import { parseManifest } from '../oci/index.ts';
import type { ContentStore, IoOptions } from '../store/index.ts';

/** A pin that holds a digest: the pinned repository, and what the descriptor naming the digest says. */
export interface PinnedUse {
  repository: string;
  /** The digest's size from the descriptor that names it (undefined for a pinned manifest itself). */
  size?: number;
  /** True when the digest is a manifest (the pinned one or a child of an index). */
  manifest: boolean;
}

/** The pins whose manifests reach `digest` (child manifests of an index, configs, layers). */
export async function pinsReaching(store: ContentStore, digest: string, opts: IoOptions = {}): Promise<PinnedUse[]> {
  const out: PinnedUse[] = [];
  for (const pin of await store.listPins(opts)) {
    if (pin.digest === digest) {
      out.push({ repository: pin.repository, manifest: true });
      continue;
    }
    const seen = new Set<string>();
    const queue = [pin.digest];
    let found: PinnedUse | undefined;
    while (queue.length > 0 && !found) {
      const d = queue.pop()!;
      if (seen.has(d)) continue;
      seen.add(d);
      const info = await store.statContent(d, opts);
      if (!info || info.size > 4 * 1024 * 1024) continue;
      let parsed;
      try {
        parsed = parseManifest(Buffer.concat((await (await store.readContent(d, undefined, opts)).toArray()) as Buffer[]), undefined);
      } catch {
        continue;
      }
      for (const child of parsed.manifests) {
        if (child.digest === digest) found = { repository: pin.repository, size: child.size, manifest: true };
        queue.push(child.digest);
      }
      const blob = parsed.blobs.find((b) => b.digest === digest);
      if (blob) found = { repository: pin.repository, size: blob.size, manifest: false };
    }
    if (found) out.push(found);
  }
  return out;
}
