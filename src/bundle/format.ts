/**
 * The bundle format, as pure data and checks (no I/O).
 *
 * A bundle is an OCI image layout in a tar file, with two Shoal files in front:
 *
 *   shoal-bundle.json   the bundle manifest: every other file's path, size and sha256, the images, and the
 *                       blobs left out because the target site already has them (--have)
 *   shoal-bundle.sig    optional: an ed25519 signature of the exact bytes of shoal-bundle.json
 *   oci-layout          {"imageLayoutVersion":"1.0.0"}
 *   index.json          one entry per image, named by org.opencontainers.image.ref.name and
 *                       io.containerd.image.name (both the full reference)
 *   blobs/sha256/<hex>  every manifest, config and layer, once
 *
 * Every blob's digest is known before it is written, so the bundle manifest goes first and an importer can
 * check the signature before it writes anything. A bundle split over several disks is the same tar cut into
 * `FILE.part001`, `FILE.part002`, ... with `FILE.parts.json` listing each part's size and sha256.
 */
import { Digest, isValidTag, parseReference, storeRepositoryName, type Platform, type Reference } from '../oci/index.ts';
import { BundleRefusedError } from './errors.ts';

/** Sizes are written and read by one module for the whole program. */
export { formatBytes } from '../limits/size.ts';

export const BUNDLE_MANIFEST_FILE = 'shoal-bundle.json';
export const BUNDLE_SIGNATURE_FILE = 'shoal-bundle.sig';
export const OCI_LAYOUT_FILE = 'oci-layout';
export const OCI_INDEX_FILE = 'index.json';
export const DOCKER_MANIFEST_FILE = 'manifest.json';
export const BUNDLE_MEDIA_TYPE = 'application/vnd.shoal.bundle.v1+json';
export const PARTS_MEDIA_TYPE = 'application/vnd.shoal.bundle.parts.v1+json';
export const INVENTORY_MEDIA_TYPE = 'application/vnd.shoal.inventory.v1+json';
export const OCI_LAYOUT_CONTENT = '{"imageLayoutVersion":"1.0.0"}';
export const REF_NAME_ANNOTATION = 'org.opencontainers.image.ref.name';
export const CONTAINERD_NAME_ANNOTATION = 'io.containerd.image.name';
/** Manifests, indexes and image configs are at most this large; they are the only entries held in memory. */
export const MAX_METADATA_BYTES = 4 * 1024 * 1024;
/** Upper bound of the bundle manifest itself (a few hundred bytes per file). */
export const MAX_BUNDLE_MANIFEST_BYTES = 64 * 1024 * 1024;
/** Parts of a split bundle: FILE.part001 ... FILE.part999. */
export const MAX_PARTS = 999;
/** Where an import keeps verified blobs until the images naming them are written. */
export { STAGING_REPOSITORY } from '../store/index.ts';

export interface BundleFile {
  path: string;
  size: number;
  /** Lowercase hex sha256 of the file's bytes. */
  sha256: string;
}

export interface BundleImage {
  /** The full reference, e.g. `docker.io/library/nginx:1.27`. */
  reference: string;
  /** Digest of the manifest or index in the bundle that the reference names. */
  digest: string;
  mediaType: string;
  /** When --platform took a subset of an index: the digest of the original index. */
  sourceDigest?: string;
  /** Platforms in the bundle, `os/arch[/variant]`, for an index. */
  platforms?: string[];
  /** Digests of the referrers (signatures, SBOMs) that went along. */
  referrers?: string[];
}

export interface OmittedBlob {
  digest: string;
  size: number;
}

export interface BundleManifest {
  schemaVersion: 1;
  mediaType: typeof BUNDLE_MEDIA_TYPE;
  created: string;
  images: BundleImage[];
  /** Every file of the tar except shoal-bundle.json and shoal-bundle.sig, in tar order. */
  files: BundleFile[];
  /** Blobs the images need that were left out because the target already has them (export --have). */
  omitted: OmittedBlob[];
}

export interface BundlePart {
  /** File name (no directory): `release.tar.part001`. */
  name: string;
  size: number;
  sha256: string;
}

export interface PartsList {
  schemaVersion: 1;
  mediaType: typeof PARTS_MEDIA_TYPE;
  created: string;
  /** Total bytes of the tar (the parts concatenated). */
  size: number;
  parts: BundlePart[];
}

export interface InventoryBlob {
  digest: string;
  size: number;
}

/** What a site already has: written by `shoal inventory`, read by `shoal export --have`. */
export interface Inventory {
  schemaVersion: 1;
  mediaType: typeof INVENTORY_MEDIA_TYPE;
  created: string;
  /** Where it was taken: `node http://...` or `store /var/lib/shoal`. */
  source: string;
  /** Images found, `repository:tag` -> digest, untagged ones as `repository@digest` (for people reading the file). */
  images: Record<string, string>;
  /** Every config and layer blob held (manifests are always carried, so they are not listed). */
  blobs: InventoryBlob[];
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function isSize(v: unknown): v is number {
  return typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
}

const HEX64 = /^[a-f0-9]{64}$/;

/** Parses the bundle manifest; a malformed one makes the whole bundle untrustworthy. */
export function parseBundleManifest(bytes: Uint8Array): BundleManifest {
  const bad = (why: string): never => {
    throw new BundleRefusedError('format', `${BUNDLE_MANIFEST_FILE} is malformed: ${why}`);
  };
  let json: unknown;
  try {
    json = JSON.parse(Buffer.from(bytes).toString('utf8'));
  } catch (err) {
    bad(`not JSON (${(err as Error).message})`);
  }
  if (!isObject(json)) return bad('not a JSON object');
  if (json.schemaVersion !== 1 || json.mediaType !== BUNDLE_MEDIA_TYPE) bad(`unknown version (schemaVersion ${JSON.stringify(json.schemaVersion)}, mediaType ${JSON.stringify(json.mediaType)}); a newer Shoal may read it`);
  if (!Array.isArray(json.files)) bad('"files" must be a list');
  if (!Array.isArray(json.images)) bad('"images" must be a list');
  const files: BundleFile[] = [];
  const seen = new Set<string>();
  for (const [i, f] of (json.files as unknown[]).entries()) {
    if (!isObject(f) || typeof f.path !== 'string' || !isSize(f.size) || typeof f.sha256 !== 'string' || !HEX64.test(f.sha256)) {
      bad(`files[${i}] needs path, size and a 64-hex sha256`);
    }
    const file = f as unknown as BundleFile;
    const path = checkEntryPath(file.path);
    if (seen.has(path)) bad(`files lists ${path} twice`);
    seen.add(path);
    files.push({ path, size: file.size, sha256: file.sha256 });
  }
  const images: BundleImage[] = [];
  for (const [i, m] of (json.images as unknown[]).entries()) {
    if (!isObject(m) || typeof m.reference !== 'string' || typeof m.digest !== 'string' || !Digest.isValid(m.digest) || typeof m.mediaType !== 'string') {
      bad(`images[${i}] needs reference, digest and mediaType`);
    }
    images.push(m as unknown as BundleImage);
  }
  const omitted: OmittedBlob[] = [];
  if (json.omitted !== undefined) {
    if (!Array.isArray(json.omitted)) bad('"omitted" must be a list');
    for (const [i, o] of (json.omitted as unknown[]).entries()) {
      if (!isObject(o) || typeof o.digest !== 'string' || !Digest.isValid(o.digest) || !isSize(o.size)) bad(`omitted[${i}] needs digest and size`);
      omitted.push({ digest: (o as { digest: string }).digest, size: (o as { size: number }).size });
    }
  }
  return { schemaVersion: 1, mediaType: BUNDLE_MEDIA_TYPE, created: String(json.created ?? ''), images, files, omitted };
}

/** Parses a parts list (FILE.parts.json). */
export function parsePartsList(bytes: Uint8Array, where: string): PartsList {
  const bad = (why: string): never => {
    throw new BundleRefusedError('format', `${where} is not a valid parts list: ${why}`);
  };
  let json: unknown;
  try {
    json = JSON.parse(Buffer.from(bytes).toString('utf8'));
  } catch (err) {
    bad(`not JSON (${(err as Error).message})`);
  }
  if (!isObject(json) || json.mediaType !== PARTS_MEDIA_TYPE || json.schemaVersion !== 1) return bad(`mediaType must be ${PARTS_MEDIA_TYPE}`);
  if (!Array.isArray(json.parts) || json.parts.length === 0 || json.parts.length > MAX_PARTS) bad(`"parts" must list 1 to ${MAX_PARTS} parts`);
  const parts: BundlePart[] = [];
  for (const [i, p] of (json.parts as unknown[]).entries()) {
    if (!isObject(p) || typeof p.name !== 'string' || !isSize(p.size) || typeof p.sha256 !== 'string' || !HEX64.test(p.sha256)) bad(`parts[${i}] needs name, size and sha256`);
    const name = (p as { name: string }).name;
    if (name.includes('/') || name.includes('\\') || name === '..' || name === '.') bad(`parts[${i}].name must be a plain file name`);
    parts.push(p as unknown as BundlePart);
  }
  const size = parts.reduce((n, p) => n + p.size, 0);
  if (json.size !== size) bad(`size ${JSON.stringify(json.size)} is not the sum of the parts (${size})`);
  return { schemaVersion: 1, mediaType: PARTS_MEDIA_TYPE, created: String(json.created ?? ''), size, parts };
}

/** Parses an inventory file written by `shoal inventory`. Throws a plain Error naming what is wrong. */
export function parseInventory(bytes: Uint8Array, where: string): Inventory {
  let json: unknown;
  try {
    json = JSON.parse(Buffer.from(bytes).toString('utf8'));
  } catch (err) {
    throw new Error(`${where} is not JSON: ${(err as Error).message}`);
  }
  if (!isObject(json) || json.mediaType !== INVENTORY_MEDIA_TYPE || !Array.isArray(json.blobs)) {
    throw new Error(`${where} is not a Shoal inventory (write one with \`shoal inventory -o FILE\` on the site)`);
  }
  const blobs: InventoryBlob[] = [];
  for (const [i, b] of (json.blobs as unknown[]).entries()) {
    if (!isObject(b) || typeof b.digest !== 'string' || !Digest.isValid(b.digest) || !isSize(b.size)) throw new Error(`${where}: blobs[${i}] needs digest and size`);
    blobs.push({ digest: b.digest, size: b.size });
  }
  const images = isObject(json.images) ? (json.images as Record<string, string>) : {};
  return { schemaVersion: 1, mediaType: INVENTORY_MEDIA_TYPE, created: String(json.created ?? ''), source: String(json.source ?? ''), images, blobs };
}

/**
 * The normalised path of a tar entry, refusing anything that could point outside the bundle: absolute paths,
 * drive letters, backslashes, `..` components, NUL. A leading `./` is dropped (tar tools write it).
 */
export function checkEntryPath(raw: string): string {
  const unsafe = (why: string): never => {
    throw new BundleRefusedError('unsafe', `the bundle has an entry ${JSON.stringify(raw.slice(0, 200))} ${why}; Shoal refuses bundles with such paths`, { path: raw.slice(0, 200) });
  };
  if (raw.includes('\0')) unsafe('with a NUL byte');
  if (raw.startsWith('/')) unsafe('with an absolute path');
  if (/^[A-Za-z]:/.test(raw) || raw.includes('\\')) unsafe('with a Windows path');
  const parts = raw.split('/');
  if (parts.includes('..')) unsafe('whose path goes up a directory (..)');
  const normalised = parts.filter((p) => p !== '' && p !== '.').join('/');
  if (!normalised) unsafe('with an empty path');
  return normalised;
}

/** `blobs/<algorithm>/<hex>` -> the digest, or undefined for any other path. Throws for a malformed blob path. */
export function blobDigestOfPath(path: string): string | undefined {
  const m = /^blobs\/([^/]+)\/([^/]+)$/.exec(path);
  if (!m) return undefined;
  const digest = `${m[1]}:${m[2]}`;
  if (!Digest.isValid(digest)) {
    throw new BundleRefusedError('format', `the bundle has a blob file ${path} whose name is not a digest`, { path });
  }
  return digest;
}

export function blobPathOf(digest: string): string {
  const d = Digest.parse(digest);
  return `blobs/${d.algorithm}/${d.hex}`;
}

/** A platform as `--platform` names it: os/arch[/variant]. */
export interface PlatformSelector {
  os: string;
  architecture: string;
  variant?: string;
}

/** `linux/amd64,linux/arm64/v8` -> selectors. Throws a plain Error for a malformed one. */
export function parsePlatforms(text: string): PlatformSelector[] {
  const out: PlatformSelector[] = [];
  for (const item of text.split(',').map((s) => s.trim()).filter(Boolean)) {
    const parts = item.split('/');
    if (parts.length < 2 || parts.length > 3 || parts.some((p) => !/^[a-z0-9._-]+$/i.test(p))) {
      throw new Error(`platform ${JSON.stringify(item)} is not os/arch[/variant] (e.g. linux/amd64 or linux/arm64/v8)`);
    }
    out.push({ os: parts[0]!, architecture: parts[1]!, variant: parts[2] });
  }
  if (out.length === 0) throw new Error('--platform needs at least one os/arch');
  return out;
}

export function formatPlatform(p: { os: string; architecture: string; variant?: string }): string {
  return `${p.os}/${p.architecture}${p.variant ? `/${p.variant}` : ''}`;
}

/** True when `p` is one of `selectors`; a selector without a variant takes any variant. */
export function platformMatches(p: Platform | undefined, selectors: PlatformSelector[]): boolean {
  if (!p) return false;
  return selectors.some((s) => s.os === p.os && s.architecture === p.architecture && (s.variant === undefined || s.variant === p.variant));
}

/**
 * The repository of a node's store that holds `ref`: `<registry>/<repository>`, the way a node stores what
 * containerd pulls through it with `?ns=<registry>` (a port's colon becomes a dash).
 */
export function storeRepository(ref: Reference): string {
  return storeRepositoryName(ref.registry, ref.repository);
}

/**
 * The image a layout's index.json entry names. `io.containerd.image.name` is a full reference;
 * `org.opencontainers.image.ref.name` often is too, but tools also write a bare tag there, which needs
 * `repository` (`--repository`) to mean anything.
 */
export function imageNameOf(annotations: Record<string, string> | undefined, repository: string | undefined): Reference | undefined {
  const full = annotations?.[CONTAINERD_NAME_ANNOTATION];
  const refName = annotations?.[REF_NAME_ANNOTATION];
  if (full) return parseReference(full);
  if (!refName) return undefined;
  if (repository !== undefined && isValidTag(refName)) return parseReference(`${repository}:${refName}`);
  if (!refName.includes('/') && !refName.includes(':')) {
    throw new BundleRefusedError(
      'format',
      `index.json names an image ${JSON.stringify(refName)}, which is a tag without a repository; give --repository REGISTRY/REPOSITORY to import it as REGISTRY/REPOSITORY:${refName}`,
    );
  }
  return parseReference(refName);
}
