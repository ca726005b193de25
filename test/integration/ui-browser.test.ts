/**
 * The node's web page in a real browser: Debian's chromium, headless, driven by playwright-core.
 *   - Two nodes on loopback, an image pushed to the first and one of its blobs pulled: `/` leads to `/ui/`, which
 *     shows the image, the peer and the disk figures and the pull, with no console error and nothing asked of
 *     any other origin; an admin pins and unpins the image with its button; screenshots (desktop and phone) are
 *     kept under test-artifacts/.
 *   - The same page from a browser inside a network namespace whose only route is the node (itself in another
 *     namespace, with users: the browser logs in as an admin), with its peer in a third namespace.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { chmod, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import bcrypt from 'bcryptjs';
import { chromium, type BrowserContext, type Page } from 'playwright-core';
import { startCluster, waitFor, type Cluster } from '../helpers/cluster.ts';
import { NetnsLab, type NsProcess } from '../helpers/netns.ts';
import { pushRandomImage, type PushedImage } from '../helpers/seed-registry.ts';
import { SHOAL_BIN } from '../helpers/spawn-node.ts';
import { startTestNode } from '../helpers/node.ts';
import { writeClusterKey } from '../../src/p2p/keys.ts';

const CHROMIUM = process.env.SHOAL_CHROMIUM ?? '/usr/bin/chromium';
const ARTIFACTS = resolve(dirname(fileURLToPath(import.meta.url)), '../../test-artifacts');
const FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'];

/** A browser with a fresh profile; `executable` may be a wrapper that runs chromium elsewhere (a namespace). */
async function openBrowser(profile: string, opts: { executable?: string; credentials?: { username: string; password: string }; viewport?: { width: number; height: number } } = {}): Promise<BrowserContext> {
  return chromium.launchPersistentContext(profile, {
    executablePath: opts.executable ?? CHROMIUM,
    headless: true,
    args: FLAGS,
    viewport: opts.viewport ?? { width: 1280, height: 900 },
    httpCredentials: opts.credentials,
    timeout: 60_000,
  });
}

/** Console errors, page errors and requests to any origin but the node's, as they happen. */
function watch(page: Page, origin: string): { problems: string[] } {
  const problems: string[] = [];
  page.on('console', (m) => {
    if (m.type() === 'error') problems.push(`console: ${m.text()}`);
  });
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('request', (r) => {
    const url = r.url();
    if (!url.startsWith(origin) && !url.startsWith('data:')) problems.push(`request to another origin: ${url}`);
  });
  page.on('requestfailed', (r) => problems.push(`request failed: ${r.url()} ${r.failure()?.errorText ?? ''}`));
  return { problems };
}

async function textOf(page: Page, selector: string): Promise<string> {
  return (await page.locator(selector).innerText()).trim();
}

describe('the node page in chromium', () => {
  let cluster: Cluster | undefined;
  let image: PushedImage;
  let work = '';

  before(async () => {
    assert.ok(existsSync(CHROMIUM), `${CHROMIUM} is missing: scripts/test-deps.sh installs Debian's chromium`);
    await mkdir(ARTIFACTS, { recursive: true });
    work = await mkdtemp(join(tmpdir(), 'shoal-ui-'));
    cluster = await startCluster({ size: 2, config: { maxStore: '1Gi', minFree: '1Gi' } });
    await cluster.waitConnected();
    image = await pushRandomImage(cluster.nodes[0]!.url, 'team/web', '2.1', { layerSizes: [400_000, 1_100_000] });
    const blob = await fetch(`${cluster.nodes[0]!.url}/v2/team/web/blobs/${image.layers[1]!.digest}`);
    assert.equal((await blob.arrayBuffer()).byteLength, 1_100_000);
  });
  after(async () => {
    await cluster?.stop();
    if (work) await rm(work, { recursive: true, force: true });
  });

  it('shows the image, the peer, the disk and the pull; an admin pins and unpins; desktop and phone screenshots', async () => {
    const [n0, n1] = cluster!.nodes;
    const browser = await openBrowser(join(work, 'profile-desktop'));
    try {
      const page = browser.pages()[0] ?? (await browser.newPage());
      const seen = watch(page, n0!.url);
      await page.goto(`${n0!.url}/`);
      assert.equal(new URL(page.url()).pathname, '/ui/');
      await page.locator('#images tbody tr', { hasText: 'team/web' }).waitFor({ timeout: 20_000 });
      await page.locator('#peers tbody tr', { hasText: n1!.peerId.slice(-12) }).waitFor({ timeout: 20_000 });
      await page.locator('#pulls tbody tr', { hasText: 'team/web' }).waitFor({ timeout: 20_000 });
      const row = page.locator('#images tbody tr', { hasText: 'team/web' });
      assert.match(await row.innerText(), /2\.1/);
      assert.match(await row.innerText(), /linux\/amd64/);
      assert.match(await row.innerText(), new RegExp(image.manifestDigest.slice(7, 19)));
      assert.match(await textOf(page, '#disk-used'), /\d/);
      assert.match(await textOf(page, '#disk-quota'), /of a 1\.00 GiB quota/);
      assert.match(await textOf(page, '#disk-free'), /free$/);
      assert.match(await textOf(page, '#disk-marks'), /keeps 1\.00 GiB free/);
      assert.equal(await textOf(page, '#peer-count'), '1');
      assert.match(await textOf(page, '#pulls tbody'), /local/);
      assert.equal(await page.locator('#chart svg').count(), 1);
      assert.ok((await page.locator('#chart svg rect.bar.local').count()) >= 1, 'the chart has a bar of local bytes');

      // The page refreshes itself: a second image shows up without a reload.
      await pushRandomImage(n0!.url, 'team/api', '0.9', { layerSizes: [50_000] });
      await page.locator('#images tbody tr', { hasText: 'team/api' }).waitFor({ timeout: 20_000 });

      // Pin, then unpin, with the row's button (the caller is an admin: loopback on a node without users).
      await row.getByRole('button', { name: 'Pin' }).click();
      await row.locator('.pill.pinned').waitFor({ timeout: 20_000 });
      assert.deepEqual((await n0!.node.store.listPins()).map((p) => `${p.repository}@${p.digest}`), [`team/web@${image.manifestDigest}`]);
      await row.getByRole('button', { name: 'Unpin' }).click();
      await row.locator('.pill.pinned').waitFor({ state: 'detached', timeout: 20_000 });
      assert.deepEqual(await n0!.node.store.listPins(), []);

      await page.screenshot({ path: join(ARTIFACTS, 'node-page.png'), fullPage: true });
      assert.deepEqual(seen.problems, []);
    } finally {
      await browser.close();
    }

    // A phone: the tables turn into cards, nothing wider than the screen.
    const phone = await openBrowser(join(work, 'profile-phone'), { viewport: { width: 390, height: 844 } });
    try {
      const page = phone.pages()[0] ?? (await phone.newPage());
      const seen = watch(page, n0!.url);
      await page.goto(`${n0!.url}/ui/`);
      await page.locator('#images tbody tr', { hasText: 'team/web' }).waitFor({ timeout: 20_000 });
      await page.locator('#peers tbody tr', { hasText: n1!.peerId.slice(-12) }).waitFor({ timeout: 20_000 });
      const width = (await page.evaluate('document.documentElement.scrollWidth')) as number;
      assert.ok(width <= 390, `the page is ${width} px wide on a 390 px screen`);
      await page.screenshot({ path: join(ARTIFACTS, 'node-page-phone.png'), fullPage: true });
      assert.deepEqual(seen.problems, []);
    } finally {
      await phone.close();
    }
  });
});

describe('the node page from a network namespace whose only route is the node', () => {
  const lab = new NetnsLab('shui');
  const SUBNET = '10.233.41';
  let work = '';
  const procs: NsProcess[] = [];

  before(async () => {
    await lab.checkPermitted();
    await lab.removeLeftovers();
    work = await mkdtemp(join(tmpdir(), 'shoal-ui-ns-'));
    // Node 1's store gets an image first (on loopback, in this process), then the node runs in its namespace.
    const data1 = join(work, 'n1');
    const filler = await startTestNode({ dataDir: data1 });
    try {
      await pushRandomImage(filler.url, 'site/app', '3.0', { layerSizes: [100_000] });
    } finally {
      await filler.stop();
    }
    const key = join(work, 'cluster.key');
    await writeClusterKey(key);
    await writeFile(join(work, 'htpasswd'), `ops:${bcrypt.hashSync('ops-pass', 6)}\n`);
    await lab.createBridge();
    const ns1 = await lab.addHost('n1', `${SUBNET}.11/24`);
    const ns2 = await lab.addHost('n2', `${SUBNET}.12/24`);
    const nsBrowser = await lab.addHost('browser', `${SUBNET}.30/32`);
    await lab.exec(nsBrowser, 'ip', ['route', 'add', `${SUBNET}.11/32`, 'dev', 'eth0']);
    const env: NodeJS.ProcessEnv = {};
    for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('SHOAL_') && k !== 'NODE_TEST_CONTEXT') env[k] = v;
    const serve = (ns: string, ip: string, dataDir: string, extra: string[]): NsProcess =>
      lab.spawn(ns, process.execPath, [SHOAL_BIN, 'serve', '--data', dataDir, '--listen', `${ip}:5000`, '--p2p-listen', `${ip}:4001`, '--cluster-key', key, '--log-level', 'info', ...extra], env);
    procs.push(serve(ns1, `${SUBNET}.11`, data1, ['--peer', `${SUBNET}.12:4001`, '--htpasswd', join(work, 'htpasswd'), '--grant', 'ops:admin']));
    procs.push(serve(ns2, `${SUBNET}.12`, join(work, 'n2'), ['--peer', `${SUBNET}.11:4001`]));
    await Promise.all(procs.map((p) => p.waitForLog((l) => l.msg === 'listening', 60_000)));
    await waitFor('the two nodes to connect', () => procs.every((p) => p.logs.some((l) => l.msg === 'peer connected')), 30_000);
    // Chromium started inside the browser's namespace: `ip netns exec` hands it the pipes playwright talks over.
    const wrapper = join(work, 'chromium-in-ns');
    await writeFile(wrapper, `#!/bin/sh\nexec ip netns exec ${nsBrowser} ${CHROMIUM} "$@"\n`);
    await chmod(wrapper, 0o755);
  });
  after(async () => {
    await lab.cleanup();
    if (work) await rm(work, { recursive: true, force: true });
  });

  it('loads, logs in as an admin, and shows the image, the peer and the disk', async () => {
    const origin = `http://${SUBNET}.11:5000`;
    const browser = await openBrowser(join(work, 'profile'), { executable: join(work, 'chromium-in-ns'), credentials: { username: 'ops', password: 'ops-pass' } });
    try {
      const page = browser.pages()[0] ?? (await browser.newPage());
      const seen = watch(page, origin);
      await page.goto(`${origin}/`);
      assert.equal(page.url(), `${origin}/ui/`);
      await page.locator('#images tbody tr', { hasText: 'site/app' }).waitFor({ timeout: 30_000 });
      await page.locator('#peers tbody tr', { hasText: `${SUBNET}.12` }).waitFor({ timeout: 30_000 });
      assert.match(await textOf(page, '#disk-free'), /free$/);
      assert.equal(await page.locator('#images tbody tr', { hasText: 'site/app' }).getByRole('button', { name: 'Pin' }).count(), 1);
      await page.screenshot({ path: join(ARTIFACTS, 'node-page-netns.png'), fullPage: true });
      assert.deepEqual(seen.problems, []);
      // The browser's namespace reaches nothing but the node.
      const elsewhere = await page.evaluate(async (url) => {
        try {
          await fetch(url, { mode: 'no-cors', signal: AbortSignal.timeout(3000) });
          return 'reached';
        } catch {
          return 'unreachable';
        }
      }, `http://${SUBNET}.12:5000/healthz`);
      assert.equal(elsewhere, 'unreachable');
    } finally {
      await browser.close();
    }
  });
});
