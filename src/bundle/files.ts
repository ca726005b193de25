/**
 * The bytes of a bundle on disk: one tar file, or parts (`FILE.part001`, ...) listed with their sha256 in
 * `FILE.parts.json`. Reading streams the parts in order and checks each part's sha256 at its end; writing
 * goes to `*.partial` files renamed into place only when everything was written.
 */
import { createHash, type Hash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { open, readFile, rename, rm, stat, writeFile, type FileHandle } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { Writable } from 'node:stream';
import { AbortedError } from '../oci/index.ts';
import type { IoOptions } from '../store/index.ts';
import { BundleRefusedError } from './errors.ts';
import { MAX_PARTS, PARTS_MEDIA_TYPE, formatBytes, parsePartsList, type BundlePart, type PartsList } from './format.ts';

const READ_CHUNK = 1024 * 1024;
const PARTS_SUFFIX = '.parts.json';

export interface BundleInput {
  /** What the operator named, for messages. */
  name: string;
  /** Total bytes of the tar. */
  size: number;
  /** The parts list of a split bundle. */
  parts?: PartsList;
  /** The tar's bytes in order; a part whose sha256 is wrong fails the stream at its end. */
  read(opts?: IoOptions): AsyncIterable<Buffer>;
}

async function exists(path: string): Promise<boolean> {
  return (await stat(path).catch(() => undefined)) !== undefined;
}

/** Where the parts list of `path` is, if `path` names a split bundle (the list, a part, or the bundle name). */
async function findPartsList(path: string): Promise<string | undefined> {
  if (path.endsWith(PARTS_SUFFIX)) return path;
  const part = /^(.*)\.part\d{3}$/.exec(path);
  if (part && (await exists(part[1] + PARTS_SUFFIX))) return part[1] + PARTS_SUFFIX;
  if (!(await exists(path)) && (await exists(path + PARTS_SUFFIX))) return path + PARTS_SUFFIX;
  return undefined;
}

/**
 * Opens a bundle for reading: a tar file, or a split bundle named by its parts list, by one of its parts, or
 * by the name it was exported as. Missing or wrongly sized parts are refused before anything is read.
 */
export async function openBundleInput(path: string): Promise<BundleInput> {
  const listPath = await findPartsList(path);
  if (!listPath) {
    const st = await stat(path).catch((err: NodeJS.ErrnoException) => {
      throw new Error(err.code === 'ENOENT' ? `bundle ${path} does not exist` : `cannot read bundle ${path}: ${err.message}`);
    });
    if (!st.isFile()) throw new Error(`bundle ${path} is not a file`);
    return {
      name: path,
      size: st.size,
      read: (opts = {}) => readFileChunks(path, opts),
    };
  }
  let listBytes: Buffer;
  try {
    listBytes = await readFile(listPath);
  } catch (err) {
    throw new Error(`cannot read the parts list ${listPath}: ${(err as Error).message}`);
  }
  const parts = parsePartsList(listBytes, listPath);
  const dir = dirname(listPath);
  for (const [i, part] of parts.parts.entries()) {
    const st = await stat(join(dir, part.name)).catch(() => undefined);
    if (!st) {
      throw new BundleRefusedError('truncated', `part ${i + 1} of ${parts.parts.length} (${part.name}) is missing next to ${listPath}; copy every part into the same directory`, {
        part: part.name,
      });
    }
    if (st.size !== part.size) {
      throw new BundleRefusedError(
        'truncated',
        `part ${part.name} is ${formatBytes(st.size)} (${st.size} bytes) but ${basename(listPath)} says ${part.size} bytes: the copy is ${st.size < part.size ? 'truncated' : 'damaged'}; copy it again`,
        { part: part.name, size: st.size, expected: part.size },
      );
    }
  }
  return {
    name: listPath,
    size: parts.size,
    parts,
    read: (opts = {}) => readParts(dir, parts.parts, opts),
  };
}

async function* readFileChunks(path: string, opts: IoOptions, hash?: Hash): AsyncGenerator<Buffer> {
  const stream = createReadStream(path, { highWaterMark: READ_CHUNK });
  try {
    for await (const chunk of stream) {
      if (opts.signal?.aborted) throw new AbortedError('reading the bundle was interrupted');
      hash?.update(chunk as Buffer);
      yield chunk as Buffer;
    }
  } finally {
    stream.destroy();
  }
}

async function* readParts(dir: string, parts: BundlePart[], opts: IoOptions): AsyncGenerator<Buffer> {
  for (const part of parts) {
    const hash = createHash('sha256');
    yield* readFileChunks(join(dir, part.name), opts, hash);
    const actual = hash.digest('hex');
    if (actual !== part.sha256) {
      throw new BundleRefusedError('corrupt', `part ${part.name} does not match its sha256 in the parts list (it hashes to ${actual}): the copy is damaged; copy it again`, {
        part: part.name,
        expected: part.sha256,
        actual,
      });
    }
  }
}

/** The name of part `n` (1-based) of `output`. */
export function partName(output: string, n: number): string {
  return `${output}.part${String(n).padStart(3, '0')}`;
}

/** The parts list written next to the parts of `output`. */
export function partsListPath(output: string): string {
  return output + PARTS_SUFFIX;
}

/**
 * A Writable that puts a tar into `output`, or into parts of at most `partSize` bytes. Files are written as
 * `*.partial` and renamed by `commit()`; `discard()` removes them. Each part's sha256 is computed on the way.
 */
export class BundleFileWriter extends Writable {
  readonly output: string;
  private readonly partSize?: number;
  private readonly written: Array<{ tmp: string; final: string; size: number; hash: Hash }> = [];
  private current?: { fh: FileHandle; tmp: string; final: string; size: number; hash: Hash };
  private total = 0;

  constructor(output: string, partSize?: number) {
    super({ highWaterMark: 4 * 1024 * 1024 });
    this.output = output;
    this.partSize = partSize;
  }

  get bytesWritten(): number {
    return this.total;
  }

  private async openNext(): Promise<void> {
    const n = this.written.length + 1;
    if (this.partSize !== undefined && n > MAX_PARTS) {
      throw new Error(`the bundle needs more than ${MAX_PARTS} parts of ${formatBytes(this.partSize)}; choose a larger --split size`);
    }
    const final = this.partSize !== undefined ? partName(this.output, n) : this.output;
    const tmp = `${final}.partial`;
    const fh = await open(tmp, 'w');
    this.current = { fh, tmp, final, size: 0, hash: createHash('sha256') };
  }

  private async closeCurrent(): Promise<void> {
    const c = this.current;
    if (!c) return;
    this.current = undefined;
    await c.fh.sync();
    await c.fh.close();
    this.written.push({ tmp: c.tmp, final: c.final, size: c.size, hash: c.hash });
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, done: (err?: Error | null) => void): void {
    this.writeChunk(chunk).then(() => done(), done);
  }

  /** Network reads arrive in small pieces: what piled up while the disk was busy goes in one write. */
  override _writev(chunks: Array<{ chunk: Buffer }>, done: (err?: Error | null) => void): void {
    this.writeChunk(chunks.length === 1 ? chunks[0]!.chunk : Buffer.concat(chunks.map((c) => c.chunk))).then(() => done(), done);
  }

  private async writeChunk(chunk: Buffer): Promise<void> {
    let offset = 0;
    while (offset < chunk.length) {
      if (!this.current) await this.openNext();
      const c = this.current!;
      const room = this.partSize !== undefined ? this.partSize - c.size : chunk.length - offset;
      const piece = chunk.subarray(offset, offset + Math.min(room, chunk.length - offset));
      let done = 0;
      while (done < piece.length) {
        const { bytesWritten } = await c.fh.write(piece, done, piece.length - done);
        done += bytesWritten;
      }
      c.hash.update(piece);
      c.size += piece.length;
      this.total += piece.length;
      offset += piece.length;
      if (this.partSize !== undefined && c.size >= this.partSize) await this.closeCurrent();
    }
  }

  override _final(done: (err?: Error | null) => void): void {
    (async () => {
      if (!this.current && this.written.length === 0) await this.openNext();
      await this.closeCurrent();
    })().then(() => done(), done);
  }

  override _destroy(err: Error | null, done: (err?: Error | null) => void): void {
    const c = this.current;
    this.current = undefined;
    (c ? c.fh.close() : Promise.resolve()).then(
      () => done(err),
      () => done(err),
    );
  }

  /** Renames the parts into place and, for a split bundle, writes the parts list. Returns the part records. */
  async commit(created: string): Promise<BundlePart[]> {
    const parts: BundlePart[] = [];
    for (const w of this.written) {
      await rename(w.tmp, w.final);
      parts.push({ name: basename(w.final), size: w.size, sha256: w.hash.digest('hex') });
    }
    if (this.partSize !== undefined) {
      // Parts of an earlier, longer export of the same name would only confuse whoever copies the files.
      for (let n = parts.length + 1; n <= MAX_PARTS && (await exists(partName(this.output, n))); n++) await rm(partName(this.output, n), { force: true });
      const list: PartsList = { schemaVersion: 1, mediaType: PARTS_MEDIA_TYPE, created, size: this.total, parts };
      const tmp = `${partsListPath(this.output)}.partial`;
      await writeFile(tmp, JSON.stringify(list, null, 2) + '\n');
      await rename(tmp, partsListPath(this.output));
    }
    return parts;
  }

  /** Removes every file written so far (after a failure). */
  async discard(): Promise<void> {
    const c = this.current;
    this.current = undefined;
    if (c) await c.fh.close().catch(() => undefined);
    for (const w of [...this.written, ...(c ? [c] : [])]) await rm(w.tmp, { force: true });
  }
}
