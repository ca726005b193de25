/**
 * Access control of a node: who the caller is (users, tokens), what they may do (roles per repository prefix,
 * anonymous roles, the loopback rule), what is remembered (the audit log), who is told (webhooks) and which tags
 * never move. Knows no HTTP framework: src/registry/auth.ts asks it with plain values.
 *
 * The rule for a caller without credentials: what `anonymous` grants (default: pull), everywhere; and when the node
 * has no users or tokens configured, everything for clients on this host (loopback), as before access control
 * existed. Beyond loopback such a node refuses push, delete and admin calls (403) unless `anonymous` allows them.
 * Once users or tokens are configured, every caller needs them for what `anonymous` does not grant (401 with a
 * challenge), loopback included.
 */
import { hostname } from 'node:os';
import { Counter, type Registry } from 'prom-client';
import { AuditLog } from './audit.ts';
import { CredentialStore, type AuthOutcome, type CredentialLog } from './credentials.ts';
import { ImmutableTags, KeyedLock } from './immutable.ts';
import { ANONYMOUS, RoleBook, isLoopbackAddress, type Grant, type Principal, type Role } from './roles.ts';
import { FileWatch } from './watch.ts';
import { WebhookDispatcher, type WebhookConfig, type WebhookLog } from './webhooks.ts';

export * from './roles.ts';
export * from './audit.ts';
export * from './credentials.ts';
export * from './immutable.ts';
export * from './webhooks.ts';
export { TlsFiles, loadTlsPair } from './tls.ts';
export { FileWatch, FILE_CHECK_INTERVAL_MS } from './watch.ts';

export interface AccessSettings {
  htpasswdFile?: string;
  tokensFile?: string;
  grants: Grant[];
  /** Roles every caller holds without credentials. */
  anonymous: Role[];
  immutableTags: string[];
  audit: { file: string; maxBytes: number; keep: number };
  webhooks: WebhookConfig[];
  /** How often the user and token files are checked for changes (ms). */
  reloadIntervalMs?: number;
}

export type AccessLogger = CredentialLog & WebhookLog;

/**
 * Where a request comes from: the client's address, and the address of this node it reached. A client whose
 * address is loopback, or one of this host's own (the same address it connected to), runs on this host.
 */
export type Remote = string | undefined | { address?: string; localAddress?: string };

export function fromThisHost(remote: Remote): boolean {
  if (typeof remote === 'string' || remote === undefined) return isLoopbackAddress(remote);
  if (isLoopbackAddress(remote.address)) return true;
  return remote.address !== undefined && remote.address !== '' && remote.address === remote.localAddress;
}

/** Where a check applies: one repository, the node as a whole, or at least one repository (lists then filtered). */
export type AccessScope = { repository: string } | { node: true } | { anywhere: true };

export type AccessDecision = { allowed: true } | { allowed: false; refusal: 'unauthorized' | 'denied'; message: string };

/** The challenge a 401 carries: clients answer it with Basic credentials (a password, or a token as password). */
export const AUTH_CHALLENGE = 'Basic realm="shoal", charset="UTF-8"';

export class AccessMetrics {
  readonly authFailures: Counter;
  readonly refusals: Counter<'role' | 'refusal'>;
  readonly webhookDeliveries: Counter<'result'>;

  constructor(registry: Registry) {
    const registers = [registry];
    this.authFailures = new Counter({ name: 'shoal_auth_failures_total', help: 'Requests with credentials that did not check out', registers });
    this.refusals = new Counter({ name: 'shoal_access_refused_total', help: 'Requests refused for want of a role, by role and refusal (unauthorized, denied)', labelNames: ['role', 'refusal'], registers });
    this.webhookDeliveries = new Counter({ name: 'shoal_webhook_deliveries_total', help: 'Webhook deliveries: delivered, retried (an attempt failed), dropped', labelNames: ['result'], registers });
  }
}

export class AccessControl {
  readonly credentials: CredentialStore;
  readonly roles: RoleBook;
  readonly immutable: ImmutableTags;
  readonly audit: AuditLog;
  readonly webhooks: WebhookDispatcher;
  readonly metrics?: AccessMetrics;
  /** This machine's name, sent as the source of webhook events. */
  readonly instance = hostname();
  /** Serialises the immutability check of a tag with its write. */
  readonly tagLocks = new KeyedLock();
  private readonly watch?: FileWatch;

  private constructor(settings: AccessSettings, logger: AccessLogger, metrics?: Registry) {
    this.metrics = metrics ? new AccessMetrics(metrics) : undefined;
    this.credentials = new CredentialStore({ htpasswdFile: settings.htpasswdFile, tokensFile: settings.tokensFile, logger });
    this.roles = new RoleBook(settings.grants, settings.anonymous);
    this.immutable = new ImmutableTags(settings.immutableTags);
    this.audit = new AuditLog({
      ...settings.audit,
      onError: (err) => logger.error({ err: err.message, file: settings.audit.file }, 'audit log write failed'),
    });
    this.webhooks = new WebhookDispatcher(settings.webhooks, {
      logger,
      onResult: (_url, result) => this.metrics?.webhookDeliveries.inc({ result }),
    });
    if (this.credentials.enabled) this.watch = new FileWatch(this.credentials.files, () => this.credentials.reload(), settings.reloadIntervalMs);
  }

  /** Reads the user and token files and opens the audit log; throws when one of them cannot be read. */
  static async open(settings: AccessSettings, opts: { logger: AccessLogger; metrics?: Registry }): Promise<AccessControl> {
    const access = new AccessControl(settings, opts.logger, opts.metrics);
    if (access.credentials.enabled) {
      const counts = await access.credentials.load();
      opts.logger.info({ ...counts, files: access.credentials.files }, 'users and tokens loaded');
    }
    await access.audit.open();
    await access.watch?.start();
    return access;
  }

  /** True when callers can log in (a user or token file is configured). */
  get authEnabled(): boolean {
    return this.credentials.enabled;
  }

  async authenticate(authorization: string | undefined): Promise<AuthOutcome> {
    const outcome = await this.credentials.authenticate(authorization);
    if (!outcome.ok && outcome.reason === 'invalid') this.metrics?.authFailures.inc();
    return outcome;
  }

  /** Whether `principal`, calling from `remote`, holds `role` in `scope` (no refusal counted). */
  holds(principal: Principal, remote: Remote, role: Role, scope: AccessScope): boolean {
    const held =
      'repository' in scope ? this.roles.allows(principal, role, scope.repository) : 'node' in scope ? this.roles.allows(principal, role, undefined) : this.roles.holdsAnywhere(principal, role);
    return held || (principal.kind === 'anonymous' && !this.authEnabled && fromThisHost(remote));
  }

  /** Whether `principal`, calling from `remote`, may act as `role` in `scope`, and why not. */
  decide(principal: Principal, remote: Remote, role: Role, scope: AccessScope): AccessDecision {
    if (this.holds(principal, remote, role, scope)) return { allowed: true };
    const what = 'repository' in scope ? `${role} on ${scope.repository}` : 'node' in scope ? `${role} on this node` : role;
    if (principal.kind === 'anonymous') {
      if (this.authEnabled) return this.refuse(role, 'unauthorized', `authentication required: ${what} needs a user or token with the ${role} role`);
      return this.refuse(
        role,
        'denied',
        `${what} is refused to clients on other hosts: this node has no users configured, so it accepts ${role} only from its own host (loopback). Configure users (--htpasswd, --tokens) and grants, or allow it with the anonymous setting`,
      );
    }
    return this.refuse(role, 'denied', `${principal.kind} ${principal.name} has no ${role} role for ${'repository' in scope ? scope.repository : 'this node'}`);
  }

  private refuse(role: Role, refusal: 'unauthorized' | 'denied', message: string): AccessDecision {
    this.metrics?.refusals.inc({ role, refusal });
    return { allowed: false, refusal, message };
  }

  /** A filter for lists (catalog, pins): may this caller act as `role` on `repository`? */
  filter(principal: Principal, remote: Remote, role: Role): (repository: string) => boolean {
    return (repository) => this.holds(principal, remote, role, { repository });
  }

  async close(): Promise<void> {
    await this.watch?.stop();
    await this.webhooks.stop();
    await this.audit.close();
  }
}

