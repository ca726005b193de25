import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import {
  parseStoreRepositoryName,
  storeRepositoryName,
  AbortedError,
  ACCEPTED_MANIFEST_TYPES,
  baseMediaType,
  DEFAULT_REGISTRY,
  Digest,
  DigestHasher,
  DigestMismatchError,
  diskFullCode,
  effectiveArtifactType,
  formatReference,
  InvalidError,
  isIndexType,
  isManifestType,
  isShoalError,
  isValidTag,
  MAX_NAME_LENGTH,
  MediaType,
  NotFoundError,
  OCI_STATUS,
  parseDescriptor,
  parseManifest,
  parseReference,
  ShoalError,
  StorageFullError,
  storageFullError,
  UnavailableError,
  UnsupportedError,
  validateRepositoryName,
  validateTag,
  type OciErrorCode,
} from '../../src/oci/index.ts';

const sha256 = (s: string | Uint8Array): string => createHash('sha256').update(s).digest('hex');
const sha512 = (s: string | Uint8Array): string => createHash('sha512').update(s).digest('hex');
const HELLO256 = `sha256:${sha256('hello')}`;
const HELLO512 = `sha512:${sha512('hello')}`;

/** Asserts that fn throws `cls` with `code`, and returns the error for further checks. */
function throwsCode<T extends ShoalError>(fn: () => unknown, cls: abstract new (...args: never[]) => T, code: OciErrorCode): T {
  let caught: unknown;
  try {
    fn();
  } catch (err) {
    caught = err;
  }
  assert.ok(caught !== undefined, `expected ${cls.name} ${code}, nothing was thrown`);
  assert.ok(caught instanceof cls, `expected ${cls.name}, got ${String(caught)}`);
  assert.equal((caught as ShoalError).code, code);
  return caught as T;
}

describe('Digest.parse', () => {
  it('parses a sha256 digest into algorithm and hex', () => {
    const d = Digest.parse(HELLO256);
    assert.equal(d.algorithm, 'sha256');
    assert.equal(d.hex, sha256('hello'));
    assert.equal(d.toString(), HELLO256);
    assert.equal(`${d}`, HELLO256);
  });

  it('parses a sha512 digest', () => {
    const d = Digest.parse(HELLO512);
    assert.equal(d.algorithm, 'sha512');
    assert.equal(d.hex.length, 128);
    assert.equal(d.toString(), HELLO512);
  });

  const invalid: Array<[string, string]> = [
    ['sha256 too short', `sha256:${sha256('x').slice(0, 63)}`],
    ['sha256 too long', `sha256:${sha256('x')}0`],
    ['sha256 with a sha512-length hex', `sha256:${sha512('x')}`],
    ['sha512 too short', `sha512:${sha256('x')}`],
    ['uppercase hex', `sha256:${sha256('x').toUpperCase()}`],
    ['one uppercase hex character', `sha256:${sha256('x').slice(0, 63)}A`],
    ['non-hex characters of the right length', `sha256:${'g'.repeat(64)}`],
    ['unknown algorithm', `md5:${'a'.repeat(32)}`],
    ['unknown algorithm with a sha256-length hex', `sha1024:${sha256('x')}`],
    ['uppercase algorithm', `SHA256:${sha256('x')}`],
    ['missing colon', `sha256${sha256('x')}`],
    ['only the hex', sha256('x')],
    ['empty', ''],
    ['empty hex', 'sha256:'],
    ['empty algorithm', `:${sha256('x')}`],
    ['two colons', `sha256:${sha256('x')}:x`],
    ['whitespace around', ` sha256:${sha256('x')} `],
    ['very long', `sha256:${'a'.repeat(300)}`],
  ];
  for (const [what, value] of invalid) {
    it(`rejects ${what} with DIGEST_INVALID`, () => {
      const err = throwsCode(() => Digest.parse(value), InvalidError, 'DIGEST_INVALID');
      assert.equal(err.status, 400);
      assert.equal(Digest.isValid(value), false);
    });
  }

  it('isValid is true for valid digests', () => {
    assert.equal(Digest.isValid(HELLO256), true);
    assert.equal(Digest.isValid(HELLO512), true);
  });
});

describe('Digest.of, equals and verify', () => {
  it('hashes buffers and strings with sha256 by default', () => {
    assert.equal(Digest.of('hello').toString(), HELLO256);
    assert.equal(Digest.of(Buffer.from('hello')).toString(), HELLO256);
    assert.equal(Digest.of(new Uint8Array(0)).toString(), `sha256:${sha256('')}`);
  });

  it('hashes with sha512 when asked', () => {
    assert.equal(Digest.of('hello', 'sha512').toString(), HELLO512);
  });

  it('refuses an unsupported algorithm with UNSUPPORTED', () => {
    throwsCode(() => Digest.of('hello', 'md5'), UnsupportedError, 'UNSUPPORTED');
  });

  it('equals compares with digests and strings', () => {
    const d = Digest.parse(HELLO256);
    assert.equal(d.equals(Digest.of('hello')), true);
    assert.equal(d.equals(HELLO256), true);
    assert.equal(d.equals(Digest.of('world')), false);
    assert.equal(d.equals(HELLO512), false);
  });

  it('verify passes for matching bytes', () => {
    assert.doesNotThrow(() => Digest.parse(HELLO256).verify(Buffer.from('hello')));
    assert.doesNotThrow(() => Digest.parse(HELLO512).verify(Buffer.from('hello')));
  });

  it('verify throws DigestMismatchError with expected and actual', () => {
    const err = throwsCode(() => Digest.parse(HELLO256).verify(Buffer.from('hellO')), DigestMismatchError, 'DIGEST_INVALID');
    assert.equal(err.expected, HELLO256);
    assert.equal(err.actual, `sha256:${sha256('hellO')}`);
    assert.deepEqual(err.detail, { expected: HELLO256, actual: `sha256:${sha256('hellO')}` });
    assert.equal(err.name, 'DigestMismatchError');
    assert.equal(err.status, 400);
    assert.ok(err instanceof ShoalError);
    assert.match(err.message, /does not match/);
  });

  it('verify of a sha512 digest computes the actual digest with sha512', () => {
    const err = throwsCode(() => Digest.parse(HELLO512).verify(Buffer.from('x')), DigestMismatchError, 'DIGEST_INVALID');
    assert.equal(err.actual, `sha512:${sha512('x')}`);
  });
});

describe('DigestHasher', () => {
  it('hashes incrementally and counts bytes', () => {
    const h = new DigestHasher();
    assert.equal(h.algorithm, 'sha256');
    assert.equal(h.size, 0);
    assert.equal(h.digest().toString(), `sha256:${sha256('')}`);
    h.update(Buffer.from('hel'));
    h.update(Buffer.from('lo'));
    assert.equal(h.size, 5);
    assert.equal(h.digest().toString(), HELLO256);
  });

  it('stays usable after digest()', () => {
    const h = new DigestHasher();
    h.update(Buffer.from('hello'));
    assert.equal(h.digest().toString(), HELLO256);
    assert.equal(h.digest().toString(), HELLO256, 'digest() twice gives the same value');
    h.update(Buffer.from(' world'));
    assert.equal(h.digest().toString(), `sha256:${sha256('hello world')}`);
    assert.equal(h.size, 11);
  });

  it('supports sha512', () => {
    const h = new DigestHasher('sha512');
    h.update(Buffer.from('hello'));
    assert.equal(h.digest().toString(), HELLO512);
  });

  it('refuses an unsupported algorithm', () => {
    throwsCode(() => new DigestHasher('md5'), UnsupportedError, 'UNSUPPORTED');
  });

  it('copy() is independent of the original in both directions', () => {
    const h = new DigestHasher();
    h.update(Buffer.from('hello'));
    const c = h.copy();
    assert.equal(c.size, 5);
    assert.equal(c.algorithm, 'sha256');
    assert.equal(c.digest().toString(), HELLO256);

    h.update(Buffer.from(' world'));
    assert.equal(h.digest().toString(), `sha256:${sha256('hello world')}`);
    assert.equal(c.digest().toString(), HELLO256, 'the copy did not see the later update');
    assert.equal(c.size, 5);

    c.update(Buffer.from('!'));
    assert.equal(c.digest().toString(), `sha256:${sha256('hello!')}`);
    assert.equal(c.size, 6);
    assert.equal(h.size, 11, 'the original did not see the copy update');
  });

  it('copy() allows rolling back a failed chunk', () => {
    const h = new DigestHasher();
    h.update(Buffer.from('abc'));
    const before = h.copy();
    h.update(Buffer.from('garbage'));
    const restored = before;
    restored.update(Buffer.from('def'));
    assert.equal(restored.digest().toString(), `sha256:${sha256('abcdef')}`);
  });
});

describe('validateRepositoryName', () => {
  const valid = [
    'library/nginx',
    'a/b-c/d__e',
    'nginx',
    'a',
    '0',
    'a.b/c_d/e--f',
    'registry/x/y/z/deep/path',
    'a'.repeat(MAX_NAME_LENGTH),
  ];
  for (const name of valid) {
    it(`accepts ${name.length > 40 ? `a name of ${name.length} characters` : JSON.stringify(name)}`, () => {
      assert.equal(validateRepositoryName(name), name);
    });
  }

  const invalid: Array<[string, string]> = [
    ['upper case', 'Library/nginx'],
    ['upper case in a later component', 'library/Nginx'],
    ['a .. component', 'a/../b'],
    ['.. inside a component', 'a..b'],
    ['a . component', 'a/./b'],
    ['leading slash', '/library/nginx'],
    ['trailing slash', 'library/nginx/'],
    ['empty component', 'library//nginx'],
    ['leading separator in a component', 'library/-nginx'],
    ['trailing separator in a component', 'library/nginx_'],
    ['leading dot', '.nginx'],
    ['three underscores', 'a___b'],
    ['mixed separators', 'a._b'],
    ['a colon', 'library/nginx:latest'],
    ['a space', 'library/ngi nx'],
    ['empty', ''],
    ['longer than 255 characters', 'a'.repeat(MAX_NAME_LENGTH + 1)],
    ['long multi-component name', Array.from({ length: 60 }, () => 'abcd').join('/')],
  ];
  for (const [what, name] of invalid) {
    it(`rejects ${what} with NAME_INVALID`, () => {
      const err = throwsCode(() => validateRepositoryName(name), InvalidError, 'NAME_INVALID');
      assert.equal(err.status, 400);
    });
  }

  it('the limit is 255', () => {
    assert.equal(MAX_NAME_LENGTH, 255);
  });
});

describe('validateTag', () => {
  for (const tag of ['latest', 'v1.0.0', '1.25-alpine', '_private', 'A_b.C-d', 'x'.repeat(128), '0']) {
    it(`accepts ${tag.length > 20 ? `a tag of ${tag.length} characters` : JSON.stringify(tag)}`, () => {
      assert.equal(validateTag(tag), tag);
      assert.equal(isValidTag(tag), true);
    });
  }
  const invalid: Array<[string, string]> = [
    ['empty', ''],
    ['leading dot', '.hidden'],
    ['leading dash', '-x'],
    ['129 characters', 'x'.repeat(129)],
    ['a colon', 'a:b'],
    ['a slash', 'a/b'],
    ['a space', 'a b'],
    ['an @', 'a@b'],
    ['a plus', 'v1+build'],
  ];
  for (const [what, tag] of invalid) {
    it(`rejects ${what} with TAG_INVALID`, () => {
      throwsCode(() => validateTag(tag), InvalidError, 'TAG_INVALID');
      assert.equal(isValidTag(tag), false);
    });
  }
});

// ---- manifests ------------------------------------------------------------------------------------

const CONFIG_DIGEST = `sha256:${sha256('config')}`;
const LAYER_DIGEST = `sha256:${sha256('layer')}`;
const CHILD_DIGEST = `sha256:${sha256('child')}`;
const SUBJECT_DIGEST = `sha256:${sha256('subject')}`;

function ociManifest(extra: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    schemaVersion: 2,
    mediaType: MediaType.OciManifest,
    config: { mediaType: MediaType.OciConfig, digest: CONFIG_DIGEST, size: 6 },
    layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', digest: LAYER_DIGEST, size: 5 }],
    ...extra,
  };
}
function ociIndex(extra: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    schemaVersion: 2,
    mediaType: MediaType.OciIndex,
    manifests: [
      { mediaType: MediaType.OciManifest, digest: CHILD_DIGEST, size: 100, platform: { architecture: 'amd64', os: 'linux' } },
      { mediaType: MediaType.OciManifest, digest: LAYER_DIGEST, size: 101, platform: { architecture: 'arm64', os: 'linux', variant: 'v8' } },
    ],
    ...extra,
  };
}
function dockerManifest(extra: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    schemaVersion: 2,
    mediaType: MediaType.DockerManifest,
    config: { mediaType: MediaType.DockerConfig, digest: CONFIG_DIGEST, size: 6 },
    layers: [{ mediaType: 'application/vnd.docker.image.rootfs.diff.tar.gzip', digest: LAYER_DIGEST, size: 5 }],
    ...extra,
  };
}
function dockerList(extra: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    schemaVersion: 2,
    mediaType: MediaType.DockerManifestList,
    manifests: [{ mediaType: MediaType.DockerManifest, digest: CHILD_DIGEST, size: 100, platform: { architecture: 'amd64', os: 'linux' } }],
    ...extra,
  };
}
function without(obj: Record<string, unknown>, key: string): Record<string, unknown> {
  const copy = { ...obj };
  delete copy[key];
  return copy;
}
const bytes = (v: unknown): Uint8Array => Buffer.from(typeof v === 'string' ? v : JSON.stringify(v));
const invalidManifest = (body: unknown, contentType?: string): InvalidError =>
  throwsCode(() => parseManifest(bytes(body), contentType), InvalidError, 'MANIFEST_INVALID');

describe('parseManifest: accepted documents', () => {
  it('parses an OCI image manifest: config first in blobs, then layers', () => {
    const m = parseManifest(bytes(ociManifest()), MediaType.OciManifest);
    assert.equal(m.mediaType, MediaType.OciManifest);
    assert.equal(m.kind, 'manifest');
    assert.deepEqual(m.config, { mediaType: MediaType.OciConfig, digest: CONFIG_DIGEST, size: 6 });
    assert.deepEqual(
      m.blobs.map((b) => b.digest),
      [CONFIG_DIGEST, LAYER_DIGEST],
    );
    assert.deepEqual(m.manifests, []);
    assert.equal(m.subject, undefined);
    assert.equal(m.artifactType, undefined);
    assert.equal(effectiveArtifactType(m), MediaType.OciConfig);
  });

  it('parses an OCI index with platforms', () => {
    const m = parseManifest(bytes(ociIndex()), MediaType.OciIndex);
    assert.equal(m.mediaType, MediaType.OciIndex);
    assert.equal(m.kind, 'index');
    assert.deepEqual(m.blobs, []);
    assert.equal(m.config, undefined);
    assert.equal(m.manifests.length, 2);
    assert.deepEqual(m.manifests[0]!.platform, { architecture: 'amd64', os: 'linux' });
    assert.equal(m.manifests[1]!.platform?.variant, 'v8');
    assert.equal(effectiveArtifactType(m), undefined);
  });

  it('parses a Docker schema 2 manifest', () => {
    const m = parseManifest(bytes(dockerManifest()), MediaType.DockerManifest);
    assert.equal(m.mediaType, MediaType.DockerManifest);
    assert.equal(m.kind, 'manifest');
    assert.equal(m.config?.mediaType, MediaType.DockerConfig);
    assert.equal(m.blobs.length, 2);
  });

  it('parses a Docker manifest list', () => {
    const m = parseManifest(bytes(dockerList()), MediaType.DockerManifestList);
    assert.equal(m.mediaType, MediaType.DockerManifestList);
    assert.equal(m.kind, 'index');
    assert.equal(m.manifests[0]!.digest, CHILD_DIGEST);
  });

  it('takes the media type from the body when there is no Content-Type', () => {
    assert.equal(parseManifest(bytes(dockerManifest()), undefined).mediaType, MediaType.DockerManifest);
    assert.equal(parseManifest(bytes(dockerList()), undefined).kind, 'index');
    assert.equal(parseManifest(bytes(ociIndex()), '').mediaType, MediaType.OciIndex);
  });

  it('takes the media type from the body when Content-Type is generic JSON or octet-stream', () => {
    assert.equal(parseManifest(bytes(dockerManifest()), 'application/json').mediaType, MediaType.DockerManifest);
    assert.equal(parseManifest(bytes(dockerList()), 'application/octet-stream').mediaType, MediaType.DockerManifestList);
  });

  it('takes the media type from Content-Type when the body has no mediaType field', () => {
    const m = parseManifest(bytes(without(dockerManifest(), 'mediaType')), MediaType.DockerManifest);
    assert.equal(m.mediaType, MediaType.DockerManifest);
    const l = parseManifest(bytes(without(dockerList(), 'mediaType')), MediaType.DockerManifestList);
    assert.equal(l.mediaType, MediaType.DockerManifestList);
  });

  it('infers OCI manifest or OCI index when neither header nor body has a media type', () => {
    const m = parseManifest(bytes(without(ociManifest(), 'mediaType')), undefined);
    assert.equal(m.mediaType, MediaType.OciManifest);
    assert.equal(m.kind, 'manifest');
    const i = parseManifest(bytes(without(ociIndex(), 'mediaType')), undefined);
    assert.equal(i.mediaType, MediaType.OciIndex);
    assert.equal(i.kind, 'index');
  });

  it('ignores Content-Type parameters and case', () => {
    const m = parseManifest(bytes(ociManifest()), 'Application/VND.OCI.Image.Manifest.v1+JSON; charset=utf-8');
    assert.equal(m.mediaType, MediaType.OciManifest);
  });

  it('accepts an OCI manifest with no layers (an artifact)', () => {
    const m = parseManifest(bytes(ociManifest({ layers: [] })), MediaType.OciManifest);
    assert.deepEqual(m.blobs.map((b) => b.digest), [CONFIG_DIGEST]);
  });

  it('parses subject, artifactType and annotations', () => {
    const body = ociManifest({
      artifactType: 'application/vnd.example.sbom.v1',
      config: { mediaType: MediaType.OciEmpty, digest: `sha256:${sha256('{}')}`, size: 2 },
      subject: { mediaType: MediaType.OciManifest, digest: SUBJECT_DIGEST, size: 1234 },
      annotations: { 'org.opencontainers.image.created': '2024-01-01T00:00:00Z' },
    });
    const m = parseManifest(bytes(body), MediaType.OciManifest);
    assert.deepEqual(m.subject, { mediaType: MediaType.OciManifest, digest: SUBJECT_DIGEST, size: 1234 });
    assert.equal(m.artifactType, 'application/vnd.example.sbom.v1');
    assert.deepEqual(m.annotations, { 'org.opencontainers.image.created': '2024-01-01T00:00:00Z' });
    assert.equal(effectiveArtifactType(m), 'application/vnd.example.sbom.v1');
  });

  it('parses a subject on an index too', () => {
    const m = parseManifest(bytes(ociIndex({ subject: { mediaType: MediaType.OciManifest, digest: SUBJECT_DIGEST, size: 9 }, artifactType: 'x/y' })), undefined);
    assert.equal(m.subject?.digest, SUBJECT_DIGEST);
    assert.equal(m.artifactType, 'x/y');
  });

  it('effectiveArtifactType falls back to the config media type', () => {
    const m = parseManifest(bytes(ociManifest({ config: { mediaType: 'application/vnd.example.config', digest: CONFIG_DIGEST, size: 6 } })), undefined);
    assert.equal(effectiveArtifactType(m), 'application/vnd.example.config');
  });

  it('keeps urls and descriptor annotations', () => {
    const layer = { mediaType: 'application/vnd.oci.image.layer.v1.tar', digest: LAYER_DIGEST, size: 5, urls: ['https://example.com/l'], annotations: { a: 'b' } };
    const m = parseManifest(bytes(ociManifest({ layers: [layer] })), undefined);
    assert.deepEqual(m.blobs[1], layer);
  });
});

describe('parseManifest: refused documents', () => {
  it('refuses a body mediaType that does not match Content-Type', () => {
    invalidManifest(dockerManifest(), MediaType.OciManifest);
    invalidManifest(ociIndex(), MediaType.DockerManifestList);
    invalidManifest(ociManifest(), MediaType.OciIndex);
  });

  it('refuses bytes that are not JSON', () => {
    const err = invalidManifest('{"schemaVersion": 2,', MediaType.OciManifest);
    assert.match(err.message, /JSON/);
    invalidManifest('', MediaType.OciManifest);
    invalidManifest('not json at all', undefined);
  });

  it('refuses JSON that is not an object', () => {
    invalidManifest('[]', MediaType.OciManifest);
    invalidManifest('null', undefined);
    invalidManifest('"a string"', undefined);
    invalidManifest('2', undefined);
  });

  it('refuses schemaVersion 1 and a missing schemaVersion', () => {
    invalidManifest(ociManifest({ schemaVersion: 1 }), MediaType.OciManifest);
    invalidManifest(without(ociManifest(), 'schemaVersion'), MediaType.OciManifest);
    invalidManifest(dockerManifest({ schemaVersion: '2' }), undefined);
  });

  it('refuses a Docker schema 1 manifest', () => {
    invalidManifest({ schemaVersion: 1, name: 'x', tag: 'y', fsLayers: [] }, 'application/vnd.docker.distribution.manifest.v1+prettyjws');
    invalidManifest({ schemaVersion: 1, name: 'x', tag: 'y', fsLayers: [] }, undefined);
  });

  it('refuses an unknown media type in the header or the body', () => {
    const err = invalidManifest(without(ociManifest(), 'mediaType'), 'application/vnd.example.thing+json');
    assert.deepEqual(err.detail, { accepted: ACCEPTED_MANIFEST_TYPES });
    invalidManifest(ociManifest({ mediaType: 'application/vnd.example.thing+json' }), undefined);
    invalidManifest(ociManifest({ mediaType: MediaType.OciConfig }), undefined);
  });

  it('refuses a non-string mediaType field', () => {
    invalidManifest(ociManifest({ mediaType: 42 }), undefined);
  });

  it('refuses an index without manifests, or with config or layers', () => {
    invalidManifest(without(ociIndex(), 'manifests'), MediaType.OciIndex);
    invalidManifest(ociIndex({ manifests: {} }), MediaType.OciIndex);
    invalidManifest(ociIndex({ layers: [] }), MediaType.OciIndex);
    invalidManifest(ociIndex({ config: { mediaType: MediaType.OciConfig, digest: CONFIG_DIGEST, size: 6 } }), MediaType.OciIndex);
  });

  it('refuses an image manifest with manifests, or without config or layers', () => {
    invalidManifest(ociManifest({ manifests: [] }), MediaType.OciManifest);
    invalidManifest(without(ociManifest(), 'config'), MediaType.OciManifest);
    invalidManifest(without(ociManifest(), 'layers'), MediaType.OciManifest);
    invalidManifest(ociManifest({ layers: {} }), MediaType.OciManifest);
  });

  it('refuses a Docker schema 2 manifest without layers', () => {
    invalidManifest(dockerManifest({ layers: [] }), MediaType.DockerManifest);
  });

  const goodLayer = { mediaType: 'application/vnd.oci.image.layer.v1.tar', digest: LAYER_DIGEST, size: 5 };
  const badDescriptors: Array<[string, unknown]> = [
    ['not an object', 'sha256:abc'],
    ['null', null],
    ['an array', [goodLayer]],
    ['no mediaType', without(goodLayer, 'mediaType')],
    ['a mediaType without a slash', { ...goodLayer, mediaType: 'layer' }],
    ['a mediaType with spaces', { ...goodLayer, mediaType: 'application/x y' }],
    ['no digest', without(goodLayer, 'digest')],
    ['an invalid digest', { ...goodLayer, digest: 'sha256:1234' }],
    ['a numeric digest', { ...goodLayer, digest: 1234 }],
    ['no size', without(goodLayer, 'size')],
    ['a negative size', { ...goodLayer, size: -1 }],
    ['a fractional size', { ...goodLayer, size: 1.5 }],
    ['a string size', { ...goodLayer, size: '5' }],
    ['an unsafe integer size', { ...goodLayer, size: 2 ** 60 }],
    ['urls that are not strings', { ...goodLayer, urls: [1] }],
    ['urls that are not a list', { ...goodLayer, urls: 'https://x' }],
    ['annotations with a non-string value', { ...goodLayer, annotations: { a: 1 } }],
    ['annotations that are a list', { ...goodLayer, annotations: ['a'] }],
    ['a non-string artifactType', { ...goodLayer, artifactType: 7 }],
    ['a platform without os', { ...goodLayer, platform: { architecture: 'amd64' } }],
  ];
  for (const [what, d] of badDescriptors) {
    it(`refuses a layer descriptor with ${what}`, () => {
      invalidManifest(ociManifest({ layers: [goodLayer, d] }), MediaType.OciManifest);
    });
  }

  it('refuses bad config, subject and index child descriptors', () => {
    invalidManifest(ociManifest({ config: { ...goodLayer, size: -5 } }), MediaType.OciManifest);
    invalidManifest(ociManifest({ subject: { mediaType: MediaType.OciManifest, digest: 'nope', size: 1 } }), MediaType.OciManifest);
    invalidManifest(ociIndex({ manifests: [{ mediaType: MediaType.OciManifest, digest: CHILD_DIGEST }] }), MediaType.OciIndex);
    invalidManifest(ociIndex({ manifests: [{ mediaType: MediaType.OciManifest, digest: CHILD_DIGEST, size: 1, platform: 'linux/amd64' }] }), MediaType.OciIndex);
  });

  it('refuses bad manifest-level annotations and artifactType', () => {
    invalidManifest(ociManifest({ annotations: { a: null } }), MediaType.OciManifest);
    invalidManifest(ociManifest({ artifactType: ['x/y'] }), MediaType.OciManifest);
  });

  it('names the bad descriptor in the message', () => {
    const err = invalidManifest(ociManifest({ layers: [goodLayer, { ...goodLayer, size: -1 }] }), MediaType.OciManifest);
    assert.match(err.message, /layers\[1\]/);
  });

  it('parseDescriptor returns exactly the known fields', () => {
    const d = parseDescriptor({ ...goodLayer, extra: 'dropped', artifactType: 'a/b' }, 'x');
    assert.deepEqual(d, { ...goodLayer, artifactType: 'a/b' });
  });
});

describe('media type helpers', () => {
  it('classifies manifest and index types', () => {
    assert.equal(isIndexType(MediaType.OciIndex), true);
    assert.equal(isIndexType(MediaType.DockerManifestList), true);
    assert.equal(isIndexType(MediaType.OciManifest), false);
    assert.equal(isManifestType(MediaType.OciManifest), true);
    assert.equal(isManifestType(MediaType.DockerManifest), true);
    assert.equal(isManifestType(MediaType.OciIndex), false);
    assert.equal(ACCEPTED_MANIFEST_TYPES.length, 4);
  });
  it('baseMediaType strips parameters and case', () => {
    assert.equal(baseMediaType('Application/JSON ; charset=utf-8'), 'application/json');
    assert.equal(baseMediaType(undefined), '');
  });
});

// ---- references -----------------------------------------------------------------------------------

describe('parseReference', () => {
  const D = `sha256:${sha256('img')}`;
  const cases: Array<[string, { registry: string; repository: string; tag?: string; digest?: string }]> = [
    ['nginx', { registry: 'docker.io', repository: 'library/nginx', tag: 'latest' }],
    ['nginx:1.25', { registry: 'docker.io', repository: 'library/nginx', tag: '1.25' }],
    ['bitnami/redis', { registry: 'docker.io', repository: 'bitnami/redis', tag: 'latest' }],
    ['docker.io/nginx', { registry: 'docker.io', repository: 'library/nginx', tag: 'latest' }],
    ['docker.io/library/nginx:stable', { registry: 'docker.io', repository: 'library/nginx', tag: 'stable' }],
    ['ghcr.io/org/team/app:v1', { registry: 'ghcr.io', repository: 'org/team/app', tag: 'v1' }],
    ['registry.example.com:5000/team/app:v2', { registry: 'registry.example.com:5000', repository: 'team/app', tag: 'v2' }],
    ['registry:5000/app', { registry: 'registry:5000', repository: 'app', tag: 'latest' }],
    ['localhost/app', { registry: 'localhost', repository: 'app', tag: 'latest' }],
    ['localhost:5000/app:dev', { registry: 'localhost:5000', repository: 'app', tag: 'dev' }],
    [`nginx@${D}`, { registry: 'docker.io', repository: 'library/nginx', digest: D }],
    [`nginx:1.25@${D}`, { registry: 'docker.io', repository: 'library/nginx', tag: '1.25', digest: D }],
    [`localhost:5000/a/b:t@${D}`, { registry: 'localhost:5000', repository: 'a/b', tag: 't', digest: D }],
    ['  nginx  ', { registry: 'docker.io', repository: 'library/nginx', tag: 'latest' }],
  ];
  for (const [input, want] of cases) {
    it(`parses ${JSON.stringify(input)}`, () => {
      const ref = parseReference(input);
      assert.equal(ref.registry, want.registry);
      assert.equal(ref.repository, want.repository);
      assert.equal(ref.tag, want.tag);
      assert.equal(ref.digest, want.digest);
    });
  }

  it('uses the given default registry, without the library/ prefix', () => {
    const ref = parseReference('app:1', 'seed.local:5000');
    assert.deepEqual({ ...ref }, { registry: 'seed.local:5000', repository: 'app', tag: '1', digest: undefined });
    assert.equal(DEFAULT_REGISTRY, 'docker.io');
  });

  it('formatReference writes a parsed reference back out', () => {
    assert.equal(formatReference(parseReference('nginx')), 'docker.io/library/nginx:latest');
    assert.equal(formatReference(parseReference(`localhost:5000/a/b:t@${D}`)), `localhost:5000/a/b:t@${D}`);
    assert.equal(formatReference({ registry: 'r.io', repository: 'x', digest: D }), `r.io/x@${D}`);
  });

  const invalid: Array<[string, string, OciErrorCode]> = [
    ['empty', '', 'NAME_INVALID'],
    ['blank', '   ', 'NAME_INVALID'],
    ['upper-case repository', 'Library/Nginx', 'NAME_INVALID'],
    ['upper-case single name', 'NGINX', 'NAME_INVALID'],
    ['an empty path component', 'ghcr.io/org//app', 'NAME_INVALID'],
    ['a registry only', 'ghcr.io/', 'NAME_INVALID'],
    ['a bad digest', 'nginx@sha256:abc', 'DIGEST_INVALID'],
    ['a digest of an unknown algorithm', `nginx@md5:${'a'.repeat(32)}`, 'DIGEST_INVALID'],
    ['a bad tag', 'nginx:-bad', 'TAG_INVALID'],
    ['an empty tag', 'nginx:', 'TAG_INVALID'],
  ];
  for (const [what, input, code] of invalid) {
    it(`rejects ${what} with ${code}`, () => {
      throwsCode(() => parseReference(input), InvalidError, code);
    });
  }
});

// ---- errors ---------------------------------------------------------------------------------------

describe('storeRepositoryName and parseStoreRepositoryName', () => {
  it('name a registry\'s repository in the store and read it back, port included', () => {
    assert.equal(storeRepositoryName('Registry.Local:5000', 'team/app'), 'registry.local-5000/team/app');
    assert.deepEqual(parseStoreRepositoryName('registry.local-5000/team/app'), { registry: 'registry.local:5000', repository: 'team/app' });
    assert.deepEqual(parseStoreRepositoryName('docker.io/library/nginx'), { registry: 'docker.io', repository: 'library/nginx' });
    assert.deepEqual(parseStoreRepositoryName('localhost-5000/x'), { registry: 'localhost:5000', repository: 'x' });
  });
  it('a repository pushed as it is names no registry', () => {
    for (const name of ['team/app', 'app', 'my-team/app', '.hidden']) assert.equal(parseStoreRepositoryName(name), undefined, name);
  });
});

describe('errors and OCI_STATUS', () => {
  it('maps codes to the statuses of the distribution spec', () => {
    assert.equal(OCI_STATUS.RANGE_INVALID, 416);
    assert.equal(OCI_STATUS.NAME_UNKNOWN, 404);
    assert.equal(OCI_STATUS.BLOB_UNKNOWN, 404);
    assert.equal(OCI_STATUS.BLOB_UPLOAD_UNKNOWN, 404);
    assert.equal(OCI_STATUS.MANIFEST_UNKNOWN, 404);
    assert.equal(OCI_STATUS.DIGEST_INVALID, 400);
    assert.equal(OCI_STATUS.MANIFEST_INVALID, 400);
    assert.equal(OCI_STATUS.NAME_INVALID, 400);
    assert.equal(OCI_STATUS.SIZE_INVALID, 400);
    assert.equal(OCI_STATUS.UNAUTHORIZED, 401);
    assert.equal(OCI_STATUS.DENIED, 403);
    assert.equal(OCI_STATUS.TOOMANYREQUESTS, 429);
    assert.equal(OCI_STATUS.PAYLOAD_TOO_LARGE, 413);
    assert.equal(OCI_STATUS.UNAVAILABLE, 503);
    assert.equal(OCI_STATUS.INTERNAL, 500);
    assert.equal(OCI_STATUS.STORAGE_FULL, 507, 'Insufficient Storage');
  });

  it('every code has an HTTP error status', () => {
    const entries = Object.entries(OCI_STATUS);
    assert.ok(entries.length >= 19);
    for (const [code, status] of entries) {
      assert.ok(Number.isInteger(status) && status >= 400 && status <= 599, `${code} -> ${status}`);
    }
  });

  it('error classes carry a stable name, code, status and JSON body', () => {
    const nf = new NotFoundError('BLOB_UNKNOWN', 'no such blob', { digest: 'd' });
    assert.equal(nf.name, 'NotFoundError');
    assert.equal(nf.status, 404);
    assert.deepEqual(nf.toJSON(), { code: 'BLOB_UNKNOWN', message: 'no such blob', detail: { digest: 'd' } });
    assert.ok(nf instanceof Error && nf instanceof ShoalError);

    const inv = new InvalidError('RANGE_INVALID', 'bad range', undefined, { Range: '0-9' });
    assert.equal(inv.name, 'InvalidError');
    assert.equal(inv.status, 416);
    assert.deepEqual(inv.headers, { Range: '0-9' });
    assert.deepEqual(inv.toJSON(), { code: 'RANGE_INVALID', message: 'bad range' }, 'no detail key when there is no detail');

    assert.equal(new UnsupportedError('x').status, 405);
    assert.equal(new UnavailableError('x').status, 503);
    const ab = new AbortedError();
    assert.equal(ab.name, 'AbortedError');
    assert.equal(ab.code, 'UNAVAILABLE');

    assert.equal(isShoalError(nf), true);
    assert.equal(isShoalError(new Error('x')), false);
    assert.equal(isShoalError('BLOB_UNKNOWN'), false);
  });

  it('knows a full disk: ENOSPC and EDQUOT by code, by LevelDB text, or wrapped as a cause', () => {
    const fsError = (code: string, text: string): Error => Object.assign(new Error(`${code}: ${text}, write`), { code });
    assert.equal(diskFullCode(fsError('ENOSPC', 'no space left on device')), 'ENOSPC');
    assert.equal(diskFullCode(fsError('EDQUOT', 'disk quota exceeded')), 'EDQUOT');
    assert.equal(diskFullCode(Object.assign(new Error('IO error: /d/db/000005.log: No space left on device'), { code: 'LEVEL_IO_ERROR' })), 'ENOSPC');
    assert.equal(diskFullCode(new Error('write failed', { cause: new Error('x', { cause: fsError('EDQUOT', 'disk quota exceeded') }) })), 'EDQUOT');
    assert.equal(diskFullCode(storageFullError('EDQUOT', 'writing the blob')), 'EDQUOT');
    assert.equal(diskFullCode(new StorageFullError('full')), 'ENOSPC');
    for (const other of [fsError('EIO', 'i/o error'), fsError('ENOENT', 'no such file'), new Error('x'), undefined, null, 'ENOSPC', 28]) {
      assert.equal(diskFullCode(other), undefined, String(other));
    }
    // A seed whose own disk is full is the seed's problem: its error only quotes the text.
    assert.equal(diskFullCode(new UnavailableError('seed http://s failed for blob x: ENOSPC: no space left on device')), undefined);
  });

  it('says what was full and what happened to the request', () => {
    const full = storageFullError('ENOSPC', 'writing the blob');
    assert.equal(full.name, 'StorageFullError');
    assert.equal(full.status, 507);
    assert.deepEqual(full.toJSON(), {
      code: 'STORAGE_FULL',
      message: "the node's disk is full (no space left on device while writing the blob); free space or lower the quota; nothing was stored",
      detail: { cause: 'ENOSPC' },
    });
    assert.match(storageFullError('EDQUOT', 'writing the manifest').message, /^the node's disk is full \(disk quota exceeded while writing the manifest\);/);
  });
});

describe('ChunkHasher with hashes known on arrival', () => {
  const hex = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

  it('takes the known hash of a whole aligned chunk and gives the same map as hashing every byte', async () => {
    const { ChunkHasher, CHUNK_SIZE } = await import('../../src/oci/chunks.ts');
    const blob = Buffer.alloc(2 * CHUNK_SIZE + 1000);
    for (let i = 0; i < blob.length; i += 4096) blob[i] = i % 251;
    const plain = new ChunkHasher();
    plain.update(blob);
    const known = new ChunkHasher();
    const first = blob.subarray(0, CHUNK_SIZE);
    const second = blob.subarray(CHUNK_SIZE, 2 * CHUNK_SIZE);
    const tail = blob.subarray(2 * CHUNK_SIZE);
    known.update(first, hex(first));
    known.update(second, hex(second));
    known.update(tail, hex(tail));
    assert.deepEqual(known.map(), plain.map());
    assert.equal(known.map().chunks.length, 3);
    // The known hash is what goes into the map (the bytes of a whole aligned chunk are not hashed again): a hash
    // that is not the bytes' shows through.
    const taken = new ChunkHasher();
    taken.update(first, 'f'.repeat(64));
    taken.update(second);
    assert.equal(taken.map().chunks[0], 'f'.repeat(64));
    assert.equal(taken.map().chunks[1], hex(second));
  });

  it('hashes the bytes itself when they are not a whole chunk on a chunk boundary', async () => {
    const { ChunkHasher, CHUNK_SIZE } = await import('../../src/oci/chunks.ts');
    const blob = Buffer.alloc(CHUNK_SIZE + 10, 7);
    const plain = new ChunkHasher();
    plain.update(blob);
    const h = new ChunkHasher();
    h.update(blob.subarray(0, 10));
    // Misaligned: the "known" hash (deliberately wrong here) must not be used.
    h.update(blob.subarray(10, CHUNK_SIZE + 10), '0'.repeat(64));
    assert.deepEqual(h.map(), plain.map());
  });
});
