/**
 * SeedClient against real servers: the distribution registry (anonymous and htpasswd), a node:http registry
 * with a token service (bearer flow, redirects to storage), and node:http servers that corrupt, truncate,
 * hang, fail and refuse.
 */
import assert from 'node:assert/strict';
import { randomBytes, randomUUID } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { after, before, describe, it } from 'node:test';
import { AbortedError, DigestMismatchError, InvalidError, MediaType, NotFoundError, ShoalError, UnavailableError } from '../../src/oci/index.ts';
import { SeedClient, parseAuthChallenges, type SeedClientOptions } from '../../src/upstream/index.ts';
import { Resources as SuiteResources } from '../helpers/resources.ts';
import { freePort, pushManifest, pushRandomImage, sha256, startDockerRegistry, type DockerRegistry, type PushedImage } from '../helpers/seed-registry.ts';
import { startTestServer, type TestServer } from '../helpers/seed-servers.ts';
import { SEED_TEST_CERT, SEED_TEST_KEY } from '../helpers/seed-tls.ts';

/** bcrypt (cost 5) of HTPASSWD_PASSWORD, computed once with python3's crypt module; node has no bcrypt. */
const HTPASSWD_USER = 'alice';
const HTPASSWD_PASSWORD = 'shoal-seed-secret';
const HTPASSWD_BCRYPT = '$2b$05$3qFb4wh6tsZzhjQr5ZRsweU31WscZHxJuF/5KvpHSZID3NAsu47eK';

async function readAll(stream: Readable | AsyncIterable<Uint8Array>): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(Buffer.from(chunk as Uint8Array));
  return Buffer.concat(chunks);
}

async function readUntilError(stream: Readable): Promise<{ bytes: Buffer; error?: unknown }> {
  const chunks: Buffer[] = [];
  try {
    for await (const chunk of stream) chunks.push(Buffer.from(chunk as Uint8Array));
  } catch (error) {
    return { bytes: Buffer.concat(chunks), error };
  }
  return { bytes: Buffer.concat(chunks) };
}

/** The suite's resources, with its SeedClients among them. */
class Resources extends SuiteResources {
  client(options: SeedClientOptions): SeedClient {
    return this.add(new SeedClient(options));
  }
}

/** An image built in memory, for servers that are not a real registry. */
function memoryImage(): { manifest: Buffer; manifestDigest: string; blobs: Map<string, Buffer>; layer: { digest: string; bytes: Buffer } } {
  const layer = randomBytes(300_000);
  const config = Buffer.from(JSON.stringify({ architecture: 'arm64', os: 'linux', rootfs: { type: 'layers', diff_ids: [] } }));
  const manifest = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: MediaType.OciManifest,
      config: { mediaType: MediaType.OciConfig, digest: sha256(config), size: config.length },
      layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', digest: sha256(layer), size: layer.length }],
    }),
  );
  const blobs = new Map([
    [sha256(layer), layer],
    [sha256(config), config],
  ]);
  return { manifest, manifestDigest: sha256(manifest), blobs, layer: { digest: sha256(layer), bytes: layer } };
}

describe('WWW-Authenticate parsing', () => {
  it('reads Docker Hub style bearer challenges, quoted commas, escapes and several challenges', () => {
    assert.deepEqual(
      parseAuthChallenges('Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/nginx:pull,push"'),
      [{ scheme: 'bearer', params: { realm: 'https://auth.docker.io/token', service: 'registry.docker.io', scope: 'repository:library/nginx:pull,push' } }],
    );
    assert.deepEqual(parseAuthChallenges(['Basic realm="a \\"b\\""', 'Bearer realm=https://t/x, error=insufficient_scope']), [
      { scheme: 'basic', params: { realm: 'a "b"' } },
      { scheme: 'bearer', params: { realm: 'https://t/x', error: 'insufficient_scope' } },
    ]);
    assert.deepEqual(parseAuthChallenges('Basic realm="r", Bearer realm="t"').map((c) => c.scheme), ['basic', 'bearer']);
    assert.deepEqual(parseAuthChallenges(undefined), []);
  });
});

describe('SeedClient against docker-registry, anonymous', () => {
  const resources = new Resources();
  let registry: DockerRegistry;
  let image: PushedImage;
  let client: SeedClient;
  const repo = 'shoal/app';

  before(async () => {
    registry = resources.add(await startDockerRegistry());
    image = await pushRandomImage(registry.url, repo, 'v1', { layerSizes: [200_000, 1_500_000] });
    client = resources.client({ url: registry.url });
  });
  after(() => resources.release());

  it('pings', async () => {
    assert.equal(await client.ping(), true);
  });

  it('resolves a tag by HEAD to the pushed digest', async () => {
    const resolved = await client.resolveTag(repo, 'v1');
    assert.deepEqual(resolved, { digest: image.manifestDigest, mediaType: MediaType.OciManifest, size: image.manifestBytes.length });
  });

  it('gets the manifest by tag and by digest, bytes intact', async () => {
    const byTag = await client.getManifest(repo, 'v1');
    assert.ok(byTag.bytes.equals(image.manifestBytes));
    assert.equal(byTag.digest, image.manifestDigest);
    assert.equal(byTag.mediaType, MediaType.OciManifest);
    const byDigest = await client.getManifest(repo, image.manifestDigest);
    assert.ok(byDigest.bytes.equals(image.manifestBytes));
    assert.equal(byDigest.digest, image.manifestDigest);
  });

  it('resolves and gets an index', async () => {
    const index = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: MediaType.OciIndex,
        manifests: [{ mediaType: MediaType.OciManifest, digest: image.manifestDigest, size: image.manifestBytes.length, platform: { architecture: 'amd64', os: 'linux' } }],
      }),
    );
    const indexDigest = await pushManifest(registry.url, repo, 'multi', index, MediaType.OciIndex);
    assert.deepEqual(await client.resolveTag(repo, 'multi'), { digest: indexDigest, mediaType: MediaType.OciIndex, size: index.length });
    const got = await client.getManifest(repo, indexDigest);
    assert.equal(got.mediaType, MediaType.OciIndex);
    assert.ok(got.bytes.equals(index));
  });

  it('streams whole blobs, verified, with their sizes', async () => {
    for (const blob of [image.config, ...image.layers]) {
      const got = await client.getBlob(repo, blob.digest);
      assert.equal(got.status, 200);
      assert.equal(got.size, blob.bytes.length);
      assert.equal(got.verified, true);
      assert.equal(got.range, undefined);
      const bytes = await readAll(got.stream);
      assert.equal(sha256(bytes), blob.digest);
    }
  });

  it('streams a byte range (206, Content-Range checked) and clamps a range past the end', async () => {
    const layer = image.layers[1]!;
    const got = await client.getBlob(repo, layer.digest, { range: { start: 1000, end: 99_999 } });
    assert.equal(got.status, 206);
    assert.equal(got.size, layer.bytes.length);
    assert.deepEqual(got.range, { start: 1000, end: 99_999 });
    assert.equal(got.verified, false);
    assert.ok((await readAll(got.stream)).equals(layer.bytes.subarray(1000, 100_000)));

    const tail = await client.getBlob(repo, layer.digest, { range: { start: layer.bytes.length - 10, end: layer.bytes.length + 1000 } });
    assert.equal(tail.status, 206);
    assert.deepEqual(tail.range, { start: layer.bytes.length - 10, end: layer.bytes.length - 1 });
    assert.ok((await readAll(tail.stream)).equals(layer.bytes.subarray(layer.bytes.length - 10)));
  });

  it('stats blobs: size when present, undefined when absent', async () => {
    assert.equal(await client.statBlob(repo, image.layers[0]!.digest), image.layers[0]!.bytes.length);
    assert.equal(await client.statBlob(repo, sha256(Buffer.from('absent'))), undefined);
  });

  it('maps 404s to MANIFEST_UNKNOWN and BLOB_UNKNOWN', async () => {
    await assert.rejects(client.resolveTag(repo, 'no-such-tag'), (err: unknown) => err instanceof NotFoundError && err.code === 'MANIFEST_UNKNOWN');
    await assert.rejects(client.getManifest(repo, 'no-such-tag'), (err: unknown) => {
      assert.ok(err instanceof NotFoundError);
      assert.equal(err.code, 'MANIFEST_UNKNOWN');
      assert.match(err.message, new RegExp(registry.url.replace(/[.]/g, '\\.')));
      return true;
    });
    await assert.rejects(client.getManifest('shoal/missing', 'v1'), (err: unknown) => err instanceof NotFoundError && err.code === 'MANIFEST_UNKNOWN');
    await assert.rejects(client.getBlob(repo, sha256(Buffer.from('absent'))), (err: unknown) => err instanceof NotFoundError && err.code === 'BLOB_UNKNOWN');
  });

  it('lists tags', async () => {
    assert.deepEqual((await client.listTags(repo)).sort(), ['multi', 'v1']);
  });

  it('refuses malformed names and digests before any request', async () => {
    await assert.rejects(client.getManifest('../etc', 'v1'), (err: unknown) => err instanceof InvalidError && err.code === 'NAME_INVALID');
    await assert.rejects(client.getBlob(repo, 'sha256:1234'), (err: unknown) => err instanceof InvalidError && err.code === 'DIGEST_INVALID');
  });
});

describe('SeedClient against docker-registry with htpasswd (basic auth)', () => {
  const resources = new Resources();
  let registry: DockerRegistry;
  let image: PushedImage;
  const repo = 'private/app';

  before(async () => {
    registry = resources.add(await startDockerRegistry({ users: [{ username: HTPASSWD_USER, bcryptHash: HTPASSWD_BCRYPT }] }));
    image = await pushRandomImage(registry.url, repo, 'v1', { layerSizes: [50_000, 120_000], auth: { username: HTPASSWD_USER, password: HTPASSWD_PASSWORD } });
  });
  after(() => resources.release());

  it('reads everything with the right credentials', async () => {
    const client = resources.client({ url: registry.url, username: HTPASSWD_USER, password: HTPASSWD_PASSWORD });
    assert.equal((await client.resolveTag(repo, 'v1')).digest, image.manifestDigest);
    assert.ok((await client.getManifest(repo, image.manifestDigest)).bytes.equals(image.manifestBytes));
    const blob = await client.getBlob(repo, image.layers[1]!.digest);
    assert.equal(sha256(await readAll(blob.stream)), image.layers[1]!.digest);
    const part = await client.getBlob(repo, image.layers[1]!.digest, { range: { start: 5, end: 9 } });
    assert.ok((await readAll(part.stream)).equals(image.layers[1]!.bytes.subarray(5, 10)));
    assert.equal(await client.statBlob(repo, image.config.digest), image.config.bytes.length);
  });

  it('says UNAUTHORIZED, naming the registry, without credentials or with a wrong password', async () => {
    const anonymous = resources.client({ url: registry.url });
    assert.equal(await anonymous.ping(), true, '401 on /v2/ still means reachable');
    await assert.rejects(anonymous.getManifest(repo, 'v1'), (err: unknown) => {
      assert.ok(err instanceof ShoalError);
      assert.equal(err.code, 'UNAUTHORIZED');
      assert.ok(err.message.includes(registry.url));
      assert.match(err.message, /username and password/);
      return true;
    });
    const wrong = resources.client({ url: registry.url, username: HTPASSWD_USER, password: 'not-it' });
    await assert.rejects(wrong.getBlob(repo, image.layers[0]!.digest), (err: unknown) => {
      assert.ok(err instanceof ShoalError);
      assert.equal(err.code, 'UNAUTHORIZED');
      assert.match(err.message, /alice/);
      assert.ok(err.message.includes(registry.url));
      return true;
    });
  });
});

describe('SeedClient bearer-token flow (node:http registry, token service, blob storage)', () => {
  const resources = new Resources();
  const image = memoryImage();
  const service = 'shoal-test-registry';
  /** token -> scopes it grants */
  const issued = new Map<string, Set<string>>();
  const tokenRequests: Array<{ scope: string | null; service: string | null; authorization?: string }> = [];
  const storageAuthorizations: Array<string | undefined> = [];
  const settings = { tokenField: 'token' as 'token' | 'access_token', expiresIn: 300 as number | undefined, headDigest: true };
  let tokenServer: TestServer;
  let storage: TestServer;
  let registry: TestServer;
  const goodBasic = `Basic ${Buffer.from('bob:hunter2').toString('base64')}`;

  before(async () => {
    tokenServer = resources.add(
      await startTestServer((req, res) => {
        const url = new URL(req.url!, 'http://token');
        tokenRequests.push({ scope: url.searchParams.get('scope'), service: url.searchParams.get('service'), authorization: req.headers.authorization });
        if (url.pathname !== '/token') return void res.writeHead(404).end();
        if (req.headers.authorization !== goodBasic) {
          res.writeHead(401, { 'content-type': 'application/json' });
          return void res.end(JSON.stringify({ errors: [{ code: 'UNAUTHORIZED', message: 'incorrect username or password' }] }));
        }
        const scope = url.searchParams.get('scope');
        const granted = new Set<string>();
        // Like Docker Hub: a token is always issued; it grants only what the account may do.
        if (scope && /^repository:team\/(app|secret):pull$/.test(scope) && url.searchParams.get('service') === service) granted.add(scope);
        const token = randomUUID();
        issued.set(token, granted);
        const body: Record<string, unknown> = { [settings.tokenField]: token };
        if (settings.expiresIn !== undefined) body.expires_in = settings.expiresIn;
        res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(body));
      }),
    );
    storage = resources.add(
      await startTestServer((req, res) => {
        storageAuthorizations.push(req.headers.authorization);
        const digest = new URL(req.url!, 'http://storage').pathname.split('/').pop()!;
        const bytes = image.blobs.get(digest);
        if (!bytes) return void res.writeHead(404).end();
        res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': bytes.length });
        res.end(bytes);
      }),
    );
    registry = resources.add(
      await startTestServer((req, res) => {
        const path = new URL(req.url!, 'http://registry').pathname;
        const realm = `${tokenServer.url}/token`;
        if (path === '/v2/') {
          res.writeHead(401, { 'www-authenticate': `Bearer realm="${realm}",service="${service}"` });
          return void res.end();
        }
        const match = /^\/v2\/(.+)\/(manifests|blobs)\/([^/]+)$/.exec(path);
        if (!match) return void res.writeHead(404).end();
        const [, repo, kind, reference] = match as unknown as [string, string, string, string];
        const need = `repository:${repo}:pull`;
        const auth = req.headers.authorization ?? '';
        const token = auth.startsWith('Bearer ') ? auth.slice(7) : undefined;
        if (!token || !issued.get(token)?.has(need)) {
          res.writeHead(401, {
            'content-type': 'application/json',
            'www-authenticate': `Bearer realm="${realm}",service="${service}",scope="${need}"${token ? ',error="insufficient_scope"' : ''}`,
          });
          return void res.end(JSON.stringify({ errors: [{ code: 'UNAUTHORIZED', message: 'authentication required' }] }));
        }
        if (repo === 'team/secret') {
          res.writeHead(403, { 'content-type': 'application/json' });
          return void res.end(JSON.stringify({ errors: [{ code: 'DENIED', message: 'requested access to the resource is denied' }] }));
        }
        if (repo !== 'team/app') return void res.writeHead(404).end();
        if (kind === 'manifests') {
          if (reference !== 'v1' && reference !== image.manifestDigest) return void res.writeHead(404).end();
          const headers: Record<string, string | number> = { 'content-type': MediaType.OciManifest, 'content-length': image.manifest.length };
          if (settings.headDigest || req.method === 'GET') headers['docker-content-digest'] = image.manifestDigest;
          res.writeHead(200, headers);
          return void res.end(req.method === 'HEAD' ? undefined : image.manifest);
        }
        if (!image.blobs.has(reference)) return void res.writeHead(404).end();
        res.writeHead(307, { location: `${storage.url}/signed/${reference}?sig=abc` });
        res.end();
      }),
    );
  });
  after(() => resources.release());

  it('fetches a token with basic credentials for the challenged scope, caches it, and follows the blob redirect without Authorization', async () => {
    const client = resources.client({ url: registry.url, username: 'bob', password: 'hunter2' });
    tokenRequests.length = 0;
    const resolved = await client.resolveTag('team/app', 'v1');
    assert.deepEqual(resolved, { digest: image.manifestDigest, mediaType: MediaType.OciManifest, size: image.manifest.length });
    assert.equal(tokenRequests.length, 1);
    assert.deepEqual(tokenRequests[0], { scope: 'repository:team/app:pull', service, authorization: goodBasic });

    const before = registry.requests.length;
    const manifest = await client.getManifest('team/app', image.manifestDigest);
    assert.ok(manifest.bytes.equals(image.manifest));
    const blob = await client.getBlob('team/app', image.layer.digest);
    assert.equal(blob.size, image.layer.bytes.length);
    assert.equal(sha256(await readAll(blob.stream)), image.layer.digest);
    assert.equal(tokenRequests.length, 1, 'the cached token is reused');
    const later = registry.requests.slice(before);
    assert.equal(later.length, 2, 'no 401 round trips once the token is cached');
    assert.ok(later.every((r) => r.headers.authorization?.startsWith('Bearer ')));
    assert.deepEqual(storageAuthorizations, [undefined], 'the storage host never sees the registry token');
  });

  it('GETs and hashes the manifest when HEAD lacks Docker-Content-Digest', async () => {
    settings.headDigest = false;
    try {
      const client = resources.client({ url: registry.url, username: 'bob', password: 'hunter2' });
      const before = registry.requests.length;
      const resolved = await client.resolveTag('team/app', 'v1');
      assert.equal(resolved.digest, image.manifestDigest);
      assert.equal(resolved.size, image.manifest.length);
      const methods = registry.requests.slice(before).filter((r) => r.headers.authorization).map((r) => r.method);
      assert.deepEqual(methods, ['HEAD', 'GET']);
    } finally {
      settings.headDigest = true;
    }
  });

  it('accepts access_token and fetches a new token once expires_in has passed', async () => {
    settings.tokenField = 'access_token';
    settings.expiresIn = 1;
    try {
      const client = resources.client({ url: registry.url, username: 'bob', password: 'hunter2' });
      tokenRequests.length = 0;
      await client.statBlob('team/app', image.layer.digest);
      await client.statBlob('team/app', image.layer.digest);
      assert.equal(tokenRequests.length, 1);
      await new Promise((r) => setTimeout(r, 1100));
      assert.ok((await client.statBlob('team/app', image.layer.digest))! > 0);
      assert.equal(tokenRequests.length, 2);
    } finally {
      settings.tokenField = 'token';
      settings.expiresIn = 300;
    }
  });

  it('says UNAUTHORIZED naming the token service when the password is wrong', async () => {
    const client = resources.client({ url: registry.url, username: 'bob', password: 'wrong', retries: 0 });
    await assert.rejects(client.getManifest('team/app', 'v1'), (err: unknown) => {
      assert.ok(err instanceof ShoalError);
      assert.equal(err.code, 'UNAUTHORIZED');
      assert.ok(err.message.includes(tokenServer.url), err.message);
      assert.ok(err.message.includes(registry.url), err.message);
      assert.match(err.message, /bob/);
      assert.match(err.message, /check the username and password/);
      return true;
    });
  });

  it('says UNAUTHORIZED when the token lacks the scope, and DENIED on 403', async () => {
    const client = resources.client({ url: registry.url, username: 'bob', password: 'hunter2' });
    const tokensBefore = tokenRequests.length;
    await assert.rejects(client.getManifest('other/app', 'v1'), (err: unknown) => {
      assert.ok(err instanceof ShoalError);
      assert.equal(err.code, 'UNAUTHORIZED');
      assert.match(err.message, /other\/app/);
      return true;
    });
    assert.ok(tokenRequests.length - tokensBefore <= 2, 'one fresh token, one retry, no loop');
    await assert.rejects(client.getManifest('team/secret', 'v1'), (err: unknown) => {
      assert.ok(err instanceof ShoalError);
      assert.equal(err.code, 'DENIED');
      assert.match(err.message, /denied/);
      assert.ok(err.message.includes(registry.url));
      return true;
    });
  });
});

describe('SeedClient against broken seeds', () => {
  const resources = new Resources();
  after(() => resources.release());

  it('fails a corrupted blob stream with DigestMismatchError at the end, holding back its last piece', async () => {
    const good = randomBytes(256 * 1024);
    const bad = Buffer.from(good);
    bad[bad.length - 1] ^= 0xff;
    const server = resources.add(
      await startTestServer(async (_req, res) => {
        res.writeHead(200, { 'content-length': bad.length });
        for (let off = 0; off < bad.length; off += 64 * 1024) {
          res.write(bad.subarray(off, off + 64 * 1024));
          await new Promise((r) => setTimeout(r, 5));
        }
        res.end();
      }),
    );
    const client = resources.client({ url: server.url });
    const blob = await client.getBlob('any/repo', sha256(good));
    assert.equal(blob.size, good.length);
    const { bytes, error } = await readUntilError(blob.stream);
    assert.ok(error instanceof DigestMismatchError, String(error));
    assert.equal(error.expected, sha256(good));
    assert.equal(error.actual, sha256(bad));
    assert.ok(bytes.length < bad.length, 'the consumer never holds the whole bad blob');
  });

  it("with verify 'caller', passes a whole body through unhashed (verified false) but still checks its length; a range is still verified", async () => {
    const good = randomBytes(200_000);
    const bad = Buffer.from(good);
    bad[10] ^= 0xff;
    let mode: 'bad' | 'short' | 'bad-ignoring-range' = 'bad';
    const server = resources.add(
      await startTestServer(async (req, res) => {
        res.writeHead(200, { 'content-length': good.length });
        if (mode === 'short') {
          res.write(good.subarray(0, 1000));
          await new Promise((r) => setTimeout(r, 20));
          req.socket.destroy();
          return;
        }
        res.end(bad);
      }),
    );
    const client = resources.client({ url: server.url });
    const whole = await client.getBlob('any/repo', sha256(good), { verify: 'caller' });
    assert.equal(whole.verified, false);
    assert.ok((await readAll(whole.stream)).equals(bad), 'the caller gets the bytes as sent, to hash them itself');
    mode = 'short';
    const short = await client.getBlob('any/repo', sha256(good), { verify: 'caller' });
    const { bytes, error } = await readUntilError(short.stream);
    assert.ok(error instanceof UnavailableError || error instanceof DigestMismatchError, String(error));
    assert.ok(bytes.length < good.length);
    // A seed that ignores Range sends the whole body: the slice can only be checked here, so it is.
    mode = 'bad-ignoring-range';
    const ranged = await client.getBlob('any/repo', sha256(good), { verify: 'caller', range: { start: 0, end: 99 } });
    assert.equal(ranged.verified, true);
    const r = await readUntilError(ranged.stream);
    assert.ok(r.error instanceof DigestMismatchError, String(r.error));
  });

  it('fails a truncated blob stream (connection closed before Content-Length)', async () => {
    const good = randomBytes(100_000);
    const server = resources.add(
      await startTestServer(async (req, res) => {
        res.writeHead(200, { 'content-length': good.length });
        res.write(good.subarray(0, 50_000));
        await new Promise((r) => setTimeout(r, 20));
        req.socket.destroy();
      }),
    );
    const client = resources.client({ url: server.url });
    const blob = await client.getBlob('any/repo', sha256(good));
    const { bytes, error } = await readUntilError(blob.stream);
    assert.ok(error instanceof UnavailableError, String(error));
    assert.ok(error.message.includes(server.url));
    assert.ok(bytes.length < good.length);
  });

  it('rejects a manifest whose bytes do not match the digest asked for, without retrying', async () => {
    const real = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MediaType.OciIndex, manifests: [] }));
    const served = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MediaType.OciIndex, manifests: [], annotations: { x: 'y' } }));
    const server = resources.add(
      await startTestServer((_req, res) => {
        res.writeHead(200, { 'content-type': MediaType.OciIndex, 'content-length': served.length }).end(served);
      }),
    );
    const client = resources.client({ url: server.url });
    await assert.rejects(client.getManifest('any/repo', sha256(real)), (err: unknown) => err instanceof DigestMismatchError && err.actual === sha256(served));
    assert.equal(server.requests.length, 1);
  });

  it('refuses a manifest over 4 MiB', async () => {
    const server = resources.add(
      await startTestServer((_req, res) => {
        res.writeHead(200, { 'content-type': MediaType.OciManifest, 'content-length': 5 * 1024 * 1024 });
        res.end(Buffer.alloc(5 * 1024 * 1024, 0x20));
      }),
    );
    const client = resources.client({ url: server.url });
    await assert.rejects(client.getManifest('any/repo', 'v1'), (err: unknown) => err instanceof InvalidError && err.code === 'PAYLOAD_TOO_LARGE');
  });

  it('checks Content-Range, and slices a whole body when the seed ignores Range', async () => {
    const blob = randomBytes(10_000);
    let mode: 'wrong-range' | 'ignore-range' = 'wrong-range';
    const server = resources.add(
      await startTestServer((_req, res) => {
        if (mode === 'wrong-range') {
          res.writeHead(206, { 'content-range': `bytes 0-99/${blob.length}`, 'content-length': 100 }).end(blob.subarray(0, 100));
        } else {
          res.writeHead(200, { 'content-length': blob.length }).end(blob);
        }
      }),
    );
    const client = resources.client({ url: server.url });
    await assert.rejects(client.getBlob('any/repo', sha256(blob), { range: { start: 100, end: 199 } }), (err: unknown) => {
      assert.ok(err instanceof UnavailableError);
      assert.match(err.message, /Content-Range/);
      return true;
    });
    mode = 'ignore-range';
    const got = await client.getBlob('any/repo', sha256(blob), { range: { start: 100, end: 199 } });
    assert.equal(got.status, 200);
    assert.equal(got.verified, true);
    assert.equal(got.size, blob.length);
    assert.deepEqual(got.range, { start: 100, end: 199 });
    assert.ok((await readAll(got.stream)).equals(blob.subarray(100, 200)));
  });

  it('times out a seed that never answers, quickly, naming the seed', async () => {
    const server = resources.add(await startTestServer(() => undefined));
    const client = resources.client({ url: server.url, timeoutMs: 300, retries: 1, retryDelayMs: 10 });
    const started = Date.now();
    await assert.rejects(client.resolveTag('any/repo', 'v1'), (err: unknown) => {
      assert.ok(err instanceof UnavailableError, String(err));
      assert.ok(err.message.includes(server.url));
      assert.match(err.message, /300 ms/);
      return true;
    });
    const elapsed = Date.now() - started;
    assert.ok(elapsed >= 550 && elapsed < 2000, `took ${elapsed} ms`);
    assert.equal(server.requests.length, 2, 'a timeout is retried');
    const blobClient = resources.client({ url: server.url, timeoutMs: 300, retries: 0 });
    await assert.rejects(blobClient.getBlob('any/repo', sha256(Buffer.from('x'))), UnavailableError);
    assert.equal(await blobClient.ping(), false);
  });

  it('retries 5xx with backoff, then says UnavailableError; never retries 4xx', async () => {
    let status = 500;
    const server = resources.add(
      await startTestServer((_req, res) => {
        res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify({ errors: [{ code: 'UNKNOWN', message: 'disk on fire' }] }));
      }),
    );
    const client = resources.client({ url: server.url, retries: 3, retryDelayMs: 20 });
    const started = Date.now();
    await assert.rejects(client.getManifest('any/repo', 'v1'), (err: unknown) => {
      assert.ok(err instanceof UnavailableError);
      assert.ok(err.message.includes(server.url));
      assert.match(err.message, /HTTP 500/);
      assert.match(err.message, /disk on fire/);
      assert.match(err.message, /4 attempts/);
      return true;
    });
    assert.equal(server.requests.length, 4);
    assert.ok(Date.now() - started >= 10 + 20 + 40 - 5, 'backoff waited');

    for (status of [400, 404]) {
      server.requests.length = 0;
      await assert.rejects(client.getManifest('any/repo', 'v1'));
      assert.equal(server.requests.length, 1, `HTTP ${status} is not retried`);
    }
  });

  it('recovers when a 503 or a 429 is followed by success', async () => {
    const manifest = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MediaType.OciIndex, manifests: [] }));
    let calls = 0;
    const server = resources.add(
      await startTestServer((_req, res) => {
        calls++;
        if (calls === 1) return void res.writeHead(503).end();
        if (calls === 2) return void res.writeHead(429, { 'retry-after': '0' }).end();
        res.writeHead(200, { 'content-type': MediaType.OciIndex }).end(manifest);
      }),
    );
    const client = resources.client({ url: server.url, retries: 3, retryDelayMs: 10 });
    const got = await client.getManifest('any/repo', sha256(manifest));
    assert.ok(got.bytes.equals(manifest));
    assert.equal(calls, 3);
  });

  it('says UnavailableError when the connection is refused, and ping says false', async () => {
    const port = await freePort();
    const url = `http://127.0.0.1:${port}`;
    const client = resources.client({ url, retries: 1, retryDelayMs: 10 });
    assert.equal(await client.ping(), false);
    await assert.rejects(client.statBlob('any/repo', sha256(Buffer.from('x'))), (err: unknown) => {
      assert.ok(err instanceof UnavailableError);
      assert.ok(err.message.includes(url));
      assert.match(err.message, /refused/);
      return true;
    });
  });

  it('aborts promptly: before the request, while waiting for headers, during backoff, mid-body', async () => {
    const hanging = resources.add(await startTestServer(() => undefined));
    const client = resources.client({ url: hanging.url, timeoutMs: 10_000 });

    await assert.rejects(client.getManifest('any/repo', 'v1', { signal: AbortSignal.abort() }), AbortedError);
    await assert.rejects(client.ping({ signal: AbortSignal.abort() }), AbortedError);
    assert.equal(hanging.requests.length, 0);

    let started = Date.now();
    await assert.rejects(client.resolveTag('any/repo', 'v1', { signal: AbortSignal.timeout(100) }), AbortedError);
    assert.ok(Date.now() - started < 1000, `abort took ${Date.now() - started} ms`);

    const failing = resources.add(await startTestServer((_req, res) => void res.writeHead(502).end()));
    const slowRetries = resources.client({ url: failing.url, retries: 3, retryDelayMs: 5000 });
    started = Date.now();
    await assert.rejects(slowRetries.getManifest('any/repo', 'v1', { signal: AbortSignal.timeout(150) }), AbortedError);
    assert.ok(Date.now() - started < 1000, `abort during backoff took ${Date.now() - started} ms`);
    assert.equal(failing.requests.length, 1);

    const stalling = resources.add(
      await startTestServer((_req, res) => {
        res.writeHead(200, { 'content-length': 1_000_000 });
        res.write(randomBytes(10_000));
      }),
    );
    const blobClient = resources.client({ url: stalling.url });
    const controller = new AbortController();
    const blob = await blobClient.getBlob('any/repo', sha256(Buffer.from('whatever')), { signal: controller.signal });
    setTimeout(() => controller.abort(), 100);
    started = Date.now();
    const { error } = await readUntilError(blob.stream);
    assert.ok(error instanceof AbortedError, String(error));
    assert.ok(Date.now() - started < 1000);
  });

  it('speaks TLS: refuses an unknown CA with a hint, trusts caFile, or skips verification when told', async () => {
    const manifest = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MediaType.OciIndex, manifests: [] }));
    const server = resources.add(
      await startTestServer(
        (req, res) => {
          if (req.url === '/v2/') return void res.writeHead(200).end('{}');
          res.writeHead(200, { 'content-type': MediaType.OciIndex }).end(manifest);
        },
        { tls: { cert: SEED_TEST_CERT, key: SEED_TEST_KEY } },
      ),
    );
    const strict = resources.client({ url: server.url, retries: 2, retryDelayMs: 10 });
    await assert.rejects(strict.getManifest('any/repo', 'v1'), (err: unknown) => {
      assert.ok(err instanceof UnavailableError);
      assert.match(err.message, /caFile/);
      return true;
    });
    assert.equal(server.requests.length, 0, 'a certificate error is not retried and reaches no handler');

    const dir = await mkdtemp(join(tmpdir(), 'shoal-ca-'));
    try {
      const caFile = join(dir, 'ca.pem');
      await writeFile(caFile, SEED_TEST_CERT);
      const trusting = resources.client({ url: server.url, caFile });
      assert.equal(await trusting.ping(), true);
      assert.equal((await trusting.getManifest('any/repo', sha256(manifest))).digest, sha256(manifest));
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
    const skipping = resources.client({ url: server.url, insecureSkipVerify: true });
    assert.equal((await skipping.getManifest('any/repo', 'v1')).digest, sha256(manifest));
  });
});
