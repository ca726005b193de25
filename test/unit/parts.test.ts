/**
 * Bytes as pieces: lengths, skipping a prefix without copying, and the chunk map of pieces equal to that of the
 * same bytes in one buffer (a known whole-chunk hash still taken for a chunk given in pieces).
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { byteLength, CHUNK_SIZE, ChunkHasher, skipBytes } from '../../src/oci/index.ts';

describe('bytes in pieces', () => {
  const a = Buffer.from('hello ');
  const b = Buffer.from('wide ');
  const c = Buffer.from('world');

  it('counts and skips across piece boundaries without copying', () => {
    assert.equal(byteLength([a, b, c]), 16);
    assert.equal(byteLength(a), 6);
    assert.equal(Buffer.concat(skipBytes([a, b, c], 0)).toString(), 'hello wide world');
    assert.equal(Buffer.concat(skipBytes([a, b, c], 6)).toString(), 'wide world');
    assert.equal(Buffer.concat(skipBytes([a, b, c], 8)).toString(), 'de world');
    assert.deepEqual(skipBytes([a, b, c], 16), []);
    const rest = skipBytes([a, b, c], 3);
    assert.equal(rest[0]!.buffer, a.buffer, 'a view of the same memory');
    assert.equal(Buffer.concat(skipBytes(a, 2)).toString(), 'llo ');
  });

  it('a chunk map of pieces is the chunk map of the same bytes', () => {
    const bytes = randomBytes(CHUNK_SIZE + 1000);
    const whole = new ChunkHasher();
    whole.update(bytes);
    const split = new ChunkHasher();
    split.update([bytes.subarray(0, 100), bytes.subarray(100, CHUNK_SIZE + 7)]);
    split.update([bytes.subarray(CHUNK_SIZE + 7)]);
    assert.deepEqual(split.map(), whole.map());
    const known = new ChunkHasher();
    known.update([bytes.subarray(0, 10), bytes.subarray(10, CHUNK_SIZE)], 'e'.repeat(64));
    assert.deepEqual(known.map().chunks, ['e'.repeat(64)], 'a whole chunk in pieces takes the known hash');
  });
});
