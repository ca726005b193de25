import type { Context } from 'koa';
import { InvalidError, NotFoundError, UnsupportedError, isValidRegistryHost, storeRepositoryName, validateRepositoryName } from '../oci/index.ts';
import { deleteBlob, getBlob } from './blobs.ts';
import type { RegistryDeps, RouteParams } from './context.ts';
import { listCatalog, listReferrers, listTags } from './discovery.ts';
import { deleteManifest, getManifest, putManifest } from './manifests.ts';
import { cancelUpload, finishUpload, patchUpload, startUpload, uploadStatus } from './uploads.ts';

type Handler = (ctx: Context, deps: RegistryDeps, params: RouteParams) => Promise<void>;

interface Route {
  /** A metrics label naming the route. */
  name: string;
  pattern: RegExp;
  methods: Record<string, Handler>;
}

// Names are matched greedily, so a repository may itself contain path components such as "blobs".
const ROUTES: readonly Route[] = [
  { name: 'base', pattern: /^\/v2\/?$/, methods: { GET: async (ctx) => void (ctx.body = {}), HEAD: async (ctx) => void (ctx.status = 200) } },
  { name: 'catalog', pattern: /^\/v2\/_catalog$/, methods: { GET: (ctx, deps) => listCatalog(ctx, deps) } },
  { name: 'upload', pattern: /^\/v2\/(?<name>.+)\/blobs\/uploads\/?$/, methods: { POST: startUpload } },
  {
    name: 'upload',
    pattern: /^\/v2\/(?<name>.+)\/blobs\/uploads\/(?<uploadId>[^/]+)$/,
    methods: { PATCH: patchUpload, PUT: finishUpload, GET: uploadStatus, DELETE: cancelUpload },
  },
  { name: 'blob', pattern: /^\/v2\/(?<name>.+)\/blobs\/(?<digest>[^/]+)$/, methods: { GET: getBlob, HEAD: getBlob, DELETE: deleteBlob } },
  {
    name: 'manifest',
    pattern: /^\/v2\/(?<name>.+)\/manifests\/(?<reference>[^/]+)$/,
    methods: { GET: getManifest, HEAD: getManifest, PUT: putManifest, DELETE: deleteManifest },
  },
  { name: 'tags', pattern: /^\/v2\/(?<name>.+)\/tags\/list$/, methods: { GET: listTags } },
  { name: 'referrers', pattern: /^\/v2\/(?<name>.+)\/referrers\/(?<digest>[^/]+)$/, methods: { GET: listReferrers } },
];

export interface MatchedRoute {
  name: string;
  handler: Handler;
  params: RouteParams;
}

/** Finds the route for a path and method; throws the right OCI error when there is none. */
/** `?ns=<registry host[:port]>` as containerd sends it to a mirror. */
export function parseNamespace(ns: unknown): string | undefined {
  if (ns === undefined || ns === '') return undefined;
  if (typeof ns !== 'string' || !isValidRegistryHost(ns)) {
    throw new InvalidError('NAME_INVALID', `invalid ns=${JSON.stringify(String(ns).slice(0, 100))}: expected a registry host such as docker.io or registry.local:5000`);
  }
  return ns.toLowerCase();
}

/** The store repository of a namespaced request: `docker.io` + `library/nginx` -> `docker.io/library/nginx`. */
export function namespacedRepository(namespace: string | undefined, name: string): string {
  return namespace ? storeRepositoryName(namespace, name) : name;
}

export function matchRoute(method: string, path: string, ns?: unknown): MatchedRoute | undefined {
  for (const route of ROUTES) {
    const m = route.pattern.exec(path);
    if (!m) continue;
    const g = m.groups ?? {};
    let name = g.name ?? '';
    try {
      name = decodeURIComponent(name);
    } catch {
      // leave as is: validation below refuses it
    }
    if (g.name !== undefined) validateRepositoryName(name);
    const handler = route.methods[method];
    if (!handler) {
      throw new UnsupportedError(`${method} is not supported on ${path}; allowed: ${Object.keys(route.methods).join(', ')}`);
    }
    const namespace = g.name !== undefined ? parseNamespace(ns) : undefined;
    const params: RouteParams = { name: namespacedRepository(namespace, name), upstream: name, namespace, reference: g.reference, digest: g.digest, uploadId: g.uploadId };
    if (namespace) validateRepositoryName(params.name);
    for (const key of ['reference', 'digest', 'uploadId'] as const) {
      const v = params[key];
      if (v !== undefined) {
        try {
          params[key] = decodeURIComponent(v);
        } catch {
          // invalid escapes stay as they are and fail validation in the handler
        }
      }
    }
    return { name: route.name, handler: route.methods[method]!, params };
  }
  if (path.startsWith('/v2/')) throw new NotFoundError('NAME_UNKNOWN', `no registry endpoint at ${path}`);
  return undefined;
}
