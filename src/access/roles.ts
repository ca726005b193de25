/**
 * Who may do what, per repository prefix. Pure logic: no files, no HTTP.
 *
 * Roles: `pull` (read manifests, blobs, tags, referrers, the catalog), `push` (uploads and manifest writes; it
 * includes `pull`, which every push client needs to check what is there), `delete` (delete manifests, tags and
 * blobs; includes `pull`), `admin` (the node's own API: pins, GC, status, peers; includes the three others).
 *
 * A grant gives roles to a user (or token name), or to every authenticated caller (`user: "*"`), on the
 * repositories whose name starts with its prefix (empty: every repository), as retention rules match.
 */

export const ROLES = ['pull', 'push', 'delete', 'admin'] as const;
export type Role = (typeof ROLES)[number];

/** What each role includes. */
const IMPLIED: Readonly<Record<Role, readonly Role[]>> = {
  pull: ['pull'],
  push: ['push', 'pull'],
  delete: ['delete', 'pull'],
  admin: ['admin', 'push', 'delete', 'pull'],
};

export interface Grant {
  /** A user of the htpasswd file, a token's name, or `*` for every authenticated caller. */
  user: string;
  /** Repository prefix, e.g. `apps/` or `docker.io/`; empty for every repository. */
  prefix: string;
  roles: Role[];
}

/** Who a request comes from: an authenticated user or token, or nobody. */
export interface Principal {
  /** The user or token name; `anonymous` for nobody. */
  name: string;
  kind: 'user' | 'token' | 'anonymous';
}

export const ANONYMOUS: Principal = Object.freeze({ name: 'anonymous', kind: 'anonymous' });

/** A role list as written in settings: `pull,push`, `none`, `all`, or a list of names. */
export function parseRoleList(value: unknown, origin: string): Role[] {
  const items = typeof value === 'string' ? value.split(',').map((v) => v.trim()).filter(Boolean) : value;
  if (!Array.isArray(items) || items.some((v) => typeof v !== 'string')) throw new Error(`${origin}: expected a list of roles (${ROLES.join(', ')}), none or all`);
  const out = new Set<Role>();
  for (const raw of items as string[]) {
    const r = raw.trim().toLowerCase();
    if (r === 'none') continue;
    if (r === 'all') {
      for (const x of ROLES) out.add(x);
      continue;
    }
    if (!(ROLES as readonly string[]).includes(r)) throw new Error(`${origin}: ${JSON.stringify(raw)} is not a role; roles are ${ROLES.join(', ')} (or none, all)`);
    out.add(r as Role);
  }
  return ROLES.filter((r) => out.has(r));
}

/** Grants as they come from the config file or the environment (JSON); throws with what is wrong. */
export function parseGrants(value: unknown, origin: string): Grant[] {
  if (!Array.isArray(value)) throw new Error(`${origin}: expected a list of grants such as [{user: ci, prefix: apps/, roles: [push]}]`);
  return value.map((raw, i) => {
    const where = `${origin}[${i}]`;
    if (typeof raw === 'string') return parseGrantFlag(raw, where);
    if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw new Error(`${where}: expected {user, prefix, roles}`);
    const g = raw as Record<string, unknown>;
    for (const k of Object.keys(g)) if (!['user', 'prefix', 'roles'].includes(k)) throw new Error(`${where}: unknown key ${JSON.stringify(k)}; a grant has user, prefix and roles`);
    if (typeof g.user !== 'string' || g.user === '' || g.user.includes(':')) throw new Error(`${where}.user: expected a user or token name (or * for every authenticated caller)`);
    if (g.prefix !== undefined && typeof g.prefix !== 'string') throw new Error(`${where}.prefix: expected a repository prefix such as apps/ (empty for every repository)`);
    const roles = parseRoleList(g.roles, `${where}.roles`);
    if (roles.length === 0) throw new Error(`${where}.roles: give at least one role (${ROLES.join(', ')})`);
    return { user: g.user, prefix: (g.prefix as string | undefined) ?? '', roles };
  });
}

/** `USER:ROLES[:PREFIX]` as `--grant` takes it, e.g. `ci:push:apps/` or `ops:admin`. */
export function parseGrantFlag(value: string, origin = '--grant'): Grant {
  const parts = value.split(':');
  if (parts.length < 2 || parts.length > 3 || !parts[0]) throw new Error(`${origin}: ${JSON.stringify(value)} is not USER:ROLES[:PREFIX] (e.g. ci:push:apps/ or ops:admin)`);
  const roles = parseRoleList(parts[1], origin);
  if (roles.length === 0) throw new Error(`${origin}: ${JSON.stringify(value)} names no role`);
  return { user: parts[0], prefix: parts[2] ?? '', roles };
}

/** The roles `principal` holds on `repository`, from the grants and what anonymous callers may do. */
export class RoleBook {
  private readonly grants: readonly Grant[];
  private readonly anonymous: ReadonlySet<Role>;

  constructor(grants: readonly Grant[], anonymous: readonly Role[]) {
    this.grants = grants;
    this.anonymous = expand(anonymous);
  }

  /** Roles of a caller on one repository; `undefined` repository: roles on every repository (the node itself). */
  rolesOn(principal: Principal, repository: string | undefined): Set<Role> {
    const out = new Set<Role>(this.anonymous);
    if (principal.kind === 'anonymous') return out;
    for (const g of this.grants) {
      if (g.user !== '*' && g.user !== principal.name) continue;
      const applies = repository === undefined ? g.prefix === '' : repository.startsWith(g.prefix);
      if (applies) for (const r of expand(g.roles)) out.add(r);
    }
    return out;
  }

  allows(principal: Principal, role: Role, repository: string | undefined): boolean {
    return this.rolesOn(principal, repository).has(role);
  }

  /** True when the caller holds `role` on at least one prefix (catalog, pin list: then filtered per repository). */
  holdsAnywhere(principal: Principal, role: Role): boolean {
    if (this.anonymous.has(role)) return true;
    if (principal.kind === 'anonymous') return false;
    return this.grants.some((g) => (g.user === '*' || g.user === principal.name) && expand(g.roles).has(role));
  }

  /** Roles anonymous callers hold everywhere. */
  anonymousRoles(): Set<Role> {
    return new Set(this.anonymous);
  }
}

function expand(roles: readonly Role[]): Set<Role> {
  const out = new Set<Role>();
  for (const r of roles) for (const x of IMPLIED[r]) out.add(x);
  return out;
}

/** True for addresses of this host: 127.0.0.0/8, ::1, and their IPv4-mapped forms. */
export function isLoopbackAddress(address: string | undefined): boolean {
  if (!address) return false;
  const a = address.toLowerCase().replace(/^\[|\]$/g, '').replace(/%.*$/, '');
  if (a === '::1' || a === '0:0:0:0:0:0:0:1') return true;
  const v4 = a.startsWith('::ffff:') ? a.slice('::ffff:'.length) : a;
  return /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(v4);
}

/** True when a listen host only accepts connections from this host. */
export function isLoopbackHost(host: string): boolean {
  return host === 'localhost' || isLoopbackAddress(host);
}
