/**
 * The whole LevelDB key layout of a Shoal node, in one place. Keys are UTF-8 strings; values are JSON.
 * NUL separates the parts of a compound key because no repository name, tag or digest can contain it,
 * so a prefix scan over `<kind>:<repo>\0` lists exactly one repository's records in key order.
 *
 *   meta:schema                              -> "1"                      layout version (see SCHEMA_VERSION)
 *   blob:<digest>                            -> {size, created}          a complete, verified blob file exists
 *   atime:<digest>                           -> <ms>                     last read, for LRU eviction
 *   chunks:<digest>                          -> {size, chunks}           sha256 of each 4 MiB chunk, from verified bytes
 *   repo:<name>                              -> {created}                repository exists
 *   link:<name>\0<digest>                    -> {size, created}          blob is part of the repository
 *   holder:<digest>\0<name>                  -> 1                        reverse of link:, to count holders
 *   manifest:<name>\0<digest>                -> ManifestRecord           manifest stored in the repository
 *   tag:<name>\0<tag>                        -> {digest, updated}        tag points at a manifest
 *   referrer:<name>\0<subject>\0<digest>     -> ReferrerDescriptor       manifest whose subject is <subject>
 *   upload:<id>                              -> UploadSession            resumable upload session
 *   pin:<name>\0<digest>                     -> {reason, created}        manifest (and what it references) must stay
 *
 * Every change that touches more than one key is written as one batch, with `sync` (access times without).
 * Order makes a power cut safe: a blob file is durable (fsync, rename, fsync of its directory) before the `blob:`
 * record that names it is written; a `blob:` record (and every record naming the digest) is removed before the
 * file. Recovery therefore finds at most files without records (deleted, since no write that made them was
 * acknowledged, or their removal was), never records without files (those are dropped with whatever names them).
 * A `link:` without its `blob:` does not exist: eviction and corruption remove the links with the blob.
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
  atimePrefix: () => 'atime:',
  chunks: (digest: string) => `chunks:${digest}`,
  repo: (name: string) => `repo:${name}`,
  repoPrefix: () => 'repo:',
  linkAll: () => 'link:',
  manifestAll: () => 'manifest:',
  tagAll: () => 'tag:',
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

/** The parts of a compound key after its `<kind>:` prefix. */
export function keyParts(key: string): string[] {
  return key.slice(key.indexOf(':') + 1).split(SEP);
}

/** The last part of a compound key. */
export function lastPart(key: string): string {
  return key.slice(key.lastIndexOf(SEP) + 1);
}
