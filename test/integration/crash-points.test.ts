/**
 * Crash points: a node started with `SHOAL_CRASH_AT=<step>` kills itself (SIGKILL) right after that step of a
 * store change (src/store/crash-points.ts). For every step of commit, manifest put, tag move, delete, eviction,
 * collection and corruption, each test
 *   1. fills a store through a normal node and stops it,
 *   2. starts it again with the switch and drives the operation that reaches the step, and sees it die,
 *   3. checks what the crash left with fsck (as `shoal fsck --data` does): only what the design allows (a file no record names,
 *      for a write cut before its records or a removal cut after them), exactly where the step says,
 *   4. restarts it without the switch: everything acknowledged before the crash is there byte for byte, what was
 *      cut is whole or absent, what was removed stays removed (API and files),
 *   5. stops it and runs `shoal fsck --data` again: no problem at all, exit code 0.
 */
import { after, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Agent } from 'undici';
import { httpClient, type Reply } from '../helpers/http.ts';
import { pushManifest as seedPushManifest, pushRandomImage, startDockerRegistry, type DockerRegistry } from '../helpers/seed-registry.ts';
import { fsckDataDir } from '../../src/store/index.ts';
import { runShoal, ShoalProcesses, type ShoalProcess } from '../helpers/spawn-node.ts';
import { blobFile, CRASH_RESIDUE, describeProblems, fileExists, OCI_MANIFEST, randomImage, sha256, type TestImage } from '../helpers/store-check.ts';

const agent = new Agent({ keepAliveTimeout: 1_000, connections: 16 });
const http = httpClient(agent, 20_000);
const REPO = 'crash/app';
/** No background GC or scrub unless a test asks for it: each crash comes from the operation the test drives. */
const QUIET = { SHOAL_GC_INTERVAL: '0', SHOAL_SCRUB_RATE: '0' };

/** A pushed image as the client knows it. */
interface Pushed extends TestImage {
  repo: string;
  tag?: string;
}

async function pushBlob(base: string, repo: string, data: Buffer): Promise<Reply> {
  return http(`${base}/v2/${repo}/blobs/uploads/?digest=${sha256(data)}`, { method: 'POST', body: data, headers: { 'content-type': 'application/octet-stream' } });
}

async function pushBlobOk(base: string, repo: string, data: Buffer): Promise<string> {
  const r = await pushBlob(base, repo, data);
  assert.equal(r.status, 201, r.body.toString());
  return sha256(data);
}

/** POST, one PATCH, PUT ?digest=: the upload session path. Returns the session's location and the PUT's reply. */
async function pushBlobChunked(base: string, repo: string, data: Buffer, onLocation: (l: string) => void): Promise<Reply> {
  const post = await http(`${base}/v2/${repo}/blobs/uploads/`, { method: 'POST' });
  assert.equal(post.status, 202, post.body.toString());
  onLocation(post.headers.location!);
  const patch = await http(new URL(post.headers.location!, base).toString(), {
    method: 'PATCH',
    body: data,
    headers: { 'content-type': 'application/octet-stream', 'content-range': `0-${data.length - 1}` },
  });
  assert.equal(patch.status, 202, patch.body.toString());
  const put = new URL(patch.headers.location!, base);
  put.searchParams.set('digest', sha256(data));
  return http(put.toString(), { method: 'PUT' });
}

async function putManifest(base: string, repo: string, ref: string, bytes: Buffer): Promise<Reply> {
  return http(`${base}/v2/${repo}/manifests/${ref}`, { method: 'PUT', body: bytes, headers: { 'content-type': OCI_MANIFEST } });
}

async function pushImage(base: string, repo: string, tag: string | undefined, layerSizes = [40_000, 3_000]): Promise<Pushed> {
  const img = randomImage(layerSizes);
  for (const b of img.blobs.values()) await pushBlobOk(base, repo, b);
  const r = await putManifest(base, repo, tag ?? img.digest, img.manifest);
  assert.equal(r.status, 201, r.body.toString());
  return { ...img, repo, tag };
}

async function assertBlob(node: ShoalProcess, repo: string, digest: string, bytes: Buffer, where: string): Promise<void> {
  const r = await http(`${node.url}/v2/${repo}/blobs/${digest}`);
  assert.equal(r.status, 200, `${where}: blob ${digest} in ${repo}: ${r.status} ${r.body.toString().slice(0, 300)}`);
  assert.ok(r.body.equals(bytes), `${where}: blob ${digest} in ${repo} is not byte-identical`);
}

/** The manifest (by digest and by tag) and every blob it names serve byte-identical. */
async function assertImage(node: ShoalProcess, img: Pushed, where: string): Promise<void> {
  for (const ref of [img.digest, ...(img.tag ? [img.tag] : [])]) {
    const r = await http(`${node.url}/v2/${img.repo}/manifests/${ref}`, { headers: { accept: OCI_MANIFEST } });
    assert.equal(r.status, 200, `${where}: manifest ${img.repo}:${ref}: ${r.status} ${r.body.toString().slice(0, 300)}`);
    assert.equal(r.headers['docker-content-digest'], img.digest, `${where}: ${img.repo}:${ref} names another manifest`);
    assert.ok(r.body.equals(img.manifest), `${where}: manifest ${img.repo}:${ref} is not byte-identical`);
  }
  for (const [d, b] of img.blobs) await assertBlob(node, img.repo, d, b, where);
}

/** Not served (GET and HEAD are 404) and, when no other repository could hold it, no file either. */
async function assertGone(node: ShoalProcess, dataDir: string, repo: string, kind: 'blobs' | 'manifests', ref: string, where: string, opts: { fileToo?: boolean } = {}): Promise<void> {
  for (const method of ['GET', 'HEAD']) {
    const r = await http(`${node.url}/v2/${repo}/${kind}/${ref}`, { method, headers: { accept: OCI_MANIFEST } });
    assert.equal(r.status, 404, `${where}: ${method} ${repo}/${kind}/${ref} answers ${r.status}: it came back`);
  }
  if (opts.fileToo !== false && ref.startsWith('sha256:')) assert.equal(await fileExists(blobFile(dataDir, ref)), false, `${where}: the file of ${ref} is still there`);
}

async function tagsOf(node: ShoalProcess, repo: string): Promise<string[]> {
  const r = await http(`${node.url}/v2/${repo}/tags/list`);
  if (r.status === 404) return [];
  assert.equal(r.status, 200, r.body.toString());
  return ((JSON.parse(r.body.toString()) as { tags: string[] | null }).tags ?? []).sort();
}

/** What a case's steps share: the data dir, what it pushed, and anything else it wants to remember. */
interface Ctx {
  dataDir: string;
  images: Record<string, Pushed>;
  blobs: Record<string, Buffer>;
  /** Blobs pushed, and whether each got its 201. */
  acked: Map<string, boolean>;
  seed?: DockerRegistry;
  location?: string;
  /** The digest the crash is about: its file is what the crashed store may hold without a record. */
  subject?: string;
}

interface CrashCase {
  step: string;
  title: string;
  /** On a normal node. */
  setup(node: ShoalProcess, ctx: Ctx): Promise<void>;
  /** Between the setup and the crashing start, with the node stopped. */
  tamper?(ctx: Ctx): Promise<void>;
  /** Serve arguments and environment of the node that crashes. */
  args?(ctx: Ctx): string[];
  env?: Record<string, string>;
  /** The node dies before it says it listens (a scrub at start-up). */
  diesAtStart?: boolean;
  /** The operation that reaches the step; it must not be acknowledged (it may throw: the connection breaks). */
  trigger?(node: ShoalProcess, ctx: Ctx): Promise<void>;
  /** What `shoal fsck` may find in the crashed store: `file-without-record <digest>` lines and the like. */
  residue(ctx: Ctx): string[];
  /** After the restart without the switch. */
  check(node: ShoalProcess, ctx: Ctx): Promise<void>;
}

/** Blobs noted in `acked`: acknowledged ones are whole; the others are whole or absent. Returns the absent. */
async function checkPushedUnderSwitch(node: ShoalProcess, ctx: Ctx, repo: string, where: string): Promise<string[]> {
  const absent: string[] = [];
  for (const [digest, acked] of ctx.acked) {
    const r = await http(`${node.url}/v2/${repo}/blobs/${digest}`);
    if (r.status === 404) {
      absent.push(digest);
      assert.equal(await fileExists(blobFile(ctx.dataDir, digest)), false, `${where}: ${digest} is absent but has a file`);
      continue;
    }
    assert.equal(r.status, 200, `${where}: ${digest}: ${r.status}`);
    assert.ok(r.body.equals(ctx.blobs[digest]!), `${where}: ${digest} is not byte-identical (acknowledged: ${acked})`);
  }
  return absent;
}

const removalSteps = (reason: string) => [`${reason}:records`, `${reason}:unlinked`] as const;

const cases: CrashCase[] = [
  {
    step: 'commit:file',
    title: 'a monolithic push whose file is in place but whose records are not written is not there after the restart',
    async setup(node, ctx) {
      ctx.images.kept = await pushImage(node.url, REPO, 'v1');
    },
    async trigger(node, ctx) {
      const data = randomBytes(150_000);
      ctx.subject = sha256(data);
      const r = await pushBlob(node.url, REPO, data);
      assert.fail(`the push was answered ${r.status}`);
    },
    residue: (ctx) => [`file-without-record ${ctx.subject}`],
    async check(node, ctx) {
      await assertImage(node, ctx.images.kept!, 'after restart');
      await assertGone(node, ctx.dataDir, REPO, 'blobs', ctx.subject!, 'after restart');
    },
  },
  {
    step: 'commit:file',
    title: 'an upload session whose file was moved into place, records not written: blob and session are gone',
    async setup(node, ctx) {
      ctx.images.kept = await pushImage(node.url, REPO, 'v1');
    },
    async trigger(node, ctx) {
      const data = randomBytes(120_000);
      ctx.subject = sha256(data);
      const r = await pushBlobChunked(node.url, REPO, data, (l) => (ctx.location = l));
      assert.fail(`the closing PUT was answered ${r.status}`);
    },
    residue: (ctx) => [`file-without-record ${ctx.subject}`, `session-without-file ${ctx.location!.split('/').pop()!.split('?')[0]}`],
    async check(node, ctx) {
      await assertImage(node, ctx.images.kept!, 'after restart');
      await assertGone(node, ctx.dataDir, REPO, 'blobs', ctx.subject!, 'after restart');
      const session = await http(new URL(ctx.location!, node.url).toString());
      assert.equal(session.status, 404, 'the session whose bytes moved is gone');
    },
  },
  {
    step: 'commit:records',
    title: 'a push whose records are written but not yet answered is whole after the restart',
    async setup(node, ctx) {
      ctx.images.kept = await pushImage(node.url, REPO, 'v1');
    },
    async trigger(node, ctx) {
      const data = randomBytes(150_000);
      ctx.subject = sha256(data);
      ctx.blobs.cut = data;
      const r = await pushBlob(node.url, REPO, data);
      assert.fail(`the push was answered ${r.status}`);
    },
    residue: () => [],
    async check(node, ctx) {
      await assertImage(node, ctx.images.kept!, 'after restart');
      // Written with sync before the crash: there, although the client never heard so.
      await assertBlob(node, REPO, ctx.subject!, ctx.blobs.cut!, 'after restart');
    },
  },
  {
    step: 'manifest:records',
    title: 'a manifest put that moves a tag: manifest and tag are there together after the restart',
    async setup(node, ctx) {
      ctx.images.old = await pushImage(node.url, REPO, 'v1');
      const next = randomImage([30_000]);
      for (const b of next.blobs.values()) await pushBlobOk(node.url, REPO, b);
      ctx.images.next = { ...next, repo: REPO, tag: 'v1' };
    },
    async trigger(node, ctx) {
      const r = await putManifest(node.url, REPO, 'v1', ctx.images.next!.manifest);
      assert.fail(`the manifest put was answered ${r.status}`);
    },
    residue: () => [],
    async check(node, ctx) {
      await assertImage(node, ctx.images.next!, 'after restart');
      await assertImage(node, { ...ctx.images.old!, tag: undefined }, 'after restart (the old manifest, by digest)');
      assert.deepEqual(await tagsOf(node, REPO), ['v1']);
    },
  },
  {
    step: 'tag:records',
    title: 'a pulled-through tag that moved on the seed: the tag points at the new manifest after the restart',
    async setup(node, ctx) {
      // The node pulls two tags of the seed, so that it holds both manifests.
      const seed = ctx.seed!;
      const a = await pushRandomImage(seed.url, 'team/app', 't1', { layerSizes: [20_000] });
      const b = await pushRandomImage(seed.url, 'team/app', 't2', { layerSizes: [25_000] });
      for (const [img, tag] of [[a, 't1'], [b, 't2']] as const) {
        const r = await http(`${node.url}/v2/team/app/manifests/${tag}`, { headers: { accept: OCI_MANIFEST } });
        assert.equal(r.status, 200, r.body.toString());
        assert.equal(r.headers['docker-content-digest'], img.manifestDigest);
        ctx.images[tag] = { manifest: img.manifestBytes, digest: img.manifestDigest, blobs: new Map(), repo: 'team/app', tag };
      }
      // The seed moves t1 to the second manifest, which the node has.
      await seedPushManifest(seed.url, 'team/app', 't1', b.manifestBytes, b.manifestMediaType);
    },
    args: (ctx) => ['--seed', ctx.seed!.url],
    async trigger(node) {
      const r = await http(`${node.url}/v2/team/app/manifests/t1`, { headers: { accept: OCI_MANIFEST } });
      assert.fail(`the pull was answered ${r.status}`);
    },
    residue: () => [],
    async check(node, ctx) {
      // Restarted without the seed: the tag comes from the store.
      await assertImage(node, { ...ctx.images.t2!, tag: 't1' }, 'after restart (t1 moved)');
      await assertImage(node, ctx.images.t2!, 'after restart (t2)');
      await assertImage(node, { ...ctx.images.t1!, tag: undefined }, 'after restart (the old manifest, by digest)');
    },
  },
  ...removalSteps('deleted').flatMap((step): CrashCase[] => [
    {
      step,
      title: 'DELETE of a manifest: it stays deleted, with its tag and its file',
      async setup(node, ctx) {
        ctx.images.kept = await pushImage(node.url, REPO, 'v1');
        ctx.images.gone = await pushImage(node.url, REPO, 'gone');
      },
      async trigger(node, ctx) {
        ctx.subject = ctx.images.gone!.digest;
        const r = await http(`${node.url}/v2/${REPO}/manifests/${ctx.subject}`, { method: 'DELETE' });
        assert.fail(`the delete was answered ${r.status}`);
      },
      residue: (ctx) => (step.endsWith(':records') ? [`file-without-record ${ctx.subject}`] : []),
      async check(node, ctx) {
        const gone = ctx.images.gone!;
        await assertGone(node, ctx.dataDir, REPO, 'manifests', gone.digest, 'after restart');
        await assertGone(node, ctx.dataDir, REPO, 'manifests', 'gone', 'after restart', { fileToo: false });
        assert.deepEqual(await tagsOf(node, REPO), ['v1']);
        await assertImage(node, ctx.images.kept!, 'after restart');
        // Its layers were not deleted: they are still blobs of the repository.
        for (const [d, b] of gone.blobs) await assertBlob(node, REPO, d, b, 'after restart');
      },
    },
    {
      step,
      title: 'DELETE of a blob: it never comes back',
      async setup(node, ctx) {
        ctx.images.kept = await pushImage(node.url, REPO, 'v1');
        ctx.blobs.gone = randomBytes(70_000);
        ctx.subject = await pushBlobOk(node.url, REPO, ctx.blobs.gone);
      },
      async trigger(node, ctx) {
        const r = await http(`${node.url}/v2/${REPO}/blobs/${ctx.subject}`, { method: 'DELETE' });
        assert.fail(`the delete was answered ${r.status}`);
      },
      residue: (ctx) => (step.endsWith(':records') ? [`file-without-record ${ctx.subject}`] : []),
      async check(node, ctx) {
        await assertGone(node, ctx.dataDir, REPO, 'blobs', ctx.subject!, 'after restart');
        await assertImage(node, ctx.images.kept!, 'after restart');
      },
    },
  ]),
  {
    step: 'deleted:records',
    title: 'DELETE of a blob another repository also holds: gone from one, whole in the other',
    async setup(node, ctx) {
      ctx.blobs.shared = randomBytes(60_000);
      ctx.subject = await pushBlobOk(node.url, REPO, ctx.blobs.shared);
      await pushBlobOk(node.url, 'crash/other', ctx.blobs.shared);
    },
    async trigger(node, ctx) {
      const r = await http(`${node.url}/v2/${REPO}/blobs/${ctx.subject}`, { method: 'DELETE' });
      assert.fail(`the delete was answered ${r.status}`);
    },
    residue: () => [],
    async check(node, ctx) {
      await assertGone(node, ctx.dataDir, REPO, 'blobs', ctx.subject!, 'after restart', { fileToo: false });
      await assertBlob(node, 'crash/other', ctx.subject!, ctx.blobs.shared!, 'after restart');
    },
  },
  ...removalSteps('evicted').map(
    (step): CrashCase => ({
      step,
      title: 'eviction over a 1 MB quota: the pinned image stays whole, the evicted blob is gone for good',
      async setup(node, ctx) {
        ctx.images.pinned = await pushImage(node.url, REPO, 'pinned', [300_000, 100_000]);
        const pin = await http(`${node.url}/shoal/pins/${REPO}@${ctx.images.pinned.digest}`, { method: 'PUT' });
        assert.equal(pin.status, 201, pin.body.toString());
        // Unpinned blobs up to about 0.9 MB in all: under the quota the next start has.
        for (let i = 0; i < 3; i++) {
          const data = randomBytes(150_000);
          ctx.blobs[sha256(data)] = data;
          ctx.acked.set(await pushBlobOk(node.url, REPO, data), true);
        }
      },
      args: () => ['--max-store', '1M'],
      async trigger(node, ctx) {
        // One more push crosses the quota; the eviction it starts kills the node (before or after the 201).
        const data = randomBytes(200_000);
        ctx.blobs[sha256(data)] = data;
        ctx.acked.set(sha256(data), false);
        const r = await pushBlob(node.url, REPO, data);
        if (r.status === 201) ctx.acked.set(sha256(data), true);
        else assert.fail(`the push was answered ${r.status}: ${r.body.toString()}`);
      },
      residue: (ctx) => (step.endsWith(':records') ? [`file-without-record ${ctx.subject}`] : []),
      async check(node, ctx) {
        await assertImage(node, ctx.images.pinned!, 'after restart');
        const absent = await checkPushedUnderSwitch(node, ctx, REPO, 'after restart');
        assert.equal(absent.length, 1, 'the blob whose eviction was cut is gone, and no other');
        if (step.endsWith(':records')) assert.deepEqual(absent, [ctx.subject], "the file left behind is the evicted blob's");
      },
    }),
  ),
  ...removalSteps('collected').map(
    (step): CrashCase => ({
      step,
      title: 'a GC sweep with grace 0: tagged images stay, what was swept stays swept',
      async setup(node, ctx) {
        ctx.images.kept = await pushImage(node.url, REPO, 'v1');
        // An untagged manifest and a blob that nothing references.
        ctx.images.untagged = await pushImage(node.url, REPO, undefined);
        ctx.blobs.loose = randomBytes(50_000);
        await pushBlobOk(node.url, REPO, ctx.blobs.loose);
        ctx.subject = ctx.images.untagged.digest;
      },
      env: { SHOAL_GC_GRACE: '0' },
      async trigger(node) {
        const r = await http(`${node.url}/shoal/gc`, { method: 'POST' });
        assert.fail(`the collection was answered ${r.status}: ${r.body.toString().slice(0, 500)}`);
      },
      // The sweep goes through manifests first: the untagged one is the first to go.
      residue: (ctx) => (step.endsWith(':records') ? [`file-without-record ${ctx.subject}`] : []),
      async check(node, ctx) {
        await assertImage(node, ctx.images.kept!, 'after restart');
        await assertGone(node, ctx.dataDir, REPO, 'manifests', ctx.images.untagged!.digest, 'after restart');
        await assertGone(node, ctx.dataDir, REPO, 'blobs', ctx.images.untagged!.digest, 'after restart');
        // The sweep stopped there: the rest is still whole, as no acknowledged write made it go.
        const loose = ctx.blobs.loose!;
        await assertBlob(node, REPO, sha256(loose), loose, 'after restart (not swept yet)');
        for (const [d, b] of ctx.images.untagged!.blobs) await assertBlob(node, REPO, d, b, 'after restart (not swept yet)');
      },
    }),
  ),
  ...removalSteps('corrupt').map(
    (step): CrashCase => ({
      step,
      title: 'a flipped byte found by the scrub: the blob leaves the store, its image stays resolvable',
      async setup(node, ctx) {
        ctx.images.kept = await pushImage(node.url, REPO, 'v1');
        ctx.images.rotten = await pushImage(node.url, REPO, 'v2', [80_000]);
        ctx.subject = [...ctx.images.rotten.blobs.keys()].find((d) => ctx.images.rotten!.blobs.get(d)!.length === 80_000);
      },
      async tamper(ctx) {
        const file = blobFile(ctx.dataDir, ctx.subject!);
        const bytes = await readFile(file);
        bytes[12_345] = bytes[12_345]! ^ 0x01;
        await writeFile(file, bytes);
      },
      env: { SHOAL_SCRUB_RATE: '1000M' },
      diesAtStart: true,
      residue: (ctx) => (step.endsWith(':records') ? [`file-without-record ${ctx.subject}`] : []),
      async check(node, ctx) {
        await assertImage(node, ctx.images.kept!, 'after restart');
        await assertGone(node, ctx.dataDir, REPO, 'blobs', ctx.subject!, 'after restart');
        const rotten = ctx.images.rotten!;
        const m = await http(`${node.url}/v2/${REPO}/manifests/v2`, { headers: { accept: OCI_MANIFEST } });
        assert.equal(m.status, 200, 'the manifest whose layer went stays resolvable');
        assert.ok(m.body.equals(rotten.manifest));
        for (const [d, b] of rotten.blobs) if (d !== ctx.subject) await assertBlob(node, REPO, d, b, 'after restart');
      },
    }),
  ),
];

describe('crash points: SIGKILL right after each step of a store change, then a restart on the same data dir', () => {
  const procs = new ShoalProcesses();
  const seeds: DockerRegistry[] = [];
  after(async () => {
    await procs.cleanup();
    for (const s of seeds) await s.stop();
    await agent.close();
  });

  for (const c of cases) {
    it(`${c.step}: ${c.title}`, { timeout: 120_000 }, async () => {
      const dataDir = join(await procs.tempDir('shoal-crash-point-'), 'data');
      const ctx: Ctx = { dataDir, images: {}, blobs: {}, acked: new Map() };
      if (c.step === 'tag:records') {
        ctx.seed = await startDockerRegistry();
        seeds.push(ctx.seed);
      }
      const setupArgs = c.step === 'tag:records' ? ['--seed', ctx.seed!.url] : [];
      let node = await procs.serve({ dataDir, env: QUIET, args: setupArgs });
      await c.setup(node, ctx);
      assert.deepEqual(await node.terminate(), { code: 0, signal: null }, node.describe());
      await c.tamper?.(ctx);

      // The crashing run.
      const env = { ...QUIET, ...c.env, SHOAL_CRASH_AT: c.step };
      const serveArgs = ['serve', '--data', dataDir, '--listen', '127.0.0.1:0', ...(c.args?.(ctx) ?? [])];
      const crashing = c.diesAtStart ? procs.spawn(serveArgs, { env }) : await procs.serve({ dataDir, env, args: c.args?.(ctx) });
      if (c.trigger) {
        await c.trigger(crashing, ctx).catch((err: unknown) => {
          if (err instanceof assert.AssertionError) throw err;
          // The connection broke: the node died under the request, as it should.
        });
      }
      const exit = await crashing.waitExit(30_000);
      assert.deepEqual(exit, { code: null, signal: 'SIGKILL' }, `the node did not kill itself at ${c.step}\n${crashing.describe()}`);

      const crashed = { report: await fsckDataDir(dataDir) };
      // Eviction picks its victim itself: the pushed blob whose file no record names.
      if (c.step === 'evicted:records') ctx.subject = crashed.report.problems.find((p) => p.kind === 'file-without-record')?.subject;
      const unexpected = crashed.report.problems.filter((p) => !CRASH_RESIDUE.has(p.kind));
      assert.deepEqual(describeProblems(unexpected), [], 'the crash left an inconsistency that the design does not allow');
      assert.deepEqual(describeProblems(crashed.report.problems), c.residue(ctx).sort(), `what the crash at ${c.step} left behind`);

      node = await procs.serve({ dataDir, env: QUIET });
      await c.check(node, ctx);
      assert.deepEqual(await node.terminate(), { code: 0, signal: null }, node.describe());

      const final = await runShoal(['fsck', '--data', dataDir]);
      assert.equal(final.code, 0, `shoal fsck after the restart:\n${final.stdout}\n${final.stderr}`);
      assert.match(final.stdout, /0 problem\(s\); the store is sound/);
    });
  }
});
