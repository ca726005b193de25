import type { Context } from 'koa';
import ms from 'ms';
import { parseSince, readAudit, type AuditEntry, type AuditFilter } from '../access/index.ts';
import { InvalidError, NotFoundError, UnsupportedError } from '../oci/index.ts';
import type { RegistryDeps, RegistryState } from './context.ts';

/**
 * The node's own operations (not part of the OCI API):
 *   GET  /shoal/status               -> disk use against quota and free-space mark, pins, last GC and scrub, peers
 *   POST /shoal/gc[?dryRun=true]     -> the collection's report: counts, bytes freed, and each item with its reason
 *   GET  /shoal/content              -> every manifest held (repository, digest, media type), tagged or not, and
 *                                       every stored blob (digest, size): what `shoal inventory --node` lists
 *   GET  /shoal/audit[?since=&user=&repo=&action=&limit=]
 *                                    -> {entries, truncated}: the audit log's last `limit` (default 1000) entries
 *                                       that match, oldest first, rotated files included: `shoal audit --node`
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
  if (ctx.path === '/shoal/audit') {
    if (ctx.method !== 'GET' && ctx.method !== 'HEAD') throw new UnsupportedError(`${ctx.method} is not supported on /shoal/audit; allowed: GET`);
    ctx.body = await auditEntries(ctx, deps);
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
        const n = /^\d+$/.test(d) ? Number(d) : ms(d as ms.StringValue);
        if (typeof n !== 'number' || !Number.isFinite(n) || n < 0) throw new Error(`since=${JSON.stringify(since.slice(0, 40))} is not a duration (90m, 2d) or a date (2026-11-30)`);
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
