import type { TagEntry } from '../store/index.ts';

/** A retention rule for the repositories under a prefix (the longest matching prefix wins). */
export interface RetentionRule {
  /** Repository prefix, e.g. `docker.io/` or `apps/team-a`; empty matches every repository. */
  prefix: string;
  /** Keep the newest N tags (by when they were last set). */
  keepLast?: number;
  /** Keep tags set within the last D days. */
  keepDays?: number;
  /** Tags matching one of these patterns (`*` matches any run of characters) always stay. */
  protect?: string[];
}

function globToRegExp(glob: string): RegExp {
  return new RegExp(`^${glob.split('*').map((p) => p.replace(/[.+?^${}()|[\]\\]/g, '\\$&')).join('.*')}$`);
}

/** Checks rules as they come from the config file; returns them normalised or throws with what is wrong. */
export function parseRetentionRules(value: unknown, origin: string): RetentionRule[] {
  if (!Array.isArray(value)) throw new Error(`${origin}: expected a list of rules such as [{prefix: "docker.io/", keepLast: 5}]`);
  return value.map((raw, i) => {
    const where = `${origin}[${i}]`;
    if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw new Error(`${where}: expected {prefix, keepLast, keepDays, protect}`);
    const r = raw as Record<string, unknown>;
    for (const k of Object.keys(r)) if (!['prefix', 'keepLast', 'keepDays', 'protect'].includes(k)) throw new Error(`${where}: unknown key ${JSON.stringify(k)}`);
    if (typeof r.prefix !== 'string') throw new Error(`${where}.prefix: expected a string (empty for every repository)`);
    for (const k of ['keepLast', 'keepDays'] as const) {
      if (r[k] !== undefined && (typeof r[k] !== 'number' || !Number.isFinite(r[k]) || (r[k] as number) < 0)) throw new Error(`${where}.${k}: expected a non-negative number`);
    }
    if (r.keepLast === undefined && r.keepDays === undefined) throw new Error(`${where}: give keepLast, keepDays or both`);
    if (r.protect !== undefined && (!Array.isArray(r.protect) || r.protect.some((p) => typeof p !== 'string'))) throw new Error(`${where}.protect: expected a list of tag patterns`);
    return { prefix: r.prefix, keepLast: r.keepLast as number | undefined, keepDays: r.keepDays as number | undefined, protect: r.protect as string[] | undefined };
  });
}

/** The rule for a repository: the one with the longest prefix that matches it. */
export function ruleFor(rules: RetentionRule[], repository: string): RetentionRule | undefined {
  let best: RetentionRule | undefined;
  for (const r of rules) if (repository.startsWith(r.prefix) && (!best || r.prefix.length > best.prefix.length)) best = r;
  return best;
}

export interface ExpiredTag extends TagEntry {
  reason: string;
}

/**
 * The tags retention removes: in each repository with a rule, a tag stays when it is among the newest `keepLast`,
 * or was set within `keepDays`, or matches a protected pattern, or points at a pinned manifest.
 */
export function expiredTags(rules: RetentionRule[], tags: TagEntry[], pinned: ReadonlySet<string>, now: number): ExpiredTag[] {
  if (rules.length === 0) return [];
  const byRepo = new Map<string, TagEntry[]>();
  for (const t of tags) {
    const list = byRepo.get(t.repository) ?? [];
    list.push(t);
    byRepo.set(t.repository, list);
  }
  const out: ExpiredTag[] = [];
  for (const [repository, list] of byRepo) {
    const rule = ruleFor(rules, repository);
    if (!rule) continue;
    const protect = (rule.protect ?? []).map(globToRegExp);
    const newestFirst = [...list].sort((a, b) => b.updated - a.updated || a.tag.localeCompare(b.tag));
    newestFirst.forEach((t, rank) => {
      if (protect.some((p) => p.test(t.tag)) || pinned.has(t.digest)) return;
      if (rule.keepLast !== undefined && rank < rule.keepLast) return;
      if (rule.keepDays !== undefined && t.updated >= now - rule.keepDays * 86_400_000) return;
      const why = [rule.keepLast !== undefined ? `not among the newest ${rule.keepLast}` : '', rule.keepDays !== undefined ? `older than ${rule.keepDays} days` : '']
        .filter(Boolean)
        .join(' and ');
      out.push({ ...t, reason: `retention rule for "${rule.prefix}": ${why}` });
    });
  }
  return out;
}
