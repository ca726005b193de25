import type { Context } from 'koa';
import {
  Digest,
  InvalidError,
  NotFoundError,
  UnsupportedError,
  effectiveArtifactType,
  isIndexType,
  isManifestType,
  parseManifest,
  validateTag,
  type Descriptor,
  type ParsedManifest,
} from '../oci/index.ts';
import type { RegistryDeps, RegistryState, RouteParams } from './context.ts';
import { readSmallBody } from './http.ts';
import { emptyResponse, requireRepository } from './repositories.ts';
import { countBytes } from './streams.ts';
import { guardTagWrite } from './auth.ts';
import { gateManifest } from './policy.ts';
import { SMALL_CONTENT_MAX } from '../store/index.ts';

type ParsedReference = { kind: 'digest'; digest: string } | { kind: 'tag'; tag: string };

/** A manifest reference is a digest when it has a colon, else a tag; both are validated. */
export function parseManifestReference(reference: string): ParsedReference {
  if (reference.includes(':')) return { kind: 'digest', digest: Digest.parse(reference).toString() };
  return { kind: 'tag', tag: validateTag(reference) };
}

/**
 * The reference of a GET or HEAD: a reference that is not a valid tag (and has no colon, so it is no digest
 * either, e.g. `.INVALID_MANIFEST_NAME`) names no manifest: MANIFEST_UNKNOWN (404), as the OCI conformance
 * suite expects. A PUT of one stays 400 TAG_INVALID; a malformed digest stays 400 DIGEST_INVALID.
 */
function readableReference(p: RouteParams): ParsedReference {
  try {
    return parseManifestReference(p.reference!);
  } catch (err) {
    if (!(err instanceof InvalidError) || err.code !== 'TAG_INVALID') throw err;
    throw new NotFoundError('MANIFEST_UNKNOWN', `manifest ${p.reference!.slice(0, 200)} is not in repository ${p.name}: ${err.message}`, { name: p.name, reference: p.reference!.slice(0, 200) });
  }
}

/** GET and HEAD /v2/<name>/manifests/<reference>. */
export async function getManifest(ctx: Context, deps: RegistryDeps, p: RouteParams): Promise<void> {
  const { signal } = ctx.state as RegistryState;
  const ref = readableReference(p);
  const target = { repository: p.name, upstream: p.upstream, namespace: p.namespace };
  await deps.pull.requireRepository(target, { signal });
  const record = await deps.pull.manifest(target, ref, { signal });
  if (deps.policy) await gateManifest(ctx, deps, p, ref, record);
  const digest = record.digest;
  ctx.status = 200;
  ctx.type = record.mediaType;
  ctx.set('Docker-Content-Digest', digest);
  ctx.set('ETag', `"${digest}"`);
  if (ctx.method === 'HEAD') {
    ctx.set('Content-Length', String(record.size));
    return;
  }
  if (record.size <= SMALL_CONTENT_MAX) {
    // The usual manifest: whole, from memory once it has been read (no file opened per request).
    const bytes = await deps.store.readSmallContent(digest, { signal });
    deps.metrics.servedBytes.inc({ kind: 'manifest' }, bytes.length);
    ctx.body = bytes;
    return;
  }
  const stream = await deps.store.readContent(digest, undefined, { signal });
  ctx.length = record.size;
  ctx.body = countBytes(stream, (n) => deps.metrics.servedBytes.inc({ kind: 'manifest' }, n));
}

/** Every blob and child manifest a manifest names must be in the repository (a subject need not be). */
async function checkReferences(deps: RegistryDeps, name: string, m: ParsedManifest, signal: AbortSignal): Promise<void> {
  const missing: Descriptor[] = [];
  const check = async (d: Descriptor): Promise<void> => {
    // Foreign layers (with urls) live elsewhere by design.
    if (d.urls && d.urls.length > 0) return;
    if (isManifestType(d.mediaType) || isIndexType(d.mediaType)) {
      const rec = await deps.store.getManifest(name, d.digest, { signal });
      if (!rec) missing.push(d);
      else if (rec.size !== d.size) throw new InvalidError('MANIFEST_INVALID', `descriptor of ${d.digest} says ${d.size} bytes but the manifest has ${rec.size}`, { digest: d.digest });
      return;
    }
    const info = await deps.store.statBlob(name, d.digest, { signal });
    if (!info) missing.push(d);
    else if (info.size !== d.size) throw new InvalidError('MANIFEST_INVALID', `descriptor of ${d.digest} says ${d.size} bytes but the blob has ${info.size}`, { digest: d.digest });
  };
  for (const d of [...m.blobs, ...m.manifests]) await check(d);
  if (missing.length > 0) {
    throw new InvalidError(
      'MANIFEST_BLOB_UNKNOWN',
      `manifest references ${missing.length} blob(s) or manifest(s) that are not in repository ${name}; push them first: ${missing.map((d) => d.digest).join(', ')}`,
      { digests: missing.map((d) => d.digest) },
    );
  }
}

/** PUT /v2/<name>/manifests/<reference>. */
export async function putManifest(ctx: Context, deps: RegistryDeps, p: RouteParams): Promise<void> {
  const { signal } = ctx.state as RegistryState;
  const ref = parseManifestReference(p.reference!);
  const bytes = await readSmallBody(ctx.req, deps.maxManifestBytes);
  deps.metrics.receivedBytes.inc({ kind: 'manifest' }, bytes.length);
  const parsed = parseManifest(bytes, ctx.get('Content-Type') || undefined);
  if (ref.kind === 'digest' && Digest.parse(ref.digest).algorithm !== 'sha256') {
    throw new InvalidError('DIGEST_INVALID', `manifests are stored by sha256 on this node; push ${p.upstream} by tag or by its sha256 digest`, { digest: ref.digest });
  }
  const digest = Digest.of(bytes).toString();
  if (ref.kind === 'digest' && digest !== ref.digest) {
    throw new InvalidError('DIGEST_INVALID', `manifest body has digest ${digest}, not ${ref.digest} as the URL says`, { expected: ref.digest, actual: digest });
  }
  await checkReferences(deps, p.name, parsed, signal);
  const write = () => deps.store.putManifest(
    {
      repository: p.name,
      bytes,
      mediaType: parsed.mediaType,
      tag: ref.kind === 'tag' ? ref.tag : undefined,
      references: [...parsed.blobs, ...parsed.manifests].filter((d) => !(d.urls && d.urls.length > 0)).map((d) => d.digest),
      subject: parsed.subject?.digest,
      artifactType: effectiveArtifactType(parsed),
      annotations: parsed.annotations,
    },
    { signal },
  );
  // Under an immutable prefix, a tag that exists may only be written again with the same manifest.
  const record = ref.kind === 'tag' ? await guardTagWrite(deps, p.name, ref.tag, digest, write, signal) : await write();
  ctx.set('Location', `/v2/${p.name}/manifests/${record.digest}`);
  ctx.set('Docker-Content-Digest', record.digest);
  if (parsed.subject) ctx.set('OCI-Subject', parsed.subject.digest);
  emptyResponse(ctx, 201);
}

/** DELETE /v2/<name>/manifests/<reference>: by digest removes the manifest and its tags; by tag, the tag. */
export async function deleteManifest(ctx: Context, deps: RegistryDeps, p: RouteParams): Promise<void> {
  const { signal } = ctx.state as RegistryState;
  if (!deps.deleteEnabled) throw new UnsupportedError('deletion is disabled on this node (deleteEnabled: false)');
  const ref = parseManifestReference(p.reference!);
  await requireRepository(deps, p.name, signal);
  if (ref.kind === 'digest') await deps.store.deleteManifest(p.name, ref.digest, { signal });
  else await deps.store.deleteTag(p.name, ref.tag, { signal });
  emptyResponse(ctx, 202);
}
