/**
 * Warming images on a node before they are needed (`shoal prefetch`, the `warmImages` setting): every manifest
 * (each platform of an index) and every blob of an image go through the same pull path a client's pull does, so
 * nodes prefetching at once coordinate as in a rollout (the rendezvous owner of each layer pulls it from the
 * seed once, the others take it from that owner), and what is already here costs nothing.
 */
import { text } from 'node:stream/consumers';
import { InvalidError, parseManifest, parseReference, type Descriptor, type ParsedManifest } from '../oci/index.ts';
import { MAX_PREFETCH_REFS } from '../p2p/types.ts';
import type { ContentStore, IoOptions } from '../store/index.ts';
import type { PullThrough, RepositoryTarget } from './pull-through.ts';

/** One step of a prefetch, for progress output. */
export type PrefetchEvent =
  | { type: 'image'; reference: string; repository: string; digest: string; blobs: number; bytes: number }
  | { type: 'blob'; reference: string; digest: string; size: number; source: 'local' | 'peer' | 'seed' | 'peer+seed'; done: number; total: number }
  | { type: 'failed'; reference: string; error: string };

export interface PrefetchOutcome {
  reference: string;
  ok: boolean;
  repository?: string;
  digest?: string;
  blobs?: number;
  bytes?: number;
  /** Bytes this prefetch brought in (peers or seed); 0 when the image was already whole here. */
  fetchedBytes?: number;
  pinned?: boolean;
  error?: string;
}

export interface PrefetchOptions extends IoOptions {
  pin?: boolean;
  /** Why pins are made (shown by `shoal pins`). */
  pinReason?: string;
  /** Blobs fetched at once (default 3). */
  parallel?: number;
  onEvent?: (event: PrefetchEvent) => void;
}

/** Checks references before any work starts: InvalidError (400) for the first that is not one. */
export function checkPrefetchReferences(refs: unknown): string[] {
  if (!Array.isArray(refs) || refs.length === 0) throw new InvalidError('NAME_INVALID', 'name at least one image to prefetch: {"refs":["registry.local:5000/team/app:1.4"]}');
  if (refs.length > MAX_PREFETCH_REFS) throw new InvalidError('NAME_INVALID', `at most ${MAX_PREFETCH_REFS} images per prefetch`);
  return refs.map((r) => {
    if (typeof r !== 'string') throw new InvalidError('NAME_INVALID', 'image references are strings');
    try {
      parseReference(r);
    } catch (err) {
      throw new InvalidError('NAME_INVALID', `${JSON.stringify(r.slice(0, 200))} is not an image reference: ${(err as Error).message}`);
    }
    return r;
  });
}

async function manifestBytes(store: ContentStore, digest: string, mediaType: string, opts: IoOptions): Promise<ParsedManifest> {
  const stream = await store.readContent(digest, undefined, { signal: opts.signal, touch: false });
  return parseManifest(Buffer.from(await text(stream), 'utf8'), mediaType);
}

/** Pulls one image (every platform of an index) into the store; throws what the pull path throws. */
async function prefetchOne(pull: PullThrough, store: ContentStore, text: string, opts: PrefetchOptions): Promise<PrefetchOutcome> {
  const ref = parseReference(text);
  const target: RepositoryTarget = pull.targetFor(ref.registry, ref.repository);
  const root = await pull.manifest(target, ref.digest ? { kind: 'digest', digest: ref.digest } : { kind: 'tag', tag: ref.tag ?? 'latest' }, opts);
  const parsed = await manifestBytes(store, root.digest, root.mediaType, opts);
  const blobs = new Map<string, Descriptor>();
  const images = parsed.kind === 'index' ? [] : [parsed];
  for (const child of parsed.manifests) {
    const m = await pull.manifest(target, { kind: 'digest', digest: child.digest }, opts);
    const childParsed = await manifestBytes(store, m.digest, m.mediaType, opts);
    if (childParsed.kind === 'manifest') images.push(childParsed);
  }
  for (const image of images) for (const b of image.blobs) if (!b.urls?.length) blobs.set(b.digest, b);
  const list = [...blobs.values()];
  const bytes = list.reduce((n, b) => n + b.size, 0);
  opts.onEvent?.({ type: 'image', reference: text, repository: target.repository, digest: root.digest, blobs: list.length, bytes });
  let done = 0;
  let fetchedBytes = 0;
  const queue = [...list];
  const worker = async (): Promise<void> => {
    for (let b = queue.shift(); b; b = queue.shift()) {
      const info = await pull.blob(target, b.digest, { signal: opts.signal, size: b.size });
      let source: 'local' | 'peer' | 'seed' | 'peer+seed' = 'local';
      if (info.source === 'fetch') {
        // Waits until the blob is verified and committed; no byte of it is read back.
        await info.stored!({ signal: opts.signal });
        source = info.origin?.() ?? 'seed';
        fetchedBytes += b.size;
      }
      done++;
      opts.onEvent?.({ type: 'blob', reference: text, digest: b.digest, size: b.size, source, done, total: list.length });
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, Math.min(opts.parallel ?? 3, list.length)) }, worker));
  if (opts.pin) await store.pinManifest(target.repository, root.digest, opts.pinReason ?? 'prefetch', opts);
  return { reference: text, ok: true, repository: target.repository, digest: root.digest, blobs: list.length, bytes, fetchedBytes, pinned: opts.pin === true };
}

/** Prefetches each reference in turn; a failure is reported for its image and the others go on. */
export async function prefetchImages(pull: PullThrough, store: ContentStore, refs: string[], opts: PrefetchOptions = {}): Promise<PrefetchOutcome[]> {
  const out: PrefetchOutcome[] = [];
  for (const text of refs) {
    try {
      out.push(await prefetchOne(pull, store, text, opts));
    } catch (err) {
      if (opts.signal?.aborted) throw err;
      const error = (err as Error).message;
      opts.onEvent?.({ type: 'failed', reference: text, error });
      out.push({ reference: text, ok: false, error });
    }
  }
  return out;
}
