/**
 * src/limits/size.ts: the one size syntax of every flag and setting (--split, --max-peer-upload, --max-seed-rate,
 * and the coming --max-store and --min-free). K/M/G/T are powers of 1000, Ki/Mi/Gi/Ti powers of 1024, a plain
 * number is bytes; rates are sizes per second or bits per second.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { bytesOfShare, formatBytes, parsePercentOrSize, parseRate, parseSize } from '../../src/limits/size.ts';

describe('parseSize', () => {
  it('reads a plain number, with or without B, as bytes', () => {
    assert.equal(parseSize('1073741824'), 1073741824);
    assert.equal(parseSize('512B'), 512);
    assert.equal(parseSize('512 b'), 512);
    assert.equal(parseSize(4096), 4096);
    assert.equal(parseSize('  77  '), 77);
  });

  it('reads K, M, G, T, P and KB, MB, ... as powers of 1000, in any case', () => {
    assert.equal(parseSize('500M'), 500_000_000);
    assert.equal(parseSize('500m'), 500_000_000);
    assert.equal(parseSize('500MB'), 500_000_000);
    assert.equal(parseSize('500 MB'), 500_000_000);
    assert.equal(parseSize('10k'), 10_000);
    assert.equal(parseSize('10KB'), 10_000);
    assert.equal(parseSize('4G'), 4_000_000_000);
    assert.equal(parseSize('4.7GB'), 4_700_000_000);
    assert.equal(parseSize('2T'), 2_000_000_000_000);
    assert.equal(parseSize('1P'), 1e15);
  });

  it('reads Ki, Mi, Gi, Ti and KiB, MiB, ... as powers of 1024, in any case', () => {
    assert.equal(parseSize('64Ki'), 64 * 1024);
    assert.equal(parseSize('64KiB'), 64 * 1024);
    assert.equal(parseSize('650Mi'), 650 * 1024 ** 2);
    assert.equal(parseSize('650MiB'), 650 * 1024 ** 2);
    assert.equal(parseSize('650mib'), 650 * 1024 ** 2);
    assert.equal(parseSize('4Gi'), 4 * 1024 ** 3);
    assert.equal(parseSize('1.5Gi'), 1.5 * 1024 ** 3);
    assert.equal(parseSize('1Ti'), 1024 ** 4);
  });

  it('drops fractions of a byte', () => {
    assert.equal(parseSize('1.5'), 1);
    assert.equal(parseSize('0.0015K'), 1);
  });

  it('refuses what is not a size, with a message that shows the accepted forms', () => {
    for (const bad of ['12X', 'lots', '-5M', '+5M', 'M', 'Mi', '5MX', '1e6', '5 parsecs', '', ' ', '1,000', '.5G', '5Gb/s', '10%', '0x10']) {
      assert.throws(
        () => parseSize(bad),
        (err: Error) => err.message === `${JSON.stringify(bad)} is not a size; write e.g. 500M, 4Gi or 1073741824`,
        `parseSize(${JSON.stringify(bad)})`,
      );
    }
    for (const bad of [-1, 1.5, Number.NaN, Infinity]) assert.throws(() => parseSize(bad), /is not a size/, `parseSize(${bad})`);
  });

  it('refuses 0 unless the setting allows it, and sizes past what a number holds exactly', () => {
    assert.throws(() => parseSize('0'), /"0" is not a usable size: it must be at least 1 byte/);
    assert.throws(() => parseSize('0M'), /not a usable size/);
    assert.equal(parseSize('0', { allowZero: true }), 0);
    assert.equal(parseSize(0, { allowZero: true }), 0);
    assert.throws(() => parseSize('100000P'), /too large/);
  });
});

describe('parseRate', () => {
  it('reads 0 and empty as unlimited', () => {
    assert.equal(parseRate('0'), 0);
    assert.equal(parseRate(0), 0);
    assert.equal(parseRate(''), 0);
    assert.equal(parseRate(undefined), 0);
  });

  it('reads plain numbers as bytes per second', () => {
    assert.equal(parseRate('1000'), 1000);
    assert.equal(parseRate(12345), 12345);
    assert.equal(parseRate('512B'), 512);
  });

  it('reads sizes per second by the size rule: M is 10^6, Mi is 2^20', () => {
    assert.equal(parseRate('50M'), 50_000_000);
    assert.equal(parseRate('50m'), 50_000_000);
    assert.equal(parseRate('10k'), 10_000);
    assert.equal(parseRate('2G'), 2_000_000_000);
    assert.equal(parseRate('50MB'), 50_000_000);
    assert.equal(parseRate('1.5M'), 1_500_000);
    assert.equal(parseRate('50M/s'), 50_000_000);
    assert.equal(parseRate('50MB/s'), 50_000_000);
    assert.equal(parseRate('20Mi'), 20 * 1024 * 1024);
    assert.equal(parseRate('20MiB'), 20 * 1024 * 1024);
    assert.equal(parseRate('20MiB/s'), 20 * 1024 * 1024);
    assert.equal(parseRate('64KiB'), 64 * 1024);
    assert.equal(parseRate('1GiB'), 1024 ** 3);
    assert.equal(parseRate('20miB'), 20 * 1024 * 1024);
  });

  it('reads bit units as an eighth of the bytes', () => {
    assert.equal(parseRate('100Mbit'), 12_500_000);
    assert.equal(parseRate('400Mbit'), 50_000_000);
    assert.equal(parseRate('400mbit'), 50_000_000);
    assert.equal(parseRate('400 Mbit/s'), 50_000_000);
    assert.equal(parseRate('400Mbits'), 50_000_000);
    assert.equal(parseRate('1Gbit'), 125_000_000);
    assert.equal(parseRate('8kbit'), 1_000);
    assert.equal(parseRate('100Mbps'), 12_500_000);
    assert.equal(parseRate('8Mibit'), 1024 * 1024);
    assert.equal(parseRate('800bps'), 100);
  });

  it('refuses what is not a rate, with a message that shows the accepted forms', () => {
    for (const bad of ['fast', '-5M', '5 parsecs', 'M', '5MX', '1e6', '5M/h', 'Mbit']) {
      assert.throws(
        () => parseRate(bad),
        (err: Error) => err.message === `${JSON.stringify(bad)} is not a rate; write e.g. 50M, 20Mi or 400Mbit (bytes or bits per second), or 0 for no limit`,
        `parseRate(${JSON.stringify(bad)})`,
      );
    }
    assert.throws(() => parseRate(-1), /is not a rate/);
  });

  it('refuses units that are read both as bytes and as bits: Bps, and a lower-case b after a prefix', () => {
    for (const bad of ['50MBps', '50Mb', '50mb', '5Gb/s', '20mib', '20Mib/s']) {
      assert.throws(() => parseRate(bad), (err: Error) => err.message.startsWith(`${JSON.stringify(bad)} is ambiguous (bytes or bits?): write B for bytes or bit for bits; write e.g. 50M`), `parseRate(${JSON.stringify(bad)})`);
    }
  });
});

describe('parsePercentOrSize', () => {
  it('reads a percentage', () => {
    assert.deepEqual(parsePercentOrSize('10%'), { kind: 'percent', percent: 10 });
    assert.deepEqual(parsePercentOrSize(' 2.5 % '), { kind: 'percent', percent: 2.5 });
    assert.deepEqual(parsePercentOrSize('0%', { allowZero: true }), { kind: 'percent', percent: 0 });
  });

  it('reads anything else as a size by the size rule', () => {
    assert.deepEqual(parsePercentOrSize('5Gi'), { kind: 'size', bytes: 5 * 1024 ** 3 });
    assert.deepEqual(parsePercentOrSize('500M'), { kind: 'size', bytes: 500_000_000 });
    assert.deepEqual(parsePercentOrSize(1048576), { kind: 'size', bytes: 1048576 });
    assert.deepEqual(parsePercentOrSize('0', { allowZero: true }), { kind: 'size', bytes: 0 });
  });

  it('refuses shares of 100% and more, 0 unless allowed, and what is neither', () => {
    assert.throws(() => parsePercentOrSize('100%'), /"100%" is not a usable share: it must be below 100%/);
    assert.throws(() => parsePercentOrSize('250%'), /below 100%/);
    assert.throws(() => parsePercentOrSize('0%'), /"0%" is not a usable share: it must be above 0%/);
    assert.throws(() => parsePercentOrSize('0'), /not a usable size/);
    assert.throws(() => parsePercentOrSize('-5%'), /"-5%" is not a percentage; write e\.g\. 10% or 2\.5%/);
    assert.throws(() => parsePercentOrSize('10%%'), /is not a percentage/);
    assert.throws(() => parsePercentOrSize('12X'), (err: Error) => err.message === '"12X" is neither a percentage nor a size; write e.g. 10%, 500M, 4Gi or 1073741824');
  });

  it('turns into bytes against a total', () => {
    assert.equal(bytesOfShare(parsePercentOrSize('10%'), 48 * 1024 * 1024), Math.floor(4.8 * 1024 * 1024));
    assert.equal(bytesOfShare(parsePercentOrSize('5M'), 48 * 1024 * 1024), 5_000_000);
  });
});

describe('formatBytes', () => {
  it('prints binary units, which parseSize reads back', () => {
    assert.equal(formatBytes(512), '512 B');
    assert.equal(formatBytes(12 * 1024), '12.0 KiB');
    assert.equal(formatBytes(312 * 1024 ** 2), '312 MiB');
    assert.equal(formatBytes(1.5 * 1024 ** 3), '1.5 GiB');
    assert.equal(parseSize(formatBytes(1.5 * 1024 ** 3).replace(' ', '')), 1.5 * 1024 ** 3);
  });
});
