/**
 * The pieces of registry authentication that are pure logic: parsing `WWW-Authenticate` challenges, the
 * pull scope of a repository, reading a token response, and a per-scope cache of bearer tokens.
 */

/** One parsed `WWW-Authenticate` challenge, e.g. `Bearer realm="https://auth.docker.io/token",service="registry.docker.io"`. */
export interface AuthChallenge {
  /** Lower-cased scheme: `bearer`, `basic`, or whatever else the registry sent. */
  scheme: string;
  /** Parameters with lower-cased names (`realm`, `service`, `scope`, `error`). */
  params: Record<string, string>;
}

/**
 * Parses a `WWW-Authenticate` header value (or several) into challenges. Handles quoted values with escaped
 * quotes and commas, and several challenges in one header.
 */
export function parseAuthChallenges(header: string | string[] | undefined): AuthChallenge[] {
  if (header === undefined) return [];
  const values = Array.isArray(header) ? header : [header];
  const challenges: AuthChallenge[] = [];
  for (const value of values) {
    let i = 0;
    let current: AuthChallenge | undefined;
    const skipSpace = (): void => {
      while (i < value.length && (value[i] === ' ' || value[i] === '\t' || value[i] === ',')) i++;
    };
    while (i < value.length) {
      skipSpace();
      const tokenMatch = /^[A-Za-z0-9!#$%&'*+.^_`|~-]+/.exec(value.slice(i));
      if (!tokenMatch) break;
      const token = tokenMatch[0];
      const after = i + token.length;
      let j = after;
      while (j < value.length && (value[j] === ' ' || value[j] === '\t')) j++;
      if (value[j] === '=' && current) {
        // A parameter of the current challenge.
        j++;
        while (j < value.length && (value[j] === ' ' || value[j] === '\t')) j++;
        let paramValue = '';
        if (value[j] === '"') {
          j++;
          while (j < value.length && value[j] !== '"') {
            if (value[j] === '\\' && j + 1 < value.length) j++;
            paramValue += value[j];
            j++;
          }
          j++; // closing quote
        } else {
          const bare = /^[^,\s]*/.exec(value.slice(j))![0];
          paramValue = bare;
          j += bare.length;
        }
        current.params[token.toLowerCase()] = paramValue;
        i = j;
      } else {
        // A new challenge's scheme (a token68 after it is ignored: registries do not use it).
        current = { scheme: token.toLowerCase(), params: {} };
        challenges.push(current);
        i = after;
      }
    }
  }
  return challenges;
}

/** The token-service scope that lets a client pull from `repository`. */
export function pullScope(repository: string): string {
  return `repository:${repository}:pull`;
}

/** A bearer token with the moment it stops being usable. */
export interface BearerToken {
  token: string;
  /** Epoch milliseconds after which the token is no longer sent. */
  expiresAt: number;
}

/** Lifetime assumed when a token response has no `expires_in` (the distribution token spec's default). */
export const DEFAULT_TOKEN_LIFETIME_S = 60;

/**
 * Reads a token-service response body: `token` or `access_token`, and `expires_in` seconds (default 60).
 * The token is dropped from the cache a little before it expires (a tenth of its life, at most 10 s), so a
 * request never leaves with a token that runs out in flight. Returns undefined when the body holds no token.
 */
export function readTokenResponse(body: unknown, now: number): BearerToken | undefined {
  if (typeof body !== 'object' || body === null) return undefined;
  const record = body as Record<string, unknown>;
  const token = typeof record.token === 'string' && record.token ? record.token : typeof record.access_token === 'string' ? record.access_token : '';
  if (!token) return undefined;
  const expiresIn = typeof record.expires_in === 'number' && Number.isFinite(record.expires_in) && record.expires_in > 0 ? record.expires_in : DEFAULT_TOKEN_LIFETIME_S;
  const lifetimeMs = expiresIn * 1000;
  return { token, expiresAt: now + lifetimeMs - Math.min(10_000, lifetimeMs / 10) };
}

/** Bearer tokens by (realm, service, scope); one instance per SeedClient. */
export class BearerTokenCache {
  private readonly tokens = new Map<string, BearerToken>();
  private readonly now: () => number;
  constructor(now: () => number = Date.now) {
    this.now = now;
  }
  static key(realm: string, service: string | undefined, scope: string | undefined): string {
    return JSON.stringify([realm, service ?? '', scope ?? '']);
  }
  get(key: string): string | undefined {
    const entry = this.tokens.get(key);
    if (!entry) return undefined;
    if (entry.expiresAt <= this.now()) {
      this.tokens.delete(key);
      return undefined;
    }
    return entry.token;
  }
  set(key: string, token: BearerToken): void {
    const now = this.now();
    for (const [k, v] of this.tokens) if (v.expiresAt <= now) this.tokens.delete(k);
    this.tokens.set(key, token);
  }
  delete(key: string): void {
    this.tokens.delete(key);
  }
}
