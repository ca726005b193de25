import { readFile } from 'node:fs/promises';
import { parse as parseYaml } from 'yaml';
import { durationMs } from '../limits/duration.ts';
import { parsePercentOrSize, parseRate, parseSize } from '../limits/size.ts';
import { parseReference } from '../oci/reference.ts';
import { parseRetentionRules, type RetentionRule } from '../life/retention.ts';
import { parseGrants, parseImmutablePrefixes, parseRoleList, parseWebhooks, type Grant, type WebhookConfig } from '../access/index.ts';

/** Log levels pino understands, plus `silent`. */
export const LOG_LEVELS = ['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

/** One upstream registry a node pulls through. */
export interface SeedConfig {
  /** Base URL, e.g. https://registry-1.docker.io or http://10.0.0.5:5000 */
  url: string;
  username?: string;
  password?: string;
  /** PEM file of a CA to trust for this seed. */
  caFile?: string;
  /** Accept any TLS certificate (test setups only). */
  insecureSkipVerify?: boolean;
}

export interface ShoalConfig {
  /** Where LevelDB and blob files live. */
  dataDir: string;
  /** HOST:PORT of the registry endpoint. */
  listen: string;
  /** HOST:PORT that also serves /metrics, /healthz and /readyz (e.g. for Prometheus); empty: none. */
  metricsListen: string;
  logLevel: LogLevel;
  /** Largest manifest accepted on PUT, in bytes (the spec asks for at least 4 MiB). */
  maxManifestBytes: number;
  /** Whether DELETE of manifests, tags and blobs is allowed. */
  deleteEnabled: boolean;
  /** How long SIGTERM waits for in-flight requests before closing their connections, in ms. */
  shutdownGraceMs: number;
  /** Seeds for requests that name no registry (no `?ns=`), tried in order. */
  seeds: SeedConfig[];
  /** Seeds per registry host (what containerd sends as `?ns=`), e.g. `docker.io: [{url: https://registry-1.docker.io}]`. */
  registries: Record<string, SeedConfig[]>;
  /** How long a tag lookup waits for a seed before answering from the last known digest, in ms. */
  tagTimeoutMs: number;
  /** Per attempt, how long a seed may take: to the whole answer for manifests, to the first byte for blobs (ms). */
  seedTimeoutMs: number;
  /** Retries of a seed request after a 5xx, 429, timeout or connection failure. */
  seedRetries: number;
  /** HOST:PORT for the peer network; empty: this node runs without peers. */
  p2pListen: string;
  /** File holding the cluster's private-network key (every node needs the same); required with p2pListen. */
  clusterKeyFile: string;
  /** HOST:PORT of peers to dial. */
  peers: string[];
  /** A DNS name whose addresses are peers (a Kubernetes headless Service); empty: none. */
  peersDns: string;
  /** Find peers by mDNS on the local network. */
  mdns: boolean;
  /**
   * Peer connections keep the authenticated handshake (cluster key, peer ids) but carry their bytes unencrypted,
   * when both ends enable it: faster, for a LAN whose traffic between nodes needs no confidentiality (README).
   */
  p2pClearData: boolean;
  /**
   * Port of the data channel, which carries chunk bytes between nodes beside the peer connection (README, Peers):
   * empty: the first port after the p2p port that no other listener uses (any free port when the p2p port is 0);
   * `off`: chunk bytes stay on the peer connection.
   */
  p2pDataPort: string;
  /** Topology label (e.g. the node's zone); peers with the same label are preferred. */
  zone: string;
  /** Cap on bytes per second served to peers, e.g. 50M or 400Mbit; 0: none. */
  maxPeerUpload: string;
  /** Cap on bytes per second fetched from seeds, e.g. 10M or 80Mbit; 0: none. */
  maxSeedRate: string;
  /** Chunk streams served to peers at once; more are told to come back later. */
  maxChunkStreams: number;
  /** Chunks fetched from peers at once for one blob. */
  parallelChunks: number;
  /** Bytes of stored content allowed, e.g. 40Gi; 0: no quota. Above it, least recently used blobs are evicted. */
  maxStore: string;
  /** Free space to keep on the data file system, e.g. 10% or 5Gi; empty: none. */
  minFree: string;
  /** How often garbage collection runs, e.g. 6h; 0: only on demand (shoal gc). */
  gcInterval: string;
  /** Unreferenced content younger than this is not collected (pushes in progress), e.g. 1h. */
  gcGrace: string;
  /** Upload sessions idle this long are abandoned, e.g. 24h. */
  uploadTimeout: string;
  /** Bytes per second the background scrub re-hashes, e.g. 10M; 0: off. */
  scrubRate: string;
  /** How long the scrub rests after a pass over the store before the next one, e.g. 1h (at least 1s). */
  scrubInterval: string;
  /** Tag retention rules per repository prefix. */
  retention: RetentionRule[];
  /** When no seed answers for a tag, may a peer's newer record of it answer? false: tags only from seeds and bundles. */
  peerTags: boolean;
  /** Most blobs one peer may announce; a peer past it is cut off and banned. */
  maxPeerInventory: number;
  /** How long a peer that sent bad bytes, a bad chunk map or an oversized or malformed message is refused, in ms. */
  peerBanMs: number;
  /** Keep peer bans across this node's restarts (in <data>/p2p/bans.json). */
  persistPeerBans: boolean;
  /** htpasswd file of users (bcrypt entries, `htpasswd -B`); reloaded when it changes. */
  htpasswdFile: string;
  /** Static bearer tokens, one `NAME:TOKEN` (or `NAME:sha256:<hex>`) per line; reloaded when it changes. */
  tokensFile: string;
  /** Roles of callers without credentials: pull (default), none, or e.g. pull,push,delete,admin (all). */
  anonymous: string[];
  /** Roles per user (or token name, or `*` for every authenticated caller) and repository prefix. */
  grants: Grant[];
  /** Repository prefixes whose tags cannot be moved or deleted once written. */
  immutableTags: string[];
  /** PEM certificate and key of the registry endpoint (HTTPS); reloaded when they change. */
  tlsCert: string;
  tlsKey: string;
  /** The audit log file; empty: `<dataDir>/audit.log`. */
  auditLog: string;
  /** Size at which the audit log is rotated, e.g. 10M. */
  auditMaxSize: string;
  /** Rotated audit log files kept. */
  auditKeep: number;
  /** URLs told about every push and delete. */
  webhooks: WebhookConfig[];
  /** Images to keep warm on this node (e.g. registry.local:5000/team/app:1.4): pulled at start-up and re-checked every warmInterval. */
  warmImages: string[];
  /** Pin the warm images, so that eviction leaves them alone. */
  warmPin: boolean;
  /** How often the warm images are checked again, e.g. 15m; 0: only at start-up. */
  warmInterval: string;
  /** Signature policy file (a containers-policy.json subset); empty: every image is served. Reloaded when it changes. */
  policyFile: string;
}

export function defaultConfig(): ShoalConfig {
  return {
    dataDir: './data',
    listen: '127.0.0.1:5000',
    metricsListen: '',
    logLevel: 'info',
    maxManifestBytes: 4 * 1024 * 1024,
    deleteEnabled: true,
    shutdownGraceMs: 10_000,
    seeds: [],
    registries: {},
    tagTimeoutMs: 2_000,
    seedTimeoutMs: 10_000,
    seedRetries: 1,
    p2pListen: '',
    clusterKeyFile: '',
    peers: [],
    peersDns: '',
    mdns: false,
    p2pClearData: false,
    p2pDataPort: '',
    zone: '',
    maxPeerUpload: '0',
    maxSeedRate: '0',
    maxChunkStreams: 32,
    parallelChunks: 4,
    maxStore: '0',
    minFree: '',
    gcInterval: '6h',
    gcGrace: '1h',
    uploadTimeout: '24h',
    scrubRate: '10M',
    scrubInterval: '1h',
    retention: [],
    peerTags: true,
    maxPeerInventory: 100_000,
    peerBanMs: 5 * 60_000,
    persistPeerBans: true,
    htpasswdFile: '',
    tokensFile: '',
    anonymous: ['pull'],
    grants: [],
    immutableTags: [],
    tlsCert: '',
    tlsKey: '',
    auditLog: '',
    auditMaxSize: '10M',
    auditKeep: 5,
    webhooks: [],
    warmImages: [],
    warmPin: false,
    warmInterval: '15m',
    policyFile: '',
  };
}

/** A configuration problem, reported to the operator with the setting and where it came from. */
export class ConfigError extends Error {
  override readonly name = 'ConfigError';
}

export interface ListenAddress {
  host: string;
  port: number;
}

/** Parses `HOST:PORT`, `[v6]:PORT` or `:PORT`. */
export function parseListen(value: string, setting = 'listen'): ListenAddress {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:]*)):(\d{1,5})$/.exec(value.trim());
  const port = m ? Number(m[3]) : NaN;
  if (!m || port > 65535) throw new ConfigError(`${setting}: ${JSON.stringify(value)} is not HOST:PORT (e.g. 127.0.0.1:5000 or 0.0.0.0:5000)`);
  return { host: m[1] ?? (m[2] || '0.0.0.0'), port };
}

const KEYS: Record<keyof ShoalConfig, 'string' | 'optional' | 'list' | 'number' | 'boolean' | 'seeds' | 'registries' | 'retention' | 'grants' | 'webhooks' | 'prefixes'> = {
  dataDir: 'string',
  listen: 'string',
  metricsListen: 'optional',
  logLevel: 'string',
  maxManifestBytes: 'number',
  deleteEnabled: 'boolean',
  shutdownGraceMs: 'number',
  seeds: 'seeds',
  registries: 'registries',
  tagTimeoutMs: 'number',
  seedTimeoutMs: 'number',
  seedRetries: 'number',
  p2pListen: 'optional',
  clusterKeyFile: 'optional',
  peers: 'list',
  peersDns: 'optional',
  mdns: 'boolean',
  p2pClearData: 'boolean',
  p2pDataPort: 'optional',
  zone: 'optional',
  maxPeerUpload: 'optional',
  maxSeedRate: 'optional',
  maxChunkStreams: 'number',
  parallelChunks: 'number',
  maxStore: 'optional',
  minFree: 'optional',
  gcInterval: 'optional',
  gcGrace: 'optional',
  uploadTimeout: 'optional',
  scrubRate: 'optional',
  scrubInterval: 'optional',
  retention: 'retention',
  peerTags: 'boolean',
  maxPeerInventory: 'number',
  peerBanMs: 'number',
  persistPeerBans: 'boolean',
  htpasswdFile: 'optional',
  tokensFile: 'optional',
  anonymous: 'list',
  grants: 'grants',
  immutableTags: 'prefixes',
  tlsCert: 'optional',
  tlsKey: 'optional',
  auditLog: 'optional',
  auditMaxSize: 'optional',
  auditKeep: 'number',
  webhooks: 'webhooks',
  warmImages: 'list',
  warmPin: 'boolean',
  warmInterval: 'optional',
  policyFile: 'optional',
};

/** A duration setting in milliseconds: `90s`, `15m`, `6h`, `2d`, or a number of milliseconds; 0 allowed. */
export function parseDuration(value: string, setting: string): number {
  const n = durationMs(value);
  if (n === undefined) throw new ConfigError(`${setting}: ${JSON.stringify(value)} is not a duration; write e.g. 90s, 15m, 6h or 2d`);
  return n;
}

function atLeast(n: number, min: number, message: () => string): number {
  if (n < min) throw new ConfigError(message());
  return n;
}

/** The lifecycle settings as numbers (validated by validateConfig). */
export function lifecycleSettings(config: ShoalConfig): {
  maxStore: number;
  minFree?: ReturnType<typeof parsePercentOrSize>;
  gcIntervalMs: number;
  gcGraceMs: number;
  uploadTimeoutMs: number;
  scrubRate: number;
  scrubIntervalMs: number;
} {
  const wrap = <T>(setting: string, f: () => T): T => {
    try {
      return f();
    } catch (err) {
      throw new ConfigError(`${setting}: ${(err as Error).message}`);
    }
  };
  return {
    maxStore: wrap('maxStore', () => parseSize(config.maxStore || '0', { allowZero: true })),
    minFree: config.minFree ? wrap('minFree', () => parsePercentOrSize(config.minFree)) : undefined,
    gcIntervalMs: parseDuration(config.gcInterval || '0', 'gcInterval'),
    gcGraceMs: parseDuration(config.gcGrace, 'gcGrace'),
    uploadTimeoutMs: parseDuration(config.uploadTimeout, 'uploadTimeout'),
    scrubRate: wrap('scrubRate', () => parseRate(config.scrubRate)),
    scrubIntervalMs: atLeast(parseDuration(config.scrubInterval, 'scrubInterval'), 1000, () => `scrubInterval: ${JSON.stringify(config.scrubInterval)} is too short; the scrub rests at least 1s between passes`),
  };
}

/** The access settings as values (validated by validateConfig): anonymous roles, audit log size. */
export function accessSettings(config: ShoalConfig): { anonymous: ReturnType<typeof parseRoleList>; auditMaxBytes: number } {
  let anonymous: ReturnType<typeof parseRoleList>;
  let auditMaxBytes: number;
  try {
    anonymous = parseRoleList(config.anonymous, 'anonymous');
  } catch (err) {
    throw new ConfigError((err as Error).message);
  }
  try {
    auditMaxBytes = parseSize(config.auditMaxSize);
  } catch (err) {
    throw new ConfigError(`auditMaxSize: ${(err as Error).message}`);
  }
  if (Boolean(config.tlsCert) !== Boolean(config.tlsKey)) throw new ConfigError('tlsCert and tlsKey go together (--tls-cert FILE --tls-key FILE)');
  if (config.auditKeep < 1 || !Number.isInteger(config.auditKeep)) throw new ConfigError('auditKeep: keep at least 1 rotated audit log file');
  return { anonymous, auditMaxBytes };
}

function seedList(value: unknown, origin: string): SeedConfig[] {
  // A comma-separated string of URLs (environment), a list of URLs, or a list of seed objects.
  const items = typeof value === 'string' ? value.split(',').map((v) => v.trim()).filter(Boolean) : value;
  if (!Array.isArray(items)) throw new ConfigError(`${origin}: expected a list of seeds`);
  return items.map((item, i) => {
    const seed: Record<string, unknown> = typeof item === 'string' ? { url: item } : (item as Record<string, unknown>);
    if (typeof seed !== 'object' || seed === null) throw new ConfigError(`${origin}[${i}]: expected a URL or {url, username, password, caFile, insecureSkipVerify}`);
    for (const k of Object.keys(seed)) {
      if (!['url', 'username', 'password', 'caFile', 'insecureSkipVerify'].includes(k)) throw new ConfigError(`${origin}[${i}]: unknown seed setting ${JSON.stringify(k)}`);
    }
    let url: URL;
    try {
      url = new URL(String(seed.url));
    } catch {
      throw new ConfigError(`${origin}[${i}]: ${JSON.stringify(seed.url)} is not a URL (e.g. https://registry-1.docker.io)`);
    }
    if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new ConfigError(`${origin}[${i}]: seed URL must be http:// or https://`);
    for (const k of ['username', 'password', 'caFile'] as const) {
      if (seed[k] !== undefined && typeof seed[k] !== 'string') throw new ConfigError(`${origin}[${i}].${k}: expected a string`);
    }
    if (seed.insecureSkipVerify !== undefined && typeof seed.insecureSkipVerify !== 'boolean') throw new ConfigError(`${origin}[${i}].insecureSkipVerify: expected true or false`);
    return { ...(seed as unknown as SeedConfig), url: url.toString().replace(/\/$/, '') };
  });
}

/** Environment variable for each setting: SHOAL_DATA_DIR, SHOAL_LISTEN, ... */
export function envName(key: string): string {
  return 'SHOAL_' + key.replace(/[A-Z]/g, (c) => '_' + c).toUpperCase();
}

function coerce(key: keyof ShoalConfig, value: unknown, origin: string): unknown {
  const kind = KEYS[key];
  if (kind === 'seeds') return seedList(value, `${key} (${origin})`);
  if (kind === 'retention') {
    let parsed = value;
    if (typeof value === 'string') {
      try {
        parsed = JSON.parse(value);
      } catch {
        throw new ConfigError(`${key} (${origin}): expected JSON such as [{"prefix":"docker.io/","keepLast":5}]`);
      }
    }
    try {
      return parseRetentionRules(parsed, `${key} (${origin})`);
    } catch (err) {
      throw new ConfigError((err as Error).message);
    }
  }
  if (kind === 'grants' || kind === 'webhooks') {
    let parsed = value;
    if (typeof value === 'string' && (kind === 'grants' || value.trim().startsWith('['))) {
      try {
        parsed = JSON.parse(value);
      } catch {
        throw new ConfigError(`${key} (${origin}): expected JSON such as ${kind === 'grants' ? '[{"user":"ci","prefix":"apps/","roles":["push"]}]' : '[{"url":"http://scanner:8080/hook"}]'}`);
      }
    }
    try {
      return kind === 'grants' ? parseGrants(parsed, `${key} (${origin})`) : parseWebhooks(parsed, `${key} (${origin})`, parseDuration);
    } catch (err) {
      throw new ConfigError((err as Error).message);
    }
  }
  if (kind === 'prefixes') {
    try {
      return parseImmutablePrefixes(value, `${key} (${origin})`);
    } catch (err) {
      throw new ConfigError((err as Error).message);
    }
  }
  if (kind === 'registries') {
    if (typeof value === 'string') {
      try {
        value = JSON.parse(value);
      } catch {
        throw new ConfigError(`${key} (${origin}): expected JSON such as {"docker.io":["https://registry-1.docker.io"]}`);
      }
    }
    if (typeof value !== 'object' || value === null || Array.isArray(value)) throw new ConfigError(`${key} (${origin}): expected a mapping of registry host to seeds`);
    return Object.fromEntries(Object.entries(value).map(([host, seeds]) => [host, seedList(seeds, `${key}.${host} (${origin})`)]));
  }
  if (kind === 'optional') {
    if (typeof value === 'number') return String(value);
    if (typeof value !== 'string') throw new ConfigError(`${key} (${origin}): expected a string`);
    return value;
  }
  if (kind === 'list') {
    const items = typeof value === 'string' ? value.split(',').map((v) => v.trim()).filter(Boolean) : value;
    if (!Array.isArray(items) || items.some((v) => typeof v !== 'string')) throw new ConfigError(`${key} (${origin}): expected a list of strings`);
    return items;
  }
  if (kind === 'number') {
    const n = typeof value === 'string' ? Number(value) : value;
    if (typeof n !== 'number' || !Number.isFinite(n) || n < 0) throw new ConfigError(`${key} (${origin}): expected a non-negative number, got ${JSON.stringify(value)}`);
    return n;
  }
  if (kind === 'boolean') {
    if (typeof value === 'boolean') return value;
    if (value === 'true' || value === '1') return true;
    if (value === 'false' || value === '0') return false;
    throw new ConfigError(`${key} (${origin}): expected true or false, got ${JSON.stringify(value)}`);
  }
  if (typeof value !== 'string' || value === '') throw new ConfigError(`${key} (${origin}): expected a non-empty string`);
  return value;
}

function apply(target: ShoalConfig, source: Record<string, unknown>, origin: string): void {
  for (const [key, value] of Object.entries(source)) {
    if (value === undefined) continue;
    if (!(key in KEYS)) throw new ConfigError(`unknown setting ${JSON.stringify(key)} in ${origin}; known settings: ${Object.keys(KEYS).join(', ')}`);
    (target as unknown as Record<string, unknown>)[key] = coerce(key as keyof ShoalConfig, value, origin);
  }
}

/**
 * The data channel's port (0: any free port), or undefined when it is off; config.p2pListen must be set. By default
 * it is the first port after the p2p port that no other listener of this node uses.
 */
export function dataPortOf(config: Pick<ShoalConfig, 'p2pListen' | 'p2pDataPort'> & Partial<Pick<ShoalConfig, 'listen' | 'metricsListen'>>): number | undefined {
  const value = config.p2pDataPort.trim();
  if (value === 'off') return undefined;
  const p2pPort = parseListen(config.p2pListen, 'p2pListen').port;
  const taken = new Set([p2pPort]);
  if (config.listen) taken.add(parseListen(config.listen).port);
  if (config.metricsListen) taken.add(parseListen(config.metricsListen, 'metricsListen').port);
  if (value === '') {
    if (p2pPort === 0) return 0;
    let port = p2pPort + 1;
    while (taken.has(port)) port++;
    return port <= 65535 ? port : 0;
  }
  if (!/^\d+$/.test(value) || Number(value) > 65535) throw new ConfigError(`p2pDataPort: ${JSON.stringify(config.p2pDataPort)} is not a port number, empty (the first free port after the p2p port) or off`);
  const port = Number(value);
  if (port !== 0 && taken.has(port)) throw new ConfigError(`p2pDataPort: ${port} is the port of another listener of this node; the data channel needs a port of its own`);
  return port;
}

export function validateConfig(config: ShoalConfig): ShoalConfig {
  parseListen(config.listen);
  if (config.metricsListen) parseListen(config.metricsListen, 'metricsListen');
  if (!(LOG_LEVELS as readonly string[]).includes(config.logLevel)) {
    throw new ConfigError(`logLevel: ${JSON.stringify(config.logLevel)} is not one of ${LOG_LEVELS.join(', ')}`);
  }
  if (config.p2pListen) {
    parseListen(config.p2pListen, 'p2pListen');
    dataPortOf(config);
    if (!config.clusterKeyFile) throw new ConfigError('p2pListen needs clusterKeyFile (--cluster-key FILE): the private-network key every node of the cluster shares; create one with: shoal cluster-key --out FILE');
  }
  for (const peer of config.peers) parseListen(peer, 'peers');
  for (const key of ['maxPeerUpload', 'maxSeedRate'] as const) {
    try {
      parseRate(config[key]);
    } catch (err) {
      throw new ConfigError(`${key}: ${(err as Error).message}`);
    }
  }
  lifecycleSettings(config);
  if (config.parallelChunks < 1 || config.maxChunkStreams < 1) throw new ConfigError('parallelChunks and maxChunkStreams must be at least 1');
  if (!Number.isSafeInteger(config.maxPeerInventory) || config.maxPeerInventory < 1) throw new ConfigError('maxPeerInventory: must be a whole number of blobs, at least 1');
  if (config.zone.length > 128) throw new ConfigError('zone: at most 128 characters (peers refuse longer labels)');
  accessSettings(config);
  parseDuration(config.warmInterval || '0', 'warmInterval');
  for (const image of config.warmImages) {
    try {
      parseReference(image);
    } catch (err) {
      throw new ConfigError(`warmImages: ${JSON.stringify(image)} is not an image reference: ${(err as Error).message}`);
    }
  }
  if (config.maxManifestBytes < 4 * 1024 * 1024) throw new ConfigError('maxManifestBytes: must be at least 4194304 (4 MiB), as the OCI spec requires');
  return config;
}

export interface ConfigSources {
  /** Path of a YAML or JSON file with any of the settings. */
  file?: string;
  env?: NodeJS.ProcessEnv;
  /** Settings given as command-line flags (undefined = not given). */
  flags?: Partial<Record<keyof ShoalConfig, unknown>>;
}

/** Defaults < config file < SHOAL_* environment < flags. */
export async function loadConfig(sources: ConfigSources = {}): Promise<ShoalConfig> {
  const config = defaultConfig();
  if (sources.file) {
    let text: string;
    try {
      text = await readFile(sources.file, 'utf8');
    } catch (err) {
      throw new ConfigError(`cannot read config file ${sources.file}: ${(err as Error).message}`);
    }
    let parsed: unknown;
    try {
      parsed = parseYaml(text);
    } catch (err) {
      throw new ConfigError(`config file ${sources.file} is not valid YAML/JSON: ${(err as Error).message}`);
    }
    if (parsed !== null && parsed !== undefined) {
      if (typeof parsed !== 'object' || Array.isArray(parsed)) throw new ConfigError(`config file ${sources.file} must hold a mapping of settings`);
      apply(config, parsed as Record<string, unknown>, `config file ${sources.file}`);
    }
  }
  const env = sources.env ?? {};
  const fromEnv: Record<string, unknown> = {};
  for (const key of Object.keys(KEYS)) {
    const v = env[envName(key)];
    if (v !== undefined && v !== '') fromEnv[key] = v;
  }
  apply(config, fromEnv, 'environment');
  apply(config, (sources.flags ?? {}) as Record<string, unknown>, 'command line');
  return validateConfig(config);
}
