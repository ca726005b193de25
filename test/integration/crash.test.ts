/**
 * kill -9 at random moments of a push, then a restart on the same data dir: the store must be consistent
 * (docs/ARCHITECTURE.md, "Storage"). Each round commits some blobs, a manifest and a tag, then runs at once
 *   - a chunked upload (1 MiB PATCHes with Content-Range) followed by a streamed PATCH that stays open, and
 *   - a monolithic `POST ?digest=` of a big blob whose body arrives slowly,
 * and SIGKILLs the node at a random moment. After the restart: everything committed serves byte-identical,
 * the interrupted digests are 404, no blob file holds anything but its digest's bytes, ingest/ is empty, and
 * the interrupted session either resumes from the Range it reports and completes, or is 404.
 *
 * SHOAL_CRASH_SEED=<n> replays a run (the seed is printed as a diagnostic).
 */
import { describe, it, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { request as httpRequest, type ClientRequest } from 'node:http';
import { readdir, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { Agent, request } from 'undici';
import { ShoalProcesses, type ShoalProcess } from '../helpers/spawn-node.ts';
import { httpClient, type Reply } from '../helpers/http.ts';
import { prng } from '../helpers/prng.ts';

const MiB = 1024 * 1024;
const ROUNDS = 5;
const REPO = 'crash/app';

const sha256 = (b: Uint8Array): string => `sha256:${createHash('sha256').update(b).digest('hex')}`;


const agent = new Agent({ keepAliveTimeout: 1_000, connections: 16 });

const http = httpClient(agent, 15_000);

async function pushBlob(base: string, repo: string, data: Buffer): Promise<string> {
  const digest = sha256(data);
  const res = await http(`${base}/v2/${repo}/blobs/uploads/?digest=${digest}`, {
    method: 'POST',
    body: data,
    headers: { 'content-type': 'application/octet-stream' },
  });
  assert.equal(res.status, 201, res.body.toString());
  return digest;
}

interface Committed {
  blobs: Map<string, Buffer>;
  manifests: Map<string, Buffer>;
  tags: Map<string, string>;
}

const MANIFEST_TYPE = 'application/vnd.oci.image.manifest.v1+json';

async function pushImage(base: string, repo: string, tag: string, committed: Committed): Promise<void> {
  const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', tag, rootfs: { type: 'layers', diff_ids: [] } }));
  const layers = [randomBytes(100_000 + Math.floor(Math.random() * 50_000)), randomBytes(3_000)];
  const configDigest = await pushBlob(base, repo, config);
  committed.blobs.set(configDigest, config);
  const descs = [];
  for (const l of layers) {
    const d = await pushBlob(base, repo, l);
    committed.blobs.set(d, l);
    descs.push({ mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', digest: d, size: l.length });
  }
  const manifest = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: MANIFEST_TYPE,
      config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: configDigest, size: config.length },
      layers: descs,
    }),
  );
  const res = await http(`${base}/v2/${repo}/manifests/${tag}`, { method: 'PUT', body: manifest, headers: { 'content-type': MANIFEST_TYPE } });
  assert.equal(res.status, 201, res.body.toString());
  const digest = sha256(manifest);
  assert.equal(res.headers['docker-content-digest'], digest);
  committed.manifests.set(digest, manifest);
  committed.tags.set(tag, digest);
}

/** What the client of the interrupted chunked upload knows. */
interface SessionProgress {
  location?: string;
  /** Bytes the server acknowledged (Range of the last 202). */
  acked: number;
  /** Bytes handed to the connection so far (an upper bound for what the server can have). */
  sent: number;
  phase: string;
}

/** Writes `data` into a request in pieces, slowly, until `limit` bytes or `stop`; never ends the request. */
async function trickle(req: ClientRequest, data: Buffer, from: number, limit: number, piece: number, pauseMs: number, stop: AbortSignal, onSent: (n: number) => void): Promise<void> {
  let at = from;
  let failed = false;
  req.on('error', () => (failed = true));
  while (at < limit && !stop.aborted && !failed) {
    const end = Math.min(limit, at + piece);
    onSent(end - at);
    if (!req.write(data.subarray(at, end))) await Promise.race([new Promise((ok) => req.once('drain', ok)), sleep(200)]);
    at = end;
    await sleep(pauseMs);
  }
}

/** POST, some 1 MiB PATCH chunks with Content-Range, then a streamed PATCH that never ends. */
async function interruptedChunkedUpload(base: string, blob: Buffer, chunks: number, progress: SessionProgress, stop: AbortSignal): Promise<void> {
  try {
    progress.phase = 'post';
    const post = await http(`${base}/v2/${REPO}/blobs/uploads/`, { method: 'POST', signal: stop });
    if (post.status !== 202) return;
    progress.location = post.headers.location!;
    const url = new URL(progress.location, base).toString();
    for (let i = 0; i < chunks && !stop.aborted; i++) {
      progress.phase = `chunk ${i}`;
      const start = i * MiB;
      const chunk = blob.subarray(start, start + MiB);
      progress.sent = start + chunk.length;
      const r = await http(url, {
        method: 'PATCH',
        body: chunk,
        signal: stop,
        headers: { 'content-type': 'application/octet-stream', 'content-range': `${start}-${start + chunk.length - 1}` },
      });
      assert.equal(r.status, 202, r.body.toString());
      const m = /^0-(\d+)$/.exec(r.headers.range ?? '');
      assert.ok(m, `Range ${r.headers.range}`);
      progress.acked = Number(m[1]) + 1;
    }
    if (stop.aborted) return;
    progress.phase = 'streamed patch';
    const req = httpRequest(url, { method: 'PATCH', headers: { 'content-type': 'application/octet-stream', 'transfer-encoding': 'chunked' } });
    req.on('error', () => undefined);
    req.on('response', (res) => res.resume());
    stop.addEventListener('abort', () => req.destroy(), { once: true });
    // Never the whole blob, so that this upload cannot complete before the kill.
    await trickle(req, blob, progress.acked, blob.length - MiB, 64 * 1024, 10, stop, (n) => (progress.sent += n));
    if (!stop.aborted) progress.phase = 'streamed patch (stalled, open)';
  } catch {
    // The node was killed under us.
  }
}

/** `POST ?digest=` with the full Content-Length whose body arrives slowly and never completes. */
async function interruptedMonolithicUpload(base: string, blob: Buffer, stop: AbortSignal): Promise<void> {
  const digest = sha256(blob);
  const req = httpRequest(`${base}/v2/${REPO}/blobs/uploads/?digest=${digest}`, {
    method: 'POST',
    headers: { 'content-type': 'application/octet-stream', 'content-length': String(blob.length) },
  });
  req.on('error', () => undefined);
  req.on('response', (res) => res.resume());
  stop.addEventListener('abort', () => req.destroy(), { once: true });
  await trickle(req, blob, 0, blob.length - 1, 64 * 1024, 8, stop, () => undefined);
}

/** Small monolithic pushes one after another until `stop`: what got 201 is committed, the one in flight is not known. */
async function committingPusher(base: string, committed: Committed, inFlight: Set<string>, stop: AbortSignal): Promise<void> {
  while (!stop.aborted) {
    const data = randomBytes(10_000 + Math.floor(Math.random() * 200_000));
    const digest = sha256(data);
    inFlight.add(digest);
    try {
      const r = await http(`${base}/v2/${REPO}/blobs/uploads/?digest=${digest}`, {
        method: 'POST',
        body: data,
        signal: stop,
        headers: { 'content-type': 'application/octet-stream' },
      });
      if (r.status === 201) {
        committed.blobs.set(digest, data);
        inFlight.delete(digest);
      }
    } catch {
      return; // killed: this one stays in flight, so either outcome is fine
    }
    await sleep(5);
  }
}

async function listBlobFiles(dataDir: string): Promise<string[]> {
  const out: string[] = [];
  const root = join(dataDir, 'blobs', 'sha256');
  for (const prefix of await readdir(root).catch(() => [] as string[])) {
    for (const hex of await readdir(join(root, prefix))) out.push(`sha256:${hex}`);
  }
  return out;
}

function blobFile(dataDir: string, digest: string): string {
  const hex = digest.slice('sha256:'.length);
  return join(dataDir, 'blobs', 'sha256', hex.slice(0, 2), hex);
}

/** Everything committed serves byte-identical; every blob file holds its digest's bytes. */
async function checkCommitted(node: ShoalProcess, dataDir: string, committed: Committed, where: string): Promise<void> {
  for (const [d, b] of committed.blobs) {
    const r = await http(`${node.url}/v2/${REPO}/blobs/${d}`);
    assert.equal(r.status, 200, `${where}: committed blob ${d}`);
    assert.ok(r.body.equals(b), `${where}: committed blob ${d} is not byte-identical`);
  }
  for (const [d, b] of committed.manifests) {
    const r = await http(`${node.url}/v2/${REPO}/manifests/${d}`, { headers: { accept: MANIFEST_TYPE } });
    assert.equal(r.status, 200, `${where}: committed manifest ${d}`);
    assert.ok(r.body.equals(b), `${where}: manifest ${d} is not byte-identical`);
    assert.equal(r.headers['content-type'], MANIFEST_TYPE);
  }
  for (const [tag, d] of committed.tags) {
    const r = await http(`${node.url}/v2/${REPO}/manifests/${tag}`, { headers: { accept: MANIFEST_TYPE } });
    assert.equal(r.status, 200, `${where}: tag ${tag}`);
    assert.equal(r.headers['docker-content-digest'], d, `${where}: tag ${tag} points elsewhere`);
    assert.ok(r.body.equals(committed.manifests.get(d)!));
  }
  const tags = await http(`${node.url}/v2/${REPO}/tags/list`);
  assert.equal(tags.status, 200);
  assert.deepEqual(new Set((JSON.parse(tags.body.toString()) as { tags: string[] }).tags), new Set(committed.tags.keys()), `${where}: tags/list`);
  for (const d of await listBlobFiles(dataDir)) {
    const bytes = await readFile(blobFile(dataDir, d));
    assert.equal(sha256(bytes), d, `${where}: blob file ${d} holds other bytes (a partial blob)`);
  }
}

describe('kill -9 during pushes, then restart on the same data dir', () => {
  const procs = new ShoalProcesses();
  after(async () => {
    await procs.cleanup();
    await agent.close();
  });

  it(`keeps the store consistent over ${ROUNDS} kills at random moments`, { timeout: 120_000 }, async (t) => {
    const seed = Number(process.env.SHOAL_CRASH_SEED ?? Math.floor(Math.random() * 2 ** 31));
    t.diagnostic(`seed ${seed} (SHOAL_CRASH_SEED=${seed} replays it)`);
    const random = prng(seed);
    const dataDir = join(await procs.tempDir('shoal-crash-'), 'data');
    const committed: Committed = { blobs: new Map(), manifests: new Map(), tags: new Map() };

    let node = await procs.serve({ dataDir });
    for (let round = 0; round < ROUNDS; round++) {
      const where = `round ${round + 1}`;
      await pushImage(node.url, REPO, `r${round}`, committed);
      if (round > 0) await pushImage(node.url, REPO, 'latest', committed); // a tag that moves

      const big = randomBytes(8 * MiB);
      const mono = randomBytes(6 * MiB);
      const chunks = 1 + Math.floor(random() * 4);
      // Some kills early (session creation, the first chunks), most during the chunks or the streamed PATCH.
      const killAfterMs = random() < 0.3 ? Math.floor(random() * 60) : 60 + Math.floor(random() * 1_200);
      const progress: SessionProgress = { acked: 0, sent: 0, phase: 'start' };
      const stop = new AbortController();
      const inFlight = new Set<string>();
      const work = Promise.all([
        interruptedChunkedUpload(node.url, big, chunks, progress, stop.signal),
        interruptedMonolithicUpload(node.url, mono, stop.signal),
        committingPusher(node.url, committed, inFlight, stop.signal),
      ]);
      await sleep(killAfterMs);
      const phase = progress.phase;
      const exit = await node.kill();
      stop.abort();
      await work;
      assert.equal(exit.signal, 'SIGKILL');
      t.diagnostic(`${where}: killed after ${killAfterMs} ms in phase "${phase}" (acked ${progress.acked}, sent ${progress.sent})`);

      node = await procs.serve({ dataDir });
      assert.deepEqual(await readdir(join(dataDir, 'ingest')), [], `${where}: ingest/ is empty after the restart`);
      const catalog = await http(`${node.url}/v2/_catalog`);
      assert.equal(catalog.status, 200);
      assert.ok((JSON.parse(catalog.body.toString()) as { repositories: string[] }).repositories.includes(REPO));

      // Interrupted digests are not visible, neither through the API nor as files.
      for (const d of [sha256(big), sha256(mono)]) {
        assert.equal((await http(`${node.url}/v2/${REPO}/blobs/${d}`)).status, 404, `${where}: interrupted blob ${d} is visible`);
        assert.equal((await http(`${node.url}/v2/${REPO}/blobs/${d}`, { method: 'HEAD' })).status, 404);
        assert.equal(await stat(blobFile(dataDir, d)).catch(() => undefined), undefined, `${where}: a file exists for interrupted ${d}`);
      }
      // Every push acknowledged with 201 before the kill is there (checked below); the ones cut mid-way are
      // either absent or whole.
      for (const d of inFlight) {
        const r = await http(`${node.url}/v2/${REPO}/blobs/${d}`);
        assert.ok(r.status === 404 || (r.status === 200 && sha256(r.body) === d), `${where}: cut push ${d}: ${r.status}`);
      }
      await checkCommitted(node, dataDir, committed, where);

      // The interrupted session: resumes from its reported Range, or is gone.
      if (progress.location) {
        const url = new URL(progress.location, node.url);
        const status = await http(url.toString());
        if (status.status === 404) {
          t.diagnostic(`${where}: the session was dropped (404)`);
        } else {
          assert.equal(status.status, 204, `${where}: session status ${status.status} ${status.body.toString()}`);
          const m = /^0-(\d+)$/.exec(status.headers.range ?? '');
          assert.ok(m, `${where}: Range ${status.headers.range}`);
          const durable = m[1] === '0' ? 0 : Number(m[1]) + 1;
          // `0-0` is both "empty" and "one byte"; the client sends whole chunks, so one byte cannot be it.
          assert.ok(durable >= progress.acked, `${where}: session has ${durable} bytes but ${progress.acked} were acknowledged`);
          assert.ok(durable <= progress.sent, `${where}: session has ${durable} bytes but only ${progress.sent} were sent`);
          t.diagnostic(`${where}: session resumes at ${durable}`);
          const rest = big.subarray(durable);
          const patch = await http(url.toString(), {
            method: 'PATCH',
            body: rest,
            headers: { 'content-type': 'application/octet-stream', 'content-range': `${durable}-${big.length - 1}` },
          });
          assert.equal(patch.status, 202, `${where}: resuming PATCH ${patch.body.toString()}`);
          assert.equal(patch.headers.range, `0-${big.length - 1}`);
          const put = new URL(patch.headers.location!, node.url);
          put.searchParams.set('digest', sha256(big));
          const done = await http(put.toString(), { method: 'PUT' });
          assert.equal(done.status, 201, `${where}: closing PUT ${done.body.toString()}`);
          const got = await http(`${node.url}/v2/${REPO}/blobs/${sha256(big)}`);
          assert.equal(got.status, 200);
          assert.ok(got.body.equals(big), `${where}: resumed blob is not byte-identical`);
          committed.blobs.set(sha256(big), big);
        }
      }
      // The monolithic upload can simply be sent again.
      committed.blobs.set(await pushBlob(node.url, REPO, mono), mono);
    }

    await checkCommitted(node, dataDir, committed, 'end');
    // A graceful stop still works after all this.
    assert.deepEqual(await node.terminate(), { code: 0, signal: null }, node.describe());
    node = await procs.serve({ dataDir });
    await checkCommitted(node, dataDir, committed, 'after a clean restart');
    assert.deepEqual(await node.terminate(), { code: 0, signal: null });
  });
});
