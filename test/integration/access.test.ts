/**
 * Access control on a real node (in this process, LevelDB in a temp dir) with users made by the real
 * `htpasswd -B`, a static token, grants per prefix, immutable tags and a webhook receiver; the clients are
 * plain HTTP, skopeo (--creds) and podman (login), and the `shoal` CLI for `audit`, `export` and `import`.
 *
 * Every refused case checks that nothing was written (the store's repositories, tags and blob count).
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createServer, type IncomingMessage, type Server } from 'node:http';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type { AddressInfo } from 'node:net';
import { startTestNode, type TestNode } from '../helpers/node.ts';
import { waitFor } from '../helpers/cluster.ts';
import { MediaTypes, descriptorOf, randomBlob, request, sha256, type Resp } from '../helpers/oci-client.ts';
import { skopeoIn, type Skopeo } from '../helpers/skopeo.ts';
import { runShoal } from '../helpers/spawn-node.ts';
import { startContainerd } from '../helpers/containerd.ts';
import { buildImageLayout, type ImageLayout } from '../fixtures/images.ts';
import type { AuditEntry, WebhookEvent } from '../../src/access/index.ts';

const execFileP = promisify(execFile);
const basic = (user: string, password: string): string => `Basic ${Buffer.from(`${user}:${password}`).toString('base64')}`;
const TOKEN = 'scanner-token-0123456789abcdef';

const USERS: Record<string, string> = { ci: 'ci-pass', ops: 'ops-pass', cleaner: 'cleaner-pass', reader: 'reader-pass' };

interface Pushed {
  digest: string;
  size: number;
  mediaType: string;
  bytes: Buffer;
}

/** Pushes a small random image (two blobs, monolithic) and its manifest, with `auth` on every request. */
async function pushImage(base: string, repo: string, tag: string, auth?: string): Promise<Pushed> {
  const headers: Record<string, string> = auth ? { Authorization: auth } : {};
  const layer = randomBlob(512);
  const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [] }, n: randomBlob(4).toString('hex') }));
  for (const b of [layer, config]) {
    const r = await request(base, 'POST', `/v2/${repo}/blobs/uploads/?digest=${sha256(b)}`, { headers: { ...headers, 'Content-Type': 'application/octet-stream' }, body: b });
    if (r.status !== 201) throw new Error(`blob push to ${repo}: ${r.status} ${r.text()}`);
  }
  const bytes = Buffer.from(
    JSON.stringify({ schemaVersion: 2, mediaType: MediaTypes.OciManifest, config: descriptorOf(config, MediaTypes.OciConfig), layers: [descriptorOf(layer, MediaTypes.OciLayerGzip)] }),
  );
  const r = await request(base, 'PUT', `/v2/${repo}/manifests/${tag}`, { headers: { ...headers, 'Content-Type': MediaTypes.OciManifest }, body: bytes });
  if (r.status !== 201) throw new Error(`manifest push to ${repo}:${tag}: ${r.status} ${r.text()}`);
  return { digest: sha256(bytes), size: bytes.length, mediaType: MediaTypes.OciManifest, bytes };
}

/** A manifest over blobs already in `repo` (a new digest each call), pushed by `tag`. */
async function putManifestOver(base: string, repo: string, tag: string, like: Pushed, auth: string): Promise<Resp> {
  const doc = JSON.parse(like.bytes.toString()) as Record<string, unknown>;
  doc.annotations = { n: randomBlob(4).toString('hex') };
  return request(base, 'PUT', `/v2/${repo}/manifests/${tag}`, { headers: { Authorization: auth, 'Content-Type': MediaTypes.OciManifest }, body: Buffer.from(JSON.stringify(doc)) });
}

function errorCode(r: Resp): string | undefined {
  try {
    return (r.json() as { errors: Array<{ code: string }> }).errors[0]!.code;
  } catch {
    return undefined;
  }
}

/** A webhook receiver: records every event it gets. */
async function startReceiver(): Promise<{ url: string; events: WebhookEvent[]; contentTypes: string[]; server: Server }> {
  const events: WebhookEvent[] = [];
  const contentTypes: string[] = [];
  const server = createServer((req: IncomingMessage, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      contentTypes.push(String(req.headers['content-type']));
      events.push(...(JSON.parse(Buffer.concat(chunks).toString()) as { events: WebhookEvent[] }).events);
      res.end('ok');
    });
  });
  await new Promise<void>((ok) => server.listen(0, '127.0.0.1', ok));
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/hook`, events, contentTypes, server };
}

async function closeServer(server: Server | undefined): Promise<void> {
  if (!server) return;
  server.closeAllConnections();
  await new Promise<void>((ok) => server.close(() => ok()));
}

async function readAuditFile(file: string): Promise<AuditEntry[]> {
  const text = await readFile(file, 'utf8').catch(() => '');
  return text
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l) as AuditEntry);
}

describe('access control on a node with users, grants, immutable tags and a webhook', () => {
  let work = '';
  let t: TestNode;
  let base = '';
  let receiver: Awaited<ReturnType<typeof startReceiver>>;
  let skopeo: Skopeo;
  let layout: ImageLayout;
  let htpasswdFile = '';
  const auth = (user: string): string => basic(user, USERS[user]!);

  /** What a refused request must leave as it was. */
  async function storeState(): Promise<string> {
    const store = t.node.store;
    const repos = (await store.listRepositories()).sort();
    const tags: string[] = [];
    for (const r of repos) for (const tag of (await store.listTags(r)).sort()) tags.push(`${r}:${tag}=${await store.resolveTag(r, tag)}`);
    return JSON.stringify({ repos, tags, stats: await store.stats() });
  }

  before(async () => {
    // Lowercase on purpose: `podman pull oci:DIR:tag` names the image after DIR.
    work = join(tmpdir(), `shoal-access-${randomBytes(6).toString('hex')}`);
    await mkdir(work, { mode: 0o700 });
    htpasswdFile = join(work, 'htpasswd');
    await execFileP('htpasswd', ['-cbB', htpasswdFile, 'ci', USERS.ci!]);
    for (const u of ['ops', 'cleaner', 'reader']) await execFileP('htpasswd', ['-bB', htpasswdFile, u, USERS[u]!]);
    const tokensFile = join(work, 'tokens');
    await writeFile(tokensFile, `scanner:${TOKEN}\n`);
    receiver = await startReceiver();
    t = await startTestNode({
      config: {
        htpasswdFile,
        tokensFile,
        grants: [
          { user: 'ci', prefix: 'apps/', roles: ['push'] },
          { user: 'ci', prefix: 'releases/', roles: ['push'] },
          { user: 'ops', prefix: '', roles: ['admin'] },
          { user: 'cleaner', prefix: 'apps/', roles: ['delete'] },
          { user: 'reader', prefix: 'apps/', roles: ['pull'] },
          { user: 'scanner', prefix: '', roles: ['pull'] },
        ],
        anonymous: ['pull'],
        immutableTags: ['releases/'],
        webhooks: [{ url: receiver.url, backoffMs: 100 }],
        shutdownGraceMs: 2_000,
      },
    });
    base = t.url;
    skopeo = await skopeoIn(join(work, 'skopeo'), { timeoutMs: 120_000 });
    layout = await buildImageLayout(join(work, 'layout'));
  });

  after(async () => {
    await t?.stop();
    await closeServer(receiver?.server);
    if (work) await rm(work, { recursive: true, force: true });
  });

  it('GET /v2/ challenges a client without credentials, checks the ones it sends, and lets empty ones through', async () => {
    const none = await request(base, 'GET', '/v2/');
    assert.equal(none.status, 401);
    assert.equal(none.headers.get('www-authenticate'), 'Basic realm="shoal", charset="UTF-8"');
    assert.equal(errorCode(none), 'UNAUTHORIZED');
    assert.equal((await request(base, 'GET', '/v2/', { headers: { Authorization: auth('ci') } })).status, 200);
    const wrong = await request(base, 'GET', '/v2/', { headers: { Authorization: basic('ci', 'wrong') } });
    assert.equal(wrong.status, 401);
    assert.match(wrong.headers.get('www-authenticate') ?? '', /^Basic realm=/);
    assert.equal((await request(base, 'GET', '/v2/', { headers: { Authorization: basic('', '') } })).status, 200, 'a client with no credentials goes on anonymously');
    assert.equal((await request(base, 'GET', '/v2/', { headers: { Authorization: `Bearer ${TOKEN}` } })).status, 200);
    assert.equal((await request(base, 'GET', '/v2/', { headers: { Authorization: basic('scanner', TOKEN) } })).status, 200, 'a token as the password of its name');
  });

  it('refuses pushes: 401 with a challenge without credentials or with a wrong password, 403 DENIED without the role; nothing is written', async () => {
    const before = await storeState();
    const blob = randomBlob(100);
    const post = (headers: Record<string, string>, repo = 'apps/web') =>
      request(base, 'POST', `/v2/${repo}/blobs/uploads/?digest=${sha256(blob)}`, { headers: { ...headers, 'Content-Type': 'application/octet-stream' }, body: blob });
    const none = await post({});
    assert.equal(none.status, 401);
    assert.match(none.headers.get('www-authenticate') ?? '', /Basic realm="shoal"/);
    assert.equal(errorCode(none), 'UNAUTHORIZED');
    const wrong = await post({ Authorization: basic('ci', 'not-it') });
    assert.equal(wrong.status, 401);
    assert.equal(errorCode(wrong), 'UNAUTHORIZED');
    const reader = await post({ Authorization: auth('reader') });
    assert.equal(reader.status, 403);
    assert.equal(errorCode(reader), 'DENIED');
    const elsewhere = await post({ Authorization: auth('ci') }, 'other/web');
    assert.equal(elsewhere.status, 403, 'ci pushes only under apps/ and releases/');
    const manifest = await request(base, 'PUT', '/v2/other/web/manifests/v1', { headers: { Authorization: auth('ci'), 'Content-Type': MediaTypes.OciManifest }, body: '{}' });
    assert.equal(manifest.status, 403);
    assert.equal((await request(base, 'HEAD', '/v2/other/web/blobs/' + sha256(blob), { headers: { Authorization: auth('ci') } })).status, 404);
    assert.equal(await storeState(), before, 'refused requests wrote nothing');
  });

  it('skopeo --creds: no credentials, a wrong password and a user without the role are refused and write nothing; the right user pushes, anyone pulls', { timeout: 300_000 }, async () => {
    const before = await storeState();
    const src = `oci:${layout.dir}:single`;
    const dest = `docker://${t.hostPort}/apps/skopeo:v1`;
    await assert.rejects(skopeo('copy', '--retry-times', '0', '--dest-tls-verify=false', src, dest), /unauthorized|authentication required/i);
    await assert.rejects(skopeo('copy', '--retry-times', '0', '--dest-tls-verify=false', '--dest-creds', 'ci:wrong', src, dest), /unauthorized|authentication/i);
    await assert.rejects(skopeo('copy', '--retry-times', '0', '--dest-tls-verify=false', '--dest-creds', `reader:${USERS.reader}`, src, dest), /denied|has no push role/i);
    assert.equal(await storeState(), before, 'nothing written by the refused pushes');

    await skopeo('copy', '--retry-times', '0', '--dest-tls-verify=false', '--preserve-digests', '--dest-creds', `ci:${USERS.ci}`, src, dest);
    assert.equal(await t.node.store.resolveTag('apps/skopeo', 'v1'), layout.single.digest);
    // Anonymous pull with authenticated push: skopeo without credentials reads it back.
    const raw = await skopeo('inspect', '--raw', '--tls-verify=false', `docker://${t.hostPort}/apps/skopeo:v1`);
    assert.equal(sha256(Buffer.from(raw)), layout.single.digest);
    await skopeo('copy', '--retry-times', '0', '--src-tls-verify=false', `docker://${t.hostPort}/apps/skopeo:v1`, `oci:${join(work, 'pulled')}:v1`);
    // The token works as skopeo credentials too.
    await skopeo('inspect', '--raw', '--tls-verify=false', '--creds', `scanner:${TOKEN}`, `docker://${t.hostPort}/apps/skopeo:v1`);
    await assert.rejects(skopeo('inspect', '--raw', '--tls-verify=false', '--creds', 'scanner:wrong-token-wrong-token', `docker://${t.hostPort}/apps/skopeo:v1`), /unauthorized|authentication/i);
  });

  it('podman login: a wrong password is refused; after login podman pushes and pulls; a user without the role is refused', { timeout: 600_000 }, async () => {
    const pw = join(work, 'podman');
    for (const d of ['root', 'run', 'tmp', 'net', 'home', 'config', 'data']) await mkdir(join(pw, d), { recursive: true });
    await writeFile(join(pw, 'policy.json'), JSON.stringify({ default: [{ type: 'insecureAcceptAnything' }] }));
    await writeFile(join(pw, 'registries.conf'), 'unqualified-search-registries = []\n');
    await writeFile(join(pw, 'auth.json'), '{"auths":{}}\n');
    await writeFile(join(pw, 'storage.conf'), `[storage]\ndriver = "vfs"\ngraphroot = "${join(pw, 'root')}"\nrunroot = "${join(pw, 'run')}"\n`);
    await writeFile(join(pw, 'containers.conf'), `[engine]\ncgroup_manager = "cgroupfs"\nevents_logger = "file"\n[network]\nnetwork_config_dir = "${join(pw, 'net')}"\n`);
    const env: NodeJS.ProcessEnv = {
      PATH: process.env.PATH ?? '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
      HOME: join(pw, 'home'),
      TMPDIR: join(pw, 'tmp'),
      XDG_RUNTIME_DIR: join(pw, 'run'),
      XDG_CONFIG_HOME: join(pw, 'config'),
      XDG_DATA_HOME: join(pw, 'data'),
      REGISTRY_AUTH_FILE: join(pw, 'auth.json'),
      CONTAINERS_REGISTRIES_CONF: join(pw, 'registries.conf'),
      CONTAINERS_STORAGE_CONF: join(pw, 'storage.conf'),
      CONTAINERS_CONF: join(pw, 'containers.conf'),
    };
    const globals = ['--root', join(pw, 'root'), '--runroot', join(pw, 'run'), '--tmpdir', join(pw, 'tmp'), '--storage-driver', 'vfs', '--cgroup-manager', 'cgroupfs', '--events-backend', 'file'];
    const podman = async (...args: string[]): Promise<string> => {
      try {
        return (await execFileP('podman', [...globals, ...args], { env, timeout: 180_000, killSignal: 'SIGKILL', maxBuffer: 16 << 20 })).stdout.trim();
      } catch (err) {
        const e = err as { stderr?: string; code?: unknown };
        throw new Error(`podman ${args.join(' ')}: exit ${String(e.code)}: ${e.stderr ?? ''}`, { cause: err });
      }
    };
    const pol = ['--signature-policy', join(pw, 'policy.json')];
    const id = await podman('pull', ...pol, '-q', `oci:${layout.dir}:single`);
    const before = await storeState();
    await assert.rejects(podman('login', '--tls-verify=false', '-u', 'ci', '-p', 'wrong', t.hostPort), /unauthorized|invalid username\/password|authentication/i);
    await assert.rejects(podman('push', ...pol, '--tls-verify=false', id, `${t.hostPort}/apps/podman:v1`), /unauthorized|authentication required/i, 'not logged in');
    await podman('login', '--tls-verify=false', '-u', 'reader', '-p', USERS.reader!, t.hostPort);
    await assert.rejects(podman('push', ...pol, '--tls-verify=false', id, `${t.hostPort}/apps/podman:v1`), /denied|no push role/i, 'reader may not push');
    assert.equal(await storeState(), before, 'nothing written by the refused pushes');

    await podman('login', '--tls-verify=false', '-u', 'ci', '-p', USERS.ci!, t.hostPort);
    const digestFile = join(pw, 'digest');
    await podman('push', ...pol, '--tls-verify=false', '--digestfile', digestFile, id, `${t.hostPort}/apps/podman:v1`);
    const pushed = (await readFile(digestFile, 'utf8')).trim();
    assert.equal(await t.node.store.resolveTag('apps/podman', 'v1'), pushed);
    await podman('rmi', '--all', '--force');
    await podman('logout', t.hostPort);
    const pulled = await podman('pull', ...pol, '-q', '--tls-verify=false', `${t.hostPort}/apps/podman:v1`);
    assert.equal(pulled, id, 'anonymous pull of what ci pushed');
  });

  it('roles by prefix: delete only where granted, admin for pins, GC, status and peers', async () => {
    const img = await pushImage(base, 'apps/roles', 'v1', auth('ci'));
    await pushImage(base, 'apps/roles', 'v2', auth('ci'));
    const before = await storeState();
    assert.equal((await request(base, 'DELETE', `/v2/apps/roles/manifests/v2`, { headers: { Authorization: auth('ci') } })).status, 403, 'push is not delete');
    assert.equal((await request(base, 'DELETE', `/v2/apps/roles/manifests/v2`)).status, 401);
    assert.equal((await request(base, 'DELETE', `/v2/apps/roles/manifests/v2`, { headers: { Authorization: auth('reader') } })).status, 403);
    for (const path of ['/shoal/status', '/shoal/peers', '/shoal/pins']) {
      assert.equal((await request(base, 'GET', path)).status, 401, `${path} without credentials`);
      const r = await request(base, 'GET', path, { headers: { Authorization: auth('ci') } });
      assert.equal(r.status, 403, `${path} as ci`);
      assert.equal(errorCode(r), 'DENIED');
    }
    assert.equal((await request(base, 'POST', '/shoal/gc?dryRun=true', { headers: { Authorization: auth('ci') } })).status, 403);
    assert.equal((await request(base, 'PUT', `/shoal/pins/apps/roles@${img.digest}`, { headers: { Authorization: auth('ci') } })).status, 403);
    assert.equal(await storeState(), before, 'nothing changed');
    assert.deepEqual(await t.node.store.listPins(), []);

    assert.equal((await request(base, 'DELETE', `/v2/apps/roles/manifests/v2`, { headers: { Authorization: auth('cleaner') } })).status, 202);
    assert.equal(await t.node.store.resolveTag('apps/roles', 'v2'), undefined);
    assert.equal((await request(base, 'GET', '/shoal/status', { headers: { Authorization: auth('ops') } })).status, 200);
    assert.equal((await request(base, 'GET', '/shoal/peers', { headers: { Authorization: auth('ops') } })).status, 200);
    assert.equal((await request(base, 'PUT', `/shoal/pins/apps/roles@${img.digest}?reason=test`, { headers: { Authorization: auth('ops') } })).status, 201);
    assert.equal((await request(base, 'DELETE', `/shoal/pins/apps/roles:v1`, { headers: { Authorization: auth('ops') } })).status, 202);
    assert.equal((await request(base, 'POST', '/shoal/gc?dryRun=true', { headers: { Authorization: auth('ops') } })).status, 200);
    // The CLI's admin commands take the same credentials.
    const status = await runShoal(['status', '--node', base, '--username', 'ops', '--password', USERS.ops!, '--json']);
    assert.equal(status.code, 0, status.stderr);
    assert.equal(typeof (JSON.parse(status.stdout) as { version: string }).version, 'string');
    const denied = await runShoal(['gc', '--dry-run', '--node', base, '--username', 'ci', '--password', USERS.ci!]);
    assert.equal(denied.code, 1);
    assert.match(denied.stderr, /answered 403: DENIED.*admin role/);
    const anonymous = await runShoal(['peers', '--node', base]);
    assert.equal(anonymous.code, 1);
    assert.match(anonymous.stderr, /answered 401/);
    const peers = await runShoal(['peers', '--node', base, '--username', 'ops', '--password', USERS.ops!]);
    assert.equal(peers.code, 0, peers.stderr);
    assert.match(peers.stdout, /runs without peers/);
  });

  it('immutable tags refuse a move and a delete, and accept the same manifest again', async () => {
    const img = await pushImage(base, 'releases/app', '1.0', auth('ci'));
    const again = await request(base, 'PUT', '/v2/releases/app/manifests/1.0', { headers: { Authorization: auth('ci'), 'Content-Type': img.mediaType }, body: img.bytes });
    assert.equal(again.status, 201, 'the same manifest under the same tag is a retried push, not a move');
    const before = await storeState();
    const moved = await putManifestOver(base, 'releases/app', '1.0', img, auth('ci'));
    assert.equal(moved.status, 403);
    assert.equal(errorCode(moved), 'DENIED');
    assert.match(moved.text(), /immutable/);
    assert.equal(await t.node.store.resolveTag('releases/app', '1.0'), img.digest);
    const byTag = await request(base, 'DELETE', '/v2/releases/app/manifests/1.0', { headers: { Authorization: auth('ops') } });
    assert.equal(byTag.status, 403);
    assert.equal(errorCode(byTag), 'DENIED');
    const byDigest = await request(base, 'DELETE', `/v2/releases/app/manifests/${img.digest}`, { headers: { Authorization: auth('ops') } });
    assert.equal(byDigest.status, 403, 'deleting the manifest would take the tag');
    assert.equal(await storeState(), before, 'nothing changed');
    // A new tag is fine; outside releases/ tags move as usual.
    assert.equal((await putManifestOver(base, 'releases/app', '1.1', img, auth('ci'))).status, 201);
    const mutable = await pushImage(base, 'apps/mutable', 'latest', auth('ci'));
    assert.equal((await putManifestOver(base, 'apps/mutable', 'latest', mutable, auth('ci'))).status, 201);
    const entries = await readAuditFile(join(t.dataDir, 'audit.log'));
    assert.ok(entries.some((e) => e.action === 'push' && e.result === 'denied' && e.repository === 'releases/app' && /immutable/.test(e.detail ?? '')), 'the refused move is in the audit log');
    assert.ok(entries.some((e) => e.action === 'delete' && e.user === 'ops' && e.result === 'denied' && e.repository === 'releases/app' && /immutable/.test(e.detail ?? '')), 'the refused delete too');
  });

  it('webhooks: push and delete events with repository, tag, digest, media type, size and actor', async () => {
    const img = await pushImage(base, 'apps/hooked', 'v7', auth('ci'));
    await waitFor('the push event', () => receiver.events.some((e) => e.action === 'push' && e.target.repository === 'apps/hooked'), 20_000);
    const push = receiver.events.find((e) => e.action === 'push' && e.target.repository === 'apps/hooked')!;
    assert.equal(push.target.tag, 'v7');
    assert.equal(push.target.digest, img.digest);
    assert.equal(push.target.mediaType, MediaTypes.OciManifest);
    assert.equal(push.target.size, img.size);
    assert.equal(push.actor.name, 'ci');
    assert.match(push.id, /^[0-9a-f-]{36}$/);
    assert.ok(!Number.isNaN(Date.parse(push.timestamp)));
    assert.equal(receiver.contentTypes[0], 'application/vnd.docker.distribution.events.v1+json');
    assert.equal((await request(base, 'DELETE', '/v2/apps/hooked/manifests/v7', { headers: { Authorization: auth('cleaner') } })).status, 202);
    await waitFor('the delete event', () => receiver.events.some((e) => e.action === 'delete' && e.target.repository === 'apps/hooked'), 20_000);
    const del = receiver.events.find((e) => e.action === 'delete' && e.target.repository === 'apps/hooked')!;
    assert.equal(del.target.tag, 'v7');
    assert.equal(del.target.digest, img.digest);
    assert.equal(del.target.mediaType, MediaTypes.OciManifest);
    assert.equal(del.actor.name, 'cleaner');
    assert.ok(!receiver.events.some((e) => e.target.repository === 'other/web'), 'refused pushes send nothing');
  });

  it('the htpasswd file is reloaded without a restart', async () => {
    const newcomer = basic('newcomer', 'fresh-pass');
    assert.equal((await request(base, 'GET', '/v2/', { headers: { Authorization: newcomer } })).status, 401);
    await execFileP('htpasswd', ['-bB', htpasswdFile, 'newcomer', 'fresh-pass']);
    await waitFor('the new user to log in', async () => (await request(base, 'GET', '/v2/', { headers: { Authorization: newcomer } })).status === 200, 30_000, 200);
    await execFileP('htpasswd', ['-D', htpasswdFile, 'newcomer']);
    await waitFor('the removed user to be refused', async () => (await request(base, 'GET', '/v2/', { headers: { Authorization: newcomer } })).status === 401, 30_000, 200);
  });

  it('admin paths answer malformed input with 4xx and an error body, never 500', async () => {
    const cases: Array<[string, string]> = [
      ['GET', '/shoal/pins/%zz'],
      ['PUT', '/shoal/pins/%E0%A4%A'],
      ['PUT', '/shoal/pins/apps/x@sha256:nothex'],
      ['PUT', '/shoal/pins/apps/x'],
      ['PUT', '/shoal/pins/Bad_Name:tag'],
      ['PUT', '/shoal/pins/apps/x:bad tag!'],
      ['PUT', '/shoal/pins/apps/x:v1?ns=not a host'],
      ['PUT', '/shoal/pins/apps/x:v1?ns=a&ns=b'],
      ['DELETE', '/shoal/pins/apps/none@sha256:' + '0'.repeat(64)],
      ['POST', '/shoal/pins'],
      ['POST', '/shoal/status'],
      ['DELETE', '/shoal/gc'],
      ['POST', '/shoal/gc?dryRun=maybe'],
      ['POST', '/shoal/gc?dryRun=%zz'],
      ['POST', '/shoal/peers'],
      ['GET', '/shoal/nothing-here'],
      ['GET', '/shoal/'],
      ['GET', '/shoal/pins/apps/x@' + 'a'.repeat(5000)],
    ];
    for (const [method, path] of cases) {
      for (const authz of [undefined, auth('ops')]) {
        const r = await request(base, method, path, { headers: authz ? { Authorization: authz } : {} });
        assert.ok(r.status >= 400 && r.status < 500, `${method} ${path} (${authz ? 'ops' : 'anonymous'}): ${r.status} ${r.text().slice(0, 200)}`);
        assert.ok(errorCode(r), `${method} ${path}: an OCI error body: ${r.text().slice(0, 200)}`);
      }
    }
  });

  it('audit entries for push, tag moves, uploads, deletes, imports, pins, GC and failed logins; shoal audit filters them', { timeout: 300_000 }, async () => {
    // Import: export an image from this node, import it back through the API as ops, and into a stopped store.
    await pushImage(base, 'apps/exported', 'v1', auth('ci'));
    const bundle = join(work, 'bundle.tar');
    const exp = await runShoal(['export', `${t.hostPort}/apps/exported:v1`, '--from', base, '--username', 'reader', '--password', USERS.reader!, '-o', bundle]);
    assert.equal(exp.code, 0, exp.stderr);
    const imp = await runShoal(['import', bundle, '--node', base, '--username', 'ops', '--password', USERS.ops!]);
    assert.equal(imp.code, 0, imp.stderr);
    const offline = join(work, 'offline');
    const impData = await runShoal(['import', bundle, '--data', offline]);
    assert.equal(impData.code, 0, impData.stderr);
    // A tag move, a failed login, a GC.
    const img = await pushImage(base, 'apps/audited', 'v1', auth('ci'));
    assert.equal((await putManifestOver(base, 'apps/audited', 'v1', img, auth('ci'))).status, 201);
    assert.equal((await request(base, 'GET', '/v2/apps/audited/tags/list', { headers: { Authorization: basic('mallory', 'guess') } })).status, 401);
    assert.equal((await request(base, 'POST', '/shoal/gc?dryRun=true', { headers: { Authorization: auth('ops') } })).status, 200);

    const file = join(t.dataDir, 'audit.log');
    const has = (e: AuditEntry[], what: string, match: (x: AuditEntry) => boolean): void => assert.ok(e.some(match), `an audit entry for ${what}; entries:\n${e.map((x) => JSON.stringify(x)).join('\n')}`);
    await waitFor('the GC entry', async () => (await readAuditFile(file)).some((e) => e.action === 'gc'), 10_000);
    const entries = await readAuditFile(file);
    for (const e of entries) {
      assert.ok(e.time && e.user && e.from && e.action && e.result, `complete entry ${JSON.stringify(e)}`);
    }
    has(entries, 'a push', (e) => e.action === 'push' && e.user === 'ci' && e.from === '127.0.0.1' && e.repository === 'apps/audited' && e.reference === 'v1' && e.digest === img.digest && e.result === 'ok');
    has(entries, 'a tag move', (e) => e.action === 'tag-move' && e.repository === 'apps/audited' && e.previous === img.digest && e.digest !== img.digest);
    has(entries, 'an upload', (e) => e.action === 'upload' && e.user === 'ci' && e.result === 'ok' && typeof e.digest === 'string');
    has(entries, 'a delete', (e) => e.action === 'delete' && e.user === 'cleaner' && e.result === 'ok');
    has(entries, 'a refused delete', (e) => e.action === 'delete' && e.user === 'ci' && e.result === 'denied');
    has(entries, 'an import through the API', (e) => e.action === 'import' && e.user === 'ops' && (e.repository ?? '').endsWith('apps/exported') && e.result === 'ok');
    has(entries, 'a pin', (e) => e.action === 'pin' && e.user === 'ops' && e.result === 'ok');
    has(entries, 'an unpin', (e) => e.action === 'unpin' && e.user === 'ops' && e.result === 'ok');
    has(entries, 'a GC', (e) => e.action === 'gc' && e.user === 'ops' && /dry run/.test(e.detail ?? ''));
    has(entries, 'a failed login', (e) => e.action === 'login' && e.user === 'mallory' && e.result === 'unauthorized');
    has(entries, 'an anonymous refusal', (e) => e.user === 'anonymous' && e.result === 'unauthorized');
    const offlineEntries = await readAuditFile(join(offline, 'audit.log'));
    has(offlineEntries, 'an import into a stopped store', (e) => e.action === 'import' && e.from === 'local' && (e.repository ?? '').endsWith('apps/exported') && /bundle bundle\.tar/.test(e.detail ?? ''));

    // The CLI: filters by user, repository prefix and time.
    const byUser = await runShoal(['audit', '--data', t.dataDir, '--user', 'cleaner', '--json']);
    assert.equal(byUser.code, 0, byUser.stderr);
    const cleaner = byUser.stdout.split('\n').filter(Boolean).map((l) => JSON.parse(l) as AuditEntry);
    assert.ok(cleaner.length > 0 && cleaner.every((e) => e.user === 'cleaner'));
    const byRepo = await runShoal(['audit', '--data', t.dataDir, '--repo', 'apps/audited']);
    assert.equal(byRepo.code, 0, byRepo.stderr);
    const lines = byRepo.stdout.split('\n').filter(Boolean);
    assert.ok(lines.length >= 2 && lines.every((l) => l.includes('apps/audited')), byRepo.stdout);
    assert.ok(lines.some((l) => /\btag-move\b/.test(l)));
    const future = await runShoal(['audit', '--data', t.dataDir, '--since', new Date(Date.now() + 86_400_000).toISOString().slice(0, 10)]);
    assert.equal(future.code, 0);
    assert.equal(future.stdout.trim(), '', 'nothing since tomorrow');
    const recent = await runShoal(['audit', '--data', t.dataDir, '--since', '1h', '--action', 'gc']);
    assert.match(recent.stdout, /\bops\b.*\bgc\b/);
    const bad = await runShoal(['audit', '--data', t.dataDir, '--since', 'soon']);
    assert.equal(bad.code, 2);
    const missing = await runShoal(['audit', '--data', join(work, 'no-such-dir')]);
    assert.equal(missing.code, 1);
    assert.match(missing.stderr, /no audit log/);
    // Through the node's API: GET /shoal/audit for an admin, and `shoal audit --node`.
    const remote = await runShoal(['audit', '--node', base, '--username', 'ops', '--password', USERS.ops!, '--action', 'gc', '--json']);
    assert.equal(remote.code, 0, remote.stderr);
    const gcs = remote.stdout.split('\n').filter(Boolean).map((l) => JSON.parse(l) as AuditEntry);
    assert.ok(gcs.length >= 1 && gcs.every((e) => e.action === 'gc') && gcs.some((e) => e.user === 'ops'), remote.stdout);
    const notAdmin = await runShoal(['audit', '--node', base, '--username', 'reader', '--password', USERS.reader!]);
    assert.equal(notAdmin.code, 1);
    assert.match(notAdmin.stderr, /answered 403.*admin role/s);
    const last2 = await request(base, 'GET', '/shoal/audit?limit=2', { headers: { Authorization: auth('ops') } });
    assert.equal(last2.status, 200, last2.text());
    const window = last2.json<{ entries: AuditEntry[]; truncated: boolean }>();
    assert.equal(window.entries.length, 2);
    assert.equal(window.truncated, true);
    assert.ok(Date.parse(window.entries[0]!.time) <= Date.parse(window.entries[1]!.time), 'oldest first');
    assert.equal((await request(base, 'GET', '/shoal/audit', { headers: { Authorization: auth('reader') } })).status, 403);
    for (const query of ['limit=0', 'limit=x', 'since=soon', 'since=2026-13-45', 'user=a&user=b']) {
      const r = await request(base, 'GET', `/shoal/audit?${query}`, { headers: { Authorization: auth('ops') } });
      assert.equal(r.status, 400, `${query}: ${r.text()}`);
      assert.ok(errorCode(r), `${query}: an OCI error body`);
    }
    const shown = await runShoal(['audit', '--node', base, '--username', 'ops', '--password', USERS.ops!, '--limit', '1']);
    assert.equal(shown.code, 0, shown.stderr);
    assert.equal(shown.stdout.trim().split('\n').length, 1);
    assert.match(shown.stderr, /only the last 1 entries/);
  });
});

describe('webhook targets that are down or fail', () => {
  let work = '';
  let t: TestNode | undefined;
  let hanging: Server | undefined;
  let flaky: Server | undefined;
  const held: Array<() => void> = [];
  let hangingSeen = 0;
  const flakyBodies: WebhookEvent[] = [];
  let flakyAttempts = 0;

  before(async () => {
    work = await mkdtemp(join(tmpdir(), 'shoal-hooks-'));
    // Accepts every request and never answers (until the test ends).
    hanging = createServer((_req, res) => {
      hangingSeen++;
      held.push(() => res.destroy());
    });
    // Answers 503 twice, then 200.
    flaky = createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        flakyAttempts++;
        if (flakyAttempts <= 2) {
          res.statusCode = 503;
          res.end();
          return;
        }
        flakyBodies.push(...(JSON.parse(Buffer.concat(chunks).toString()) as { events: WebhookEvent[] }).events);
        res.end();
      });
    });
    await new Promise<void>((ok) => hanging!.listen(0, '127.0.0.1', ok));
    await new Promise<void>((ok) => flaky!.listen(0, '127.0.0.1', ok));
    const hangingUrl = `http://127.0.0.1:${(hanging.address() as AddressInfo).port}/hook`;
    const flakyUrl = `http://127.0.0.1:${(flaky.address() as AddressInfo).port}/hook`;
    t = await startTestNode({
      config: {
        webhooks: [
          { url: hangingUrl, timeoutMs: 600_000, attempts: 1 },
          { url: flakyUrl, backoffMs: 50, attempts: 5, events: ['push'] },
        ],
        shutdownGraceMs: 2_000,
      },
    });
  });

  after(async () => {
    for (const release of held) release();
    await t?.stop();
    await closeServer(hanging);
    await closeServer(flaky);
    if (work) await rm(work, { recursive: true, force: true });
  });

  it('pushes finish while a webhook target holds its request unanswered', async () => {
    const first = await pushImage(t!.url, 'apps/fast', 'v1');
    await waitFor('the hanging target to get the first event', () => hangingSeen === 1, 20_000);
    // The target has not answered (and will not): every further push still completes, each with its 201.
    for (let i = 2; i <= 5; i++) await pushImage(t!.url, 'apps/fast', `v${i}`);
    assert.equal(hangingSeen, 1, 'the target is still holding the first delivery');
    assert.equal(await t!.node.store.resolveTag('apps/fast', 'v1'), first.digest);
    assert.equal((await t!.node.store.listTags('apps/fast')).length, 5);
    assert.equal(t!.node.access.webhooks.pending()[`http://127.0.0.1:${(hanging!.address() as AddressInfo).port}/hook`], 5, 'the events wait in the queue, not in the requests');
  });

  it('a node without users ignores credentials: a client configured with some still works from loopback', async () => {
    const img = await pushImage(t!.url, 'apps/with-creds', 'v1', basic('someone', 'whatever'));
    assert.equal(await t!.node.store.resolveTag('apps/with-creds', 'v1'), img.digest);
    assert.equal((await request(t!.url, 'GET', '/v2/', { headers: { Authorization: basic('someone', 'whatever') } })).status, 200);
    assert.equal((await request(t!.url, 'GET', '/v2/')).status, 200, 'no challenge: there is nobody to log in as');
  });

  it('a failed delivery is retried with backoff until the target takes it', async () => {
    const img = await pushImage(t!.url, 'apps/retried', 'v1');
    await waitFor('the event after two refusals', () => flakyBodies.some((e) => e.target.repository === 'apps/retried' && e.target.digest === img.digest), 30_000);
    assert.ok(flakyAttempts >= 3, `attempts: ${flakyAttempts}`);
    const metrics = await (await fetch(`${t!.url}/metrics`)).text();
    assert.match(metrics, /shoal_webhook_deliveries_total\{result="retried"\} [1-9]/);
  });
});

describe('a node where everything needs a user (anonymous: none)', () => {
  let work = '';
  let t: TestNode;
  const auth = (user: string): string => basic(user, USERS[user]!);

  before(async () => {
    work = await mkdtemp(join(tmpdir(), 'shoal-closed-'));
    const htpasswdFile = join(work, 'htpasswd');
    await execFileP('htpasswd', ['-cbB', htpasswdFile, 'ci', USERS.ci!]);
    await execFileP('htpasswd', ['-bB', htpasswdFile, 'reader', USERS.reader!]);
    t = await startTestNode({
      config: {
        htpasswdFile,
        anonymous: [],
        grants: [
          { user: 'ci', prefix: '', roles: ['push'] },
          { user: 'reader', prefix: 'apps/', roles: ['pull', 'push'] },
        ],
        shutdownGraceMs: 2_000,
      },
    });
  });

  after(async () => {
    await t?.stop();
    if (work) await rm(work, { recursive: true, force: true });
  });

  it('pulls need a user too: 401 with the challenge, for containerd-style requests as well', async () => {
    const img = await pushImage(t.url, 'apps/closed', 'v1', auth('ci'));
    for (const path of ['/v2/apps/closed/manifests/v1', `/v2/apps/closed/manifests/v1?ns=docker.io`, `/v2/apps/closed/blobs/${img.digest}`, '/v2/apps/closed/tags/list', '/v2/_catalog']) {
      const r = await request(t.url, 'GET', path);
      assert.equal(r.status, 401, path);
      assert.match(r.headers.get('www-authenticate') ?? '', /^Basic realm="shoal"/, path);
    }
    const head = await request(t.url, 'HEAD', '/v2/apps/closed/manifests/v1');
    assert.equal(head.status, 401);
    assert.match(head.headers.get('www-authenticate') ?? '', /^Basic/);
    assert.equal((await request(t.url, 'GET', '/v2/apps/closed/manifests/v1', { headers: { Authorization: auth('reader') } })).status, 200);
    assert.equal((await request(t.url, 'GET', '/v2/apps/closed/manifests/v1', { headers: { Authorization: basic('', '') } })).status, 401, 'empty credentials are anonymous');
  });

  it("containerd's credentials: ctr with --user fetches; without, or with a wrong password, it is refused", { timeout: 120_000 }, async () => {
    const img = await pushImage(t.url, 'team/ctr', 'v1', auth('ci'));
    // A short path: containerd's socket must fit a unix socket address.
    const dir = await mkdtemp(join(tmpdir(), 'shctr-'));
    const containerd = await startContainerd(dir);
    try {
      const ref = `${t.hostPort}/team/ctr:v1`;
      const none = await containerd.ctr(['content', 'fetch', '--plain-http', ref], { timeoutMs: 60_000 });
      assert.notEqual(none.code, 0, 'no credentials');
      assert.match(none.stderr, /401|unauthorized/i);
      const wrong = await containerd.ctr(['content', 'fetch', '--plain-http', '--user', 'ci:wrong', ref], { timeoutMs: 60_000 });
      assert.notEqual(wrong.code, 0, 'a wrong password');
      assert.match(wrong.stderr, /401|unauthorized/i);
      const denied = await containerd.ctr(['content', 'fetch', '--plain-http', '--user', `reader:${USERS.reader}`, ref], { timeoutMs: 60_000 });
      assert.notEqual(denied.code, 0, 'reader may not pull team/');
      assert.match(denied.stderr, /403|denied/i);
      await containerd.ctrOk(['content', 'fetch', '--plain-http', '--user', `ci:${USERS.ci}`, ref], { timeoutMs: 60_000 });
      const listed = await containerd.ctrOk(['content', 'ls', '-q']);
      assert.ok(listed.includes(img.digest), 'the manifest is in containerd\'s content store');
    } finally {
      await containerd.stop();
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('the catalog lists only what the caller may pull, paginated with n and last', async () => {
    for (const r of ['apps/cat-a', 'apps/cat-b', 'apps/cat-c', 'releases/cat-d', 'team/cat-e']) await pushImage(t.url, r, 'v1', auth('ci'));
    const list = async (query: string): Promise<{ repos: string[]; link: string | null }> => {
      const r = await request(t.url, 'GET', `/v2/_catalog${query}`, { headers: { Authorization: auth('reader') } });
      assert.equal(r.status, 200, r.text());
      return { repos: (r.json() as { repositories: string[] }).repositories, link: r.headers.get('link') };
    };
    const all = await list('');
    assert.deepEqual(all.repos, ['apps/cat-a', 'apps/cat-b', 'apps/cat-c', 'apps/closed'], 'only apps/, which reader may pull');
    assert.equal(all.link, null);
    const page1 = await list('?n=2');
    assert.deepEqual(page1.repos, ['apps/cat-a', 'apps/cat-b']);
    assert.equal(page1.link, '</v2/_catalog?n=2&last=apps%2Fcat-b>; rel="next"');
    const page2 = await list('?n=2&last=apps%2Fcat-b');
    assert.deepEqual(page2.repos, ['apps/cat-c', 'apps/closed']);
    const page3 = await list('?n=2&last=apps%2Fclosed');
    assert.deepEqual(page3.repos, [], 'nothing after the last one reader may see (releases/ and team/ stay hidden)');
    const ci = await request(t.url, 'GET', '/v2/_catalog', { headers: { Authorization: auth('ci') } });
    assert.deepEqual((ci.json() as { repositories: string[] }).repositories, (await t.node.store.listRepositories()).sort(), 'ci may pull everywhere (push includes pull)');
    const bad = await request(t.url, 'GET', '/v2/_catalog?n=many', { headers: { Authorization: auth('reader') } });
    assert.equal(bad.status, 400);
  });

  it('a mount from a repository the caller may not pull becomes an upload session', async () => {
    const secret = await pushImage(t.url, 'team/secret', 's1', auth('ci'));
    const layer = (JSON.parse(secret.bytes.toString()) as { layers: Array<{ digest: string }> }).layers[0]!.digest;
    const refused = await request(t.url, 'POST', `/v2/apps/mount/blobs/uploads/?mount=${layer}&from=team/secret`, { headers: { Authorization: auth('reader') } });
    assert.equal(refused.status, 202, 'reader may not pull team/: a session instead of the blob');
    assert.equal(await t.node.store.statBlob('apps/mount', layer), undefined);
    const noFrom = await request(t.url, 'POST', `/v2/apps/mount/blobs/uploads/?mount=${layer}`, { headers: { Authorization: auth('reader') } });
    assert.equal(noFrom.status, 202, 'a mount from anywhere needs pull everywhere');
    const allowed = await request(t.url, 'POST', `/v2/apps/mount/blobs/uploads/?mount=${layer}&from=team/secret`, { headers: { Authorization: auth('ci') } });
    assert.equal(allowed.status, 201);
  });
});

describe('scheduled garbage collection in the audit log', () => {
  let t: TestNode | undefined;
  after(async () => {
    await t?.stop();
  });

  it("the node's own collections are recorded as user shoal from local, with what they removed", async () => {
    t = await startTestNode({ config: { gcInterval: '200ms', gcGrace: '0s' } });
    // An upload abandoned at once: the collection has something to say.
    const started = await request(t.url, 'POST', '/v2/apps/abandoned/blobs/uploads/');
    assert.equal(started.status, 202);
    const file = join(t.dataDir, 'audit.log');
    await waitFor('a scheduled collection in the audit log', async () => (await readAuditFile(file)).some((e) => e.action === 'gc' && e.user === 'shoal'), 15_000);
    const entry = (await readAuditFile(file)).find((e) => e.action === 'gc' && e.user === 'shoal')!;
    assert.equal(entry.from, 'local');
    assert.equal(entry.result, 'ok');
    assert.match(entry.detail ?? '', /^scheduled: \d+ tags, \d+ manifests, \d+ blobs, \d+ uploads, \d+ bytes$/);
  });
});
