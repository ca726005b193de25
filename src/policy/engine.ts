/**
 * A node's signature policy at work: the policy file (reloaded when it changes), the verdict kept per repository
 * and root digest, what each allowed root reaches (so that its children and blobs are served), and the count of
 * decisions (`shoal_policy_decisions_total{result,reason}`).
 */
import type { Logger } from 'pino';
import { Counter, type Registry } from 'prom-client';
import { FileWatch } from '../access/watch.ts';
import { parseManifest } from '../oci/index.ts';
import { readPolicyFile, ruleFor, type Policy, type PolicyMode, type PolicyRule } from './file.ts';
import { SIGNATURE_TAG, SIMPLE_SIGNING_MEDIA_TYPE, isSigstoreBundleType } from './formats.ts';
import { judgeImage, type SignatureSource, type Verdict } from './verify.ts';

/** What a decision did: served because allowed, refused, or served although it would have been refused (warn). */
export type DecisionResult = 'allowed' | 'denied' | 'warned';

export interface Decision extends Verdict {
  result: DecisionResult;
  mode: PolicyMode;
  /** The image name the scopes were matched against. */
  name: string;
  digest: string;
}

export interface PolicyEngineOptions {
  file: string;
  logger: Logger;
  metrics?: Registry;
  /** How often the file is checked for changes (tests shorten it). */
  checkIntervalMs?: number;
}

/** Verdicts kept per repository; a repository's reach (digests of allowed roots' children and blobs). */
interface RepositoryState {
  verdicts: Map<string, Decision>;
  reach: Set<string>;
}

/** Most repositories whose verdicts are kept (the oldest are forgotten and judged again when asked). */
const MAX_REPOSITORIES = 10_000;

export class PolicyEngine {
  readonly file: string;
  private policy: Policy;
  private readonly logger: Logger;
  private readonly decisions?: Counter<'result' | 'reason'>;
  private readonly watch: FileWatch;
  private repositories = new Map<string, RepositoryState>();
  private generation = 0;

  private constructor(opts: PolicyEngineOptions, policy: Policy) {
    this.file = opts.file;
    this.policy = policy;
    this.logger = opts.logger;
    if (opts.metrics) {
      this.decisions = new Counter({
        name: 'shoal_policy_decisions_total',
        help: 'Signature policy decisions on images: result allowed, denied or warned (served in warn mode), and why',
        labelNames: ['result', 'reason'],
        registers: [opts.metrics],
      });
    }
    this.watch = new FileWatch([opts.file], () => this.reload(), opts.checkIntervalMs);
  }

  /** Reads the policy file (throws PolicyError when it is unusable) and starts watching it. */
  static async open(opts: PolicyEngineOptions): Promise<PolicyEngine> {
    const engine = new PolicyEngine(opts, await readPolicyFile(opts.file));
    await engine.watch.start();
    engine.logger.info({ policy: opts.file, mode: engine.policy.mode, scopes: engine.policy.scopes.map((s) => s.scope) }, 'signature policy loaded');
    return engine;
  }

  async stop(): Promise<void> {
    await this.watch.stop();
  }

  get mode(): PolicyMode {
    return this.policy.mode;
  }

  /** Reads the file again; a file that no longer parses leaves the last good policy in force, and says so. */
  async reload(): Promise<void> {
    try {
      const next = await readPolicyFile(this.file);
      this.policy = next;
      this.generation++;
      this.repositories = new Map();
      this.logger.info({ policy: this.file, mode: next.mode, scopes: next.scopes.map((s) => s.scope) }, 'signature policy reloaded');
    } catch (err) {
      this.logger.error({ policy: this.file, err: (err as Error).message }, 'signature policy file changed but cannot be used; the previous policy stays in force');
    }
  }

  /** The rule for an image name. */
  ruleFor(name: string): PolicyRule {
    return ruleFor(this.policy, name);
  }

  /** True when the rule for `name` lets everything through (no verdicts needed). */
  acceptsAnything(name: string): boolean {
    return this.ruleFor(name).requirements.every((r) => r.type === 'insecureAcceptAnything');
  }

  private state(repository: string): RepositoryState {
    let s = this.repositories.get(repository);
    if (!s) {
      if (this.repositories.size >= MAX_REPOSITORIES) this.repositories.delete(this.repositories.keys().next().value!);
      s = { verdicts: new Map(), reach: new Set() };
      this.repositories.set(repository, s);
    }
    return s;
  }

  /** The kept verdict of a root, if it was judged under the current policy. */
  kept(repository: string, digest: string): Decision | undefined {
    return this.repositories.get(repository)?.verdicts.get(digest);
  }

  /** Whether a digest is reachable from a root of `repository` that was allowed (or served in warn mode). */
  reaches(repository: string, digest: string): boolean {
    return this.repositories.get(repository)?.reach.has(digest) ?? false;
  }

  /** Adds what a served manifest names to its repository's reach (children, config, layers). */
  extendReach(repository: string, bytes: Buffer): void {
    let parsed;
    try {
      parsed = parseManifest(bytes, undefined);
    } catch {
      return;
    }
    const reach = this.state(repository).reach;
    for (const d of [...parsed.manifests, ...parsed.blobs]) reach.add(d.digest);
  }

  /**
   * Judges the root `digest` of `repository` (the image `name`, as scopes see it), keeps the decision, counts it
   * and logs a refusal. A kept verdict that let the image through answers without judging again; a kept refusal is
   * judged again (a signature may have come since). `fresh` judges again even when a verdict is kept (what
   * `verify-image` asks). The answer's `fresh` says whether it was judged now (false: a kept verdict).
   */
  async decide(repository: string, name: string, digest: string, source: SignatureSource, opts: { signal?: AbortSignal; fresh?: boolean } = {}): Promise<Decision & { fresh: boolean }> {
    const kept = opts.fresh ? undefined : this.kept(repository, digest);
    if (kept && kept.result !== 'denied') return { ...kept, fresh: false };
    const generation = this.generation;
    const policy = this.policy;
    const verdict = await judgeImage(source, name, digest, ruleFor(policy, name), opts);
    const result: DecisionResult = verdict.allowed ? 'allowed' : policy.mode === 'warn' ? 'warned' : 'denied';
    const decision: Decision = { ...verdict, result, mode: policy.mode, name, digest };
    this.decisions?.inc({ result, reason: verdict.reason });
    if (result !== 'allowed') {
      this.logger.warn(
        { repository, image: name, digest, rule: verdict.rule, reason: verdict.reason, mode: policy.mode, signatures: verdict.signatures.map((s) => `${s.format} ${s.artifact}: ${s.outcome}`) },
        result === 'denied' ? `signature policy: refused: ${verdict.message}` : `signature policy (warn mode): served, but would be refused: ${verdict.message}`,
      );
    } else {
      this.logger.info({ repository, image: name, digest, rule: verdict.rule, reason: verdict.reason }, 'signature policy: allowed');
    }
    // A policy reloaded meanwhile: the decision answers this request, but is not kept.
    if (generation === this.generation) {
      const s = this.state(repository);
      s.verdicts.set(digest, decision);
      if (result !== 'denied') s.reach.add(digest);
    }
    return { ...decision, fresh: true };
  }

  /** Counts a decision made elsewhere (an import judged against a bundle's content). */
  count(result: DecisionResult, reason: string): void {
    this.decisions?.inc({ result, reason });
  }
}

/** Layer media types of signatures: nothing a runtime unpacks. */
function isSignatureLayer(mediaType: string): boolean {
  return mediaType === SIMPLE_SIGNING_MEDIA_TYPE || isSigstoreBundleType(mediaType) || mediaType === 'application/jose+json' || mediaType === 'application/cose';
}

/**
 * What a served manifest is, for the gate: a signature artifact (served without a verdict of its own, because
 * clients and peers need it to check images, and it holds nothing a runtime runs), a referrers index (its entries
 * are judged each on its own), or an image.
 */
export function signatureArtifactKind(bytes: Buffer, tag: string | undefined): 'signature' | 'referrers-index' | undefined {
  let parsed;
  try {
    parsed = parseManifest(bytes, undefined);
  } catch {
    return undefined;
  }
  if (parsed.kind === 'manifest') {
    // Every layer a signature: a cosign .sig manifest, a simple-signing or Sigstore bundle referrer, Notation.
    const layers = parsed.blobs.filter((b) => b !== parsed.config);
    return layers.length > 0 && layers.every((l) => isSignatureLayer(l.mediaType)) ? 'signature' : undefined;
  }
  // The OCI referrers tag schema: an index tagged sha256-<hex> whose entries name no platform.
  return tag !== undefined && SIGNATURE_TAG.test(tag) && parsed.manifests.every((m) => m.platform === undefined) ? 'referrers-index' : undefined;
}

/** True for a signature artifact or a referrers index (see signatureArtifactKind). */
export function isSignatureArtifact(bytes: Buffer, tag: string | undefined): boolean {
  return signatureArtifactKind(bytes, tag) !== undefined;
}
