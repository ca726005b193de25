/**
 * Helpers for tests of the store's lifecycle (quota, pins, GC, fsck, scrub) against real node processes: what is on
 * disk under a data dir, whole-image pulls checked byte for byte, pins through the HTTP API, the node's status.
 */
import { createHash } from 'node:crypto';
import { readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';

export const sha256 = (b: Uint8Array): string => `sha256:${createHash('sha256').update(b).digest('hex')}`;

/** `<data>/blobs/sha256/<2 hex>/<hex>` of a digest. */
export function blobFile(dataDir: string, digest: string): string {
  const hex = digest.slice(digest.indexOf(':') + 1);
  return join(dataDir, 'blobs', digest.slice(0, digest.indexOf(':')), hex.slice(0, 2), hex);
}

/** Whether the store has a file for `digest`. */
export async function hasBlobFile(dataDir: string, digest: string): Promise<boolean> {
  return stat(blobFile(dataDir, digest)).then(
    () => true,
    () => false,
  );
}

/** Bytes of every file under `<data>/blobs` (what the store holds on disk). */
export async function bytesOnDisk(dataDir: string): Promise<number> {
  let total = 0;
  const walk = async (dir: string): Promise<void> => {
    for (const e of await readdir(dir, { withFileTypes: true }).catch(() => [])) {
      const p = join(dir, e.name);
      if (e.isDirectory()) await walk(p);
      else if (e.isFile()) total += (await stat(p).catch(() => ({ size: 0 }))).size;
    }
  };
  await walk(join(dataDir, 'blobs'));
  return total;
}

const ACCEPT = [
  'application/vnd.oci.image.manifest.v1+json',
  'application/vnd.oci.image.index.v1+json',
  'application/vnd.docker.distribution.manifest.v2+json',
  'application/vnd.docker.distribution.manifest.list.v2+json',
].join(', ');

export interface PulledImage {
  manifestDigest: string;
  manifest: Buffer;
  /** config and layers by digest, every one checked against its digest. */
  blobs: Map<string, Buffer>;
}

async function get(url: string): Promise<{ status: number; body: Buffer; headers: Headers }> {
  const res = await fetch(url, { headers: { accept: ACCEPT }, signal: AbortSignal.timeout(60_000) });
  return { status: res.status, body: Buffer.from(await res.arrayBuffer()), headers: res.headers };
}

/** GET a manifest (by tag or digest) and every blob it names; throws unless each answers 200 with the right bytes. */
export async function pullImage(base: string, repository: string, reference: string): Promise<PulledImage> {
  const m = await get(`${base}/v2/${repository}/manifests/${reference}`);
  if (m.status !== 200) throw new Error(`GET ${repository}:${reference} manifest: HTTP ${m.status} ${m.body.toString().slice(0, 300)}`);
  const manifestDigest = sha256(m.body);
  if (reference.includes(':') && reference !== manifestDigest) throw new Error(`manifest ${reference} came back as ${manifestDigest}`);
  const doc = JSON.parse(m.body.toString()) as { config?: { digest: string }; layers?: Array<{ digest: string }> };
  const blobs = new Map<string, Buffer>();
  for (const d of [doc.config?.digest, ...(doc.layers ?? []).map((l) => l.digest)]) {
    if (!d) continue;
    const b = await get(`${base}/v2/${repository}/blobs/${d}`);
    if (b.status !== 200) throw new Error(`GET ${repository} blob ${d}: HTTP ${b.status} ${b.body.toString().slice(0, 300)}`);
    if (sha256(b.body) !== d) throw new Error(`GET ${repository} blob ${d}: the bytes hash to ${sha256(b.body)}`);
    blobs.set(d, b.body);
  }
  return { manifestDigest, manifest: m.body, blobs };
}

/** `PUT /shoal/pins/<repo>@<digest>`. */
export async function pin(base: string, repository: string, digest: string): Promise<void> {
  const res = await fetch(`${base}/shoal/pins/${repository}@${digest}?reason=test`, { method: 'PUT' });
  const text = await res.text();
  if (res.status !== 201) throw new Error(`pin ${repository}@${digest}: HTTP ${res.status} ${text}`);
}

export interface NodeStatus {
  store: { blobs: number; bytes: number };
  quota: { storedBytes: number; maxStore: number; pinnedBytes: number; pinsOverQuota: boolean; lastEviction?: { blobs: number; bytes: number } };
  pins: number;
  scrub: { enabled: boolean; passes: number; corruptFound: number };
  lastGc?: { tags: number; manifests: number; blobs: number; uploads: number; bytesFreed: number };
}

/** `GET /shoal/status`. */
export async function statusOf(base: string): Promise<NodeStatus> {
  const res = await fetch(`${base}/shoal/status`, { signal: AbortSignal.timeout(10_000) });
  const text = await res.text();
  if (res.status !== 200) throw new Error(`GET /shoal/status: HTTP ${res.status} ${text}`);
  return JSON.parse(text) as NodeStatus;
}
