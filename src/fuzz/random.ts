// A small seeded PRNG for the fuzzers: every case is a pure function of (seed, iteration), so a
// finding is reproduced from those two numbers alone, and a campaign resumes where it stopped.

/** mulberry32: fast, 32-bit state, good enough to spread mutations. */
export class Random {
  private state: number;

  constructor(seed: number) {
    this.state = seed >>> 0;
  }

  /** A float in [0, 1). */
  next(): number {
    this.state = (this.state + 0x6d2b79f5) >>> 0;
    let t = this.state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }

  /** An integer in [0, n). */
  int(n: number): number {
    return Math.floor(this.next() * n);
  }

  u32(): number {
    return (this.next() * 4294967296) >>> 0;
  }

  chance(p: number): boolean {
    return this.next() < p;
  }

  pick<T>(items: readonly T[]): T {
    return items[this.int(items.length)];
  }
}

/** The seed of case `iteration` of a campaign seeded with `seed` (splitmix-style mixing). */
export function caseSeed(seed: number, iteration: number): number {
  let z = (seed ^ Math.imul(iteration, 0x9e3779b1) ^ Math.floor(iteration / 4294967296)) >>> 0;
  z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
  z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
  return (z ^ (z >>> 16)) >>> 0;
}

/** Values at the edges of what u32 fields mean (sizes, counts, indexes, flags). */
export const INTERESTING_U32 = [
  0, 1, 2, 3, 7, 8, 15, 16, 17, 31, 32, 63, 64, 255, 256, 0x3ff, 0x400, 0xfff, 0x1000, 0x7fff, 0x8000, 0xffff, 0x1_0000,
  0x7fff_ffff, 0x8000_0000, 0xffff_fffe, 0xffff_ffff,
] as const;
