/**
 * The pure parts of how a node treats its peers: validation of everything a peer sends (src/p2p/validate.ts),
 * the ban list with its file (src/p2p/bans.ts), the routing index and its counts (src/p2p/inventory.ts), the
 * deadline of a transfer from peers, and the settings that control all of it.
 */
import { after, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { ConfigError, defaultConfig, loadConfig } from '../../src/config/index.ts';
import { createLogger } from '../../src/logger.ts';
import { CHUNK_SIZE } from '../../src/oci/index.ts';
import { BanList } from '../../src/p2p/bans.ts';
import { RoutingIndex } from '../../src/p2p/inventory.ts';
import {
  parseChunkHeader,
  parseChunkMapAnswer,
  parseChunkRequest,
  parseInventoryMessage,
  parseReportRequest,
  parseTagAnswer,
  parseTagRequest,
} from '../../src/p2p/validate.ts';
import { ProtocolViolation } from '../../src/p2p/wire.ts';
import { peerTransferDeadlineMs } from '../../src/source/blob-fetch.ts';

const digest = (label: string): string => `sha256:${createHash('sha256').update(label).digest('hex')}`;
const hex = (label: string): string => createHash('sha256').update(label).digest('hex');
const silent = createLogger('silent');

function violation(reason: string): (err: unknown) => boolean {
  return (err) => err instanceof ProtocolViolation && err.reason === reason;
}

const dirs: string[] = [];
after(async () => {
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});

describe('what peers send is validated with the registry API’s rules', () => {
  it('chunk requests: digest, offsets and the pull hint', () => {
    const d = digest('a');
    assert.deepEqual(parseChunkRequest({ digest: d, start: 0, end: 10 }), { digest: d, start: 0, end: 10 });
    assert.deepEqual(parseChunkRequest({ digest: d, start: 4, end: 4, pull: { repository: 'library/nginx', upstream: 'library/nginx', namespace: 'Docker.IO' } }), {
      digest: d,
      start: 4,
      end: 4,
      pull: { repository: 'library/nginx', upstream: 'library/nginx', namespace: 'docker.io' },
    });
    for (const bad of [
      { digest: 'sha256:abc', start: 0, end: 1 },
      { digest: d.toUpperCase(), start: 0, end: 1 },
      { digest: d, start: -1, end: 1 },
      { digest: d, start: 0.5, end: 1 },
      { digest: d, start: 5, end: 4 },
      { digest: d, start: 0, end: '9' },
      { digest: d, start: 0, end: 1, pull: { repository: '../etc', upstream: 'x' } },
      { digest: d, start: 0, end: 1, pull: { repository: 'Library/Nginx', upstream: 'x' } },
      { digest: d, start: 0, end: 1, pull: { repository: 'a', upstream: 'b', namespace: 'not a host!' } },
      { digest: d, start: 0, end: 1, pull: 'docker.io' },
    ]) {
      assert.throws(() => parseChunkRequest(bad as Record<string, unknown>), violation('invalid-message'), JSON.stringify(bad));
    }
  });

  it('tag requests and answers: names and tags by the API grammar; a record from the future is taken as now', () => {
    assert.deepEqual(parseTagRequest({ repository: 'team/app', tag: 'v1.2' }), { repository: 'team/app', tag: 'v1.2' });
    assert.throws(() => parseTagRequest({ repository: 'team/app', tag: '-v1' }), violation('invalid-message'));
    assert.throws(() => parseTagRequest({ repository: 'Team/App', tag: 'v1' }), violation('invalid-message'));
    assert.throws(() => parseTagRequest({ repository: 'a'.repeat(300), tag: 'v1' }), violation('invalid-message'));
    assert.equal(parseTagAnswer({ found: false }), undefined);
    const now = 1_700_000_000_000;
    assert.deepEqual(parseTagAnswer({ found: true, digest: digest('m'), updated: now - 5 }, now), { digest: digest('m'), updated: now - 5 });
    assert.deepEqual(parseTagAnswer({ found: true, digest: digest('m'), updated: now + 365 * 86_400_000 }, now), { digest: digest('m'), updated: now });
    assert.deepEqual(parseTagAnswer({ found: true, digest: digest('m'), updated: 'yesterday' }, now), { digest: digest('m'), updated: 0 });
    assert.throws(() => parseTagAnswer({ found: true, digest: 'latest' }, now), violation('invalid-message'));
  });

  it('inventory messages: valid digests only, and no more of them than a message may carry', () => {
    const ds = [digest('1'), digest('2')];
    assert.deepEqual(parseInventoryMessage({ type: 'add', digests: ds }, 10), { type: 'add', digests: ds });
    assert.deepEqual(parseInventoryMessage({ type: 'snapshot', digests: [], zone: 'z1' }, 10), { type: 'snapshot', digests: [], zone: 'z1' });
    assert.throws(() => parseInventoryMessage({ type: 'add', digests: Array(11).fill(ds[0]) }, 10), violation('oversize-message'));
    assert.throws(() => parseInventoryMessage({ type: 'add', digests: [...ds, 'sha256:nothex'] }, 10), violation('invalid-message'));
    assert.throws(() => parseInventoryMessage({ type: 'replace', digests: ds }, 10), violation('invalid-message'));
    assert.throws(() => parseInventoryMessage({ type: 'add', digests: 'all' }, 10), violation('invalid-message'));
    assert.throws(() => parseInventoryMessage({ type: 'add', digests: [], zone: 'z'.repeat(200) }, 10), violation('invalid-message'));
  });

  it('chunk maps: well formed, and of the size the caller knows; anything else is a bad map', () => {
    const map = { size: CHUNK_SIZE + 1, chunks: [hex('a'), hex('b')] };
    assert.deepEqual(parseChunkMapAnswer({ found: true, ...map }), map);
    assert.deepEqual(parseChunkMapAnswer({ found: true, ...map }, CHUNK_SIZE + 1), map);
    assert.equal(parseChunkMapAnswer({ found: false }), undefined);
    assert.throws(() => parseChunkMapAnswer({ found: true, ...map }, CHUNK_SIZE), violation('bad-map'), 'another size than the descriptor’s');
    assert.throws(() => parseChunkMapAnswer({ found: true, size: CHUNK_SIZE + 1, chunks: [hex('a')] }), violation('bad-map'), 'too few chunks for its size');
    assert.throws(() => parseChunkMapAnswer({ found: true, size: 10, chunks: ['XYZ'] }), violation('bad-map'), 'not a hash');
    assert.throws(() => parseChunkMapAnswer({ found: true, size: -1, chunks: [] }), violation('bad-map'));
  });

  it('chunk answers and reports', () => {
    assert.deepEqual(parseChunkHeader({ status: 'OK', size: 5 }), { status: 'OK', size: 5 });
    assert.deepEqual(parseChunkHeader({ status: 'NOT_FOUND' }), { status: 'NOT_FOUND' });
    assert.throws(() => parseChunkHeader({ status: 'OK', size: -5 }), violation('invalid-message'));
    assert.throws(() => parseChunkHeader({ status: 'MAYBE' }), violation('invalid-message'));
    assert.deepEqual(parseReportRequest({ digest: digest('r'), chunks: [0, 3] }), { digest: digest('r'), chunks: [0, 3] });
    assert.throws(() => parseReportRequest({ digest: digest('r'), chunks: [-1] }), violation('invalid-message'));
    assert.throws(() => parseReportRequest({ digest: digest('r'), chunks: Array(10_001).fill(0) }), violation('invalid-message'));
  });
});

describe('BanList', () => {
  it('bans a peer once, for its time, by id; knows where it listens', async () => {
    const bans = new BanList({ banMs: 60_000, logger: silent });
    const first = bans.add('peer-a', 'bad-bytes', 'chunk 1', ['/ip4/10.0.0.1/tcp/5001']);
    assert.ok(first);
    assert.equal(bans.add('peer-a', 'bad-map', 'again', []), undefined, 'a second report of the same peer is not a second ban');
    assert.equal(bans.get('peer-a')?.reason, 'bad-bytes');
    assert.ok(bans.isBanned('peer-a'));
    assert.ok(!bans.isBanned('peer-b'));
    assert.ok(bans.isBannedAddress('/ip4/10.0.0.1/tcp/5001'));
    assert.ok(!bans.isBannedAddress('/ip4/10.0.0.2/tcp/5001'));
    bans.lift('peer-a');
    assert.ok(!bans.isBanned('peer-a'));
  });

  it('a ban ends on time', async () => {
    const bans = new BanList({ banMs: 50, logger: silent });
    bans.add('peer-a', 'inventory-cap', 'too many', []);
    assert.ok(bans.isBanned('peer-a'));
    await sleep(80);
    assert.ok(!bans.isBanned('peer-a'));
    assert.deepEqual(bans.list(), []);
  });

  it('keeps bans in a file across restarts; expired ones and a broken file are dropped', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'shoal-bans-'));
    dirs.push(dir);
    const file = join(dir, 'p2p', 'bans.json');
    const one = new BanList({ banMs: 60_000, file, logger: silent });
    await one.load();
    const ban = one.add('peer-a', 'bad-map', 'its map lied', ['/ip4/10.0.0.1/tcp/5001'])!;
    one.add('peer-b', 'oversize-message', 'big', []);
    await one.flush();
    const two = new BanList({ banMs: 60_000, file, logger: silent });
    await two.load();
    assert.deepEqual(two.get('peer-a'), ban, 'the same ban, to the same end');
    assert.ok(two.isBanned('peer-b'));
    // An expired ban in the file is not loaded.
    const stored = JSON.parse(await readFile(file, 'utf8')) as Array<{ peer: string; until: number }>;
    stored.find((b) => b.peer === 'peer-b')!.until = Date.now() - 1;
    await writeFile(file, JSON.stringify(stored));
    const three = new BanList({ banMs: 60_000, file, logger: silent });
    await three.load();
    assert.ok(three.isBanned('peer-a'));
    assert.ok(!three.isBanned('peer-b'));
    await writeFile(file, '{not json');
    const four = new BanList({ banMs: 60_000, file, logger: silent });
    await four.load();
    assert.deepEqual(four.list(), [], 'a broken file is ignored (and logged)');
  });
});

describe('RoutingIndex', () => {
  it('answers who holds a digest, counts per peer, and forgets a peer at once', () => {
    const index = new RoutingIndex();
    assert.ok(index.add('p1', digest('a')));
    assert.ok(!index.add('p1', digest('a')), 'the same entry twice is one entry');
    index.add('p2', digest('a'));
    index.add('p2', digest('b'));
    assert.deepEqual(index.holders(digest('a')), ['p1', 'p2']);
    assert.equal(index.count('p2'), 2);
    assert.equal(index.size, 3);
    index.remove('p2', digest('a'));
    assert.deepEqual(index.holders(digest('a')), ['p1']);
    index.clear('p1');
    assert.deepEqual(index.holders(digest('a')), []);
    assert.equal(index.count('p1'), 0);
    assert.equal(index.size, 1);
  });
});

describe('the deadline of a transfer from peers', () => {
  it('grows with the size', () => {
    const small = peerTransferDeadlineMs(1024);
    const big = peerTransferDeadlineMs(1024 * 1024 * 1024);
    assert.ok(small >= 30_000, 'a base for the smallest blob');
    assert.ok(big > small * 10, 'a GiB gets much longer than a KiB');
  });
});

describe('peer settings', () => {
  it('defaults: peer tags on, an inventory cap, five-minute bans kept across restarts', () => {
    const c = defaultConfig();
    assert.equal(c.peerTags, true);
    assert.equal(c.maxPeerInventory, 100_000);
    assert.equal(c.peerBanMs, 300_000);
    assert.equal(c.persistPeerBans, true);
  });

  it('from the environment and flags; a cap below one is refused', async () => {
    const c = await loadConfig({ env: { SHOAL_PEER_TAGS: 'false', SHOAL_MAX_PEER_INVENTORY: '5000', SHOAL_PEER_BAN_MS: '1000', SHOAL_PERSIST_PEER_BANS: '0' } });
    assert.equal(c.peerTags, false);
    assert.equal(c.maxPeerInventory, 5000);
    assert.equal(c.peerBanMs, 1000);
    assert.equal(c.persistPeerBans, false);
    assert.equal((await loadConfig({ flags: { peerTags: 'false' } })).peerTags, false);
    await assert.rejects(loadConfig({ flags: { peerTags: 'maybe' } }), ConfigError);
    await assert.rejects(loadConfig({ env: { SHOAL_MAX_PEER_INVENTORY: '0' } }), /maxPeerInventory/);
    await assert.rejects(loadConfig({ flags: { zone: 'z'.repeat(129) } }), /zone/);
  });
});
