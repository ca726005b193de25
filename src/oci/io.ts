/** Options every async I/O call takes. */
export interface IoOptions {
  signal?: AbortSignal;
}

/** A byte range; `end` is inclusive, as in HTTP `Range: bytes=start-end`. */
export interface ByteRange {
  /** First byte, inclusive. */
  start: number;
  /** Last byte, inclusive. */
  end: number;
}
