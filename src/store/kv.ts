import { Level } from 'level';
import { END } from './keys.ts';

export type KvOp = { type: 'put'; key: string; value: unknown } | { type: 'del'; key: string };

/** An ordered key-value store of JSON values: LevelDB on disk, or a sorted map in memory. */
export interface KeyValueStore {
  open(): Promise<void>;
  close(): Promise<void>;
  get<T>(key: string): Promise<T | undefined>;
  /**
   * Applies every op at once. `sync` (the default) waits until the write is on disk, so a record survives a power
   * cut once this resolves; `sync: false` is for records that may be lost (access times).
   */
  batch(ops: KvOp[], opts?: { sync?: boolean }): Promise<void>;
  /** Entries whose keys start with `prefix`, in key order. */
  entries<T>(prefix: string, opts?: { gt?: string; limit?: number }): AsyncIterable<[string, T]>;
}

export class LevelKeyValueStore implements KeyValueStore {
  private readonly db: Level<string, unknown>;
  constructor(location: string) {
    this.db = new Level<string, unknown>(location, { valueEncoding: 'json' });
  }
  async open(): Promise<void> {
    await this.db.open();
  }
  async close(): Promise<void> {
    await this.db.close();
  }
  async get<T>(key: string): Promise<T | undefined> {
    return (await this.db.get(key)) as T | undefined;
  }
  async batch(ops: KvOp[], opts: { sync?: boolean } = {}): Promise<void> {
    if (ops.length === 0) return;
    await this.db.batch(
      ops.map((op) => (op.type === 'put' ? { type: 'put', key: op.key, value: op.value } : { type: 'del', key: op.key })),
      { sync: opts.sync !== false },
    );
  }
  async *entries<T>(prefix: string, opts: { gt?: string; limit?: number } = {}): AsyncIterable<[string, T]> {
    const range = opts.gt !== undefined && opts.gt > prefix ? { gt: opts.gt } : { gte: prefix };
    for await (const [k, v] of this.db.iterator({ ...range, lt: prefix + END, limit: opts.limit ?? -1 })) {
      yield [k, v as T];
    }
  }
}

/** The in-memory twin: same ordering, values deep-copied as LevelDB's JSON encoding would. */
export class MemoryKeyValueStore implements KeyValueStore {
  private readonly map = new Map<string, string>();
  async open(): Promise<void> {}
  async close(): Promise<void> {}
  async get<T>(key: string): Promise<T | undefined> {
    const v = this.map.get(key);
    return v === undefined ? undefined : (JSON.parse(v) as T);
  }
  async batch(ops: KvOp[], _opts?: { sync?: boolean }): Promise<void> {
    for (const op of ops) {
      if (op.type === 'put') this.map.set(op.key, JSON.stringify(op.value));
      else this.map.delete(op.key);
    }
  }
  async *entries<T>(prefix: string, opts: { gt?: string; limit?: number } = {}): AsyncIterable<[string, T]> {
    const keys = [...this.map.keys()].filter((k) => k.startsWith(prefix) && (opts.gt === undefined || k > opts.gt)).sort();
    let n = 0;
    for (const k of keys) {
      if (opts.limit !== undefined && opts.limit >= 0 && n++ >= opts.limit) return;
      const v = this.map.get(k);
      if (v !== undefined) yield [k, JSON.parse(v) as T];
    }
  }
}
