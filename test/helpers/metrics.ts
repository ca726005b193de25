/**
 * Reads a node's Prometheus text exposition (`GET /metrics`) into numbers a test can compare.
 */

export interface MetricSample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

/** Parses the text format (no timestamps, no exemplars: what prom-client writes). */
export function parseMetrics(text: string): MetricSample[] {
  const samples: MetricSample[] = [];
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$/.exec(line);
    if (!m) continue;
    const labels: Record<string, string> = {};
    for (const l of (m[2] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]!] = l[2]!.replace(/\\(.)/g, '$1');
    samples.push({ name: m[1]!, labels, value: Number(m[3]) });
  }
  return samples;
}

/** A snapshot of a node's metrics. */
export class Metrics {
  readonly samples: MetricSample[];
  constructor(text: string) {
    this.samples = parseMetrics(text);
  }
  /** The sum of every sample of `name` whose labels include `labels` (0 when there is none). */
  get(name: string, labels: Record<string, string> = {}): number {
    return this.samples
      .filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v))
      .reduce((sum, s) => sum + s.value, 0);
  }
}

export async function scrape(nodeUrl: string): Promise<Metrics> {
  const res = await fetch(`${nodeUrl}/metrics`, { signal: AbortSignal.timeout(10_000) });
  if (res.status !== 200) throw new Error(`GET ${nodeUrl}/metrics: HTTP ${res.status}`);
  return new Metrics(await res.text());
}
