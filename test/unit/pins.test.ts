/** Pin references (what `shoal pin` takes, where it looks) and StorePins on the in-memory store. */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { NotFoundError, InvalidError, MediaType } from '../../src/oci/index.ts';
import { openMemoryStore } from '../../src/store/index.ts';
import { StorePins, formatPinTable, listPins, parsePinReference, pinImages, unpinImages, type PinBackend } from '../../src/life/pins.ts';

const D = `sha256:${'ab'.repeat(32)}`;

describe('parsePinReference', () => {
  it('looks in the repository a node keeps the registry in, then in the bare repository', () => {
    assert.deepEqual(parsePinReference('registry.local:5000/team/app:1.4').repositories, ['registry.local-5000/team/app', 'team/app']);
    assert.deepEqual(parsePinReference('registry.local:5000/team/app:1.4').selector, { tag: '1.4' });
    assert.deepEqual(parsePinReference('nginx:1.27').repositories, ['docker.io/library/nginx', 'library/nginx']);
    assert.deepEqual(parsePinReference('docker.io/library/nginx:1.27').repositories, ['docker.io/library/nginx', 'library/nginx']);
    assert.deepEqual(parsePinReference('Registry.Local/team/app').selector, { tag: 'latest' });
    assert.deepEqual(parsePinReference('Registry.Local/team/app').repositories, ['registry.local/team/app', 'team/app']);
  });

  it('pins by digest when one is given, also next to a tag', () => {
    assert.deepEqual(parsePinReference(`nginx@${D}`).selector, { digest: D });
    assert.deepEqual(parsePinReference(`nginx:1.27@${D}`).selector, { digest: D });
  });

  it('refuses what is not a reference, saying why', () => {
    for (const [text, why] of [
      ['', /empty image reference/],
      ['Team/App:1', /invalid repository name/],
      ['app@sha256:xyz', /invalid sha256 digest/],
      ['app:bad tag', /invalid tag/],
      ['reg_istry:5000/app:1', /is not a registry host/],
      [`registry.local/${'a'.repeat(250)}:1`, /characters long/],
    ] as const) {
      assert.throws(() => parsePinReference(text), (err: unknown) => err instanceof InvalidError && why.test(err.message) && err.message.startsWith(`${JSON.stringify(text)} is not an image reference`), text);
    }
  });
});

describe('StorePins', () => {
  const image = async () => {
    const store = await openMemoryStore();
    const bytes = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MediaType.OciIndex, manifests: [] }));
    const record = await store.putManifest({ repository: 'registry.local-5000/team/app', bytes, mediaType: MediaType.OciIndex, tag: '1.4' });
    return { store, digest: record.digest, pins: new StorePins(store, 'memory') };
  };

  it('pins by tag and by digest, lists, unpins; reports images that are not there', async () => {
    const { pins, digest } = await image();
    const out = await pinImages(pins, [parsePinReference('registry.local:5000/team/app:1.4'), parsePinReference('registry.local:5000/team/app:2.0'), parsePinReference('other.example/x:1')], { reason: 'why' });
    assert.equal(out[0]!.ok && out[0]!.pin.digest, digest);
    assert.equal(out[0]!.ok && out[0]!.pin.reason, 'why');
    assert.ok(!out[1]!.ok && /tag 2\.0 is not in repository registry\.local-5000\/team\/app/.test(out[1]!.error));
    assert.ok(!out[2]!.ok && /repository other\.example\/x is not in the store \(store memory; looked in other\.example\/x and x\)/.test(out[2]!.error));
    const byDigest = await pinImages(pins, [parsePinReference(`registry.local:5000/team/app@${digest}`)]);
    assert.equal(byDigest[0]!.ok && byDigest[0]!.pin.reason, `pinned as registry.local:5000/team/app@${digest}`);
    assert.deepEqual((await listPins(pins)).map((p) => p.repository), ['registry.local-5000/team/app']);
    const gone = await unpinImages(pins, [parsePinReference('registry.local:5000/team/app:1.4')]);
    assert.ok(gone[0]!.ok);
    const again = await unpinImages(pins, [parsePinReference(`registry.local:5000/team/app@${digest}`)]);
    assert.ok(!again[0]!.ok && /is not pinned/.test(again[0]!.error));
    assert.deepEqual(await listPins(pins), []);
    await pins.close();
  });

  it('finds an image pushed under its bare name, and throws errors other than not-found', async () => {
    const { store, pins } = await image();
    const bytes = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MediaType.OciIndex, manifests: [], annotations: { a: 'b' } }));
    await store.putManifest({ repository: 'team/pushed', bytes, mediaType: MediaType.OciIndex, tag: 'v1' });
    const out = await pinImages(pins, [parsePinReference('127.0.0.1:5000/team/pushed:v1')]);
    assert.equal(out[0]!.ok && out[0]!.pin.repository, 'team/pushed');
    const backend = (fail: Error): PinBackend => ({
      description: 'node x',
      pin: async () => Promise.reject(fail),
      unpin: async () => Promise.reject(fail),
      list: async () => [],
      close: async () => {},
    });
    await assert.rejects(pinImages(backend(new Error('disk on fire')), [parsePinReference('a.example/b:c')]), /disk on fire/);
    const missing = await unpinImages(backend(new NotFoundError('NAME_UNKNOWN', 'no such repository')), [parsePinReference('a.example/b:c')]);
    assert.deepEqual(missing, [{ reference: 'a.example/b:c', ok: false, error: 'a.example/b:c: no such repository (node x; looked in a.example/b and b)' }]);
    await pins.close();
  });

  it('formats a table with a header, or says there are none', () => {
    assert.deepEqual(formatPinTable([]), ['no pins']);
    const lines = formatPinTable([{ repository: 'r/a', digest: D, reason: 'two\nlines', created: Date.UTC(2026, 0, 2, 3, 4, 5) }]);
    assert.match(lines[0]!, /^REPOSITORY\s+DIGEST\s+REASON\s+CREATED$/);
    assert.equal(lines[1], `r/a         ${D}  two lines  2026-01-02T03:04:05Z`);
  });
});
