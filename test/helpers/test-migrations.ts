/**
 * Migrations that exist only in tests, to exercise src/store/migrations.ts on a real store: format 1 -> 2 adds
 * `migratedTo2: true` to every tag record, in batches of 2 with a pause between batches (so that a test can kill
 * the process in the middle); 2 -> 3 adds a `meta:test3` key. Both are idempotent, as migrations must be.
 */
import type { KvOp } from '../../src/store/kv.ts';
import type { Migration } from '../../src/store/migrations.ts';

export const TEST_MIGRATIONS: Migration[] = [
  {
    from: '1',
    to: '2',
    what: 'tag records get migratedTo2',
    async run(kv, opts) {
      let ops: KvOp[] = [];
      for await (const [key, value] of kv.entries<Record<string, unknown>>('tag:')) {
        if (value.migratedTo2 === true) continue;
        ops.push({ type: 'put', key, value: { ...value, migratedTo2: true } });
        if (ops.length === 2) {
          await kv.batch(ops);
          ops = [];
          process.stdout.write(`batch ${key.replace(/\0/g, ' ')}\n`);
          await new Promise((ok) => setTimeout(ok, Number(process.env.SHOAL_TEST_MIGRATION_PAUSE_MS ?? 0)));
          if (opts.signal?.aborted) throw new Error('aborted');
        }
      }
      return ops;
    },
  },
  {
    from: '2',
    to: '3',
    what: 'meta:test3',
    async run() {
      return [{ type: 'put', key: 'meta:test3', value: true }];
    },
  },
];
