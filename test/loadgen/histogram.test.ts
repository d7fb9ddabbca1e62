// The latency histogram: every value lands in the bucket whose bounds hold it
// ([2^m · (1 + s/32), 2^m · (1 + (s+1)/32)) for bucket 32·m + s), and percentiles stay within
// the bucket width (~3 %).
import { describe, expect, it } from 'vitest';
import { Histogram } from '../../dist/loadgen/histogram.js';

function bucketOf(value: number): number {
  const histogram = new Histogram();
  histogram.record(value);
  const buckets = Array.from(histogram.counts.keys()).filter((b) => histogram.counts[b] !== 0);
  expect(buckets).toHaveLength(1);
  return buckets[0];
}

function bounds(bucket: number): [number, number] {
  const major = Math.floor(bucket / 32);
  const sub = bucket % 32;
  return [2 ** major * (1 + sub / 32), 2 ** major * (1 + (sub + 1) / 32)];
}

describe('Histogram.record', () => {
  it('puts each value in the bucket whose bounds hold it', () => {
    const values = [1, 1.5, 2, 3, 31, 32, 33, 1000, 4095.999, 4096, 65535, 1e6, 123456789.5, 2 ** 40 * 1.99];
    for (let k = 1; k < 47; k++)
      values.push(2 ** k, 2 ** k * (1 - 2 ** -40), 2 ** k * (1 + 1 / 32), 2 ** k * (1 + 1 / 32) * (1 - 2 ** -45));
    let seed = 12345;
    for (let i = 0; i < 2000; i++) {
      seed = (seed * 1103515245 + 12345) >>> 0;
      values.push(1 + (seed / 2 ** 32) * 2 ** ((seed % 40) + 1));
    }
    for (const value of values) {
      const [low, high] = bounds(bucketOf(value));
      expect(value >= low && value < high, `${value} in [${low}, ${high})`).toBe(true);
    }
  });
  it('counts values below 1 ns in the first bucket and huge ones (and NaN) in the last', () => {
    expect(bucketOf(0)).toBe(0);
    expect(bucketOf(0.25)).toBe(0);
    expect(bucketOf(2 ** 60)).toBe(48 * 32 - 1);
    expect(bucketOf(Number.NaN)).toBe(48 * 32 - 1);
  });
  it('reports percentiles within a bucket width of the truth', () => {
    const histogram = new Histogram();
    for (let v = 1; v <= 100_000; v++) histogram.record(v * 10);
    for (const [q, truth] of [
      [0.5, 500_000],
      [0.9, 900_000],
      [0.99, 990_000],
      [0.999, 999_000],
    ] as const) {
      const p = histogram.percentile(q);
      expect(p).toBeGreaterThanOrEqual(truth);
      expect(p / truth).toBeLessThan(1 + 1 / 32 + 1e-9);
    }
    expect(histogram.count).toBe(100_000);
    expect(histogram.min).toBe(10);
    expect(histogram.max).toBe(1_000_000);
  });
});
