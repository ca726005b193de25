/**
 * The client of a running node's pin API (`/shoal/pins`, see src/registry/pins.ts): `shoal pin --node`,
 * `shoal unpin --node`, `shoal pins --node`, and `shoal import --node`, which pins what it imported.
 * It goes through the same registry client as the import (auth, CA, timeouts).
 */
import { InvalidError, NotFoundError, ShoalError, UnavailableError } from '../oci/index.ts';
import type { IoOptions, Pin } from '../store/index.ts';
import { RegistryHttp, errorCodeOf, errorMessageOf, type HttpAnswer, type RegistryHttpOptions } from './registry-http.ts';

/** A manifest in one repository, by digest or by tag. */
export interface NodePinSelector {
  digest?: string;
  tag?: string;
}

function isPin(v: unknown): v is Pin {
  const p = v as Pin;
  return !!p && typeof p === 'object' && typeof p.repository === 'string' && typeof p.digest === 'string' && typeof p.reason === 'string' && typeof p.created === 'number';
}

function parseJson(body: Buffer): unknown {
  try {
    return JSON.parse(body.toString('utf8'));
  } catch {
    return undefined;
  }
}

export class NodePinClient {
  readonly description: string;
  private readonly http: RegistryHttp;
  /** True when this client made `http` (and so closes it). */
  private readonly ownsHttp: boolean;

  /** A client of its own (`opts`), or one that shares the connections of an import's registry client. */
  constructor(opts: RegistryHttpOptions | RegistryHttp) {
    this.ownsHttp = !(opts instanceof RegistryHttp);
    this.http = opts instanceof RegistryHttp ? opts : new RegistryHttp(opts);
    this.description = `node ${this.http.url}`;
  }

  private path(repository: string, selector: NodePinSelector): string {
    return `/shoal/pins/${repository}${selector.digest ? `@${selector.digest}` : `:${selector.tag}`}`;
  }

  /** Turns an answer that is not the expected one into the error it stands for. */
  private fail(what: string, answer: HttpAnswer): never {
    const code = errorCodeOf(answer.body);
    const message = errorMessageOf(answer.body);
    if (answer.status === 404 && (code === 'MANIFEST_UNKNOWN' || code === 'NAME_UNKNOWN')) {
      const text = (parseJson(answer.body) as { errors?: Array<{ message?: string }> } | undefined)?.errors?.[0]?.message ?? message;
      throw new NotFoundError(code, text);
    }
    if (answer.status === 400 && code) throw new InvalidError('NAME_INVALID', `${this.description} refused ${what}: ${message}`);
    if (answer.status === 401 || answer.status === 403) throw new ShoalError('UNAUTHORIZED', `${this.description} refused ${what} (HTTP ${answer.status}); check --username and --password`);
    if (answer.status === 404 || answer.status === 405) {
      throw new UnavailableError(`${this.description} has no pin API (HTTP ${answer.status} for ${what}): it is not a Shoal node, or an older one`);
    }
    throw new UnavailableError(`${this.description} refused ${what} (HTTP ${answer.status}: ${message})`);
  }

  private pinOf(what: string, answer: HttpAnswer, expected: number): Pin {
    if (answer.status !== expected) this.fail(what, answer);
    const pin = parseJson(answer.body);
    if (!isPin(pin)) throw new UnavailableError(`${this.description} answered ${what} with something that is not a pin`);
    return pin;
  }

  /** True when the node offers the pin API (a plain OCI registry does not). */
  async available(opts: IoOptions = {}): Promise<boolean> {
    const answer = await this.http.send({ method: 'GET', path: '/shoal/pins', signal: opts.signal });
    return answer.status === 200 && Array.isArray((parseJson(answer.body) as { pins?: unknown } | undefined)?.pins);
  }

  async pin(repository: string, selector: NodePinSelector, reason: string, opts: IoOptions = {}): Promise<Pin> {
    const path = `${this.path(repository, selector)}?reason=${encodeURIComponent(reason)}`;
    const answer = await this.http.send({ method: 'PUT', path, repository, push: true, signal: opts.signal });
    return this.pinOf(`a pin of ${repository}${selector.digest ? `@${selector.digest}` : `:${selector.tag}`}`, answer, 201);
  }

  async unpin(repository: string, selector: NodePinSelector, opts: IoOptions = {}): Promise<Pin> {
    const answer = await this.http.send({ method: 'DELETE', path: this.path(repository, selector), repository, push: true, signal: opts.signal });
    return this.pinOf(`an unpin of ${repository}${selector.digest ? `@${selector.digest}` : `:${selector.tag}`}`, answer, 202);
  }

  async list(opts: IoOptions = {}): Promise<Pin[]> {
    const answer = await this.http.send({ method: 'GET', path: '/shoal/pins', signal: opts.signal });
    if (answer.status !== 200) this.fail('the list of pins', answer);
    const pins = (parseJson(answer.body) as { pins?: unknown } | undefined)?.pins;
    if (!Array.isArray(pins) || !pins.every(isPin)) throw new UnavailableError(`${this.description} answered the list of pins with something else`);
    return pins;
  }

  async close(): Promise<void> {
    if (this.ownsHttp) await this.http.close();
  }
}
