import type { Context } from 'koa';
import { Digest, InvalidError, MediaType } from '../oci/index.ts';
import type { RegistryDeps, RegistryState, RouteParams } from './context.ts';
import { requireRepository } from './repositories.ts';

/** `n` and `last` of a paginated list. */
function pagination(ctx: Context): { n?: number; last?: string } {
  const n = ctx.query.n;
  const last = ctx.query.last;
  const out: { n?: number; last?: string } = {};
  if (n !== undefined) {
    if (typeof n !== 'string' || !/^\d{1,9}$/.test(n)) throw new InvalidError('PAGINATION_NUMBER_INVALID', `invalid n=${JSON.stringify(n)}: expected a non-negative integer`);
    out.n = Number(n);
  }
  if (last !== undefined) {
    if (typeof last !== 'string') throw new InvalidError('PAGINATION_NUMBER_INVALID', 'last must be given once');
    out.last = last;
  }
  return out;
}

/** Applies n/last to a sorted list and sets the Link header when more remain. */
function paginate(ctx: Context, all: string[], path: string): string[] {
  const { n, last } = pagination(ctx);
  let items = last !== undefined ? all.filter((t) => t > last) : all;
  if (n !== undefined && items.length > n) {
    items = items.slice(0, n);
    if (n > 0) ctx.set('Link', `<${path}?n=${n}&last=${encodeURIComponent(items[items.length - 1]!)}>; rel="next"`);
  }
  return items;
}

/** GET /v2/<name>/tags/list */
export async function listTags(ctx: Context, deps: RegistryDeps, p: RouteParams): Promise<void> {
  const { signal } = ctx.state as RegistryState;
  await requireRepository(deps, p.name, signal);
  const tags = (await deps.store.listTags(p.name, { signal })).sort();
  ctx.body = { name: p.name, tags: paginate(ctx, tags, `/v2/${p.name}/tags/list`) };
}

/** GET /v2/_catalog */
export async function listCatalog(ctx: Context, deps: RegistryDeps): Promise<void> {
  const { signal } = ctx.state as RegistryState;
  const { mayPull } = ctx.state as RegistryState;
  const all = (await deps.store.listRepositories({ signal })).sort();
  const repos = mayPull ? all.filter(mayPull) : all;
  ctx.body = { repositories: paginate(ctx, repos, '/v2/_catalog') };
}

/** GET /v2/<name>/referrers/<digest>: always an image index, possibly empty, never a 404. */
export async function listReferrers(ctx: Context, deps: RegistryDeps, p: RouteParams): Promise<void> {
  const { signal } = ctx.state as RegistryState;
  const subject = Digest.parse(p.digest!).toString();
  let manifests = await deps.store.listReferrers(p.name, subject, { signal });
  const filter = ctx.query.artifactType;
  if (filter !== undefined) {
    const wanted = Array.isArray(filter) ? filter : [filter];
    manifests = manifests.filter((m) => m.artifactType !== undefined && wanted.includes(m.artifactType));
    ctx.set('OCI-Filters-Applied', 'artifactType');
  }
  ctx.type = MediaType.OciIndex;
  ctx.body = JSON.stringify({ schemaVersion: 2, mediaType: MediaType.OciIndex, manifests });
}
