// A short fixed-seed pass of the chain-walker fuzzer: hostile descriptor tables in canary-guarded
// guest memory, each walk checked against a reference walker and the canaries.
import { describe, expect, it } from 'vitest';
import { ChainFuzzer } from '../../dist/fuzz/chain-fuzz.js';
import { Random, caseSeed } from '../../dist/fuzz/random.js';
import { BrokenReason } from '../../dist/dataplane/virtqueue.js';

const SEED = 0xc4a1;
const CASES = 30_000;

describe('chain-walker fuzzing (fixed seed)', () => {
  it(`${CASES} hostile descriptor tables: no out-of-bounds segment, canary hit or disagreement`, () => {
    const fuzzer = new ChainFuzzer();
    const findings: string[] = [];
    const reasons = new Map<number, number>();
    let chains = 0;
    for (let iteration = 0; iteration < CASES; iteration++) {
      const result = fuzzer.run(new Random(caseSeed(SEED, iteration)));
      chains += result.chains;
      reasons.set(result.reason, (reasons.get(result.reason) ?? 0) + 1);
      if (result.finding && findings.length < 5) findings.push(`${iteration}: ${result.finding}`);
    }
    expect(findings).toEqual([]);
    // Both outcomes, and most of the walker's refusals, are reached.
    expect(chains).toBeGreaterThan(CASES / 10);
    for (const reason of [
      BrokenReason.NEXT_OUT_OF_RANGE,
      BrokenReason.CHAIN_LOOP,
      BrokenReason.INDIRECT_NESTED,
      BrokenReason.INDIRECT_WITH_NEXT,
      BrokenReason.INDIRECT_BAD_LENGTH,
      BrokenReason.INDIRECT_NOT_NEGOTIATED,
      BrokenReason.READABLE_AFTER_WRITABLE,
      BrokenReason.ADDR_OUTSIDE_MEMORY,
      BrokenReason.ADDR_CROSSES_REGION,
      BrokenReason.ZERO_LENGTH,
      BrokenReason.LENGTH_OVERFLOW,
      BrokenReason.TOO_MANY_SEGMENTS,
      BrokenReason.AVAIL_IDX_JUMP,
      BrokenReason.HEAD_OUT_OF_RANGE,
    ]) {
      expect(reasons.get(reason) ?? 0, `reason ${reason}`).toBeGreaterThan(0);
    }
  });
});
