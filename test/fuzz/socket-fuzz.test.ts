// A short fixed-seed pass of the live-socket fuzzer against a real vhost-user-blk process: the
// daemon survives, logs no error, and serves a clean front-end (write, read back) before, during
// and after.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { emptyTotals, runSocket, sessionFuzzer, type Finding } from '../../dist/fuzz/campaign.js';

const SEED = 0x50c4;
const CASES = 400;
const crashesDir = mkdtempSync(join(tmpdir(), 'vut-socket-fuzz-'));
afterAll(() => rmSync(crashesDir, { recursive: true, force: true }));

describe('live-socket fuzzing (fixed seed)', () => {
  it(`${CASES} mutated connections to a real daemon: no crash, hang or error, clean front-ends served`, async () => {
    const sessions = sessionFuzzer(undefined);
    const findings: Finding[] = [];
    const totals = emptyTotals();
    try {
      await runSocket(
        sessions,
        { seed: SEED, totals, crashesDir, onFinding: (f) => findings.push(f), stop: () => totals.cases >= CASES },
        100,
      );
    } finally {
      sessions.dispose();
    }
    expect(findings.map((f) => `${f.iteration}: ${f.finding}`)).toEqual([]);
    expect(totals.cases).toBe(CASES);
    expect(totals.messages).toBeGreaterThan(5 * CASES);
    // One before, one every 100 cases, one after.
    expect(totals.healthChecks).toBe(2 + CASES / 100);
  });
});
