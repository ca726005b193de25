/**
 * A small OCI Distribution client for what SeedClient does not do: the referrers API of a source registry,
 * and pushing into a running node (upload sessions, mounts, manifests). Basic and bearer-token auth, TLS
 * options like a seed's, no retries (an import is resumable as a whole, and re-running it skips what is done).
 */
import { request, type Agent, type Dispatcher } from 'undici';
import { AbortedError, ShoalError, UnavailableError } from '../oci/index.ts';
import { openRegistryEndpoint, parseAuthChallenges, readTokenResponse, type RegistryEndpointOptions } from '../upstream/index.ts';

export interface RegistryHttpOptions extends RegistryEndpointOptions {
  /** For requests without a (large) body: until the whole answer. Default 30 s. */
  timeoutMs?: number;
}

export interface HttpAnswer {
  status: number;
  headers: Record<string, string | undefined>;
  body: Buffer;
}

export interface HttpRequest {
  method: 'GET' | 'HEAD' | 'POST' | 'PUT' | 'PATCH' | 'DELETE';
  /** Path and query under the base URL, or an absolute URL on the same origin (an upload Location). */
  path: string;
  headers?: Record<string, string>;
  body?: Buffer | AsyncIterable<Uint8Array>;
  /** Repository, for the token scope. */
  repository?: string;
  /** Pushing needs a `pull,push` token. */
  push?: boolean;
  signal?: AbortSignal;
}

const MAX_ANSWER_BYTES = 8 * 1024 * 1024;

function flatten(headers: Dispatcher.ResponseData['headers']): Record<string, string | undefined> {
  const out: Record<string, string | undefined> = {};
  for (const [k, v] of Object.entries(headers)) out[k] = Array.isArray(v) ? v[0] : v;
  return out;
}

/** The message of an OCI error body (`CODE: message`), or the start of the text. */
export function errorMessageOf(body: Buffer): string {
  const text = body.toString('utf8').trim();
  try {
    const first = (JSON.parse(text) as { errors?: Array<{ code?: string; message?: string }> }).errors?.[0];
    if (first) return [first.code, first.message].filter(Boolean).join(': ');
  } catch {
    // not JSON
  }
  return text.replace(/\s+/g, ' ').slice(0, 200);
}

/** The OCI error code of an error body, if it has one. */
export function errorCodeOf(body: Buffer): string | undefined {
  try {
    return (JSON.parse(body.toString('utf8')) as { errors?: Array<{ code?: string }> }).errors?.[0]?.code;
  } catch {
    return undefined;
  }
}

export class RegistryHttp {
  readonly url: string;
  private readonly origin: string;
  private readonly agent: Agent;
  private readonly basic?: string;
  private readonly timeoutMs: number;
  /** Authorization that worked, by token scope ('' for basic). */
  private readonly authorizations = new Map<string, string>();

  constructor(opts: RegistryHttpOptions) {
    const endpoint = openRegistryEndpoint(opts);
    this.url = endpoint.url;
    this.origin = endpoint.origin;
    this.basic = endpoint.basicAuthorization;
    this.agent = endpoint.agent;
    this.timeoutMs = opts.timeoutMs ?? 30_000;
  }

  async close(): Promise<void> {
    await this.agent.destroy();
  }

  private scopeOf(req: HttpRequest): string {
    return req.repository ? `repository:${req.repository}:${req.push ? 'pull,push' : 'pull'}` : '';
  }

  /** Sends a request (answering one auth challenge when the body can be sent again) and reads the answer. */
  async send(req: HttpRequest): Promise<HttpAnswer> {
    const scope = this.scopeOf(req);
    const known = this.authorizations.get(scope) ?? this.authorizations.get('');
    const first = await this.once(req, known);
    if (first.status !== 401 || (req.body !== undefined && !Buffer.isBuffer(req.body))) return first;
    const authorization = await this.answerChallenge(first.headers['www-authenticate'], scope, req.signal);
    if (!authorization || authorization === known) return first;
    const second = await this.once(req, authorization);
    if (second.status !== 401) this.authorizations.set(authorization.startsWith('Basic') ? '' : scope, authorization);
    return second;
  }

  private async once(req: HttpRequest, authorization: string | undefined): Promise<HttpAnswer> {
    const url = req.path.startsWith('http://') || req.path.startsWith('https://') ? new URL(req.path) : new URL(this.url + req.path);
    if (url.origin !== this.origin) throw new UnavailableError(`${this.url} sent a location on another origin (${url.origin}); Shoal does not follow it`);
    const headers: Record<string, string> = { 'user-agent': 'shoal-bundle', ...req.headers };
    if (authorization) headers.authorization = authorization;
    const streaming = req.body !== undefined && !Buffer.isBuffer(req.body);
    const timeout = streaming ? undefined : AbortSignal.timeout(this.timeoutMs);
    const signal = req.signal && timeout ? AbortSignal.any([req.signal, timeout]) : (req.signal ?? timeout);
    try {
      const res = await request(url, {
        method: req.method,
        headers,
        body: req.body as Dispatcher.DispatchOptions['body'],
        signal,
        dispatcher: this.agent,
        // A node fsyncs a large blob before it answers.
        headersTimeout: streaming ? 600_000 : this.timeoutMs,
        bodyTimeout: this.timeoutMs,
      });
      const chunks: Buffer[] = [];
      let size = 0;
      for await (const c of res.body) {
        size += (c as Buffer).length;
        if (size > MAX_ANSWER_BYTES) {
          res.body.destroy();
          throw new UnavailableError(`${this.url} sent an answer of more than ${MAX_ANSWER_BYTES} bytes to ${req.method} ${url.pathname}`);
        }
        chunks.push(c as Buffer);
      }
      return { status: res.statusCode, headers: flatten(res.headers), body: Buffer.concat(chunks) };
    } catch (err) {
      if (err instanceof ShoalError) throw err;
      if (req.signal?.aborted) throw new AbortedError(`${req.method} ${url.pathname} on ${this.url} was interrupted`);
      const code = (err as { code?: string; cause?: { code?: string } }).code ?? (err as { cause?: { code?: string } }).cause?.code;
      const hint = code === 'ECONNREFUSED' ? ' (is it running, and are the host and port right?)' : '';
      const why = timeout?.aborted ? `no answer within ${this.timeoutMs} ms` : `${(err as Error).message}${code ? ` [${code}]` : ''}${hint}`;
      throw new UnavailableError(`${this.url} is unavailable for ${req.method} ${url.pathname}: ${why}`, { url: this.url });
    }
  }

  private async answerChallenge(header: string | undefined, scope: string, signal?: AbortSignal): Promise<string | undefined> {
    const challenges = parseAuthChallenges(header);
    const bearer = challenges.find((c) => c.scheme === 'bearer' && c.params.realm);
    if (bearer) {
      const realm = new URL(bearer.params.realm!);
      if (bearer.params.service) realm.searchParams.set('service', bearer.params.service);
      const wanted = bearer.params.scope ?? scope;
      if (wanted) realm.searchParams.set('scope', wanted);
      const headers: Record<string, string> = { accept: 'application/json' };
      if (this.basic) headers.authorization = this.basic;
      let res: Dispatcher.ResponseData;
      try {
        res = await request(realm, { method: 'GET', headers, dispatcher: this.agent, signal, headersTimeout: this.timeoutMs, bodyTimeout: this.timeoutMs });
      } catch (err) {
        throw new UnavailableError(`token service ${realm.origin} of ${this.url} is unavailable: ${(err as Error).message}`);
      }
      const text = await res.body.text();
      if (res.statusCode !== 200) {
        throw new ShoalError('UNAUTHORIZED', `token service of ${this.url} refused ${this.basic ? 'the credentials' : 'anonymous access'} (HTTP ${res.statusCode}); check the username and password`);
      }
      let parsed: unknown;
      try {
        parsed = JSON.parse(text);
      } catch {
        parsed = undefined;
      }
      const token = readTokenResponse(parsed, Date.now());
      if (!token) throw new UnavailableError(`token service of ${this.url} answered without a token`);
      return `Bearer ${token.token}`;
    }
    if (challenges.some((c) => c.scheme === 'basic') && this.basic) return this.basic;
    return undefined;
  }
}
