/**
 * A seed registry in a node:http server, for pull-through tests that need a seed which misbehaves on purpose
 * (corrupts, hangs, fails), counts what it is asked for, serves slowly, or speaks the bearer-token flow.
 * It speaks just enough of the distribution API: `GET /v2/`, `HEAD/GET /v2/<repo>/manifests/<tag|digest>`,
 * `HEAD/GET /v2/<repo>/blobs/<digest>` (whole bodies only). Hooks can take over any request.
 *
 * Nothing here imports src/: it is the wire protocol only.
 */
import { createHash, randomBytes, randomUUID } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { setTimeout as sleep } from 'node:timers/promises';
import { startTestServer, type TestServer } from './seed-servers.ts';

const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';
const OCI_CONFIG = 'application/vnd.oci.image.config.v1+json';
const OCI_LAYER = 'application/vnd.oci.image.layer.v1.tar+gzip';

export function sha256(data: Buffer | string): string {
  return `sha256:${createHash('sha256').update(data).digest('hex')}`;
}

export interface MemoryBlob {
  digest: string;
  bytes: Buffer;
}

/** An OCI image manifest with a config and random layers, all in memory. */
export interface MemoryImage {
  manifest: Buffer;
  manifestDigest: string;
  mediaType: string;
  config: MemoryBlob;
  layers: MemoryBlob[];
  /** Config and layers by digest. */
  blobs: Map<string, Buffer>;
}

export function memoryImage(layerSizes: number[]): MemoryImage {
  const layers = layerSizes.map((size) => {
    const bytes = randomBytes(size);
    return { digest: sha256(bytes), bytes };
  });
  const configBytes = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: layers.map((l) => l.digest) }, config: {} }));
  const config = { digest: sha256(configBytes), bytes: configBytes };
  const manifest = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: OCI_MANIFEST,
      config: { mediaType: OCI_CONFIG, digest: config.digest, size: configBytes.length },
      layers: layers.map((l) => ({ mediaType: OCI_LAYER, digest: l.digest, size: l.bytes.length })),
    }),
  );
  const blobs = new Map<string, Buffer>([[config.digest, configBytes], ...layers.map((l): [string, Buffer] => [l.digest, l.bytes])]);
  return { manifest, manifestDigest: sha256(manifest), mediaType: OCI_MANIFEST, config, layers, blobs };
}

export interface RequestInfo {
  req: IncomingMessage;
  res: ServerResponse;
  repository: string;
  kind: 'manifests' | 'blobs';
  reference: string;
}

export interface MemoryRegistryOptions {
  repository: string;
  tag: string;
  image: MemoryImage;
  /**
   * Sees every manifest and blob request first (after auth); returns true when it answered the request
   * itself (or means never to answer it).
   */
  intercept?: (info: RequestInfo) => boolean | Promise<boolean>;
  /** Blob bodies go out in pieces of `chunkBytes` with `delayMs` between them (a slow seed). */
  throttle?: { chunkBytes: number; delayMs: number };
  /** Authentication: returns false when it answered the request (a 401). */
  authorize?: (req: IncomingMessage, res: ServerResponse, repository: string | undefined) => boolean;
}

export interface MemoryRegistry extends TestServer {
  /** How many GETs of this blob the registry has seen (including ones a hook answered). */
  blobGets(digest: string): number;
}

function notFound(res: ServerResponse, code: string, message: string): void {
  res.writeHead(404, { 'content-type': 'application/json' });
  res.end(JSON.stringify({ errors: [{ code, message }] }));
}

async function writeThrottled(res: ServerResponse, bytes: Buffer, throttle: { chunkBytes: number; delayMs: number }): Promise<void> {
  for (let pos = 0; pos < bytes.length && !res.destroyed; pos += throttle.chunkBytes) {
    if (!res.write(bytes.subarray(pos, pos + throttle.chunkBytes))) {
      await new Promise<void>((resolve) => {
        const done = (): void => {
          res.off('drain', done);
          res.off('close', done);
          resolve();
        };
        res.on('drain', done);
        res.on('close', done);
      });
    }
    await sleep(throttle.delayMs);
  }
  res.end();
}

export async function startMemoryRegistry(opts: MemoryRegistryOptions): Promise<MemoryRegistry> {
  const gets = new Map<string, number>();
  const server = await startTestServer(async (req, res) => {
    const path = new URL(req.url!, 'http://seed').pathname;
    if (path === '/v2/' || path === '/v2') {
      if (opts.authorize && !opts.authorize(req, res, undefined)) return;
      res.writeHead(200, { 'content-type': 'application/json', 'docker-distribution-api-version': 'registry/2.0' });
      return void res.end('{}');
    }
    const match = /^\/v2\/(.+)\/(manifests|blobs)\/([^/]+)$/.exec(path);
    if (!match) return notFound(res, 'NAME_UNKNOWN', 'no such route');
    const [, repository, kind, reference] = match as unknown as [string, string, 'manifests' | 'blobs', string];
    if (opts.authorize && !opts.authorize(req, res, repository)) return;
    if (kind === 'blobs' && req.method === 'GET') gets.set(reference, (gets.get(reference) ?? 0) + 1);
    if (opts.intercept && (await opts.intercept({ req, res, repository, kind, reference }))) return;
    if (repository !== opts.repository) return notFound(res, 'NAME_UNKNOWN', `repository ${repository} not known`);
    const { image } = opts;
    if (kind === 'manifests') {
      if (reference !== opts.tag && reference !== image.manifestDigest) return notFound(res, 'MANIFEST_UNKNOWN', `manifest ${reference} unknown`);
      res.writeHead(200, { 'content-type': image.mediaType, 'content-length': image.manifest.length, 'docker-content-digest': image.manifestDigest });
      return void res.end(req.method === 'HEAD' ? undefined : image.manifest);
    }
    const bytes = image.blobs.get(reference);
    if (!bytes) return notFound(res, 'BLOB_UNKNOWN', `blob ${reference} unknown`);
    res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': bytes.length, 'docker-content-digest': reference });
    if (req.method === 'HEAD') return void res.end();
    if (opts.throttle) return writeThrottled(res, bytes, opts.throttle);
    res.end(bytes);
  });
  return { ...server, blobGets: (digest) => gets.get(digest) ?? 0 };
}

/** A token service as Docker Hub runs one: basic credentials in, a bearer token for the asked scope out. */
export interface TokenService extends TestServer {
  realm: string;
  service: string;
  /** Every token request: the scope and whether the credentials were right. */
  tokenRequests: Array<{ scope: string | null; accepted: boolean }>;
  /** An `authorize` for startMemoryRegistry that asks for bearer tokens of this service. */
  authorize: (req: IncomingMessage, res: ServerResponse, repository: string | undefined) => boolean;
}

export async function startTokenService(credentials: { username: string; password: string }, service = 'shoal-test-registry'): Promise<TokenService> {
  /** token -> the scopes it grants */
  const issued = new Map<string, Set<string>>();
  const tokenRequests: TokenService['tokenRequests'] = [];
  const good = `Basic ${Buffer.from(`${credentials.username}:${credentials.password}`).toString('base64')}`;
  const server = await startTestServer((req, res) => {
    const url = new URL(req.url!, 'http://token');
    if (url.pathname !== '/token') return void res.writeHead(404).end();
    const accepted = req.headers.authorization === good;
    tokenRequests.push({ scope: url.searchParams.get('scope'), accepted });
    if (!accepted) {
      res.writeHead(401, { 'content-type': 'application/json' });
      return void res.end(JSON.stringify({ errors: [{ code: 'UNAUTHORIZED', message: 'incorrect username or password' }] }));
    }
    const scope = url.searchParams.get('scope');
    const token = randomUUID();
    issued.set(token, new Set(scope && url.searchParams.get('service') === service ? [scope] : []));
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ token, expires_in: 300 }));
  });
  const realm = `${server.url}/token`;
  const authorize = (req: IncomingMessage, res: ServerResponse, repository: string | undefined): boolean => {
    const auth = req.headers.authorization ?? '';
    const token = auth.startsWith('Bearer ') ? auth.slice(7) : undefined;
    const need = repository ? `repository:${repository}:pull` : undefined;
    if (token && issued.has(token) && (!need || issued.get(token)!.has(need))) return true;
    res.writeHead(401, {
      'content-type': 'application/json',
      'www-authenticate': `Bearer realm="${realm}",service="${service}"${need ? `,scope="${need}"` : ''}`,
    });
    res.end(JSON.stringify({ errors: [{ code: 'UNAUTHORIZED', message: 'authentication required' }] }));
    return false;
  };
  return { ...server, realm, service, tokenRequests, authorize };
}
