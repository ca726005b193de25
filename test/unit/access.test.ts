/**
 * Access control as pure logic and small files: role lists and grants, roles per prefix, the loopback rule,
 * htpasswd and token files (with reload), the audit log's rotation and filters, immutable tags and retention,
 * webhook settings, and the access settings of the config.
 */
import { describe, it, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import bcrypt from 'bcryptjs';
import { createHash } from 'node:crypto';
import {
  ANONYMOUS,
  AccessControl,
  AuditLog,
  CredentialStore,
  ImmutableTags,
  KeyedLock,
  RoleBook,
  fromThisHost,
  isLoopbackAddress,
  isLoopbackHost,
  matchesAudit,
  parseGrantFlag,
  parseGrants,
  parseHtpasswd,
  parseImmutablePrefixes,
  parseRoleList,
  parseSince,
  parseTokens,
  parseWebhooks,
  protectImmutableTags,
  readAudit,
  type AuditEntry,
} from '../../src/access/index.ts';
import { expiredTags, type RetentionRule } from '../../src/life/retention.ts';
import { ConfigError, loadConfig, parseDuration, parseListen } from '../../src/config/index.ts';
import { parse as parseYaml } from 'yaml';

const quiet = { info: () => undefined, warn: () => undefined, error: () => undefined, debug: () => undefined };
const dirs: string[] = [];
async function tempDir(): Promise<string> {
  const d = await mkdtemp(join(tmpdir(), 'shoal-access-unit-'));
  dirs.push(d);
  return d;
}
after(async () => {
  await Promise.all(dirs.map((d) => rm(d, { recursive: true, force: true })));
});

const basic = (user: string, password: string): string => `Basic ${Buffer.from(`${user}:${password}`).toString('base64')}`;

describe('roles', () => {
  it('parses role lists, with none and all', () => {
    assert.deepEqual(parseRoleList('pull', 'x'), ['pull']);
    assert.deepEqual(parseRoleList('push, pull', 'x'), ['pull', 'push']);
    assert.deepEqual(parseRoleList(['none'], 'x'), []);
    assert.deepEqual(parseRoleList('all', 'x'), ['pull', 'push', 'delete', 'admin']);
    assert.throws(() => parseRoleList('write', 'anonymous'), /anonymous: "write" is not a role/);
    assert.throws(() => parseRoleList(5, 'anonymous'), /expected a list of roles/);
  });

  it('parses grants from the config file and from --grant', () => {
    assert.deepEqual(parseGrants([{ user: 'ci', prefix: 'apps/', roles: ['push'] }, 'ops:admin', 'bot:pull,delete:team/'], 'grants'), [
      { user: 'ci', prefix: 'apps/', roles: ['push'] },
      { user: 'ops', prefix: '', roles: ['admin'] },
      { user: 'bot', prefix: 'team/', roles: ['pull', 'delete'] },
    ]);
    assert.throws(() => parseGrants([{ user: 'ci', roles: [] }], 'grants'), /grants\[0\]\.roles: give at least one role/);
    assert.throws(() => parseGrants([{ user: 'ci', roles: ['push'], repo: 'x' }], 'grants'), /unknown key "repo"/);
    assert.throws(() => parseGrants({ user: 'ci' }, 'grants'), /expected a list of grants/);
    assert.throws(() => parseGrantFlag('ci'), /not USER:ROLES\[:PREFIX\]/);
    assert.throws(() => parseGrantFlag('ci:fly:apps/'), /"fly" is not a role/);
  });

  it('gives roles per prefix, with what each role includes', () => {
    const book = new RoleBook(
      [
        { user: 'ci', prefix: 'apps/', roles: ['push'] },
        { user: 'ops', prefix: '', roles: ['admin'] },
        { user: 'cleaner', prefix: 'apps/tmp/', roles: ['delete'] },
        { user: '*', prefix: 'shared/', roles: ['pull'] },
      ],
      [],
    );
    const ci = { name: 'ci', kind: 'user' } as const;
    assert.equal(book.allows(ci, 'push', 'apps/web'), true);
    assert.equal(book.allows(ci, 'pull', 'apps/web'), true, 'push includes pull');
    assert.equal(book.allows(ci, 'delete', 'apps/web'), false);
    assert.equal(book.allows(ci, 'push', 'other/web'), false);
    assert.equal(book.allows(ci, 'push', 'apps'), false, 'a prefix matches as a string prefix, as retention rules do');
    assert.equal(book.allows(ci, 'pull', 'shared/x'), true, '* applies to every authenticated caller');
    assert.equal(book.allows(ci, 'admin', undefined), false);
    assert.equal(book.allows({ name: 'ops', kind: 'user' }, 'admin', undefined), true, 'admin on the empty prefix is admin of the node');
    assert.equal(book.allows({ name: 'ops', kind: 'user' }, 'delete', 'anything'), true, 'admin includes delete');
    assert.equal(book.allows({ name: 'cleaner', kind: 'token' }, 'delete', 'apps/tmp/x'), true);
    assert.equal(book.allows({ name: 'cleaner', kind: 'token' }, 'push', 'apps/tmp/x'), false);
    assert.equal(book.allows(ANONYMOUS, 'pull', 'shared/x'), false, '* is not anonymous');
    assert.equal(book.holdsAnywhere(ci, 'push'), true);
    assert.equal(book.holdsAnywhere(ci, 'admin'), false);

    const open = new RoleBook([], ['pull']);
    assert.equal(open.allows(ANONYMOUS, 'pull', 'x'), true);
    assert.equal(open.allows(ANONYMOUS, 'push', 'x'), false);
    assert.equal(open.allows(ci, 'pull', 'x'), true, 'what anonymous may do, users may too');
  });

  it('knows loopback addresses', () => {
    for (const a of ['127.0.0.1', '127.5.6.7', '::1', '::ffff:127.0.0.1', '[::1]']) assert.equal(isLoopbackAddress(a), true, a);
    for (const a of ['10.0.0.1', '::ffff:10.0.0.1', '0.0.0.0', '', undefined, '128.0.0.1', 'fe80::1']) assert.equal(isLoopbackAddress(a), false, String(a));
    assert.equal(isLoopbackHost('localhost'), true);
    assert.equal(fromThisHost({ address: '10.0.0.5', localAddress: '10.0.0.5' }), true, 'a client on this host that dialled its own address');
    assert.equal(fromThisHost({ address: '10.0.0.6', localAddress: '10.0.0.5' }), false);
    assert.equal(fromThisHost({ address: '127.0.0.1', localAddress: '127.0.0.1' }), true);
    assert.equal(fromThisHost({ address: undefined, localAddress: undefined }), false);
    assert.equal(isLoopbackHost('0.0.0.0'), false);
  });
});

describe('users and tokens', () => {
  it('reads bcrypt htpasswd entries and skips the rest with the line named', () => {
    const hash = bcrypt.hashSync('secret', 4);
    const text = [`alice:${hash}`, '# comment', '', 'bob:$apr1$abc$defghijklmnopqrstuvwx', 'carol:{SHA}abc=', 'no colon here', `alice:${hash}`].join('\n');
    const parsed = parseHtpasswd(text, 'h');
    assert.deepEqual([...parsed.users.keys()], ['alice']);
    assert.deepEqual(
      parsed.warnings.map((w) => w.line),
      [4, 5, 6, 7],
    );
    assert.match(parsed.warnings[0]!.message, /only bcrypt entries.*htpasswd -B/);
  });

  it('reads tokens in clear or as sha256, and refuses short or duplicate ones', () => {
    const token = 'a'.repeat(32);
    const hashed = createHash('sha256').update('b'.repeat(40)).digest('hex');
    const parsed = parseTokens([`ci:${token}`, `scanner:sha256:${hashed}`, 'short:abc', 'bad:sha256:xyz', `dup:${token}`].join('\n'));
    assert.deepEqual([...parsed.tokens.keys()], ['ci', 'scanner']);
    assert.deepEqual(
      parsed.warnings.map((w) => w.line),
      [3, 4, 5],
    );
  });

  it('authenticates Basic passwords, tokens (as Bearer or as the password of their name), and reloads', async () => {
    const dir = await tempDir();
    const htpasswd = join(dir, 'htpasswd');
    const tokens = join(dir, 'tokens');
    await writeFile(htpasswd, `alice:${bcrypt.hashSync('secret', 4)}\n`);
    await writeFile(tokens, `bot:${'t'.repeat(24)}\n`);
    const store = new CredentialStore({ htpasswdFile: htpasswd, tokensFile: tokens, logger: quiet });
    assert.deepEqual(await store.load(), { users: 1, tokens: 1 });
    assert.deepEqual(await store.authenticate(basic('alice', 'secret')), { ok: true, principal: { name: 'alice', kind: 'user' } });
    assert.deepEqual(await store.authenticate(basic('alice', 'secret')), { ok: true, principal: { name: 'alice', kind: 'user' } }, 'second time from the cache');
    assert.equal((await store.authenticate(basic('alice', 'nope'))).ok, false);
    assert.deepEqual(await store.authenticate(basic('nobody', 'x')), { ok: false, reason: 'invalid', name: 'nobody', message: 'unknown user nobody' });
    assert.deepEqual(await store.authenticate(undefined), { ok: false, reason: 'none' });
    assert.deepEqual(await store.authenticate(basic('', '')), { ok: false, reason: 'none' }, 'empty Basic credentials are no credentials');
    assert.deepEqual(await store.authenticate(`Bearer ${'t'.repeat(24)}`), { ok: true, principal: { name: 'bot', kind: 'token' } });
    assert.deepEqual(await store.authenticate(basic('bot', 't'.repeat(24))), { ok: true, principal: { name: 'bot', kind: 'token' } });
    assert.equal((await store.authenticate('Bearer wrong')).ok, false);
    assert.equal((await store.authenticate('Digest x')).ok, false);

    // A changed password takes effect on reload; an unreadable file keeps the old users.
    await writeFile(htpasswd, `alice:${bcrypt.hashSync('changed', 4)}\n`);
    await store.reload();
    assert.equal((await store.authenticate(basic('alice', 'secret'))).ok, false, 'the cached password is forgotten');
    assert.equal((await store.authenticate(basic('alice', 'changed'))).ok, true);
    await rm(htpasswd);
    await store.reload();
    assert.equal((await store.authenticate(basic('alice', 'changed'))).ok, true, 'a missing file on reload keeps the users in force');
  });

  it('refuses to start without its user file', async () => {
    const dir = await tempDir();
    const store = new CredentialStore({ htpasswdFile: join(dir, 'missing'), logger: quiet });
    await assert.rejects(store.load(), /cannot read the htpasswd file .*missing: ENOENT/);
  });
});

describe('access decisions', () => {
  async function control(settings: { htpasswd?: boolean; anonymous?: ('pull' | 'push' | 'delete' | 'admin')[] }): Promise<AccessControl> {
    const dir = await tempDir();
    let htpasswdFile: string | undefined;
    if (settings.htpasswd) {
      htpasswdFile = join(dir, 'htpasswd');
      await writeFile(htpasswdFile, `ci:${bcrypt.hashSync('pw', 4)}\n`);
    }
    return AccessControl.open(
      {
        htpasswdFile,
        grants: [{ user: 'ci', prefix: 'apps/', roles: ['push'] }],
        anonymous: settings.anonymous ?? ['pull'],
        immutableTags: [],
        audit: { file: join(dir, 'audit.log'), maxBytes: 1e6, keep: 2 },
        webhooks: [],
      },
      { logger: quiet },
    );
  }

  it('without users: everything from loopback, pulls from anywhere, writes from other hosts refused (403)', async () => {
    const a = await control({});
    try {
      assert.equal(a.decide(ANONYMOUS, '127.0.0.1', 'push', { repository: 'x' }).allowed, true);
      assert.equal(a.decide(ANONYMOUS, '::1', 'admin', { node: true }).allowed, true);
      assert.equal(a.decide(ANONYMOUS, '10.1.2.3', 'pull', { repository: 'x' }).allowed, true);
      for (const role of ['push', 'delete', 'admin'] as const) {
        const d = a.decide(ANONYMOUS, '10.1.2.3', role, { repository: 'x' });
        assert.equal(d.allowed, false);
        assert.equal(!d.allowed && d.refusal, 'denied', role);
      }
    } finally {
      await a.close();
    }
  });

  it('anonymous all allows writes from everywhere', async () => {
    const a = await control({ anonymous: ['pull', 'push', 'delete', 'admin'] });
    try {
      assert.equal(a.decide(ANONYMOUS, '10.1.2.3', 'delete', { repository: 'x' }).allowed, true);
    } finally {
      await a.close();
    }
  });

  it('with users: loopback is no exception; 401 for nobody, 403 for a user without the role', async () => {
    const a = await control({ htpasswd: true });
    try {
      const nobody = a.decide(ANONYMOUS, '127.0.0.1', 'push', { repository: 'apps/x' });
      assert.equal(!nobody.allowed && nobody.refusal, 'unauthorized');
      assert.equal(a.decide(ANONYMOUS, '127.0.0.1', 'pull', { repository: 'apps/x' }).allowed, true, 'anonymous pull by default');
      const ci = { name: 'ci', kind: 'user' } as const;
      assert.equal(a.decide(ci, '10.0.0.1', 'push', { repository: 'apps/x' }).allowed, true);
      const other = a.decide(ci, '10.0.0.1', 'push', { repository: 'other/x' });
      assert.equal(!other.allowed && other.refusal, 'denied');
      assert.equal(a.filter(ci, '10.0.0.1', 'push')('apps/y'), true);
    } finally {
      await a.close();
    }
  });
});

describe('audit log', () => {
  it('appends JSON lines, rotates by size, keeps N files, and reads them back in order with filters', async () => {
    const dir = await tempDir();
    const file = join(dir, 'audit.log');
    const log = new AuditLog({ file, maxBytes: 2048, keep: 2 });
    await log.open();
    const total = 60;
    for (let i = 0; i < total; i++) {
      void log.append({ user: i % 2 ? 'ci' : 'ops', from: '10.0.0.1', action: 'push', repository: i % 3 ? 'apps/web' : 'other/x', reference: `v${i}`, result: 'ok' });
    }
    await log.close();
    const names = (await readdir(dir)).sort();
    assert.deepEqual(names, ['audit.log', 'audit.log.1', 'audit.log.2'], 'two rotated files kept, older ones removed');
    for (const n of names) assert.ok((await readFile(join(dir, n))).length <= 2048, `${n} is at most maxBytes`);
    const all: AuditEntry[] = [];
    for await (const e of readAudit(file)) all.push(e);
    assert.ok(all.length > 0 && all.length < total, 'the oldest entries went with the removed file');
    const numbers = all.map((e) => Number(e.reference!.slice(1)));
    assert.deepEqual(numbers, [...numbers].sort((a, b) => a - b), 'oldest first, across files');
    assert.equal(numbers[numbers.length - 1], total - 1, 'the newest entry is there');
    const ci: AuditEntry[] = [];
    for await (const e of readAudit(file, { user: 'ci', repo: 'apps/' })) ci.push(e);
    assert.ok(ci.length > 0 && ci.every((e) => e.user === 'ci' && e.repository === 'apps/web'));
  });

  it('filters by time, and reads --since as a duration or a date', () => {
    const e: AuditEntry = { time: '2026-11-30T10:00:00.000Z', user: 'ci', from: 'x', action: 'gc', result: 'ok' };
    assert.equal(matchesAudit(e, { since: Date.parse('2026-11-30T09:00:00Z') }), true);
    assert.equal(matchesAudit(e, { since: Date.parse('2026-11-30T11:00:00Z') }), false);
    assert.equal(matchesAudit(e, { action: 'push' }), false);
    const now = Date.parse('2026-11-30T12:00:00Z');
    assert.equal(parseSince('2h', now, (v) => parseDuration(v, 'since')), Date.parse('2026-11-30T10:00:00Z'));
    assert.equal(parseSince('2026-11-29', now, (v) => parseDuration(v, 'since')), Date.parse('2026-11-29'));
    assert.throws(() => parseSince('2026-13-45', now, (v) => parseDuration(v, 'since')), /not a date/);
  });
});

describe('immutable tags', () => {
  it('matches prefixes and serialises a check with its write', async () => {
    const im = new ImmutableTags(parseImmutablePrefixes('releases/,apps/prod/', 'immutableTags'));
    assert.equal(im.prefixFor('releases/web'), 'releases/');
    assert.equal(im.prefixFor('apps/dev/web'), undefined);
    const lock = new KeyedLock();
    const order: string[] = [];
    let release!: () => void;
    const first = lock.run('k', async () => {
      order.push('first start');
      await new Promise<void>((ok) => (release = ok));
      order.push('first end');
    });
    const second = lock.run('k', async () => void order.push('second'));
    const other = lock.run('other', async () => void order.push('other key'));
    await other;
    release();
    await Promise.all([first, second]);
    assert.deepEqual(order, ['first start', 'other key', 'first end', 'second']);
  });

  it('keeps retention away from immutable tags', () => {
    const rules: RetentionRule[] = [
      { prefix: '', keepLast: 1 },
      { prefix: 'releases/team/', keepLast: 1 },
    ];
    const changed = protectImmutableTags(rules, ['releases/']) as RetentionRule[];
    const tags = ['releases/web', 'releases/team/x', 'apps/web'].flatMap((repository) =>
      [1, 2, 3].map((n) => ({ repository, tag: `v${n}`, digest: `sha256:${String(n).repeat(64)}`, updated: n * 1000 })),
    );
    const expired = expiredTags(changed, tags, new Set(), 10_000);
    assert.deepEqual(expired.map((t) => `${t.repository}:${t.tag}`).sort(), ['apps/web:v1', 'apps/web:v2'], 'only tags outside releases/ expire');
    assert.equal(expiredTags(rules, tags, new Set(), 10_000).length, 6, 'without the change, retention would remove four immutable tags too');
  });
});

describe('access settings', () => {
  it('reads webhooks, with durations and limits', () => {
    const parsed = parseWebhooks([{ url: 'http://scanner:8080/hook', events: ['push'], timeout: '3s', backoff: '500ms', attempts: 3, headers: { Authorization: 'Bearer x' } }, 'http://ci/hook'], 'webhooks', parseDuration);
    assert.deepEqual(parsed[0], { url: 'http://scanner:8080/hook', events: ['push'], headers: { Authorization: 'Bearer x' }, timeoutMs: 3000, backoffMs: 500, attempts: 3 });
    assert.equal(parsed[1]!.url, 'http://ci/hook');
    assert.throws(() => parseWebhooks([{ url: 'ftp://x' }], 'webhooks', parseDuration), /must be http/);
    assert.throws(() => parseWebhooks([{ url: 'http://x', events: ['pull'] }], 'webhooks', parseDuration), /push and delete/);
    assert.throws(() => parseWebhooks([{ url: 'http://x', attempts: 0 }], 'webhooks', parseDuration), /attempts/);
  });

  it('loads access settings from the file, the environment and flags, and refuses bad ones', async () => {
    const dir = await tempDir();
    const file = join(dir, 'shoal.yaml');
    await writeFile(file, 'htpasswdFile: /etc/shoal/htpasswd\ngrants:\n  - {user: ci, prefix: apps/, roles: [push]}\nimmutableTags: [releases/]\nwebhooks:\n  - url: http://scanner/hook\n');
    const c = await loadConfig({ file, env: { SHOAL_ANONYMOUS: 'none', SHOAL_TOKENS_FILE: '/t' }, flags: { grants: ['ops:admin'], tlsCert: '/c.pem', tlsKey: '/k.pem' } });
    assert.deepEqual(c.grants, [{ user: 'ops', prefix: '', roles: ['admin'] }], 'flags win over the file');
    assert.deepEqual(c.anonymous, ['none']);
    assert.equal(c.tokensFile, '/t');
    assert.deepEqual(c.immutableTags, ['releases/']);
    assert.equal(c.webhooks[0]!.url, 'http://scanner/hook');
    const env = await loadConfig({ env: { SHOAL_GRANTS: '[{"user":"ci","roles":["pull"]}]', SHOAL_WEBHOOKS: 'http://a/h,http://b/h', SHOAL_IMMUTABLE_TAGS: 'a/,b/' } });
    assert.deepEqual(env.grants, [{ user: 'ci', prefix: '', roles: ['pull'] }]);
    assert.deepEqual(env.webhooks.map((w) => w.url), ['http://a/h', 'http://b/h']);
    assert.deepEqual(env.immutableTags, ['a/', 'b/']);
    await assert.rejects(loadConfig({ flags: { tlsCert: '/c.pem' } }), (err: Error) => err instanceof ConfigError && /tlsCert and tlsKey go together/.test(err.message));
    await assert.rejects(loadConfig({ env: { SHOAL_ANONYMOUS: 'pull,write' } }), /"write" is not a role/);
    await assert.rejects(loadConfig({ env: { SHOAL_GRANTS: 'ci:push' } }), /expected JSON/);
    await assert.rejects(loadConfig({ flags: { auditMaxSize: 'lots' } }), /auditMaxSize/);
  });
});

describe('the shipped deployment', () => {
  it('listens on the node\'s loopback: nothing writable beyond the node', async () => {
    const configMap = parseYaml(await readFile(new URL('../../deploy/configmap.yaml', import.meta.url), 'utf8')) as { data: Record<string, string> };
    const settings = parseYaml(configMap.data['shoal.yaml']!) as { listen: string; anonymous?: unknown; htpasswdFile?: string };
    assert.equal(isLoopbackHost(parseListen(settings.listen).host), true, `listen: ${settings.listen}`);
    assert.equal(settings.anonymous, undefined, 'anonymous stays at its default (pull)');
    const daemonSet = await readFile(new URL('../../deploy/daemonset.yaml', import.meta.url), 'utf8');
    assert.match(daemonSet, /--mirror", "http:\/\/127\.0\.0\.1:5000"/, 'containerd is pointed at the loopback endpoint');
  });
});
