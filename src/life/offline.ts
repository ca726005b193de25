import type { ContentStore } from '../store/index.ts';
import { collectGarbage, type GcOptions, type GcReport } from './gc.ts';

/** A collection on a stopped node's store (`shoal gc --data DIR`): the same mark and sweep as a running node's. */
export async function collectGarbageInStore(store: ContentStore, opts: GcOptions): Promise<GcReport> {
  try {
    return await collectGarbage(store, opts);
  } finally {
    await store.close();
  }
}
