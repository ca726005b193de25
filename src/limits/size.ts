/**
 * Sizes and rates as operators write them: one rule for every flag, setting and environment variable.
 *
 *   K, M, G, T, P (and KB, MB, GB, TB, PB)   powers of 1000: 500M = 500 000 000 bytes
 *   Ki, Mi, Gi, Ti, Pi (and KiB, MiB, ...)   powers of 1024: 4Gi = 4 294 967 296 bytes
 *   a plain number (or with B)               bytes
 *
 * as Kubernetes quantities read them (and as `df -H` / `df -h` print them). Case does not matter: `500m` is 500 MB.
 * A rate is a size per second (`50M`, `50M/s`, `20Mi`), or bits per second with `bit` or `bps`
 * (`400Mbit`, `100Mbps`, `1Gbit/s`). The unit arithmetic is bytes-iec's (its metric mode reads kB as 1000 and
 * KiB as 1024); this module fixes the syntax around it and says what is wrong with a bad value.
 */
import bytesIec from 'bytes-iec';

/** The rule in one paragraph, for `--help`. */
export const SIZE_HELP =
  'Sizes: K, M, G, T (or KB, MB, ...) are powers of 1000; Ki, Mi, Gi, Ti (or KiB, MiB, ...) powers of 1024;\n' +
  'a plain number is bytes: 500M = 500000000 bytes, 4Gi = 4294967296 bytes.\n' +
  'Rates: a size per second (50M, 20Mi/s), or bits per second with bit or bps (400Mbit, 100Mbps).';
export const SIZE_EXAMPLES = 'e.g. 500M, 4Gi or 1073741824';
export const RATE_EXAMPLES = 'e.g. 50M, 20Mi or 400Mbit (bytes or bits per second)';

/** `<number> [K|M|G|T|P][i][B]`: the whole syntax of a size. */
const SIZE_PATTERN = /^(\d+(?:\.\d+)?)\s*(?:([kmgtp])(i)?b?|b)?$/i;
/** `<number> [K|M|G|T|P][i]` followed by a bit unit: `bit`, `bits`, `bit/s`, `bps`. */
const BIT_RATE_PATTERN = /^(\d+(?:\.\d+)?)\s*([kmgtp])?(i)?(bits?(?:\/s)?|bps)$/i;

export interface SizeOptions {
  /** Accept 0 (for settings where 0 turns something off). Default: a size must be at least 1 byte. */
  allowZero?: boolean;
}

function bytesOf(number: string, prefix: string | undefined, binary: string | undefined): number | null {
  return bytesIec.parse(`${number}${prefix ?? ''}${prefix && binary ? 'i' : ''}b`, { mode: 'metric' });
}

/**
 * `500M`, `4Gi`, `4.7GB`, `650MiB`, `1073741824` -> bytes (fractions of a byte are dropped).
 * Numbers pass through when they are whole and not negative (a config file may hold either).
 */
export function parseSize(text: string | number, opts: SizeOptions = {}): number {
  const shown = JSON.stringify(String(text).slice(0, 100));
  let value: number | null;
  if (typeof text === 'number') {
    if (!Number.isSafeInteger(text) || text < 0) throw new Error(`${shown} is not a size; write ${SIZE_EXAMPLES}`);
    value = text;
  } else {
    const m = SIZE_PATTERN.exec(text.trim());
    value = m ? bytesOf(m[1]!, m[2], m[3]) : null;
    if (value === null) throw new Error(`${shown} is not a size; write ${SIZE_EXAMPLES}`);
  }
  if (!Number.isSafeInteger(value)) throw new Error(`${shown} is too large a size`);
  if (value === 0 && !opts.allowZero) throw new Error(`${shown} is not a usable size: it must be at least 1 byte (${SIZE_EXAMPLES})`);
  return value;
}

/**
 * A rate in bytes per second: `50M`, `50M/s`, `20Mi`, `400Mbit`, `100Mbps`. 0, empty and undefined mean
 * unlimited (0 is returned). `MBps`, `Mb` and `Mb/s` are refused as ambiguous: they are read both ways in the wild.
 */
export function parseRate(value: string | number | undefined): number {
  if (value === undefined || value === '' || value === 0) return 0;
  const text = String(value).trim();
  const bad = (why = 'is not a rate'): Error => new Error(`${JSON.stringify(text.slice(0, 100))} ${why}; write ${RATE_EXAMPLES}, or 0 for no limit`);
  if (typeof value === 'number') {
    if (!Number.isFinite(value) || value < 0) throw bad();
    return Math.floor(value);
  }
  // `MBps` and `Mb/s` are read as bytes by some and as bits by others: say which.
  if (/Bps$/.test(text) || /[kmgtpKMGTP][iI]?b(\/s)?$/.test(text)) throw bad('is ambiguous (bytes or bits?): write B for bytes or bit for bits');
  const bits = BIT_RATE_PATTERN.exec(text);
  if (bits) {
    const n = bytesOf(bits[1]!, bits[2], bits[3]);
    if (n === null || !Number.isSafeInteger(n)) throw bad();
    return Math.floor(n / 8);
  }
  const perSecond = text.replace(/\s*\/\s*s$/i, '');
  try {
    return parseSize(perSecond, { allowZero: true });
  } catch {
    throw bad();
  }
}

/** A size, or a share of something (a filesystem's size): what `--min-free 10%` or `--min-free 5Gi` means. */
export type SizeOrPercent = { kind: 'percent'; percent: number } | { kind: 'size'; bytes: number };

/** `10%`, `2.5%` -> a percentage (0 to below 100); anything else is read by parseSize. */
export function parsePercentOrSize(text: string | number, opts: SizeOptions = {}): SizeOrPercent {
  const trimmed = String(text).trim();
  const shown = JSON.stringify(trimmed.slice(0, 100));
  const pct = /^(\d+(?:\.\d+)?)\s*%$/.exec(trimmed);
  if (pct) {
    const percent = Number(pct[1]);
    if (percent >= 100) throw new Error(`${shown} is not a usable share: it must be below 100%`);
    if (percent === 0 && !opts.allowZero) throw new Error(`${shown} is not a usable share: it must be above 0%`);
    return { kind: 'percent', percent };
  }
  if (typeof text === 'string' && trimmed.includes('%')) throw new Error(`${shown} is not a percentage; write e.g. 10% or 2.5%`);
  try {
    return { kind: 'size', bytes: parseSize(typeof text === 'number' ? text : trimmed, opts) };
  } catch (err) {
    if (/not a size/.test((err as Error).message)) throw new Error(`${shown} is neither a percentage nor a size; write e.g. 10%, 500M, 4Gi or 1073741824`);
    throw err;
  }
}

/** The bytes a SizeOrPercent stands for, given the size of what a percentage is a share of. */
export function bytesOfShare(value: SizeOrPercent, totalBytes: number): number {
  return value.kind === 'size' ? value.bytes : Math.floor((totalBytes * value.percent) / 100);
}

/** `1.5 GiB`, `312 MiB`, `12 KiB`, `512 B`: binary units, as this module reads them. */
export function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return i === 0 ? `${Math.round(n)} B` : `${v >= 100 ? v.toFixed(0) : v.toFixed(1)} ${units[i]}`;
}
