/**
 * Pins: images a node must keep, whatever eviction and garbage collection would otherwise take. A pin names a
 * manifest or index by digest in one repository; what it holds (every platform, config, layer and referrer)
 * follows from that manifest.
 *
 * `shoal pin`, `unpin` and `pins` take image references as users write them (`registry.local:5000/team/app:1.4`,
 * `nginx:1.27`, `name@sha256:...`) and work on a stopped node's store (StorePins) or on a running node
 * through its API (a client with the same shape, in src/bundle/node-pins.ts). A reference is looked for in
 * the repository the node keeps that registry's images in (`registry.local-5000/team/app`, as pull-through
 * with `?ns=` and bundle imports store them), then in the bare repository (`team/app`, pushed to the node
 * directly). A tag is resolved to a digest when pinning: the pin is by digest.
 */
import {
  InvalidError,
  NotFoundError,
  isValidRegistryHost,
  parseReference,
  storeRepositoryName,
  validateRepositoryName,
  type Reference,
} from '../oci/index.ts';
import type { ContentStore, IoOptions, Pin } from '../store/index.ts';

export type { Pin } from '../store/index.ts';

/** A manifest in one repository, by digest or by tag. */
export interface PinSelector {
  digest?: string;
  tag?: string;
}

/** Where pins are kept: a stopped node's store, or a running node through its API. */
export interface PinBackend {
  /** `store /var/lib/shoal`, `node http://...`, for messages. */
  readonly description: string;
  /** Pins the manifest (a tag is resolved first); NotFoundError when it is not in the repository. */
  pin(repository: string, selector: PinSelector, reason: string, opts?: IoOptions): Promise<Pin>;
  /** Removes the pin and returns it; NotFoundError when there is none. */
  unpin(repository: string, selector: PinSelector, opts?: IoOptions): Promise<Pin>;
  list(opts?: IoOptions): Promise<Pin[]>;
  close(): Promise<void>;
}

/** Longest reason a pin keeps (the node's API cuts longer ones). */
export const MAX_PIN_REASON_LENGTH = 200;

/** An image reference as `shoal pin` takes it, and the repositories it may be in, in the order they are tried. */
export interface PinReference {
  text: string;
  ref: Reference;
  repositories: string[];
  selector: PinSelector;
}

/** Parses a reference; InvalidError (a usage mistake) when it is not one. */
export function parsePinReference(text: string): PinReference {
  let ref: Reference;
  try {
    ref = parseReference(text);
  } catch (err) {
    throw new InvalidError('NAME_INVALID', `${JSON.stringify(text)} is not an image reference: ${(err as Error).message}`);
  }
  if (!isValidRegistryHost(ref.registry)) {
    throw new InvalidError('NAME_INVALID', `${JSON.stringify(text)} is not an image reference: ${JSON.stringify(ref.registry)} is not a registry host`);
  }
  const namespaced = storeRepositoryName(ref.registry, ref.repository);
  try {
    validateRepositoryName(namespaced);
  } catch (err) {
    throw new InvalidError('NAME_INVALID', `${JSON.stringify(text)} is not an image reference: ${(err as Error).message}`);
  }
  const repositories = [...new Set([namespaced, ref.repository])];
  // A digest wins over a tag given with it (`app:1.4@sha256:...`), as container tools do.
  const selector: PinSelector = ref.digest ? { digest: ref.digest } : { tag: ref.tag };
  return { text, ref, repositories, selector };
}

/** What `shoal pin` / `unpin` did for one reference. */
export type PinOutcome = { reference: string; ok: true; pin: Pin } | { reference: string; ok: false; error: string };

/**
 * Runs `op` on the first repository of `ref` where the image is; NotFoundError (naming every repository
 * looked in) when it is in none. Other errors (node unreachable, store in use) are thrown at once.
 */
async function onFirstRepository(ref: PinReference, backend: PinBackend, op: (repository: string) => Promise<Pin>): Promise<Pin> {
  let first: Error | undefined;
  for (const repository of ref.repositories) {
    try {
      return await op(repository);
    } catch (err) {
      if (!(err instanceof NotFoundError)) throw err;
      first ??= err;
    }
  }
  const also = ref.repositories.length > 1 ? `; looked in ${ref.repositories.join(' and ')}` : '';
  throw new NotFoundError('MANIFEST_UNKNOWN', `${ref.text}: ${first!.message} (${backend.description}${also})`);
}

async function each(refs: PinReference[], run: (ref: PinReference) => Promise<Pin>): Promise<PinOutcome[]> {
  const out: PinOutcome[] = [];
  for (const ref of refs) {
    try {
      out.push({ reference: ref.text, ok: true, pin: await run(ref) });
    } catch (err) {
      if (!(err instanceof NotFoundError)) throw err;
      out.push({ reference: ref.text, ok: false, error: err.message });
    }
  }
  return out;
}

/** Pins each image by digest (a tag is resolved first). An image that is not there is an outcome, not a throw. */
export function pinImages(backend: PinBackend, refs: PinReference[], opts: IoOptions & { reason?: string } = {}): Promise<PinOutcome[]> {
  return each(refs, (ref) => onFirstRepository(ref, backend, (repository) => backend.pin(repository, ref.selector, opts.reason || `pinned as ${ref.text}`, opts)));
}

/** Removes the pin of each image (by tag: of the digest the tag points at now). */
export function unpinImages(backend: PinBackend, refs: PinReference[], opts: IoOptions = {}): Promise<PinOutcome[]> {
  return each(refs, (ref) => onFirstRepository(ref, backend, (repository) => backend.unpin(repository, ref.selector, opts)));
}

/** Every pin, by repository then age. */
export async function listPins(backend: PinBackend, opts: IoOptions = {}): Promise<Pin[]> {
  const pins = await backend.list(opts);
  return pins.sort((a, b) => (a.repository < b.repository ? -1 : a.repository > b.repository ? 1 : a.created - b.created));
}

/** Lines for people: one per outcome. */
export function describePinOutcomes(verb: 'pinned' | 'unpinned', outcomes: PinOutcome[]): { out: string[]; err: string[] } {
  const out: string[] = [];
  const err: string[] = [];
  for (const o of outcomes) {
    if (o.ok) out.push(`${verb} ${o.pin.repository}@${o.pin.digest}${o.reference.includes('@') ? '' : ` (${o.reference})`}`);
    else err.push(o.error);
  }
  return { out, err };
}

/** A table for people: repository, digest, reason, created. */
export function formatPinTable(pins: Pin[]): string[] {
  if (pins.length === 0) return ['no pins'];
  const header = ['REPOSITORY', 'DIGEST', 'REASON', 'CREATED'];
  const rows = pins.map((p) => [p.repository, p.digest, p.reason.replace(/\s+/g, ' '), new Date(p.created).toISOString().replace(/\.\d{3}Z$/, 'Z')]);
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  return [header, ...rows].map((r) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]!))).join('  '));
}

/** Pins in a node's store (the node stopped: `--data DIR`). */
export class StorePins implements PinBackend {
  readonly description: string;
  private readonly store: ContentStore;

  constructor(store: ContentStore, dataDir: string) {
    this.store = store;
    this.description = `store ${dataDir}`;
  }

  private async digestOf(repository: string, selector: PinSelector, opts: IoOptions): Promise<string> {
    if (selector.digest) return selector.digest;
    const digest = await this.store.resolveTag(repository, selector.tag!, opts);
    if (digest) return digest;
    if (!(await this.store.repositoryExists(repository, opts))) throw new NotFoundError('NAME_UNKNOWN', `repository ${repository} is not in the store`);
    throw new NotFoundError('MANIFEST_UNKNOWN', `tag ${selector.tag} is not in repository ${repository}`);
  }

  private async find(repository: string, digest: string, opts: IoOptions): Promise<Pin | undefined> {
    return (await this.store.listPins(opts)).find((p) => p.repository === repository && p.digest === digest);
  }

  async pin(repository: string, selector: PinSelector, reason: string, opts: IoOptions = {}): Promise<Pin> {
    const digest = await this.digestOf(repository, selector, opts);
    if (!(await this.store.getManifest(repository, digest, opts))) {
      if (!(await this.store.repositoryExists(repository, opts))) throw new NotFoundError('NAME_UNKNOWN', `repository ${repository} is not in the store`);
      throw new NotFoundError('MANIFEST_UNKNOWN', `manifest ${digest} is not in repository ${repository}`);
    }
    await this.store.pinManifest(repository, digest, reason.slice(0, MAX_PIN_REASON_LENGTH), opts);
    return (await this.find(repository, digest, opts))!;
  }

  async unpin(repository: string, selector: PinSelector, opts: IoOptions = {}): Promise<Pin> {
    const digest = await this.digestOf(repository, selector, opts);
    const pin = await this.find(repository, digest, opts);
    if (!pin) {
      const via = selector.tag ? ` (the digest tag ${selector.tag} points at)` : '';
      throw new NotFoundError('MANIFEST_UNKNOWN', `${repository}@${digest}${via} is not pinned`);
    }
    await this.store.unpinManifest(repository, digest, opts);
    return pin;
  }

  list(opts: IoOptions = {}): Promise<Pin[]> {
    return this.store.listPins(opts);
  }

  async close(): Promise<void> {
    await this.store.close();
  }
}
