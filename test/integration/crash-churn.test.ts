/**
 * 50 SIGKILLs at random moments of a busy node. Each round runs at once, against one node process:
 *   - two pushers (one monolithic, one through upload sessions) that push images under new tags and move `latest`,
 *   - a puller that reads acknowledged images back and checks every byte,
 *   - a deleter that deletes acknowledged images by digest,
 *   - garbage collections one after another (grace 3 s),
 *   - a bundle import into the node through its registry API (the code of `shoal import FILE --node URL`),
 * and kills the node at a random moment. Then, with the node stopped, fsck checks the store as the crash left it:
 * only what kill -9 may leave (files without records, temporary files) is allowed. The node restarts on the same
 * data dir and the test checks that nothing acknowledged is lost (tags, manifests and blobs byte for byte), that
 * acknowledged deletes stay deleted, and that every operation cut by the kill is whole or absent. Half-way and at
 * the end, the node is stopped cleanly and fsck must find nothing at all.
 *
 * SHOAL_CRASH_SEED=<n> replays a run's choices (the seed is printed as a diagnostic).
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { Agent } from 'undici';
import { importBundle, NodeTarget, openBundleInput } from '../../src/bundle/index.ts';
import { SilentProgress } from '../../src/bundle/progress.ts';
import { fsckDataDir } from '../../src/store/index.ts';
import { blobPath, buildImageLayout, makeTar, type FixtureImage, type TarFile } from '../fixtures/images.ts';
import { httpClient, type Reply } from '../helpers/http.ts';
import { runShoal, ShoalProcesses, type ShoalProcess } from '../helpers/spawn-node.ts';
import { CRASH_RESIDUE, describeProblems, OCI_MANIFEST, randomImage, sha256 } from '../helpers/store-check.ts';
import { prng } from '../helpers/prng.ts';

const ROUNDS = 50;
/** Every this many rounds the node also stops cleanly, for a fsck that must find nothing. */
const CLEAN_CHECK_EVERY = 25;
const BUNDLES = 3;
const ACCEPT = [OCI_MANIFEST, 'application/vnd.oci.image.index.v1+json'].join(', ');
const NODE_ENV = { SHOAL_GC_INTERVAL: '0', SHOAL_GC_GRACE: '3s' };


const agent = new Agent({ keepAliveTimeout: 1_000, connections: 32 });
const http = httpClient(agent, 30_000);

/** An image as its client knows it: every manifest (itself first, then an index's children) and every blob. */
interface Img {
  digest: string;
  manifests: Map<string, Buffer>;
  blobs: Map<string, Buffer>;
}

interface Tagged {
  repo: string;
  tag: string;
  img: Img;
}

/** An operation the kill cut: after the restart it must be whole or absent (a tag move: old or new). */
type Pending =
  | { kind: 'tag'; repo: string; tag: string; before?: Img; after: Img }
  | { kind: 'delete'; repo: string; img: Img; tags: string[] }
  | { kind: 'import'; repo: string; images: Array<{ tag: string; img: Img }> };

/** What the clients were told: acknowledged tags and deletes, and what is in flight. */
class Acknowledged {
  readonly tags = new Map<string, Tagged>();
  readonly deleted = new Map<string, { repo: string; digest: string }>();
  /** Tags an operation is changing. */
  readonly busy = new Set<string>();
  /** Digests being read by the puller: the deleter leaves them alone. */
  readonly reading = new Map<string, number>();
  readonly pending = new Set<Pending>();
  setTag(repo: string, tag: string, img: Img): void {
    this.tags.set(`${repo}:${tag}`, { repo, tag, img });
  }
}

function expectStatus(r: Reply, status: number, what: string): void {
  if (r.status !== status) throw new Error(`${what}: HTTP ${r.status} ${r.body.toString().slice(0, 300)}`);
}

async function pushBlob(base: string, repo: string, data: Buffer, chunked: boolean, signal: AbortSignal): Promise<void> {
  const digest = sha256(data);
  if (!chunked) {
    const r = await http(`${base}/v2/${repo}/blobs/uploads/?digest=${digest}`, { method: 'POST', body: data, signal, headers: { 'content-type': 'application/octet-stream' } });
    return expectStatus(r, 201, `push of ${digest}`);
  }
  const post = await http(`${base}/v2/${repo}/blobs/uploads/`, { method: 'POST', signal });
  expectStatus(post, 202, 'upload start');
  const patch = await http(new URL(post.headers.location!, base).toString(), {
    method: 'PATCH',
    body: data,
    signal,
    headers: { 'content-type': 'application/octet-stream', 'content-range': `0-${data.length - 1}` },
  });
  expectStatus(patch, 202, 'upload chunk');
  const put = new URL(patch.headers.location!, base);
  put.searchParams.set('digest', digest);
  expectStatus(await http(put.toString(), { method: 'PUT', signal }), 201, `upload of ${digest}`);
}

/** Manifest by `ref` and everything the image holds, byte for byte; throws with what differs. */
async function checkImage(base: string, repo: string, ref: string, img: Img, what: string): Promise<void> {
  const top = await http(`${base}/v2/${repo}/manifests/${ref}`, { headers: { accept: ACCEPT } });
  expectStatus(top, 200, `${what}: manifest ${repo}:${ref}`);
  if (top.headers['docker-content-digest'] !== img.digest) throw new Error(`${what}: ${repo}:${ref} is ${top.headers['docker-content-digest']}, not ${img.digest}`);
  if (!top.body.equals(img.manifests.get(img.digest)!)) throw new Error(`${what}: manifest ${repo}:${ref} is not byte-identical`);
  for (const [d, bytes] of img.manifests) {
    if (d === img.digest) continue;
    const r = await http(`${base}/v2/${repo}/manifests/${d}`, { headers: { accept: ACCEPT } });
    expectStatus(r, 200, `${what}: child manifest ${repo}@${d}`);
    if (!r.body.equals(bytes)) throw new Error(`${what}: child manifest ${repo}@${d} is not byte-identical`);
  }
  for (const [d, bytes] of img.blobs) {
    const r = await http(`${base}/v2/${repo}/blobs/${d}`);
    expectStatus(r, 200, `${what}: blob ${repo}@${d}`);
    if (!r.body.equals(bytes)) throw new Error(`${what}: blob ${repo}@${d} is not byte-identical`);
  }
}

/** A prebuilt bundle: an OCI layout tar with a multi-platform index, an image and its SBOM. */
interface Bundle {
  file: string;
  repo: string;
  images: Array<{ tag: string; img: Img }>;
}

async function makeBundle(dir: string, n: number): Promise<Bundle> {
  const layout = await buildImageLayout(join(dir, `layout-${n}`), { seed: 100 + n, layerSize: 12 * 1024, filesPerLayer: 1 });
  const read = (digest: string): Promise<Buffer> => readFile(blobPath(layout.dir, digest));
  const files: TarFile[] = [
    { name: 'oci-layout', content: await readFile(join(layout.dir, 'oci-layout')) },
    { name: 'index.json', content: await readFile(join(layout.dir, 'index.json')) },
  ];
  for (const f of layout.files) files.push({ name: `blobs/sha256/${f.digest.slice('sha256:'.length)}`, content: await read(f.digest) });
  const file = join(dir, `bundle-${n}.tar`);
  await writeFile(file, await makeTar(files));
  const imgOf = async (fi: FixtureImage): Promise<Img> => {
    const manifests = new Map<string, Buffer>([[fi.digest, fi.bytes]]);
    for (const m of fi.manifests) manifests.set(m.digest, m.bytes);
    const blobs = new Map<string, Buffer>();
    for (const b of fi.blobs) blobs.set(b.digest, await read(b.digest));
    return { digest: fi.digest, manifests, blobs };
  };
  return { file, repo: `local.test/churn/imp${n}`, images: await Promise.all(layout.images.map(async (fi) => ({ tag: fi.tag, img: await imgOf(fi) }))) };
}

describe('kill -9 at random moments of concurrent push, pull, delete, import and GC, then fsck and a restart', () => {
  const procs = new ShoalProcesses();
  let work: string;
  const bundles: Bundle[] = [];

  before(async () => {
    work = await procs.tempDir('shoal-crash-churn-');
    for (let n = 0; n < BUNDLES; n++) bundles.push(await makeBundle(work, n));
  });
  after(async () => {
    await procs.cleanup();
    await agent.close();
  });

  it(`loses nothing acknowledged over ${ROUNDS} kills, and fsck finds no inconsistency`, { timeout: 600_000 }, async (t) => {
    const seed = Number(process.env.SHOAL_CRASH_SEED ?? Math.floor(Math.random() * 2 ** 31));
    t.diagnostic(`seed ${seed} (SHOAL_CRASH_SEED=${seed} replays its choices)`);
    const random = prng(seed);
    const pick = <T>(items: T[]): T | undefined => (items.length === 0 ? undefined : items[Math.floor(random() * items.length)]);
    const dataDir = join(work, 'data');
    const ack = new Acknowledged();
    const ms = { work: 0, fsck: 0, restart: 0, verify: 0 };
    let mark = performance.now();
    /** Adds the time since the last lap to `phase`. */
    const lap = (phase: keyof typeof ms): void => {
      const now = performance.now();
      ms[phase] += now - mark;
      mark = now;
    };
    const totals = { pushes: 0, moves: 0, pulls: 0, deletes: 0, gcs: 0, imports: 0, cut: 0, residue: new Map<string, number>() };

    /** One acknowledged tag after a restart: its image whole. */
    const verifyTag = async (node: ShoalProcess, tagged: Tagged): Promise<void> => checkImage(node.url, tagged.repo, tagged.tag, tagged.img, 'after the restart');
    const verifyAll = async (node: ShoalProcess): Promise<void> => {
      for (const tagged of ack.tags.values()) await verifyTag(node, tagged);
      for (const { repo, digest } of ack.deleted.values()) {
        const r = await http(`${node.url}/v2/${repo}/manifests/${digest}`, { method: 'HEAD', headers: { accept: ACCEPT } });
        assert.equal(r.status, 404, `deleted ${repo}@${digest} came back`);
      }
    };

    let node = await procs.serve({ dataDir, env: NODE_ENV });
    // One import acknowledged before the first kill, so that every round has an imported image to lose; the other
    // bundles are first imported while the kills come.
    {
      const target = new NodeTarget({ url: node.url });
      await importBundle({ input: await openBundleInput(bundles[0]!.file), target, repository: bundles[0]!.repo, progress: new SilentProgress() });
      await target.close();
      for (const { tag, img } of bundles[0]!.images) ack.setTag(bundles[0]!.repo, tag, img);
    }
    for (let round = 1; round <= ROUNDS; round++) {
      const where = `round ${round}`;
      const stop = new AbortController();
      const failures: string[] = [];
      let killed = false;
      /** An error before the kill is a failure; after it, the operation is cut and stays pending. */
      const guard = async (what: string, body: () => Promise<void>): Promise<void> => {
        try {
          await body();
        } catch (err) {
          if (!killed) failures.push(`${what}: ${(err as Error).message}`);
        }
      };
      const base = node.url;
      const touched: Tagged[] = [];

      const pusher = (name: string, repo: string, chunked: boolean) =>
        guard(`pusher ${name}`, async () => {
          for (let n = 0; !stop.signal.aborted; n++) {
            const img0 = randomImage(Array.from({ length: 1 + Math.floor(random() * 3) }, () => 500 + Math.floor(random() * 120_000)));
            const img: Img = { digest: img0.digest, manifests: new Map([[img0.digest, img0.manifest]]), blobs: img0.blobs };
            const tag = `${name}-${round}-${n}`;
            const moveLatest = random() < 0.4 && !ack.busy.has(`${repo}:latest`);
            const pend: Pending = { kind: 'tag', repo, tag, after: img };
            ack.pending.add(pend);
            let move: Pending | undefined;
            if (moveLatest) {
              ack.busy.add(`${repo}:latest`);
              move = { kind: 'tag', repo, tag: 'latest', before: ack.tags.get(`${repo}:latest`)?.img, after: img };
              ack.pending.add(move);
            }
            for (const b of img.blobs.values()) await pushBlob(base, repo, b, chunked, stop.signal);
            const put = await http(`${base}/v2/${repo}/manifests/${tag}`, { method: 'PUT', body: img0.manifest, signal: stop.signal, headers: { 'content-type': OCI_MANIFEST } });
            expectStatus(put, 201, `manifest ${repo}:${tag}`);
            if (move) {
              const latest = await http(`${base}/v2/${repo}/manifests/latest`, { method: 'PUT', body: img0.manifest, signal: stop.signal, headers: { 'content-type': OCI_MANIFEST } });
              expectStatus(latest, 201, `manifest ${repo}:latest`);
              ack.setTag(repo, 'latest', img);
              ack.pending.delete(move);
              ack.busy.delete(`${repo}:latest`);
              totals.moves++;
            }
            // Published only now, so that the deleter cannot pick it while `latest` moves to it.
            ack.setTag(repo, tag, img);
            ack.pending.delete(pend);
            touched.push(ack.tags.get(`${repo}:${tag}`)!);
            totals.pushes++;
          }
        });

      const puller = () =>
        guard('puller', async () => {
          while (!stop.signal.aborted) {
            const candidates = [...ack.tags.values()].filter((x) => x.tag !== 'latest' && !ack.busy.has(`${x.repo}:${x.tag}`));
            const chosen = pick(candidates);
            if (!chosen) {
              await sleep(20);
              continue;
            }
            ack.reading.set(chosen.img.digest, (ack.reading.get(chosen.img.digest) ?? 0) + 1);
            try {
              await checkImage(base, chosen.repo, chosen.tag, chosen.img, 'pull');
            } finally {
              const n = ack.reading.get(chosen.img.digest)! - 1;
              if (n === 0) ack.reading.delete(chosen.img.digest);
              else ack.reading.set(chosen.img.digest, n);
            }
            totals.pulls++;
          }
        });

      const deleter = () =>
        guard('deleter', async () => {
          while (!stop.signal.aborted) {
            await sleep(50 + Math.floor(random() * 300), undefined, { signal: stop.signal }).catch(() => undefined);
            if (stop.signal.aborted) return;
            const candidates = [...ack.tags.values()].filter((x) => x.repo === 'churn/a' && x.tag !== 'latest');
            const chosen = pick(candidates);
            if (!chosen || ack.reading.has(chosen.img.digest)) continue;
            const tags = [...ack.tags.values()].filter((x) => x.repo === chosen.repo && x.img.digest === chosen.img.digest).map((x) => x.tag);
            if (tags.includes('latest') || tags.some((tag) => ack.busy.has(`${chosen.repo}:${tag}`))) continue;
            for (const tag of tags) ack.busy.add(`${chosen.repo}:${tag}`);
            const pend: Pending = { kind: 'delete', repo: chosen.repo, img: chosen.img, tags };
            ack.pending.add(pend);
            const r = await http(`${base}/v2/${chosen.repo}/manifests/${chosen.img.digest}`, { method: 'DELETE', signal: stop.signal });
            expectStatus(r, 202, `delete of ${chosen.repo}@${chosen.img.digest}`);
            for (const tag of tags) {
              ack.tags.delete(`${chosen.repo}:${tag}`);
              ack.busy.delete(`${chosen.repo}:${tag}`);
            }
            ack.deleted.set(`${chosen.repo}@${chosen.img.digest}`, { repo: chosen.repo, digest: chosen.img.digest });
            ack.pending.delete(pend);
            totals.deletes++;
          }
        });

      const collector = () =>
        guard('gc', async () => {
          while (!stop.signal.aborted) {
            expectStatus(await http(`${base}/shoal/gc`, { method: 'POST', signal: stop.signal }), 200, 'gc');
            totals.gcs++;
            await sleep(30 + Math.floor(random() * 250), undefined, { signal: stop.signal }).catch(() => undefined);
          }
        });

      const bundle = bundles[round % BUNDLES]!;
      const importer = () =>
        guard(`import of ${bundle.file}`, async () => {
          const pend: Pending = { kind: 'import', repo: bundle.repo, images: bundle.images };
          ack.pending.add(pend);
          const target = new NodeTarget({ url: base });
          try {
            await importBundle({ input: await openBundleInput(bundle.file), target, repository: bundle.repo, progress: new SilentProgress(), signal: stop.signal });
          } finally {
            await target.close().catch(() => undefined);
          }
          for (const { tag, img } of bundle.images) {
            ack.setTag(bundle.repo, tag, img);
            touched.push(ack.tags.get(`${bundle.repo}:${tag}`)!);
          }
          ack.pending.delete(pend);
          totals.imports++;
        });

      lap('verify');
      const work = Promise.all([pusher('a', 'churn/a', false), pusher('b', 'churn/b', true), puller(), deleter(), collector(), importer()]);
      // Some kills early (sessions, the first records), most while everything runs, some late enough for an import.
      const dice = random();
      const killAfterMs = Math.floor(dice < 0.2 ? random() * 150 : dice < 0.75 ? 150 + random() * 850 : 1_000 + random() * 1_500);
      await sleep(killAfterMs);
      killed = true;
      const exit = await node.kill();
      stop.abort();
      await work;
      assert.equal(exit.signal, 'SIGKILL', `${where}: ${node.describe()}`);
      assert.deepEqual(failures, [], `${where}: operations failed while the node was up`);

      lap('work');
      // The store as the crash left it: only what kill -9 may leave. Records against files and sizes here; every
      // byte is hashed at the clean stops.
      const crashed = await fsckDataDir(dataDir, { fast: true });
      lap('fsck');
      const unexpected = crashed.problems.filter((p) => !CRASH_RESIDUE.has(p.kind));
      assert.deepEqual(describeProblems(unexpected), [], `${where}: fsck of the crashed store found an inconsistency`);
      for (const p of crashed.problems) totals.residue.set(p.kind, (totals.residue.get(p.kind) ?? 0) + 1);

      node = await procs.serve({ dataDir, env: NODE_ENV });
      lap('restart');
      assert.deepEqual(await readdir(join(dataDir, 'ingest')), [], `${where}: ingest/ is empty after the restart`);

      // What the kill cut: whole or absent (a moved tag: old or new; a delete: all of it or none).
      totals.cut += ack.pending.size;
      for (const pend of ack.pending) {
        if (pend.kind === 'tag') {
          const key = `${pend.repo}:${pend.tag}`;
          ack.busy.delete(key);
          const r = await http(`${node.url}/v2/${pend.repo}/manifests/${pend.tag}`, { method: 'HEAD', headers: { accept: ACCEPT } });
          if (r.status === 404) {
            assert.equal(pend.before, undefined, `${where}: ${key} was acknowledged before the cut move and is gone`);
            continue;
          }
          assert.equal(r.status, 200, `${where}: ${key}: ${r.status}`);
          const img = r.headers['docker-content-digest'] === pend.after.digest ? pend.after : pend.before;
          assert.ok(img && r.headers['docker-content-digest'] === img.digest, `${where}: ${key} points at ${r.headers['docker-content-digest']}, neither old nor new`);
          await checkImage(node.url, pend.repo, pend.tag, img, `${where}: cut push of ${key}`);
          ack.setTag(pend.repo, pend.tag, img);
        } else if (pend.kind === 'delete') {
          const r = await http(`${node.url}/v2/${pend.repo}/manifests/${pend.img.digest}`, { method: 'HEAD', headers: { accept: ACCEPT } });
          const gone = r.status === 404;
          if (!gone) assert.equal(r.status, 200, `${where}: cut delete of ${pend.img.digest}: ${r.status}`);
          for (const tag of pend.tags) {
            const tr = await http(`${node.url}/v2/${pend.repo}/manifests/${tag}`, { method: 'HEAD', headers: { accept: ACCEPT } });
            assert.equal(tr.status, gone ? 404 : 200, `${where}: cut delete of ${pend.img.digest} took the manifest ${gone ? 'but not' : 'and not'} its tag ${tag}`);
            ack.busy.delete(`${pend.repo}:${tag}`);
            if (gone) ack.tags.delete(`${pend.repo}:${tag}`);
          }
          if (gone) ack.deleted.set(`${pend.repo}@${pend.img.digest}`, { repo: pend.repo, digest: pend.img.digest });
          else for (const tag of pend.tags) await checkImage(node.url, pend.repo, tag, pend.img, `${where}: image of a cut delete`);
        } else {
          for (const { tag, img } of pend.images) {
            const r = await http(`${node.url}/v2/${pend.repo}/manifests/${tag}`, { method: 'HEAD', headers: { accept: ACCEPT } });
            if (r.status === 404) {
              assert.equal(ack.tags.has(`${pend.repo}:${tag}`), false, `${where}: ${pend.repo}:${tag}, imported before, is gone`);
              continue;
            }
            await checkImage(node.url, pend.repo, tag, img, `${where}: image of a cut import`);
            ack.setTag(pend.repo, tag, img);
          }
        }
      }
      ack.pending.clear();
      assert.equal(ack.busy.size, 0, `${where}: busy tags left: ${[...ack.busy].join(', ')}`);

      // Nothing acknowledged is lost: this round's images and a sample of the older ones; deletes stay deleted.
      const older = [...ack.tags.values()];
      const sample = new Set([...touched.filter((x) => ack.tags.get(`${x.repo}:${x.tag}`) === x), ...Array.from({ length: 6 }, () => pick(older)!).filter(Boolean)]);
      for (const key of ['churn/a:latest', 'churn/b:latest']) if (ack.tags.has(key)) sample.add(ack.tags.get(key)!);
      for (const tagged of sample) await verifyTag(node, tagged);
      const deleted = [...ack.deleted.values()];
      for (const { repo, digest } of deleted.slice(-20)) {
        const r = await http(`${node.url}/v2/${repo}/manifests/${digest}`, { method: 'HEAD', headers: { accept: ACCEPT } });
        assert.equal(r.status, 404, `${where}: deleted ${repo}@${digest} came back`);
      }
      t.diagnostic(
        `${where}: killed after ${killAfterMs} ms; residue: ${describeProblems(crashed.problems).map((l) => l.split(' ')[0]).join(', ') || 'none'}; ${ack.tags.size} tags, ${ack.deleted.size} deleted`,
      );

      if (round % CLEAN_CHECK_EVERY === 0 && round < ROUNDS) {
        await verifyAll(node);
        assert.deepEqual(await node.terminate(), { code: 0, signal: null }, node.describe());
        const clean = await fsckDataDir(dataDir);
        assert.deepEqual(describeProblems(clean.problems), [], `${where}: fsck after a clean stop`);
        node = await procs.serve({ dataDir, env: NODE_ENV });
      }
    }

    await verifyAll(node);
    assert.deepEqual(await node.terminate(), { code: 0, signal: null }, node.describe());
    const final = await runShoal(['fsck', '--data', dataDir]);
    assert.equal(final.code, 0, `shoal fsck at the end:\n${final.stdout}\n${final.stderr}`);
    assert.match(final.stdout, /0 problem\(s\); the store is sound/);
    t.diagnostic(
      `acknowledged: ${totals.pushes} pushes, ${totals.moves} tag moves, ${totals.pulls} pulls, ${totals.deletes} deletes, ${totals.gcs} collections, ${totals.imports} imports; ` +
        `${totals.cut} operations cut by kills; crash residue repaired at restart: ${[...totals.residue].map(([k, n]) => `${k} ${n}`).join(', ') || 'none'}`,
    );
    t.diagnostic(`time: ${Object.entries(ms).map(([k, v]) => `${k} ${(v / 1000).toFixed(1)} s`).join(', ')}`);
  });
});
