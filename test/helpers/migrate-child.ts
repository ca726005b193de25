/**
 * Run as a child process by test/integration/store-format.test.ts: migrates the LevelDB at argv[2] to format
 * argv[3] with the test migrations, printing a line per batch; the test kills it in the middle.
 */
import { LevelKeyValueStore } from '../../src/store/kv.ts';
import { migrateStore } from '../../src/store/migrations.ts';
import { TEST_MIGRATIONS } from './test-migrations.ts';

const kv = new LevelKeyValueStore(process.argv[2]!);
await kv.open();
await migrateStore(kv, process.argv[2]!, { target: process.argv[3]!, migrations: TEST_MIGRATIONS, onStep: (s, resumed) => process.stdout.write(`step ${s.from}->${s.to}${resumed ? ' resumed' : ''}\n`) });
await kv.close();
process.stdout.write('done\n');
