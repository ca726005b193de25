/**
 * The audit log: one JSON object per line, appended (O_APPEND), never rewritten. When the file would grow past
 * `maxBytes` it is renamed to `FILE.1` (`FILE.1` to `FILE.2`, ...) and a new one is started; `keep` old files
 * stay. Writing never fails a request: a write that fails is reported in the node's log.
 */
import { createReadStream } from 'node:fs';
import { mkdir, open, readdir, rename, rm, stat, type FileHandle } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { createInterface } from 'node:readline';

/** What was done: the actions an entry can record. */
export type AuditAction =
  | 'push' // a manifest written (by tag or digest)
  | 'tag-move' // a push that moved an existing tag to another manifest
  | 'upload' // a blob committed (upload finished, monolithic upload or mount)
  | 'delete' // a manifest, tag or blob deleted
  | 'import' // a manifest written by `shoal import` (through the API, or into a stopped node's store)
  | 'pin'
  | 'unpin'
  | 'gc'
  | 'prefetch' // images warmed on request (the references, on this node or on every node)
  | 'pull' // recorded only when refused
  | 'admin' // other admin calls (status, peers, the pin list), recorded only when refused
  | 'login'; // a failed authentication

export type AuditResult = 'ok' | 'denied' | 'unauthorized' | 'failed';

export interface AuditEntry {
  /** ISO 8601 time. */
  time: string;
  /** User or token name, `anonymous`, or for local commands the system user. */
  user: string;
  /** The client's address, or `local` for a command run on the node's store. */
  from: string;
  action: AuditAction;
  repository?: string;
  /** Tag (or the reference as given). */
  reference?: string;
  digest?: string;
  /** The digest a moved tag pointed at before. */
  previous?: string;
  result: AuditResult;
  /** HTTP status of the answer. */
  status?: number;
  /** Why it was refused or failed, or what it did (GC counts). */
  detail?: string;
  /** The client program (User-Agent). */
  agent?: string;
}

export interface AuditLogOptions {
  file: string;
  /** Rotate when the file would pass this size. */
  maxBytes: number;
  /** Rotated files kept (FILE.1 ... FILE.keep). */
  keep: number;
  onError?: (err: Error) => void;
}

export class AuditLog {
  readonly file: string;
  private readonly maxBytes: number;
  private readonly keep: number;
  private readonly onError: (err: Error) => void;
  private handle?: FileHandle;
  private size = 0;
  /** Writes go one after the other, in the order they were appended. */
  private queue: Promise<void> = Promise.resolve();
  private closed = false;

  constructor(opts: AuditLogOptions) {
    this.file = opts.file;
    this.maxBytes = Math.max(1024, opts.maxBytes);
    this.keep = Math.max(1, opts.keep);
    this.onError = opts.onError ?? (() => undefined);
  }

  /** Opens (creates) the file; throws when it cannot (the node should not run without its audit log). */
  async open(): Promise<void> {
    await mkdir(dirname(this.file), { recursive: true });
    this.handle = await open(this.file, 'a', 0o640);
    this.size = (await this.handle.stat()).size;
  }

  /** Queues one entry; returns when it is written (callers need not wait). */
  append(entry: Omit<AuditEntry, 'time'> & { time?: string }): Promise<void> {
    if (this.closed) return Promise.resolve();
    const line = JSON.stringify({ time: entry.time ?? new Date().toISOString(), ...dropUndefined(entry) }) + '\n';
    const write = async (): Promise<void> => {
      const bytes = Buffer.from(line, 'utf8');
      if (this.size > 0 && this.size + bytes.length > this.maxBytes) await this.rotate();
      if (!this.handle) await this.open();
      await this.handle!.write(bytes);
      this.size += bytes.length;
    };
    this.queue = this.queue.then(write).catch((err: Error) => this.onError(err));
    return this.queue;
  }

  private async rotate(): Promise<void> {
    await this.handle?.close();
    this.handle = undefined;
    await rm(`${this.file}.${this.keep}`, { force: true });
    for (let i = this.keep - 1; i >= 1; i--) {
      await rename(`${this.file}.${i}`, `${this.file}.${i + 1}`).catch((err: NodeJS.ErrnoException) => {
        if (err.code !== 'ENOENT') throw err;
      });
    }
    await rename(this.file, `${this.file}.1`);
    this.size = 0;
  }

  /** Waits for queued entries, then closes the file. */
  async close(): Promise<void> {
    this.closed = true;
    await this.queue;
    await this.handle?.close();
    this.handle = undefined;
  }
}

function dropUndefined<T extends object>(o: T): T {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as T;
}

/** Default rotation of the audit log: 10 MB files, 5 old ones kept. */
export const AUDIT_DEFAULTS = { maxBytes: 10_000_000, keep: 5 } as const;

/** Appends entries of a command run on a stopped node's store (`shoal import --data`) to its audit log. */
export async function appendAuditEntries(file: string, entries: Array<Omit<AuditEntry, 'time'>>, opts: Partial<Pick<AuditLogOptions, 'maxBytes' | 'keep'>> = {}): Promise<void> {
  const log = new AuditLog({ file, maxBytes: opts.maxBytes ?? AUDIT_DEFAULTS.maxBytes, keep: opts.keep ?? AUDIT_DEFAULTS.keep, onError: (err) => {
    throw err;
  } });
  await log.open();
  try {
    for (const e of entries) await log.append(e);
  } finally {
    await log.close();
  }
}

/** The files of a log, oldest first: FILE.N ... FILE.1, FILE. */
export async function auditFiles(file: string): Promise<string[]> {
  const dir = dirname(file);
  const base = basename(file);
  let names: string[];
  try {
    names = await readdir(dir);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new Error(`no audit log at ${file}: ${dir} does not exist (give the node's --data DIR, -c CONFIG or --file FILE)`);
    throw new Error(`cannot read the audit log directory ${dir}: ${code ?? (err as Error).message}`);
  }
  const rotated = names
    .map((n) => ({ n, m: new RegExp(`^${base.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}\\.(\\d+)$`).exec(n) }))
    .filter((x) => x.m)
    .sort((a, b) => Number(b.m![1]) - Number(a.m![1]))
    .map((x) => join(dir, x.n));
  const out = [...rotated];
  if (names.includes(base)) out.push(file);
  return out;
}

export interface AuditFilter {
  /** Entries at or after this time (epoch ms). */
  since?: number;
  user?: string;
  /** Repository prefix. */
  repo?: string;
  action?: string;
}

export function matchesAudit(e: AuditEntry, f: AuditFilter): boolean {
  if (f.since !== undefined && !(Date.parse(e.time) >= f.since)) return false;
  if (f.user !== undefined && e.user !== f.user) return false;
  if (f.repo !== undefined && !(e.repository ?? '').startsWith(f.repo)) return false;
  if (f.action !== undefined && e.action !== f.action) return false;
  return true;
}

/** Reads the log and its rotated files, oldest first, yielding the entries that match; bad lines are skipped. */
export async function* readAudit(file: string, filter: AuditFilter = {}, opts: { signal?: AbortSignal } = {}): AsyncGenerator<AuditEntry> {
  const files = await auditFiles(file);
  if (files.length === 0) {
    await stat(file).catch((err: NodeJS.ErrnoException) => {
      throw new Error(`no audit log at ${file} (${err.code ?? err.message}); is this the node's data directory?`);
    });
  }
  for (const f of files) {
    const lines = createInterface({ input: createReadStream(f, { encoding: 'utf8', signal: opts.signal }), crlfDelay: Infinity });
    try {
      for await (const line of lines) {
        if (!line.trim()) continue;
        let e: AuditEntry;
        try {
          e = JSON.parse(line) as AuditEntry;
        } catch {
          continue;
        }
        if (e && typeof e === 'object' && typeof e.time === 'string' && matchesAudit(e, filter)) yield e;
      }
    } catch (err) {
      // A rotation between listing and reading removes the oldest file: what is left is still in order.
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
  }
}

/** `--since`: a duration back from now (`90m`, `2d`, ms) or a date (`2026-11-30`, ISO 8601). */
export function parseSince(value: string, now: number, parseDuration: (v: string) => number): number {
  const v = value.trim();
  if (/^\d{4}-\d{2}-\d{2}/.test(v)) {
    const t = Date.parse(v);
    if (Number.isNaN(t)) throw new Error(`--since ${JSON.stringify(value)} is not a date; write e.g. 2026-11-30 or 2026-11-30T08:00:00Z`);
    return t;
  }
  return now - parseDuration(v);
}

/** What a garbage collection did, as an audit entry's detail. */
export function gcAuditDetail(r: { dryRun?: boolean; tags?: number; manifests?: number; blobs?: number; uploads?: number; bytesFreed?: number }): string {
  return `${r.dryRun ? 'dry run: ' : ''}${r.tags ?? 0} tags, ${r.manifests ?? 0} manifests, ${r.blobs ?? 0} blobs, ${r.uploads ?? 0} uploads, ${r.bytesFreed ?? 0} bytes`;
}

/** One line per entry for a terminal: TIME USER FROM ACTION RESULT REPOSITORY REFERENCE DIGEST DETAIL. */
export function formatAuditLine(e: AuditEntry): string {
  const what = `${e.repository ?? '-'}${e.reference ? `:${e.reference}` : ''}`;
  const digest = e.digest ? e.digest.slice(0, 19) : '-';
  const moved = e.previous ? ` (was ${e.previous.slice(0, 19)})` : '';
  const detail = e.detail ? ` ${e.detail}` : '';
  return `${e.time}  ${e.user}  ${e.from}  ${e.action}  ${e.result}${e.status ? ` ${e.status}` : ''}  ${what}  ${digest}${moved}${detail}`;
}
