import { Digest } from './digest.ts';
import { InvalidError } from './errors.ts';
import { ACCEPTED_MANIFEST_TYPES, MediaType, baseMediaType, isIndexType } from './media-types.ts';

export interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
  urls?: string[];
  annotations?: Record<string, string>;
  artifactType?: string;
  platform?: Platform;
}

export interface Platform {
  architecture: string;
  os: string;
  variant?: string;
  'os.version'?: string;
  'os.features'?: string[];
}

/** The parts of a manifest or index Shoal acts on; the stored bytes keep everything else. */
export interface ParsedManifest {
  mediaType: string;
  kind: 'manifest' | 'index';
  /** Blobs the manifest needs: config and layers (empty for an index). */
  blobs: Descriptor[];
  /** Child manifests of an index (empty for an image manifest). */
  manifests: Descriptor[];
  config?: Descriptor;
  subject?: Descriptor;
  artifactType?: string;
  annotations?: Record<string, string>;
}

function fail(message: string, detail?: unknown): never {
  throw new InvalidError('MANIFEST_INVALID', message, detail);
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function parseAnnotations(v: unknown, where: string): Record<string, string> | undefined {
  if (v === undefined) return undefined;
  if (!isObject(v) || Object.values(v).some((x) => typeof x !== 'string')) fail(`${where}.annotations must be a map of strings`);
  return v as Record<string, string>;
}

export function parseDescriptor(v: unknown, where: string): Descriptor {
  if (!isObject(v)) fail(`${where} must be a descriptor object`);
  const { mediaType, digest, size } = v;
  if (typeof mediaType !== 'string' || !/^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}\/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}$/.test(mediaType)) {
    fail(`${where}.mediaType must be a media type`, { mediaType });
  }
  if (typeof digest !== 'string') fail(`${where}.digest must be a string`);
  try {
    Digest.parse(digest);
  } catch {
    fail(`${where}.digest ${JSON.stringify(digest)} is not a valid digest`);
  }
  if (typeof size !== 'number' || !Number.isSafeInteger(size) || size < 0) fail(`${where}.size must be a non-negative integer`, { size });
  const d: Descriptor = { mediaType, digest, size };
  if (v.urls !== undefined) {
    if (!Array.isArray(v.urls) || v.urls.some((u) => typeof u !== 'string')) fail(`${where}.urls must be a list of strings`);
    d.urls = v.urls as string[];
  }
  const annotations = parseAnnotations(v.annotations, where);
  if (annotations) d.annotations = annotations;
  if (v.artifactType !== undefined) {
    if (typeof v.artifactType !== 'string') fail(`${where}.artifactType must be a string`);
    d.artifactType = v.artifactType;
  }
  if (v.platform !== undefined) {
    const p = v.platform;
    if (!isObject(p) || typeof p.architecture !== 'string' || typeof p.os !== 'string') fail(`${where}.platform needs architecture and os strings`);
    d.platform = p as unknown as Platform;
  }
  return d;
}

/**
 * Parses and validates manifest bytes sent with `contentType`. Accepts OCI image manifests and indexes and
 * Docker schema 2 manifests and manifest lists; anything else is MANIFEST_INVALID.
 */
export function parseManifest(bytes: Uint8Array, contentType: string | undefined): ParsedManifest {
  let json: unknown;
  try {
    json = JSON.parse(Buffer.from(bytes).toString('utf8'));
  } catch (err) {
    fail(`manifest is not valid JSON: ${(err as Error).message}`);
  }
  if (!isObject(json)) fail('manifest must be a JSON object');
  const bodyType = json.mediaType;
  if (bodyType !== undefined && typeof bodyType !== 'string') fail('manifest mediaType must be a string');
  const headerType = baseMediaType(contentType);
  let mediaType: string;
  if (headerType && headerType !== 'application/octet-stream' && headerType !== 'application/json') {
    mediaType = headerType;
    if (bodyType !== undefined && bodyType !== headerType) {
      fail(`manifest mediaType ${JSON.stringify(bodyType)} does not match Content-Type ${JSON.stringify(headerType)}`);
    }
  } else if (typeof bodyType === 'string') {
    mediaType = bodyType;
  } else if (Array.isArray(json.manifests)) {
    mediaType = MediaType.OciIndex;
  } else {
    mediaType = MediaType.OciManifest;
  }
  if (!ACCEPTED_MANIFEST_TYPES.includes(mediaType)) {
    fail(`unsupported manifest media type ${JSON.stringify(mediaType)}`, { accepted: ACCEPTED_MANIFEST_TYPES });
  }
  if (json.schemaVersion !== 2) fail('manifest schemaVersion must be 2', { schemaVersion: json.schemaVersion });
  const annotations = parseAnnotations(json.annotations, 'manifest');
  let artifactType: string | undefined;
  if (json.artifactType !== undefined) {
    if (typeof json.artifactType !== 'string') fail('manifest artifactType must be a string');
    artifactType = json.artifactType;
  }
  const subject = json.subject === undefined ? undefined : parseDescriptor(json.subject, 'subject');
  if (isIndexType(mediaType)) {
    if (!Array.isArray(json.manifests)) fail('an index needs a "manifests" list');
    const manifests = json.manifests.map((m, i) => parseDescriptor(m, `manifests[${i}]`));
    if (json.layers !== undefined || json.config !== undefined) fail('an index must not have "config" or "layers"');
    return { mediaType, kind: 'index', blobs: [], manifests, subject, artifactType, annotations };
  }
  if (json.manifests !== undefined) fail('an image manifest must not have a "manifests" list');
  const config = parseDescriptor(json.config, 'config');
  if (!Array.isArray(json.layers)) fail('an image manifest needs a "layers" list');
  const layers = json.layers.map((l, i) => parseDescriptor(l, `layers[${i}]`));
  if (mediaType === MediaType.DockerManifest && layers.length === 0) fail('a Docker schema 2 manifest needs at least one layer');
  return { mediaType, kind: 'manifest', blobs: [config, ...layers], manifests: [], config, subject, artifactType, annotations };
}

/** artifactType as the referrers API reports it: the manifest's, else its config's media type. */
export function effectiveArtifactType(m: ParsedManifest): string | undefined {
  return m.artifactType ?? m.config?.mediaType;
}
