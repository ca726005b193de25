import type { Context } from 'koa';
import type { IncomingMessage } from 'node:http';
import { Digest, InvalidError, isShoalError, isValidRepositoryName } from '../oci/index.ts';
import type { UploadSession } from '../store/index.ts';
import type { RegistryDeps, RegistryState, RouteParams } from './context.ts';
import { contentLength, hasBody, parseContentRange } from './http.ts';
import { emptyResponse } from './repositories.ts';
import { countIterable } from './streams.ts';

function uploadLocation(name: string, id: string): string {
  return `/v2/${name}/blobs/uploads/${id}`;
}

/** `Range: 0-<last byte>` as the spec writes it (no `bytes=`; `0-0` for an empty session, as distribution does). */
function rangeHeader(offset: number): string {
  return `0-${Math.max(0, offset - 1)}`;
}

function sessionHeaders(ctx: Context, session: UploadSession): void {
  ctx.set('Location', uploadLocation(session.repository, session.id));
  ctx.set('Range', rangeHeader(session.offset));
  ctx.set('Docker-Upload-UUID', session.id);
}

function body(deps: RegistryDeps, req: IncomingMessage): AsyncIterable<Uint8Array> {
  return countIterable(req, (n) => deps.metrics.receivedBytes.inc({ kind: 'blob' }, n));
}

/** Appends the request body to a session; a 416 carries where the session really is. */
async function append(ctx: Context, deps: RegistryDeps, session: UploadSession, signal: AbortSignal): Promise<UploadSession> {
  const range = parseContentRange(ctx.get('Content-Range') || undefined);
  let length = contentLength(ctx.req);
  if (range) {
    const rangeLength = range.end - range.start + 1;
    if (length !== undefined && length !== rangeLength) {
      throw new InvalidError('BLOB_UPLOAD_INVALID', `Content-Range covers ${rangeLength} bytes but Content-Length is ${length}`);
    }
    length = rangeLength;
  }
  try {
    return await deps.store.appendUpload(session.repository, session.id, body(deps, ctx.req), { start: range?.start, length, signal });
  } catch (err) {
    if (isShoalError(err) && err.code === 'RANGE_INVALID') {
      ctx.req.resume();
      const current = await deps.store.getUpload(session.repository, session.id, { signal });
      throw new InvalidError('RANGE_INVALID', err.message, err.detail, {
        Location: uploadLocation(current.repository, current.id),
        Range: rangeHeader(current.offset),
        'Docker-Upload-UUID': current.id,
      });
    }
    throw err;
  }
}

function created(ctx: Context, name: string, digest: string): void {
  ctx.set('Location', `/v2/${name}/blobs/${digest}`);
  ctx.set('Docker-Content-Digest', digest);
  emptyResponse(ctx, 201);
}

/** POST /v2/<name>/blobs/uploads/ : a session, a monolithic upload (?digest=) or a mount (?mount=&from=). */
export async function startUpload(ctx: Context, deps: RegistryDeps, p: RouteParams): Promise<void> {
  const { signal } = ctx.state as RegistryState;
  const mount = ctx.query.mount;
  const from = ctx.query.from;
  const digestParam = ctx.query.digest;
  if (typeof mount === 'string') {
    const digest = Digest.parse(mount).toString();
    let source: string | undefined;
    if (typeof from === 'string' && from !== '') source = from;
    // A mount that cannot be done is not an error: the client gets a fresh session and uploads instead.
    const info = source !== undefined && !isValidRepositoryName(source) ? undefined : await deps.store.mountBlob(p.name, digest, source, { signal });
    if (info) {
      ctx.req.resume();
      created(ctx, p.name, info.digest);
      return;
    }
  } else if (typeof digestParam === 'string') {
    const digest = Digest.parse(digestParam).toString();
    const info = await deps.store.writeBlob(p.name, body(deps, ctx.req), { digest, size: contentLength(ctx.req) }, { signal });
    created(ctx, p.name, info.digest);
    return;
  }
  ctx.req.resume();
  const session = await deps.store.createUpload(p.name, { signal });
  sessionHeaders(ctx, session);
  emptyResponse(ctx, 202);
}

/** PATCH <location>: a streamed or chunked piece of the blob. */
export async function patchUpload(ctx: Context, deps: RegistryDeps, p: RouteParams): Promise<void> {
  const { signal } = ctx.state as RegistryState;
  const session = await deps.store.getUpload(p.name, p.uploadId!, { signal });
  const updated = await append(ctx, deps, session, signal);
  sessionHeaders(ctx, updated);
  emptyResponse(ctx, 202);
}

/** GET <location>: where the session is. */
export async function uploadStatus(ctx: Context, deps: RegistryDeps, p: RouteParams): Promise<void> {
  const { signal } = ctx.state as RegistryState;
  const session = await deps.store.getUpload(p.name, p.uploadId!, { signal });
  sessionHeaders(ctx, session);
  emptyResponse(ctx, 204);
}

/** PUT <location>?digest=: the last chunk (optional) and the commit. */
export async function finishUpload(ctx: Context, deps: RegistryDeps, p: RouteParams): Promise<void> {
  const { signal } = ctx.state as RegistryState;
  const digestParam = ctx.query.digest;
  if (typeof digestParam !== 'string' || digestParam === '') {
    ctx.req.resume();
    throw new InvalidError('DIGEST_INVALID', 'the closing PUT of an upload needs ?digest=<algorithm>:<hex>');
  }
  const digest = Digest.parse(digestParam).toString();
  let session = await deps.store.getUpload(p.name, p.uploadId!, { signal });
  if (hasBody(ctx.req) || ctx.get('Content-Range')) session = await append(ctx, deps, session, signal);
  else ctx.req.resume();
  const info = await deps.store.commitUpload(p.name, session.id, digest, { signal });
  created(ctx, p.name, info.digest);
}

/** DELETE <location>: cancel. */
export async function cancelUpload(ctx: Context, deps: RegistryDeps, p: RouteParams): Promise<void> {
  const { signal } = ctx.state as RegistryState;
  await deps.store.deleteUpload(p.name, p.uploadId!, { signal });
  emptyResponse(ctx, 204);
}
