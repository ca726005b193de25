/**
 * `shoal containerd-config` spawned as a user runs it: which scheme a registry given without its URL gets
 * (from the node's config file, --seed, or the running node), the warning when nothing tells, and
 * `--restore` without a registry named (what an uninstall runs). The files are read back; containerd itself
 * reads them in test/integration/containerd*.test.ts and test/integration/deploy-init.test.ts.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort } from '../helpers/seed-registry.ts';
import { runShoal } from '../helpers/spawn-node.ts';

const serverOf = async (dir: string, host: string): Promise<string | undefined> =>
  /^server = "(.*)"$/m.exec(await readFile(join(dir, host, 'hosts.toml'), 'utf8'))?.[1];

describe('shoal containerd-config: schemes and restore', () => {
  let work = '';
  before(async () => {
    work = await mkdtemp(join(tmpdir(), 'shoal-ctrcfg-'));
  });
  after(async () => {
    if (work) await rm(work, { recursive: true, force: true });
  });

  it('warns when nothing tells the scheme of a registry given without a URL, and writes https', async () => {
    const out = join(work, 'unknown');
    const dead = `http://127.0.0.1:${await freePort()}`; // no node answers there
    const r = await runShoal(['containerd-config', '--registry', 'registry.local:5000', '--mirror', dead, '--out', out]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stderr, /warning: registry registry\.local:5000: .*scheme is a guess/);
    assert.match(r.stderr, /--registry registry\.local:5000=http:\/\/registry\.local:5000/, 'says how to give the URL');
    assert.equal(await serverOf(out, 'registry.local:5000'), 'https://registry.local:5000');
  });

  it('docker.io needs no guess: no warning', async () => {
    const out = join(work, 'hub');
    const r = await runShoal(['containerd-config', '--registry', 'docker.io', '--mirror', `http://127.0.0.1:${await freePort()}`, '--out', out]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stderr, '');
    assert.equal(await serverOf(out, 'docker.io'), 'https://registry-1.docker.io');
  });

  it("--config: every registry of the node's config gets a hosts.toml, with its seeds' scheme", async () => {
    const out = join(work, 'fromconfig');
    const config = join(work, 'shoal.yaml');
    await writeFile(
      config,
      [
        'seeds:',
        '  - url: http://plain.example:5000',
        'registries:',
        '  docker.io:',
        '    - url: https://registry-1.docker.io',
        '  registry.local:5000:',
        '    - url: http://registry.local:5000',
        '  mirrored.example:',
        '    - url: http://10.0.0.5:5000',
        '  secure.example:',
        '    - url: https://secure.example',
        '',
      ].join('\n'),
    );
    const r = await runShoal(['containerd-config', '--config', config, '--mirror', 'http://127.0.0.1:5000', '--out', out]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stderr, '', 'every scheme is known: no warning');
    assert.deepEqual((await readdir(out)).sort(), ['docker.io', 'mirrored.example', 'plain.example:5000', 'registry.local:5000', 'secure.example']);
    assert.equal(await serverOf(out, 'registry.local:5000'), 'http://registry.local:5000');
    assert.equal(await serverOf(out, 'plain.example:5000'), 'http://plain.example:5000');
    assert.equal(await serverOf(out, 'mirrored.example'), 'http://mirrored.example', "the scheme of the registry's only seed");
    assert.equal(await serverOf(out, 'secure.example'), 'https://secure.example');
    assert.equal(await serverOf(out, 'docker.io'), 'https://registry-1.docker.io');
  });

  it('--seed http://R: R gets http, as the node does', async () => {
    const out = join(work, 'fromseed');
    const r = await runShoal(['containerd-config', '--seed', 'http://r.example:5000', '--mirror', 'http://127.0.0.1:5000', '--out', out]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(await serverOf(out, 'r.example:5000'), 'http://r.example:5000');
  });

  it('an explicit URL wins over the seeds', async () => {
    const out = join(work, 'explicit');
    const r = await runShoal(['containerd-config', '--seed', 'http://r.example:5000', '--registry', 'r.example:5000=https://r.example:5000', '--mirror', 'http://127.0.0.1:5000', '--out', out]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(await serverOf(out, 'r.example:5000'), 'https://r.example:5000');
  });

  it('--restore without a registry undoes everything it wrote under --out, and keeps what it did not write', async () => {
    const out = join(work, 'restore');
    await mkdir(join(out, 'quay.io'), { recursive: true });
    const foreign = 'server = "https://quay.io"\n# the operator\'s own file\n';
    await writeFile(join(out, 'quay.io', 'hosts.toml'), foreign);
    await mkdir(join(out, 'other.example'), { recursive: true });
    await writeFile(join(out, 'other.example', 'hosts.toml'), 'server = "https://other.example"\n');
    const w = await runShoal(['containerd-config', '--registry', 'quay.io', '--registry', 'docker.io', '--all', '--mirror', 'http://127.0.0.1:5000', '--out', out]);
    assert.equal(w.code, 0, w.stderr);
    const r = await runShoal(['containerd-config', '--restore', '--out', out]);
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual((await readdir(out)).sort(), ['other.example', 'quay.io'], 'the directories Shoal made are gone');
    assert.equal(await readFile(join(out, 'quay.io', 'hosts.toml'), 'utf8'), foreign, 'the backup is back, byte for byte');
    assert.deepEqual(await readdir(join(out, 'quay.io')), ['hosts.toml']);
    assert.equal(await readFile(join(out, 'other.example', 'hosts.toml'), 'utf8'), 'server = "https://other.example"\n');
    const again = await runShoal(['containerd-config', '--restore', '--out', out]);
    assert.equal(again.code, 0);
    assert.match(again.stdout, /nothing to restore/);
  });
});
