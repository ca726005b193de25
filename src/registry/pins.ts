import type { Context } from 'koa';
import { Digest, InvalidError, NotFoundError, UnsupportedError, validateRepositoryName, validateTag } from '../oci/index.ts';
import type { Pin } from '../store/index.ts';
import type { RegistryDeps, RegistryState } from './context.ts';
import { namespacedRepository, parseNamespace } from './routes.ts';

/**
 * Pins keep images on a node (imported bundles, images that must survive eviction). Not part of the OCI API:
 *   GET    /shoal/pins                             -> 200 {"pins":[{repository, digest, reason, created}]}
 *   GET    /shoal/pins/<name>@<digest>             -> 200 the pin, 404 when there is none
 *   PUT    /shoal/pins/<name>@<digest>?reason=...  -> 201 the pin (the manifest must be in the repository)
 *   PUT    /shoal/pins/<name>:<tag>?reason=...     -> 201 the pin of the digest the tag points at on this node
 *   DELETE /shoal/pins/<name>@<digest> (or :<tag>) -> 202 the pin removed, 404 when there is none
 * `<name>` is the repository in this node's store (`registry.local-5000/team/app`), or, with `?ns=<registry>`,
 * the repository as that registry names it, as in the OCI API. Errors are OCI error JSON.
 */
export interface PinTarget {
  repository: string;
  digest?: string;
  tag?: string;
}

/** Reasons longer than this are cut. */
const MAX_PIN_REASON_LENGTH = 200;

/** The manifest a path under /shoal/pins/ names (`rest` is what follows `/shoal/pins`), or undefined for the list. */
export function parsePinPath(rest: string, ns: unknown): PinTarget | undefined {
  if (rest === '' || rest === '/') return undefined;
  let text: string;
  try {
    text = decodeURIComponent(rest.slice(1));
  } catch {
    throw new InvalidError('NAME_INVALID', `malformed percent-escape in ${JSON.stringify(rest.slice(1, 201))}`);
  }
  let name: string;
  let digest: string | undefined;
  let tag: string | undefined;
  const at = text.lastIndexOf('@');
  if (at >= 0) {
    name = text.slice(0, at);
    digest = Digest.parse(text.slice(at + 1)).toString();
  } else {
    const colon = text.lastIndexOf(':');
    if (colon < 0) {
      throw new InvalidError('NAME_INVALID', `name a manifest: /shoal/pins/<name>@<digest> or /shoal/pins/<name>:<tag>, not ${JSON.stringify(text.slice(0, 200))}`);
    }
    name = text.slice(0, colon);
    tag = validateTag(text.slice(colon + 1));
  }
  validateRepositoryName(name);
  const repository = namespacedRepository(parseNamespace(ns), name);
  validateRepositoryName(repository);
  return { repository, digest, tag };
}

/** The digest a target names; a tag is resolved in this node's store only (a pin holds what the node has). */
async function digestOf(deps: RegistryDeps, target: PinTarget, signal: AbortSignal): Promise<string> {
  if (target.digest) return target.digest;
  const digest = await deps.store.resolveTag(target.repository, target.tag!, { signal });
  if (digest) return digest;
  if (!(await deps.store.repositoryExists(target.repository, { signal }))) {
    throw new NotFoundError('NAME_UNKNOWN', `repository ${target.repository} is not on this node`, { repository: target.repository });
  }
  throw new NotFoundError('MANIFEST_UNKNOWN', `tag ${target.tag} is not in repository ${target.repository} on this node`, { repository: target.repository, tag: target.tag });
}

async function existingPin(deps: RegistryDeps, repository: string, digest: string, signal: AbortSignal, target: PinTarget): Promise<Pin> {
  const pin = (await deps.store.listPins({ signal })).find((p) => p.repository === repository && p.digest === digest);
  if (pin) return pin;
  const via = target.tag ? ` (the digest tag ${target.tag} points at)` : '';
  throw new NotFoundError('MANIFEST_UNKNOWN', `${repository}@${digest}${via} is not pinned on this node`, { repository, digest, pinned: false });
}

export async function handlePins(ctx: Context, deps: RegistryDeps, rest: string): Promise<void> {
  const { signal } = ctx.state as RegistryState;
  const target = parsePinPath(rest, ctx.query.ns);
  if (!target) {
    if (ctx.method !== 'GET' && ctx.method !== 'HEAD') throw new UnsupportedError(`${ctx.method} is not supported on /shoal/pins; allowed: GET`);
    const { mayAdmin } = ctx.state as RegistryState;
    const pins = await deps.store.listPins({ signal });
    ctx.body = { pins: mayAdmin ? pins.filter((p) => mayAdmin(p.repository)) : pins };
    return;
  }
  const { repository } = target;
  if (ctx.method === 'PUT') {
    const digest = await digestOf(deps, target, signal);
    const given = typeof ctx.query.reason === 'string' ? ctx.query.reason.slice(0, MAX_PIN_REASON_LENGTH) : '';
    await deps.store.pinManifest(repository, digest, given || 'pinned through the API', { signal });
    ctx.status = 201;
    ctx.body = await existingPin(deps, repository, digest, signal, target);
    return;
  }
  if (ctx.method === 'GET' || ctx.method === 'HEAD') {
    ctx.body = await existingPin(deps, repository, await digestOf(deps, target, signal), signal, target);
    return;
  }
  if (ctx.method === 'DELETE') {
    const pin = await existingPin(deps, repository, await digestOf(deps, target, signal), signal, target);
    await deps.store.unpinManifest(repository, pin.digest, { signal });
    ctx.status = 202;
    ctx.body = pin;
    return;
  }
  throw new UnsupportedError(`${ctx.method} is not supported on pins; allowed: GET, PUT, DELETE`);
}
