import { statfs } from 'node:fs/promises';
import { StorageFullError } from '../oci/index.ts';
import { formatBytes } from '../limits/size.ts';

/** The filesystem that holds a path: its size and the bytes a writer may still use. */
export interface DiskSpace {
  total: number;
  free: number;
}

export async function diskSpace(path: string): Promise<DiskSpace> {
  const s = await statfs(path);
  return { total: s.blocks * s.bsize, free: s.bavail * s.bsize };
}

/**
 * Fails with StorageFullError when the filesystem of `path` has fewer than `bytes` free, so that a transfer
 * that cannot fit is refused before it starts (and before a client got a response it would then see cut).
 * A write can still run out of space later, when others write at the same time: that fails on its own ENOSPC.
 */
export async function ensureRoom(path: string, bytes: number, what: string): Promise<void> {
  // A filesystem that cannot say (statfs failed) gets the benefit of the doubt: the write itself will tell.
  const space = await diskSpace(path).catch(() => undefined);
  if (!space || space.free >= bytes) return;
  const { free } = space;
  throw new StorageFullError(
    `the node's disk is full (${what} needs ${formatBytes(bytes)}, the data filesystem has ${formatBytes(free)} free); free space or lower the quota; nothing was stored`,
    { cause: 'ENOSPC', needed: bytes, free },
  );
}
