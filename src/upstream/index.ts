export {
  SeedClient,
  MANIFEST_ACCEPT,
  MAX_MANIFEST_BYTES,
  DEFAULT_METADATA_TIMEOUT_MS,
  DEFAULT_BLOB_TIMEOUT_MS,
  DEFAULT_BODY_IDLE_TIMEOUT_MS,
  DEFAULT_RETRIES,
  DEFAULT_RETRY_DELAY_MS,
  type SeedClientOptions,
  type SeedLogger,
  type IoOptions,
  type ResolvedTag,
  type SeedManifest,
  type SeedBlob,
  type BlobRequestOptions,
  type ByteRange,
} from './seed-client.ts';
export { parseAuthChallenges, pullScope, readTokenResponse, type AuthChallenge } from './auth.ts';
export { openRegistryEndpoint, type RegistryEndpoint, type RegistryEndpointOptions } from './endpoint.ts';
export { RegistryAuth, type RegistryAuthOptions, type SentAuthorization } from './registry-auth.ts';
export { errorCodeOf, errorMessageOf, readErrorMessage } from './error-body.ts';
export { RetryableFailure } from './transport.ts';
