/**
 * `shoal export`, `verify`, `import` and `inventory` spawned as an operator runs them: Marco's two commands
 * and what he sees (progress, results, exit codes, messages), a `kill -9` in the middle of an import and the
 * re-run that finishes it, and the inventory -> delta round trip.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { generateKeyPairSync } from 'node:crypto';
import { readFile, readdir, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { buildImageLayout, type ImageLayout } from '../fixtures/images.ts';
import { startDockerRegistry, pushRandomImage, type DockerRegistry, type PushedImage } from '../helpers/seed-registry.ts';
import { SHOAL_BIN, ShoalProcesses, runShoal, type LogLine } from '../helpers/spawn-node.ts';
import { openDiskStore } from '../../src/store/index.ts';

const execFileP = promisify(execFile);
const REG = 'registry.example';

function noStackTrace(stderr: string): void {
  assert.doesNotMatch(stderr, /^\s+at .+[:(]/m, `stderr has a stack trace:\n${stderr}`);
}

function events(stdout: string): LogLine[] {
  return stdout
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as LogLine);
}

describe('shoal export / verify / import / inventory (spawned)', () => {
  const procs = new ShoalProcesses();
  let work = '';
  let layout: ImageLayout;
  let registry: DockerRegistry;
  let big: PushedImage;
  let bundle = '';
  let pub = '';
  let exportedBlobs = 0;

  before(async () => {
    work = await procs.tempDir('shoal-bundle-cli-');
    layout = await buildImageLayout(join(work, 'layout'), { layerSize: 32 * 1024 });
    registry = await startDockerRegistry();
    const policy = join(work, 'policy.json');
    await writeFile(policy, JSON.stringify({ default: [{ type: 'insecureAcceptAnything' }] }));
    for (const [tag, repo] of [
      ['multi', 'team/multi:v1'],
      ['single', 'team/single:v1'],
    ]) {
      await execFileP('skopeo', ['--policy', policy, 'copy', '--all', '--dest-tls-verify=false', `oci:${layout.dir}:${tag}`, `docker://${registry.hostPort}/${repo}`], {
        env: { PATH: process.env.PATH, HOME: work, TMPDIR: work },
        timeout: 60_000,
      });
    }
    big = await pushRandomImage(registry.url, 'team/big', 'v1', { layerSizes: [24 << 20, 24 << 20, 24 << 20] });
    const keys = generateKeyPairSync('ed25519');
    await writeFile(join(work, 'key.pem'), keys.privateKey.export({ type: 'pkcs8', format: 'pem' }));
    pub = join(work, 'key.pub');
    await writeFile(pub, keys.publicKey.export({ type: 'spki', format: 'pem' }));
    await writeFile(join(work, 'images.txt'), `# the release\n${REG}/team/single:v1\n\n${REG}/team/big:v1\n`);
    bundle = join(work, 'release.tar');
  });

  after(async () => {
    await procs.cleanup();
    await registry?.stop();
  });

  it('exports with JSON progress that never goes backwards, signed, from an images file', async () => {
    const r = await runShoal(
      ['export', `${REG}/team/multi:v1`, '--images-file', join(work, 'images.txt'), '--from', registry.url, '-o', bundle, '--sign', join(work, 'key.pem'), '--json'],
      { timeoutMs: 60_000 },
    );
    assert.equal(r.code, 0, r.stderr);
    const ev = events(r.stdout);
    assert.equal(ev[0]!.event, 'start');
    const total = Number(ev[0]!.total);
    const progress = ev.filter((e) => e.event === 'progress');
    assert.ok(progress.length >= 1);
    let last = -1;
    for (const p of progress) {
      assert.ok(Number(p.bytes) >= last, 'progress went backwards');
      last = Number(p.bytes);
    }
    assert.equal(progress.at(-1)!.bytes, total, 'the last progress is the whole bundle');
    assert.equal(progress.at(-1)!.percent, 100);
    assert.equal((await stat(bundle)).size, total, 'the announced total is the exact size');
    assert.deepEqual(
      ev.filter((e) => e.event === 'image').map((e) => e.reference),
      [`${REG}/team/multi:v1`, `${REG}/team/single:v1`, `${REG}/team/big:v1`],
    );
    assert.ok(ev.some((e) => e.event === 'blob' && e.digest === big.layers[0]!.digest));
    exportedBlobs = ev.filter((e) => e.event === 'blob').length;
    const done = ev.at(-1)!;
    assert.equal(done.event, 'done');
    assert.equal(typeof done.signedBy, 'string');
    assert.deepEqual(await readdir(work).then((f) => f.filter((n) => n.includes('.partial'))), [], 'no partial file is left');
  });

  it('verifies a bundle with the trusted key: a bar on a terminal, plain progress lines otherwise', async () => {
    // script(1) gives the command a pseudo-terminal, as an operator's shell does.
    const onTerminal = execFileP('script', ['-qec', `${process.execPath} ${SHOAL_BIN} verify ${bundle}`, '/dev/null'], { timeout: 60_000, env: { ...process.env, COLUMNS: '100' } });
    const r = await runShoal(['verify', bundle, '--trust', pub], { timeoutMs: 60_000 });
    const tty = (await onTerminal).stdout;
    assert.match(tty, /\r\x1b\[2Kverify \[#{10,}\] 100% [\d.]+ MiB of [\d.]+ MiB, [\d.]+ [KMG]iB\/s, ETA 0:00/);
    const percents = [...tty.matchAll(/verify \[[#.]+\] (\d+)%/g)].map((m) => Number(m[1]));
    assert.deepEqual(percents, [...percents].sort((a, b) => a - b), 'the bar went backwards');
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /release\.tar: OK/);
    assert.match(r.stdout, /signature: good, by trusted key [0-9a-f]{16}/);
    assert.match(r.stdout, /verified registry\.example\/team\/big:v1 sha256:/);
    assert.match(r.stderr, /^verify: started, [\d.]+ MiB to go$/m);
    assert.match(r.stderr, /^verify: finished 100% .*MiB\/s/m);
    assert.doesNotMatch(r.stderr, /\r/, 'no terminal control characters in plain mode');
  });

  it('survives kill -9 in the middle of an import; the re-run finishes without writing anything twice', async (t) => {
    const dataDir = join(work, 'ship');
    const first = procs.spawn(['import', bundle, '--data', dataDir, '--json']);
    const layerDigests = new Set(big.layers.map((l) => l.digest));
    await first.waitForLog((l) => l.event === 'blob' && l.action === 'written' && layerDigests.has(String(l.digest)), { timeoutMs: 60_000 }).catch(() => undefined);
    const exit = await first.kill();
    const writtenBefore = first.logs.filter((l) => l.event === 'blob' && l.action === 'written').length;
    assert.ok(writtenBefore > 0, first.describe());
    t.diagnostic(`first run ${exit.signal === 'SIGKILL' ? 'killed' : 'had finished'} after writing ${writtenBefore} of ${exportedBlobs} blobs`);
    if (exit.signal === 'SIGKILL') {
      const store = await openDiskStore(dataDir);
      try {
        assert.deepEqual(await store.listTags(`${REG}/team/big`), [], 'a tag appeared before every blob was in');
        assert.deepEqual(await store.listPins(), []);
      } finally {
        await store.close();
      }
    }
    const second = await runShoal(['import', bundle, '--data', dataDir, '--trust', pub, '--json'], { timeoutMs: 60_000 });
    assert.equal(second.code, 0, second.stderr);
    const done = events(second.stdout).at(-1)!;
    const total = Number(done.blobsWritten) + Number(done.blobsPresent);
    assert.ok(Number(done.blobsPresent) >= writtenBefore, `the re-run wrote again what the first run had committed (${JSON.stringify(done)})`);
    assert.equal(total, exportedBlobs, 'every blob of the bundle was either written by the re-run or found present');
    const store = await openDiskStore(dataDir);
    try {
      assert.equal(await store.resolveTag(`${REG}/team/big`, 'v1'), big.manifestDigest);
      assert.equal(await store.resolveTag(`${REG}/team/multi`, 'v1'), layout.multi.digest);
      assert.equal((await store.listPins()).length, 3);
      for (const l of big.layers) assert.equal((await store.statContent(l.digest))?.size, l.bytes.length);
    } finally {
      await store.close();
    }
    assert.deepEqual(await readdir(join(dataDir, 'ingest')), [], 'no partial blob is left');
  });

  it('takes an inventory on the ship and exports only what the ship lacks, in parts', async () => {
    const dataDir = join(work, 'ship');
    const inventoryFile = join(work, 'ship-inventory.json');
    const inv = await runShoal(['inventory', '--data', dataDir, '-o', inventoryFile], { timeoutMs: 60_000 });
    assert.equal(inv.code, 0, inv.stderr);
    assert.match(inv.stdout, /3 image\(s\), \d+ blob\(s\)/);
    const delta = join(work, 'delta.tar');
    const r = await runShoal(
      ['export', `${REG}/team/big:v1`, `${REG}/team/multi:v1`, '--from', registry.url, '--have', inventoryFile, '--split', '1M', '-o', delta],
      { timeoutMs: 60_000 },
    );
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /left out \d+ blob\(s\), 72\.\d+ MiB, that the site already has/);
    assert.match(r.stdout, /wrote 1 part\(s\)/);
    const list = JSON.parse(await readFile(`${delta}.parts.json`, 'utf8'));
    assert.ok(list.size < 1024 * 1024, 'the delta holds manifests only');
    const imported = await runShoal(['import', delta, '--data', dataDir], { timeoutMs: 60_000 });
    assert.equal(imported.code, 0, imported.stderr);
    assert.match(imported.stdout, /left out by the bundle and present/);
  });

  it('refuses a bad bundle with exit code 3 and says why; usage mistakes exit 2', async () => {
    const damaged = join(work, 'damaged.tar');
    const bytes = await readFile(bundle);
    await writeFile(damaged, bytes.subarray(0, bytes.length - 5_000_000));
    const [refused, noTarget, badSplit] = await Promise.all([
      runShoal(['import', damaged, '--data', join(work, 'other')], { timeoutMs: 60_000 }),
      runShoal(['import', bundle], { timeoutMs: 60_000 }),
      runShoal(['export', 'a.example/b:c', '-o', join(work, 'x.tar'), '--split', 'huge'], { timeoutMs: 60_000 }),
    ]);
    assert.equal(refused.code, 3, refused.stderr);
    assert.match(refused.stderr, /^import: stopped at /m, 'the progress line does not claim the import finished');
    assert.match(refused.stderr, /^shoal: bundle refused: the bundle ends in the middle of blobs\/sha256\/[0-9a-f]{64}: it is truncated; copy it again$/m);
    noStackTrace(refused.stderr);
    for (const [r, message] of [
      [noTarget, /say where to import: --node URL .* or --data DIR/],
      [badSplit, /"huge" is not a size/],
    ] as const) {
      assert.equal(r.code, 2, r.stderr);
      assert.match(r.stderr, message);
      noStackTrace(r.stderr);
    }
  });
});
