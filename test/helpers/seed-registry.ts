/**
 * A real seed for tests: the CNCF distribution registry (`/usr/bin/docker-registry`, Debian's
 * docker-registry package) on 127.0.0.1 with a temp storage dir, and a small pusher that fills it through
 * the OCI distribution API.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';

export const DOCKER_REGISTRY_BIN = process.env.SHOAL_DOCKER_REGISTRY ?? '/usr/bin/docker-registry';

export interface DockerRegistry {
  /** e.g. http://127.0.0.1:41234 */
  url: string;
  hostPort: string;
  /** Output of the registry process so far (for failure messages). */
  logs(): string;
  stop(): Promise<void>;
}

export interface HtpasswdUser {
  username: string;
  /** A bcrypt hash, as in an htpasswd file ($2y$/$2b$). */
  bcryptHash: string;
}

/** docker-registry's config (as lines): filesystem storage under `dataDir`, deletes on, quiet logs, `addr`. */
export function dockerRegistryConfig(dataDir: string, addr: string, opts: { blobDescriptorCache?: boolean } = {}): string[] {
  return [
    'version: 0.1',
    'log:',
    '  level: error',
    '  accesslog:',
    '    disabled: true',
    'storage:',
    // As distribution ships its config (Debian's too): descriptors kept in memory. Benchmarks compare against that.
    ...(opts.blobDescriptorCache ? ['  cache:', '    blobdescriptor: inmemory'] : []),
    '  filesystem:',
    `    rootdirectory: ${JSON.stringify(dataDir)}`,
    '  delete:',
    '    enabled: true',
    'http:',
    `  addr: ${addr}`,
  ];
}

/** A port that was free a moment ago on 127.0.0.1. */
export async function freePort(): Promise<number> {
  const server = createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const address = server.address();
  const port = typeof address === 'object' && address ? address.port : 0;
  server.close();
  await once(server, 'close');
  return port;
}

async function stopProcess(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = once(child, 'exit');
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), 3000);
  await exited;
  clearTimeout(timer);
}

/**
 * Starts docker-registry with filesystem storage in a temp dir, deletes enabled, and htpasswd auth when
 * `users` are given. Resolves once `GET /v2/` answers.
 */
export async function startDockerRegistry(opts: { users?: HtpasswdUser[]; signal?: AbortSignal; blobDescriptorCache?: boolean } = {}): Promise<DockerRegistry> {
  const dir = await mkdtemp(join(tmpdir(), 'shoal-seed-'));
  let lastError: unknown;
  try {
    for (let tries = 0; tries < 3; tries++) {
      const port = await freePort();
      const hostPort = `127.0.0.1:${port}`;
      const lines = dockerRegistryConfig(join(dir, 'data'), hostPort, { blobDescriptorCache: opts.blobDescriptorCache });
      if (opts.users?.length) {
        const htpasswdPath = join(dir, 'htpasswd');
        await writeFile(htpasswdPath, opts.users.map((u) => `${u.username}:${u.bcryptHash}`).join('\n') + '\n');
        lines.push('auth:', '  htpasswd:', '    realm: shoal-test', `    path: ${JSON.stringify(htpasswdPath)}`);
      }
      const configPath = join(dir, 'config.yml');
      await writeFile(configPath, lines.join('\n') + '\n');
      const child = spawn(DOCKER_REGISTRY_BIN, ['serve', configPath], { stdio: ['ignore', 'pipe', 'pipe'] });
      let output = '';
      child.stdout!.on('data', (d: Buffer) => (output += d.toString()));
      child.stderr!.on('data', (d: Buffer) => (output += d.toString()));
      const url = `http://${hostPort}`;
      const registry: DockerRegistry = {
        url,
        hostPort,
        logs: () => output,
        async stop() {
          await stopProcess(child);
          await rm(dir, { recursive: true, force: true });
        },
      };
      try {
        await waitForV2(url, child, () => output, opts.signal);
        return registry;
      } catch (err) {
        lastError = err;
        await stopProcess(child);
      }
    }
    throw lastError;
  } catch (err) {
    await rm(dir, { recursive: true, force: true });
    throw err;
  }
}

async function waitForV2(url: string, child: ChildProcess, logs: () => string, signal?: AbortSignal): Promise<void> {
  const deadline = Date.now() + 15_000;
  while (Date.now() < deadline) {
    signal?.throwIfAborted();
    if (child.exitCode !== null) throw new Error(`docker-registry exited with ${child.exitCode}: ${logs()}`);
    try {
      const res = await fetch(`${url}/v2/`, { signal: AbortSignal.timeout(1000) });
      await res.arrayBuffer();
      if (res.status === 200 || res.status === 401) return;
    } catch {
      // not listening yet
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`docker-registry at ${url} did not answer /v2/ within 15 s: ${logs()}`);
}

export function sha256(data: Uint8Array): string {
  return `sha256:${createHash('sha256').update(data).digest('hex')}`;
}

export interface PushedBlob {
  digest: string;
  bytes: Buffer;
  mediaType: string;
}

export interface PushedImage {
  repository: string;
  tag: string;
  manifestDigest: string;
  manifestBytes: Buffer;
  manifestMediaType: string;
  config: PushedBlob;
  layers: PushedBlob[];
}

export interface PushAuth {
  username: string;
  password: string;
}

function authHeaders(auth?: PushAuth): Record<string, string> {
  return auth ? { authorization: `Basic ${Buffer.from(`${auth.username}:${auth.password}`).toString('base64')}` } : {};
}

/** Monolithic blob upload: POST a session, PUT the bytes with ?digest=. */
export async function pushBlob(baseUrl: string, repository: string, bytes: Buffer, auth?: PushAuth): Promise<string> {
  const digest = sha256(bytes);
  const start = await fetch(`${baseUrl}/v2/${repository}/blobs/uploads/`, { method: 'POST', headers: authHeaders(auth) });
  await start.arrayBuffer();
  if (start.status !== 202) throw new Error(`starting an upload to ${repository}: HTTP ${start.status}`);
  const location = start.headers.get('location');
  if (!location) throw new Error('upload session without Location');
  const target = new URL(location, baseUrl);
  target.searchParams.set('digest', digest);
  const put = await fetch(target, {
    method: 'PUT',
    headers: { ...authHeaders(auth), 'content-type': 'application/octet-stream' },
    body: bytes,
  });
  const text = await put.text();
  if (put.status !== 201) throw new Error(`finishing the upload of ${digest}: HTTP ${put.status} ${text}`);
  return digest;
}

export async function pushManifest(baseUrl: string, repository: string, reference: string, bytes: Buffer, mediaType: string, auth?: PushAuth): Promise<string> {
  const res = await fetch(`${baseUrl}/v2/${repository}/manifests/${reference}`, {
    method: 'PUT',
    headers: { ...authHeaders(auth), 'content-type': mediaType },
    body: bytes,
  });
  const text = await res.text();
  if (res.status !== 201) throw new Error(`pushing manifest ${repository}:${reference}: HTTP ${res.status} ${text}`);
  return sha256(bytes);
}

/**
 * Pushes a small OCI image: a config and `layerSizes.length` layers of random bytes, tagged `tag`.
 * Returns every byte pushed and its digest.
 */
export async function pushRandomImage(
  baseUrl: string,
  repository: string,
  tag: string,
  opts: { layerSizes?: number[]; auth?: PushAuth } = {},
): Promise<PushedImage> {
  const layerSizes = opts.layerSizes ?? [200_000, 1_500_000];
  const layers: PushedBlob[] = [];
  for (const size of layerSizes) {
    const bytes = randomBytes(size);
    layers.push({ digest: await pushBlob(baseUrl, repository, bytes, opts.auth), bytes, mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip' });
  }
  const configBytes = Buffer.from(
    JSON.stringify({
      architecture: 'amd64',
      os: 'linux',
      rootfs: { type: 'layers', diff_ids: layers.map((l) => l.digest) },
      config: {},
    }),
  );
  const config: PushedBlob = {
    digest: await pushBlob(baseUrl, repository, configBytes, opts.auth),
    bytes: configBytes,
    mediaType: 'application/vnd.oci.image.config.v1+json',
  };
  const manifestMediaType = 'application/vnd.oci.image.manifest.v1+json';
  const manifestBytes = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: manifestMediaType,
      config: { mediaType: config.mediaType, digest: config.digest, size: config.bytes.length },
      layers: layers.map((l) => ({ mediaType: l.mediaType, digest: l.digest, size: l.bytes.length })),
    }),
  );
  const manifestDigest = await pushManifest(baseUrl, repository, tag, manifestBytes, manifestMediaType, opts.auth);
  return { repository, tag, manifestDigest, manifestBytes, manifestMediaType, config, layers };
}

/**
 * Pushes an image with one real gzip layer of about `size` bytes (random data compresses to nothing less), so
 * that skopeo copies it as is (a layer labelled gzip that is not gzip gets recompressed under another digest).
 */
export async function pushGzipImage(baseUrl: string, repository: string, tag: string, size: number): Promise<PushedImage> {
  const raw = randomBytes(size);
  const bytes = gzipSync(raw, { level: 1 });
  const mediaType = 'application/vnd.oci.image.layer.v1.tar+gzip';
  const layer = { digest: await pushBlob(baseUrl, repository, bytes), bytes, mediaType };
  const configBytes = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [sha256(raw)] }, config: {} }));
  const config = { digest: await pushBlob(baseUrl, repository, configBytes), bytes: configBytes, mediaType: 'application/vnd.oci.image.config.v1+json' };
  const manifestMediaType = 'application/vnd.oci.image.manifest.v1+json';
  const manifestBytes = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: manifestMediaType,
      config: { mediaType: config.mediaType, digest: config.digest, size: configBytes.length },
      layers: [{ mediaType, digest: layer.digest, size: bytes.length }],
    }),
  );
  const manifestDigest = await pushManifest(baseUrl, repository, tag, manifestBytes, manifestMediaType);
  return { repository, tag, manifestDigest, manifestBytes, manifestMediaType, config, layers: [layer] };
}
