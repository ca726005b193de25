import { Digest } from './digest.ts';
import { InvalidError } from './errors.ts';
import { validateRepositoryName, validateTag } from './names.ts';

/** A parsed image reference: `[registry/]repository[:tag][@digest]`. */
export interface Reference {
  registry: string;
  repository: string;
  tag?: string;
  digest?: string;
}

export const DEFAULT_REGISTRY = 'docker.io';

/**
 * Parses an image reference the way container tools do: the first component is a registry when it has a dot
 * or a port or is `localhost`; Docker Hub names without a slash get `library/`.
 */
export function parseReference(input: string, defaultRegistry = DEFAULT_REGISTRY): Reference {
  let rest = input.trim();
  if (!rest) throw new InvalidError('NAME_INVALID', 'empty image reference');
  let digest: string | undefined;
  const at = rest.indexOf('@');
  if (at >= 0) {
    digest = Digest.parse(rest.slice(at + 1)).toString();
    rest = rest.slice(0, at);
  }
  let registry = defaultRegistry;
  const slash = rest.indexOf('/');
  if (slash > 0) {
    const first = rest.slice(0, slash);
    if (first.includes('.') || first.includes(':') || first === 'localhost') {
      registry = first;
      rest = rest.slice(slash + 1);
    }
  }
  let tag: string | undefined;
  const colon = rest.lastIndexOf(':');
  if (colon >= 0) {
    tag = validateTag(rest.slice(colon + 1));
    rest = rest.slice(0, colon);
  }
  if (registry === 'docker.io' && !rest.includes('/')) rest = `library/${rest}`;
  validateRepositoryName(rest);
  if (!tag && !digest) tag = 'latest';
  return { registry, repository: rest, tag, digest };
}

export function formatReference(ref: Reference): string {
  let s = `${ref.registry}/${ref.repository}`;
  if (ref.tag) s += `:${ref.tag}`;
  if (ref.digest) s += `@${ref.digest}`;
  return s;
}

/**
 * The repository a node keeps an image of `registry` in: `<registry>/<repository>`, lower-cased, with the
 * port's colon as `-` (`registry.local:5000` + `team/app` -> `registry.local-5000/team/app`). Pull-through
 * with `?ns=<registry>`, bundle imports and pins all name repositories this way.
 */
export function storeRepositoryName(registry: string, repository: string): string {
  return `${registry.toLowerCase().replace(':', '-')}/${repository}`;
}

/**
 * The registry and repository a stored repository name stands for, the inverse of storeRepositoryName:
 * `registry.local-5000/team/app` -> `registry.local:5000` and `team/app`. Undefined when its first component is
 * not a registry host (a dot in it, or `localhost`): a repository pushed as it is.
 */
export function parseStoreRepositoryName(name: string): { registry: string; repository: string } | undefined {
  const slash = name.indexOf('/');
  if (slash <= 0) return undefined;
  const first = name.slice(0, slash);
  if (!first.includes('.') && !first.startsWith('localhost')) return undefined;
  return { registry: first.replace(/-(\d+)$/, ':$1'), repository: name.slice(slash + 1) };
}
