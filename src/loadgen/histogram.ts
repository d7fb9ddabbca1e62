// A log-linear latency histogram in the spirit of HdrHistogram: fixed memory, no allocation per
// record, ~3% worst-case relative error. Values are nanoseconds (doubles, so any range fits).
// Bucket b covers [2^m · (1 + s/SUB), 2^m · (1 + (s+1)/SUB)) with m = b / SUB, s = b % SUB.

const SUB_BITS = 5;
const SUB = 1 << SUB_BITS; // 32 sub-buckets per power of two
const MAJORS = 48; // up to 2^48 ns ≈ 3 days
const BUCKETS = MAJORS * SUB;
/** A double and its two 32-bit halves, for reading exponent and mantissa bits without allocation. */
const scratch = new Float64Array(1);
const scratchWords = new Uint32Array(scratch.buffer);
const HIGH_WORD = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1 ? 1 : 0; // little-endian: word 1

export class Histogram {
  readonly counts = new Float64Array(BUCKETS);
  count = 0;
  min = Infinity;
  max = 0;
  sum = 0;

  record(valueNs: number): void {
    // The bucket straight from the double's bits: the exponent is the major bucket, the top
    // SUB_BITS of the mantissa the sub-bucket — floor(log2 v) and floor((v / 2^major - 1) · SUB)
    // exactly, without Math.log2 and Math.pow (they were ~40 % of the load generator's time per
    // request). v ≥ 1, so the double is normal and its exponent ≥ 0; NaN lands in the last bucket.
    scratch[0] = valueNs < 1 ? 1 : valueNs;
    const high = scratchWords[HIGH_WORD];
    let bucket = ((high >>> 20) - 1023) * SUB + ((high >>> (20 - SUB_BITS)) & (SUB - 1));
    if (bucket >= BUCKETS) bucket = BUCKETS - 1;
    this.counts[bucket]++;
    this.count++;
    this.sum += valueNs;
    if (valueNs < this.min) this.min = valueNs;
    if (valueNs > this.max) this.max = valueNs;
  }

  /** Adds another histogram's counts (e.g. one per load worker). */
  merge(other: { counts: Float64Array; count: number; min: number; max: number; sum: number }): void {
    for (let b = 0; b < BUCKETS; b++) this.counts[b] += other.counts[b];
    this.count += other.count;
    this.sum += other.sum;
    if (other.min < this.min) this.min = other.min;
    if (other.max > this.max) this.max = other.max;
  }

  /** The value at quantile q (0..1): the upper edge of the bucket holding it, capped at max. */
  percentile(q: number): number {
    if (this.count === 0) return 0;
    const rank = Math.max(1, Math.ceil(q * this.count));
    let seen = 0;
    for (let b = 0; b < BUCKETS; b++) {
      seen += this.counts[b];
      if (seen >= rank) {
        const major = Math.floor(b / SUB);
        const upper = 2 ** major * (1 + ((b % SUB) + 1) / SUB);
        return Math.min(upper, this.max);
      }
    }
    return this.max;
  }

  get mean(): number {
    return this.count === 0 ? 0 : this.sum / this.count;
  }

  reset(): void {
    this.counts.fill(0);
    this.count = 0;
    this.min = Infinity;
    this.max = 0;
    this.sum = 0;
  }
}
