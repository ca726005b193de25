/**
 * Pure logic of the bundle module: entry paths, sizes, platforms, names, the bundle manifest and parts list
 * formats, signatures, and the progress meter and renderers (with a fake clock).
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { generateKeyPairSync } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BundleRefusedError } from '../../src/bundle/errors.ts';
import {
  BUNDLE_MEDIA_TYPE,
  INVENTORY_MEDIA_TYPE,
  PARTS_MEDIA_TYPE,
  blobDigestOfPath,
  checkEntryPath,
  imageNameOf,
  parseBundleManifest,
  parseInventory,
  parsePartsList,
  parsePlatforms,
  platformMatches,
  storeRepository,
} from '../../src/bundle/format.ts';
import { JsonProgress, LineProgress, TerminalProgress, TransferMeter, describeSnapshot, formatDuration, renderBar } from '../../src/bundle/progress.ts';
import { checkBundleSignature, loadSigningKey, loadTrustedKey, signBundleManifest } from '../../src/bundle/signing.ts';
import { parseReference } from '../../src/oci/index.ts';
import { parseSize } from '../../src/limits/size.ts';

const HEX = 'a'.repeat(64);

function refused(fn: () => unknown, reason: string, message?: RegExp): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof BundleRefusedError, `expected BundleRefusedError, got ${String(err)}`);
    assert.equal(err.reason, reason);
    if (message) assert.match(err.message, message);
    return true;
  });
}

describe('bundle entry paths', () => {
  it('normalises harmless paths', () => {
    assert.equal(checkEntryPath('./blobs/sha256/x'), 'blobs/sha256/x');
    assert.equal(checkEntryPath('blobs/'), 'blobs');
    assert.equal(checkEntryPath('a//b/./c'), 'a/b/c');
  });
  it('refuses paths that could leave the bundle', () => {
    refused(() => checkEntryPath('/etc/passwd'), 'unsafe', /absolute/);
    refused(() => checkEntryPath('../x'), 'unsafe', /\.\./);
    refused(() => checkEntryPath('blobs/../../x'), 'unsafe', /\.\./);
    refused(() => checkEntryPath('C:/x'), 'unsafe', /Windows/);
    refused(() => checkEntryPath('a\\..\\b'), 'unsafe');
    refused(() => checkEntryPath('a\0b'), 'unsafe');
    refused(() => checkEntryPath('./'), 'unsafe', /empty/);
  });
  it('reads blob digests from blob paths only', () => {
    assert.equal(blobDigestOfPath(`blobs/sha256/${HEX}`), `sha256:${HEX}`);
    assert.equal(blobDigestOfPath('index.json'), undefined);
    assert.equal(blobDigestOfPath('blobs/sha256'), undefined);
    refused(() => blobDigestOfPath('blobs/sha256/nothex'), 'format');
  });
});

describe('bundle options', () => {
  it('reads --split sizes by the one size rule (src/limits/size.ts): G is 10^9, Gi is 2^30', () => {
    assert.equal(parseSize('4G'), 4_000_000_000);
    assert.equal(parseSize('700Mi'), 700 * 1024 ** 2);
    assert.equal(parseSize('650MiB'), 650 * 1024 ** 2);
    assert.equal(parseSize('4.5Gi'), 4.5 * 1024 ** 3);
    assert.equal(parseSize('1048576'), 1048576);
    assert.throws(() => parseSize('lots'), /not a size/);
    assert.throws(() => parseSize('0'), /not a usable size/);
  });
  it('parses and matches platforms', () => {
    const sel = parsePlatforms('linux/amd64, linux/arm64/v8');
    assert.deepEqual(sel, [
      { os: 'linux', architecture: 'amd64', variant: undefined },
      { os: 'linux', architecture: 'arm64', variant: 'v8' },
    ]);
    assert.ok(platformMatches({ os: 'linux', architecture: 'amd64' }, sel));
    assert.ok(platformMatches({ os: 'linux', architecture: 'arm64', variant: 'v8' }, sel));
    assert.ok(!platformMatches({ os: 'linux', architecture: 'arm64', variant: 'v7' }, sel));
    assert.ok(platformMatches({ os: 'linux', architecture: 'arm64', variant: 'v8' }, parsePlatforms('linux/arm64')), 'no variant matches any');
    assert.ok(!platformMatches(undefined, sel));
    assert.throws(() => parsePlatforms('linux'), /os\/arch/);
    assert.throws(() => parsePlatforms(','), /at least one/);
  });
  it('maps references to the repositories a node stores them in', () => {
    assert.equal(storeRepository(parseReference('nginx:1.27')), 'docker.io/library/nginx');
    assert.equal(storeRepository(parseReference('registry.local:5000/team/app:v1')), 'registry.local-5000/team/app');
  });
  it('names images from index.json annotations', () => {
    assert.deepEqual(imageNameOf({ 'io.containerd.image.name': 'docker.io/library/nginx:1.27', 'org.opencontainers.image.ref.name': '1.27' }, undefined), parseReference('nginx:1.27'));
    assert.deepEqual(imageNameOf({ 'org.opencontainers.image.ref.name': 'example.com/a/b:v1' }, undefined), parseReference('example.com/a/b:v1'));
    assert.deepEqual(imageNameOf({ 'org.opencontainers.image.ref.name': 'v1' }, 'example.com/a/b'), parseReference('example.com/a/b:v1'));
    assert.equal(imageNameOf(undefined, undefined), undefined);
    refused(() => imageNameOf({ 'org.opencontainers.image.ref.name': 'v1' }, undefined), 'format', /--repository/);
  });
});

describe('bundle manifest, parts list and inventory formats', () => {
  const good = {
    schemaVersion: 1,
    mediaType: BUNDLE_MEDIA_TYPE,
    created: '2026-01-01T00:00:00.000Z',
    images: [{ reference: 'example.com/a:v1', digest: `sha256:${HEX}`, mediaType: 'application/vnd.oci.image.manifest.v1+json' }],
    files: [{ path: 'index.json', size: 3, sha256: HEX }],
    omitted: [{ digest: `sha256:${'b'.repeat(64)}`, size: 9 }],
  };
  const bytes = (v: unknown) => Buffer.from(JSON.stringify(v));
  it('reads a good manifest', () => {
    const m = parseBundleManifest(bytes(good));
    assert.equal(m.files[0]!.path, 'index.json');
    assert.equal(m.omitted[0]!.size, 9);
  });
  it('refuses malformed manifests', () => {
    refused(() => parseBundleManifest(Buffer.from('{')), 'format', /not JSON/);
    refused(() => parseBundleManifest(bytes({ ...good, schemaVersion: 2 })), 'format', /version/);
    refused(() => parseBundleManifest(bytes({ ...good, files: [{ path: 'x', size: -1, sha256: HEX }] })), 'format');
    refused(() => parseBundleManifest(bytes({ ...good, files: [{ path: '../x', size: 1, sha256: HEX }] })), 'unsafe');
    refused(() => parseBundleManifest(bytes({ ...good, files: [good.files[0], good.files[0]] })), 'format', /twice/);
  });
  it('reads parts lists and checks their sum', () => {
    const list = { schemaVersion: 1, mediaType: PARTS_MEDIA_TYPE, size: 5, parts: [{ name: 'b.tar.part001', size: 5, sha256: HEX }] };
    assert.equal(parsePartsList(bytes(list), 'x').parts.length, 1);
    refused(() => parsePartsList(bytes({ ...list, size: 6 }), 'x'), 'format', /sum/);
    refused(() => parsePartsList(bytes({ ...list, parts: [{ name: '../p', size: 5, sha256: HEX }] }), 'x'), 'format', /plain file name/);
  });
  it('reads inventories and says what a wrong file is', () => {
    const inv = { schemaVersion: 1, mediaType: INVENTORY_MEDIA_TYPE, blobs: [{ digest: `sha256:${HEX}`, size: 4 }] };
    assert.equal(parseInventory(bytes(inv), 'inv.json').blobs.length, 1);
    assert.throws(() => parseInventory(bytes({ blobs: [] }), 'inv.json'), /not a Shoal inventory/);
  });
});

describe('bundle signatures', () => {
  it('signs, verifies with the trusted key and refuses others', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'shoal-bundle-keys-'));
    try {
      const a = generateKeyPairSync('ed25519');
      const b = generateKeyPairSync('ed25519');
      await writeFile(join(dir, 'a.pem'), a.privateKey.export({ type: 'pkcs8', format: 'pem' }));
      await writeFile(join(dir, 'a.pub'), a.publicKey.export({ type: 'spki', format: 'pem' }));
      await writeFile(join(dir, 'b.pub'), b.publicKey.export({ type: 'spki', format: 'pem' }));
      const rsa = generateKeyPairSync('rsa', { modulusLength: 1024 });
      await writeFile(join(dir, 'rsa.pem'), rsa.privateKey.export({ type: 'pkcs8', format: 'pem' }));
      const key = await loadSigningKey(join(dir, 'a.pem'));
      const trustedA = await loadTrustedKey(join(dir, 'a.pub'));
      const trustedB = await loadTrustedKey(join(dir, 'b.pub'));
      assert.equal(trustedA.keyId, key.keyId);
      const manifest = Buffer.from('{"files":[]}');
      const sig = signBundleManifest(manifest, key);
      assert.deepEqual(checkBundleSignature(sig, manifest, [trustedA]), { keyId: key.keyId, trusted: true, valid: true });
      assert.deepEqual(checkBundleSignature(sig, manifest, []), { keyId: key.keyId, trusted: false, valid: true });
      assert.equal(checkBundleSignature(sig, Buffer.from('{"files":[1]}'), []).valid, false);
      refused(() => checkBundleSignature(sig, manifest, [trustedB]), 'signature', /not trusted/);
      refused(() => checkBundleSignature(sig, Buffer.from('{"files":[1]}'), [trustedA]), 'signature', /altered/);
      refused(() => checkBundleSignature(Buffer.from('nope'), manifest, [trustedA]), 'signature');
      await assert.rejects(loadSigningKey(join(dir, 'rsa.pem')), /ed25519/);
      await assert.rejects(loadSigningKey(join(dir, 'a.pub')), /openssl genpkey/);
      await assert.rejects(loadTrustedKey(join(dir, 'missing.pub')), /cannot read/);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe('bundle progress', () => {
  it('measures rate and ETA over a window and never goes backwards', () => {
    let now = 0;
    const meter = new TransferMeter(1000, () => now, 5_000);
    now = 1000;
    meter.add(100);
    let s = meter.snapshot();
    assert.equal(s.bytes, 100);
    assert.equal(s.rate, 100);
    assert.equal(s.percent, 10);
    assert.equal(s.etaSeconds, 9);
    now = 2000;
    meter.add(-5);
    meter.add(0);
    s = meter.snapshot();
    assert.equal(s.bytes, 100, 'negative and zero amounts do not count');
    assert.equal(s.percent, 10);
    now = 3000;
    meter.add(2000); // more than the total: the total grows, the bar ends at 100 %
    s = meter.snapshot();
    assert.equal(s.total, 2100);
    assert.equal(s.percent, 100);
    assert.equal(s.etaSeconds, 0);
  });
  it('describes snapshots for people', () => {
    assert.equal(formatDuration(65), '1:05');
    assert.equal(formatDuration(3725), '1:02:05');
    assert.equal(describeSnapshot({ bytes: 512 * 1024 * 1024, total: 1024 ** 3, rate: 100 * 1024 * 1024, etaSeconds: 5.2, elapsedSeconds: 5, percent: 50 }), '50% 512 MiB of 1.0 GiB, 100 MiB/s, ETA 0:05');
    const bar = renderBar('import', { bytes: 1, total: 4, rate: 1, percent: 25, elapsedSeconds: 1, etaSeconds: 3 }, 80);
    assert.match(bar, /^import \[#+\.+\] 25% /);
    assert.equal(renderBar('import', { bytes: 10, rate: 1, elapsedSeconds: 1 }, 80), 'import 10 B, 1 B/s');
  });
  it('renders a bar on a terminal that only grows, warnings on their own lines', () => {
    let now = 0;
    const out: string[] = [];
    const p = new TerminalProgress({ write: (t: string) => out.push(t), columns: 100 }, () => now, 60_000);
    p.start('export', 1000);
    for (let i = 1; i <= 10; i++) {
      now += 100;
      p.advance(100);
      (p as unknown as { tick(): void }).tick();
      if (i === 5) p.event({ event: 'warning', message: 'half way' });
    }
    p.finish();
    p.finish();
    const bars = out.filter((t) => /\] \d+%/.test(t));
    const percents = bars.map((t) => Number(/\] (\d+)%/.exec(t)![1]));
    assert.deepEqual(percents, [...percents].sort((a, b) => a - b), `percentages go backwards: ${percents}`);
    assert.equal(percents.at(-1), 100);
    assert.ok(out.some((t) => t.includes('warning: half way\n')));
    assert.ok(out.at(-1)!.endsWith('\n'), 'the final bar ends the line');
    assert.ok(bars.every((t) => t.startsWith('\r')), 'bars redraw in place');
  });
  it('writes plain lines and JSON events', () => {
    let now = 0;
    const lines: string[] = [];
    const lp = new LineProgress({ write: (t: string) => lines.push(t) }, () => now, 60_000);
    lp.start('import', 2048);
    now = 1000;
    lp.advance(2048);
    lp.finish();
    assert.deepEqual(lines, ['import: started, 2.0 KiB to go\n', 'import: finished 100% 2.0 KiB of 2.0 KiB, 2.0 KiB/s, ETA 0:00\n']);
    const json: string[] = [];
    const jp = new JsonProgress({ write: (t: string) => json.push(t) }, () => now, 60_000);
    jp.start('verify', 10);
    jp.event({ event: 'blob', digest: `sha256:${HEX}`, size: 10, action: 'verified' });
    now = 2000;
    jp.advance(10);
    jp.finish();
    const events = json.map((l) => JSON.parse(l) as Record<string, unknown>);
    assert.deepEqual(events.map((e) => e.event), ['start', 'blob', 'progress']);
    assert.equal(events[0]!.total, 10);
    assert.equal(events[2]!.bytes, 10);
    assert.equal(events[2]!.percent, 100);
  });
});
