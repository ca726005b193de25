/**
 * src/limits/token-bucket.ts: TokenBucket (the byte-rate limiter; the rates operators write are read by
 * src/limits/size.ts, tested in size.test.ts). Timing is checked with lower bounds only, loosely, so a slow machine cannot
 * make these fail.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { getEventListeners } from 'node:events';
import { TokenBucket } from '../../src/limits/token-bucket.ts';

describe('TokenBucket', () => {
  it('is unlimited at rate 0: take() resolves at once', async () => {
    const bucket = new TokenBucket(0);
    assert.equal(bucket.unlimited, true);
    const started = performance.now();
    for (let i = 0; i < 1000; i++) await bucket.take(10 * 1024 * 1024);
    assert.ok(performance.now() - started < 1_000);
  });

  it('limits 1 MB at 4 MB/s to at least ~150 ms once the initial burst is spent', async () => {
    const rate = 4_000_000;
    const bucket = new TokenBucket(rate);
    assert.equal(bucket.unlimited, false);
    // The default burst is max(rate/4, 256 KiB) = 1 MB, which passes at once: spend it first.
    await bucket.take(1_000_000);
    const started = performance.now();
    for (let sent = 0; sent < 1_000_000; sent += 64 * 1024) await bucket.take(Math.min(64 * 1024, 1_000_000 - sent));
    const ms = performance.now() - started;
    // 1 MB at 4 MB/s: 250 ms in theory; 150 ms leaves room for timer granularity.
    assert.ok(ms >= 150, `1 MB at 4 MB/s took only ${ms.toFixed(0)} ms`);
  });

  it('limits a small bucket: 1 MB at 4 MB/s with a 64 KiB burst takes at least ~150 ms', async () => {
    const bucket = new TokenBucket(4_000_000, 64 * 1024);
    const started = performance.now();
    for (let sent = 0; sent < 1_000_000; sent += 16 * 1024) await bucket.take(16 * 1024);
    const ms = performance.now() - started;
    // (1 MB - 64 KiB) / 4 MB/s = 234 ms in theory.
    assert.ok(ms >= 150, `1 MB at 4 MB/s took only ${ms.toFixed(0)} ms`);
  });

  it('serves concurrent callers in order and shares one rate between them', async () => {
    const bucket = new TokenBucket(2_000_000, 64 * 1024);
    const order: number[] = [];
    const started = performance.now();
    await Promise.all(
      Array.from({ length: 8 }, (_, i) =>
        bucket.take(64 * 1024).then(() => {
          order.push(i);
        }),
      ),
    );
    const ms = performance.now() - started;
    assert.deepEqual(order, [0, 1, 2, 3, 4, 5, 6, 7], 'first come, first served');
    // 8 x 64 KiB = 512 KiB, burst 64 KiB: (512-64) KiB at 2 MB/s = 229 ms in theory.
    assert.ok(ms >= 150, `512 KiB shared at 2 MB/s took only ${ms.toFixed(0)} ms`);
  });

  it('lets a request bigger than the burst through (leaving the bucket in debt) instead of blocking forever', async () => {
    const bucket = new TokenBucket(10_000_000, 64 * 1024);
    await bucket.take(1_000_000); // 15x the burst: passes once the bucket is full
    const started = performance.now();
    await bucket.take(64 * 1024);
    const ms = performance.now() - started;
    // The debt of ~936 KB must be paid back first: ~100 ms at 10 MB/s.
    assert.ok(ms >= 60, `the next take after a 1 MB take paid no debt (${ms.toFixed(0)} ms)`);
  });

  it('rejects a waiting take when its signal aborts, and keeps serving the others', async () => {
    const bucket = new TokenBucket(100_000, 10_000);
    await bucket.take(10_000); // empty now
    const controller = new AbortController();
    const waiting = bucket.take(50_000, controller.signal); // would need ~100 ms (capped at the burst)
    setTimeout(() => controller.abort(new Error('client went away')), 10);
    await assert.rejects(waiting, /client went away/);
    // The queue is not stuck behind the aborted caller.
    await bucket.take(1_000);
  });

  it('rejects at once when the signal is already aborted', async () => {
    const bucket = new TokenBucket(100_000, 10_000);
    await bucket.take(10_000); // empty now: the next take has to wait ~100 ms
    const signal = AbortSignal.abort(new Error('already gone'));
    const started = performance.now();
    await assert.rejects(bucket.take(10_000, signal), /already gone/);
    assert.ok(performance.now() - started < 80, 'an aborted caller does not wait for tokens');
  });

  it('does not leave abort listeners behind on a long-lived signal (one fetch takes thousands of times)', async () => {
    const bucket = new TokenBucket(1_000_000, 16 * 1024);
    const controller = new AbortController();
    // Every take after the first has to wait, as when a blob streams through a capped seed link.
    for (let i = 0; i < 20; i++) await bucket.take(16 * 1024, controller.signal);
    const left = getEventListeners(controller.signal, 'abort').length;
    assert.equal(left, 0, `${left} abort listeners are still registered on the signal after 20 finished takes`);
  });
});
