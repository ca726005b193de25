import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { blobPath, REF_NAME_ANNOTATION, sha256, type FixtureImage } from '../fixtures/images.ts';

/** Asserts that an OCI layout a client pulled into `dir` holds `img` under `tag`, byte for byte. */
export async function assertLayoutHolds(dir: string, tag: string, img: FixtureImage): Promise<void> {
  const index = JSON.parse(await readFile(join(dir, 'index.json'), 'utf8')) as { manifests: Array<{ digest: string; annotations?: Record<string, string> }> };
  const entry = index.manifests.find((m) => m.annotations?.[REF_NAME_ANNOTATION] === tag);
  assert.ok(entry, `${tag} is in ${dir}/index.json`);
  assert.equal(entry.digest, img.digest, 'the pulled digest is the pushed one');
  assert.deepEqual(await readFile(blobPath(dir, img.digest)), img.bytes);
  for (const m of img.manifests) assert.deepEqual(await readFile(blobPath(dir, m.digest)), m.bytes, `child manifest ${m.digest}`);
  for (const b of img.blobs) {
    const data = await readFile(blobPath(dir, b.digest));
    assert.equal(data.length, b.size, `size of ${b.digest}`);
    assert.equal(sha256(data), b.digest, `content of ${b.digest}`);
  }
}
