/**
 * Malformed and invalid requests against a real node: each one must get its exact status and OCI error code
 * (JSON body `{"errors":[{code,message}]}`), never a 5xx, and must leave the store exactly as it was.
 *
 * Requests go out byte for byte over node:net (rawRequest), so paths with `..`, `//` or bad escapes reach the
 * server unnormalised, and bodies can be truncated, chunked or cut off.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { readdir, stat } from 'node:fs/promises';
import { join, relative } from 'node:path';
import { isDeepStrictEqual } from 'node:util';
import { startTestNode, type TestNode } from '../helpers/node.ts';
import {
  MediaTypes as MT,
  makeImage,
  pushBlob,
  randomBlob,
  randomDigest,
  rawRequest,
  request,
  sha256,
  startUpload,
  type Descriptor,
  type RawRequestOptions,
  type RawResult,
} from '../helpers/oci-client.ts';

let t: TestNode;

const REPO = 'mal/base';
const HEX64 = 'a'.repeat(64);
const MIB = 1024 * 1024;

/** Fixtures made once in `before`. */
const fx = {
  goodBlob: Buffer.alloc(0) as Buffer,
  goodDigest: '',
  goodManifestDigest: '',
  config: undefined as unknown as Descriptor,
  layer: undefined as unknown as Descriptor,
  childManifest: undefined as unknown as Descriptor,
  /** A session of REPO holding 10 bytes; cases must leave it as it is. */
  session: '',
  sessionId: '',
};

function send(opts: RawRequestOptions): Promise<RawResult> {
  return rawRequest(t.hostPort, { timeoutMs: 10_000, ...opts });
}

function get(path: string, headers: Record<string, string> = {}): Promise<RawResult> {
  return send({ method: 'GET', path, headers });
}

/** A manifest PUT to REPO (tag `t` unless `ref`) with the OCI manifest Content-Type unless told. */
function putManifestRaw(body: string | Buffer, opts: { ref?: string; contentType?: string; repo?: string } = {}): Promise<RawResult> {
  return send({
    method: 'PUT',
    path: `/v2/${opts.repo ?? REPO}/manifests/${opts.ref ?? 't'}`,
    headers: { 'Content-Type': opts.contentType ?? MT.OciManifest },
    body,
  });
}

/** A valid OCI manifest over the fixture blobs, with `patch` applied (undefined values delete the key). */
function manifest(patch: Record<string, unknown> = {}): string {
  const doc: Record<string, unknown> = { schemaVersion: 2, mediaType: MT.OciManifest, config: fx.config, layers: [fx.layer] };
  for (const [k, v] of Object.entries(patch)) {
    if (v === undefined) delete doc[k];
    else doc[k] = v;
  }
  return JSON.stringify(doc);
}

function index(patch: Record<string, unknown> = {}): string {
  const doc: Record<string, unknown> = { schemaVersion: 2, mediaType: MT.OciIndex, manifests: [fx.childManifest] };
  for (const [k, v] of Object.entries(patch)) {
    if (v === undefined) delete doc[k];
    else doc[k] = v;
  }
  return JSON.stringify(doc);
}

// ---------------------------------------------------------------------------------------------
// Store snapshot

async function listFiles(dir: string, root = dir): Promise<string[]> {
  const out: string[] = [];
  for (const entry of await readdir(dir, { withFileTypes: true }).catch(() => [])) {
    const p = join(dir, entry.name);
    if (entry.isDirectory()) {
      if (dir === root && entry.name === 'db') continue; // LevelDB's own files change on every write
      out.push(...(await listFiles(p, root)));
    } else {
      const st = await stat(p).catch(() => undefined);
      out.push(`${relative(root, p)} ${st?.size ?? '?'}`);
    }
  }
  return out.sort();
}

async function snapshot(): Promise<unknown> {
  const store = t.node.store;
  const repositories = (await store.listRepositories()).sort();
  const tags: Record<string, string[]> = {};
  for (const r of repositories) {
    const list = (await store.listTags(r)).sort();
    tags[r] = await Promise.all(list.map(async (tag) => `${tag}=${await store.resolveTag(r, tag)}`));
  }
  const uploads = (await store.listUploads()).map((u) => `${u.repository} ${u.id} ${u.offset}`).sort();
  return { repositories, tags, stats: await store.stats(), uploads, files: await listFiles(t.dataDir) };
}

function withoutUploads(s: unknown): unknown {
  const { uploads: _u, files, ...rest } = s as { uploads: unknown; files: string[] } & Record<string, unknown>;
  return { ...rest, files: files.filter((f) => !f.startsWith('uploads/')) };
}

// ---------------------------------------------------------------------------------------------
// Cases

interface Expected {
  status: number;
  /** The OCI error code; omitted for HEAD (no body). */
  code?: string;
}

interface Case {
  name: string;
  run(): Promise<RawResult>;
  expect: Expected | Expected[];
  /** The server may also just close the connection (a body that never completed). */
  mayClose?: boolean;
  /** The case appends to a session on purpose: compare everything but the sessions. */
  sessionsMayChange?: boolean;
  /** Per-case setup, run before the "before" snapshot. */
  setup?(): Promise<void>;
  /** Extra checks after the common ones. */
  check?(r: RawResult): Promise<void>;
}

const cases: Case[] = [];
const add = (c: Case): void => void cases.push(c);
const E = (status: number, code?: string): Expected => ({ status, code });

// ---- names -----------------------------------------------------------------------------------
for (const [label, path] of [
  ['a `..` component', '/v2/mal/../base/tags/list'],
  ['an escaped `..` component', '/v2/mal/%2e%2e/base/tags/list'],
  ['a `.` component', '/v2/mal/./base/tags/list'],
  ['upper case', '/v2/Mal/base/tags/list'],
  ['a trailing /', '/v2/mal/base//tags/list'],
  ['an empty component (a//b)', '/v2/mal//base/tags/list'],
  ['a leading -', '/v2/-mal/tags/list'],
  ['a trailing separator', '/v2/mal_/tags/list'],
  ['256 characters', `/v2/${'a'.repeat(128)}/${'b'.repeat(127)}/tags/list`],
  ['an invalid escape', '/v2/mal/a%zz/tags/list'],
  ['a space (escaped)', '/v2/mal/a%20b/tags/list'],
] as const) {
  add({ name: `name with ${label} -> 400 NAME_INVALID`, run: () => get(path), expect: E(400, 'NAME_INVALID') });
}
add({ name: 'blob GET on an invalid name -> 400 NAME_INVALID', run: () => get(`/v2/mal/Base/blobs/${fx.goodDigest}`), expect: E(400, 'NAME_INVALID') });
add({ name: 'blob HEAD on an invalid name -> 400', run: () => send({ method: 'HEAD', path: `/v2/mal/base_/blobs/${fx.goodDigest}` }), expect: E(400) });
add({
  name: 'upload POST on an invalid name -> 400 NAME_INVALID, no session',
  run: () => send({ method: 'POST', path: '/v2/Mal/base/blobs/uploads/' }),
  expect: E(400, 'NAME_INVALID'),
});
add({
  name: 'monolithic POST on an invalid name -> 400 NAME_INVALID, nothing stored',
  run: () => send({ method: 'POST', path: `/v2/mal/a..b/blobs/uploads/?digest=${sha256('abc')}`, body: 'abc' }),
  expect: E(400, 'NAME_INVALID'),
});
add({
  name: 'manifest PUT on an invalid name -> 400 NAME_INVALID, nothing stored',
  run: () => putManifestRaw(manifest(), { repo: 'mal/bad..name' }),
  expect: E(400, 'NAME_INVALID'),
});
add({
  name: 'mount into an invalid name -> 400 NAME_INVALID',
  run: () => send({ method: 'POST', path: `/v2/MAL/x/blobs/uploads/?mount=${fx.goodDigest}&from=${REPO}` }),
  expect: E(400, 'NAME_INVALID'),
});
add({ name: 'an invalid ?ns= registry -> 400 NAME_INVALID', run: () => get(`/v2/${REPO}/manifests/good?ns=-bad-`), expect: E(400, 'NAME_INVALID') });

// ---- digests ---------------------------------------------------------------------------------
const BAD_DIGESTS: Array<[string, string]> = [
  ['wrong length', 'sha256:abc'],
  ['63 hex', `sha256:${'a'.repeat(63)}`],
  ['upper-case hex', `sha256:${'A'.repeat(64)}`],
  ['an unknown algorithm', `md5:${'a'.repeat(32)}`],
  ['no colon', HEX64],
  ['an empty hex part', 'sha256:'],
  ['sha512 with 64 hex', `sha512:${HEX64}`],
  ['non-hex characters', `sha256:${'g'.repeat(64)}`],
];
for (const [label, d] of BAD_DIGESTS) {
  add({ name: `blob GET, digest with ${label} -> 400 DIGEST_INVALID`, run: () => get(`/v2/${REPO}/blobs/${d}`), expect: E(400, 'DIGEST_INVALID') });
}
for (const [label, d] of BAD_DIGESTS.filter(([, d]) => d.includes(':'))) {
  add({ name: `manifest GET, digest with ${label} -> 400 DIGEST_INVALID`, run: () => get(`/v2/${REPO}/manifests/${d}`), expect: E(400, 'DIGEST_INVALID') });
}
add({ name: 'manifest HEAD with an invalid digest -> 400', run: () => send({ method: 'HEAD', path: `/v2/${REPO}/manifests/sha256:zz` }), expect: E(400) });
for (const [label, d] of [BAD_DIGESTS[0]!, BAD_DIGESTS[2]!, BAD_DIGESTS[4]!]) {
  add({ name: `referrers, digest with ${label} -> 400 DIGEST_INVALID`, run: () => get(`/v2/${REPO}/referrers/${d}`), expect: E(400, 'DIGEST_INVALID') });
}
for (const [label, d] of [BAD_DIGESTS[0]!, BAD_DIGESTS[3]!, BAD_DIGESTS[4]!, BAD_DIGESTS[5]!]) {
  add({
    name: `mount, digest with ${label} -> 400 DIGEST_INVALID, no session`,
    run: () => send({ method: 'POST', path: `/v2/${REPO}/blobs/uploads/?mount=${d}&from=mal/other` }),
    expect: E(400, 'DIGEST_INVALID'),
  });
}
for (const [label, d] of [BAD_DIGESTS[0]!, BAD_DIGESTS[3]!, BAD_DIGESTS[5]!]) {
  add({
    name: `monolithic POST ?digest= with ${label} -> 400 DIGEST_INVALID, nothing stored`,
    run: () => send({ method: 'POST', path: `/v2/${REPO}/blobs/uploads/?digest=${d}`, headers: { 'Content-Type': 'application/octet-stream' }, body: randomBlob(100) }),
    expect: E(400, 'DIGEST_INVALID'),
  });
}
for (const [label, d] of [BAD_DIGESTS[0]!, BAD_DIGESTS[2]!, BAD_DIGESTS[4]!]) {
  add({
    name: `upload PUT ?digest= with ${label} -> 400 DIGEST_INVALID, session unchanged`,
    run: () => send({ method: 'PUT', path: `${fx.session}?digest=${d}` }),
    expect: E(400, 'DIGEST_INVALID'),
  });
}
add({ name: 'blob DELETE with an invalid digest -> 400 DIGEST_INVALID', run: () => send({ method: 'DELETE', path: `/v2/${REPO}/blobs/sha256:abc` }), expect: E(400, 'DIGEST_INVALID') });
add({ name: 'manifest DELETE with an invalid digest -> 400 DIGEST_INVALID', run: () => send({ method: 'DELETE', path: `/v2/${REPO}/manifests/sha256:abc` }), expect: E(400, 'DIGEST_INVALID') });
add({ name: 'manifest PUT by an invalid digest -> 400 DIGEST_INVALID', run: () => putManifestRaw(manifest(), { ref: 'sha256:abc' }), expect: E(400, 'DIGEST_INVALID') });
add({
  name: 'manifest PUT by a digest the body does not hash to -> 400 DIGEST_INVALID',
  run: () => putManifestRaw(manifest(), { ref: randomDigest() }),
  expect: E(400, 'DIGEST_INVALID'),
});

// ---- tags ------------------------------------------------------------------------------------
// A GET or HEAD of a reference that is neither a valid tag nor a digest names no manifest: 404, as the OCI
// conformance suite (v1.1.1) expects for `.INVALID_MANIFEST_NAME`. Writes of one stay 400.
add({ name: 'manifest GET by tag -bad -> 404 MANIFEST_UNKNOWN', run: () => get(`/v2/${REPO}/manifests/-bad`), expect: E(404, 'MANIFEST_UNKNOWN') });
add({ name: 'manifest GET by tag .bad -> 404 MANIFEST_UNKNOWN', run: () => get(`/v2/${REPO}/manifests/.bad`), expect: E(404, 'MANIFEST_UNKNOWN') });
add({ name: 'manifest GET by .INVALID_MANIFEST_NAME -> 404 MANIFEST_UNKNOWN', run: () => get(`/v2/${REPO}/manifests/.INVALID_MANIFEST_NAME`), expect: E(404, 'MANIFEST_UNKNOWN') });
add({ name: 'manifest HEAD by .INVALID_MANIFEST_NAME -> 404', run: () => send({ method: 'HEAD', path: `/v2/${REPO}/manifests/.INVALID_MANIFEST_NAME` }), expect: E(404) });
add({ name: 'manifest PUT by .INVALID_MANIFEST_NAME -> 400 TAG_INVALID', run: () => putManifestRaw(manifest(), { ref: '.INVALID_MANIFEST_NAME' }), expect: E(400, 'TAG_INVALID') });
add({ name: 'manifest PUT by a 129-character tag -> 400 TAG_INVALID', run: () => putManifestRaw(manifest(), { ref: 'a'.repeat(129) }), expect: E(400, 'TAG_INVALID') });
add({ name: 'manifest PUT by tag -bad -> 400 TAG_INVALID', run: () => putManifestRaw(manifest(), { ref: '-bad' }), expect: E(400, 'TAG_INVALID') });
add({ name: 'manifest PUT by tag with an escaped space -> 400 TAG_INVALID', run: () => putManifestRaw(manifest(), { ref: 'a%20b' }), expect: E(400, 'TAG_INVALID') });
add({ name: 'manifest DELETE by tag -bad -> 400 TAG_INVALID', run: () => send({ method: 'DELETE', path: `/v2/${REPO}/manifests/-bad` }), expect: E(400, 'TAG_INVALID') });

// ---- manifest bodies -------------------------------------------------------------------------
const INVALID_MANIFESTS: Array<[string, () => string, string?]> = [
  ['not JSON', () => '{"schemaVersion": 2,'],
  ['an empty body', () => ''],
  ['a JSON array', () => '[]'],
  ['a JSON string', () => '"manifest"'],
  ['JSON null', () => 'null'],
  ['schemaVersion 1', () => manifest({ schemaVersion: 1 })],
  ['no schemaVersion', () => manifest({ schemaVersion: undefined })],
  ['schemaVersion "2" (a string)', () => manifest({ schemaVersion: '2' })],
  ['no config', () => manifest({ config: undefined })],
  ['config not an object', () => manifest({ config: 'sha256:x' })],
  ['no layers', () => manifest({ layers: undefined })],
  ['layers not an array', () => manifest({ layers: {} })],
  ['a layer with an invalid digest', () => manifest({ layers: [{ ...fx.layer, digest: 'sha256:abc' }] })],
  ['a layer with a negative size', () => manifest({ layers: [{ ...fx.layer, size: -1 }] })],
  ['a layer with a fractional size', () => manifest({ layers: [{ ...fx.layer, size: 1.5 }] })],
  ['a layer with a string size', () => manifest({ layers: [{ ...fx.layer, size: String(fx.layer.size) }] })],
  ['a layer without mediaType', () => manifest({ layers: [{ digest: fx.layer.digest, size: fx.layer.size }] })],
  ['a layer whose size disagrees with the stored blob', () => manifest({ layers: [{ ...fx.layer, size: fx.layer.size + 1 }] })],
  ['a config whose size disagrees with the stored blob', () => manifest({ config: { ...fx.config, size: 1 } })],
  ['non-string annotations', () => manifest({ annotations: { a: 1 } })],
  ['a non-string artifactType', () => manifest({ artifactType: 7 })],
  ['an invalid subject descriptor', () => manifest({ subject: { mediaType: MT.OciManifest, digest: 'nope', size: 1 } })],
  ['a "manifests" list in an image manifest', () => manifest({ manifests: [] })],
  ['a mediaType that is not a string', () => manifest({ mediaType: 5 })],
  ['Content-Type text/plain', () => manifest({ mediaType: undefined }), 'text/plain'],
  ['Content-Type OCI manifest, body mediaType OCI index', () => manifest({ mediaType: MT.OciIndex })],
  ['Content-Type Docker manifest, body mediaType OCI manifest', () => manifest(), MT.DockerManifest],
  ['Docker schema1 media type', () => manifest({ mediaType: 'application/vnd.docker.distribution.manifest.v1+json' }), 'application/vnd.docker.distribution.manifest.v1+json'],
  ['a Docker schema2 manifest without layers', () => manifest({ mediaType: MT.DockerManifest, layers: [] }), MT.DockerManifest],
  ['an index with a config', () => index({ config: fx.config }), MT.OciIndex],
  ['an index with manifests not a list', () => index({ manifests: {} }), MT.OciIndex],
  ['an index child with an invalid digest', () => index({ manifests: [{ ...fx.childManifest, digest: 'sha256:1' }] }), MT.OciIndex],
  ['an index child whose size disagrees with the stored manifest', () => index({ manifests: [{ ...fx.childManifest, size: 3 }] }), MT.OciIndex],
  ['an index child with a platform lacking os', () => index({ manifests: [{ ...fx.childManifest, platform: { architecture: 'amd64' } }] }), MT.OciIndex],
];
for (const [label, body, contentType] of INVALID_MANIFESTS) {
  add({ name: `manifest with ${label} -> 400 MANIFEST_INVALID`, run: () => putManifestRaw(body(), { contentType }), expect: E(400, 'MANIFEST_INVALID') });
}
add({
  name: 'manifest naming a missing layer -> 400 MANIFEST_BLOB_UNKNOWN',
  run: () => putManifestRaw(manifest({ layers: [fx.layer, { ...fx.layer, digest: randomDigest() }] })),
  expect: E(400, 'MANIFEST_BLOB_UNKNOWN'),
});
add({
  name: 'manifest naming a missing config -> 400 MANIFEST_BLOB_UNKNOWN',
  run: () => putManifestRaw(manifest({ config: { ...fx.config, digest: randomDigest() } })),
  expect: E(400, 'MANIFEST_BLOB_UNKNOWN'),
});
add({
  name: 'index naming a missing child manifest -> 400 MANIFEST_BLOB_UNKNOWN',
  run: () => putManifestRaw(index({ manifests: [fx.childManifest, { ...fx.childManifest, digest: randomDigest() }] }), { contentType: MT.OciIndex }),
  expect: E(400, 'MANIFEST_BLOB_UNKNOWN'),
});
add({
  name: 'manifest PUT by digest naming a missing layer -> 400 MANIFEST_BLOB_UNKNOWN',
  run: () => {
    const body = manifest({ layers: [{ ...fx.layer, digest: randomDigest() }] });
    return putManifestRaw(body, { ref: sha256(body) });
  },
  expect: E(400, 'MANIFEST_BLOB_UNKNOWN'),
});

// ---- sizes -----------------------------------------------------------------------------------
/** A syntactically valid manifest of `size` bytes (padded with an annotation). */
function paddedManifest(size: number): Buffer {
  const doc = JSON.parse(manifest({ annotations: { pad: '' } })) as { annotations: { pad: string } };
  doc.annotations.pad = 'x'.repeat(size - Buffer.byteLength(JSON.stringify(doc)));
  const b = Buffer.from(JSON.stringify(doc));
  assert.equal(b.length, size);
  return b;
}
add({
  name: 'manifest of 4 MiB + 1 with Content-Length -> 413',
  run: () => putManifestRaw(paddedManifest(4 * MIB + 1)),
  expect: E(413, 'PAYLOAD_TOO_LARGE'),
});
add({
  name: 'manifest declaring 5 MiB (body not sent) -> 413 at once',
  run: () => send({ method: 'PUT', path: `/v2/${REPO}/manifests/t`, headers: { 'Content-Type': MT.OciManifest, 'Content-Length': String(5 * MIB) }, timeoutMs: 5000 }),
  expect: E(413, 'PAYLOAD_TOO_LARGE'),
});
add({
  name: 'manifest of 5 MiB, chunked transfer encoding -> 413',
  run: () => {
    const b = paddedManifest(5 * MIB);
    const pieces: Buffer[] = [];
    for (let i = 0; i < b.length; i += 256 * 1024) pieces.push(b.subarray(i, i + 256 * 1024));
    return send({ method: 'PUT', path: `/v2/${REPO}/manifests/t`, headers: { 'Content-Type': MT.OciManifest }, body: pieces, chunked: true });
  },
  expect: E(413, 'PAYLOAD_TOO_LARGE'),
});

// ---- uploads ---------------------------------------------------------------------------------
let scratch = ''; // a per-case session (made in setup)
const scratchData = randomBlob(64);
const withScratch = async (): Promise<void> => {
  scratch = await startUpload(t.url, REPO);
  const r = await request(t.url, 'PATCH', scratch, { headers: { 'Content-Range': '0-63' }, body: scratchData });
  assert.equal(r.status, 202);
};
add({
  name: 'upload PUT with a wrong digest (no body) -> 400 DIGEST_INVALID, no blob, session kept',
  setup: withScratch,
  run: () => send({ method: 'PUT', path: `${scratch}?digest=${randomDigest()}` }),
  expect: E(400, 'DIGEST_INVALID'),
  async check() {
    // The session is still usable with the right digest.
    const ok = await request(t.url, 'PUT', `${scratch}?digest=${sha256(scratchData)}`);
    assert.equal(ok.status, 201, ok.text());
    await request(t.url, 'DELETE', `/v2/${REPO}/blobs/${sha256(scratchData)}`);
  },
});
add({
  name: 'upload PUT with a wrong digest and a final chunk -> 400 DIGEST_INVALID, no blob',
  setup: withScratch,
  sessionsMayChange: true,
  // The digest is of the data plus "tail"; the final chunk sent is "TAIL".
  run: () => send({ method: 'PUT', path: `${scratch}?digest=${sha256(Buffer.concat([scratchData, Buffer.from('tail')]))}`, body: 'TAIL' }),
  expect: E(400, 'DIGEST_INVALID'),
  async check() {
    const blob = await request(t.url, 'HEAD', `/v2/${REPO}/blobs/${sha256(Buffer.concat([scratchData, Buffer.from('TAIL')]))}`);
    assert.equal(blob.status, 404);
  },
});
add({
  name: 'monolithic POST with a wrong digest -> 400 DIGEST_INVALID, nothing stored',
  run: () => send({ method: 'POST', path: `/v2/${REPO}/blobs/uploads/?digest=${randomDigest()}`, headers: { 'Content-Type': 'application/octet-stream' }, body: randomBlob(2000) }),
  expect: E(400, 'DIGEST_INVALID'),
});
{
  const data = randomBlob(1000);
  add({
    name: 'monolithic POST whose body is shorter than its Content-Length (half-close) -> 400 SIZE_INVALID or a close, nothing stored',
    run: () =>
      send({
        method: 'POST',
        path: `/v2/${REPO}/blobs/uploads/?digest=${sha256(data)}`,
        headers: { 'Content-Type': 'application/octet-stream', 'Content-Length': '1000' },
        body: data.subarray(0, 500),
        after: 'half-close',
      }),
    expect: E(400, 'SIZE_INVALID'),
    mayClose: true,
  });
  add({
    name: 'monolithic POST whose body is shorter than its Content-Length (client goes away) -> nothing stored',
    run: () =>
      send({
        method: 'POST',
        path: `/v2/${REPO}/blobs/uploads/?digest=${sha256(data)}`,
        headers: { 'Content-Type': 'application/octet-stream', 'Content-Length': '1000' },
        body: data.subarray(0, 500),
        after: 'destroy',
        destroyAfterMs: 150,
      }),
    expect: E(400, 'SIZE_INVALID'),
    mayClose: true,
  });
}
add({ name: 'upload PUT without ?digest -> 400 DIGEST_INVALID', run: () => send({ method: 'PUT', path: fx.session }), expect: E(400, 'DIGEST_INVALID') });
add({ name: 'upload PUT with ?digest= empty -> 400 DIGEST_INVALID', run: () => send({ method: 'PUT', path: `${fx.session}?digest=` }), expect: E(400, 'DIGEST_INVALID') });
add({
  name: 'upload PUT without ?digest but with a body -> 400 DIGEST_INVALID, session unchanged',
  run: () => send({ method: 'PUT', path: fx.session, headers: { 'Content-Type': 'application/octet-stream' }, body: randomBlob(20) }),
  expect: E(400, 'DIGEST_INVALID'),
});
const UNKNOWN_ID = '00000000-0000-4000-8000-000000000000';
for (const [method, extra, body] of [
  ['GET', '', undefined],
  ['PATCH', '', 'abc'],
  ['PUT', `?digest=${sha256('abc')}`, 'abc'],
  ['DELETE', '', undefined],
] as const) {
  add({
    name: `${method} of an unknown upload id -> 404 BLOB_UPLOAD_UNKNOWN`,
    run: () => send({ method, path: `/v2/${REPO}/blobs/uploads/${UNKNOWN_ID}${extra}`, body }),
    expect: E(404, 'BLOB_UPLOAD_UNKNOWN'),
  });
  add({
    name: `${method} of another repository's session -> 404 BLOB_UPLOAD_UNKNOWN, session unchanged`,
    run: () => send({ method, path: `/v2/mal/other/blobs/uploads/${fx.sessionId}${extra}`, body }),
    expect: E(404, 'BLOB_UPLOAD_UNKNOWN'),
  });
}
add({ name: 'GET of a non-UUID upload id -> 404 BLOB_UPLOAD_UNKNOWN', run: () => get(`/v2/${REPO}/blobs/uploads/not-a-session`), expect: E(404, 'BLOB_UPLOAD_UNKNOWN') });
add({ name: 'GET of an escaped path as upload id -> 404 BLOB_UPLOAD_UNKNOWN', run: () => get(`/v2/${REPO}/blobs/uploads/..%2F..%2Fdb`), expect: E(404, 'BLOB_UPLOAD_UNKNOWN') });
for (const range of ['abc', 'bytes=10-', '10-x', '-5', '10', '10-19-20']) {
  add({
    name: `PATCH with a malformed Content-Range ${JSON.stringify(range)} -> 400 BLOB_UPLOAD_INVALID, session unchanged`,
    run: () => send({ method: 'PATCH', path: fx.session, headers: { 'Content-Type': 'application/octet-stream', 'Content-Range': range }, body: randomBlob(10) }),
    expect: E(400, 'BLOB_UPLOAD_INVALID'),
  });
}
add({
  name: 'PATCH whose Content-Range and Content-Length disagree -> 400 BLOB_UPLOAD_INVALID, session unchanged',
  run: () => send({ method: 'PATCH', path: fx.session, headers: { 'Content-Type': 'application/octet-stream', 'Content-Range': '10-19' }, body: randomBlob(5) }),
  expect: E(400, 'BLOB_UPLOAD_INVALID'),
});
add({
  name: 'PATCH with a reversed Content-Range 19-10 -> 400 BLOB_UPLOAD_INVALID or 416, session unchanged',
  run: () => send({ method: 'PATCH', path: fx.session, headers: { 'Content-Type': 'application/octet-stream', 'Content-Range': '19-10', 'Content-Length': '10' }, body: randomBlob(10) }),
  expect: [E(400, 'BLOB_UPLOAD_INVALID'), E(416, 'RANGE_INVALID')],
});
add({
  name: 'PATCH with an out-of-order Content-Range -> 416 RANGE_INVALID with Range, session unchanged',
  run: () => send({ method: 'PATCH', path: fx.session, headers: { 'Content-Type': 'application/octet-stream', 'Content-Range': '20-29' }, body: randomBlob(10) }),
  expect: E(416, 'RANGE_INVALID'),
  async check(r) {
    assert.equal(r.response?.headers['range'], '0-9');
    assert.equal(r.response?.headers['location'], fx.session);
  },
});

// ---- pagination ------------------------------------------------------------------------------
for (const q of ['n=abc', 'n=-1', 'n=1.5', 'n=1&n=2', 'n=', 'n=1e3']) {
  add({ name: `tags/list ?${q} -> 400 PAGINATION_NUMBER_INVALID`, run: () => get(`/v2/${REPO}/tags/list?${q}`), expect: E(400, 'PAGINATION_NUMBER_INVALID') });
}
add({ name: '_catalog ?n=abc -> 400 PAGINATION_NUMBER_INVALID', run: () => get('/v2/_catalog?n=abc'), expect: E(400, 'PAGINATION_NUMBER_INVALID') });

// ---- methods and paths -----------------------------------------------------------------------
for (const [method, path] of [
  ['POST', `/v2/${REPO}/manifests/good`],
  ['PATCH', `/v2/${REPO}/manifests/good`],
  ['PATCH', `/v2/${REPO}/blobs/sha256:${HEX64}`],
  ['PUT', `/v2/${REPO}/blobs/sha256:${HEX64}`],
  ['PUT', '/v2/'],
  ['DELETE', '/v2/'],
  ['POST', '/v2/_catalog'],
  ['DELETE', `/v2/${REPO}/tags/list`],
  ['POST', `/v2/${REPO}/referrers/sha256:${HEX64}`],
  ['GET', `/v2/${REPO}/blobs/uploads/`],
  ['PUT', `/v2/${REPO}/blobs/uploads/`],
  ['POST', `/v2/${REPO}/blobs/uploads/${UNKNOWN_ID}`],
] as const) {
  add({ name: `${method} ${path.replace(/[0-9a-f]{64}/, '<hex>')} -> 405 UNSUPPORTED`, run: () => send({ method, path }), expect: E(405, 'UNSUPPORTED') });
}
add({ name: 'unknown /v2 path -> 404 NAME_UNKNOWN', run: () => get(`/v2/${REPO}/nothing/here`), expect: E(404, 'NAME_UNKNOWN') });
add({ name: 'unknown /v2 path (one component) -> 404 NAME_UNKNOWN', run: () => get('/v2/foo'), expect: E(404, 'NAME_UNKNOWN') });

// ---- things that do not exist ----------------------------------------------------------------
add({ name: 'tags/list of an unknown repository -> 404 NAME_UNKNOWN', run: () => get('/v2/mal/nope/tags/list'), expect: E(404, 'NAME_UNKNOWN') });
add({ name: 'manifest GET in an unknown repository -> 404 NAME_UNKNOWN', run: () => get('/v2/mal/nope/manifests/latest'), expect: E(404, 'NAME_UNKNOWN') });
add({ name: 'manifest GET of an unknown tag -> 404 MANIFEST_UNKNOWN', run: () => get(`/v2/${REPO}/manifests/nope`), expect: E(404, 'MANIFEST_UNKNOWN') });
add({ name: 'manifest GET of an unknown digest -> 404 MANIFEST_UNKNOWN', run: () => get(`/v2/${REPO}/manifests/${randomDigest()}`), expect: E(404, 'MANIFEST_UNKNOWN') });
add({ name: 'manifest GET of a blob digest -> 404 MANIFEST_UNKNOWN', run: () => get(`/v2/${REPO}/manifests/${fx.goodDigest}`), expect: E(404, 'MANIFEST_UNKNOWN') });
add({ name: 'blob GET of an unknown digest -> 404 BLOB_UNKNOWN', run: () => get(`/v2/${REPO}/blobs/${randomDigest()}`), expect: E(404, 'BLOB_UNKNOWN') });
add({ name: 'manifest DELETE of an unknown digest -> 404 MANIFEST_UNKNOWN', run: () => send({ method: 'DELETE', path: `/v2/${REPO}/manifests/${randomDigest()}` }), expect: E(404, 'MANIFEST_UNKNOWN') });
add({ name: 'manifest DELETE of an unknown tag -> 404 MANIFEST_UNKNOWN', run: () => send({ method: 'DELETE', path: `/v2/${REPO}/manifests/nope` }), expect: E(404, 'MANIFEST_UNKNOWN') });
add({ name: 'blob DELETE of an unknown digest -> 404 BLOB_UNKNOWN', run: () => send({ method: 'DELETE', path: `/v2/${REPO}/blobs/${randomDigest()}` }), expect: E(404, 'BLOB_UNKNOWN') });
add({
  name: 'blob GET with an unsatisfiable Range -> 416 RANGE_INVALID with Content-Range',
  run: () => get(`/v2/${REPO}/blobs/${fx.goodDigest}`, { Range: 'bytes=100000-' }),
  expect: E(416, 'RANGE_INVALID'),
  async check(r) {
    assert.equal(r.response?.headers['content-range'], `bytes */${fx.goodBlob.length}`);
  },
});

// ---------------------------------------------------------------------------------------------

function describeResult(r: RawResult): string {
  return r.response ? `${r.response.status} ${r.response.body.toString('utf8').slice(0, 300)}` : `no response (closed=${r.closed}, timedOut=${r.timedOut}): ${r.raw.toString('latin1').slice(0, 200)}`;
}

describe('malformed requests', () => {
  before(async () => {
    // A short grace (see the shutdown test in api.test.ts): stop() must not cost this file 10 s.
    t = await startTestNode({ config: { shutdownGraceMs: 2000 } });
    fx.goodBlob = randomBlob(4096);
    fx.goodDigest = await pushBlob(t.url, REPO, fx.goodBlob);
    const img = await makeImage(t.url, REPO, { tag: 'good', layers: 1 });
    fx.goodManifestDigest = img.digest;
    fx.config = img.config;
    fx.layer = img.layers[0]!;
    fx.childManifest = img.descriptor;
    fx.session = await startUpload(t.url, REPO);
    fx.sessionId = fx.session.split('/').pop()!;
    const r = await request(t.url, 'PATCH', fx.session, { headers: { 'Content-Range': '0-9' }, body: randomBlob(10) });
    assert.equal(r.status, 202);
  });
  after(async () => {
    await t?.stop();
  });

  it(`has at least 35 cases (${cases.length})`, () => {
    assert.ok(cases.length >= 35);
    assert.equal(new Set(cases.map((c) => c.name)).size, cases.length, 'case names must be unique');
  });

  for (const c of cases) {
    it(c.name, async () => {
      await c.setup?.();
      const beforeSnap = await snapshot();
      const r = await c.run();
      assert.ok(!r.timedOut, `no answer and no close: ${describeResult(r)}`);
      const res = r.response;
      if (res) assert.ok(res.status < 500, `5xx: ${describeResult(r)}`);
      if (!res) {
        assert.ok(c.mayClose, `the server closed without a response: ${describeResult(r)}`);
      } else if (c.mayClose && !/json/.test(res.headers['content-type'] ?? '') && res.status === 400) {
        // Node's HTTP parser refused the incomplete request itself (plain 400 and a close): acceptable.
      } else {
        const alternatives = Array.isArray(c.expect) ? c.expect : [c.expect];
        const match = alternatives.find((e) => e.status === res.status);
        assert.ok(match, `expected status ${alternatives.map((e) => e.status).join(' or ')}, got ${describeResult(r)}`);
        if (match.code !== undefined) {
          assert.match(res.headers['content-type'] ?? '', /^application\/json\b/, `Content-Type of ${describeResult(r)}`);
          const body = res.json();
          assert.ok(Array.isArray(body.errors) && body.errors.length >= 1, describeResult(r));
          assert.equal(body.errors[0].code, match.code, describeResult(r));
          assert.equal(typeof body.errors[0].message, 'string');
          assert.ok(body.errors[0].message.length > 0);
        } else {
          assert.equal(res.body.length, 0, 'HEAD has no body');
        }
      }
      // When the handler answered, it cleaned up before answering: compare at once. When it did not (the client went
      // away, or Node's parser refused the request with a plain 400), the handler may still be winding down: give it
      // a generous deadline to put the store back as it was.
      const handlerAnswered = res !== undefined && /json/.test(res.headers['content-type'] ?? '');
      const view = (s: unknown): unknown => (c.sessionsMayChange ? withoutUploads(s) : s);
      let afterSnap = await snapshot();
      for (const deadline = Date.now() + 10_000; !handlerAnswered && !isDeepStrictEqual(view(afterSnap), view(beforeSnap)) && Date.now() < deadline; ) {
        await new Promise((ok) => setTimeout(ok, 50));
        afterSnap = await snapshot();
      }
      assert.deepEqual(view(afterSnap), view(beforeSnap), 'the store changed');
      // Known-good content still serves.
      const blob = await request(t.url, 'GET', `/v2/${REPO}/blobs/${fx.goodDigest}`);
      assert.equal(blob.status, 200);
      assert.equal(sha256(blob.body), fx.goodDigest);
      const m = await request(t.url, 'HEAD', `/v2/${REPO}/manifests/good`);
      assert.equal(m.status, 200);
      assert.equal(m.headers.get('docker-content-digest'), fx.goodManifestDigest);
      await c.check?.(r);
    });
  }

  it('the node recorded no request as 500 INTERNAL (client mistakes and disconnects are not internal errors)', async () => {
    const text = (await request(t.url, 'GET', '/metrics')).text();
    const internal = text.split('\n').filter((l) => /^shoal_http_requests_total\{.*status="500".*\} [1-9]/.test(l));
    assert.deepEqual(internal, []);
  });

  it('the shared session still works after every case', async () => {
    const st = await request(t.url, 'GET', fx.session);
    assert.equal(st.status, 204);
    assert.equal(st.headers.get('range'), '0-9');
    const del = await request(t.url, 'DELETE', fx.session);
    assert.equal(del.status, 204);
  });
});
