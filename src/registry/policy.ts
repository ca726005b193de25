/**
 * The signature policy at the registry API: a tag resolves, and a root manifest is served, only when the policy
 * allows the image; child manifests and blobs only when an allowed image reaches them; signature artifacts
 * always (clients and peers need them to check images). The verdict is made when the image first passes through
 * (pulled through from a seed or a peer, imported, pushed) and kept by the engine.
 *
 *   GET /shoal/policy/verify?repository=R&reference=TAG|DIGEST[&ns=REGISTRY]  -> the verdict, explained
 */
import type { Context } from 'koa';
import { AbortedError, DeniedError, InvalidError, isShoalError, parseStoreRepositoryName, UnsupportedError, validateRepositoryName, type Descriptor } from '../oci/index.ts';
import { describeRule, signatureArtifactKind, type Decision, type PolicyEngine, type SignatureSource } from '../policy/index.ts';
import type { RepositoryTarget } from '../source/pull-through.ts';
import { SMALL_CONTENT_MAX, type ManifestRecord } from '../store/index.ts';
import type { RegistryDeps, RegistryState, RouteParams } from './context.ts';
import { namespacedRepository, parseNamespace } from './routes.ts';
import { parseManifestReference } from './manifests.ts';

/** Largest signature manifest or payload read through the pull path. */
const MAX_READ = 4 * 1024 * 1024;

/**
 * The image name the policy's scopes match: `<registry>/<repository>` from `?ns=`, else the stored repository
 * (`registry.local-5000/apps/web`, as imports and pins name them, is `registry.local:5000/apps/web`).
 */
export function policyImageName(target: RepositoryTarget): string {
  if (target.namespace) return `${target.namespace}/${target.upstream}`;
  const stored = parseStoreRepositoryName(target.repository);
  return stored ? `${stored.registry}/${stored.repository}` : target.repository;
}

async function readAll(deps: RegistryDeps, digest: string, size: number, signal?: AbortSignal): Promise<Buffer> {
  if (size > MAX_READ) throw new InvalidError('MANIFEST_INVALID', `${digest} is ${size} bytes, too large to be a signature or manifest the policy reads`);
  // The same read the serve that follows makes: one file read, then memory.
  if (size <= SMALL_CONTENT_MAX) return deps.store.readSmallContent(digest, { signal });
  const stream = await deps.store.readContent(digest, undefined, { signal });
  return Buffer.concat((await stream.toArray()) as Buffer[]);
}

/** Signatures read through the node's pull path: the store, then peers and seeds (and kept, so they travel on). */
export class PullSignatureSource implements SignatureSource {
  constructor(
    private readonly deps: RegistryDeps,
    private readonly target: RepositoryTarget,
  ) {}

  /** A lookup that fails for any reason but the client leaving finds nothing: the verdict then says what is missing. */
  private async quietly<T>(what: string, fn: () => Promise<T>, signal?: AbortSignal): Promise<T | undefined> {
    try {
      return await fn();
    } catch (err) {
      if (signal?.aborted || err instanceof AbortedError) throw err;
      if (!isShoalError(err) || (err.code !== 'MANIFEST_UNKNOWN' && err.code !== 'NAME_UNKNOWN' && err.code !== 'BLOB_UNKNOWN')) {
        this.deps.logger.warn({ repository: this.target.repository, what, err: (err as Error).message }, 'signature policy: a signature lookup failed');
      }
      return undefined;
    }
  }

  async tagged(tag: string, opts: { signal?: AbortSignal }): Promise<{ digest: string; bytes: Buffer } | undefined> {
    return this.quietly(
      `tag ${tag}`,
      async () => {
        const rec = await this.deps.pull.manifest(this.target, { kind: 'tag', tag }, opts);
        return { digest: rec.digest, bytes: await readAll(this.deps, rec.digest, rec.size, opts.signal) };
      },
      opts.signal,
    );
  }

  async referrers(digest: string, opts: { signal?: AbortSignal }): Promise<Descriptor[]> {
    return this.deps.store.listReferrers(this.target.repository, digest, opts);
  }

  async manifest(digest: string, opts: { signal?: AbortSignal }): Promise<Buffer | undefined> {
    return this.quietly(
      `manifest ${digest}`,
      async () => {
        const rec = await this.deps.pull.manifest(this.target, { kind: 'digest', digest }, opts);
        return readAll(this.deps, rec.digest, rec.size, opts.signal);
      },
      opts.signal,
    );
  }

  async blob(digest: string, opts: { signal?: AbortSignal }): Promise<Buffer | undefined> {
    return this.quietly(
      `blob ${digest}`,
      async () => {
        const info = await this.deps.pull.blob(this.target, digest, opts);
        if (info.size > MAX_READ) return undefined;
        const stream = await info.open(undefined, opts);
        return Buffer.concat((await stream.toArray()) as Buffer[]);
      },
      opts.signal,
    );
  }
}

function audit(ctx: Context, deps: RegistryDeps, p: RouteParams, decision: Decision): void {
  const state = ctx.state as RegistryState;
  void deps.access?.audit.append({
    user: state.principal?.name ?? 'anonymous',
    from: ctx.req.socket?.remoteAddress ?? 'unknown',
    action: 'pull',
    repository: p.name,
    reference: p.reference,
    digest: decision.digest,
    result: decision.result === 'denied' ? 'denied' : 'ok',
    status: decision.result === 'denied' ? 403 : 200,
    detail: `signature policy${decision.result === 'warned' ? ' (warn mode, served)' : ''}: ${decision.message}`,
  });
}

/** The 403 of a refused image: the message names the rule and the reason. */
export function policyDenial(decision: Decision): DeniedError {
  return new DeniedError(`signature policy: ${decision.message}`, { rule: decision.rule, reason: decision.reason, digest: decision.digest });
}

function targetOf(p: RouteParams): RepositoryTarget {
  return { repository: p.name, upstream: p.upstream, namespace: p.namespace };
}

/** Before a manifest goes out (GET or HEAD, by tag or digest): may this node serve it? Throws 403 DENIED if not. */
export async function gateManifest(ctx: Context, deps: RegistryDeps, p: RouteParams, ref: { kind: 'tag'; tag: string } | { kind: 'digest'; digest: string }, record: ManifestRecord): Promise<void> {
  const engine = deps.policy;
  if (!engine) return;
  const { signal } = ctx.state as RegistryState;
  const target = targetOf(p);
  const name = policyImageName(target);
  if (engine.acceptsAnything(name)) return;
  const bytes = await readAll(deps, record.digest, record.size, signal);
  const artifact = signatureArtifactKind(bytes, ref.kind === 'tag' ? ref.tag : undefined);
  // A signature's blobs are its payloads; a referrers index's entries are each judged when asked for.
  if (artifact === 'signature') engine.extendReach(p.name, bytes);
  if (artifact) return;
  // A child of an allowed image (a platform manifest of an index) is served as part of it.
  if (ref.kind === 'digest' && engine.reaches(p.name, record.digest)) {
    engine.extendReach(p.name, bytes);
    return;
  }
  // The engine answers with the verdict it keeps for the image, or judges it (again, after a refusal).
  const decision = await engine.decide(target.repository, name, record.digest, new PullSignatureSource(deps, target), { signal });
  // The audit log records refusals, and each image served in warn mode once (when it was judged).
  if (decision.result === 'denied' || (decision.fresh && decision.result === 'warned')) audit(ctx, deps, p, decision);
  if (decision.result === 'denied') throw policyDenial(decision);
  engine.extendReach(p.name, bytes);
}

/** Before a blob goes out: only as part of an image the policy let through. */
export function gateBlob(deps: RegistryDeps, p: RouteParams, digest: string): void {
  const engine = deps.policy;
  if (!engine) return;
  const name = policyImageName(targetOf(p));
  if (engine.acceptsAnything(name) || engine.reaches(p.name, digest)) return;
  if (engine.mode === 'warn') {
    engine.count('warned', 'unreached');
    deps.logger.warn({ repository: p.name, digest }, 'signature policy (warn mode): served a blob no allowed image of the repository reaches');
    return;
  }
  engine.count('denied', 'unreached');
  throw new DeniedError(
    `signature policy: blob ${digest} of ${p.name} is served only as part of an image the policy allows (${describeRule(engine.ruleFor(name))}); pull the image by its tag or digest first`,
    { reason: 'unreached', digest },
  );
}

/** GET /shoal/policy/verify: the verdict on one image, judged afresh, with every signature found. */
export async function handlePolicyVerify(ctx: Context, deps: RegistryDeps): Promise<void> {
  const { signal } = ctx.state as RegistryState;
  if (ctx.method !== 'GET') throw new UnsupportedError(`${ctx.method} is not supported on /shoal/policy/verify; allowed: GET`);
  const repository = ctx.query.repository;
  const reference = ctx.query.reference;
  if (typeof repository !== 'string' || typeof reference !== 'string' || !repository || !reference) {
    throw new InvalidError('NAME_INVALID', 'give repository=REPOSITORY and reference=TAG|DIGEST (and ns=REGISTRY for a mirrored registry)');
  }
  validateRepositoryName(repository);
  const namespace = parseNamespace(ctx.query.ns);
  const name = namespacedRepository(namespace, repository);
  validateRepositoryName(name);
  const target: RepositoryTarget = { repository: name, upstream: repository, namespace };
  const image = policyImageName(target);
  if (!deps.policy) {
    ctx.body = { policy: false, image, served: true, message: 'this node has no signature policy (serve --policy FILE): every image is served' };
    return;
  }
  const ref = parseManifestReference(reference);
  await deps.pull.requireRepository(target, { signal });
  const record = await deps.pull.manifest(target, ref, { signal });
  const engine = deps.policy;
  const decision = await engine.decide(name, image, record.digest, new PullSignatureSource(deps, target), { signal, fresh: true });
  ctx.body = {
    policy: true,
    policyFile: engine.file,
    image,
    repository: name,
    reference,
    digest: record.digest,
    mode: decision.mode,
    result: decision.result,
    served: decision.result !== 'denied',
    rule: decision.rule,
    reason: decision.reason,
    message: decision.message,
    signatures: decision.signatures,
  };
}
