import { Digest, isValidChunkMap, isValidRegistryHost, isValidRepositoryName, isValidTag, type ChunkMap } from '../oci/index.ts';
import { ProtocolViolation } from './wire.ts';
import type { ChunkRequest, PullHint } from './types.ts';
import { KEY_BYTES, NONCE_BYTES, TICKET_BYTES, type ChannelOffer } from './data-channel.ts';

/**
 * Everything a peer sends is checked here with the registry API's own rules (digests, repository names, tags,
 * sizes) before any of it reaches the store or a decision. A message that fails is a ProtocolViolation.
 */

function invalid(message: string): never {
  throw new ProtocolViolation('invalid-message', message);
}

/** A canonical digest, or a violation. */
export function peerDigest(value: unknown, what = 'digest'): string {
  if (typeof value !== 'string' || !Digest.isValid(value)) invalid(`${what} is not a valid digest`);
  return value;
}

function offset(value: unknown, what: string): number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 0) invalid(`${what} is not a non-negative integer`);
  return value;
}

function pullHint(value: unknown): PullHint | undefined {
  if (value === undefined || value === null) return undefined;
  if (typeof value !== 'object' || Array.isArray(value)) invalid('pull hint is not an object');
  const v = value as Record<string, unknown>;
  if (typeof v.repository !== 'string' || !isValidRepositoryName(v.repository)) invalid('pull hint repository is not a valid repository name');
  if (typeof v.upstream !== 'string' || !isValidRepositoryName(v.upstream)) invalid('pull hint upstream is not a valid repository name');
  if (v.namespace !== undefined && (typeof v.namespace !== 'string' || !isValidRegistryHost(v.namespace))) invalid('pull hint namespace is not a registry host');
  const namespace = v.namespace as string | undefined;
  return { repository: v.repository, upstream: v.upstream, ...(namespace === undefined ? {} : { namespace: namespace.toLowerCase() }) };
}

export function parseChunkRequest(msg: Record<string, unknown>): ChunkRequest {
  const digest = peerDigest(msg.digest);
  const start = offset(msg.start, 'start');
  const end = offset(msg.end, 'end');
  if (end < start) invalid('end is before start');
  const pull = pullHint(msg.pull);
  const channel = msg.channel === true;
  return { digest, start, end, ...(pull ? { pull } : {}), ...(channel ? { channel: true } : {}), ...(channel && msg.clear === true ? { clear: true } : {}) };
}

export function parseDigestRequest(msg: Record<string, unknown>): { digest: string } {
  return { digest: peerDigest(msg.digest) };
}

export function parseTagRequest(msg: Record<string, unknown>): { repository: string; tag: string } {
  if (typeof msg.repository !== 'string' || !isValidRepositoryName(msg.repository)) invalid('repository is not a valid repository name');
  if (typeof msg.tag !== 'string' || !isValidTag(msg.tag)) invalid('tag is not a valid tag');
  return { repository: msg.repository, tag: msg.tag };
}

export function parseReportRequest(msg: Record<string, unknown>): { digest: string; chunks: number[] } {
  const digest = peerDigest(msg.digest);
  const chunks = msg.chunks ?? [];
  if (!Array.isArray(chunks) || chunks.length > 10_000) invalid('chunks is not a short list');
  return { digest, chunks: chunks.map((c, i) => offset(c, `chunks[${i}]`)) };
}

export interface InventoryMessage {
  type: 'snapshot' | 'add' | 'remove';
  digests: string[];
  zone?: string;
}

/** An inventory message; digests that are not valid are a violation (a peer running Shoal never sends one). */
export function parseInventoryMessage(msg: Record<string, unknown>, maxDigests: number): InventoryMessage {
  if (msg.type !== 'snapshot' && msg.type !== 'add' && msg.type !== 'remove') invalid('inventory message type is unknown');
  if (!Array.isArray(msg.digests)) invalid('inventory digests is not a list');
  if (msg.digests.length > maxDigests) throw new ProtocolViolation('oversize-message', `an inventory message lists ${msg.digests.length} digests; the limit is ${maxDigests}`);
  const digests = msg.digests.map((d) => peerDigest(d, 'an inventory digest'));
  let zone: string | undefined;
  if (msg.zone !== undefined && msg.zone !== null) {
    if (typeof msg.zone !== 'string' || msg.zone.length > 128) invalid('zone is not a short string');
    zone = msg.zone;
  }
  return { type: msg.type, digests, ...(zone === undefined ? {} : { zone }) };
}

/** A chunk map answer: undefined when the peer has none; a map of the wrong shape or size is a violation. */
export function parseChunkMapAnswer(msg: Record<string, unknown>, size?: number): ChunkMap | undefined {
  if (msg.found !== true) return undefined;
  const map = { size: msg.size, chunks: msg.chunks };
  if (!isValidChunkMap(map)) throw new ProtocolViolation('bad-map', 'its chunk map is malformed');
  if (size !== undefined && map.size !== size) throw new ProtocolViolation('bad-map', `its chunk map says ${map.size} bytes; the blob has ${size}`);
  return { size: map.size, chunks: map.chunks };
}

/** A tag answer; records from the future (beyond a minute of clock skew) are taken as now. */
export function parseTagAnswer(msg: Record<string, unknown>, now = Date.now()): { digest: string; updated: number } | undefined {
  if (msg.found !== true) return undefined;
  const digest = peerDigest(msg.digest, 'tag digest');
  let updated = typeof msg.updated === 'number' && Number.isFinite(msg.updated) && msg.updated >= 0 ? msg.updated : 0;
  if (updated > now + 60_000) updated = now;
  return { digest, updated };
}

export function parseManifestHeader(msg: Record<string, unknown>): { mediaType: string } | undefined {
  if (msg.found !== true) return undefined;
  if (typeof msg.mediaType !== 'string' || msg.mediaType.length > 255 || !/^[\w.+-]+\/[\w.+-]+$/.test(msg.mediaType)) invalid('manifest media type is not valid');
  return { mediaType: msg.mediaType };
}

export type ChunkHeader = { status: 'OK'; size: number; channel?: ChannelOffer } | { status: 'NOT_FOUND' } | { status: 'BUSY' } | { status: 'ERROR'; message: string };

function base64Bytes(value: unknown, bytes: number, what: string): string {
  if (typeof value !== 'string' || !/^[A-Za-z0-9+/]+=*$/.test(value) || Buffer.from(value, 'base64').length !== bytes) invalid(`${what} is not ${bytes} bytes in base64`);
  return value;
}

/**
 * A data channel offer in a chunk answer (data-channel.ts). An unsealed one (`sealed: false`, no key, no nonce) is
 * taken only when the asking node asked for it (`clear`); otherwise it is a violation like any malformed offer.
 */
function channelOffer(value: unknown, clear: boolean): ChannelOffer | undefined {
  if (value === undefined || value === null) return undefined;
  if (typeof value !== 'object' || Array.isArray(value)) invalid('channel offer is not an object');
  const v = value as Record<string, unknown>;
  if (typeof v.port !== 'number' || !Number.isInteger(v.port) || v.port < 1 || v.port > 65535) invalid('channel port is not a port number');
  const ticket = base64Bytes(v.ticket, TICKET_BYTES, 'channel ticket');
  if (v.sealed === false) {
    if (!clear) invalid('it offered unsealed bytes on the data channel, which were not asked for');
    if (v.key !== undefined || v.nonce !== undefined) invalid('an unsealed channel offer carries a key');
    return { port: v.port, ticket, sealed: false };
  }
  if (v.sealed !== undefined && v.sealed !== true) invalid('channel sealed is not a boolean');
  return { port: v.port, ticket, key: base64Bytes(v.key, KEY_BYTES, 'channel key'), nonce: base64Bytes(v.nonce, NONCE_BYTES, 'channel nonce') };
}

/** A chunk answer; `clear`: the request asked for the data channel unsealed, so an unsealed offer is taken. */
export function parseChunkHeader(msg: Record<string, unknown>, opts: { clear?: boolean } = {}): ChunkHeader {
  switch (msg.status) {
    case 'OK': {
      const channel = channelOffer(msg.channel, opts.clear === true);
      return { status: 'OK', size: offset(msg.size, 'size'), ...(channel ? { channel } : {}) };
    }
    case 'NOT_FOUND':
    case 'BUSY':
      return { status: msg.status };
    case 'ERROR':
      return { status: 'ERROR', message: typeof msg.message === 'string' ? msg.message.slice(0, 500) : 'error' };
    default:
      return invalid('chunk answer status is unknown');
  }
}

export function parseReportAnswer(msg: Record<string, unknown>): 'ok' | 'corrupt' | 'missing' | 'busy' | 'unknown' {
  const o = msg.outcome;
  return o === 'ok' || o === 'corrupt' || o === 'missing' || o === 'busy' ? o : 'unknown';
}
