/**
 * How a client authenticates to one registry: anonymous until challenged; then Basic credentials, or a bearer
 * token per scope from the token service the challenge names (with the Basic credentials, when configured).
 * Once challenged, credentials go with the first request. One instance per client; the HTTP of the registry
 * itself stays with the client, this only talks to the token service.
 */
import { request, type Agent } from 'undici';
import { ShoalError, UnavailableError } from '../oci/index.ts';
import { BearerTokenCache, parseAuthChallenges, readTokenResponse } from './auth.ts';
import { readErrorMessage, registrySaid } from './error-body.ts';
import { RetryableFailure, parseRetryAfter } from './transport.ts';

const MAX_TOKEN_BODY_BYTES = 1024 * 1024;

/** The Authorization a request carried, to know what a 401 refused. */
export interface SentAuthorization {
  header: string;
  kind: 'basic' | 'bearer';
  /** Token-cache key of a bearer token. */
  key?: string;
}

export interface RegistryAuthOptions {
  /** The connection pool of the registry's endpoint (its TLS settings apply to the token service too). */
  agent: Agent;
  /** `Basic ...` when credentials are configured. */
  basicAuthorization?: string;
  /** The configured user, for messages. */
  username?: string;
  userAgent: string;
  /** How messages name the registry: `seed http://...`, or its URL. */
  name: string;
  /** Structured detail every error carries, e.g. `{ seed: url }`. */
  detail: Record<string, unknown>;
  /** What to tell the user when the token service refuses configured credentials, and when none are configured. */
  hints: { wrongCredentials: string; noCredentials: string };
  /** Token requests: the longest pause in the body. */
  timeoutMs: number;
  /** Token requests: until the response headers. Unset: as long as the caller's signal allows. */
  headersTimeoutMs?: number;
  /**
   * What a network failure of the token request becomes. Unset: the error is thrown as it is (a client that
   * classifies and retries network failures itself).
   */
  unreachable?: (err: unknown, realm: URL) => Error;
}

/**
 * Thrown errors: ShoalError('UNAUTHORIZED') when the token service refuses, UnavailableError when it answers
 * nonsense, RetryableFailure when it answers 5xx or 429, and network errors as `unreachable` says.
 */
export class RegistryAuth {
  private readonly options: RegistryAuthOptions;
  private readonly tokens = new BearerTokenCache();
  /** What the registry asked for last time it challenged: after that, credentials go with the first request. */
  private learned?: { kind: 'basic' } | { kind: 'bearer'; realm: string; service?: string };
  /** The scope the token service named, by the scope the client would have asked for, when they differ. */
  private readonly namedScopes = new Map<string, string>();

  constructor(options: RegistryAuthOptions) {
    this.options = options;
  }

  /**
   * Credentials to send up front, once a challenge has told which kind the registry wants. `scope` is the
   * token scope the request needs (`repository:<name>:pull`), undefined for requests outside a repository.
   */
  async known(scope: string | undefined, io: { signal?: AbortSignal } = {}): Promise<SentAuthorization | undefined> {
    const learned = this.learned;
    if (!learned) return undefined;
    const basic = this.options.basicAuthorization;
    if (learned.kind === 'basic') return basic ? { header: basic, kind: 'basic' } : undefined;
    const wanted = scope !== undefined ? (this.namedScopes.get(scope) ?? scope) : undefined;
    const key = BearerTokenCache.key(learned.realm, learned.service, wanted);
    const token = this.tokens.get(key) ?? (await this.fetchToken(learned.realm, learned.service, wanted, key, io));
    return { header: `Bearer ${token}`, kind: 'bearer', key };
  }

  /**
   * The Authorization that answers a 401 with this `WWW-Authenticate`, or undefined when there is nothing (more)
   * to try: no credentials for a Basic challenge, the same credentials already refused, or a token that already
   * had the scope the registry asks for.
   */
  async answer(
    challenge: string | string[] | undefined,
    scope: string | undefined,
    sent: SentAuthorization | undefined,
    io: { signal?: AbortSignal } = {},
  ): Promise<SentAuthorization | undefined> {
    const challenges = parseAuthChallenges(challenge);
    const bearer = challenges.find((c) => c.scheme === 'bearer' && c.params.realm);
    const basic = this.options.basicAuthorization;
    if (bearer) {
      const realm = bearer.params.realm!;
      const service = bearer.params.service;
      const wanted = bearer.params.scope ?? scope;
      this.learned = { kind: 'bearer', realm, service };
      if (scope !== undefined && bearer.params.scope) this.namedScopes.set(scope, bearer.params.scope);
      const key = BearerTokenCache.key(realm, service, wanted);
      this.tokens.delete(key);
      if (sent?.kind === 'bearer' && sent.key === key && bearer.params.error === 'insufficient_scope') return undefined;
      const token = await this.fetchToken(realm, service, wanted, key, io);
      return { header: `Bearer ${token}`, kind: 'bearer', key };
    }
    if (challenges.some((c) => c.scheme === 'basic') && basic && sent?.kind !== 'basic') {
      this.learned = { kind: 'basic' };
      return { header: basic, kind: 'basic' };
    }
    return undefined;
  }

  /** The registry refused `sent` even so: a token is not used again. */
  refused(sent: SentAuthorization): void {
    if (sent.key) this.tokens.delete(sent.key);
  }

  /** Asks the token service for a token for `scope` (with basic credentials when configured) and caches it. */
  private async fetchToken(realm: string, service: string | undefined, scope: string | undefined, key: string, io: { signal?: AbortSignal }): Promise<string> {
    const { name, detail, username, basicAuthorization, timeoutMs } = this.options;
    let url: URL;
    try {
      url = new URL(realm);
    } catch {
      throw new UnavailableError(`${name} named a token realm ${JSON.stringify(realm)} that is not a URL`, { ...detail });
    }
    if (url.protocol !== 'http:' && url.protocol !== 'https:') {
      throw new UnavailableError(`${name} named a token realm ${realm} that is not http(s)`, { ...detail });
    }
    if (service) url.searchParams.set('service', service);
    if (scope) url.searchParams.set('scope', scope);
    const headers: Record<string, string> = { accept: 'application/json', 'user-agent': this.options.userAgent };
    if (basicAuthorization) headers.authorization = basicAuthorization;
    let res;
    try {
      res = await request(url, { method: 'GET', headers, signal: io.signal, dispatcher: this.options.agent, headersTimeout: this.options.headersTimeoutMs, bodyTimeout: timeoutMs });
    } catch (err) {
      throw this.options.unreachable ? this.options.unreachable(err, url) : err;
    }
    const who = username !== undefined ? `the credentials of user "${username}"` : 'anonymous access';
    if (res.statusCode === 200) {
      const chunks: Buffer[] = [];
      let size = 0;
      for await (const chunk of res.body) {
        const buf = Buffer.from(chunk as Uint8Array);
        size += buf.length;
        if (size > MAX_TOKEN_BODY_BYTES) {
          res.body.on('error', () => undefined);
          res.body.destroy();
          throw new UnavailableError(`token service ${realm} of ${name} sent an oversized answer`, { ...detail });
        }
        chunks.push(buf);
      }
      let parsed: unknown;
      try {
        parsed = JSON.parse(Buffer.concat(chunks, size).toString('utf8'));
      } catch {
        parsed = undefined;
      }
      const token = readTokenResponse(parsed, Date.now());
      if (!token) throw new UnavailableError(`token service ${realm} of ${name} answered without a token`, { ...detail, realm });
      this.tokens.set(key, token);
      return token.token;
    }
    const status = res.statusCode;
    const said = registrySaid(await readErrorMessage(res.body));
    if (status >= 500 || status === 429) {
      throw new RetryableFailure(
        new UnavailableError(`token service ${realm} of ${name} answered HTTP ${status}${said}`, { ...detail, realm, status }),
        parseRetryAfter(res.headers['retry-after']),
      );
    }
    if (status === 401 || status === 403) {
      throw new ShoalError(
        'UNAUTHORIZED',
        `token service ${realm} of ${name} refused ${who} for ${scope ?? 'access'} (HTTP ${status}${said}): ` +
          (username !== undefined ? this.options.hints.wrongCredentials : this.options.hints.noCredentials),
        { ...detail, realm, scope, status },
      );
    }
    throw new UnavailableError(`token service ${realm} of ${name} answered HTTP ${status}${said}`, { ...detail, realm, status });
  }
}
