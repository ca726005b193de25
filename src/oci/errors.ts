/**
 * The error taxonomy. Every failure that crosses a module boundary is one of these classes; the
 * registry's error middleware is the one place that turns them into OCI error JSON and a status.
 */

/** OCI distribution-spec error codes (plus the few Shoal adds for its own conditions). */
export type OciErrorCode =
  | 'BLOB_UNKNOWN'
  | 'BLOB_UPLOAD_INVALID'
  | 'BLOB_UPLOAD_UNKNOWN'
  | 'DIGEST_INVALID'
  | 'MANIFEST_BLOB_UNKNOWN'
  | 'MANIFEST_INVALID'
  | 'MANIFEST_UNKNOWN'
  | 'NAME_INVALID'
  | 'NAME_UNKNOWN'
  | 'SIZE_INVALID'
  | 'UNAUTHORIZED'
  | 'DENIED'
  | 'UNSUPPORTED'
  | 'TOOMANYREQUESTS'
  | 'RANGE_INVALID'
  | 'TAG_INVALID'
  | 'PAGINATION_NUMBER_INVALID'
  | 'PARAMETER_INVALID'
  | 'PAYLOAD_TOO_LARGE'
  | 'UNAVAILABLE'
  | 'STORAGE_FULL'
  | 'INTERNAL';

/** The one table from code to HTTP status. */
export const OCI_STATUS: Readonly<Record<OciErrorCode, number>> = {
  BLOB_UNKNOWN: 404,
  BLOB_UPLOAD_INVALID: 400,
  BLOB_UPLOAD_UNKNOWN: 404,
  DIGEST_INVALID: 400,
  MANIFEST_BLOB_UNKNOWN: 400,
  MANIFEST_INVALID: 400,
  MANIFEST_UNKNOWN: 404,
  NAME_INVALID: 400,
  NAME_UNKNOWN: 404,
  SIZE_INVALID: 400,
  UNAUTHORIZED: 401,
  DENIED: 403,
  UNSUPPORTED: 405,
  TOOMANYREQUESTS: 429,
  RANGE_INVALID: 416,
  TAG_INVALID: 400,
  PAGINATION_NUMBER_INVALID: 400,
  PARAMETER_INVALID: 400,
  PAYLOAD_TOO_LARGE: 413,
  UNAVAILABLE: 503,
  STORAGE_FULL: 507,
  INTERNAL: 500,
};

export interface OciErrorBody {
  code: OciErrorCode;
  message: string;
  detail?: unknown;
}

/** Base class: a stable `name`, an OCI code and optional structured detail. */
export class ShoalError extends Error {
  override readonly name: string = 'ShoalError';
  readonly code: OciErrorCode;
  readonly detail?: unknown;
  /** Extra response headers the error carries (e.g. Range for a 416 on an upload). */
  readonly headers?: Record<string, string>;
  constructor(code: OciErrorCode, message: string, detail?: unknown, headers?: Record<string, string>) {
    super(message);
    this.code = code;
    this.detail = detail;
    this.headers = headers;
  }
  get status(): number {
    return OCI_STATUS[this.code];
  }
  toJSON(): OciErrorBody {
    const body: OciErrorBody = { code: this.code, message: this.message };
    if (this.detail !== undefined) body.detail = this.detail;
    return body;
  }
}

/** Something asked for does not exist. */
export class NotFoundError extends ShoalError {
  override readonly name = 'NotFoundError';
  constructor(code: 'BLOB_UNKNOWN' | 'BLOB_UPLOAD_UNKNOWN' | 'MANIFEST_UNKNOWN' | 'NAME_UNKNOWN', message: string, detail?: unknown) {
    super(code, message, detail);
  }
}

/** The client sent something malformed or inconsistent. */
export class InvalidError extends ShoalError {
  override readonly name = 'InvalidError';
  constructor(
    code:
      | 'BLOB_UPLOAD_INVALID'
      | 'DIGEST_INVALID'
      | 'MANIFEST_BLOB_UNKNOWN'
      | 'MANIFEST_INVALID'
      | 'NAME_INVALID'
      | 'SIZE_INVALID'
      | 'TAG_INVALID'
      | 'PAGINATION_NUMBER_INVALID'
      | 'PARAMETER_INVALID'
      | 'RANGE_INVALID'
      | 'PAYLOAD_TOO_LARGE',
    message: string,
    detail?: unknown,
    headers?: Record<string, string>,
  ) {
    super(code, message, detail, headers);
  }
}

/** Bytes did not hash to the digest they were announced with. */
export class DigestMismatchError extends ShoalError {
  override readonly name = 'DigestMismatchError';
  readonly expected: string;
  readonly actual: string;
  constructor(expected: string, actual: string, message?: string) {
    super('DIGEST_INVALID', message ?? `content digest ${actual} does not match the expected ${expected}`, { expected, actual });
    this.expected = expected;
    this.actual = actual;
  }
}

/** An operation this node does not offer (or has disabled). */
export class UnsupportedError extends ShoalError {
  override readonly name = 'UnsupportedError';
  constructor(message: string, detail?: unknown) {
    super('UNSUPPORTED', message, detail);
  }
}

/** The request needs credentials, or the ones it carried did not check out; `challenge` is the WWW-Authenticate value. */
export class UnauthorizedError extends ShoalError {
  override readonly name = 'UnauthorizedError';
  constructor(message: string, challenge: string, detail?: unknown) {
    super('UNAUTHORIZED', message, detail, { 'WWW-Authenticate': challenge });
  }
}

/** The caller is known but may not do this (a missing role, an immutable tag). */
export class DeniedError extends ShoalError {
  override readonly name = 'DeniedError';
  constructor(message: string, detail?: unknown) {
    super('DENIED', message, detail);
  }
}

/** A dependency (seed, peer, disk) cannot serve right now; retrying later may work. */
export class UnavailableError extends ShoalError {
  override readonly name = 'UnavailableError';
  constructor(message: string, detail?: unknown) {
    super('UNAVAILABLE', message, detail);
  }
}

/** The operation was cancelled through its AbortSignal or the client went away. */
export class AbortedError extends ShoalError {
  override readonly name = 'AbortedError';
  constructor(message = 'the operation was aborted') {
    super('UNAVAILABLE', message);
  }
}

export function isShoalError(err: unknown): err is ShoalError {
  return err instanceof ShoalError;
}

/**
 * The node's disk (or its quota) has no room for what a request would store: 507 Insufficient Storage. Whatever
 * the request had written so far was removed again; reads go on, and freeing space (or eviction) lets the same
 * request succeed later.
 */
export class StorageFullError extends ShoalError {
  override readonly name = 'StorageFullError';
  constructor(message: string, detail?: unknown) {
    super('STORAGE_FULL', message, detail);
  }
}

/** The error codes of a full filesystem: no blocks left (ENOSPC) or the user's quota used up (EDQUOT). */
export type DiskFullCode = 'ENOSPC' | 'EDQUOT';

/**
 * ENOSPC or EDQUOT when `err` (or an error it wraps as `cause`) is a full disk: an fs error's `code`, or the
 * text LevelDB puts in its IO errors. Undefined for anything else, including Shoal errors that only quote such
 * a text (a seed that is itself full is the seed's problem, not this node's).
 */
export function diskFullCode(err: unknown): DiskFullCode | undefined {
  let e: unknown = err;
  for (let depth = 0; depth < 5 && typeof e === 'object' && e !== null; depth++) {
    if (e instanceof StorageFullError) return ((e.detail as { cause?: DiskFullCode } | undefined)?.cause) ?? 'ENOSPC';
    if (isShoalError(e)) return undefined;
    const { code, message } = e as { code?: unknown; message?: unknown };
    if (code === 'ENOSPC' || code === 'EDQUOT') return code;
    if (typeof message === 'string') {
      if (/no space left on device/i.test(message)) return 'ENOSPC';
      if (/disk quota exceeded/i.test(message)) return 'EDQUOT';
    }
    e = (e as { cause?: unknown }).cause;
  }
  return undefined;
}

/** The message a client reads when the node's disk filled while it was `doing` something (`writing the blob`). */
export function storageFullError(code: DiskFullCode, doing: string): StorageFullError {
  const reason = code === 'EDQUOT' ? 'disk quota exceeded' : 'no space left on device';
  return new StorageFullError(`the node's disk is full (${reason} while ${doing}); free space or lower the quota; nothing was stored`, { cause: code });
}
