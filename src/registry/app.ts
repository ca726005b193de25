import Koa, { type Context, type Next } from 'koa';
import type { Registry } from 'prom-client';
import { AbortedError, NotFoundError, OCI_STATUS, ShoalError, UnsupportedError, diskFullCode, isShoalError, storageFullError } from '../oci/index.ts';
import type { RegistryDeps, RegistryState } from './context.ts';
import { matchRoute } from './routes.ts';
import { handlePins } from './pins.ts';
import { ADMIN_PATHS, handleAdmin } from './admin.ts';
import { serveUi } from '../ui/static.ts';
import { authMiddleware } from './auth.ts';
import { handlePolicyVerify } from './policy.ts';

/** What a request was storing, for the message of a full disk. */
function storing(ctx: Context): string {
  const route = (ctx.state as RegistryState).route;
  const reading = ctx.method === 'GET' || ctx.method === 'HEAD';
  if (route === 'upload') return 'writing the blob';
  if (route === 'manifest') return reading ? 'storing the manifest fetched for this pull' : 'writing the manifest';
  if (route === 'blob') return reading ? 'storing the blob fetched for this pull' : 'updating the store';
  return 'writing to the store';
}

/** Turns a thrown value into the OCI error it is. Unknown errors become INTERNAL, logged with their stack. */
function toShoalError(err: unknown, ctx: Context): ShoalError {
  if (isShoalError(err)) return err;
  // A full disk (ENOSPC) or quota (EDQUOT), from a file write or from LevelDB: 507, saying so.
  const full = diskFullCode(err);
  if (full) return storageFullError(full, storing(ctx));
  const e = err as { status?: number; expose?: boolean; message?: string; code?: string };
  // The client went away mid-request (Node reports a bare "aborted" / ECONNRESET): not a server fault.
  if (e?.code === 'ECONNRESET' || e?.code === 'ERR_STREAM_PREMATURE_CLOSE' || e?.message === 'aborted') {
    return new AbortedError('the client closed the connection before the request was complete');
  }
  // Koa/http-errors thrown by the framework itself (e.g. malformed URLs) keep their 4xx status.
  if (typeof e?.status === 'number' && e.status >= 400 && e.status < 500 && e.expose) {
    const code = e.status === 413 ? 'PAYLOAD_TOO_LARGE' : e.status === 416 ? 'RANGE_INVALID' : 'UNSUPPORTED';
    return new ShoalError(code, e.message ?? 'bad request');
  }
  return new ShoalError('INTERNAL', 'internal error; see the node log for details');
}

/**
 * A seed's refusal of the node's own credentials is not the client's to fix: a 401 would ask the client to
 * authenticate to the node (and needs a WWW-Authenticate challenge the node has none to give). It goes out as
 * 403 DENIED with the seed's words, which name the seed credentials to fix in the node's configuration.
 */
function asClientError(err: ShoalError): ShoalError {
  const seed = (err.detail as { seed?: unknown } | undefined)?.seed;
  if (err.code !== 'UNAUTHORIZED' || typeof seed !== 'string') return err;
  return new ShoalError('DENIED', err.message, err.detail, err.headers);
}

/** A request failed on a full disk: count it, say it in the log, and tell whoever frees space. */
function reportStorageFull(deps: RegistryDeps, ctx: Context, err: unknown, shoal: ShoalError): void {
  const route = (ctx.state as RegistryState).route;
  deps.metrics.storageFull.inc({ route });
  deps.logger.warn({ method: ctx.method, path: ctx.path, route, err: (err as Error)?.message, detail: shoal.detail }, 'disk full: request refused with 507');
  try {
    deps.onStorageFull?.();
  } catch (hookErr) {
    deps.logger.error({ err: hookErr }, 'onStorageFull failed');
  }
}

/** The one place errors become `{"errors":[...]}` responses. */
function errorMiddleware(deps: RegistryDeps) {
  return async (ctx: Context, next: Next): Promise<void> => {
    try {
      await next();
    } catch (err) {
      const shoal = asClientError(toShoalError(err, ctx));
      if (shoal.code === 'INTERNAL') deps.logger.error({ err, method: ctx.method, path: ctx.path }, 'request failed');
      if (shoal.code === 'STORAGE_FULL') reportStorageFull(deps, ctx, err, shoal);
      // A body not read to its end: drain what is still readable, and close the connection after the answer.
      // (A reader that stopped early has destroyed the request stream, and then no one would read the rest of
      // the body: the client would wait for ever to finish sending it.)
      const unread = !ctx.req.complete;
      if (!ctx.req.readableEnded && !ctx.req.destroyed) ctx.req.resume();
      if (ctx.headerSent) {
        // The response has begun: the client can only learn of the failure from a cut connection.
        (ctx.req.socket ?? ctx.res.socket)?.destroy();
        return;
      }
      if (unread) ctx.set('Connection', 'close');
      ctx.status = OCI_STATUS[shoal.code];
      for (const [k, v] of Object.entries(shoal.headers ?? {})) ctx.set(k, v);
      if (ctx.method === 'HEAD') {
        ctx.body = null;
        ctx.status = OCI_STATUS[shoal.code];
        return;
      }
      ctx.type = 'application/json';
      ctx.body = { errors: [shoal.toJSON()] };
    }
  };
}

/**
 * Runs an event handler's body so that nothing it throws escapes: an exception out of an event handler is an
 * uncaught exception, which ends the process. What it threw is logged instead.
 */
function guarded(deps: RegistryDeps, what: string, fn: () => void): void {
  try {
    fn();
  } catch (err) {
    try {
      deps.logger.error({ err, handler: what }, 'event handler failed');
    } catch {
      // a logger that throws has nowhere left to report to
    }
  }
}

/** One log line and the metrics for each request; an AbortSignal for the client going away. */
function accessMiddleware(deps: RegistryDeps) {
  return async (ctx: Context, next: Next): Promise<void> => {
    const started = process.hrtime.bigint();
    // Read now: once the response has closed, the request may have no socket left to ask.
    const remote = ctx.req.socket?.remoteAddress;
    const controller = new AbortController();
    const onClose = (): void =>
      guarded(deps, 'response close (abort signal)', () => {
        if (!ctx.res.writableFinished) controller.abort();
      });
    ctx.res.once('close', onClose);
    (ctx.state as RegistryState).signal = controller.signal;
    (ctx.state as RegistryState).route = 'other';
    ctx.set('Docker-Distribution-API-Version', 'registry/2.0');
    try {
      await next();
    } finally {
      const done = (): void =>
        guarded(deps, 'response close (request log)', () => {
          ctx.res.off('close', onClose);
          const seconds = Number(process.hrtime.bigint() - started) / 1e9;
          const route = (ctx.state as RegistryState).route;
          deps.metrics.requests.inc({ route, method: ctx.method, status: String(ctx.status) });
          deps.metrics.duration.observe({ route, method: ctx.method }, seconds);
          deps.logger.info(
            {
              method: ctx.method,
              path: ctx.path,
              query: ctx.querystring || undefined,
              status: ctx.status,
              route,
              ms: Math.round(seconds * 1000),
              length: ctx.response.length,
              remote,
              aborted: controller.signal.aborted || undefined,
            },
            'request',
          );
        });
      // Streams are still flowing when next() returns: log when the response has really finished.
      if (ctx.res.writableFinished || ctx.res.destroyed) done();
      else ctx.res.once('close', done);
    }
  };
}

export interface RegistryAppOptions {
  deps: RegistryDeps;
  /** The prom-client registry /metrics serves. */
  metricsRegistry: Registry;
}

/** The Koa app of a node: OCI Distribution API plus health, readiness and metrics. */
export function createRegistryApp({ deps, metricsRegistry }: RegistryAppOptions): Koa {
  const app = new Koa();
  app.proxy = false;
  // Errors are handled and logged by errorMiddleware; Koa's default would print to stderr.
  app.silent = true;
  app.use(accessMiddleware(deps));
  app.use(errorMiddleware(deps));
  if (deps.access) app.use(authMiddleware(deps, deps.access));
  app.use(async (ctx, next) => {
    const state = ctx.state as RegistryState;
    if (ctx.path === '/healthz') {
      state.route = 'health';
      ctx.body = { status: 'ok' };
      return;
    }
    if (ctx.path === '/readyz') {
      state.route = 'health';
      const ready = deps.ready();
      ctx.status = ready ? 200 : 503;
      ctx.body = { status: ready ? 'ready' : 'stopping' };
      return;
    }
    if (ctx.path === '/shoal/peers') {
      state.route = 'peers';
      if (ctx.method !== 'GET' && ctx.method !== 'HEAD') throw new UnsupportedError(`${ctx.method} is not supported on /shoal/peers; allowed: GET`);
      ctx.body = deps.peerStatus ? deps.peerStatus() : { enabled: false, peers: [] };
      return;
    }
    if (ADMIN_PATHS.has(ctx.path)) {
      state.route = ctx.path.slice('/shoal/'.length);
      await handleAdmin(ctx, deps);
      return;
    }
    if (ctx.path === '/shoal/policy/verify') {
      state.route = 'policy';
      await handlePolicyVerify(ctx, deps);
      return;
    }
    if (ctx.path === '/shoal/pins' || ctx.path.startsWith('/shoal/pins/')) {
      state.route = 'pins';
      await handlePins(ctx, deps, ctx.path.slice('/shoal/pins'.length));
      return;
    }
    if (ctx.path === '/metrics') {
      state.route = 'metrics';
      ctx.type = metricsRegistry.contentType;
      ctx.body = await metricsRegistry.metrics();
      return;
    }
    if (ctx.path === '/' || ctx.path === '/ui' || ctx.path.startsWith('/ui/')) {
      state.route = 'ui';
      await serveUi(ctx);
      return;
    }
    if (ctx.path === '/shoal' || ctx.path.startsWith('/shoal/')) throw new NotFoundError('NAME_UNKNOWN', `no Shoal endpoint at ${ctx.path.slice(0, 200)}`);
    const matched = matchRoute(ctx.method, ctx.path, ctx.query.ns);
    if (!matched) return next();
    state.route = matched.name;
    await matched.handler(ctx, deps, matched.params);
  });
  return app;
}
