/**
 * The store's format version across upgrades (src/store/migrations.ts), on real LevelDB and real files:
 * - test/fixtures/store-v1/ is a data directory written by format 1 (test/fixtures/make-store-v1.ts), kept frozen:
 *   this Shoal opens a copy and finds every record and byte, and a node started on it serves it. When the format
 *   changes, this test keeps opening the format-1 fixture, so the new version must migrate it;
 * - a store newer than this Shoal is refused with a message that says so, its records untouched (the library,
 *   and `shoal serve` spawned as a user runs it);
 * - a migration killed (SIGKILL) in the middle of a step resumes at the next open and ends in the new format,
 *   with test-only migrations 1 -> 2 -> 3 (test/helpers/test-migrations.ts), since format 1 is the first.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { cp, mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { openDiskStore, SCHEMA_VERSION, fsckDataDir, FsckRefusedError } from '../../src/store/index.ts';
import { LevelKeyValueStore } from '../../src/store/kv.ts';
import { MIGRATION_KEY, StoreTooNewError, migrateStore } from '../../src/store/migrations.ts';
import { keys } from '../../src/store/keys.ts';
import { startTestNode } from '../helpers/node.ts';
import { request } from '../helpers/oci-client.ts';
import { eachLine, runShoal } from '../helpers/spawn-node.ts';
import { TEST_MIGRATIONS } from '../helpers/test-migrations.ts';

const here = dirname(fileURLToPath(import.meta.url));
const FIXTURE = resolve(here, '../fixtures/store-v1');

interface Expected {
  format: string;
  tags: Record<string, string>;
  manifests: Record<string, string[]>;
  blobs: Record<string, number>;
  referrers: Record<string, string[]>;
  pins: Array<{ repository: string; digest: string; reason: string }>;
  upload: { repository: string; offset: number; location: string };
  cached: string[];
}

describe('store format: the format-1 fixture, newer stores, migrations killed midway', { concurrency: 1 }, () => {
  let work = '';
  let expected: Expected;
  let n = 0;
  /** A fresh copy of the fixture (opening a store writes to it). */
  const copy = async (): Promise<string> => {
    const dir = join(work, `copy-${++n}`);
    await cp(FIXTURE, dir, { recursive: true });
    return dir;
  };

  before(async () => {
    work = await mkdtemp(join(tmpdir(), 'shoal-format-'));
    expected = JSON.parse(await readFile(join(FIXTURE, 'expected.json'), 'utf8')) as Expected;
    assert.equal(expected.format, '1', 'the fixture is of format 1');
  });

  after(async () => {
    if (work) await rm(work, { recursive: true, force: true });
  });

  it(`this Shoal (format ${SCHEMA_VERSION}) opens the format-1 store and finds every record and byte`, async () => {
    const dir = await copy();
    const store = await openDiskStore(dir);
    try {
      for (const [ref, digest] of Object.entries(expected.tags)) {
        const at = ref.lastIndexOf(':');
        assert.equal(await store.resolveTag(ref.slice(0, at), ref.slice(at + 1)), digest, ref);
      }
      for (const [repo, digests] of Object.entries(expected.manifests)) {
        for (const d of digests) assert.ok(await store.getManifest(repo, d), `${repo}@${d}`);
      }
      for (const [digest, size] of Object.entries(expected.blobs)) {
        assert.equal((await store.statContent(digest))?.size, size, digest);
        assert.equal(await store.verifyContent(digest), 'ok', `${digest} bytes match`);
      }
      for (const [subject, digests] of Object.entries(expected.referrers)) {
        assert.deepEqual((await store.listReferrers('team/app', subject)).map((r) => r.digest).sort(), [...digests].sort());
      }
      assert.deepEqual(
        (await store.listPins()).map((p) => ({ repository: p.repository, digest: p.digest, reason: p.reason })),
        expected.pins,
      );
      const uploads = await store.listUploads();
      assert.deepEqual(uploads.map((u) => [u.repository, u.offset]), [[expected.upload.repository, expected.upload.offset]]);
      for (const d of expected.cached) assert.equal((await store.listManifests()).find((m) => m.digest === d)?.cached, true);
    } finally {
      await store.close();
    }
    const kv = new LevelKeyValueStore(join(dir, 'db'));
    await kv.open();
    assert.equal(await kv.get(keys.schema()), SCHEMA_VERSION, 'opened (and migrated, were it older) to the current format');
    assert.equal(await kv.get(MIGRATION_KEY), undefined);
    await kv.close();
    const report = await fsckDataDir(dir);
    assert.deepEqual(report.problems, [], 'fsck finds nothing wrong');
  });

  it('a node started on it serves its images, resumes its upload, keeps its pins', async () => {
    const dir = await copy();
    const node = await startTestNode({ dataDir: dir });
    try {
      const accept = 'application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json';
      const m = await request(node.url, 'GET', '/v2/team/app/manifests/2.0', { headers: { accept } });
      assert.equal(m.status, 200);
      assert.equal(m.headers.get('docker-content-digest'), expected.tags['team/app:2.0']);
      // The first blobs of the fixture are the pushed images' configs and layers, in team/app.
      for (const digest of Object.keys(expected.blobs).slice(0, 4)) {
        const b = await request(node.url, 'GET', `/v2/team/app/blobs/${digest}`);
        assert.equal(b.status, 200, digest);
        assert.equal(b.body.length, expected.blobs[digest]);
      }
      const status = await request(node.url, 'GET', expected.upload.location);
      assert.equal(status.status, 204);
      assert.equal(status.headers.get('range'), `0-${expected.upload.offset - 1}`);
      const pins = (await request(node.url, 'GET', '/shoal/pins')).json<{ pins: Array<{ digest: string }> }>();
      assert.deepEqual(pins.pins.map((p) => p.digest), expected.pins.map((p) => p.digest));
    } finally {
      await node.stop();
    }
  });

  it('a store of a newer format is refused, saying so, and its records are left as they were', async () => {
    const dir = await copy();
    const newer = String(Number(SCHEMA_VERSION) + 1);
    const kv = new LevelKeyValueStore(join(dir, 'db'));
    await kv.open();
    await kv.batch([{ type: 'put', key: keys.schema(), value: newer }]);
    const before: Array<[string, unknown]> = [];
    for await (const e of kv.entries<unknown>('')) before.push(e);
    await kv.close();

    await assert.rejects(openDiskStore(dir), (err: Error) => {
      assert.ok(err instanceof StoreTooNewError, err.message);
      assert.match(err.message, new RegExp(`format version "${newer}"`));
      assert.match(err.message, /written by a newer Shoal/);
      assert.ok(err.message.includes(dir), 'names the directory');
      return true;
    });
    const r = await runShoal(['serve', '--data', dir, '--listen', '127.0.0.1:0']);
    assert.equal(r.code, 1, `shoal serve exits: ${r.stderr}`);
    assert.match(r.stderr, /written by a newer Shoal/);

    // fsck refuses it too: it cannot read records of a layout it does not know.
    await assert.rejects(fsckDataDir(dir, { repair: true }), (err: Error) => {
      assert.ok(err instanceof FsckRefusedError, err.message);
      assert.match(err.message, /written by a newer Shoal/);
      return true;
    });
    const f = await runShoal(['fsck', '--data', dir, '--repair']);
    assert.notEqual(f.code, 0, `shoal fsck fails: ${f.stdout}${f.stderr}`);
    assert.match(f.stderr, /written by a newer Shoal/);

    await kv.open();
    const afterwards: Array<[string, unknown]> = [];
    for await (const e of kv.entries<unknown>('')) afterwards.push(e);
    await kv.close();
    assert.deepEqual(afterwards, before, 'not one record changed');
  });

  it('fsck of an older store says so and checks nothing; with --repair it migrates it, then checks it', async () => {
    const dir = await copy();
    const format = { target: '3', migrations: TEST_MIGRATIONS };
    const plain = await fsckDataDir(dir, { format });
    assert.deepEqual(plain.problems.map((p) => p.kind), ['format-outdated']);
    assert.match(plain.problems[0]!.detail, /format version 1; this Shoal checks format 3/);
    assert.equal(plain.remaining, 1);
    const kv = new LevelKeyValueStore(join(dir, 'db'));
    await kv.open();
    assert.equal(await kv.get(keys.schema()), '1', 'a check without --repair changes nothing');
    await kv.close();

    const repaired = await fsckDataDir(dir, { format, repair: true });
    assert.deepEqual(repaired.problems.map((p) => p.kind), ['format-outdated'], 'migrated, and then nothing else was wrong');
    assert.match(repaired.problems[0]!.action ?? '', /migrated: 1 -> 2 \(tag records get migratedTo2\), 2 -> 3/);
    await kv.open();
    assert.equal(await kv.get(keys.schema()), '3');
    await kv.close();
    const again = await fsckDataDir(dir, { format });
    assert.deepEqual(again.problems, [], 'a second run is clean');
    assert.ok(repaired.blobs >= Object.keys(expected.blobs).length, 'the records were checked after the migration');
    assert.equal(repaired.blobs, again.blobs);
  });

  it('fsck of a store with no format record reports it; --repair records the current one', async () => {
    const dir = await copy();
    const kv = new LevelKeyValueStore(join(dir, 'db'));
    await kv.open();
    await kv.batch([{ type: 'del', key: keys.schema() }]);
    await kv.close();
    assert.deepEqual((await fsckDataDir(dir)).problems.map((p) => p.kind), ['format-unrecorded']);
    const repaired = await fsckDataDir(dir, { repair: true });
    assert.deepEqual(repaired.problems.map((p) => [p.kind, p.action]), [['format-unrecorded', `recorded format ${SCHEMA_VERSION}`]]);
    assert.deepEqual((await fsckDataDir(dir)).problems, []);
  });

  it('a migration killed in the middle of a step resumes at the next open and ends in the new format', async () => {
    const dir = await copy();
    const db = join(dir, 'db');
    // The child migrates to format 3 with the test steps, pausing after each batch; it is killed after the first.
    const child = spawn(process.execPath, ['--import', 'tsx', resolve(here, '../helpers/migrate-child.ts'), db, '3'], {
      env: { ...process.env, SHOAL_TEST_MIGRATION_PAUSE_MS: '60000' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const lines: string[] = [];
    let stderr = '';
    child.stderr!.setEncoding('utf8').on('data', (c: string) => (stderr += c));
    const exited = new Promise<void>((ok) => child.once('exit', () => ok()));
    try {
      await new Promise<void>((ok, fail) => {
        eachLine(child.stdout!, (l) => {
          lines.push(l);
          if (l.startsWith('batch')) ok();
        });
        child.once('exit', (code) => fail(new Error(`the migration ended (${code}) before its first batch: ${lines.join('\n')}\n${stderr}`)));
      });
    } finally {
      child.kill('SIGKILL');
      await exited;
    }
    assert.deepEqual(lines, ['step 1->2', lines[1]]);

    // As the kill left it: still format 1, the step recorded as under way, some tags rewritten, not all.
    const kv = new LevelKeyValueStore(db);
    await kv.open();
    try {
      assert.equal(await kv.get(keys.schema()), '1');
      const pending = await kv.get<{ from: string; to: string }>(MIGRATION_KEY);
      assert.deepEqual([pending?.from, pending?.to], ['1', '2']);
      const tags = async (): Promise<boolean[]> => {
        const out: boolean[] = [];
        for await (const [, v] of kv.entries<{ migratedTo2?: boolean }>('tag:')) out.push(v.migratedTo2 === true);
        return out;
      };
      const midway = await tags();
      assert.ok(midway.includes(true) && midway.includes(false), `killed midway: ${JSON.stringify(midway)}`);

      // The next open resumes the step, then runs the next one.
      const report = await migrateStore(kv, db, { target: '3', migrations: TEST_MIGRATIONS });
      assert.deepEqual(report.ran.map((r) => [r.from, r.to, r.resumed]), [['1', '2', true], ['2', '3', false]]);
      assert.equal(await kv.get(keys.schema()), '3');
      assert.equal(await kv.get(MIGRATION_KEY), undefined);
      assert.equal(await kv.get('meta:test3'), true);
      assert.deepEqual(await tags(), Object.keys(expected.tags).map(() => true), 'every tag rewritten exactly as if it had not been interrupted');
      // Opening it again changes nothing.
      assert.deepEqual((await migrateStore(kv, db, { target: '3', migrations: TEST_MIGRATIONS })).ran, []);
    } finally {
      await kv.close();
    }
  });

  it('a format with no migration from it is refused, not guessed at', async () => {
    const dir = await copy();
    const kv = new LevelKeyValueStore(join(dir, 'db'));
    await kv.open();
    try {
      await assert.rejects(migrateStore(kv, dir, { target: '3', migrations: [] }), /no migration from it to 3/);
      assert.equal(await kv.get(keys.schema()), '1');
    } finally {
      await kv.close();
    }
  });
});
