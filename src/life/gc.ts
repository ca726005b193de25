import { AbortedError } from '../oci/index.ts';
import { STAGING_REPOSITORY, type ContentStore, type IoOptions } from '../store/index.ts';
import { ReachabilityWalk } from './reachability.ts';
import { expiredTags, type RetentionRule } from './retention.ts';

export interface GcOptions extends IoOptions {
  /** Unreferenced content younger than this stays (a push in progress has not put its manifest yet). */
  graceMs: number;
  /** Upload sessions idle for longer than this are abandoned. */
  uploadTimeoutMs: number;
  retention?: RetentionRule[];
  /** Report what would go, change nothing. */
  dryRun?: boolean;
  now?: number;
}

export type GcItem =
  | { kind: 'tag'; repository: string; tag: string; digest: string; reason: string }
  | { kind: 'manifest'; repository: string; digest: string; size: number; reason: string }
  | { kind: 'blob'; repository: string; digest: string; size: number; reason: string }
  | { kind: 'upload'; repository: string; id: string; size: number; reason: string };

export interface GcReport {
  dryRun: boolean;
  started: string;
  ms: number;
  tags: number;
  manifests: number;
  blobs: number;
  uploads: number;
  /** Bytes of content whose last link goes, plus upload session bytes. */
  bytesFreed: number;
  items: GcItem[];
}

function hours(ms: number): string {
  return ms >= 3_600_000 ? `${+(ms / 3_600_000).toFixed(1)} h` : `${Math.round(ms / 60_000)} min`;
}

/**
 * Online mark and sweep. Marks from tags (after retention), pins and the referrers of what is marked; sweeps
 * manifests and blob links that nothing marks and that are older than the grace period, staged import blobs, and
 * abandoned upload sessions. Pushes and pulls go on meanwhile: every sweep step re-checks under the digest's lock
 * and skips whatever a write referred to since the mark began (the store's sweep guard).
 */
export async function collectGarbage(store: ContentStore, opts: GcOptions): Promise<GcReport> {
  const startedAt = Date.now();
  const now = opts.now ?? startedAt;
  const cutoff = now - opts.graceMs;
  const dryRun = opts.dryRun === true;
  const signal = opts.signal;
  const guard = store.openSweepGuard();
  const items: GcItem[] = [];
  let bytesFreed = 0;
  try {
    const manifests = await store.listManifests({ signal });
    const walk = new ReachabilityWalk(store, manifests);
    const pins = await store.listPins({ signal });
    const pinned = await walk.closure(
      pins.map((p) => p.digest),
      { signal },
    );
    // Retention first: the tags it removes no longer mark anything.
    let tags = await store.listAllTags({ signal });
    const expired = expiredTags(opts.retention ?? [], tags, pinned, now);
    const gone = new Set(expired.map((t) => `${t.repository}\u0000${t.tag}`));
    for (const t of expired) {
      if (signal?.aborted) throw new AbortedError();
      if (!dryRun) {
        // Only if it still points where it did: a tag moved meanwhile is a new decision.
        if ((await store.resolveTag(t.repository, t.tag, { signal })) !== t.digest) continue;
        await store.deleteTag(t.repository, t.tag, { signal }).catch(() => undefined);
      }
      items.push({ kind: 'tag', repository: t.repository, tag: t.tag, digest: t.digest, reason: t.reason });
    }
    tags = tags.filter((t) => !gone.has(`${t.repository}\u0000${t.tag}`));

    const cachedRoots = manifests.filter((m) => m.cached).map((m) => m.digest);
    const live = await walk.closure([...tags.map((t) => t.digest), ...pinned, ...cachedRoots], { signal });
    const links = await store.listLinks({ signal });
    const sizes = new Map((await store.listEntries({ signal })).map((e) => [e.digest, e.size]));
    const linkCount = new Map<string, number>();
    for (const l of links) linkCount.set(l.digest, (linkCount.get(l.digest) ?? 0) + 1);
    const removedLinks = new Map<string, number>();
    const noteRemoved = (digest: string): void => {
      const n = (removedLinks.get(digest) ?? 0) + 1;
      removedLinks.set(digest, n);
      if (n === linkCount.get(digest)) bytesFreed += sizes.get(digest) ?? 0;
    };

    const manifestKeys = new Set(manifests.map((m) => `${m.repository}\u0000${m.digest}`));
    for (const m of manifests) {
      if (signal?.aborted) throw new AbortedError();
      // Manifests the pull path fetched are a cache: pulled by digest, they are the image a node must still serve
      // when the seed is gone. Eviction bounds their layers; collection leaves them.
      if (live.has(m.digest) || m.cached || m.created > cutoff) continue;
      if (!dryRun && !(await store.sweepManifest(m.repository, m.digest, guard, { signal, olderThan: cutoff }))) continue;
      items.push({ kind: 'manifest', repository: m.repository, digest: m.digest, size: m.size, reason: `untagged and referenced by nothing for more than ${hours(opts.graceMs)}` });
      noteRemoved(m.digest);
    }
    for (const l of links) {
      if (signal?.aborted) throw new AbortedError();
      // An import may run for hours: what it staged waits as long as an upload session would.
      const linkCutoff = l.repository === STAGING_REPOSITORY ? Math.min(cutoff, now - opts.uploadTimeoutMs) : cutoff;
      if (live.has(l.digest) || manifestKeys.has(`${l.repository}\u0000${l.digest}`) || l.created > linkCutoff) continue;
      if (!dryRun && !(await store.sweepLink(l.repository, l.digest, guard, { signal, olderThan: linkCutoff }))) continue;
      const reason =
        l.repository === STAGING_REPOSITORY
          ? 'staged by an import that did not finish (or whose images are gone)'
          : `referenced by no manifest for more than ${hours(opts.graceMs)}`;
      items.push({ kind: 'blob', repository: l.repository, digest: l.digest, size: l.size, reason });
      noteRemoved(l.digest);
    }

    const uploadCutoff = now - opts.uploadTimeoutMs;
    const sessions = dryRun ? (await store.listUploads({ signal })).filter((s) => s.updated <= uploadCutoff) : await store.expireUploads(uploadCutoff, { signal });
    for (const s of sessions) {
      items.push({ kind: 'upload', repository: s.repository, id: s.id, size: s.offset, reason: `upload session idle for more than ${hours(opts.uploadTimeoutMs)}` });
      bytesFreed += s.offset;
    }
  } finally {
    guard.close();
  }
  const count = (k: GcItem['kind']): number => items.filter((i) => i.kind === k).length;
  return {
    dryRun,
    started: new Date(startedAt).toISOString(),
    ms: Date.now() - startedAt,
    tags: count('tag'),
    manifests: count('manifest'),
    blobs: count('blob'),
    uploads: count('upload'),
    bytesFreed,
    items,
  };
}
