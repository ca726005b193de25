/**
 * `shoal pin`, `shoal unpin` and `shoal pins` spawned as an operator runs them, through a running node
 * (`--node`) and on a stopped node's store (`--data`): images that a node pulled through from a seed with
 * `?ns=registry.local:5000` (so kept as `registry.local-5000/team/...`), pinned by tag and by digest; unknown
 * images and bad references with their exit codes; and `shoal import` pinning what it imports unless
 * `--no-pin`, into a running node and into a stopped one.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { buildImageLayout, MT, type ImageLayout } from '../fixtures/images.ts';
import { startDockerRegistry, type DockerRegistry } from '../helpers/seed-registry.ts';
import { skopeoIn } from '../helpers/skopeo.ts';
import { ShoalProcesses, runShoal, type RunResult, type ShoalProcess } from '../helpers/spawn-node.ts';
import { openDiskStore } from '../../src/store/index.ts';

const REG = 'registry.local:5000';
/** Where a node keeps what it pulls through with ?ns=registry.local:5000, and what imports of REG/... write. */
const NS = 'registry.local-5000';

interface PinJson {
  repository: string;
  digest: string;
  reason: string;
  created: number;
}

function noStackTrace(stderr: string): void {
  assert.doesNotMatch(stderr, /^\s+at .+[:(]/m, `stderr has a stack trace:\n${stderr}`);
}

function ok(r: RunResult): RunResult {
  assert.equal(r.code, 0, `exit ${r.code}\n--- stdout ---\n${r.stdout}\n--- stderr ---\n${r.stderr}`);
  return r;
}

async function pinsOf(where: string[]): Promise<PinJson[]> {
  const r = ok(await runShoal(['pins', ...where, '--json']));
  return (JSON.parse(r.stdout) as { pins: PinJson[] }).pins;
}

const short = (pins: PinJson[]) => pins.map((p) => `${p.repository}@${p.digest}`).sort();

describe('shoal pin / unpin / pins (spawned)', () => {
  const procs = new ShoalProcesses();
  let work = '';
  let layout: ImageLayout;
  let registry: DockerRegistry;
  let config = '';
  let bundle = '';
  let dataDir = '';
  let node: ShoalProcess | undefined;

  /** Pulls a manifest through the node as containerd does for a mirror: with ?ns=<registry>. */
  const pullThrough = async (url: string, repository: string, tag: string): Promise<string> => {
    const res = await fetch(`${url}/v2/${repository}/manifests/${tag}?ns=${REG}`, { headers: { accept: [MT.OciIndex, MT.OciManifest].join(', ') } });
    const body = await res.text();
    assert.equal(res.status, 200, body);
    return res.headers.get('docker-content-digest')!;
  };

  before(async () => {
    work = await procs.tempDir('shoal-pins-cli-');
    layout = await buildImageLayout(join(work, 'layout'), { layerSize: 16 * 1024 });
    registry = await startDockerRegistry();
    const skopeo = await skopeoIn(join(work, 'skopeo'));
    const dest = (repo: string) => `docker://${registry.hostPort}/${repo}`;
    await skopeo('copy', '--all', '--dest-tls-verify=false', `oci:${layout.dir}:multi`, dest('team/multi:v1'));
    await skopeo('copy', '--dest-tls-verify=false', `oci:${layout.dir}:single`, dest('team/single:v1'));
    await skopeo('copy', '--dest-tls-verify=false', `oci:${layout.dir}:sbom`, dest('team/single:sbom'));
    // distribution 2.8 has no referrers API: the SBOM is found by the OCI tag schema, as cosign and oras push them.
    const res = await fetch(`${registry.url}/v2/team/single/manifests/sha256-${layout.single.digest.slice(7)}`, {
      method: 'PUT',
      headers: { 'content-type': MT.OciIndex },
      body: JSON.stringify({
        schemaVersion: 2,
        mediaType: MT.OciIndex,
        manifests: [{ mediaType: layout.sbom.mediaType, digest: layout.sbom.digest, size: layout.sbom.size, artifactType: layout.sbom.artifactType }],
      }),
    });
    assert.equal(res.status, 201, await res.text());
    config = join(work, 'node.json');
    await writeFile(config, JSON.stringify({ registries: { [REG]: [{ url: registry.url }] } }));
    bundle = join(work, 'release.tar');
    ok(await runShoal(['export', `${REG}/team/single:v1`, `${REG}/team/multi:v1`, '--from', registry.url, '-o', bundle]));
    dataDir = join(work, 'node');
    node = await procs.serve({ dataDir, config });
  });

  after(async () => {
    await procs.cleanup();
    await registry?.stop();
  });

  it('pins through a running node by tag and by digest, lists the pins, unpins', async () => {
    const url = node!.url;
    assert.equal(await pullThrough(url, 'team/single', 'v1'), layout.single.digest);
    assert.equal(await pullThrough(url, 'team/multi', 'v1'), layout.multi.digest);

    const byTag = ok(await runShoal(['pin', `${REG}/team/single:v1`, '--node', url, '--reason', 'release 1.4 on the line']));
    assert.equal(byTag.stdout.trim(), `pinned ${NS}/team/single@${layout.single.digest} (${REG}/team/single:v1)`);
    const byDigest = ok(await runShoal(['pin', `${REG}/team/multi@${layout.multi.digest}`, '--node', url, '--json']));
    const pinned = JSON.parse(byDigest.stdout) as { pinned: PinJson[]; failed: unknown[] };
    assert.deepEqual(pinned.failed, []);
    assert.equal(pinned.pinned[0]!.repository, `${NS}/team/multi`);
    assert.equal(pinned.pinned[0]!.digest, layout.multi.digest);
    assert.equal(pinned.pinned[0]!.reason, `pinned as ${REG}/team/multi@${layout.multi.digest}`);

    const pins = await pinsOf(['--node', url]);
    assert.deepEqual(short(pins), [`${NS}/team/multi@${layout.multi.digest}`, `${NS}/team/single@${layout.single.digest}`]);
    assert.equal(pins.find((p) => p.repository === `${NS}/team/single`)!.reason, 'release 1.4 on the line');
    const table = ok(await runShoal(['pins', '--node', url])).stdout.split('\n');
    assert.match(table[0]!, /^REPOSITORY\s+DIGEST\s+REASON\s+CREATED$/);
    assert.ok(table.some((l) => l.startsWith(`${NS}/team/single `) && l.includes(layout.single.digest) && /release 1\.4 on the line\s+\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/.test(l)), table.join('\n'));
    // The node's own API says the same.
    const api = (await (await fetch(`${url}/shoal/pins`)).json()) as { pins: PinJson[] };
    assert.deepEqual(short(api.pins), short(pins));

    const unpinned = ok(await runShoal(['unpin', `${REG}/team/single:v1`, '--node', url]));
    assert.equal(unpinned.stdout.trim(), `unpinned ${NS}/team/single@${layout.single.digest} (${REG}/team/single:v1)`);
    const again = await runShoal(['unpin', `${REG}/team/single@${layout.single.digest}`, '--node', url]);
    assert.equal(again.code, 1, again.stderr);
    assert.match(again.stderr, new RegExp(`^shoal: ${REG}/team/single@sha256:[0-9a-f]{64}: ${NS}/team/single@sha256:[0-9a-f]{64} is not pinned on this node`, 'm'));
    noStackTrace(again.stderr);
    assert.deepEqual(short(await pinsOf(['--node', url])), [`${NS}/team/multi@${layout.multi.digest}`]);
  });

  it('says so, and exits 1, for images the node does not have; exits 2 for bad references and flags', async () => {
    const url = node!.url;
    const [noRepo, noTag, noDigest, mixed, bad1, bad2, bad3, bad4, noTarget, both, emptyReason, locked] = await Promise.all([
      runShoal(['pin', `${REG}/team/nothing:v1`, '--node', url]),
      runShoal(['pin', `${REG}/team/single:v9`, '--node', url]),
      runShoal(['pin', `${REG}/team/single@sha256:${'0'.repeat(64)}`, '--node', url]),
      runShoal(['pin', `${REG}/team/nothing:v1`, `${REG}/team/multi:v1`, '--node', url]),
      runShoal(['pin', 'Team/App:1.4', '--node', url]),
      runShoal(['pin', 'nginx@sha256:xyz', '--node', url]),
      runShoal(['unpin', `${REG}/team/app:a tag`, '--node', url]),
      runShoal(['pin', 'reg_istry:5000/team/app:1', '--data', dataDir]),
      runShoal(['pin', `${REG}/team/single:v1`]),
      runShoal(['pins', '--node', url, '--data', dataDir]),
      runShoal(['pin', `${REG}/team/single:v1`, '--node', url, '--reason', '']),
      runShoal(['pins', '--data', dataDir]),
    ]);
    for (const [r, message] of [
      [noRepo, new RegExp(`^shoal: ${REG}/team/nothing:v1: repository ${NS}/team/nothing is not on this node \\(node ${url}; looked in ${NS}/team/nothing and team/nothing\\)$`, 'm')],
      [noTag, new RegExp(`^shoal: ${REG}/team/single:v9: tag v9 is not in repository ${NS}/team/single on this node`, 'm')],
      [noDigest, /manifest sha256:0{64} is not in repository registry\.local-5000\/team\/single/],
      [mixed, new RegExp(`^shoal: ${REG}/team/nothing:v1: .*\\n(.*\\n)*shoal: 1 of 2 image\\(s\\) not pinned$`, 'm')],
      [locked, /the store in .* is in use: a node is running on it; stop the node, or use --node URL/],
    ] as const) {
      assert.equal(r.code, 1, r.stderr);
      assert.match(r.stderr, message);
      noStackTrace(r.stderr);
    }
    // The image that is there was pinned all the same.
    assert.equal(mixed.stdout.trim(), `pinned ${NS}/team/multi@${layout.multi.digest} (${REG}/team/multi:v1)`);
    for (const [r, message] of [
      [bad1, /"Team\/App:1\.4" is not an image reference: invalid repository name/],
      [bad2, /"nginx@sha256:xyz" is not an image reference: invalid sha256 digest/],
      [bad3, /"registry\.local:5000\/team\/app:a tag" is not an image reference: invalid tag/],
      [bad4, /"reg_istry:5000\/team\/app:1" is not an image reference: "reg_istry:5000" is not a registry host/],
      [noTarget, /say which node: --node URL .* or --data DIR/],
      [both, /give --node URL \(a running node\) or --data DIR \(a stopped node\), not both/],
      [emptyReason, /--reason takes 1 to 200 characters/],
    ] as const) {
      assert.equal(r.code, 2, r.stderr);
      assert.match(r.stderr, message);
      noStackTrace(r.stderr);
    }
    const missing = await runShoal(['pins', '--data', join(work, 'no-such-dir')]);
    assert.equal(missing.code, 1);
    assert.match(missing.stderr, /is not a Shoal data directory \(it has no db\/\)/);
    assert.deepEqual(short(await pinsOf(['--node', url])), [`${NS}/team/multi@${layout.multi.digest}`], 'failed commands changed nothing');
  });

  it("pins and unpins on a stopped node's store; the node keeps the pins when it starts again", async () => {
    const exit = await node!.terminate();
    assert.equal(exit.code, 0, node!.describe());
    assert.deepEqual(short(await pinsOf(['--data', dataDir])), [`${NS}/team/multi@${layout.multi.digest}`], 'pins made through the API are in the store');

    const byTag = ok(await runShoal(['pin', `${REG}/team/single:v1`, '--data', dataDir, '--reason', 'kept offline']));
    assert.equal(byTag.stdout.trim(), `pinned ${NS}/team/single@${layout.single.digest} (${REG}/team/single:v1)`);
    const byDigest = ok(await runShoal(['unpin', `${REG}/team/multi@${layout.multi.digest}`, '--data', dataDir]));
    assert.equal(byDigest.stdout.trim(), `unpinned ${NS}/team/multi@${layout.multi.digest}`);
    // One at a time: a store has one user at a time (its LevelDB lock).
    const unknown = await runShoal(['pin', `${REG}/team/nothing:v1`, '--data', dataDir]);
    const notPinned = await runShoal(['unpin', `${REG}/team/multi:v1`, '--data', dataDir]);
    const table = await runShoal(['pins', '--data', dataDir]);
    assert.equal(unknown.code, 1);
    assert.match(unknown.stderr, new RegExp(`^shoal: ${REG}/team/nothing:v1: repository ${NS}/team/nothing is not in the store \\(store ${dataDir}; looked in`, 'm'));
    assert.equal(notPinned.code, 1);
    assert.match(notPinned.stderr, new RegExp(`${NS}/team/multi@${layout.multi.digest} \\(the digest tag v1 points at\\) is not pinned`));
    assert.match(ok(table).stdout, new RegExp(`^${NS}/team/single\\s+${layout.single.digest}\\s+kept offline\\s+\\d{4}-`, 'm'));

    // What the store holds, read directly.
    const store = await openDiskStore(dataDir);
    try {
      const pins = await store.listPins();
      assert.deepEqual(short(pins as PinJson[]), [`${NS}/team/single@${layout.single.digest}`]);
      assert.equal(pins[0]!.reason, 'kept offline');
    } finally {
      await store.close();
    }
    node = await procs.serve({ dataDir, config });
    assert.deepEqual(short(await pinsOf(['--node', node.url])), [`${NS}/team/single@${layout.single.digest}`]);
  });

  it('pins what `shoal import` imports (images and referrers), into a running or a stopped node; --no-pin does not', async () => {
    const expected = [`${NS}/team/multi@${layout.multi.digest}`, `${NS}/team/single@${layout.sbom.digest}`, `${NS}/team/single@${layout.single.digest}`].sort();
    const [running, runningNoPin] = await Promise.all([procs.serve({ dataDir: join(work, 'import-node') }), procs.serve({ dataDir: join(work, 'import-node-no-pin') })]);
    const stopped = join(work, 'import-data');
    const stoppedNoPin = join(work, 'import-data-no-pin');
    const [viaNode, viaNodeNoPin, viaData, viaDataNoPin] = await Promise.all([
      runShoal(['import', bundle, '--node', running.url]),
      runShoal(['import', bundle, '--node', runningNoPin.url, '--no-pin']),
      runShoal(['import', bundle, '--data', stopped]),
      runShoal(['import', bundle, '--data', stoppedNoPin, '--no-pin']),
    ]);
    for (const r of [viaNode, viaData]) {
      ok(r);
      assert.match(r.stdout, new RegExp(`imported ${REG}/team/single:v1 ${layout.single.digest} \\+1 referrer\\(s\\) \\(pinned\\)`));
      assert.doesNotMatch(r.stderr, /cannot pin/);
    }
    for (const r of [viaNodeNoPin, viaDataNoPin]) {
      ok(r);
      assert.match(r.stdout, new RegExp(`imported ${REG}/team/single:v1 ${layout.single.digest} \\+1 referrer\\(s\\)$`, 'm'));
      assert.doesNotMatch(r.stdout, /\(pinned\)/);
      assert.doesNotMatch(r.stderr, /cannot pin/);
    }
    const [nodePins, nodeNoPins, dataPins, dataNoPins] = await Promise.all([
      pinsOf(['--node', running.url]),
      pinsOf(['--node', runningNoPin.url]),
      pinsOf(['--data', stopped]),
      pinsOf(['--data', stoppedNoPin]),
    ]);
    assert.deepEqual(short(nodePins), expected);
    assert.deepEqual(short(dataPins), expected);
    for (const p of [...nodePins, ...dataPins]) assert.match(p.reason, /^bundle release\.tar imported \d{4}-/);
    assert.deepEqual(nodeNoPins, []);
    assert.deepEqual(dataNoPins, []);
    // A registry that is not a Shoal node has no pins: the images go in, and the command says they are not pinned.
    const plain = ok(await runShoal(['import', bundle, '--node', registry.url]));
    assert.match(plain.stderr, /is not a Shoal node and cannot pin images: they were imported but not pinned/);
    assert.doesNotMatch(plain.stdout, /\(pinned\)/);
    // Imported without pins is imported all the same: the images are there, and can be pinned afterwards.
    ok(await runShoal(['pin', `${REG}/team/single:v1`, '--data', stoppedNoPin]));
    assert.deepEqual(short(await pinsOf(['--data', stoppedNoPin])), [`${NS}/team/single@${layout.single.digest}`]);
  });
});
