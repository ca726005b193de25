import { readdir, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { AbortedError, Digest, DigestHasher } from '../oci/index.ts';
import { DiskBlobBytes } from './bytes.ts';
import { keyParts, keys } from './keys.ts';
import { LevelKeyValueStore, type KeyValueStore, type KvOp } from './kv.ts';
import { MIGRATIONS, StoreTooNewError, migrateStore, readStoreFormat, type Migration } from './migrations.ts';
import { SCHEMA_VERSION } from './keys.ts';
import type { IoOptions, ManifestRecord, TagRecord, UploadSession } from './types.ts';

export type FsckProblemKind =
  | 'corrupt-blob'
  | 'blob-size-mismatch'
  | 'record-without-file'
  | 'file-without-record'
  | 'link-without-blob'
  | 'link-without-holder'
  | 'holder-without-link'
  | 'manifest-without-content'
  | 'tag-without-manifest'
  | 'referrer-without-manifest'
  | 'pin-without-manifest'
  | 'stale-record'
  | 'ingest-leftover'
  | 'session-without-file'
  | 'session-file-without-record'
  | 'session-shorter-than-recorded'
  | 'stale-session'
  | 'format-unrecorded'
  | 'format-outdated';

export interface FsckProblem {
  kind: FsckProblemKind;
  /** What it is about: a digest, `repository@digest`, `repository:tag`, a session id or a file. */
  subject: string;
  detail: string;
  /** With --repair: what was done. */
  action?: string;
}

export interface FsckReport {
  dataDir: string;
  blobs: number;
  bytesHashed: number;
  problems: FsckProblem[];
  repaired: boolean;
  /** Problems left after the run (all of them without --repair). */
  remaining: number;
}

export interface FsckOptions extends IoOptions {
  repair?: boolean;
  /** Skip re-hashing blob bytes (records against files and sizes only). */
  fast?: boolean;
  /** Upload sessions idle longer than this are stale (default 24 h). */
  staleSessionMs?: number;
  /** The format this check reads, and the migrations to it (tests only: the defaults are this Shoal's). */
  format?: { target: string; migrations: readonly Migration[] };
  /** Called for each blob hashed: progress for a terminal. */
  onProgress?: (done: number, total: number) => void;
}

/** An error the CLI shows as is: the node is running, or the directory is not a node's store. */
export class FsckRefusedError extends Error {
  override readonly name = 'FsckRefusedError';
}

function checkAbort(signal?: AbortSignal): void {
  if (signal?.aborted) throw new AbortedError();
}

/**
 * Checks a stopped node's store without changing it (or, with `repair`, fixing what it finds): every blob file
 * against its digest and recorded size, records without files and files without records, links, manifests, tags,
 * referrers and pins that point at nothing, leftover ingest files and stale upload sessions. It opens LevelDB
 * itself and runs none of the start-up recovery, so it reports the store as a crash left it.
 */
export async function fsckDataDir(dataDir: string, opts: FsckOptions = {}): Promise<FsckReport> {
  try {
    await stat(join(dataDir, 'db'));
  } catch {
    throw new FsckRefusedError(`${dataDir} holds no Shoal store (no db/ directory); give the node's --data directory`);
  }
  const kv = new LevelKeyValueStore(join(dataDir, 'db'));
  try {
    await kv.open();
  } catch (err) {
    const e = err as { code?: string; cause?: { code?: string; message?: string }; message?: string };
    if (e.code === 'LEVEL_LOCKED' || e.cause?.code === 'LEVEL_LOCKED' || /lock/i.test(`${e.message} ${e.cause?.message ?? ''}`)) {
      throw new FsckRefusedError(`the store in ${dataDir} is in use by a running node; stop the node first (fsck checks a stopped store)`);
    }
    throw err;
  }
  try {
    const format = await checkFormat(dataDir, kv, opts);
    if (format.stop) return format.stop;
    return await check(dataDir, kv, new DiskBlobBytes(dataDir), opts, format.repaired);
  } finally {
    await kv.close();
  }
}

/**
 * The store's format version first: a newer store is refused (its layout is unknown here); an older one is
 * reported, and migrated with `repair` as a node's start would, before the records are read as this format's.
 * Returns the report when the check cannot go on, else what was repaired.
 */
async function checkFormat(dataDir: string, kv: KeyValueStore, opts: FsckOptions): Promise<{ stop?: FsckReport; repaired: FsckProblem[] }> {
  const target = opts.format?.target ?? SCHEMA_VERSION;
  let found: string | undefined;
  try {
    found = await readStoreFormat(kv, dataDir, target);
  } catch (err) {
    if (err instanceof StoreTooNewError) throw new FsckRefusedError(err.message);
    throw err;
  }
  if (found === target) return { repaired: [] };
  const stop = (problem: FsckProblem) => ({ stop: { dataDir, blobs: 0, bytesHashed: 0, problems: [problem], repaired: false, remaining: 1 }, repaired: [] });
  if (found === undefined) {
    const problem: FsckProblem = { kind: 'format-unrecorded', subject: 'meta:schema', detail: `the store records no format version (a node records ${target} when it first opens a store)` };
    if (!opts.repair) return stop(problem);
    await kv.batch([{ type: 'put', key: keys.schema(), value: target }]);
    return { repaired: [{ ...problem, action: `recorded format ${target}` }] };
  }
  const problem: FsckProblem = {
    kind: 'format-outdated',
    subject: 'meta:schema',
    detail: `the store has format version ${found}; this Shoal checks format ${target}, so its records were not checked (--repair migrates it first, as a node's start does)`,
  };
  if (!opts.repair) return stop(problem);
  const migrated = await migrateStore(kv, dataDir, { target, migrations: opts.format?.migrations ?? MIGRATIONS, signal: opts.signal });
  const steps = migrated.ran.map((r) => `${r.from} -> ${r.to} (${r.what})`).join(', ');
  return { repaired: [{ ...problem, detail: `the store had format version ${found}`, action: `migrated: ${steps}` }] };
}

async function check(dataDir: string, kv: KeyValueStore, bytes: DiskBlobBytes, opts: FsckOptions, repairedFirst: FsckProblem[]): Promise<FsckReport> {
  const { signal } = opts;
  const repair = opts.repair === true;
  const problems: FsckProblem[] = [...repairedFirst];
  const ops: KvOp[] = [];
  const filesToRemove: string[] = [];
  const note = (kind: FsckProblemKind, subject: string, detail: string, action: string): void => {
    problems.push({ kind, subject, detail, action: repair ? action : undefined });
  };

  // Blob records against files.
  const files = new Map((await bytes.list()).map((b) => [b.digest, b.size]));
  const blobs = new Map<string, number>();
  for await (const [key, rec] of kv.entries<{ size: number }>(keys.blobPrefix())) blobs.set(key.slice(keys.blobPrefix().length), rec.size);
  const good = new Set<string>();
  let hashed = 0;
  let done = 0;
  for (const [digest, size] of blobs) {
    checkAbort(signal);
    const fileSize = files.get(digest);
    if (fileSize === undefined) {
      note('record-without-file', digest, `the record says ${size} bytes but there is no file`, 'record removed, with what names it');
    } else if (fileSize !== size) {
      note('blob-size-mismatch', digest, `the file has ${fileSize} bytes, the record says ${size}`, 'blob removed, with what names it');
      filesToRemove.push(digest);
    } else if (!opts.fast) {
      const hasher = new DigestHasher(Digest.parse(digest).algorithm);
      for await (const piece of await bytes.read(digest)) {
        checkAbort(signal);
        hasher.update(piece as Uint8Array);
      }
      hashed += hasher.size;
      const actual = hasher.digest().toString();
      if (actual !== digest) {
        note('corrupt-blob', digest, `the bytes hash to ${actual}`, 'blob removed, with what names it (pinned content is fetched again when the node starts)');
        filesToRemove.push(digest);
      } else good.add(digest);
    } else good.add(digest);
    opts.onProgress?.(++done, blobs.size);
  }
  for (const [digest, size] of files) {
    if (blobs.has(digest)) continue;
    note('file-without-record', digest, `a ${size}-byte file that no record names (a write that was never acknowledged, or a removal a crash cut short)`, 'file deleted');
    filesToRemove.push(digest);
  }
  for (const digest of blobs.keys()) if (!good.has(digest)) ops.push({ type: 'del', key: keys.blob(digest) });

  // Links and their reverse index.
  const links = new Set<string>();
  for await (const [key] of kv.entries(keys.linkAll())) {
    const [repository, digest] = keyParts(key) as [string, string];
    links.add(`${repository}\u0000${digest}`);
    if (!good.has(digest)) {
      note('link-without-blob', `${repository}@${digest}`, 'the repository links a blob the store does not hold', 'link removed');
      ops.push({ type: 'del', key }, { type: 'del', key: keys.holder(digest, repository) });
    } else if (!(await kv.get(keys.holder(digest, repository)))) {
      note('link-without-holder', `${repository}@${digest}`, 'the reverse index misses this link', 'reverse index entry written');
      ops.push({ type: 'put', key: keys.holder(digest, repository), value: 1 });
    }
  }
  for await (const [key] of kv.entries('holder:')) {
    const [digest, repository] = keyParts(key) as [string, string];
    if (!links.has(`${repository}\u0000${digest}`)) {
      note('holder-without-link', `${repository}@${digest}`, 'the reverse index names a link that does not exist', 'entry removed');
      ops.push({ type: 'del', key });
    }
  }

  // Manifests, tags, referrers, pins.
  const manifests = new Set<string>();
  for await (const [key, rec] of kv.entries<ManifestRecord>(keys.manifestAll())) {
    const [repository, digest] = keyParts(key) as [string, string];
    if (good.has(digest) && links.has(`${repository}\u0000${digest}`)) {
      manifests.add(`${repository}\u0000${digest}`);
      continue;
    }
    note('manifest-without-content', `${repository}@${digest}`, 'the manifest record names bytes the store does not hold', 'manifest record removed');
    ops.push({ type: 'del', key });
    if (rec.subject) ops.push({ type: 'del', key: keys.referrer(repository, rec.subject, digest) });
  }
  for await (const [key, rec] of kv.entries<TagRecord>(keys.tagAll())) {
    const [repository, tag] = keyParts(key) as [string, string];
    if (manifests.has(`${repository}\u0000${rec.digest}`)) continue;
    note('tag-without-manifest', `${repository}:${tag}`, `the tag points at ${rec.digest}, which is not stored`, 'tag removed');
    ops.push({ type: 'del', key });
  }
  for await (const [key] of kv.entries('referrer:')) {
    const [repository, , digest] = keyParts(key) as [string, string, string];
    if (manifests.has(`${repository}\u0000${digest}`)) continue;
    note('referrer-without-manifest', `${repository}@${digest}`, 'the referrers index names a manifest that is not stored', 'entry removed');
    ops.push({ type: 'del', key });
  }
  for await (const [key] of kv.entries(keys.pinPrefix())) {
    const [repository, digest] = keyParts(key) as [string, string];
    if (manifests.has(`${repository}\u0000${digest}`)) continue;
    note('pin-without-manifest', `${repository}@${digest}`, 'the pinned manifest is not stored', 'pin removed (pin the image again once it is back)');
    ops.push({ type: 'del', key });
  }
  for (const prefix of [keys.atimePrefix(), 'chunks:']) {
    for await (const [key] of kv.entries(prefix)) {
      const digest = key.slice(prefix.length);
      if (good.has(digest)) continue;
      if (blobs.has(digest)) {
        ops.push({ type: 'del', key });
        continue;
      }
      note('stale-record', key, 'a record about a blob the store does not hold', 'record removed');
      ops.push({ type: 'del', key });
    }
  }

  // Ingest leftovers and upload sessions.
  const ingest = await readdir(join(dataDir, 'ingest')).catch(() => [] as string[]);
  for (const name of ingest) note('ingest-leftover', join('ingest', name), 'a write a crash interrupted (never visible)', 'file deleted');
  const staleBefore = Date.now() - (opts.staleSessionMs ?? 24 * 3_600_000);
  const sessionFiles = new Set(await bytes.sessionList());
  const sessionsToRemove: string[] = [];
  for await (const [key, session] of kv.entries<UploadSession>(keys.uploadPrefix())) {
    const size = await bytes.sessionSize(session.id);
    sessionFiles.delete(session.id);
    if (size === undefined) {
      note('session-without-file', session.id, `upload session of ${session.repository} has no file`, 'session removed');
      ops.push({ type: 'del', key });
    } else if (size < session.offset) {
      note('session-shorter-than-recorded', session.id, `the file has ${size} bytes, the session says ${session.offset}`, 'session removed');
      ops.push({ type: 'del', key });
      sessionsToRemove.push(session.id);
    } else if (session.updated < staleBefore) {
      note('stale-session', session.id, `upload session of ${session.repository} idle since ${new Date(session.updated).toISOString()}`, 'session removed');
      ops.push({ type: 'del', key });
      sessionsToRemove.push(session.id);
    }
  }
  for (const id of sessionFiles) {
    note('session-file-without-record', join('uploads', id), 'upload bytes no session names', 'file deleted');
    sessionsToRemove.push(id);
  }

  if (repair && problems.length > 0) {
    // Records first, then files: the same order as every removal in the store.
    await kv.batch(ops);
    for (const digest of filesToRemove) await bytes.remove(digest);
    for (const id of sessionsToRemove) await bytes.sessionRemove(id);
    for (const name of ingest) await rm(join(dataDir, 'ingest', name), { recursive: true, force: true });
  }
  return {
    dataDir,
    blobs: blobs.size,
    bytesHashed: hashed,
    problems,
    repaired: repair,
    remaining: repair ? 0 : problems.length,
  };
}
