/**
 * Planning a `docker save` archive (or skopeo's `docker-archive`): manifest.json lists each image's config file
 * and layer files. Each image gets the Docker manifest those make; configs (and layers small enough to have
 * been held) are written to the target here, since the tar pass could not tell them from other files.
 */
import { Digest, MediaType, parseReference, type Descriptor, type Reference } from '../../oci/index.ts';
import { BundleRefusedError } from '../errors.ts';
import { DOCKER_MANIFEST_FILE, blobDigestOfPath, checkEntryPath } from '../format.ts';
import { putHeldBlob, type StreamedFile } from './contents.ts';
import { completePlans, digestReference, newPlan, type ImagePlan, type PlanContext } from './plan.ts';

export async function planDockerArchive(ctx: PlanContext): Promise<ImagePlan[]> {
  const { contents } = ctx;
  let entries: Array<{ Config?: unknown; RepoTags?: unknown; Layers?: unknown }>;
  try {
    entries = JSON.parse(contents.held.get(DOCKER_MANIFEST_FILE)!.toString('utf8')) as typeof entries;
    if (!Array.isArray(entries)) throw new Error('not a list');
  } catch (err) {
    throw new BundleRefusedError('format', `${DOCKER_MANIFEST_FILE} is not a docker save manifest: ${(err as Error).message}`);
  }
  const plans: ImagePlan[] = [];
  for (const [i, e] of entries.entries()) {
    const who = `${DOCKER_MANIFEST_FILE} entry ${i + 1}`;
    if (typeof e.Config !== 'string' || !Array.isArray(e.Layers) || e.Layers.some((l) => typeof l !== 'string')) {
      throw new BundleRefusedError('format', `${who} needs Config and Layers`);
    }
    const configPath = archivePath(ctx, checkEntryPath(e.Config), who);
    const configBytes = contents.held.get(configPath);
    if (!configBytes) throw new BundleRefusedError('incomplete', `${who} names config ${configPath}, which is not in the archive`);
    const configDigest = Digest.of(configBytes).toString();
    const stem = /(?:^|\/)(?:sha256\/)?([a-f0-9]{64})(?:\.json)?$/.exec(configPath)?.[1];
    if (stem && stem !== Digest.parse(configDigest).hex) {
      throw new BundleRefusedError('corrupt', `config ${configPath} hashes to ${configDigest}, not to the digest its name says: the archive is damaged`);
    }
    let diffIds: string[] = [];
    try {
      const cfg = JSON.parse(configBytes.toString('utf8')) as { rootfs?: { diff_ids?: string[] } };
      diffIds = cfg.rootfs?.diff_ids ?? [];
    } catch {
      throw new BundleRefusedError('format', `config ${configPath} is not JSON`);
    }
    const layers: Descriptor[] = [];
    for (const [j, raw] of (e.Layers as string[]).entries()) {
      const path = archivePath(ctx, checkEntryPath(raw), who);
      const layer = await archiveLayer(ctx, path, who);
      const compressed = layer.magic[0] === 0x1f && layer.magic[1] === 0x8b;
      const zstd = layer.magic.readUInt32LE(0) === 0xfd2fb528;
      if (!compressed && !zstd && diffIds[j] !== undefined && diffIds[j] !== layer.digest) {
        throw new BundleRefusedError('corrupt', `layer ${path} hashes to ${layer.digest}, but the image config says ${diffIds[j]}: the archive is damaged`, { path });
      }
      layers.push({
        mediaType: zstd ? 'application/vnd.oci.image.layer.v1.tar+zstd' : compressed ? 'application/vnd.docker.image.rootfs.diff.tar.gzip' : 'application/vnd.docker.image.rootfs.diff.tar',
        digest: layer.digest,
        size: layer.size,
      });
    }
    await putHeldBlob(ctx, configDigest, configBytes, contents.blobs.has(configDigest));
    const manifest = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: MediaType.DockerManifest,
        config: { mediaType: MediaType.DockerConfig, size: configBytes.length, digest: configDigest },
        layers,
      }),
    );
    const digest = Digest.of(manifest).toString();
    const tags = Array.isArray(e.RepoTags) ? (e.RepoTags as unknown[]).filter((t): t is string => typeof t === 'string') : [];
    const refs: Reference[] = tags.map((t) => {
      try {
        return parseReference(t);
      } catch (err) {
        throw new BundleRefusedError('format', `${who} has an image name ${JSON.stringify(t)} that is not a valid reference: ${(err as Error).message}`);
      }
    });
    if (refs.length === 0) refs.push(digestReference(ctx, digest, `${who} has no RepoTags`));
    for (const ref of refs) {
      const plan = newPlan(ref, digest, MediaType.DockerManifest, manifest);
      plan.blobs.add(configDigest);
      for (const l of layers) plan.blobs.add(l.digest);
      plans.push(plan);
    }
  }
  return completePlans(ctx, plans, DOCKER_MANIFEST_FILE);
}

/** A path manifest.json names, refused when it is a link. */
function archivePath(ctx: PlanContext, path: string, who: string): string {
  const target = ctx.contents.links.get(path);
  if (target !== undefined) throw new BundleRefusedError('unsafe', `${who} names ${path}, which is a link (-> ${target}); Shoal does not follow links in bundles`, { path });
  return path;
}

/** A layer file of a docker archive, written to the target if it was small enough to be held. */
async function archiveLayer(ctx: PlanContext, path: string, who: string): Promise<StreamedFile> {
  const { contents } = ctx;
  const streamed = contents.streamed.get(path);
  if (streamed) return streamed;
  const blobDigest = blobDigestOfPath(path);
  if (blobDigest && contents.blobs.has(blobDigest)) {
    return { digest: blobDigest, size: contents.blobs.get(blobDigest)!.size, magic: Buffer.alloc(4) };
  }
  const held = contents.held.get(path);
  if (!held) throw new BundleRefusedError('incomplete', `${who} names layer ${path}, which is not in the archive`, { path });
  const digest = Digest.of(held).toString();
  await putHeldBlob(ctx, digest, held, false);
  const file: StreamedFile = { digest, size: held.length, magic: Buffer.concat([held.subarray(0, 4), Buffer.alloc(4)]).subarray(0, 4) };
  contents.streamed.set(path, file);
  return file;
}
