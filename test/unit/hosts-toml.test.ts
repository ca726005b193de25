/**
 * src/containerd/hosts-toml.ts: what `shoal containerd-config` writes into containerd's hosts dir, and how it
 * undoes it. Real files in a temp dir; the containerd integration test checks that containerd reads them.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readFile, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ConfigError } from '../../src/config/index.ts';
import {
  BACKUP_SUFFIX,
  GENERATED_MARK,
  defaultServer,
  parseRegistryTarget,
  renderHostsToml,
  restoreHostsConfig,
  writeHostsConfig,
} from '../../src/containerd/hosts-toml.ts';

/** The `key = value` lines of one TOML table (`''` = the top level), values as written. */
function tomlTable(text: string, table: string): Record<string, string> {
  const out: Record<string, string> = {};
  let current = '';
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (!line || line.startsWith('#')) continue;
    const header = /^\[(.+)\]$/.exec(line);
    if (header) {
      current = header[1]!;
      continue;
    }
    const kv = /^([A-Za-z0-9_]+)\s*=\s*(.+)$/.exec(line);
    assert.ok(kv, `not a TOML key/value line: ${JSON.stringify(raw)}`);
    if (current === table) out[kv[1]!] = kv[2]!;
  }
  return out;
}

function tables(text: string): string[] {
  return text
    .split('\n')
    .map((l) => /^\s*\[(.+)\]\s*$/.exec(l)?.[1])
    .filter((t): t is string => t !== undefined);
}

describe('hosts.toml rendering', () => {
  it('starts with the generated mark, names the real registry as server and the node as a pull/resolve host', () => {
    const text = renderHostsToml({ host: 'registry.local:5000', server: 'http://registry.local:5000' }, 'http://10.0.0.7:5000');
    assert.ok(text.startsWith(GENERATED_MARK + '\n'), 'first line is the mark restore looks for');
    assert.ok(text.endsWith('\n'));
    assert.deepEqual(tomlTable(text, ''), { server: '"http://registry.local:5000"' });
    assert.deepEqual(tables(text), ['host."http://10.0.0.7:5000"']);
    assert.deepEqual(tomlTable(text, 'host."http://10.0.0.7:5000"'), { capabilities: '["pull", "resolve"]', dial_timeout: '"1s"' });
    assert.match(text, /--restore .*--registry registry\.local:5000/, 'the file says how to undo it');
  });

  it('strips trailing slashes of the mirror and takes a dial timeout', () => {
    const text = renderHostsToml({ host: 'docker.io', server: 'https://registry-1.docker.io' }, 'http://127.0.0.1:5000///', '250ms');
    assert.deepEqual(tables(text), ['host."http://127.0.0.1:5000"']);
    assert.equal(tomlTable(text, 'host."http://127.0.0.1:5000"').dial_timeout, '"250ms"');
  });

  it('writes no server line for _default (containerd then uses the registry host itself)', () => {
    const text = renderHostsToml({ host: '_default' }, 'http://127.0.0.1:5000');
    assert.deepEqual(tomlTable(text, ''), {});
    assert.deepEqual(tables(text), ['host."http://127.0.0.1:5000"']);
    assert.match(text, /--all/);
  });

  it('quotes values as TOML basic strings', () => {
    const text = renderHostsToml({ host: 'r.example', server: 'https://r.example/some"path' }, 'http://127.0.0.1:5000');
    assert.equal(tomlTable(text, '').server, '"https://r.example/some\\"path"');
  });
});

describe('registry targets', () => {
  it('defaults the server: docker.io is registry-1.docker.io, anything else is https://HOST', () => {
    assert.equal(defaultServer('docker.io'), 'https://registry-1.docker.io');
    assert.equal(defaultServer('ghcr.io'), 'https://ghcr.io');
    assert.equal(defaultServer('registry.local:5000'), 'https://registry.local:5000');
    assert.deepEqual(parseRegistryTarget('docker.io'), { host: 'docker.io', server: 'https://registry-1.docker.io' });
    assert.deepEqual(parseRegistryTarget('quay.io'), { host: 'quay.io', server: 'https://quay.io' });
    assert.deepEqual(parseRegistryTarget('10.1.2.3:5000'), { host: '10.1.2.3:5000', server: 'https://10.1.2.3:5000' });
  });

  it('lower-cases the host, takes an explicit URL and strips its trailing slashes', () => {
    assert.deepEqual(parseRegistryTarget('Registry.Local:5000=http://registry.local:5000/'), { host: 'registry.local:5000', server: 'http://registry.local:5000' });
    assert.deepEqual(parseRegistryTarget(' mirror.example = https://mirror.example/v2-prefix// '), { host: 'mirror.example', server: 'https://mirror.example/v2-prefix' });
    assert.deepEqual(parseRegistryTarget('127.0.0.1:5001=http://127.0.0.1:5001'), { host: '127.0.0.1:5001', server: 'http://127.0.0.1:5001' });
  });

  it('refuses what is not HOST[:PORT] or HOST[:PORT]=URL, with a ConfigError that shows the value and an example', () => {
    for (const bad of ['', 'http://docker.io', 'docker.io/library', '-bad.example', 'under_score.example', 'host:', 'host:123456', '_default', '=http://x', 'a b']) {
      assert.throws(
        () => parseRegistryTarget(bad),
        (err: unknown) => {
          assert.ok(err instanceof ConfigError, `${JSON.stringify(bad)}: ${String(err)}`);
          assert.ok(err.message.includes(JSON.stringify(bad)), err.message);
          assert.match(err.message, /HOST\[:PORT\]/);
          return true;
        },
      );
    }
    assert.throws(() => parseRegistryTarget('r.example=not a url'), (err: unknown) => err instanceof ConfigError && /is not a URL/.test(err.message));
    assert.throws(() => parseRegistryTarget('r.example='), (err: unknown) => err instanceof ConfigError && /is not a URL/.test(err.message));
    assert.throws(() => parseRegistryTarget('r.example=ftp://r.example'), (err: unknown) => err instanceof ConfigError && /http:\/\/ or https:\/\//.test(err.message));
  });

  it('refuses ports outside 1-65535 and host labels that end in a hyphen', () => {
    // containerd cannot reach such a host; the mistake should surface when the file is written, not at pull time.
    for (const bad of ['registry.local:99999', 'registry.local:65536', 'registry.local:0', 'bad-.example', 'a.bad-']) {
      assert.throws(() => parseRegistryTarget(bad), (err: unknown) => err instanceof ConfigError, `${JSON.stringify(bad)} is accepted`);
    }
    assert.equal(parseRegistryTarget('registry.local:65535').host, 'registry.local:65535');
    assert.equal(parseRegistryTarget('a-b.example:1').host, 'a-b.example:1');
  });
});

describe('writing and restoring hosts.toml files', () => {
  let root = '';
  let n = 0;
  /** A fresh hosts dir per test. */
  const hostsDir = async (): Promise<string> => {
    const dir = join(root, `certs.d-${n++}`);
    await mkdir(dir);
    return dir;
  };
  const mirror = 'http://127.0.0.1:5000';
  const read = (p: string): Promise<string | undefined> => readFile(p, 'utf8').catch(() => undefined);
  const exists = (p: string): Promise<boolean> => stat(p).then(() => true, () => false);

  before(async () => {
    root = await mkdtemp(join(tmpdir(), 'shoal-hosts-toml-'));
  });
  after(async () => {
    if (root) await rm(root, { recursive: true, force: true });
  });

  it('writes <dir>/<host>/hosts.toml for every registry, creating directories, without leftovers', async () => {
    const dir = await hostsDir();
    const targets = [parseRegistryTarget('docker.io'), parseRegistryTarget('registry.local:5000=http://registry.local:5000'), { host: '_default' }];
    const written = await writeHostsConfig({ dir, registries: targets, mirror, dialTimeout: '2s' });
    assert.deepEqual(written, [
      { path: join(dir, 'docker.io', 'hosts.toml'), backup: undefined },
      { path: join(dir, 'registry.local:5000', 'hosts.toml'), backup: undefined },
      { path: join(dir, '_default', 'hosts.toml'), backup: undefined },
    ]);
    for (const t of targets) {
      assert.equal(await read(join(dir, t.host, 'hosts.toml')), renderHostsToml(t, mirror, '2s'));
      assert.deepEqual(await readdir(join(dir, t.host)), ['hosts.toml'], 'no temp file or backup left behind');
    }
    assert.deepEqual((await readdir(dir)).sort(), ['_default', 'docker.io', 'registry.local:5000']);
  });

  it('keeps a foreign hosts.toml as a backup, and restore puts it back byte for byte', async () => {
    const dir = await hostsDir();
    const foreign = 'server = "https://registry-1.docker.io"\n\n[host."https://corp-mirror.example"]\n  capabilities = ["pull"]\n';
    await mkdir(join(dir, 'docker.io'));
    await writeFile(join(dir, 'docker.io', 'hosts.toml'), foreign);
    const path = join(dir, 'docker.io', 'hosts.toml');
    const written = await writeHostsConfig({ dir, registries: [parseRegistryTarget('docker.io')], mirror });
    assert.deepEqual(written, [{ path, backup: path + BACKUP_SUFFIX }]);
    assert.equal(await read(path + BACKUP_SUFFIX), foreign);
    assert.ok((await read(path))!.startsWith(GENERATED_MARK));

    assert.deepEqual(await restoreHostsConfig(dir, ['docker.io']), [{ path, action: 'restored' }]);
    assert.equal(await read(path), foreign);
    assert.equal(await exists(path + BACKUP_SUFFIX), false, 'the backup is gone once restored');
  });

  it('re-writing its own file (another mirror) never overwrites the backup of the foreign one', async () => {
    const dir = await hostsDir();
    const path = join(dir, 'docker.io', 'hosts.toml');
    const foreign = '# the operator\'s own file\nserver = "https://registry-1.docker.io"\n';
    await mkdir(join(dir, 'docker.io'));
    await writeFile(path, foreign);
    await writeHostsConfig({ dir, registries: [parseRegistryTarget('docker.io')], mirror });
    const second = await writeHostsConfig({ dir, registries: [parseRegistryTarget('docker.io')], mirror: 'http://10.9.9.9:5000' });
    assert.deepEqual(second, [{ path, backup: undefined }], 'its own file is simply replaced');
    assert.equal(await read(path + BACKUP_SUFFIX), foreign, 'the backup still holds the operator file');
    assert.match((await read(path))!, /\[host\."http:\/\/10\.9\.9\.9:5000"\]/);
    assert.deepEqual((await readdir(join(dir, 'docker.io'))).sort(), ['hosts.toml', 'hosts.toml' + BACKUP_SUFFIX]);

    await restoreHostsConfig(dir, ['docker.io']);
    assert.equal(await read(path), foreign);
  });

  it('a foreign file found while an older backup exists is not destroyed without a word', async () => {
    // The operator's file A was backed up; later they replaced Shoal's file with B by hand; Shoal runs again.
    const dir = await hostsDir();
    const path = join(dir, 'docker.io', 'hosts.toml');
    const a = '# operator file A\nserver = "https://registry-1.docker.io"\n';
    const b = '# operator file B, written after shoal\nserver = "https://registry-1.docker.io"\n';
    await mkdir(join(dir, 'docker.io'));
    await writeFile(path, a);
    await writeHostsConfig({ dir, registries: [parseRegistryTarget('docker.io')], mirror });
    await writeFile(path, b);
    let refused: unknown;
    try {
      await writeHostsConfig({ dir, registries: [parseRegistryTarget('docker.io')], mirror });
    } catch (err) {
      refused = err;
    }
    const kept = await Promise.all((await readdir(join(dir, 'docker.io'))).map((f) => read(join(dir, 'docker.io', f))));
    assert.ok(refused !== undefined || kept.includes(b), `B is gone: the directory holds ${JSON.stringify(kept)}`);
    assert.ok(kept.includes(a), 'A is still kept');
  });

  it('restore removes files Shoal wrote (and their directory when empty), keeps other files of that directory', async () => {
    const dir = await hostsDir();
    await writeHostsConfig({ dir, registries: [parseRegistryTarget('ghcr.io'), parseRegistryTarget('quay.io')], mirror });
    await writeFile(join(dir, 'quay.io', 'ca.crt'), 'not really a certificate\n');
    const restored = await restoreHostsConfig(dir, ['ghcr.io', 'quay.io']);
    assert.deepEqual(restored, [
      { path: join(dir, 'ghcr.io', 'hosts.toml'), action: 'removed' },
      { path: join(dir, 'quay.io', 'hosts.toml'), action: 'removed' },
    ]);
    assert.equal(await exists(join(dir, 'ghcr.io')), false, 'an empty host directory goes too');
    assert.deepEqual(await readdir(join(dir, 'quay.io')), ['ca.crt'], 'a certificate the operator put there stays');
  });

  it('restore leaves foreign files and missing directories untouched, and is idempotent', async () => {
    const dir = await hostsDir();
    const foreign = 'server = "https://quay.io"\n';
    await mkdir(join(dir, 'quay.io'));
    await writeFile(join(dir, 'quay.io', 'hosts.toml'), foreign);
    assert.deepEqual(await restoreHostsConfig(dir, ['quay.io', 'never.example']), [
      { path: join(dir, 'quay.io', 'hosts.toml'), action: 'untouched' },
      { path: join(dir, 'never.example', 'hosts.toml'), action: 'untouched' },
    ]);
    assert.equal(await read(join(dir, 'quay.io', 'hosts.toml')), foreign);
    assert.equal(await exists(join(dir, 'never.example')), false, 'restore creates nothing');

    await writeHostsConfig({ dir, registries: [parseRegistryTarget('quay.io')], mirror });
    assert.equal((await restoreHostsConfig(dir, ['quay.io']))[0]!.action, 'restored');
    assert.equal((await restoreHostsConfig(dir, ['quay.io']))[0]!.action, 'untouched', 'a second restore changes nothing');
    assert.equal(await read(join(dir, 'quay.io', 'hosts.toml')), foreign);
  });
});
