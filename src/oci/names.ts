import { InvalidError } from './errors.ts';

/** Path component grammar of the distribution spec. */
const COMPONENT = /^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*$/;
const TAG = /^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$/;
/** Repository names longer than this are refused (distribution's limit). */
export const MAX_NAME_LENGTH = 255;

/** Validates a repository name such as `library/nginx`; throws NAME_INVALID with the reason. */
export function validateRepositoryName(name: string): string {
  if (!name) throw new InvalidError('NAME_INVALID', 'repository name is empty');
  if (name.length > MAX_NAME_LENGTH) {
    throw new InvalidError('NAME_INVALID', `repository name is ${name.length} characters long; the limit is ${MAX_NAME_LENGTH}`, { name: name.slice(0, 64) + '...' });
  }
  for (const component of name.split('/')) {
    if (!COMPONENT.test(component)) {
      throw new InvalidError(
        'NAME_INVALID',
        `invalid repository name ${JSON.stringify(name)}: each path component must be lowercase letters and digits, separated by '.', '_', '__' or '-'`,
        { name },
      );
    }
  }
  return name;
}

export function isValidRepositoryName(name: string): boolean {
  try {
    validateRepositoryName(name);
    return true;
  } catch {
    return false;
  }
}

export function isValidTag(tag: string): boolean {
  return TAG.test(tag);
}

export function validateTag(tag: string): string {
  if (!isValidTag(tag)) {
    throw new InvalidError('TAG_INVALID', `invalid tag ${JSON.stringify(tag.slice(0, 200))}: tags match [a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`);
  }
  return tag;
}

/** A registry host as image references and `?ns=` name it: DNS labels or an IPv4 address, and an optional port 1-65535. */
export function isValidRegistryHost(value: string): boolean {
  const m = /^([a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*)(?::(\d{1,5}))?$/i.exec(value);
  if (!m || m[1]!.length > 253) return false;
  if (m[1]!.split('.').some((label) => label.length > 63)) return false;
  if (m[2] !== undefined) {
    const port = Number(m[2]);
    if (port < 1 || port > 65535) return false;
  }
  return true;
}
