import type { Context } from 'koa';
import { UnsupportedError } from '../oci/index.ts';
import type { RegistryDeps, RegistryState } from './context.ts';

/**
 * The node's own operations (not part of the OCI API):
 *   GET  /shoal/status               -> disk use against quota and free-space mark, pins, last GC and scrub, peers
 *   POST /shoal/gc[?dryRun=true]     -> the collection's report: counts, bytes freed, and each item with its reason
 *   GET  /shoal/content              -> every manifest held (repository, digest, media type), tagged or not, and
 *                                       every stored blob (digest, size): what `shoal inventory --node` lists
 */
export async function handleAdmin(ctx: Context, deps: RegistryDeps): Promise<void> {
  const { signal } = ctx.state as RegistryState;
  if (ctx.path === '/shoal/content') {
    if (ctx.method !== 'GET' && ctx.method !== 'HEAD') throw new UnsupportedError(`${ctx.method} is not supported on /shoal/content; allowed: GET`);
    const [manifests, blobs] = await Promise.all([deps.store.listManifests({ signal }), deps.store.listContent({ signal })]);
    ctx.body = {
      manifests: manifests.map((m) => ({ repository: m.repository, digest: m.digest, mediaType: m.mediaType })),
      blobs: blobs.map((b) => ({ digest: b.digest, size: b.size })),
    };
    return;
  }
  if (!deps.admin) throw new UnsupportedError('this node has no admin operations');
  if (ctx.path === '/shoal/status') {
    if (ctx.method !== 'GET' && ctx.method !== 'HEAD') throw new UnsupportedError(`${ctx.method} is not supported on /shoal/status; allowed: GET`);
    ctx.body = await deps.admin.status({ signal });
    return;
  }
  if (ctx.method !== 'POST') throw new UnsupportedError(`${ctx.method} is not supported on /shoal/gc; allowed: POST`);
  const raw = ctx.query.dryRun ?? ctx.query['dry-run'];
  if (raw !== undefined && raw !== 'true' && raw !== 'false' && raw !== '1' && raw !== '0' && raw !== '') {
    throw new UnsupportedError(`dryRun=${JSON.stringify(String(raw).slice(0, 20))} is not true or false`);
  }
  const dryRun = raw === 'true' || raw === '1' || raw === '';
  ctx.body = await deps.admin.runGc({ dryRun, signal });
}
