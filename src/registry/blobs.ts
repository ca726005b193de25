import type { Context } from 'koa';
import { Digest, UnsupportedError } from '../oci/index.ts';
import type { RegistryDeps, RouteParams, RegistryState } from './context.ts';
import { parseRangeHeader } from './http.ts';
import { countWritten } from './streams.ts';
import { recyclerOf } from '../store/index.ts';
import { emptyResponse, requireRepository } from './repositories.ts';
import { gateBlob } from './policy.ts';

/** GET and HEAD /v2/<name>/blobs/<digest>, with Range support. */
export async function getBlob(ctx: Context, deps: RegistryDeps, p: RouteParams): Promise<void> {
  const state = ctx.state as RegistryState;
  const digest = Digest.parse(p.digest!).toString();
  const target = { repository: p.name, upstream: p.upstream, namespace: p.namespace };
  await deps.pull.requireRepository(target, { signal: state.signal });
  gateBlob(deps, p, digest);
  const info = await deps.pull.blob(target, digest, { signal: state.signal });
  const range = parseRangeHeader(ctx.get('Range') || undefined, info.size);
  ctx.set('Accept-Ranges', 'bytes');
  ctx.set('Docker-Content-Digest', digest);
  ctx.set('ETag', `"${digest}"`);
  ctx.set('Cache-Control', 'max-age=31536000');
  ctx.type = 'application/octet-stream';
  if (range) {
    ctx.status = 206;
    ctx.set('Content-Range', `bytes ${range.start}-${range.end}/${info.size}`);
  } else {
    ctx.status = 200;
  }
  const length = range ? range.end - range.start + 1 : info.size;
  if (ctx.method === 'HEAD') {
    ctx.set('Content-Length', String(length));
    return;
  }
  if (length === 0) {
    ctx.body = Buffer.alloc(0);
    return;
  }
  const stream = await info.open(range, { signal: state.signal });
  ctx.length = length;
  // What reached the client's socket, not what was read for it: a client that goes away mid-way is not counted
  // for the bytes still buffered for it.
  let sent = 0;
  if (deps.traffic) {
    const traffic = deps.traffic;
    ctx.res.once('close', () =>
      traffic.recordPull({ at: Date.now(), repository: p.name, digest, bytes: sent, source: info.source === 'local' ? 'local' : (info.origin?.() ?? 'seed'), complete: ctx.res.writableFinished }),
    );
  }
  // A stored blob's read buffers go back to the store's pool once written out (PooledFileReader).
  countWritten(
    ctx.res,
    (n) => {
      sent += n;
      deps.metrics.servedBytes.inc({ kind: 'blob' }, n);
      // Fetched bytes are counted by the fetch as they arrive (from peers or the seed), once however many clients.
      if (info.source === 'local') deps.pullMetrics.pullBytes.inc({ source: 'local' }, n);
    },
    recyclerOf(stream),
  );
  ctx.body = stream;
}

/** DELETE /v2/<name>/blobs/<digest>. */
export async function deleteBlob(ctx: Context, deps: RegistryDeps, p: RouteParams): Promise<void> {
  const state = ctx.state as RegistryState;
  if (!deps.deleteEnabled) throw new UnsupportedError('deletion is disabled on this node (deleteEnabled: false)');
  const digest = Digest.parse(p.digest!).toString();
  await requireRepository(deps, p.name, state.signal);
  await deps.store.deleteBlob(p.name, digest, { signal: state.signal });
  emptyResponse(ctx, 202);
}
