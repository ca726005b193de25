/**
 * `shoal serve` spawned as a user runs it: endpoints, logs, flags, config sources, exit codes and
 * shutdown on SIGTERM (also in the middle of a streamed upload).
 */
import { describe, it, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { request as httpRequest } from 'node:http';
import { readdir, readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { Agent, request } from 'undici';
import { ShoalProcesses, runShoal } from '../helpers/spawn-node.ts';
import { httpClient, type Reply } from '../helpers/http.ts';

const sha256 = (b: Uint8Array): string => `sha256:${createHash('sha256').update(b).digest('hex')}`;

const agent = new Agent({ keepAliveTimeout: 1_000, connections: 16 });

const http = httpClient(agent, 15_000);

/** Monolithic push: POST a session, PUT ?digest= with the whole body. */
async function pushBlob(base: string, repo: string, data: Buffer): Promise<string> {
  const digest = sha256(data);
  const post = await http(`${base}/v2/${repo}/blobs/uploads/`, { method: 'POST' });
  assert.equal(post.status, 202, post.body.toString());
  const put = new URL(post.headers.location!, base);
  put.searchParams.set('digest', digest);
  const res = await http(put.toString(), { method: 'PUT', body: data, headers: { 'content-type': 'application/octet-stream' } });
  assert.equal(res.status, 201, res.body.toString());
  assert.equal(res.headers['docker-content-digest'], digest);
  return digest;
}

/** Every file under blobs/ holds exactly the bytes its name says (no partial blob anywhere). */
async function assertBlobFilesVerify(dataDir: string): Promise<string[]> {
  const found: string[] = [];
  const root = join(dataDir, 'blobs', 'sha256');
  for (const prefix of await readdir(root).catch(() => [] as string[])) {
    for (const hex of await readdir(join(root, prefix))) {
      const bytes = await readFile(join(root, prefix, hex));
      assert.equal(sha256(bytes), `sha256:${hex}`, `blob file ${prefix}/${hex} does not hold its digest's bytes`);
      found.push(`sha256:${hex}`);
    }
  }
  return found;
}

function noStackTrace(stderr: string): void {
  assert.doesNotMatch(stderr, /^\s+at .+[:(]/m, `stderr has a stack trace:\n${stderr}`);
}

describe('shoal CLI (spawned)', () => {
  const procs = new ShoalProcesses();
  after(async () => {
    await procs.cleanup();
    await agent.close();
  });

  describe('help and bad input', () => {
    it('--help exits 0 and lists the serve command', async () => {
      const r = await runShoal(['--help']);
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stdout, /Usage: shoal/);
      assert.match(r.stdout, /\bserve\b/);
    });

    it('serve --help exits 0 and lists its flags', async () => {
      const r = await runShoal(['serve', '--help']);
      assert.equal(r.code, 0, r.stderr);
      for (const flag of ['--data', '--listen', '--config', '--log-level']) assert.ok(r.stdout.includes(flag), `serve --help does not mention ${flag}:\n${r.stdout}`);
    });

    it('--listen nonsense exits 2 with a clear message and no stack trace', async () => {
      const data = await procs.tempDir();
      const r = await runShoal(['serve', '--data', data, '--listen', 'nonsense']);
      assert.equal(r.code, 2, `exit ${r.code}; stderr:\n${r.stderr}`);
      assert.match(r.stderr, /listen/);
      assert.match(r.stderr, /nonsense/);
      assert.match(r.stderr, /HOST:PORT/);
      noStackTrace(r.stderr);
      assert.ok(!r.stdout.includes('"listening"'), 'it must not start');
    });

    it('--listen with a port out of range exits 2', async () => {
      const data = await procs.tempDir();
      const r = await runShoal(['serve', '--data', data, '--listen', '127.0.0.1:70000']);
      assert.equal(r.code, 2, `exit ${r.code}; stderr:\n${r.stderr}`);
      assert.match(r.stderr, /70000/);
      noStackTrace(r.stderr);
    });

    it('--log-level x exits 2 and names the allowed levels', async () => {
      const data = await procs.tempDir();
      const r = await runShoal(['serve', '--data', data, '--listen', '127.0.0.1:0', '--log-level', 'x']);
      assert.equal(r.code, 2, `exit ${r.code}; stderr:\n${r.stderr}`);
      assert.match(r.stderr, /log-level/);
      assert.match(r.stderr, /info/);
      noStackTrace(r.stderr);
      assert.ok(!r.stdout.includes('"listening"'), 'it must not start');
    });

    it('an unknown key in the config file exits 2 and names the key and the file', async () => {
      const dir = await procs.tempDir();
      const file = join(dir, 'shoal.yaml');
      await writeFile(file, 'listen: 127.0.0.1:0\nlistenn: 127.0.0.1:0\n');
      const r = await runShoal(['serve', '--data', join(dir, 'data'), '-c', file]);
      assert.equal(r.code, 2, `exit ${r.code}; stderr:\n${r.stderr}`);
      assert.match(r.stderr, /listenn/);
      assert.ok(r.stderr.includes(file), `stderr does not name the file:\n${r.stderr}`);
      noStackTrace(r.stderr);
      assert.ok(!r.stdout.includes('"listening"'), 'it must not start');
    });

    it('a config file that does not exist, or is not a mapping, exits 2', async () => {
      const dir = await procs.tempDir();
      const missing = await runShoal(['serve', '--data', join(dir, 'data'), '--listen', '127.0.0.1:0', '-c', join(dir, 'nope.yaml')]);
      assert.equal(missing.code, 2, missing.stderr);
      assert.match(missing.stderr, /nope\.yaml/);
      noStackTrace(missing.stderr);
      const list = join(dir, 'list.yaml');
      await writeFile(list, '- a\n- b\n');
      const r = await runShoal(['serve', '--data', join(dir, 'data'), '--listen', '127.0.0.1:0', '-c', list]);
      assert.equal(r.code, 2, r.stderr);
      noStackTrace(r.stderr);
    });

    it('a wrongly typed setting in the environment exits 2 and says where it came from', async () => {
      const dir = await procs.tempDir();
      const r = await runShoal(['serve', '--data', join(dir, 'data'), '--listen', '127.0.0.1:0'], { env: { SHOAL_SHUTDOWN_GRACE_MS: 'soon' } });
      assert.equal(r.code, 2, r.stderr);
      assert.match(r.stderr, /shutdownGraceMs/);
      assert.match(r.stderr, /environment/);
      noStackTrace(r.stderr);
    });
  });

  describe('a running node', () => {
    it('serves /v2/, /healthz, /readyz and /metrics, logs one line per request, stops on SIGTERM', async () => {
      const data = await procs.tempDir();
      const node = await procs.serve({ dataDir: data });
      assert.match(node.url, /^http:\/\/127\.0\.0\.1:\d+$/);
      assert.ok(node.port > 0);

      const base = await http(`${node.url}/v2/`);
      assert.equal(base.status, 200);
      assert.deepEqual(JSON.parse(base.body.toString()), {});
      assert.equal(base.headers['docker-distribution-api-version'], 'registry/2.0');

      const health = await http(`${node.url}/healthz`);
      assert.equal(health.status, 200);
      const ready = await http(`${node.url}/readyz`);
      assert.equal(ready.status, 200);

      // Some traffic so that the counters have samples.
      const blob = randomBytes(200_000);
      const digest = await pushBlob(node.url, 'e2e/metrics', blob);
      const pulled = await http(`${node.url}/v2/e2e/metrics/blobs/${digest}`);
      assert.equal(pulled.status, 200);
      assert.ok(pulled.body.equals(blob));
      const missing = await http(`${node.url}/v2/e2e/metrics/blobs/sha256:${'0'.repeat(64)}`);
      assert.equal(missing.status, 404);

      const metrics = await http(`${node.url}/metrics`);
      assert.equal(metrics.status, 200);
      assert.match(metrics.headers['content-type'] ?? '', /^text\/plain/);
      const text = metrics.body.toString();
      assert.match(text, /^# TYPE shoal_http_requests_total counter$/m);
      assert.match(text, /^shoal_http_requests_total\{[^}]*status="200"[^}]*\} \d+/m);
      assert.match(text, /^shoal_http_requests_total\{[^}]*status="404"[^}]*\} \d+/m);
      assert.match(text, /^# TYPE shoal_store_bytes gauge$/m);
      const storeBytes = /^shoal_store_bytes (\d+)$/m.exec(text);
      assert.ok(storeBytes, `no shoal_store_bytes sample in:\n${text}`);
      assert.equal(Number(storeBytes[1]), blob.length);
      assert.match(text, /^# TYPE shoal_served_bytes_total counter$/m);
      const served = /^shoal_served_bytes_total\{kind="blob"\} (\d+)$/m.exec(text);
      assert.ok(served, `no shoal_served_bytes_total{kind="blob"} sample in:\n${text}`);
      assert.ok(Number(served[1]) >= blob.length, `served ${served[1]} < ${blob.length}`);

      // One JSON line per request, with method, path and status.
      const expected: [string, string, number][] = [
        ['GET', '/v2/', 200],
        ['GET', '/healthz', 200],
        ['GET', '/readyz', 200],
        ['POST', '/v2/e2e/metrics/blobs/uploads/', 202],
        ['GET', `/v2/e2e/metrics/blobs/${digest}`, 200],
        ['GET', `/v2/e2e/metrics/blobs/sha256:${'0'.repeat(64)}`, 404],
        ['GET', '/metrics', 200],
      ];
      for (const [method, path, status] of expected) {
        await node.waitForLog((l) => l.msg === 'request' && l.method === method && l.path === path && l.status === status);
      }
      // A sentinel request: once its line is in, every earlier line is too.
      await http(`${node.url}/v2/?sentinel=1`);
      await node.waitForLog((l) => l.msg === 'request' && l.query === 'sentinel=1');
      for (const [method, path] of expected) {
        const n = node.logs.filter((l) => l.msg === 'request' && l.method === method && l.path === path && l.query === undefined).length;
        assert.equal(n, 1, `${n} log lines for ${method} ${path}`);
      }
      const putLines = node.logs.filter((l) => l.msg === 'request' && l.method === 'PUT');
      assert.equal(putLines.length, 1);
      assert.equal(putLines[0]!.status, 201);

      const started = Date.now();
      node.signal('SIGTERM');
      const exit = await node.waitExit(8_000);
      assert.deepEqual(exit, { code: 0, signal: null }, node.describe());
      assert.ok(Date.now() - started < 8_000);
      assert.ok(node.logs.some((l) => l.msg === 'stopped'), `no "stopped" line\n${node.describe()}`);
      assert.equal(node.stderr, '', 'nothing on stderr');
    });

    it('SIGINT stops it too, with exit 0', async () => {
      const node = await procs.serve({ dataDir: await procs.tempDir() });
      assert.equal((await http(`${node.url}/v2/`)).status, 200);
      node.signal('SIGINT');
      const exit = await node.waitExit(8_000);
      assert.deepEqual(exit, { code: 0, signal: null }, node.describe());
      assert.ok(node.logs.some((l) => l.msg === 'stopped'));
    });
  });

  describe('signals right after start', () => {
    // A supervisor may stop a node the moment it reports `listening` (a readiness-driven test harness, a rollout
    // that is cancelled at once). From that line on, SIGTERM must be a clean stop, not the default kill.
    it('SIGTERM sent as soon as the listening line appears exits 0 with "stopped" (5 tries)', async () => {
      const data = await procs.tempDir();
      for (let i = 0; i < 5; i++) {
        const node = await procs.serve({ dataDir: data });
        node.signal('SIGTERM');
        const exit = await node.waitExit(8_000);
        assert.deepEqual(exit, { code: 0, signal: null }, `try ${i + 1}: ${node.describe()}`);
        assert.ok(node.logs.some((l) => l.msg === 'stopped'), `try ${i + 1}: no "stopped" line`);
      }
    });
  });

  describe('configuration sources', () => {
    it('file < environment < flags, setting by setting', async () => {
      const dir = await procs.tempDir();
      const file = join(dir, 'shoal.yaml');
      const dirs = { file: join(dir, 'from-file'), env: join(dir, 'from-env'), flag: join(dir, 'from-flag') };
      await writeFile(file, `# from the file\ndataDir: ${dirs.file}\nlisten: 127.0.0.3:0\nshutdownGraceMs: 1234\n`);

      // Only the file.
      let node = await procs.serve({ config: file, listen: null });
      let line = node.logs.find((l) => l.msg === 'listening')!;
      assert.equal(line.dataDir, dirs.file);
      assert.match(String(line.listen), /^127\.0\.0\.3:\d+$/);
      assert.equal((await http(`${node.url}/v2/`)).status, 200);
      assert.deepEqual(await node.terminate(), { code: 0, signal: null });
      const stopping = node.logs.find((l) => typeof l.graceMs === 'number');
      assert.equal(stopping?.graceMs, 1234, 'shutdownGraceMs comes from the file');
      await stat(join(dirs.file, 'db'));

      // Environment beats the file.
      const env = { SHOAL_LISTEN: '127.0.0.2:0', SHOAL_DATA_DIR: dirs.env };
      node = await procs.serve({ config: file, listen: null, env });
      line = node.logs.find((l) => l.msg === 'listening')!;
      assert.equal(line.dataDir, dirs.env);
      assert.match(String(line.listen), /^127\.0\.0\.2:\d+$/);
      assert.equal((await http(`${node.url}/v2/`)).status, 200);
      assert.deepEqual(await node.terminate(), { code: 0, signal: null });
      assert.equal(node.logs.find((l) => typeof l.graceMs === 'number')?.graceMs, 1234, 'file settings not overridden stay');

      // Flags beat the environment (and the file).
      node = await procs.serve({ config: file, listen: '127.0.0.1:0', dataDir: dirs.flag, env });
      line = node.logs.find((l) => l.msg === 'listening')!;
      assert.equal(line.dataDir, dirs.flag);
      assert.match(String(line.listen), /^127\.0\.0\.1:\d+$/);
      assert.equal((await http(`${node.url}/v2/`)).status, 200);
      assert.deepEqual(await node.terminate(), { code: 0, signal: null });

      // The config file can also come from SHOAL_CONFIG.
      node = await procs.serve({ listen: null, env: { SHOAL_CONFIG: file } });
      line = node.logs.find((l) => l.msg === 'listening')!;
      assert.equal(line.dataDir, dirs.file);
      assert.equal((await http(`${node.url}/v2/`)).status, 200);
      assert.deepEqual(await node.terminate(), { code: 0, signal: null });
    });

    it('environment alone configures a node', async () => {
      const dir = await procs.tempDir();
      const node = await procs.serve({ listen: null, env: { SHOAL_LISTEN: '127.0.0.1:0', SHOAL_DATA_DIR: join(dir, 'd'), SHOAL_LOG_LEVEL: 'debug' } });
      assert.equal(node.logs.find((l) => l.msg === 'listening')?.dataDir, join(dir, 'd'));
      assert.equal((await http(`${node.url}/healthz`)).status, 200);
      assert.deepEqual(await node.terminate(), { code: 0, signal: null });
    });
  });

  describe('SIGTERM during a streamed upload', () => {
    it('exits; after a restart the session resumes from its durable Range (or is gone), never a partial blob', async () => {
      const dir = await procs.tempDir();
      const data = join(dir, 'data');
      const config = join(dir, 'shoal.yaml');
      await writeFile(config, 'shutdownGraceMs: 500\n');
      const repo = 'e2e/stream';

      let node = await procs.serve({ dataDir: data, config });
      // Blobs committed before the interruption.
      const committed = new Map<string, Buffer>();
      for (let i = 0; i < 3; i++) {
        const b = randomBytes(50_000 + i * 1000);
        committed.set(await pushBlob(node.url, repo, b), b);
      }

      const blob = randomBytes(4 * 1024 * 1024);
      const digest = sha256(blob);
      const half = blob.length / 2;
      const post = await http(`${node.url}/v2/${repo}/blobs/uploads/`, { method: 'POST' });
      assert.equal(post.status, 202);
      const location = post.headers.location!;
      const sessionId = location.split('/').pop()!;

      // A streamed PATCH (chunked transfer encoding) that sends half the blob slowly and never ends.
      let sent = 0;
      let clientError: Error | undefined;
      const req = httpRequest(new URL(location, node.url), {
        method: 'PATCH',
        headers: { 'content-type': 'application/octet-stream', 'transfer-encoding': 'chunked' },
      });
      let response: number | undefined;
      req.on('response', (res) => {
        response = res.statusCode;
        res.resume();
      });
      req.on('error', (err) => (clientError = err));
      const piece = 64 * 1024;
      let stopSending = false;
      const sender = (async () => {
        while (sent < half && !stopSending && !clientError) {
          req.write(blob.subarray(sent, sent + piece));
          sent += piece;
          await sleep(20);
        }
      })();

      // Wait until the server has written a good part of it to the session file.
      const sessionFile = join(data, 'uploads', sessionId);
      const deadline = Date.now() + 10_000;
      let onDisk = 0;
      while (Date.now() < deadline) {
        onDisk = (await stat(sessionFile).catch(() => undefined))?.size ?? 0;
        if (onDisk >= 512 * 1024) break;
        await sleep(20);
      }
      assert.ok(onDisk >= 512 * 1024, `the server wrote only ${onDisk} bytes of the streamed PATCH`);

      const termAt = Date.now();
      node.signal('SIGTERM');
      const exit = await node.waitExit(8_000);
      stopSending = true;
      await sender;
      req.destroy();
      assert.deepEqual(exit, { code: 0, signal: null }, node.describe());
      assert.ok(Date.now() - termAt < 8_000);
      assert.ok(node.logs.some((l) => l.msg === 'stopped'), node.describe());
      assert.equal(response, undefined, 'the cut PATCH got no success reply');

      // Restart on the same data dir.
      node = await procs.serve({ dataDir: data, config });
      assert.deepEqual(await readdir(join(data, 'ingest')), [], 'ingest is empty after restart');
      for (const [d, b] of committed) {
        const r = await http(`${node.url}/v2/${repo}/blobs/${d}`);
        assert.equal(r.status, 200, `committed blob ${d} after restart`);
        assert.ok(r.body.equals(b), `committed blob ${d} is byte-identical`);
      }
      assert.equal((await http(`${node.url}/v2/${repo}/blobs/${digest}`)).status, 404, 'no partial blob is visible');
      const files = await assertBlobFilesVerify(data);
      assert.deepEqual(files.sort(), [...committed.keys()].sort());

      const status = await http(new URL(location, node.url).toString());
      if (status.status === 404) {
        // Allowed: the session was dropped. A fresh upload must still work.
        await pushBlob(node.url, repo, blob);
      } else {
        assert.equal(status.status, 204, status.body.toString());
        const m = /^0-(\d+)$/.exec(status.headers.range ?? '');
        assert.ok(m, `Range header ${status.headers.range}`);
        const durable = Number(m[1]) + 1;
        assert.ok(durable >= onDisk, `durable ${durable} < ${onDisk} bytes already on disk at SIGTERM`);
        assert.ok(durable <= sent, `durable ${durable} > ${sent} bytes sent`);
        // The last chunk and the commit in one PUT.
        const put = new URL(location, node.url);
        put.searchParams.set('digest', digest);
        const rest = blob.subarray(durable);
        const r = await http(put.toString(), {
          method: 'PUT',
          body: rest,
          headers: { 'content-type': 'application/octet-stream', 'content-range': `${durable}-${blob.length - 1}` },
        });
        assert.equal(r.status, 201, r.body.toString());
        assert.equal(r.headers['docker-content-digest'], digest);
      }
      const got = await http(`${node.url}/v2/${repo}/blobs/${digest}`);
      assert.equal(got.status, 200);
      assert.equal(sha256(got.body), digest);
      assert.deepEqual(await node.terminate(), { code: 0, signal: null });
    });
  });
});
