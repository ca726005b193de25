/**
 * Pure parts of the node's views: the per-minute ring of bytes by source, the recent pulls, the control protocol's
 * request checks, and the warm-list settings.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { Registry } from 'prom-client';
import { PullMetrics } from '../../src/source/metrics.ts';
import { PullTraffic } from '../../src/source/traffic.ts';
import { parseControlRequest, MAX_PREFETCH_REFS } from '../../src/p2p/control.ts';
import { ProtocolViolation } from '../../src/p2p/wire.ts';
import { ConfigError, loadConfig } from '../../src/config/index.ts';
import { checkPrefetchReferences } from '../../src/source/prefetch.ts';
import { isShoalError } from '../../src/oci/index.ts';

describe('PullTraffic', () => {
  it('adds bytes counted since the last sample to the current minute, keeps an hour, and starts from a baseline', async () => {
    const metrics = new PullMetrics(new Registry());
    let now = Date.UTC(2026, 10, 30, 10, 0, 30);
    const traffic = new PullTraffic({ metrics, now: () => now });
    // Bytes counted before the first sample belong to no minute of the ring.
    metrics.pullBytes.inc({ source: 'seed' }, 1000);
    await traffic.sample();
    metrics.pullBytes.inc({ source: 'seed' }, 500);
    metrics.pullBytes.inc({ source: 'local' }, 70);
    await traffic.sample();
    now += 60_000;
    metrics.pullBytes.inc({ source: 'peer' }, 300);
    const report = await traffic.report();
    assert.equal(report.minutes.length, 60);
    const [previous, current] = report.minutes.slice(-2);
    assert.deepEqual({ ...previous, start: 0 }, { start: 0, local: 70, peer: 0, seed: 500 });
    assert.equal(previous!.start, Date.UTC(2026, 10, 30, 10, 0, 0));
    assert.deepEqual({ ...current, start: 0 }, { start: 0, local: 0, peer: 300, seed: 0 });
    assert.deepEqual(report.totals, { local: 70, peer: 300, seed: 500 });
    // An hour later the old minutes are gone.
    now += 61 * 60_000;
    const later = await traffic.report();
    assert.deepEqual(later.totals, { local: 0, peer: 0, seed: 0 });
    assert.ok(later.minutes.every((m) => m.local + m.peer + m.seed === 0));
  });

  it('keeps the newest pulls first, up to its limit', async () => {
    const traffic = new PullTraffic({ metrics: new PullMetrics(new Registry()), pulls: 3 });
    for (let i = 0; i < 5; i++) traffic.recordPull({ at: i, repository: 'r', digest: `sha256:${String(i).repeat(64)}`, bytes: i, source: 'local', complete: true });
    const { recentPulls } = await traffic.report();
    assert.deepEqual(recentPulls.map((p) => p.at), [4, 3, 2]);
  });
});

describe('control protocol requests', () => {
  it('accepts status and bounded prefetch requests, and refuses the rest as violations', () => {
    assert.deepEqual(parseControlRequest({ op: 'status' }), { op: 'status' });
    assert.deepEqual(parseControlRequest({ op: 'prefetch', refs: ['a/b:1'], pin: true }), { op: 'prefetch', refs: ['a/b:1'], pin: true });
    assert.deepEqual(parseControlRequest({ op: 'prefetch', refs: ['a/b:1'], pin: 'yes' }), { op: 'prefetch', refs: ['a/b:1'], pin: false });
    for (const bad of [{ op: 'reboot' }, { op: 'prefetch', refs: [] }, { op: 'prefetch', refs: [1] }, { op: 'prefetch', refs: ['x'.repeat(513)] }, { op: 'prefetch', refs: Array(MAX_PREFETCH_REFS + 1).fill('a:1') }]) {
      assert.throws(() => parseControlRequest(bad as Record<string, unknown>), ProtocolViolation, JSON.stringify(bad).slice(0, 80));
    }
  });
});

describe('prefetch references', () => {
  it('are all checked before any work: a list of 1 to MAX_PREFETCH_REFS strings that each parse as a reference', () => {
    assert.deepEqual(checkPrefetchReferences(['registry.local:5000/team/app:1.4', 'app@sha256:' + 'a'.repeat(64)]), ['registry.local:5000/team/app:1.4', 'app@sha256:' + 'a'.repeat(64)]);
    const refused = (refs: unknown, message: RegExp): void =>
      assert.throws(() => checkPrefetchReferences(refs), (err: unknown) => isShoalError(err) && err.code === 'NAME_INVALID' && err.status === 400 && message.test(err.message));
    refused(undefined, /name at least one image/);
    refused([], /name at least one image/);
    refused(Array(MAX_PREFETCH_REFS + 1).fill('a:1'), new RegExp(`at most ${MAX_PREFETCH_REFS} images`));
    refused(['a:1', 3], /references are strings/);
    refused(['team/app:1.0', 'Not A Ref'], /"Not A Ref" is not an image reference/);
  });
});

describe('warm-list settings', () => {
  it('reads warmImages, warmPin and warmInterval from a file or the environment, and refuses what is not a reference or a duration', async () => {
    const defaults = await loadConfig({ env: {} });
    assert.deepEqual([defaults.warmImages, defaults.warmPin, defaults.warmInterval], [[], false, '15m']);
    const env = await loadConfig({ env: { SHOAL_WARM_IMAGES: 'registry.local:5000/team/app:1.4, nginx:1.27', SHOAL_WARM_PIN: 'true', SHOAL_WARM_INTERVAL: '0' } });
    assert.deepEqual([env.warmImages, env.warmPin, env.warmInterval], [['registry.local:5000/team/app:1.4', 'nginx:1.27'], true, '0']);
    await assert.rejects(loadConfig({ env: { SHOAL_WARM_IMAGES: 'Not A Ref' } }), (err: Error) => err instanceof ConfigError && /warmImages: "Not A Ref" is not an image reference/.test(err.message));
    await assert.rejects(loadConfig({ env: { SHOAL_WARM_INTERVAL: 'soon' } }), (err: Error) => err instanceof ConfigError && /warmInterval/.test(err.message));
  });
});
