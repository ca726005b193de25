/**
 * Immutable tags: in a repository under one of the configured prefixes, a tag once written keeps pointing at the
 * same manifest. Pushing the same manifest to it again is allowed (a retried push); moving it to another one, or
 * deleting it (or deleting the manifest it points at, which would take the tag with it), is refused.
 */

/** Parses the list of prefixes (`releases/`, `apps/prod/`; empty: every repository). */
export function parseImmutablePrefixes(value: unknown, origin: string): string[] {
  const items = typeof value === 'string' ? value.split(',').map((v) => v.trim()) : value;
  if (!Array.isArray(items) || items.some((v) => typeof v !== 'string')) throw new Error(`${origin}: expected a list of repository prefixes such as [releases/]`);
  return [...new Set(items as string[])];
}

export class ImmutableTags {
  private readonly prefixes: readonly string[];

  constructor(prefixes: readonly string[]) {
    this.prefixes = prefixes;
  }

  get enabled(): boolean {
    return this.prefixes.length > 0;
  }

  /** The prefix that makes the repository's tags immutable, or undefined. */
  prefixFor(repository: string): string | undefined {
    let best: string | undefined;
    for (const p of this.prefixes) if (repository.startsWith(p) && (best === undefined || p.length > best.length)) best = p;
    return best;
  }
}

/** The part of a retention rule this module needs (see src/life/retention.ts). */
export interface RetentionRuleLike {
  prefix: string;
  keepLast?: number;
  keepDays?: number;
  protect?: string[];
}

/**
 * Retention rules changed so that they never remove an immutable tag: a rule that applies under an immutable
 * prefix protects every tag, and each immutable prefix gets a rule of its own, longer than any rule above it.
 */
export function protectImmutableTags<T extends RetentionRuleLike>(rules: readonly T[], immutablePrefixes: readonly string[]): RetentionRuleLike[] {
  if (rules.length === 0 || immutablePrefixes.length === 0) return [...rules];
  const out: RetentionRuleLike[] = rules.map((r) => (immutablePrefixes.some((p) => r.prefix.startsWith(p)) ? { ...r, protect: ['*'] } : r));
  for (const p of immutablePrefixes) {
    const covered = rules.some((r) => p.startsWith(r.prefix) && r.prefix !== p);
    if (covered && !out.some((r) => r.prefix === p)) out.push({ prefix: p, keepDays: 0, protect: ['*'] });
  }
  return out;
}

/** One tag check and its write at a time per key (the same per-key lock the store uses). */
export { KeyedMutex as KeyedLock } from '../oci/index.ts';
