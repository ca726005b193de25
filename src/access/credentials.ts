/**
 * Users and tokens: the htpasswd file (bcrypt entries, as `htpasswd -B` writes them) and the static token file.
 * Both are read at start and again whenever they change; a file that cannot be read or parsed on a reload keeps
 * the last good content (and says so in the log).
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import bcrypt from 'bcryptjs';
import type { Principal } from './roles.ts';

/** One problem in a file, reported with its line. */
export interface FileWarning {
  file: string;
  line: number;
  message: string;
}

export interface HtpasswdUsers {
  /** user -> bcrypt hash */
  users: Map<string, string>;
  warnings: FileWarning[];
}

const BCRYPT = /^\$2[abxy]?\$\d{2}\$[./A-Za-z0-9]{53}$/;
const NAME = /^[^\s:#][^\s:]*$/;

/** Parses an htpasswd file. Entries that are not bcrypt (MD5 `$apr1$`, `{SHA}`, crypt) are skipped with a warning. */
export function parseHtpasswd(text: string, file = 'htpasswd'): HtpasswdUsers {
  const users = new Map<string, string>();
  const warnings: FileWarning[] = [];
  text.split(/\r?\n/).forEach((raw, i) => {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) return;
    const colon = line.indexOf(':');
    const name = colon > 0 ? line.slice(0, colon) : '';
    const hash = colon > 0 ? line.slice(colon + 1) : '';
    if (!NAME.test(name)) {
      warnings.push({ file, line: i + 1, message: 'not USER:HASH; skipped' });
      return;
    }
    if (!BCRYPT.test(hash)) {
      warnings.push({ file, line: i + 1, message: `user ${name}: only bcrypt entries are accepted (write them with htpasswd -B); skipped` });
      return;
    }
    if (users.has(name)) warnings.push({ file, line: i + 1, message: `user ${name} appears twice; the last entry counts` });
    users.set(name, hash);
  });
  return { users, warnings };
}

export interface StaticTokens {
  /** name -> sha256 of the token */
  tokens: Map<string, Buffer>;
  warnings: FileWarning[];
}

/** Tokens shorter than this are refused: a static token is a password nobody types. */
export const MIN_TOKEN_LENGTH = 16;

const sha256 = (s: string): Buffer => createHash('sha256').update(s, 'utf8').digest();

/**
 * Parses a token file: one `NAME:TOKEN` per line, or `NAME:sha256:<hex>` to keep only the token's SHA-256 in the
 * file (`printf %s "$TOKEN" | sha256sum`). `#` starts a comment line.
 */
export function parseTokens(text: string, file = 'tokens'): StaticTokens {
  const tokens = new Map<string, Buffer>();
  const warnings: FileWarning[] = [];
  const seen = new Map<string, string>();
  text.split(/\r?\n/).forEach((raw, i) => {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) return;
    const colon = line.indexOf(':');
    const name = colon > 0 ? line.slice(0, colon) : '';
    const secret = colon > 0 ? line.slice(colon + 1) : '';
    if (!NAME.test(name) || secret === '') {
      warnings.push({ file, line: i + 1, message: 'not NAME:TOKEN; skipped' });
      return;
    }
    let digest: Buffer;
    const hashed = /^sha256:([0-9a-fA-F]{64})$/.exec(secret);
    if (hashed) {
      digest = Buffer.from(hashed[1]!, 'hex');
    } else if (secret.startsWith('sha256:')) {
      warnings.push({ file, line: i + 1, message: `token ${name}: sha256: needs 64 hex digits; skipped` });
      return;
    } else if (secret.length < MIN_TOKEN_LENGTH || /\s/.test(secret)) {
      warnings.push({ file, line: i + 1, message: `token ${name}: a token needs at least ${MIN_TOKEN_LENGTH} characters and no spaces (e.g. openssl rand -hex 32); skipped` });
      return;
    } else {
      digest = sha256(secret);
    }
    const other = seen.get(digest.toString('hex'));
    if (other !== undefined && other !== name) {
      warnings.push({ file, line: i + 1, message: `token ${name} is the same as token ${other}; skipped` });
      return;
    }
    seen.set(digest.toString('hex'), name);
    tokens.set(name, digest);
  });
  return { tokens, warnings };
}

/** What checking presented credentials found. */
export type AuthOutcome =
  | { ok: true; principal: Principal }
  /** No credentials, or empty ones (clients send `Basic Og==` after a challenge when they have none). */
  | { ok: false; reason: 'none' }
  | { ok: false; reason: 'invalid'; name?: string; message: string };

export interface CredentialLog {
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
  error(obj: object, msg: string): void;
}

/** The users and tokens of a node, reloaded from their files. */
export class CredentialStore {
  readonly htpasswdFile?: string;
  readonly tokensFile?: string;
  private readonly log: CredentialLog;
  private users = new Map<string, string>();
  private tokens = new Map<string, Buffer>();
  /** Passwords that matched, by user: sha256(hash + password), so bcrypt runs once per user and password. */
  private readonly verified = new Map<string, Buffer>();
  /**
   * A bcrypt hash to compare against for unknown users, so that they take as long as known ones. Made on first
   * use: bcryptjs is plain JavaScript, and hashing it at start cost every node a few hundred milliseconds of CPU
   * (239 ms measured here under load) before it could listen, whether it had users or not.
   */
  private dummyHash?: Promise<string>;

  constructor(opts: { htpasswdFile?: string; tokensFile?: string; logger: CredentialLog }) {
    this.htpasswdFile = opts.htpasswdFile || undefined;
    this.tokensFile = opts.tokensFile || undefined;
    this.log = opts.logger;
  }

  /** True when any credential file is configured: then callers can authenticate. */
  get enabled(): boolean {
    return this.htpasswdFile !== undefined || this.tokensFile !== undefined;
  }

  /** The files to watch. */
  get files(): string[] {
    return [this.htpasswdFile, this.tokensFile].filter((f): f is string => f !== undefined);
  }

  /** Reads both files; throws when one cannot be read (at start, a node without its users must not run). */
  async load(): Promise<{ users: number; tokens: number }> {
    const report = (w: FileWarning): void => this.log.warn({ file: w.file, line: w.line }, w.message);
    let users = new Map<string, string>();
    let tokens = new Map<string, Buffer>();
    if (this.htpasswdFile) {
      const parsed = parseHtpasswd(await readConfigured(this.htpasswdFile, 'htpasswd'), this.htpasswdFile);
      parsed.warnings.forEach(report);
      users = parsed.users;
    }
    if (this.tokensFile) {
      const parsed = parseTokens(await readConfigured(this.tokensFile, 'tokens'), this.tokensFile);
      parsed.warnings.forEach(report);
      tokens = parsed.tokens;
    }
    this.users = users;
    this.tokens = tokens;
    this.verified.clear();
    return { users: users.size, tokens: tokens.size };
  }

  /** Reads the files again; keeps the current users and tokens when that fails. */
  async reload(): Promise<void> {
    try {
      const counts = await this.load();
      this.log.info({ ...counts, files: this.files }, 'users and tokens reloaded');
    } catch (err) {
      this.log.error({ err: (err as Error).message, files: this.files }, 'users and tokens not reloaded; the previous ones stay in force');
    }
  }

  /** Checks an `Authorization` header value. */
  async authenticate(header: string | undefined): Promise<AuthOutcome> {
    if (!header || header.trim() === '') return { ok: false, reason: 'none' };
    const m = /^\s*(\S+)\s+(.*)$/.exec(header);
    const scheme = m?.[1]?.toLowerCase();
    const value = m?.[2]?.trim() ?? '';
    if (scheme === 'basic') {
      let decoded: string;
      try {
        decoded = Buffer.from(value, 'base64').toString('utf8');
      } catch {
        return { ok: false, reason: 'invalid', message: 'malformed Basic credentials' };
      }
      const colon = decoded.indexOf(':');
      if (colon < 0) return { ok: false, reason: 'invalid', message: 'malformed Basic credentials (no colon)' };
      const user = decoded.slice(0, colon);
      const password = decoded.slice(colon + 1);
      if (user === '' && password === '') return { ok: false, reason: 'none' };
      return this.checkPassword(user, password);
    }
    if (scheme === 'bearer') {
      const name = this.tokenName(value);
      if (name !== undefined) return { ok: true, principal: { name, kind: 'token' } };
      return { ok: false, reason: 'invalid', message: 'unknown bearer token' };
    }
    return { ok: false, reason: 'invalid', message: `unsupported authorization scheme ${JSON.stringify(m?.[1] ?? header.slice(0, 20))}; use Basic or Bearer` };
  }

  private async checkPassword(user: string, password: string): Promise<AuthOutcome> {
    const hash = this.users.get(user);
    if (hash !== undefined) {
      const key = createHash('sha256').update(hash).update('\0').update(password, 'utf8').digest();
      const known = this.verified.get(user);
      if (known && timingSafeEqual(known, key)) return { ok: true, principal: { name: user, kind: 'user' } };
      if (await bcrypt.compare(password, hash)) {
        // Only a hash still in force is remembered: a reload in between cleared the map.
        if (this.users.get(user) === hash) this.verified.set(user, key);
        return { ok: true, principal: { name: user, kind: 'user' } };
      }
      return { ok: false, reason: 'invalid', name: user, message: `wrong password for user ${user}` };
    }
    // A token given as the password of its name (`podman login -u NAME -p TOKEN`).
    const expected = this.tokens.get(user);
    if (expected !== undefined) {
      if (timingSafeEqual(expected, sha256(password))) return { ok: true, principal: { name: user, kind: 'token' } };
      return { ok: false, reason: 'invalid', name: user, message: `wrong token for ${user}` };
    }
    this.dummyHash ??= bcrypt.hash('not a password', 10);
    await bcrypt.compare(password, await this.dummyHash);
    return { ok: false, reason: 'invalid', name: user, message: `unknown user ${user}` };
  }

  private tokenName(token: string): string | undefined {
    const digest = sha256(token);
    let found: string | undefined;
    for (const [name, expected] of this.tokens) if (timingSafeEqual(expected, digest)) found = name;
    return found;
  }
}

async function readConfigured(file: string, what: string): Promise<string> {
  try {
    return await readFile(file, 'utf8');
  } catch (err) {
    throw new Error(`cannot read the ${what} file ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
}
