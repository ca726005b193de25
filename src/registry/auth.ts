/**
 * The registry's side of access control (src/access decides): for each request, who the caller is, which role it
 * needs on which repository, a 401 with a challenge or a 403 when it is refused (before anything is read or
 * written), and afterwards the audit entry and the webhook event for what it did.
 *
 *   pull   GET/HEAD manifests, blobs, tags, referrers; the catalog (filtered to what the caller may pull)
 *   push   uploads (POST, PATCH, PUT, GET and DELETE of a session) and manifest PUT
 *   delete DELETE of manifests, tags and blobs
 *   admin  /shoal/pins (per repository; the list: filtered), /shoal/status, /shoal/gc, /shoal/peers, /shoal/images,
 *          /shoal/traffic, /shoal/cluster, /shoal/prefetch
 * `/v2/` answers 401 with the challenge to a client without credentials when the node has users, as registries
 * with authentication do: that is how clients learn to send them. /healthz, /readyz and /metrics are open, and so
 * are `/` and `/ui/` (the web page's static files; its data comes from the admin endpoints above).
 */
import type { Context, Next } from 'koa';
import { AbortedError, DeniedError, Digest, UnauthorizedError, isShoalError } from '../oci/index.ts';
import { ANONYMOUS, AUTH_CHALLENGE, gcAuditDetail, type AccessControl, type AccessScope, type AuditAction, type AuditResult, type Principal, type Remote, type Role } from '../access/index.ts';
import type { RegistryDeps, RegistryState } from './context.ts';
import { parsePinPath } from './pins.ts';
import { matchRoute } from './routes.ts';

/** What a request needs, and how it is recorded. */
interface Need {
  role: Role;
  scope: AccessScope;
  /** What the audit log calls it. */
  action: AuditAction;
  repository?: string;
  reference?: string;
  digest?: string;
  /** The route's name (manifest, blob, upload, ...). */
  route: string;
}

/** User agents of `shoal import`: its manifest pushes are recorded as imports. */
const IMPORT_AGENT = /^shoal-bundle\b/;

const isDigest = (ref: string | undefined): boolean => ref !== undefined && ref.includes(':');

/** The role a request needs; undefined for open endpoints and paths that are no endpoint. */
function classify(ctx: Context): Need | 'base' | undefined {
  const path = ctx.path;
  const method = ctx.method;
  if (path === '/v2' || path === '/v2/') return 'base';
  if (path === '/v2/_catalog') return { role: 'pull', scope: { anywhere: true }, action: 'pull', route: 'catalog' };
  if (path.startsWith('/v2/')) {
    const m = matchRoute(method, path, ctx.query.ns);
    if (!m) return undefined;
    const p = m.params;
    const repository = p.name;
    const base = { scope: { repository }, repository, route: m.name };
    if (m.name === 'upload') {
      const digest = typeof ctx.query.digest === 'string' ? ctx.query.digest : typeof ctx.query.mount === 'string' ? ctx.query.mount : undefined;
      return { ...base, role: 'push', action: 'upload', digest };
    }
    if (method === 'DELETE') {
      const ref = p.reference ?? p.digest;
      return { ...base, role: 'delete', action: 'delete', reference: isDigest(ref) ? undefined : ref, digest: isDigest(ref) ? ref : undefined };
    }
    if (m.name === 'manifest' && method === 'PUT') {
      return { ...base, role: 'push', action: IMPORT_AGENT.test(ctx.get('User-Agent')) ? 'import' : 'push', reference: isDigest(p.reference) ? undefined : p.reference, digest: isDigest(p.reference) ? p.reference : undefined };
    }
    return { ...base, role: 'pull', action: 'pull', reference: p.reference, digest: p.digest };
  }
  if (path === '/shoal/pins' || path === '/shoal/pins/') return { role: 'admin', scope: { anywhere: true }, action: 'admin', route: 'pins' };
  if (path.startsWith('/shoal/pins/')) {
    const target = parsePinPath(path.slice('/shoal/pins'.length), ctx.query.ns)!;
    const action: AuditAction = method === 'PUT' ? 'pin' : method === 'DELETE' ? 'unpin' : 'admin';
    return { role: 'admin', scope: { repository: target.repository }, action, repository: target.repository, reference: target.tag, digest: target.digest, route: 'pins' };
  }
  if (path === '/shoal' || path.startsWith('/shoal/')) {
    const action: AuditAction = method !== 'POST' ? 'admin' : path === '/shoal/gc' ? 'gc' : path === '/shoal/prefetch' ? 'prefetch' : 'admin';
    return { role: 'admin', scope: { node: true }, action, route: 'admin' };
  }
  return undefined;
}

function remoteOf(ctx: Context): string {
  return ctx.request.ip || ctx.req.socket.remoteAddress || 'unknown';
}

/** The client's address and the node's address it reached (equal when the client runs on this host). */
function callerOf(ctx: Context): Remote {
  return { address: ctx.req.socket.remoteAddress, localAddress: ctx.req.socket.localAddress };
}

function agentOf(ctx: Context): string | undefined {
  const ua = ctx.get('User-Agent');
  return ua ? ua.slice(0, 200) : undefined;
}

/** Actions recorded whatever their result; others (reads) only when refused. */
const RECORDED: ReadonlySet<AuditAction> = new Set(['push', 'import', 'delete', 'pin', 'unpin', 'gc', 'prefetch']);

/** The Koa middleware; it sits after the error middleware, so what it throws becomes OCI error JSON. */
export function authMiddleware(deps: RegistryDeps, access: AccessControl) {
  return async (ctx: Context, next: Next): Promise<void> => {
    const need = classify(ctx);
    if (need === undefined) return next();
    const state = ctx.state as RegistryState;
    const remote = remoteOf(ctx);
    const record = (action: AuditAction, result: AuditResult, fields: { repository?: string; reference?: string; digest?: string; previous?: string; status?: number; detail?: string; user?: string } = {}): void => {
      void access.audit.append({ user: state.principal?.name ?? ANONYMOUS.name, from: remote, action, ...fields, result, agent: agentOf(ctx) });
    };

    // Who is calling. A node without users has nobody to check credentials against: they are ignored.
    const outcome = access.authEnabled ? await access.authenticate(ctx.get('Authorization') || undefined) : ({ ok: false, reason: 'none' } as const);
    if (!outcome.ok && outcome.reason === 'invalid') {
      record('login', 'unauthorized', { user: outcome.name ?? ANONYMOUS.name, repository: need === 'base' ? undefined : need.repository, status: 401, detail: outcome.message });
      throw new UnauthorizedError(`authentication failed: ${outcome.message}`, AUTH_CHALLENGE);
    }
    const principal: Principal = outcome.ok ? outcome.principal : ANONYMOUS;
    state.principal = principal;
    if (need === 'base') {
      // A client without credentials learns here that it can send them (it then sends empty ones when it has none).
      if (!ctx.get('Authorization') && access.authEnabled) throw new UnauthorizedError('authentication required: log in with a user or token of this node', AUTH_CHALLENGE);
      return next();
    }

    // What it may do.
    const caller = callerOf(ctx);
    const decision = access.decide(principal, caller, need.role, need.scope);
    if (!decision.allowed) {
      const result: AuditResult = decision.refusal === 'unauthorized' ? 'unauthorized' : 'denied';
      record(need.action, result, {
        repository: need.repository,
        reference: need.reference,
        digest: need.digest,
        status: decision.refusal === 'unauthorized' ? 401 : 403,
        detail: decision.message,
      });
      if (decision.refusal === 'unauthorized') throw new UnauthorizedError(decision.message, AUTH_CHALLENGE);
      throw new DeniedError(decision.message, { role: need.role, repository: need.repository });
    }
    state.mayPull = access.filter(principal, caller, 'pull');
    state.mayAdmin = access.filter(principal, caller, 'admin');
    if (need.route === 'upload' && ctx.method === 'POST') restrictMount(ctx, access, principal, caller);

    const repository = need.repository;
    let previous: string | undefined;
    let deleted: { mediaType?: string; size?: number; digest?: string } | undefined;
    try {
      // Immutable tags: a delete that would take a tag away is refused before it runs.
      if (need.action === 'delete' && need.route === 'manifest' && repository !== undefined) await checkImmutableDelete(deps, access, repository, need, state.signal);
      // What it is about to change, for the record and the event.
      if (repository !== undefined && (need.action === 'push' || need.action === 'import') && need.reference) {
        previous = await deps.store.resolveTag(repository, need.reference, { signal: state.signal }).catch(() => undefined);
      }
      if (repository !== undefined && need.action === 'delete') deleted = await describeDeleted(deps, repository, need, state.signal);
      await next();
    } catch (err) {
      // Refusals (an immutable tag) and failures of the node are recorded; malformed requests, which change
      // nothing, are not.
      const status = isShoalError(err) ? err.status : 500;
      if (err instanceof AbortedError || (err as { code?: string }).code === 'ECONNRESET') throw err; // the client went away
      const result: AuditResult | undefined = status === 403 ? 'denied' : status === 401 ? 'unauthorized' : status >= 500 ? 'failed' : undefined;
      if (result && (RECORDED.has(need.action) || need.action === 'upload')) {
        const asked = (ctx.state as RegistryState).auditDetail;
        const detail = `${asked ? `${asked}: ` : ''}${(err as Error).message ?? ''}`.slice(0, 300);
        record(need.action, result, { repository, reference: need.reference, digest: need.digest, status, detail });
      }
      throw err;
    }
    await afterSuccess(ctx, deps, access, need, { remote, principal, previous, deleted, record });
  };
}

/** A mount from a repository the caller may not pull becomes a plain upload session (nothing leaks across). */
function restrictMount(ctx: Context, access: AccessControl, principal: Principal, remote: Remote): void {
  if (typeof ctx.query.mount !== 'string') return;
  const from = typeof ctx.query.from === 'string' && ctx.query.from !== '' ? ctx.query.from : undefined;
  // Without `from` the node mounts from any repository: only for callers who may pull everything.
  if (access.holds(principal, remote, 'pull', from !== undefined ? { repository: from } : { node: true })) return;
  const q = new URLSearchParams(ctx.querystring);
  q.delete('mount');
  q.delete('from');
  ctx.querystring = q.toString();
}

async function checkImmutableDelete(deps: RegistryDeps, access: AccessControl, repository: string, need: Need, signal: AbortSignal): Promise<void> {
  const prefix = access.immutable.prefixFor(repository);
  if (prefix === undefined) return;
  if (need.reference !== undefined) {
    if ((await deps.store.resolveTag(repository, need.reference, { signal })) !== undefined) {
      throw new DeniedError(`tag ${need.reference} of ${repository} is immutable (immutableTags: ${JSON.stringify(prefix)}): it cannot be deleted`, { repository, tag: need.reference, immutable: prefix });
    }
    return;
  }
  if (need.digest === undefined) return;
  let digest: string;
  try {
    digest = Digest.parse(need.digest).toString();
  } catch {
    return; // the handler answers DIGEST_INVALID
  }
  for (const tag of await deps.store.listTags(repository, { signal })) {
    if ((await deps.store.resolveTag(repository, tag, { signal })) === digest) {
      throw new DeniedError(`${repository}@${digest} is tagged ${tag}, and tags of ${repository} are immutable (immutableTags: ${JSON.stringify(prefix)}): it cannot be deleted`, { repository, tag, digest, immutable: prefix });
    }
  }
}

/**
 * The guard of a manifest push by tag (called by the manifest handler once the digest is known): under an
 * immutable prefix, a tag that exists may only be written again with the manifest it already points at.
 */
export async function guardTagWrite<T>(deps: RegistryDeps, repository: string, tag: string, digest: string, write: () => Promise<T>, signal: AbortSignal): Promise<T> {
  const access = deps.access;
  const prefix = access?.immutable.prefixFor(repository);
  if (!access || prefix === undefined) return write();
  return access.tagLocks.run(`${repository}:${tag}`, async () => {
    const current = await deps.store.resolveTag(repository, tag, { signal });
    if (current !== undefined && current !== digest) {
      throw new DeniedError(`tag ${tag} of ${repository} is immutable (immutableTags: ${JSON.stringify(prefix)}): it points at ${current} and cannot be moved to ${digest}; push a new tag`, {
        repository,
        tag,
        current,
        digest,
        immutable: prefix,
      });
    }
    return write();
  });
}

async function describeDeleted(deps: RegistryDeps, repository: string, need: Need, signal: AbortSignal): Promise<{ mediaType?: string; size?: number; digest?: string } | undefined> {
  try {
    if (need.route === 'manifest') {
      const digest = need.digest ? Digest.parse(need.digest).toString() : need.reference ? await deps.store.resolveTag(repository, need.reference, { signal }) : undefined;
      if (!digest) return undefined;
      const rec = await deps.store.getManifest(repository, digest, { signal });
      return { digest, mediaType: rec?.mediaType, size: rec?.size };
    }
    if (need.route === 'blob' && need.digest) {
      const digest = Digest.parse(need.digest).toString();
      const info = await deps.store.statBlob(repository, digest, { signal });
      return { digest, size: info?.size, mediaType: 'application/octet-stream' };
    }
  } catch {
    // malformed: the handler answers it
  }
  return undefined;
}

interface Done {
  remote: string;
  principal: Principal;
  previous?: string;
  deleted?: { mediaType?: string; size?: number; digest?: string };
  record: (action: AuditAction, result: AuditResult, fields?: { repository?: string; reference?: string; digest?: string; previous?: string; status?: number; detail?: string }) => void;
}

async function afterSuccess(ctx: Context, deps: RegistryDeps, access: AccessControl, need: Need, done: Done): Promise<void> {
  const { record } = done;
  const repository = need.repository;
  const status = ctx.status;
  const request = { addr: done.remote, method: ctx.method, useragent: agentOf(ctx), host: ctx.host };
  const actor = { name: done.principal.name };
  const source = { addr: access.instance };
  const targetUrl = (digest: string, kind: 'manifests' | 'blobs'): string => `${ctx.protocol}://${ctx.host}/v2/${repository}/${kind}/${digest}`;
  if ((need.action === 'push' || need.action === 'import') && repository !== undefined) {
    const digest = ctx.response.get('Docker-Content-Digest') || need.digest;
    record(need.action, 'ok', { repository, reference: need.reference, digest, status });
    if (need.reference && done.previous && digest && done.previous !== digest) {
      record('tag-move', 'ok', { repository, reference: need.reference, digest, previous: done.previous, status });
    }
    if (access.webhooks.enabled && digest) {
      const rec = await deps.store.getManifest(repository, digest, {}).catch(() => undefined);
      access.webhooks.notify({
        action: 'push',
        target: { mediaType: rec?.mediaType, size: rec?.size, digest, repository, tag: need.reference, url: targetUrl(digest, 'manifests') },
        request,
        actor,
        source,
      });
    }
    return;
  }
  if (need.action === 'upload' && status === 201 && repository !== undefined) {
    record('upload', 'ok', { repository, digest: ctx.response.get('Docker-Content-Digest') || need.digest, status });
    return;
  }
  if (need.action === 'delete' && repository !== undefined) {
    const digest = done.deleted?.digest ?? need.digest;
    record('delete', 'ok', { repository, reference: need.reference, digest, status });
    access.webhooks.notify({
      action: 'delete',
      target: {
        mediaType: done.deleted?.mediaType,
        size: done.deleted?.size,
        digest,
        repository,
        tag: need.reference,
        url: digest ? targetUrl(digest, need.route === 'blob' ? 'blobs' : 'manifests') : undefined,
      },
      request,
      actor,
      source,
    });
    return;
  }
  if (need.action === 'pin' || need.action === 'unpin') {
    const body = ctx.body as { digest?: string } | undefined;
    record(need.action, 'ok', { repository, reference: need.reference, digest: body?.digest ?? need.digest, status });
    return;
  }
  if (need.action === 'gc') {
    const r = ctx.body as { dryRun?: boolean; tags?: number; manifests?: number; blobs?: number; uploads?: number; bytesFreed?: number } | undefined;
    const detail = r ? gcAuditDetail(r) : undefined;
    record('gc', 'ok', { status, detail });
  }
  if (need.action === 'prefetch') record('prefetch', 'ok', { status, detail: (ctx.state as RegistryState).auditDetail });
}
