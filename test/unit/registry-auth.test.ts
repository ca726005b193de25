/**
 * The pieces every registry client shares (src/upstream): reading OCI error bodies, token responses and their
 * cache, and the answers RegistryAuth gives to challenges that need no token service.
 */
import assert from 'node:assert/strict';
import { Readable } from 'node:stream';
import { after, describe, it } from 'node:test';
import { Agent } from 'undici';
import { UnavailableError } from '../../src/oci/index.ts';
import { BearerTokenCache, readTokenResponse } from '../../src/upstream/auth.ts';
import { MAX_ERROR_BODY_BYTES, errorCodeOf, errorMessageOf, readErrorMessage, registrySaid } from '../../src/upstream/error-body.ts';
import { RegistryAuth, type RegistryAuthOptions } from '../../src/upstream/registry-auth.ts';

describe('OCI error bodies', () => {
  it('say CODE: message of the first error, from a Buffer or a string', () => {
    const body = JSON.stringify({ errors: [{ code: 'MANIFEST_UNKNOWN', message: 'manifest unknown', detail: { tag: 'v1' } }, { code: 'OTHER' }] });
    assert.equal(errorMessageOf(Buffer.from(body)), 'MANIFEST_UNKNOWN: manifest unknown');
    assert.equal(errorMessageOf(`  ${body}\n`), 'MANIFEST_UNKNOWN: manifest unknown');
    assert.equal(errorCodeOf(Buffer.from(body)), 'MANIFEST_UNKNOWN');
  });

  it('use what the first error has when it lacks a code or a message', () => {
    assert.equal(errorMessageOf('{"errors":[{"code":"DENIED"}]}'), 'DENIED');
    assert.equal(errorMessageOf('{"errors":[{"message":"requested access to the resource is denied"}]}'), 'requested access to the resource is denied');
    assert.equal(errorCodeOf('{"errors":[{"message":"no code"}]}'), undefined);
  });

  it('fall back to the start of the text, whitespace folded, when the body is not OCI error JSON', () => {
    assert.equal(errorMessageOf('<html>\n  <body>502 Bad   Gateway</body>\n</html>\n'), '<html> <body>502 Bad Gateway</body> </html>');
    assert.equal(errorMessageOf('x'.repeat(500)), 'x'.repeat(200));
    assert.equal(errorMessageOf('{"errors":[{"code":7}]}'), '{"errors":[{"code":7}]}', 'a code that is not a string is not trusted');
    assert.equal(errorMessageOf('{"errors":[]}'), '{"errors":[]}');
    assert.equal(errorMessageOf('[1,2]'), '[1,2]');
    assert.equal(errorMessageOf(''), '');
    assert.equal(errorMessageOf(' \n '), '');
    assert.equal(errorCodeOf('not json'), undefined);
    assert.equal(errorCodeOf('null'), undefined);
    assert.equal(errorCodeOf('{"errors":[{"code":["X"]}]}'), undefined);
  });

  it('are read from a stream up to a limit; a stream that fails says nothing', async () => {
    const small = Readable.from([Buffer.from('{"errors":[{"code":"UNAUTHORIZED",'), Buffer.from('"message":"authentication required"}]}')]);
    assert.equal(await readErrorMessage(small), 'UNAUTHORIZED: authentication required');

    let produced = 0;
    const endless = Readable.from(
      (function* () {
        for (;;) {
          produced += 4096;
          yield Buffer.alloc(4096, 'a');
        }
      })(),
    );
    assert.equal(await readErrorMessage(endless), 'a'.repeat(200));
    assert.ok(produced <= MAX_ERROR_BODY_BYTES + 4096 * 4, `read ${produced} bytes of an endless body`);
    assert.ok(endless.destroyed, 'the rest of the body is dropped');

    const failing = new Readable({
      read() {
        this.destroy(new Error('connection reset'));
      },
    });
    assert.equal(await readErrorMessage(failing), '');
  });

  it('are quoted into messages only when there is something to quote', () => {
    assert.equal(registrySaid('DENIED: no'), '; the registry said "DENIED: no"');
    assert.equal(registrySaid(''), '');
  });
});

describe('token responses and their cache', () => {
  it('take token or access_token, and expires_in (60 s when absent), ending a little early', () => {
    assert.deepEqual(readTokenResponse({ token: 'a', expires_in: 300 }, 1_000), { token: 'a', expiresAt: 1_000 + 300_000 - 10_000 });
    assert.deepEqual(readTokenResponse({ access_token: 'b' }, 0), { token: 'b', expiresAt: 60_000 - 6_000 });
    assert.equal(readTokenResponse({ token: 'c', expires_in: -5 }, 0)?.expiresAt, 54_000);
    assert.equal(readTokenResponse({ token: '', access_token: 'd' }, 0)?.token, 'd');
    for (const body of [undefined, null, 'token', {}, { token: 3 }, { token: '' }]) assert.equal(readTokenResponse(body, 0), undefined, JSON.stringify(body));
  });

  it('keep a token per realm, service and scope until it expires', () => {
    let now = 0;
    const cache = new BearerTokenCache(() => now);
    const pull = BearerTokenCache.key('https://auth/token', 'reg', 'repository:a:pull');
    const push = BearerTokenCache.key('https://auth/token', 'reg', 'repository:a:pull,push');
    assert.notEqual(pull, push);
    assert.equal(BearerTokenCache.key('r', undefined, undefined), BearerTokenCache.key('r', '', ''));
    cache.set(pull, { token: 't1', expiresAt: 1_000 });
    assert.equal(cache.get(pull), 't1');
    assert.equal(cache.get(push), undefined);
    now = 1_000;
    assert.equal(cache.get(pull), undefined, 'expired');
    cache.set(push, { token: 't2', expiresAt: 5_000 });
    cache.delete(push);
    assert.equal(cache.get(push), undefined);
  });
});

describe('RegistryAuth without a token service', () => {
  const agent = new Agent();
  after(() => agent.destroy());
  const options = (extra: Partial<RegistryAuthOptions> = {}): RegistryAuthOptions => ({
    agent,
    userAgent: 'shoal-test',
    name: 'seed http://127.0.0.1:1',
    detail: { seed: 'http://127.0.0.1:1' },
    hints: { wrongCredentials: 'check them', noCredentials: 'give some' },
    timeoutMs: 1_000,
    ...extra,
  });
  const basic = `Basic ${Buffer.from('alice:secret').toString('base64')}`;

  it('sends nothing until challenged; answers a Basic challenge once with the credentials, then sends them up front', async () => {
    const auth = new RegistryAuth(options({ basicAuthorization: basic, username: 'alice' }));
    assert.equal(await auth.known('repository:a:pull'), undefined);
    const answer = await auth.answer('Basic realm="registry"', 'repository:a:pull', undefined);
    assert.deepEqual(answer, { header: basic, kind: 'basic' });
    assert.deepEqual(await auth.known('repository:b:pull'), { header: basic, kind: 'basic' });
    assert.deepEqual(await auth.known(undefined), { header: basic, kind: 'basic' });
    assert.equal(await auth.answer('Basic realm="registry"', 'repository:a:pull', answer), undefined, 'refused credentials are not sent again');
  });

  it('has no answer without credentials, or to a scheme it does not speak', async () => {
    const anonymous = new RegistryAuth(options());
    assert.equal(await anonymous.answer('Basic realm="registry"', 'repository:a:pull', undefined), undefined);
    assert.equal(await anonymous.known('repository:a:pull'), undefined);
    const withCredentials = new RegistryAuth(options({ basicAuthorization: basic }));
    assert.equal(await withCredentials.answer('Negotiate', 'repository:a:pull', undefined), undefined);
    assert.equal(await withCredentials.answer(undefined, 'repository:a:pull', undefined), undefined);
    assert.equal(await withCredentials.answer('Bearer service="no realm"', 'repository:a:pull', undefined), undefined);
  });

  it('refuses a token realm that is not an http(s) URL, naming the registry', async () => {
    const auth = new RegistryAuth(options());
    await assert.rejects(auth.answer('Bearer realm="not a url"', 'repository:a:pull', undefined), (err: unknown) => {
      assert.ok(err instanceof UnavailableError);
      assert.equal(err.message, 'seed http://127.0.0.1:1 named a token realm "not a url" that is not a URL');
      assert.deepEqual(err.detail, { seed: 'http://127.0.0.1:1' });
      return true;
    });
    await assert.rejects(auth.answer('Bearer realm="ftp://auth/token"', 'repository:a:pull', undefined), /named a token realm ftp:\/\/auth\/token that is not http\(s\)/);
  });
});
