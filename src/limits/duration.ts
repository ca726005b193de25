import ms from 'ms';

/**
 * A duration in milliseconds: `90s`, `15m`, `6h`, `2d` (the `ms` library's units), or a plain number of
 * milliseconds. Undefined when the text is none of these or negative; callers say which setting was wrong.
 */
export function durationMs(value: string): number | undefined {
  const v = value.trim();
  const n = /^\d+$/.test(v) ? Number(v) : ms(v as ms.StringValue);
  return typeof n === 'number' && Number.isFinite(n) && n >= 0 ? n : undefined;
}
