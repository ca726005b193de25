import { createHash, type Hash } from 'node:crypto';
import { InvalidError, DigestMismatchError, UnsupportedError } from './errors.ts';

/** Algorithms Shoal can verify, with the exact hex length of their encoded part. */
const ALGORITHMS: Readonly<Record<string, number>> = { sha256: 64, sha512: 128 };

/** The digest grammar of the OCI image spec: algorithm ":" encoded. */
const DIGEST_GRAMMAR = /^[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$/;

/** A parsed, validated content digest such as `sha256:<64 hex>`. */
export class Digest {
  readonly algorithm: string;
  readonly hex: string;
  private constructor(algorithm: string, hex: string) {
    this.algorithm = algorithm;
    this.hex = hex;
  }

  /** Parses a digest string; throws DIGEST_INVALID for anything malformed or of an unknown algorithm. */
  static parse(value: string): Digest {
    if (typeof value !== 'string' || value.length > 256 || !DIGEST_GRAMMAR.test(value)) {
      throw new InvalidError('DIGEST_INVALID', `invalid digest ${JSON.stringify(String(value).slice(0, 200))}: expected <algorithm>:<hex>`);
    }
    const idx = value.indexOf(':');
    const algorithm = value.slice(0, idx);
    const hex = value.slice(idx + 1);
    const len = ALGORITHMS[algorithm];
    if (len === undefined) {
      throw new InvalidError('DIGEST_INVALID', `unsupported digest algorithm ${JSON.stringify(algorithm)}: use sha256 or sha512`);
    }
    if (hex.length !== len || !/^[a-f0-9]+$/.test(hex)) {
      throw new InvalidError('DIGEST_INVALID', `invalid ${algorithm} digest: expected ${len} lowercase hex characters`);
    }
    return new Digest(algorithm, hex);
  }

  static isValid(value: string): boolean {
    try {
      Digest.parse(value);
      return true;
    } catch {
      return false;
    }
  }

  /** Digest of a whole buffer. */
  static of(data: Uint8Array | string, algorithm = 'sha256'): Digest {
    if (ALGORITHMS[algorithm] === undefined) throw new UnsupportedError(`digest algorithm ${algorithm} is not supported`);
    return new Digest(algorithm, createHash(algorithm).update(data).digest('hex'));
  }

  toString(): string {
    return `${this.algorithm}:${this.hex}`;
  }

  equals(other: Digest | string): boolean {
    return this.toString() === other.toString();
  }

  /** Whether `data` is the content `digest` names (in its own algorithm); false for a digest that does not parse. */
  static names(digest: string, data: Uint8Array): boolean {
    let d: Digest;
    try {
      d = Digest.parse(digest);
    } catch {
      return false;
    }
    return Digest.of(data, d.algorithm).equals(d);
  }

  /** Throws DigestMismatchError unless `data` hashes to this digest. */
  verify(data: Uint8Array): void {
    const actual = Digest.of(data, this.algorithm);
    if (!actual.equals(this)) throw new DigestMismatchError(this.toString(), actual.toString());
  }
}

/** An incremental hasher that also counts bytes; `copy()` allows rolling back a failed chunk. */
export class DigestHasher {
  readonly algorithm: string;
  private hash: Hash;
  private count: number;
  constructor(algorithm = 'sha256', hash?: Hash, count = 0) {
    if (ALGORITHMS[algorithm] === undefined) throw new UnsupportedError(`digest algorithm ${algorithm} is not supported`);
    this.algorithm = algorithm;
    this.hash = hash ?? createHash(algorithm);
    this.count = count;
  }
  update(chunk: Uint8Array): void {
    this.hash.update(chunk);
    this.count += chunk.length;
  }
  get size(): number {
    return this.count;
  }
  copy(): DigestHasher {
    return new DigestHasher(this.algorithm, this.hash.copy(), this.count);
  }
  /** The digest of everything so far; the hasher stays usable. */
  digest(): Digest {
    return Digest.parse(`${this.algorithm}:${this.hash.copy().digest('hex')}`);
  }
}
