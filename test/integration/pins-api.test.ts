/**
 * The pin API of a real node (`/shoal/pins`): pin by digest and by tag (also with `?ns=`), list, read one,
 * unpin, and every malformed or unknown request answered with its OCI error JSON (never a 5xx), leaving the
 * pins as they were. The page's pin buttons (`canPin` of GET /shoal/images) follow the role check of PUT
 * /shoal/pins, on a node without users and on one with users and grants.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { startTestNode, type TestNode } from '../helpers/node.ts';
import { makeImage, randomDigest, rawRequest, request, type PushedImage, type RawResult } from '../helpers/oci-client.ts';

let t: TestNode;
let app: PushedImage;
let mirrored: PushedImage;
/** Where a push with `?ns=registry.local:5000` puts `team/mirrored`. */
const MIRRORED = 'registry.local-5000/team/mirrored';

function send(method: string, path: string): Promise<RawResult> {
  return rawRequest(t.hostPort, { method, path, timeoutMs: 10_000 });
}

async function pins(): Promise<Array<{ repository: string; digest: string; reason: string; created: number }>> {
  const r = await request(t.url, 'GET', '/shoal/pins');
  assert.equal(r.status, 200);
  return r.json().pins;
}

/** Asserts the status and OCI error code of a raw answer. */
function assertOciError(r: RawResult, status: number, code: string): string {
  assert.ok(r.response, `an answer arrived (closed=${r.closed}, timedOut=${r.timedOut})`);
  assert.equal(r.response.status, status, r.response.body.toString());
  assert.match(r.response.headers['content-type'] ?? '', /application\/json/);
  const body = r.response.json<{ errors: Array<{ code: string; message: string }> }>();
  assert.equal(body.errors[0]!.code, code);
  assert.ok(body.errors[0]!.message.length > 0);
  return body.errors[0]!.message;
}

describe('pin API', () => {
  before(async () => {
    t = await startTestNode();
    app = await makeImage(t.url, 'team/app', { tag: 'v1' });
    // What a node holds for `registry.local:5000/team/mirrored:1.4` when containerd pulls it through with ?ns=.
    mirrored = await makeImage(t.url, MIRRORED, { tag: '1.4' });
  });

  after(async () => {
    await t?.stop();
  });

  it('lists no pins on a new node', async () => {
    assert.deepEqual(await pins(), []);
  });

  it('pins by digest with a reason and answers with the pin', async () => {
    const r = await request(t.url, 'PUT', `/shoal/pins/team/app@${app.digest}?reason=${encodeURIComponent('release 1.4')}`);
    assert.equal(r.status, 201, r.text());
    const pin = r.json();
    assert.equal(pin.repository, 'team/app');
    assert.equal(pin.digest, app.digest);
    assert.equal(pin.reason, 'release 1.4');
    assert.equal(typeof pin.created, 'number');
    const one = await request(t.url, 'GET', `/shoal/pins/team/app@${app.digest}`);
    assert.equal(one.status, 200);
    assert.deepEqual(one.json(), pin);
  });

  it('pins by tag: the pin is on the digest the tag points at', async () => {
    const r = await request(t.url, 'PUT', `/shoal/pins/${MIRRORED}:1.4`);
    assert.equal(r.status, 201, r.text());
    assert.equal(r.json().digest, mirrored.digest);
    assert.equal(r.json().reason, 'pinned through the API');
    // The same with ?ns=, naming the repository as the registry does.
    const viaNs = await request(t.url, 'PUT', `/shoal/pins/team/mirrored:1.4?ns=registry.local:5000&reason=again`);
    assert.equal(viaNs.status, 201, viaNs.text());
    assert.equal(viaNs.json().repository, MIRRORED);
    const listed = (await pins()).map((p) => `${p.repository}@${p.digest} ${p.reason}`).sort();
    assert.deepEqual(listed, [`${MIRRORED}@${mirrored.digest} again`, `team/app@${app.digest} release 1.4`].sort());
  });

  it('unpins (by tag and by digest), and an unpin of a pin that does not exist is a 404 OCI error', async () => {
    const byTag = await request(t.url, 'DELETE', `/shoal/pins/${MIRRORED}:1.4`);
    assert.equal(byTag.status, 202, byTag.text());
    assert.equal(byTag.json().digest, mirrored.digest);
    const again = await send('DELETE', `/shoal/pins/${MIRRORED}@${mirrored.digest}`);
    assert.match(assertOciError(again, 404, 'MANIFEST_UNKNOWN'), /is not pinned/);
    const never = await send('DELETE', `/shoal/pins/team/app@${randomDigest()}`);
    assertOciError(never, 404, 'MANIFEST_UNKNOWN');
    assertOciError(await send('GET', `/shoal/pins/${MIRRORED}@${mirrored.digest}`), 404, 'MANIFEST_UNKNOWN');
    assert.deepEqual((await pins()).map((p) => p.repository), ['team/app']);
  });

  it('answers malformed and unknown pin requests with OCI errors and changes nothing', async () => {
    const before = await pins();
    const cases: Array<[string, string, number, string]> = [
      // Malformed percent-escapes (decodeURIComponent throws on each).
      ['PUT', '/shoal/pins/%E0%A4%A', 400, 'NAME_INVALID'],
      ['DELETE', `/shoal/pins/team/app%@${app.digest}`, 400, 'NAME_INVALID'],
      ['GET', '/shoal/pins/team/%ZZapp:v1', 400, 'NAME_INVALID'],
      ['PUT', '/shoal/pins/team/app%', 400, 'NAME_INVALID'],
      // Neither a digest nor a tag, a bad name, digest or tag, a bad ns.
      ['PUT', '/shoal/pins/team/app', 400, 'NAME_INVALID'],
      ['PUT', `/shoal/pins/Team/App@${app.digest}`, 400, 'NAME_INVALID'],
      ['PUT', `/shoal/pins/registry.local:5000/team/app@${app.digest}`, 400, 'NAME_INVALID'],
      ['PUT', '/shoal/pins/team/app@sha256:abc', 400, 'DIGEST_INVALID'],
      ['PUT', '/shoal/pins/team/app@md5:abc', 400, 'DIGEST_INVALID'],
      ['PUT', '/shoal/pins/team/app:bad%20tag', 400, 'TAG_INVALID'],
      ['PUT', '/shoal/pins/team/app:v1?ns=not%20a%20host', 400, 'NAME_INVALID'],
      ['PUT', `/shoal/pins/${'a'.repeat(300)}:v1`, 400, 'NAME_INVALID'],
      // Unknown repository, tag, manifest.
      ['PUT', '/shoal/pins/team/nothing:v1', 404, 'NAME_UNKNOWN'],
      ['PUT', '/shoal/pins/team/app:v9', 404, 'MANIFEST_UNKNOWN'],
      ['PUT', `/shoal/pins/team/app@${randomDigest()}`, 404, 'MANIFEST_UNKNOWN'],
      ['PUT', `/shoal/pins/team/app@${mirrored.digest}`, 404, 'MANIFEST_UNKNOWN'],
      ['DELETE', '/shoal/pins/team/app:v9', 404, 'MANIFEST_UNKNOWN'],
      // Methods the API does not offer.
      ['POST', '/shoal/pins', 405, 'UNSUPPORTED'],
      ['DELETE', '/shoal/pins', 405, 'UNSUPPORTED'],
      ['POST', `/shoal/pins/team/app@${app.digest}`, 405, 'UNSUPPORTED'],
    ];
    for (const [method, path, status, code] of cases) {
      const r = await send(method, path);
      assert.equal(r.response?.status, status, `${method} ${path.slice(0, 80)}: ${r.response?.body.toString()}`);
      assertOciError(r, status, code);
    }
    assert.deepEqual(await pins(), before, 'no request changed the pins');
  });

  it('lists with and without a trailing slash', async () => {
    const r = await request(t.url, 'GET', '/shoal/pins/');
    assert.equal(r.status, 200);
    assert.deepEqual(r.json().pins, await pins());
  });
});

describe("the page's pin buttons follow the admin role", () => {
  const basic = (user: string, password: string): string => `Basic ${Buffer.from(`${user}:${password}`).toString('base64')}`;
  const PASSWORD = 'pin-test-password';
  let dir = '';
  let node: TestNode | undefined;
  let image: PushedImage;

  type ImageRow = { repository: string; digest: string; canPin: boolean };
  const images = async (auth?: string): Promise<{ status: number; rows?: ImageRow[]; code?: string }> => {
    const r = await request(node!.url, 'GET', '/shoal/images', { headers: auth ? { Authorization: auth } : undefined });
    const body = r.json();
    return r.status === 200 ? { status: 200, rows: body.images } : { status: r.status, code: body.errors?.[0]?.code };
  };
  const pin = async (auth: string | undefined, method: 'PUT' | 'DELETE' = 'PUT'): Promise<number> =>
    (await request(node!.url, method, `/shoal/pins/team/app@${image.digest}`, { headers: auth ? { Authorization: auth } : undefined })).status;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'shoal-canpin-'));
    // First a node without users: anonymous callers on this host hold every role, the pin buttons included.
    node = await startTestNode({ dataDir: join(dir, 'data') });
    image = await makeImage(node.url, 'team/app', { tag: 'v1' });
    await makeImage(node.url, 'other/tool', { tag: 'v2' });
  });

  after(async () => {
    await node?.stop();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('without users, a caller on this host may pin: canPin on every image, and the pin is taken', async () => {
    const { rows } = await images();
    assert.equal(rows?.length, 2);
    assert.ok(rows!.every((r) => r.canPin === true), JSON.stringify(rows));
    assert.equal(await pin(undefined), 201);
    assert.equal(await pin(undefined, 'DELETE'), 202);
  });

  it('with users, only an admin sees the list, with canPin on every image; others may neither list nor pin', async () => {
    await node!.stop();
    node = undefined;
    const htpasswdFile = join(dir, 'htpasswd');
    await promisify(execFile)('htpasswd', ['-cbB', htpasswdFile, 'ops', PASSWORD]);
    for (const u of ['reader', 'teamadmin']) await promisify(execFile)('htpasswd', ['-bB', htpasswdFile, u, PASSWORD]);
    node = await startTestNode({
      dataDir: join(dir, 'data'),
      config: {
        htpasswdFile,
        grants: [
          { user: 'ops', prefix: '', roles: ['admin'] },
          { user: 'reader', prefix: '', roles: ['pull'] },
          { user: 'teamadmin', prefix: 'team/', roles: ['admin'] },
        ],
        anonymous: ['pull'],
      },
    });
    const admin = await images(basic('ops', PASSWORD));
    assert.equal(admin.status, 200);
    assert.deepEqual(admin.rows!.map((r) => `${r.repository} ${r.canPin}`).sort(), ['other/tool true', 'team/app true']);
    assert.equal(await pin(basic('ops', PASSWORD)), 201);
    assert.equal(await pin(basic('ops', PASSWORD), 'DELETE'), 202);
    // Without the admin role: the list (and so any pin button) is refused, as the pin itself is.
    assert.deepEqual(await images(basic('reader', PASSWORD)), { status: 403, code: 'DENIED' });
    assert.equal(await pin(basic('reader', PASSWORD)), 403);
    assert.deepEqual(await images(), { status: 401, code: 'UNAUTHORIZED' });
    assert.equal(await pin(undefined), 401);
    // Admin of one prefix: may pin there, but the node's list needs admin of the node.
    assert.deepEqual(await images(basic('teamadmin', PASSWORD)), { status: 403, code: 'DENIED' });
    assert.equal(await pin(basic('teamadmin', PASSWORD)), 201);
    assert.deepEqual((await node!.node.store.listPins()).map((p) => p.repository), ['team/app']);
  });
});
