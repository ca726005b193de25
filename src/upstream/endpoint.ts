import { readFileSync } from 'node:fs';
import { rootCertificates } from 'node:tls';
import { Agent } from 'undici';
import { UnavailableError, UnsupportedError } from '../oci/index.ts';

/** What every client of a registry is configured with: where it is, credentials, and TLS trust. */
export interface RegistryEndpointOptions {
  /** Base URL, e.g. `http://127.0.0.1:5001` or `https://registry-1.docker.io`. */
  url: string;
  username?: string;
  password?: string;
  /** PEM file of a CA to trust in addition to the system roots. */
  caFile?: string;
  /** Accept any certificate (test setups only). */
  insecureSkipVerify?: boolean;
}

/** A validated registry endpoint with its connection pool; `close()` releases the pool. */
export interface RegistryEndpoint {
  /** Origin plus base path, no trailing slash. */
  url: string;
  origin: string;
  basePath: string;
  /** `Basic ...` when credentials are configured. */
  basicAuthorization?: string;
  agent: Agent;
}

/** Checks the URL, builds the Basic credentials and the TLS-configured connection pool, once for every client. */
export function openRegistryEndpoint(options: RegistryEndpointOptions, role = 'registry'): RegistryEndpoint {
  let parsed: URL;
  try {
    parsed = new URL(options.url);
  } catch {
    throw new UnsupportedError(`${role} URL ${JSON.stringify(options.url)} is not a URL; write it as http://host:port or https://host`);
  }
  if (parsed.protocol !== 'http:' && parsed.protocol !== 'https:') {
    throw new UnsupportedError(`${role} URL ${options.url} must start with http:// or https://`);
  }
  if (parsed.search || parsed.hash || parsed.username || parsed.password) {
    throw new UnsupportedError(`${role} URL ${options.url} must not carry a query, fragment or credentials; give username and password separately`);
  }
  const basePath = parsed.pathname.replace(/\/+$/, '');
  const url = `${parsed.origin}${basePath}`;
  let ca: string[] | undefined;
  if (options.caFile !== undefined) {
    try {
      ca = [...rootCertificates, readFileSync(options.caFile, 'utf8')];
    } catch (err) {
      throw new UnavailableError(`cannot read the CA file ${options.caFile} for ${role} ${url}: ${(err as Error).message}`, { url });
    }
  }
  const basicAuthorization =
    options.username !== undefined || options.password !== undefined
      ? `Basic ${Buffer.from(`${options.username ?? ''}:${options.password ?? ''}`).toString('base64')}`
      : undefined;
  return {
    url,
    origin: parsed.origin,
    basePath,
    basicAuthorization,
    agent: new Agent({ connect: { ca, rejectUnauthorized: options.insecureSkipVerify !== true } }),
  };
}
