/**
 * The store's format version (`meta:schema`, src/store/keys.ts) and the migrations between versions.
 *
 * A node opens a store of its own format as it is, a new store as its own format, an older store by migrating
 * it in place, one version at a time, before anything else reads it; and refuses a store newer than it knows,
 * saying which version wrote it, without changing a byte.
 *
 * A crash (power cut, kill -9) during a migration is safe:
 * - before the first step, `meta:migration` records the step under way;
 * - each step writes in batches and is idempotent: run again from the start over a store it already partly
 *   changed, it ends in the same state (e.g. it rewrites records from the old form, and leaves records already
 *   in the new form alone);
 * - the step's last batch also sets `meta:schema` to the new version and removes `meta:migration`.
 * So a store is always either in the old version (with `meta:migration` set: the step runs again at the next
 * open) or in the new one.
 *
 * Format history:
 *   1  the first (links may carry `created`, manifests `cached`, and `chunks:<digest>` exists: all added
 *      compatibly, as optional fields and keys that older stores simply do not have).
 * Changing the layout: bump SCHEMA_VERSION, add the step from the previous version to MIGRATIONS, and keep
 * test/fixtures/store-v1/ (test/integration/store-format.test.ts opens it, so it must be migrated).
 */
import { ShoalError } from '../oci/index.ts';
import type { IoOptions } from '../oci/index.ts';
import type { KeyValueStore, KvOp } from './kv.ts';
import { SCHEMA_VERSION, keys } from './keys.ts';

/** The key of the step under way, if any: `{from, to, started}`. */
export const MIGRATION_KEY = 'meta:migration';

/** One step, from `from` to `to` (the next version). */
export interface Migration {
  from: string;
  to: string;
  /** What it changes, for the log. */
  what: string;
  /**
   * Rewrites the store from `from` to `to` in batches; must be idempotent (see above). `finish` are the ops of
   * the step's last batch, which the caller commits together with the version change: pass them to the last
   * batch (or commit them alone when there is nothing left to write).
   */
  run(kv: KeyValueStore, opts: IoOptions): Promise<KvOp[]>;
}

/** The steps this version of Shoal knows, oldest first. Format 1 is the first: nothing to migrate yet. */
export const MIGRATIONS: readonly Migration[] = [];

/** The store's format is newer than this Shoal understands. */
export class StoreTooNewError extends ShoalError {
  override readonly name = 'StoreTooNewError';
}

function versionNumber(v: string): number {
  return /^[1-9]\d*$/.test(v) ? Number(v) : NaN;
}

export interface MigrationReport {
  /** The version the store had when it was opened (undefined: a new store). */
  found?: string;
  /** The steps run, in order. */
  ran: Array<{ from: string; to: string; what: string; resumed: boolean }>;
}

/**
 * The store's recorded format against `target`: undefined for a store with no record yet, else the version, which
 * is `target` or older. A newer or unreadable version is refused with StoreTooNewError, naming the store (`where`).
 */
export async function readStoreFormat(kv: KeyValueStore, where: string, target: string = SCHEMA_VERSION): Promise<string | undefined> {
  const found = await kv.get<string>(keys.schema());
  if (found === undefined) return undefined;
  if (!(versionNumber(String(found)) <= versionNumber(target))) {
    throw new StoreTooNewError(
      'INTERNAL',
      `the store in ${where} has format version ${JSON.stringify(found)}, which this Shoal does not know (it reads versions 1 to ${target}): ` +
        'it was written by a newer Shoal. Run that version (or a newer one) on it, or move the directory away to start with an empty store',
      { found, supported: target },
    );
  }
  return String(found);
}

/**
 * Brings the store's format to `target`: writes it into a new store, migrates an older one step by step (resuming
 * a step a crash interrupted), refuses a newer or unknown one. `where` names the store in messages.
 */
export async function migrateStore(
  kv: KeyValueStore,
  where: string,
  opts: IoOptions & { target?: string; migrations?: readonly Migration[]; onStep?: (step: Migration, resumed: boolean) => void } = {},
): Promise<MigrationReport> {
  const target = opts.target ?? SCHEMA_VERSION;
  const migrations = opts.migrations ?? MIGRATIONS;
  const found = await readStoreFormat(kv, where, target);
  const report: MigrationReport = { found, ran: [] };
  if (found === undefined) {
    // A new store (no record at all): it starts in the current format.
    await kv.batch([{ type: 'put', key: keys.schema(), value: target }]);
    return report;
  }
  let version = found;
  while (version !== target) {
    const step = migrations.find((m) => m.from === version);
    if (!step) throw new ShoalError('INTERNAL', `the store in ${where} has format version ${version}, and this Shoal has no migration from it to ${target}`, { found: version });
    const pending = await kv.get<{ from: string; to: string }>(MIGRATION_KEY);
    const resumed = pending?.from === step.from && pending.to === step.to;
    if (!resumed) await kv.batch([{ type: 'put', key: MIGRATION_KEY, value: { from: step.from, to: step.to, started: Date.now() } }]);
    opts.onStep?.(step, resumed);
    const finish = await step.run(kv, opts);
    await kv.batch([...finish, { type: 'put', key: keys.schema(), value: step.to }, { type: 'del', key: MIGRATION_KEY }]);
    report.ran.push({ from: step.from, to: step.to, what: step.what, resumed });
    version = step.to;
  }
  return report;
}
