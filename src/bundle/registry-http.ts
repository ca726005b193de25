/**
 * A small OCI Distribution client for what SeedClient does not do: the referrers API of a source registry,
 * and pushing into a running node (upload sessions, mounts, manifests). Endpoint and TLS settings, Basic and
 * bearer-token auth and the reading of error bodies are SeedClient's own (src/upstream); no retries (an import
 * is resumable as a whole, and re-running it skips what is done).
 */
import { request, type Agent, type Dispatcher } from 'undici';
import { AbortedError, ShoalError, UnavailableError } from '../oci/index.ts';
import { RegistryAuth, RetryableFailure, openRegistryEndpoint, type RegistryEndpointOptions, type SentAuthorization } from '../upstream/index.ts';

export { errorCodeOf, errorMessageOf } from '../upstream/index.ts';

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
const USER_AGENT = 'shoal-bundle';

function flatten(headers: Dispatcher.ResponseData['headers']): Record<string, string | undefined> {
  const out: Record<string, string | undefined> = {};
  for (const [k, v] of Object.entries(headers)) out[k] = Array.isArray(v) ? v[0] : v;
  return out;
}

export class RegistryHttp {
  readonly url: string;
  private readonly origin: string;
  private readonly agent: Agent;
  private readonly timeoutMs: number;
  private readonly auth: RegistryAuth;

  constructor(opts: RegistryHttpOptions) {
    const endpoint = openRegistryEndpoint(opts);
    this.url = endpoint.url;
    this.origin = endpoint.origin;
    this.agent = endpoint.agent;
    this.timeoutMs = opts.timeoutMs ?? 30_000;
    this.auth = new RegistryAuth({
      agent: this.agent,
      basicAuthorization: endpoint.basicAuthorization,
      username: opts.username,
      userAgent: USER_AGENT,
      name: this.url,
      detail: { url: this.url },
      hints: { wrongCredentials: 'check the username and password', noCredentials: 'give a username and password' },
      timeoutMs: this.timeoutMs,
      headersTimeoutMs: this.timeoutMs,
      unreachable: (err, realm) => new UnavailableError(`token service ${realm.origin} of ${this.url} is unavailable: ${(err as Error).message}`, { url: this.url }),
    });
  }

  async close(): Promise<void> {
    await this.agent.destroy();
  }

  private scopeOf(req: HttpRequest): string | undefined {
    return req.repository ? `repository:${req.repository}:${req.push ? 'pull,push' : 'pull'}` : undefined;
  }

  /**
   * Sends a request and reads the answer. Credentials the registry asked for before go with it; a 401 is
   * answered once when the body can be sent again.
   */
  async send(req: HttpRequest): Promise<HttpAnswer> {
    const scope = this.scopeOf(req);
    const sent = await this.authorize(req, () => this.auth.known(scope, { signal: req.signal }));
    const first = await this.once(req, sent?.header);
    if (first.status !== 401 || (req.body !== undefined && !Buffer.isBuffer(req.body))) return first;
    const answer = await this.authorize(req, () => this.auth.answer(first.headers['www-authenticate'], scope, sent, { signal: req.signal }));
    if (!answer) return first;
    const second = await this.once(req, answer.header);
    if (second.status === 401) this.auth.refused(answer);
    return second;
  }

  /** Runs a step of authentication for `req`; without retries here, a token service's 5xx is simply unavailable. */
  private async authorize(req: HttpRequest, step: () => Promise<SentAuthorization | undefined>): Promise<SentAuthorization | undefined> {
    try {
      return await step();
    } catch (err) {
      if (req.signal?.aborted) throw new AbortedError(`${req.method} ${req.path} on ${this.url} was interrupted`);
      if (err instanceof RetryableFailure) throw err.error;
      throw err;
    }
  }

  private async once(req: HttpRequest, authorization: string | undefined): Promise<HttpAnswer> {
    const url = req.path.startsWith('http://') || req.path.startsWith('https://') ? new URL(req.path) : new URL(this.url + req.path);
    if (url.origin !== this.origin) throw new UnavailableError(`${this.url} sent a location on another origin (${url.origin}); Shoal does not follow it`);
    const headers: Record<string, string> = { 'user-agent': USER_AGENT, ...req.headers };
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
}
