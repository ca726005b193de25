/**
 * The node's web page: a few static files (HTML, CSS, one script) served as they are, from this folder's assets/
 * in a checkout or from dist/ui/ in a build (scripts/build.mjs copies them). The page fetches nothing from
 * elsewhere: its data comes from the node's JSON endpoints (/shoal/status, /shoal/peers, /shoal/images,
 * /shoal/traffic), which the CLI reads too, under the same access rules.
 *   GET /        -> 302 /ui/
 *   GET /ui      -> 302 /ui/
 *   GET /ui/     -> index.html;  GET /ui/<file> -> that asset
 */
import type { Context } from 'koa';
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { NotFoundError, UnsupportedError } from '../oci/index.ts';

const TYPES: Record<string, string> = {
  'index.html': 'text/html; charset=utf-8',
  'app.css': 'text/css; charset=utf-8',
  'app.js': 'text/javascript; charset=utf-8',
  'icon.svg': 'image/svg+xml',
};

/** Nothing but this node: scripts, styles, images and requests stay on its origin. */
const CSP = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/** The directory holding the assets: next to this file in a checkout, dist/ui/ in a build (from dist/ or its chunks/). */
function assetsDir(): string {
  const candidates = [new URL('./assets/', import.meta.url), new URL('./ui/', import.meta.url), new URL('../ui/', import.meta.url)];
  for (const c of candidates) {
    const dir = fileURLToPath(c);
    if (existsSync(`${dir}index.html`)) return dir;
  }
  return fileURLToPath(candidates[0]!);
}

export async function serveUi(ctx: Context): Promise<void> {
  if (ctx.method !== 'GET' && ctx.method !== 'HEAD') throw new UnsupportedError(`${ctx.method} is not supported on ${ctx.path}; allowed: GET`);
  if (ctx.path === '/' || ctx.path === '/ui') {
    ctx.redirect('/ui/');
    return;
  }
  const name = ctx.path === '/ui/' ? 'index.html' : ctx.path.slice('/ui/'.length);
  const type = TYPES[name];
  if (!type) throw new NotFoundError('NAME_UNKNOWN', `no page at ${ctx.path.slice(0, 200)}`);
  let body: Buffer;
  try {
    body = await readFile(assetsDir() + name);
  } catch {
    throw new NotFoundError('NAME_UNKNOWN', `the page's file ${name} is missing from this installation`);
  }
  ctx.set('Content-Security-Policy', CSP);
  ctx.set('X-Content-Type-Options', 'nosniff');
  ctx.set('Referrer-Policy', 'no-referrer');
  ctx.set('Cache-Control', 'no-cache');
  ctx.type = type;
  ctx.body = body;
}
