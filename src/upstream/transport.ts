/**
 * How a failed request to the seed is told apart: the caller gave up (abort), the attempt ran out of time,
 * the network failed (worth retrying), or TLS refused the peer (not worth retrying). Pure logic on error
 * objects and timers; the HTTP itself is in seed-client.ts.
 */
import { AbortedError, UnavailableError, isShoalError } from '../oci/index.ts';

/** Network error codes after which another attempt may well succeed. */
const TRANSIENT_CODES = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'ECONNABORTED',
  'EPIPE',
  'ETIMEDOUT',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'ENETDOWN',
  'EHOSTDOWN',
  'EAI_AGAIN',
  'UND_ERR_SOCKET',
  'UND_ERR_CONNECT_TIMEOUT',
  'UND_ERR_HEADERS_TIMEOUT',
  'UND_ERR_BODY_TIMEOUT',
  'UND_ERR_CLOSED',
  'UND_ERR_RES_CONTENT_LENGTH_MISMATCH',
]);

/** What each transient code means, for messages a person can act on. */
const CAUSES: Readonly<Record<string, string>> = {
  ECONNREFUSED: 'the connection was refused (is the registry running, and are the host and port right?)',
  ECONNRESET: 'the connection was reset',
  EPIPE: 'the connection was closed while sending',
  ETIMEDOUT: 'the connection timed out',
  EHOSTUNREACH: 'the host is unreachable',
  ENETUNREACH: 'the network is unreachable',
  ENOTFOUND: 'the host name does not resolve (check the seed URL and DNS)',
  EAI_AGAIN: 'the host name could not be resolved right now (DNS)',
  UND_ERR_SOCKET: 'the connection closed unexpectedly',
  UND_ERR_CONNECT_TIMEOUT: 'connecting timed out',
  UND_ERR_HEADERS_TIMEOUT: 'no response headers arrived in time',
  UND_ERR_BODY_TIMEOUT: 'the body stalled: no bytes arrived for too long',
  UND_ERR_RES_CONTENT_LENGTH_MISMATCH: 'the body ended before its Content-Length',
};

/** TLS verification failures: retrying cannot help, the configuration must change. */
const TLS_CODES = new Set([
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'UNABLE_TO_GET_ISSUER_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'CERT_HAS_EXPIRED',
  'CERT_NOT_YET_VALID',
  'CERT_UNTRUSTED',
  'ERR_TLS_CERT_ALTNAME_INVALID',
]);

/** The most specific error code on `err`, its cause, or the first error of an AggregateError. */
export function errorCode(err: unknown): string | undefined {
  let current: unknown = err;
  for (let depth = 0; depth < 4 && current && typeof current === 'object'; depth++) {
    const code = (current as { code?: unknown }).code;
    if (typeof code === 'string' && code !== 'UND_ERR') return code;
    const nested = (current as { errors?: unknown[] }).errors;
    current = Array.isArray(nested) && nested.length > 0 ? nested[0] : (current as { cause?: unknown }).cause;
  }
  return undefined;
}

/** A failure worth another attempt, carrying the error to report when attempts run out. */
export class RetryableFailure extends Error {
  readonly error: UnavailableError;
  /** The seed's Retry-After, in milliseconds, when it sent one. */
  readonly retryAfterMs?: number;
  constructor(error: UnavailableError, retryAfterMs?: number) {
    super(error.message);
    this.error = error;
    this.retryAfterMs = retryAfterMs;
  }
}

/**
 * The deadline and cancellation of one attempt: `signal` fires when the caller aborts or the deadline passes;
 * `settle()` stops the deadline (a blob body may then take as long as it needs, bytes still flowing).
 */
export class AttemptDeadline {
  readonly signal: AbortSignal;
  readonly timeoutMs: number;
  private readonly callerSignal?: AbortSignal;
  private readonly deadline = new AbortController();
  private timer: NodeJS.Timeout | undefined;
  constructor(timeoutMs: number, callerSignal?: AbortSignal) {
    this.timeoutMs = timeoutMs;
    this.callerSignal = callerSignal;
    this.timer = setTimeout(() => this.deadline.abort(new Error(`timed out after ${timeoutMs} ms`)), timeoutMs);
    this.signal = callerSignal ? AbortSignal.any([callerSignal, this.deadline.signal]) : this.deadline.signal;
  }
  get callerAborted(): boolean {
    return this.callerSignal?.aborted === true;
  }
  get timedOut(): boolean {
    return this.deadline.signal.aborted && !this.callerAborted;
  }
  settle(): void {
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = undefined;
  }
}

/**
 * Turns an error from the network layer into the taxonomy. `seed` and `what` go into the message
 * ("seed http://...: fetching manifest x:y: <cause>"). Returns a RetryableFailure for transient failures,
 * AbortedError when the caller aborted, and passes Shoal errors through.
 */
export function classifyFailure(err: unknown, attempt: AttemptDeadline, seed: string, what: string): Error {
  if (attempt.callerAborted) return new AbortedError(`${what} from seed ${seed} was aborted`);
  if (err instanceof RetryableFailure || isShoalError(err)) return err;
  if (attempt.timedOut) {
    return new RetryableFailure(new UnavailableError(`seed ${seed} did not answer ${what} within ${attempt.timeoutMs} ms`, { seed, cause: 'timeout' }));
  }
  const code = errorCode(err);
  const message = err instanceof Error ? err.message : String(err);
  if (code && TLS_CODES.has(code)) {
    return new UnavailableError(
      `seed ${seed}: TLS verification failed for ${what} (${code}: ${message}); set caFile to the CA that signed the seed's certificate, or insecureSkipVerify for a test setup`,
      { seed, cause: code },
    );
  }
  const cause = (code && CAUSES[code]) ?? message;
  const error = new UnavailableError(`seed ${seed} is unavailable for ${what}: ${cause}${code ? ` [${code}]` : ''}`, { seed, cause: code ?? message });
  if (code === 'ENOTFOUND') return error;
  return new RetryableFailure(error);
}

/** Milliseconds to wait before retry number `attempt` (0-based): exponential, capped, with jitter in [½, 1]. */
export function backoffDelay(attempt: number, baseMs: number, maxMs: number, retryAfterMs?: number, random: () => number = Math.random): number {
  const exponential = Math.min(maxMs, baseMs * 2 ** attempt);
  const jittered = exponential / 2 + (random() * exponential) / 2;
  return Math.round(retryAfterMs !== undefined ? Math.min(maxMs, Math.max(jittered, retryAfterMs)) : jittered);
}

/** Reads a Retry-After header (seconds or an HTTP date) into milliseconds. */
export function parseRetryAfter(value: string | string[] | undefined, now = Date.now()): number | undefined {
  const text = Array.isArray(value) ? value[0] : value;
  if (!text) return undefined;
  if (/^\d+$/.test(text.trim())) return Number(text.trim()) * 1000;
  const at = Date.parse(text);
  return Number.isNaN(at) ? undefined : Math.max(0, at - now);
}
