/**
 * SeedClient: reads images from the seed registry (the one outside the cluster, or the one the bundle came
 * from) over the OCI distribution API. Handles anonymous, basic and bearer-token auth, retries transient
 * failures with backoff, times out quiet requests, follows blob redirects, and verifies everything it returns:
 * manifests by digest before returning, blobs while streaming.
 */
import { Readable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { request, type Agent, type Dispatcher } from 'undici';
import {
  ACCEPTED_MANIFEST_TYPES,
  AbortedError,
  Digest,
  DigestMismatchError,
  InvalidError,
  MediaType,
  NotFoundError,
  ShoalError,
  UnavailableError,
  UnsupportedError,
  baseMediaType,
  parseManifest,
  validateRepositoryName,
  validateTag,
} from '../oci/index.ts';
import { pullScope } from './auth.ts';
import { readErrorMessage, registrySaid as said } from './error-body.ts';
import { RegistryAuth, type SentAuthorization } from './registry-auth.ts';
import { openRegistryEndpoint, type RegistryEndpointOptions } from './endpoint.ts';
import { AttemptDeadline, RetryableFailure, backoffDelay, classifyFailure, parseRetryAfter } from './transport.ts';
import { exactLengthBytes, verifiedBlobBytes, type ByteRange } from './verified-bytes.ts';

export type { ByteRange } from './verified-bytes.ts';

/** Every manifest type Shoal understands, sent as `Accept` on manifest requests. */
export const MANIFEST_ACCEPT: string = [MediaType.OciManifest, MediaType.OciIndex, MediaType.DockerManifest, MediaType.DockerManifestList].join(', ');
/** Manifests larger than this are refused (distribution's own limit). */
export const MAX_MANIFEST_BYTES = 4 * 1024 * 1024;
/** Timeout for HEAD, manifest, tag-list and token requests when `timeoutMs` is not set. */
export const DEFAULT_METADATA_TIMEOUT_MS = 5_000;
/** Timeout until a blob body's first byte when `timeoutMs` is not set. */
export const DEFAULT_BLOB_TIMEOUT_MS = 30_000;
/** A blob body that sends nothing for this long fails. */
export const DEFAULT_BODY_IDLE_TIMEOUT_MS = 60_000;
export const DEFAULT_RETRIES = 3;
export const DEFAULT_RETRY_DELAY_MS = 250;
const MAX_RETRY_DELAY_MS = 10_000;
const MAX_REDIRECTS = 5;

/** The part of a pino logger SeedClient uses. */
export interface SeedLogger {
  warn(obj: Record<string, unknown>, msg: string): void;
}

export interface SeedClientOptions extends RegistryEndpointOptions {
  /**
   * Per-attempt timeout in milliseconds for every request: until the whole response for manifests, HEAD, tags and
   * tokens; until the first byte for blobs. Unset: 5 s for metadata, 30 s for blobs.
   */
  timeoutMs?: number;
  /** Retries after a 5xx, 429, connection failure or timeout (never after another 4xx). Default 3. */
  retries?: number;
  /** Delay before the first retry; doubles each time (at most 10 s), with jitter. Default 250 ms. */
  retryDelayMs?: number;
  /** A blob body that sends no bytes for this long fails with UnavailableError. Default 60 s. */
  bodyIdleTimeoutMs?: number;
  userAgent?: string;
  logger?: SeedLogger;
}

export type { IoOptions } from '../oci/index.ts';
import type { IoOptions } from '../oci/index.ts';

export interface ResolvedTag {
  digest: string;
  mediaType: string;
  size: number;
}

export interface SeedManifest {
  bytes: Buffer;
  mediaType: string;
  /** The digest the bytes hash to (the requested one when a digest was asked for). */
  digest: string;
}

export interface SeedBlob {
  /**
   * The bytes. For a whole blob the stream verifies as it goes and fails with DigestMismatchError at the end
   * (holding back its last piece) when the bytes are not the digest's; it fails with UnavailableError or
   * AbortedError when the transfer breaks.
   */
  stream: Readable;
  /** Total size of the blob (not of the range). */
  size: number;
  /** 200 for a whole body, 206 for a partial one. */
  status: number;
  /** The bytes the stream carries, `end` inclusive; undefined for the whole blob. */
  range?: ByteRange;
  /** True when the stream checks the digest itself (whole bodies); a 206 range cannot be checked here. */
  verified: boolean;
}

export interface BlobRequestOptions extends IoOptions {
  /** Only these bytes; `end` inclusive, as in HTTP. */
  range?: ByteRange;
  /**
   * Who checks a whole blob's digest: this stream ("stream", the default), or the caller, which hashes the bytes
   * anyway (the store's hashing thread) and must then check them before it trusts or releases them ("caller": the
   * stream checks only the length, and `verified` is false). A ranged request is always checked here.
   */
  verify?: 'stream' | 'caller';
}

type Headers = Record<string, string | string[] | undefined>;

interface SeedResponse {
  status: number;
  headers: Headers;
  body: Dispatcher.ResponseData['body'];
  /** Where the response finally came from (after redirects). */
  url: URL;
}

/** One logical request to the seed: what to send and how to describe it. */
interface Exchange {
  method: 'GET' | 'HEAD';
  /** Path and query under the base URL, e.g. `/v2/library/nginx/manifests/1.27`. */
  path: string;
  repository?: string;
  headers: Record<string, string>;
  /** `metadata` gets the short timeout for the whole response; `blob` the long one until headers. */
  kind: 'metadata' | 'blob';
  /** For messages: "manifest library/nginx:1.27". */
  what: string;
  notFound: 'MANIFEST_UNKNOWN' | 'BLOB_UNKNOWN' | 'NAME_UNKNOWN';
  /** Statuses handed to the caller; others become errors or retries. */
  accept: readonly number[];
}

/** The pieces of an answered exchange a caller needs to read the body under the same deadline. */
interface Answered {
  response: SeedResponse;
  attempt: AttemptDeadline;
}

function header(headers: Headers, name: string): string | undefined {
  const value = headers[name];
  return Array.isArray(value) ? value[0] : value;
}

function contentLength(headers: Headers): number | undefined {
  const value = header(headers, 'content-length');
  if (value === undefined || !/^\d+$/.test(value.trim())) return undefined;
  const n = Number(value.trim());
  return Number.isSafeInteger(n) ? n : undefined;
}

/**
 * Closes a body nobody will read. Destroying an undici body that has not ended makes it emit an abort error;
 * the listener keeps that from becoming an uncaught exception.
 */
function dropBody(body: { on(event: 'error', listener: (err: Error) => void): unknown; destroy(): void }): void {
  body.on('error', () => undefined);
  body.destroy();
}

/** Reads a body fully, calling `tooLarge` (which throws) as soon as it passes `limit`. */
async function readBody(body: Dispatcher.ResponseData['body'], limit: number, tooLarge: (size: number) => never): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of body) {
    const buf = typeof chunk === 'string' ? Buffer.from(chunk) : Buffer.from(chunk);
    size += buf.length;
    if (size > limit) {
      dropBody(body);
      tooLarge(size);
    }
    chunks.push(buf);
  }
  return Buffer.concat(chunks, size);
}

async function discard(response: SeedResponse): Promise<void> {
  try {
    await response.body.dump({ limit: 64 * 1024 });
  } catch {
    // the connection is dropped instead of reused; nothing to report
  }
}

/** A client for one seed registry. Holds a connection pool: call `close()` when done. */
export class SeedClient {
  /** The base URL without a trailing slash, as named in every error message. */
  readonly url: string;
  private readonly origin: string;
  /** The URL's path prefix without a trailing slash, usually empty. */
  private readonly basePath: string;
  private readonly agent: Agent;
  private readonly username?: string;
  private readonly basicAuthorization?: string;
  private readonly metadataTimeoutMs: number;
  private readonly blobTimeoutMs: number;
  private readonly bodyIdleTimeoutMs: number;
  private readonly retries: number;
  private readonly retryDelayMs: number;
  private readonly userAgent: string;
  private readonly logger?: SeedLogger;
  private readonly auth: RegistryAuth;

  constructor(options: SeedClientOptions) {
    const endpoint = openRegistryEndpoint(options, 'seed');
    this.url = endpoint.url;
    this.origin = endpoint.origin;
    this.basePath = endpoint.basePath;
    this.basicAuthorization = endpoint.basicAuthorization;
    this.agent = endpoint.agent;
    this.username = options.username;
    this.metadataTimeoutMs = options.timeoutMs ?? DEFAULT_METADATA_TIMEOUT_MS;
    this.blobTimeoutMs = options.timeoutMs ?? DEFAULT_BLOB_TIMEOUT_MS;
    this.bodyIdleTimeoutMs = options.bodyIdleTimeoutMs ?? DEFAULT_BODY_IDLE_TIMEOUT_MS;
    this.retries = Math.max(0, Math.floor(options.retries ?? DEFAULT_RETRIES));
    this.retryDelayMs = options.retryDelayMs ?? DEFAULT_RETRY_DELAY_MS;
    this.userAgent = options.userAgent ?? 'shoal';
    this.logger = options.logger;
    this.auth = new RegistryAuth({
      agent: this.agent,
      basicAuthorization: this.basicAuthorization,
      username: this.username,
      userAgent: this.userAgent,
      name: `seed ${this.url}`,
      detail: { seed: this.url },
      hints: { wrongCredentials: 'check the username and password configured for this seed', noCredentials: 'configure a username and password for this seed' },
      timeoutMs: this.metadataTimeoutMs,
    });
  }

  /** Releases every connection; requests and streams still running fail. */
  async close(): Promise<void> {
    await this.agent.destroy();
  }

  /** True when the seed answers `GET /v2/` with 200 or 401 within the metadata timeout. One attempt, no auth. */
  async ping(opts: IoOptions = {}): Promise<boolean> {
    if (opts.signal?.aborted) throw new AbortedError(`a ping of seed ${this.url} was aborted`);
    const attempt = new AttemptDeadline(this.metadataTimeoutMs, opts.signal);
    try {
      const res = await request(`${this.url}/v2/`, {
        method: 'GET',
        headers: { 'user-agent': this.userAgent },
        signal: attempt.signal,
        dispatcher: this.agent,
      });
      await res.body.dump({ limit: 64 * 1024 }).catch(() => undefined);
      return res.statusCode === 200 || res.statusCode === 401;
    } catch (err) {
      const failure = classifyFailure(err, attempt, this.url, 'a ping');
      if (failure instanceof AbortedError) throw failure;
      return false;
    } finally {
      attempt.settle();
    }
  }

  /**
   * The digest, media type and size a tag (or digest) points to, by HEAD; by GET and hashing when the seed's
   * HEAD does not say the digest.
   */
  async resolveTag(repository: string, tag: string, opts: IoOptions = {}): Promise<ResolvedTag> {
    const reference = this.checkReference(repository, tag);
    const what = `manifest ${this.describe(repository, reference)}`;
    const head = await this.perform(
      {
        method: 'HEAD',
        path: `/v2/${repository}/manifests/${reference}`,
        repository,
        headers: { accept: MANIFEST_ACCEPT },
        kind: 'metadata',
        what,
        notFound: 'MANIFEST_UNKNOWN',
        accept: [200, 405],
      },
      opts,
      async ({ response }) => {
        await discard(response);
        if (response.status !== 200) return undefined;
        const digest = header(response.headers, 'docker-content-digest');
        const mediaType = baseMediaType(header(response.headers, 'content-type'));
        const size = contentLength(response.headers);
        if (digest === undefined || !Digest.isValid(digest) || size === undefined || !ACCEPTED_MANIFEST_TYPES.includes(mediaType)) return undefined;
        if (Digest.isValid(reference) && digest !== reference) {
          throw new DigestMismatchError(reference, digest, `seed ${this.url} answered ${what} with Docker-Content-Digest ${digest}`);
        }
        return { digest, mediaType, size };
      },
    );
    if (head) return head;
    const manifest = await this.getManifest(repository, reference, opts);
    return { digest: manifest.digest, mediaType: manifest.mediaType, size: manifest.bytes.length };
  }

  /**
   * A manifest's bytes and media type. A digest reference is verified (DigestMismatchError otherwise); a tag's
   * bytes are checked against the seed's Docker-Content-Digest when it sends one. At most 4 MiB.
   */
  async getManifest(repository: string, reference: string, opts: IoOptions = {}): Promise<SeedManifest> {
    const ref = this.checkReference(repository, reference);
    const expected = Digest.isValid(ref) ? Digest.parse(ref) : undefined;
    const what = `manifest ${this.describe(repository, ref)}`;
    return this.perform(
      {
        method: 'GET',
        path: `/v2/${repository}/manifests/${ref}`,
        repository,
        headers: { accept: MANIFEST_ACCEPT },
        kind: 'metadata',
        what,
        notFound: 'MANIFEST_UNKNOWN',
        accept: [200],
      },
      opts,
      async ({ response }) => {
        const tooLarge = (size: number): never => {
          throw new InvalidError('PAYLOAD_TOO_LARGE', `seed ${this.url} sent ${what} of ${size} bytes or more; manifests are limited to ${MAX_MANIFEST_BYTES} bytes`, {
            seed: this.url,
            size,
          });
        };
        const declared = contentLength(response.headers);
        if (declared !== undefined && declared > MAX_MANIFEST_BYTES) {
          dropBody(response.body);
          tooLarge(declared);
        }
        const bytes = await readBody(response.body, MAX_MANIFEST_BYTES, tooLarge);
        let digest: string;
        if (expected) {
          const actual = Digest.of(bytes, expected.algorithm);
          if (!actual.equals(expected)) {
            throw new DigestMismatchError(expected.toString(), actual.toString(), `seed ${this.url} sent ${what} whose bytes hash to ${actual}`);
          }
          digest = expected.toString();
        } else {
          digest = Digest.of(bytes).toString();
        }
        const announced = header(response.headers, 'docker-content-digest');
        if (announced !== undefined && Digest.isValid(announced)) {
          const wanted = Digest.parse(announced);
          const actual = Digest.of(bytes, wanted.algorithm);
          if (!actual.equals(wanted)) {
            throw new DigestMismatchError(announced, actual.toString(), `seed ${this.url} sent ${what} whose bytes hash to ${actual}, but its Docker-Content-Digest says ${announced}`);
          }
        }
        const { mediaType } = parseManifest(bytes, header(response.headers, 'content-type'));
        return { bytes, mediaType, digest };
      },
    );
  }

  /**
   * A blob's bytes as a stream, the whole blob or `range`. Redirects are followed (the Authorization header is
   * not sent to another origin). A whole blob is verified while streaming; a 206 answer is checked against
   * Content-Range and its length. When the seed ignores the Range and sends everything, the whole body is
   * still verified and only the range is passed on.
   */
  async getBlob(repository: string, digest: string, opts: BlobRequestOptions = {}): Promise<SeedBlob> {
    validateRepositoryName(repository);
    const expected = Digest.parse(digest);
    const range = opts.range;
    if (range && !(Number.isSafeInteger(range.start) && Number.isSafeInteger(range.end) && range.start >= 0 && range.end >= range.start)) {
      throw new InvalidError('RANGE_INVALID', `invalid byte range ${JSON.stringify(range)}: need integers 0 <= start <= end (end inclusive)`);
    }
    const what = `blob ${repository}@${digest}${range ? ` bytes ${range.start}-${range.end}` : ''}`;
    const source = `${what} from seed ${this.url}`;
    const blob = await this.perform(
      {
        method: 'GET',
        path: `/v2/${repository}/blobs/${digest}`,
        repository,
        headers: range ? { range: `bytes=${range.start}-${range.end}` } : {},
        kind: 'blob',
        what,
        notFound: 'BLOB_UNKNOWN',
        accept: range ? [200, 206] : [200],
      },
      opts,
      async ({ response, attempt }) => {
        const mapError = (err: unknown): Error => {
          const failure = classifyFailure(err, attempt, this.url, what);
          return failure instanceof RetryableFailure ? failure.error : failure;
        };
        if (response.status === 206) {
          const served = /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec((header(response.headers, 'content-range') ?? '').trim());
          const start = served ? Number(served[1]) : NaN;
          const end = served ? Number(served[2]) : NaN;
          const total = served && served[3] !== '*' ? Number(served[3]) : undefined;
          const wantedEnd = total !== undefined ? Math.min(range!.end, total - 1) : range!.end;
          if (!served || start !== range!.start || end !== wantedEnd || (total !== undefined && end >= total)) {
            dropBody(response.body);
            throw new UnavailableError(
              `seed ${this.url} answered ${what} with Content-Range ${JSON.stringify(header(response.headers, 'content-range') ?? null)}, which is not the range asked for`,
              { seed: this.url },
            );
          }
          const length = end - start + 1;
          const stream = Readable.from(exactLengthBytes(response.body, length, source, mapError), { objectMode: false });
          return { stream, size: total, status: 206, range: { start, end }, verified: false };
        }
        const declared = contentLength(response.headers);
        let slice: ByteRange | undefined;
        if (range) {
          if (declared !== undefined && range.start >= declared) {
            dropBody(response.body);
            throw new InvalidError('RANGE_INVALID', `${what}: the blob has only ${declared} bytes`, { size: declared });
          }
          slice = { start: range.start, end: declared !== undefined ? Math.min(range.end, declared - 1) : range.end };
        }
        const hash = slice !== undefined || opts.verify !== 'caller';
        const stream = Readable.from(verifiedBlobBytes(response.body, { digest: expected, declaredLength: declared, slice, source, mapError, hash }), {
          objectMode: false,
        });
        return { stream, size: declared, status: 200, range: slice, verified: hash };
      },
    );
    let size = blob.size;
    if (size === undefined) {
      // The seed sent no total (chunked body, or Content-Range with "*"): ask for it.
      size = await this.statBlob(repository, digest, opts).catch((err: unknown) => {
        blob.stream.destroy();
        throw err;
      });
      if (size === undefined) {
        blob.stream.destroy();
        throw new UnavailableError(`seed ${this.url} served ${what} but does not say its size`, { seed: this.url });
      }
    }
    return { ...blob, size };
  }

  /** The size of a blob by HEAD, or undefined when the seed does not have it. */
  async statBlob(repository: string, digest: string, opts: IoOptions = {}): Promise<number | undefined> {
    validateRepositoryName(repository);
    Digest.parse(digest);
    const what = `blob ${repository}@${digest}`;
    return this.perform(
      {
        method: 'HEAD',
        path: `/v2/${repository}/blobs/${digest}`,
        repository,
        headers: {},
        kind: 'metadata',
        what,
        notFound: 'BLOB_UNKNOWN',
        accept: [200, 404],
      },
      opts,
      async ({ response }) => {
        await discard(response);
        if (response.status === 404) return undefined;
        const size = contentLength(response.headers);
        if (size === undefined) throw new UnavailableError(`seed ${this.url} answered HEAD ${what} without a Content-Length`, { seed: this.url });
        return size;
      },
    );
  }

  /** Every tag of a repository, following `Link` pagination. NotFoundError('NAME_UNKNOWN') for an unknown repository. */
  async listTags(repository: string, opts: IoOptions = {}): Promise<string[]> {
    validateRepositoryName(repository);
    const tags: string[] = [];
    let path: string | undefined = `/v2/${repository}/tags/list?n=1000`;
    for (let page = 0; path !== undefined && page < 1000; page++) {
      const current: string = path;
      const result: { tags: string[]; next?: string } = await this.perform(
        {
          method: 'GET',
          path: current,
          repository,
          headers: { accept: 'application/json' },
          kind: 'metadata',
          what: `tags of ${repository}`,
          notFound: 'NAME_UNKNOWN',
          accept: [200],
        },
        opts,
        async ({ response }) => {
          const body = await readBody(response.body, MAX_MANIFEST_BYTES, (size) => {
            throw new InvalidError('PAYLOAD_TOO_LARGE', `seed ${this.url} sent a tag list page of ${size} bytes or more`);
          });
          let parsed: { tags?: unknown };
          try {
            parsed = JSON.parse(body.toString('utf8')) as { tags?: unknown };
          } catch {
            throw new UnavailableError(`seed ${this.url} sent a tag list for ${repository} that is not JSON`, { seed: this.url });
          }
          const list = Array.isArray(parsed.tags) ? parsed.tags.filter((t): t is string => typeof t === 'string') : [];
          const link = /<([^>]+)>\s*;\s*rel="?next"?/.exec(header(response.headers, 'link') ?? '');
          let next: string | undefined;
          if (link) {
            const target = new URL(link[1]!, `${this.url}${current}`);
            if (target.origin === this.origin && target.pathname.startsWith(`${this.basePath}/v2/`)) {
              next = target.pathname.slice(this.basePath.length) + target.search;
            }
          }
          return { tags: list, next };
        },
      );
      tags.push(...result.tags);
      path = result.next;
    }
    return tags;
  }

  // ---- internals -------------------------------------------------------------------------------------

  private checkReference(repository: string, reference: string): string {
    validateRepositoryName(repository);
    if (reference.includes(':')) return Digest.parse(reference).toString();
    return validateTag(reference);
  }

  private describe(repository: string, reference: string): string {
    return reference.includes(':') ? `${repository}@${reference}` : `${repository}:${reference}`;
  }

  /**
   * Runs an exchange with retries: each attempt gets its own deadline, auth is answered inside an attempt,
   * 5xx/429/network failures/timeouts are retried with backoff, other statuses outside `accept` become errors.
   * `consume` reads the response within the attempt's deadline (a blob's only until its headers).
   */
  private async perform<T>(exchange: Exchange, opts: IoOptions, consume: (answered: Answered) => Promise<T>): Promise<T> {
    const timeoutMs = exchange.kind === 'blob' ? this.blobTimeoutMs : this.metadataTimeoutMs;
    for (let attemptNumber = 0; ; attemptNumber++) {
      if (opts.signal?.aborted) throw new AbortedError(`${exchange.what} from seed ${this.url} was aborted`);
      const attempt = new AttemptDeadline(timeoutMs, opts.signal);
      let response: SeedResponse | undefined;
      let failure: Error;
      try {
        const answer = await this.authorizedRequest(exchange, attempt);
        response = answer.response;
        if (exchange.accept.includes(response.status)) return await consume({ response, attempt });
        if (response.status >= 500 || response.status === 429) {
          const message = await readErrorMessage(response.body);
          throw new RetryableFailure(
            new UnavailableError(
              `seed ${this.url} answered ${exchange.what} with HTTP ${response.status}${response.status === 429 ? ' (too many requests)' : ''}${said(message)}`,
              { seed: this.url, status: response.status },
            ),
            parseRetryAfter(response.headers['retry-after']),
          );
        }
        throw await this.statusError(exchange, response, answer.sent);
      } catch (err) {
        if (response) dropBody(response.body);
        failure = classifyFailure(err, attempt, this.url, exchange.what);
      } finally {
        attempt.settle();
      }
      if (!(failure instanceof RetryableFailure)) throw failure;
      if (attemptNumber >= this.retries) {
        const error = failure.error;
        if (this.retries === 0) throw error;
        throw new UnavailableError(`${error.message} (gave up after ${attemptNumber + 1} attempts)`, error.detail);
      }
      const delayMs = backoffDelay(attemptNumber, this.retryDelayMs, MAX_RETRY_DELAY_MS, failure.retryAfterMs);
      this.logger?.warn({ seed: this.url, what: exchange.what, attempt: attemptNumber + 1, delayMs, err: failure.error.message }, 'seed request failed; retrying');
      try {
        await sleep(delayMs, undefined, { signal: opts.signal });
      } catch {
        throw new AbortedError(`${exchange.what} from seed ${this.url} was aborted`);
      }
    }
  }

  /** Sends the exchange with the credentials the seed is known to want, and answers one 401 challenge. */
  private async authorizedRequest(exchange: Exchange, attempt: AttemptDeadline): Promise<{ response: SeedResponse; sent?: SentAuthorization }> {
    const scope = exchange.repository ? pullScope(exchange.repository) : undefined;
    const sent = await this.auth.known(scope, attempt);
    const response = await this.send(exchange, sent?.header, attempt);
    if (response.status !== 401 || response.url.origin !== this.origin) return { response, sent };
    let answer: SentAuthorization | undefined;
    try {
      answer = await this.auth.answer(response.headers['www-authenticate'], scope, sent, attempt);
    } catch (err) {
      dropBody(response.body);
      throw err;
    }
    if (!answer) return { response, sent };
    await discard(response);
    const retried = await this.send(exchange, answer.header, attempt);
    if (retried.status === 401) this.auth.refused(answer);
    return { response: retried, sent: answer };
  }

  /** One request, following redirects; Authorization goes only to the seed's own origin. */
  private async send(exchange: Exchange, authorization: string | undefined, attempt: AttemptDeadline): Promise<SeedResponse> {
    let url = new URL(`${this.url}${exchange.path}`);
    let method: 'GET' | 'HEAD' = exchange.method;
    for (let hops = 0; ; hops++) {
      const headers: Record<string, string> = { ...exchange.headers, 'user-agent': this.userAgent };
      if (authorization && url.origin === this.origin) headers.authorization = authorization;
      const res = await request(url, {
        method,
        headers,
        signal: attempt.signal,
        dispatcher: this.agent,
        bodyTimeout: exchange.kind === 'blob' ? this.bodyIdleTimeoutMs : this.metadataTimeoutMs,
      });
      const location = header(res.headers, 'location');
      if ([301, 302, 303, 307, 308].includes(res.statusCode) && location) {
        await res.body.dump({ limit: 64 * 1024 }).catch(() => undefined);
        if (hops >= MAX_REDIRECTS) {
          throw new UnavailableError(`seed ${this.url} redirected ${exchange.what} more than ${MAX_REDIRECTS} times`, { seed: this.url });
        }
        url = new URL(location, url);
        if (url.protocol !== 'http:' && url.protocol !== 'https:') {
          throw new UnavailableError(`seed ${this.url} redirected ${exchange.what} to ${url.protocol} URL`, { seed: this.url });
        }
        if (res.statusCode === 303 && method !== 'HEAD') method = 'GET';
        continue;
      }
      return { status: res.statusCode, headers: res.headers, body: res.body, url };
    }
  }

  /** The error for a status outside the exchange's `accept`; reads the body for the registry's own words. */
  private async statusError(exchange: Exchange, response: SeedResponse, sent: SentAuthorization | undefined): Promise<Error> {
    const message = await readErrorMessage(response.body);
    const status = response.status;
    const detail = { seed: this.url, status, repository: exchange.repository };
    const elsewhere = response.url.origin !== this.origin ? ` (redirected to ${response.url.origin})` : '';
    const repo = exchange.repository ? ` ${exchange.repository}` : '';
    switch (status) {
      case 404:
        return new NotFoundError(exchange.notFound, `${exchange.what} is not in seed registry ${this.url}${elsewhere}${said(message)}`, detail);
      case 401:
        if (!sent && !this.basicAuthorization) {
          return new ShoalError(
            'UNAUTHORIZED',
            `seed registry ${this.url} requires authentication for ${exchange.what}${elsewhere} (HTTP 401${said(message)}): configure a username and password for this seed`,
            detail,
          );
        }
        return new ShoalError(
          'UNAUTHORIZED',
          `seed registry ${this.url} refused ${sent?.kind === 'bearer' ? 'the token' : 'the credentials'}${this.username !== undefined ? ` of user "${this.username}"` : ' (anonymous)'} for ${exchange.what}${elsewhere} (HTTP 401${said(message)}): ` +
            `check the username and password, and that the repository${repo} exists and the account may pull it`,
          detail,
        );
      case 403:
        return new ShoalError(
          'DENIED',
          `seed registry ${this.url} denied ${this.username !== undefined ? `user "${this.username}"` : 'anonymous access'} ${exchange.what}${elsewhere} (HTTP 403${said(message)}): check that this account may pull${repo || ' it'}`,
          detail,
        );
      case 416:
        return new InvalidError('RANGE_INVALID', `seed registry ${this.url} cannot serve ${exchange.what}: range not satisfiable${said(message)}`, detail);
      default:
        return new UnavailableError(`seed registry ${this.url} answered ${exchange.what}${elsewhere} with HTTP ${status}${said(message)}`, detail);
    }
  }
}
