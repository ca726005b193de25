import type { Context } from 'koa';
import { Digest, UnsupportedError, validateRepositoryName } from '../oci/index.ts';
import type { RegistryDeps, RegistryState } from './context.ts';
import { emptyResponse } from './repositories.ts';

/**
 * Pins keep images on a node (imported bundles, images that must survive eviction). Not part of the OCI API:
 *   GET    /shoal/pins                      -> {"pins":[{repository, digest, reason, created}]}
 *   PUT    /shoal/pins/<name>@<digest>?reason=...  -> 201 (the manifest must be in the repository)
 *   DELETE /shoal/pins/<name>@<digest>      -> 202
 */
export async function handlePins(ctx: Context, deps: RegistryDeps, target: { name: string; digest: string } | undefined): Promise<void> {
  const { signal } = ctx.state as RegistryState;
  if (!target) {
    if (ctx.method !== 'GET') throw new UnsupportedError(`${ctx.method} is not supported on /shoal/pins; allowed: GET`);
    ctx.body = { pins: await deps.store.listPins({ signal }) };
    return;
  }
  const name = validateRepositoryName(target.name);
  const digest = Digest.parse(target.digest).toString();
  if (ctx.method === 'PUT') {
    const reason = typeof ctx.query.reason === 'string' && ctx.query.reason ? ctx.query.reason.slice(0, 200) : 'pinned through the API';
    await deps.store.pinManifest(name, digest, reason, { signal });
    emptyResponse(ctx, 201);
    return;
  }
  if (ctx.method === 'DELETE') {
    await deps.store.unpinManifest(name, digest, { signal });
    emptyResponse(ctx, 202);
    return;
  }
  throw new UnsupportedError(`${ctx.method} is not supported on pins; allowed: PUT, DELETE`);
}
