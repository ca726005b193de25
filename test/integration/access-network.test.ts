/**
 * Access over a real network and over TLS.
 *
 * Safe default: a `shoal serve` process listening on 0.0.0.0 in one network namespace, with no users, and a client
 * in another namespace (every 127.x address is loopback, so a client beyond loopback needs a namespace of its
 * own). The client pulls; its pushes, deletes and admin calls get 403 with an OCI error body and write nothing;
 * the node's own host (loopback inside its namespace) still pushes. With `--anonymous all` the client pushes.
 * Addresses are 10.233.21.0/24, only inside these namespaces.
 *
 * TLS: a CA and a server certificate made with openssl in the test; skopeo pushes over HTTPS with the CA and
 * credentials; a new certificate written over the files is served without a restart.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { X509Certificate } from 'node:crypto';
import { mkdir, mkdtemp, readFile, rm, writeFile, copyFile, rename } from 'node:fs/promises';
import { connect } from 'node:tls';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Agent } from 'undici';
import bcrypt from 'bcryptjs';
import { NetnsLab, sh, type NsProcess } from '../helpers/netns.ts';
import { skopeoIn } from '../helpers/skopeo.ts';
import { SHOAL_BIN } from '../helpers/spawn-node.ts';
import { waitFor } from '../helpers/cluster.ts';
import { httpClient } from '../helpers/http.ts';
import { PassThrough } from 'node:stream';
import { startNode, type ShoalNode } from '../../src/node.ts';
import { defaultConfig } from '../../src/config/index.ts';
import { createLogger } from '../../src/logger.ts';
import { eachLine } from '../helpers/spawn-node.ts';
import { buildImageLayout, type ImageLayout } from '../fixtures/images.ts';
import type { AuditEntry } from '../../src/access/index.ts';

const SUBNET = '10.233.21';

function nodeEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('SHOAL_') && k !== 'NODE_TEST_CONTEXT') env[k] = v;
  return env;
}

describe('a node listening beyond loopback without users (network namespaces)', () => {
  const lab = new NetnsLab('shacc');
  let work = '';
  let layout: ImageLayout;
  let nodeNs = '';
  let clientNs = '';
  const nodeUrl = `http://${SUBNET}.11:5000`;
  let proc: NsProcess | undefined;

  async function curl(ns: string, method: string, url: string): Promise<{ status: number; body: string }> {
    const marker = '\n@@status@@';
    const { stdout } = await lab.exec(ns, 'curl', ['-sS', '--max-time', '30', '-X', method, '-w', `${marker}%{http_code}`, url], { timeoutMs: 40_000 });
    const at = stdout.lastIndexOf(marker);
    return { status: Number(stdout.slice(at + marker.length).trim()), body: stdout.slice(0, at) };
  }

  async function startNode(extra: string[]): Promise<void> {
    await proc?.terminate();
    proc = lab.spawn(nodeNs, process.execPath, [SHOAL_BIN, 'serve', '--data', join(work, 'data'), '--listen', '0.0.0.0:5000', '--log-level', 'info', ...extra], nodeEnv());
    await proc.waitForLog((l) => l.msg === 'listening', 60_000);
  }

  before(async () => {
    await lab.checkPermitted();
    await lab.removeLeftovers();
    work = await mkdtemp(join(tmpdir(), 'shoal-accnet-'));
    layout = await buildImageLayout(join(work, 'layout'));
    await lab.createBridge();
    nodeNs = await lab.addHost('node', `${SUBNET}.11/24`);
    clientNs = await lab.addHost('client', `${SUBNET}.12/24`);
    await startNode([]);
  });

  after(async () => {
    await lab.cleanup();
    if (work) await rm(work, { recursive: true, force: true });
  });

  it('serves pulls to everyone, refuses push, delete and admin calls from other hosts, and takes them from its own host', { timeout: 300_000 }, async () => {
    assert.ok(proc!.logs.some((l) => /listening beyond loopback without users/.test(String(l.msg))), 'the node says what it does');
    // The node's own host pushes over loopback.
    const local = await skopeoIn(join(work, 'sk-node'), { prefix: ['ip', 'netns', 'exec', nodeNs] });
    await local('copy', '--retry-times', '0', '--preserve-digests', '--dest-tls-verify=false', `oci:${layout.dir}:single`, 'docker://127.0.0.1:5000/apps/web:v1');

    // The other host pulls.
    const remote = await skopeoIn(join(work, 'sk-client'), { prefix: ['ip', 'netns', 'exec', clientNs] });
    await remote('copy', '--retry-times', '0', '--src-tls-verify=false', `docker://${SUBNET}.11:5000/apps/web:v1`, `oci:${join(work, 'pulled')}:v1`);
    const pulled = await curl(clientNs, 'GET', `${nodeUrl}/v2/apps/web/manifests/v1`);
    assert.equal(pulled.status, 200);

    // ... and is refused everything else, with an OCI error body.
    const statusBefore = (await curl(nodeNs, 'GET', 'http://127.0.0.1:5000/shoal/status')).body;
    const storeBefore = JSON.parse(statusBefore).store;
    await assert.rejects(
      remote('copy', '--retry-times', '0', '--dest-tls-verify=false', `oci:${layout.dir}:multi`, `docker://${SUBNET}.11:5000/apps/planted:v1`),
      /denied|refused to clients on other hosts/i,
    );
    const refused: Array<[string, string]> = [
      ['POST', `${nodeUrl}/v2/apps/web/blobs/uploads/`],
      ['PUT', `${nodeUrl}/v2/apps/web/manifests/v2`],
      ['DELETE', `${nodeUrl}/v2/apps/web/manifests/v1`],
      ['DELETE', `${nodeUrl}/v2/apps/web/blobs/${layout.single.manifests[0]!.config.digest}`],
      ['POST', `${nodeUrl}/v2/docker.io/library/nginx/blobs/uploads/?ns=docker.io`],
      ['POST', `${nodeUrl}/shoal/gc`],
      ['GET', `${nodeUrl}/shoal/status`],
      ['GET', `${nodeUrl}/shoal/peers`],
      ['PUT', `${nodeUrl}/shoal/pins/apps/web:v1`],
    ];
    for (const [method, url] of refused) {
      const r = await curl(clientNs, method, url);
      assert.equal(r.status, 403, `${method} ${url}: ${r.body}`);
      const body = JSON.parse(r.body) as { errors: Array<{ code: string; message: string }> };
      assert.equal(body.errors[0]!.code, 'DENIED');
      assert.match(body.errors[0]!.message, /loopback/);
    }
    // A client on the node's host that dials the node's own address (not loopback) is on this host too.
    assert.equal((await curl(nodeNs, 'GET', `${nodeUrl}/shoal/status`)).status, 200);
    const statusAfter = JSON.parse((await curl(nodeNs, 'GET', 'http://127.0.0.1:5000/shoal/status')).body);
    assert.deepEqual(statusAfter.store, storeBefore, 'nothing was written');
    assert.equal((await curl(nodeNs, 'GET', 'http://127.0.0.1:5000/v2/apps/web/tags/list')).body, '{"name":"apps/web","tags":["v1"]}');
    assert.equal((await curl(nodeNs, 'GET', 'http://127.0.0.1:5000/v2/apps/planted/tags/list')).status, 404);

    const audit = (await readFile(join(work, 'data', 'audit.log'), 'utf8'))
      .split('\n')
      .filter(Boolean)
      .map((l) => JSON.parse(l) as AuditEntry);
    assert.ok(audit.some((e) => e.from === `${SUBNET}.12` && e.result === 'denied' && e.action === 'delete'), 'the refusals are in the audit log with the address');
    assert.ok(audit.some((e) => e.from === '127.0.0.1' && e.action === 'push' && e.result === 'ok' && e.repository === 'apps/web'));
  });

  it('with --anonymous all, the other host pushes and deletes', { timeout: 300_000 }, async () => {
    await startNode(['--anonymous', 'all']);
    const remote = await skopeoIn(join(work, 'sk-client2'), { prefix: ['ip', 'netns', 'exec', clientNs] });
    await remote('copy', '--retry-times', '0', '--preserve-digests', '--dest-tls-verify=false', `oci:${layout.dir}:single`, `docker://${SUBNET}.11:5000/apps/open:v1`);
    assert.equal((await curl(clientNs, 'GET', `${nodeUrl}/v2/apps/open/tags/list`)).body, '{"name":"apps/open","tags":["v1"]}');
    assert.equal((await curl(clientNs, 'DELETE', `${nodeUrl}/v2/apps/open/manifests/v1`)).status, 202);
  });
});

describe('TLS: a certificate made with openssl, reloaded when it changes', () => {
  let work = '';
  let node: ShoalNode | undefined;
  let layout: ImageLayout;
  let agent: Agent | undefined;
  /** The node's log lines (JSON), to see what it did with a certificate. */
  const logs: Array<Record<string, unknown>> = [];

  async function openssl(...args: string[]): Promise<void> {
    await sh('openssl', args, { timeoutMs: 60_000 });
  }

  /** A server key and certificate for 127.0.0.1 signed by the test CA, written to `<name>.key` and `<name>.crt`. */
  async function serverCert(name: string, cn: string): Promise<{ key: string; crt: string }> {
    const key = join(work, `${name}.key`);
    const csr = join(work, `${name}.csr`);
    const crt = join(work, `${name}.crt`);
    const ext = join(work, `${name}.ext`);
    await openssl('req', '-new', '-newkey', 'rsa:2048', '-nodes', '-keyout', key, '-out', csr, '-subj', `/CN=${cn}`);
    await writeFile(ext, 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n');
    await openssl('x509', '-req', '-in', csr, '-CA', join(work, 'ca', 'ca.crt'), '-CAkey', join(work, 'ca.key'), '-CAcreateserial', '-out', crt, '-days', '2', '-extfile', ext);
    return { key, crt };
  }

  /** The certificate the node serves now. */
  function servedCertificate(port: number, ca: Buffer): Promise<X509Certificate> {
    return new Promise((ok, fail) => {
      const socket = connect({ host: '127.0.0.1', port, ca, servername: 'localhost' }, () => {
        const raw = socket.getPeerCertificate().raw;
        socket.end();
        ok(new X509Certificate(raw));
      });
      socket.once('error', fail);
    });
  }

  before(async () => {
    work = await mkdtemp(join(tmpdir(), 'shoal-tls-'));
    await mkdir(join(work, 'ca'));
    await openssl('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', join(work, 'ca.key'), '-out', join(work, 'ca', 'ca.crt'), '-days', '2', '-subj', '/CN=shoal test CA');
    const first = await serverCert('first', 'shoal first');
    await copyFile(first.crt, join(work, 'tls.crt'));
    await copyFile(first.key, join(work, 'tls.key'));
    await writeFile(join(work, 'htpasswd'), `ci:${bcrypt.hashSync('ci-pass', 6)}\n`);
    layout = await buildImageLayout(join(work, 'layout'));
    const out = new PassThrough();
    eachLine(out, (line) => logs.push(JSON.parse(line) as Record<string, unknown>));
    node = await startNode(
      {
        ...defaultConfig(),
        dataDir: join(work, 'data'),
        listen: '127.0.0.1:0',
        tlsCert: join(work, 'tls.crt'),
        tlsKey: join(work, 'tls.key'),
        htpasswdFile: join(work, 'htpasswd'),
        grants: [{ user: 'ci', prefix: '', roles: ['push'] }],
        shutdownGraceMs: 2_000,
      },
      { logger: createLogger('info', out) },
    );
    agent = new Agent({ connect: { ca: await readFile(join(work, 'ca', 'ca.crt')) } });
  });

  after(async () => {
    await agent?.close();
    await node?.stop();
    if (work) await rm(work, { recursive: true, force: true });
  });

  it('serves HTTPS: skopeo pushes with the CA and credentials, and pulls back', { timeout: 300_000 }, async () => {
    assert.match(node!.url, /^https:\/\/127\.0\.0\.1:\d+$/);
    const https = `https://127.0.0.1:${node!.port}`;
    const http = httpClient(agent!, 20_000);
    const ping = await http(`${https}/v2/`);
    assert.equal(ping.status, 401, 'HTTPS answers, with the challenge');
    assert.match(ping.headers['www-authenticate'] ?? '', /^Basic/);
    await assert.rejects(fetch(`http://127.0.0.1:${node!.port}/v2/`).then(async (r) => r.status === 200 || Promise.reject(new Error(`HTTP ${r.status}`))), 'plain HTTP is not served');
    const skopeo = await skopeoIn(join(work, 'skopeo'));
    const certDir = join(work, 'ca');
    await skopeo('copy', '--retry-times', '0', '--preserve-digests', '--dest-cert-dir', certDir, '--dest-creds', 'ci:ci-pass', `oci:${layout.dir}:single`, `docker://127.0.0.1:${node!.port}/apps/tls:v1`);
    await assert.rejects(skopeo('inspect', '--raw', `docker://127.0.0.1:${node!.port}/apps/tls:v1`), /certificate|x509/i, 'without the CA the certificate is not trusted');
    const raw = await skopeo('inspect', '--raw', '--cert-dir', certDir, `docker://127.0.0.1:${node!.port}/apps/tls:v1`);
    assert.equal(raw.trim(), layout.single.bytes.toString().trim());
  });

  it('a new certificate written over the files is served without a restart; a broken pair is not taken', { timeout: 120_000 }, async () => {
    const ca = await readFile(join(work, 'ca', 'ca.crt'));
    const before = await servedCertificate(node!.port, ca);
    assert.match(before.subject, /shoal first/);
    // A key that does not match the certificate: the node keeps serving the old pair.
    const stray = await serverCert('stray', 'shoal stray');
    await copyFile(stray.key, join(work, 'tls.key.tmp'));
    await rename(join(work, 'tls.key.tmp'), join(work, 'tls.key'));
    await waitFor('the mismatched pair to be seen and refused', () => logs.some((l) => l.msg === 'TLS certificate not reloaded; the previous one stays in force'), 30_000, 100);
    assert.match((await servedCertificate(node!.port, ca)).subject, /shoal first/, 'the old pair is still served');
    const second = await serverCert('second', 'shoal second');
    // Now the real renewal: certificate and key written (renamed into place) together.
    await copyFile(second.crt, join(work, 'tls.crt.tmp'));
    await copyFile(second.key, join(work, 'tls.key.tmp'));
    await rename(join(work, 'tls.crt.tmp'), join(work, 'tls.crt'));
    await rename(join(work, 'tls.key.tmp'), join(work, 'tls.key'));
    await waitFor('the new certificate to be served', async () => (await servedCertificate(node!.port, ca)).subject.includes('shoal second'), 30_000, 200);
    assert.ok(logs.some((l) => l.msg === 'TLS certificate reloaded'));
    const http = httpClient(agent!, 20_000);
    assert.equal((await http(`https://127.0.0.1:${node!.port}/v2/`, { headers: { authorization: `Basic ${Buffer.from('ci:ci-pass').toString('base64')}` } })).status, 200);
  });
});
