/**
 * The whole LevelDB key layout of a Shoal node, in one place. Keys are UTF-8 strings; values are JSON.
 * NUL separates the parts of a compound key because no repository name, tag or digest can contain it,
 * so a prefix scan over `<kind>:<repo>\0` lists exactly one repository's records in key order.
 *
 *   meta:schema                              -> "1"                      layout version (see SCHEMA_VERSION)
 *   blob:<digest>                            -> {size, created}          a complete, verified blob file exists
 *   atime:<digest>                           -> <ms>                     last read, for LRU eviction
 *   repo:<name>                              -> {created}                repository exists
 *   link:<name>\0<digest>                    -> {size}                   blob is part of the repository
 *   holder:<digest>\0<name>                  -> 1                        reverse of link:, to count holders
 *   manifest:<name>\0<digest>                -> ManifestRecord           manifest stored in the repository
 *   tag:<name>\0<tag>                        -> {digest, updated}        tag points at a manifest
 *   referrer:<name>\0<subject>\0<digest>     -> ReferrerDescriptor       manifest whose subject is <subject>
 *   upload:<id>                              -> UploadSession            resumable upload session
 *   pin:<name>\0<digest>                     -> {reason, created}        manifest (and what it references) must stay
 *
 * Every change that touches more than one key is written as one batch.
 */
export const SCHEMA_VERSION = '1';
const SEP = '\u0000';
/** Upper bound for a prefix scan. */
export const END = '\uffff';

export const keys = {
  schema: () => 'meta:schema',
  blob: (digest: string) => `blob:${digest}`,
  blobPrefix: () => 'blob:',
  atime: (digest: string) => `atime:${digest}`,
  repo: (name: string) => `repo:${name}`,
  repoPrefix: () => 'repo:',
  link: (name: string, digest: string) => `link:${name}${SEP}${digest}`,
  linkPrefix: (name: string) => `link:${name}${SEP}`,
  holder: (digest: string, name: string) => `holder:${digest}${SEP}${name}`,
  holderPrefix: (digest: string) => `holder:${digest}${SEP}`,
  manifest: (name: string, digest: string) => `manifest:${name}${SEP}${digest}`,
  manifestPrefix: (name: string) => `manifest:${name}${SEP}`,
  tag: (name: string, tag: string) => `tag:${name}${SEP}${tag}`,
  tagPrefix: (name: string) => `tag:${name}${SEP}`,
  referrer: (name: string, subject: string, digest: string) => `referrer:${name}${SEP}${subject}${SEP}${digest}`,
  referrerPrefix: (name: string, subject: string) => `referrer:${name}${SEP}${subject}${SEP}`,
  upload: (id: string) => `upload:${id}`,
  pin: (name: string, digest: string) => `pin:${name}${SEP}${digest}`,
  pinPrefix: () => 'pin:',
  uploadPrefix: () => 'upload:',
};

/** The last part of a compound key. */
export function lastPart(key: string): string {
  return key.slice(key.lastIndexOf(SEP) + 1);
}
