/**
 * The bundle's RegistryHttp against real servers, with the auth, TLS settings and error reading it shares with
 * SeedClient: a registry behind a token service (bearer), one behind Basic, one over TLS.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { RegistryHttp, errorCodeOf, errorMessageOf, type RegistryHttpOptions } from '../../src/bundle/registry-http.ts';
import { AbortedError, ShoalError, UnavailableError } from '../../src/oci/index.ts';
import { Resources as SuiteResources } from '../helpers/resources.ts';
import { memoryImage, startMemoryRegistry, startTokenService, type MemoryImage, type MemoryRegistry, type TokenService } from '../helpers/memory-registry.ts';
import { startTestServer } from '../helpers/seed-servers.ts';
import { SEED_TEST_CERT, SEED_TEST_KEY } from '../helpers/seed-tls.ts';

const USER = { username: 'alice', password: 'bundle-secret' };
const REPO = 'team/app';

/** The suite's resources, with its RegistryHttps among them. */
class Resources extends SuiteResources {
  http(options: RegistryHttpOptions): RegistryHttp {
    return this.add(new RegistryHttp(options));
  }
}

const manifestPath = (reference: string): string => `/v2/${REPO}/manifests/${reference}`;
const accept = { accept: 'application/vnd.oci.image.manifest.v1+json' };

describe('RegistryHttp and a registry behind a token service', () => {
  const resources = new Resources();
  let image: MemoryImage;
  let tokens: TokenService;
  let registry: MemoryRegistry;
  before(async () => {
    image = memoryImage([1000]);
    tokens = resources.add(await startTokenService(USER));
    registry = resources.add(await startMemoryRegistry({ repository: REPO, tag: 'v1', image, authorize: tokens.authorize }));
  });
  after(() => resources.release());

  it('answers the challenge with a token for the pull scope, then sends the token up front', async () => {
    const http = resources.http({ url: registry.url, ...USER });
    const before = tokens.tokenRequests.length;
    const first = await http.send({ method: 'GET', path: manifestPath('v1'), headers: accept, repository: REPO });
    assert.equal(first.status, 200, errorMessageOf(first.body));
    assert.deepEqual(first.body, image.manifest);
    assert.deepEqual(tokens.tokenRequests.slice(before), [{ scope: `repository:${REPO}:pull`, accepted: true }]);
    const tokenRequest = tokens.requests.at(-1)!;
    assert.equal(tokenRequest.headers['user-agent'], 'shoal-bundle');

    const seen = registry.requests.length;
    const second = await http.send({ method: 'GET', path: manifestPath(image.manifestDigest), headers: accept, repository: REPO });
    assert.equal(second.status, 200);
    assert.equal(tokens.tokenRequests.length, before + 1, 'the cached token is used again');
    assert.equal(registry.requests.length, seen + 1, 'no second challenge');
    assert.match(String(registry.requests.at(-1)!.headers.authorization), /^Bearer /);
  });

  it('says what the registry said about a manifest it does not have', async () => {
    const http = resources.http({ url: registry.url, ...USER });
    const answer = await http.send({ method: 'GET', path: manifestPath('nope'), headers: accept, repository: REPO });
    assert.equal(answer.status, 404);
    assert.equal(errorMessageOf(answer.body), 'MANIFEST_UNKNOWN: manifest nope unknown');
    assert.equal(errorCodeOf(answer.body), 'MANIFEST_UNKNOWN');
  });

  it('refuses with UNAUTHORIZED naming the token service when the password is wrong, or when none is given', async () => {
    const wrong = resources.http({ url: registry.url, username: USER.username, password: 'not-it' });
    await assert.rejects(wrong.send({ method: 'GET', path: manifestPath('v1'), headers: accept, repository: REPO }), (err: unknown) => {
      assert.ok(err instanceof ShoalError, String(err));
      assert.equal(err.code, 'UNAUTHORIZED');
      assert.ok(err.message.includes(tokens.realm), err.message);
      assert.match(err.message, /refused the credentials of user "alice"/);
      assert.match(err.message, /incorrect username or password/);
      assert.match(err.message, /check the username and password/);
      return true;
    });
    const anonymous = resources.http({ url: registry.url });
    await assert.rejects(anonymous.send({ method: 'GET', path: manifestPath('v1'), headers: accept, repository: REPO }), (err: unknown) => {
      assert.ok(err instanceof ShoalError, String(err));
      assert.equal(err.code, 'UNAUTHORIZED');
      assert.match(err.message, /refused anonymous access/);
      return true;
    });
  });

  it('reports a token service that is gone as unavailable', async () => {
    const gone = await startTokenService(USER);
    const behind = resources.add(await startMemoryRegistry({ repository: REPO, tag: 'v1', image, authorize: gone.authorize }));
    await gone.close();
    const http = resources.http({ url: behind.url, ...USER });
    await assert.rejects(http.send({ method: 'GET', path: manifestPath('v1'), headers: accept, repository: REPO }), (err: unknown) => {
      assert.ok(err instanceof UnavailableError, String(err));
      assert.match(err.message, new RegExp(`^token service ${gone.url} of ${behind.url} is unavailable: `));
      return true;
    });
  });

  it('is interrupted, not unavailable, when the caller aborts while the token service has not answered', async () => {
    const controller = new AbortController();
    const silent = resources.add(
      await startTestServer(() => {
        controller.abort();
        // never answers
      }),
    );
    const challenging = resources.add(
      await startTestServer((_req, res) => void res.writeHead(401, { 'www-authenticate': `Bearer realm="${silent.url}/token",service="s"` }).end()),
    );
    const http = resources.http({ url: challenging.url, ...USER });
    await assert.rejects(http.send({ method: 'GET', path: manifestPath('v1'), headers: accept, repository: REPO, signal: controller.signal }), (err: unknown) => {
      assert.ok(err instanceof AbortedError, String(err));
      assert.match(err.message, /was interrupted/);
      return true;
    });
    assert.equal(silent.requests.length, 1);
  });
});

describe('RegistryHttp and a registry behind Basic auth', () => {
  const resources = new Resources();
  let image: MemoryImage;
  let registry: MemoryRegistry;
  const good = `Basic ${Buffer.from(`${USER.username}:${USER.password}`).toString('base64')}`;
  const authorize = (req: IncomingMessage, res: ServerResponse): boolean => {
    if (req.headers.authorization === good) return true;
    res.writeHead(401, { 'content-type': 'application/json', 'www-authenticate': 'Basic realm="registry"' });
    res.end(JSON.stringify({ errors: [{ code: 'UNAUTHORIZED', message: 'authentication required' }] }));
    return false;
  };
  before(async () => {
    image = memoryImage([1000]);
    registry = resources.add(await startMemoryRegistry({ repository: REPO, tag: 'v1', image, authorize }));
  });
  after(() => resources.release());

  it('answers the challenge with the credentials, then sends them up front, also with a body it cannot send twice', async () => {
    const http = resources.http({ url: registry.url, ...USER });
    const first = await http.send({ method: 'GET', path: manifestPath('v1'), headers: accept, repository: REPO });
    assert.equal(first.status, 200, errorMessageOf(first.body));
    const seen = registry.requests.length;
    const streamed = await http.send({
      method: 'PUT',
      path: manifestPath('v1'),
      headers: { 'content-type': 'application/vnd.oci.image.manifest.v1+json' },
      body: (async function* () {
        yield image.manifest;
      })(),
      repository: REPO,
      push: true,
    });
    assert.notEqual(streamed.status, 401, 'the credentials went with the streamed body');
    assert.equal(registry.requests.length, seen + 1);
    assert.equal(registry.requests.at(-1)!.headers.authorization, good);
  });

  it('hands back the 401 and its message when the password is wrong, and when none is given', async () => {
    for (const options of [{ username: USER.username, password: 'not-it' }, {}]) {
      const http = resources.http({ url: registry.url, ...options });
      const answer = await http.send({ method: 'GET', path: manifestPath('v1'), headers: accept, repository: REPO });
      assert.equal(answer.status, 401);
      assert.equal(errorMessageOf(answer.body), 'UNAUTHORIZED: authentication required');
    }
  });
});

describe('RegistryHttp over TLS', () => {
  const resources = new Resources();
  let url: string;
  let dir: string;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'shoal-registry-http-'));
    const server = resources.add(await startTestServer((_req, res) => void res.writeHead(200, { 'content-type': 'application/json' }).end('{}'), { tls: { cert: SEED_TEST_CERT, key: SEED_TEST_KEY } }));
    url = server.url;
  });
  after(async () => {
    await resources.release();
    await rm(dir, { recursive: true, force: true });
  });

  it('refuses an unknown CA, trusts caFile, skips verification when told, and says when the CA file cannot be read', async () => {
    const strict = resources.http({ url });
    await assert.rejects(strict.send({ method: 'GET', path: '/v2/' }), (err: unknown) => {
      assert.ok(err instanceof UnavailableError, String(err));
      assert.match(err.message, new RegExp(`^${url} is unavailable for GET /v2/: `));
      return true;
    });
    const caFile = join(dir, 'ca.pem');
    await writeFile(caFile, SEED_TEST_CERT);
    assert.equal((await resources.http({ url, caFile }).send({ method: 'GET', path: '/v2/' })).status, 200);
    assert.equal((await resources.http({ url, insecureSkipVerify: true }).send({ method: 'GET', path: '/v2/' })).status, 200);
    assert.throws(() => new RegistryHttp({ url, caFile: join(dir, 'missing.pem') }), (err: unknown) => {
      assert.ok(err instanceof UnavailableError, String(err));
      assert.match(err.message, /^cannot read the CA file .*missing\.pem for registry /);
      return true;
    });
  });
});
