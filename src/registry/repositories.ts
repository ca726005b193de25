import type { Context } from 'koa';
import { NotFoundError } from '../oci/index.ts';
import type { RegistryDeps } from './context.ts';

/** Throws NAME_UNKNOWN unless the repository exists on this node. */
export async function requireRepository(deps: RegistryDeps, name: string, signal: AbortSignal): Promise<void> {
  if (!(await deps.store.repositoryExists(name, { signal }))) {
    throw new NotFoundError('NAME_UNKNOWN', `repository ${name} is not known to this node`, { name });
  }
}

/** Ends the response with `status` and no body (Content-Length: 0). */
export function emptyResponse(ctx: Context, status: number): void {
  ctx.body = null;
  ctx.status = status;
}
