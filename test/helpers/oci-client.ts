/**
 * A small OCI Distribution client for tests: plain HTTP requests (global fetch), exact-byte raw requests
 * (node:net, for truncated bodies, chunked transfer, aborted requests and paths fetch would normalise),
 * and push helpers (monolithic and chunked blob uploads, manifests, whole random images).
 *
 * Nothing here imports src/: it speaks the wire protocol only, so any test (or another registry) can use it.
 */
import { createHash, randomBytes } from 'node:crypto';
import { connect } from 'node:net';

export const MediaTypes = {
  OciManifest: 'application/vnd.oci.image.manifest.v1+json',
  OciIndex: 'application/vnd.oci.image.index.v1+json',
  OciConfig: 'application/vnd.oci.image.config.v1+json',
  OciEmpty: 'application/vnd.oci.empty.v1+json',
  OciLayerGzip: 'application/vnd.oci.image.layer.v1.tar+gzip',
  DockerManifest: 'application/vnd.docker.distribution.manifest.v2+json',
  DockerManifestList: 'application/vnd.docker.distribution.manifest.list.v2+json',
  DockerConfig: 'application/vnd.docker.container.image.v1+json',
  DockerLayerGzip: 'application/vnd.docker.image.rootfs.diff.tar.gzip',
} as const;

export function sha256(data: Buffer | string): string {
  return `sha256:${createHash('sha256').update(data).digest('hex')}`;
}

export function sha512(data: Buffer | string): string {
  return `sha512:${createHash('sha512').update(data).digest('hex')}`;
}

/** Random bytes (not seeded: every call gives new content, hence new digests). */
export function randomBlob(size: number): Buffer {
  return randomBytes(size);
}

/** A digest that (almost surely) names nothing. */
export function randomDigest(): string {
  return sha256(randomBytes(32));
}

export interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
  [extra: string]: unknown;
}

export function descriptorOf(data: Buffer, mediaType: string, extra: Record<string, unknown> = {}): Descriptor {
  return { mediaType, digest: sha256(data), size: data.length, ...extra };
}

// ---------------------------------------------------------------------------------------------
// HTTP

export interface Resp {
  status: number;
  headers: Headers;
  body: Buffer;
  text(): string;
  json<T = any>(): T;
}

export interface RequestOptions {
  headers?: Record<string, string>;
  body?: Buffer | string;
}

/** One request with the global fetch; the whole response body is read. `path` is relative to `base`. */
export async function request(base: string, method: string, path: string, opts: RequestOptions = {}): Promise<Resp> {
  const res = await fetch(new URL(path, base), {
    method,
    headers: opts.headers,
    body: opts.body === undefined ? undefined : typeof opts.body === 'string' ? opts.body : new Uint8Array(opts.body),
    redirect: 'manual',
  });
  const body = Buffer.from(await res.arrayBuffer());
  return {
    status: res.status,
    headers: res.headers,
    body,
    text: () => body.toString('utf8'),
    json: () => JSON.parse(body.toString('utf8')),
  };
}

export interface RawResponse {
  status: number;
  /** Lower-cased header names; repeated headers joined with ", ". */
  headers: Record<string, string>;
  body: Buffer;
  json<T = any>(): T;
}

export interface RawResult {
  /** The parsed response, when a complete one arrived. */
  response?: RawResponse;
  /** The server closed (or reset) the connection. */
  closed: boolean;
  /** Nothing conclusive happened within `timeoutMs`. */
  timedOut: boolean;
  /** Bytes received, as they came. */
  raw: Buffer;
}

export interface RawRequestOptions {
  method: string;
  /** Sent exactly as given (no normalisation of `..`, `//` or escapes). */
  path: string;
  headers?: Record<string, string>;
  /** The body; a list is written piece by piece (one transfer chunk each when `chunked`). */
  body?: Buffer | string | Array<Buffer | string>;
  /** Send the body with `Transfer-Encoding: chunked` (pieces of `body` become chunks). */
  chunked?: boolean;
  /**
   * What to do after the request is written:
   *  - `wait` (default): wait for the response;
   *  - `half-close`: send FIN (end our side) and wait for the response or the close;
   *  - `destroy`: wait `destroyAfterMs`, then reset the connection (a client that went away).
   */
  after?: 'wait' | 'half-close' | 'destroy';
  destroyAfterMs?: number;
  timeoutMs?: number;
}

function tryParse(buf: Buffer, method: string, atClose = false): RawResponse | undefined {
  const headerEnd = buf.indexOf('\r\n\r\n');
  if (headerEnd < 0) return undefined;
  const lines = buf.subarray(0, headerEnd).toString('latin1').split('\r\n');
  const m = /^HTTP\/1\.[01] (\d{3})/.exec(lines[0] ?? '');
  if (!m) return undefined;
  const status = Number(m[1]);
  const headers: Record<string, string> = {};
  for (const line of lines.slice(1)) {
    const i = line.indexOf(':');
    if (i < 0) continue;
    const k = line.slice(0, i).trim().toLowerCase();
    const v = line.slice(i + 1).trim();
    headers[k] = headers[k] === undefined ? v : `${headers[k]}, ${v}`;
  }
  const rest = buf.subarray(headerEnd + 4);
  const make = (body: Buffer): RawResponse => ({ status, headers, body, json: () => JSON.parse(body.toString('utf8')) });
  if (method === 'HEAD' || status === 204 || status === 304 || (status >= 100 && status < 200)) return make(Buffer.alloc(0));
  if (headers['content-length'] !== undefined) {
    const len = Number(headers['content-length']);
    return rest.length >= len ? make(rest.subarray(0, len)) : undefined;
  }
  if (/chunked/i.test(headers['transfer-encoding'] ?? '')) {
    const parts: Buffer[] = [];
    let pos = 0;
    for (;;) {
      const eol = rest.indexOf('\r\n', pos);
      if (eol < 0) return undefined;
      const size = parseInt(rest.subarray(pos, eol).toString('latin1'), 16);
      if (Number.isNaN(size)) return undefined;
      if (size === 0) return make(Buffer.concat(parts));
      if (rest.length < eol + 2 + size + 2) return undefined;
      parts.push(rest.subarray(eol + 2, eol + 2 + size));
      pos = eol + 2 + size + 2;
    }
  }
  // No length: the body is delimited by the close.
  return atClose ? make(rest) : undefined;
}

/**
 * Sends one HTTP/1.1 request byte for byte over a fresh TCP connection and parses the reply. Headers are
 * sent as given (no Content-Length is added unless `body` is given, not chunked, and none was set).
 */
export function rawRequest(hostPort: string, opts: RawRequestOptions): Promise<RawResult> {
  const [host, port] = [hostPort.slice(0, hostPort.lastIndexOf(':')), Number(hostPort.slice(hostPort.lastIndexOf(':') + 1))];
  const pieces = opts.body === undefined ? [] : (Array.isArray(opts.body) ? opts.body : [opts.body]).map((b) => (typeof b === 'string' ? Buffer.from(b) : b));
  const headers: Record<string, string> = { Host: hostPort, Connection: 'close', ...opts.headers };
  const has = (name: string): boolean => Object.keys(headers).some((k) => k.toLowerCase() === name);
  if (opts.chunked) {
    if (!has('transfer-encoding')) headers['Transfer-Encoding'] = 'chunked';
  } else if (opts.body !== undefined && !has('content-length')) {
    headers['Content-Length'] = String(pieces.reduce((n, p) => n + p.length, 0));
  }
  const head = `${opts.method} ${opts.path} HTTP/1.1\r\n${Object.entries(headers)
    .map(([k, v]) => `${k}: ${v}\r\n`)
    .join('')}\r\n`;
  const after = opts.after ?? 'wait';
  return new Promise((resolve) => {
    const socket = connect({ host, port });
    let received = Buffer.alloc(0);
    let settled = false;
    const finish = (closed: boolean, timedOut = false): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      const response = tryParse(received, opts.method, closed);
      socket.destroy();
      resolve({ response, closed, timedOut, raw: received });
    };
    const timer = setTimeout(() => finish(false, true), opts.timeoutMs ?? 10_000);
    socket.on('data', (d: Buffer) => {
      received = Buffer.concat([received, d]);
      if (tryParse(received, opts.method)) finish(false);
    });
    socket.on('error', () => finish(true));
    socket.on('close', () => finish(true));
    socket.on('connect', () => {
      socket.write(head);
      for (const p of pieces) {
        if (opts.chunked) {
          if (p.length > 0) socket.write(`${p.length.toString(16)}\r\n`), socket.write(p), socket.write('\r\n');
        } else socket.write(p);
      }
      if (opts.chunked && after === 'wait') socket.write('0\r\n\r\n');
      if (after === 'half-close') socket.end();
      else if (after === 'destroy') setTimeout(() => finish(true), opts.destroyAfterMs ?? 100);
    });
  });
}

// ---------------------------------------------------------------------------------------------
// Push helpers

/** Monolithic upload: `POST /v2/<repo>/blobs/uploads/?digest=<d>` with the body. Returns the digest. */
export async function pushBlob(base: string, repo: string, data: Buffer): Promise<string> {
  const digest = sha256(data);
  const res = await request(base, 'POST', `/v2/${repo}/blobs/uploads/?digest=${digest}`, {
    headers: { 'Content-Type': 'application/octet-stream' },
    body: data,
  });
  if (res.status !== 201) throw new Error(`pushBlob ${repo} ${digest}: ${res.status} ${res.text()}`);
  return digest;
}

/** Starts an upload session; returns its Location (a path) as the registry gave it. */
export async function startUpload(base: string, repo: string): Promise<string> {
  const res = await request(base, 'POST', `/v2/${repo}/blobs/uploads/`);
  const location = res.headers.get('location');
  if (res.status !== 202 || !location) throw new Error(`startUpload ${repo}: ${res.status} ${res.text()}`);
  return location;
}

/** Adds `digest=` to an upload Location (which may already have a query). */
export function withDigest(location: string, digest: string): string {
  return `${location}${location.includes('?') ? '&' : '?'}digest=${encodeURIComponent(digest)}`;
}

/**
 * Chunked upload: POST, then one PATCH per `chunkSize` bytes with `Content-Range`, following each
 * Location, then `PUT ?digest=`. Returns the digest.
 */
export async function pushBlobChunked(base: string, repo: string, data: Buffer, chunkSize = 64 * 1024): Promise<string> {
  const digest = sha256(data);
  let location = await startUpload(base, repo);
  for (let start = 0; start < data.length; start += chunkSize) {
    const chunk = data.subarray(start, Math.min(data.length, start + chunkSize));
    const res = await request(base, 'PATCH', location, {
      headers: { 'Content-Type': 'application/octet-stream', 'Content-Range': `${start}-${start + chunk.length - 1}` },
      body: chunk,
    });
    if (res.status !== 202) throw new Error(`pushBlobChunked ${repo} PATCH ${start}: ${res.status} ${res.text()}`);
    location = res.headers.get('location') ?? location;
  }
  const res = await request(base, 'PUT', withDigest(location, digest));
  if (res.status !== 201) throw new Error(`pushBlobChunked ${repo} PUT: ${res.status} ${res.text()}`);
  return digest;
}

/** `PUT /v2/<repo>/manifests/<reference>`; returns the response (201 expected, not checked). */
export async function putManifest(base: string, repo: string, reference: string, body: Buffer | string, mediaType: string): Promise<Resp> {
  return request(base, 'PUT', `/v2/${repo}/manifests/${reference}`, { headers: { 'Content-Type': mediaType }, body });
}

export interface PushedImage {
  /** Digest, size and media type of the manifest. */
  digest: string;
  size: number;
  mediaType: string;
  /** The exact manifest bytes. */
  bytes: Buffer;
  config: Descriptor;
  layers: Descriptor[];
  /** A descriptor of the manifest itself, for indexes and subjects. */
  descriptor: Descriptor;
}

export interface MakeImageOptions {
  /** How many random layers (default 2). */
  layers?: number;
  /** Bytes per layer (default 1 KiB). */
  layerSize?: number;
  /** Push the manifest under this tag; by digest when absent. */
  tag?: string;
  format?: 'oci' | 'docker';
  /** OCI only. */
  artifactType?: string;
  /** OCI only: the manifest this one refers to. */
  subject?: Descriptor;
  annotations?: Record<string, string>;
  /** Config media type (default: the format's image config). */
  configMediaType?: string;
}

/** Builds a manifest over random blobs (pushed monolithically) without pushing the manifest. */
export async function buildImage(base: string, repo: string, opts: MakeImageOptions = {}): Promise<PushedImage> {
  const format = opts.format ?? 'oci';
  const layerMT = format === 'oci' ? MediaTypes.OciLayerGzip : MediaTypes.DockerLayerGzip;
  const layers: Descriptor[] = [];
  for (let i = 0; i < (opts.layers ?? 2); i++) {
    const data = randomBlob(opts.layerSize ?? 1024);
    await pushBlob(base, repo, data);
    layers.push(descriptorOf(data, layerMT));
  }
  const configData = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [] }, nonce: randomBlob(8).toString('hex') }));
  await pushBlob(base, repo, configData);
  const config = descriptorOf(configData, opts.configMediaType ?? (format === 'oci' ? MediaTypes.OciConfig : MediaTypes.DockerConfig));
  const mediaType = format === 'oci' ? MediaTypes.OciManifest : MediaTypes.DockerManifest;
  const doc: Record<string, unknown> = { schemaVersion: 2, mediaType };
  if (opts.artifactType) doc.artifactType = opts.artifactType;
  doc.config = config;
  doc.layers = layers;
  if (opts.subject) doc.subject = opts.subject;
  if (opts.annotations) doc.annotations = opts.annotations;
  const bytes = Buffer.from(JSON.stringify(doc));
  const digest = sha256(bytes);
  return { digest, size: bytes.length, mediaType, bytes, config, layers, descriptor: { mediaType, digest, size: bytes.length } };
}

/** Pushes random layers, a config and a manifest (by `tag`, else by digest). */
export async function makeImage(base: string, repo: string, opts: MakeImageOptions = {}): Promise<PushedImage> {
  const img = await buildImage(base, repo, opts);
  const res = await putManifest(base, repo, opts.tag ?? img.digest, img.bytes, img.mediaType);
  if (res.status !== 201) throw new Error(`makeImage ${repo}: ${res.status} ${res.text()}`);
  return img;
}

/** Pushes an index (OCI or Docker list) over already pushed manifests. */
export async function makeIndex(
  base: string,
  repo: string,
  children: Descriptor[],
  opts: { tag?: string; format?: 'oci' | 'docker'; annotations?: Record<string, string> } = {},
): Promise<{ digest: string; size: number; mediaType: string; bytes: Buffer }> {
  const mediaType = (opts.format ?? 'oci') === 'oci' ? MediaTypes.OciIndex : MediaTypes.DockerManifestList;
  const doc: Record<string, unknown> = {
    schemaVersion: 2,
    mediaType,
    manifests: children.map((c, i) => ({ ...c, platform: { architecture: i % 2 ? 'arm64' : 'amd64', os: 'linux' } })),
  };
  if (opts.annotations) doc.annotations = opts.annotations;
  const bytes = Buffer.from(JSON.stringify(doc));
  const digest = sha256(bytes);
  const res = await putManifest(base, repo, opts.tag ?? digest, bytes, mediaType);
  if (res.status !== 201) throw new Error(`makeIndex ${repo}: ${res.status} ${res.text()}`);
  return { digest, size: bytes.length, mediaType, bytes };
}
