import type { Context } from 'koa';
import { PassThrough } from 'node:stream';
import { durationMs } from '../limits/duration.ts';
import { parseSince, readAudit, type AuditEntry, type AuditFilter } from '../access/index.ts';
import { InvalidError, NotFoundError, UnsupportedError } from '../oci/index.ts';
import { checkPrefetchReferences } from '../source/prefetch.ts';
import type { RegistryDeps, RegistryState } from './context.ts';

/** Paths handleAdmin answers. */
export const ADMIN_PATHS: ReadonlySet<string> = new Set(['/shoal/status', '/shoal/gc', '/shoal/content', '/shoal/audit', '/shoal/images', '/shoal/traffic', '/shoal/cluster', '/shoal/prefetch']);

/** Largest body of POST /shoal/prefetch. */
const MAX_PREFETCH_BODY = 64 * 1024;

function allow(ctx: Context, ...methods: string[]): void {
  const ok = methods.includes(ctx.method) || (ctx.method === 'HEAD' && methods.includes('GET'));
  if (!ok) throw new UnsupportedError(`${ctx.method} is not supported on ${ctx.path}; allowed: ${methods.join(', ')}`);
}

async function readJsonBody(ctx: Context, limit: number): Promise<unknown> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const c of ctx.req as AsyncIterable<Buffer>) {
    size += c.length;
    if (size > limit) throw new InvalidError('SIZE_INVALID', `the request body is larger than ${limit} bytes`);
    chunks.push(c);
  }
  try {
    return JSON.parse(Buffer.concat(chunks).toString('utf8'));
  } catch {
    throw new InvalidError('NAME_INVALID', 'the request body is not JSON; send {"refs":["registry/repository:tag"],"allNodes":false,"pin":false}');
  }
}

/** The node's page and `shoal ls`/`status --cluster`/`prefetch` read these. */
async function handleViews(ctx: Context, deps: RegistryDeps): Promise<boolean> {
  const { signal, mayAdmin } = ctx.state as RegistryState;
  const admin = deps.admin;
  if (ctx.path === '/shoal/images') {
    allow(ctx, 'GET');
    if (!admin?.images) throw new UnsupportedError('this node does not list images');
    const prefix = queryOne(ctx, 'prefix');
    const images = (await admin.images({ prefix, signal })) as Array<{ repository: string }>;
    ctx.body = { images: images.map((i) => ({ ...i, canPin: mayAdmin ? mayAdmin(i.repository) : true })) };
    return true;
  }
  if (ctx.path === '/shoal/traffic') {
    allow(ctx, 'GET');
    if (!deps.traffic) throw new UnsupportedError('this node keeps no traffic record');
    ctx.body = await deps.traffic.report();
    return true;
  }
  if (ctx.path === '/shoal/cluster') {
    allow(ctx, 'GET');
    if (!admin?.cluster) throw new UnsupportedError('this node cannot ask its peers');
    ctx.body = await admin.cluster({ signal });
    return true;
  }
  if (ctx.path === '/shoal/prefetch') {
    allow(ctx, 'POST');
    if (!admin?.prefetch) throw new UnsupportedError('this node cannot prefetch');
    const body = (await readJsonBody(ctx, MAX_PREFETCH_BODY)) as { refs?: unknown; allNodes?: unknown; pin?: unknown } | null;
    if (typeof body !== 'object' || body === null || Array.isArray(body)) throw new InvalidError('NAME_INVALID', 'send {"refs":[...],"allNodes":bool,"pin":bool}');
    const allNodes = body.allNodes === true;
    const pin = body.pin === true;
    if (Array.isArray(body.refs)) {
      const refs = body.refs.slice(0, 20).map((r) => String(r).slice(0, 200)).join(' ');
      (ctx.state as RegistryState).auditDetail = `${refs}${body.refs.length > 20 ? ' ...' : ''}${allNodes ? ' on every node' : ''}${pin ? ', pinned' : ''}`;
    }
    // Bad references are refused (an OCI error with its status) before any work starts and anything is sent.
    const request = { refs: checkPrefetchReferences(body.refs), allNodes, pin };
    // Progress goes out as JSON lines while the work runs; the last line is the result (or the error).
    const out = new PassThrough();
    const line = (value: unknown): void => {
      if (!out.writableEnded) out.write(JSON.stringify(value) + '\n');
    };
    const started = admin.prefetch(request, (event) => line({ event: 'progress', ...event }), { signal });
    ctx.status = 200;
    ctx.type = 'application/x-ndjson';
    ctx.body = out;
    started.then(
      (result) => {
        line({ event: 'done', ...result });
        out.end();
      },
      (err: unknown) => {
        line({ event: 'error', error: (err as Error).message });
        out.end();
      },
    );
    return true;
  }
  return false;
}

/**
 * The node's own operations (not part of the OCI API):
 *   GET  /shoal/status               -> disk use against quota and free-space mark, pins, last GC and scrub, peers
 *   POST /shoal/gc[?dryRun=true]     -> the collection's report: counts, bytes freed, and each item with its reason
 *   GET  /shoal/content              -> every manifest held (repository, digest, media type), tagged or not, and
 *                                       every stored blob (digest, size): what `shoal inventory --node` lists
 *   GET  /shoal/audit[?since=&user=&repo=&action=&limit=]
 *                                    -> {entries, truncated}: the audit log's last `limit` (default 1000) entries
 *                                       that match, oldest first, rotated files included: `shoal audit --node`
 *   GET  /shoal/images[?prefix=P]    -> the images held: repository, tags, digest, size, platforms, pin, last pull
 *   GET  /shoal/traffic              -> blob bytes by source (local, peer, seed) per minute over the last hour, and
 *                                       the recent pulls with the source of each
 *   GET  /shoal/cluster              -> this node's summary and each peer's (asked over the peer network)
 *   POST /shoal/prefetch             -> {"refs":[...],"allNodes":bool,"pin":bool}: JSON lines of progress per node,
 *                                       the last one {"event":"done","nodes":[...]} (or {"event":"error"})
 */
export async function handleAdmin(ctx: Context, deps: RegistryDeps): Promise<void> {
  const { signal } = ctx.state as RegistryState;
  if (await handleViews(ctx, deps)) return;
  if (ctx.path === '/shoal/content') {
    allow(ctx, 'GET');
    const [manifests, blobs] = await Promise.all([deps.store.listManifests({ signal }), deps.store.listContent({ signal })]);
    ctx.body = {
      manifests: manifests.map((m) => ({ repository: m.repository, digest: m.digest, mediaType: m.mediaType })),
      blobs: blobs.map((b) => ({ digest: b.digest, size: b.size })),
    };
    return;
  }
  if (ctx.path === '/shoal/audit') {
    allow(ctx, 'GET');
    ctx.body = await auditEntries(ctx, deps);
    return;
  }
  if (!deps.admin) throw new UnsupportedError('this node has no admin operations');
  if (ctx.path === '/shoal/status') {
    allow(ctx, 'GET');
    ctx.body = await deps.admin.status({ signal });
    return;
  }
  allow(ctx, 'POST');
  const raw = ctx.query.dryRun ?? ctx.query['dry-run'];
  if (raw !== undefined && raw !== 'true' && raw !== 'false' && raw !== '1' && raw !== '0' && raw !== '') {
    throw new InvalidError('PARAMETER_INVALID', `dryRun=${JSON.stringify(String(raw).slice(0, 20))} is not true or false`);
  }
  const dryRun = raw === 'true' || raw === '1' || raw === '';
  ctx.body = await deps.admin.runGc({ dryRun, signal });
}

const AUDIT_LIMIT = 1000;
const AUDIT_LIMIT_MAX = 100_000;

/** One query parameter given at most once, as a string. */
function queryOne(ctx: Context, name: string): string | undefined {
  const v = ctx.query[name];
  if (v === undefined) return undefined;
  if (typeof v !== 'string') throw new InvalidError('PARAMETER_INVALID', `${name} is given more than once`);
  return v;
}

async function auditEntries(ctx: Context, deps: RegistryDeps): Promise<{ entries: AuditEntry[]; truncated: boolean }> {
  const { signal } = ctx.state as RegistryState;
  const audit = deps.access?.audit;
  if (!audit) throw new NotFoundError('NAME_UNKNOWN', 'this node keeps no audit log');
  const filter: AuditFilter = { user: queryOne(ctx, 'user'), repo: queryOne(ctx, 'repo'), action: queryOne(ctx, 'action') };
  const since = queryOne(ctx, 'since');
  if (since !== undefined) {
    try {
      filter.since = parseSince(since, Date.now(), (d) => {
        const n = durationMs(d);
        if (n === undefined) throw new Error(`since=${JSON.stringify(since.slice(0, 40))} is not a duration (90m, 2d) or a date (2026-11-30)`);
        return n;
      });
    } catch (err) {
      throw new InvalidError('PARAMETER_INVALID', (err as Error).message.replace(/^--since /, 'since='));
    }
  }
  const rawLimit = queryOne(ctx, 'limit');
  const limit = rawLimit === undefined ? AUDIT_LIMIT : Number(rawLimit);
  if (!/^\d+$/.test(rawLimit ?? '1') || !Number.isSafeInteger(limit) || limit < 1 || limit > AUDIT_LIMIT_MAX) {
    throw new InvalidError('PAGINATION_NUMBER_INVALID', `limit=${JSON.stringify(String(rawLimit).slice(0, 20))} is not a number from 1 to ${AUDIT_LIMIT_MAX}`);
  }
  // The last `limit` matches, in order: a window over the files, oldest first.
  const entries: AuditEntry[] = [];
  let matched = 0;
  for await (const e of readAudit(audit.file, filter, { signal })) {
    matched++;
    entries.push(e);
    if (entries.length >= 2 * limit) entries.splice(0, entries.length - limit);
  }
  if (entries.length > limit) entries.splice(0, entries.length - limit);
  return { entries, truncated: matched > entries.length };
}
