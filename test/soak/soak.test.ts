// The soak's short variant: 20 s of front-end churn against a blk daemon process (npm run soak
// runs 10 minutes). Every front-end is served, the daemon logs no error, its fd count stays
// flat. RSS: 20 s is inside the daemon's warm-up (code being compiled, the old space growing:
// anon RSS rose from 124 to 142 MB in the first 40 s of the 10-minute run, then settled at 132),
// and the guest-memory part swings by ±15 MB with GC timing, so a short run can only catch a fast
// leak (the unbounded reply queue of issue 10 grew RSS 45-fold in 40 s): RSS may not double.
// The 10-minute soak holds it to +10 %.
import { describe, expect, it } from 'vitest';
import { runSoak } from '../../dist/soak/soak.js';

describe('soak (20 s)', () => {
  it('front-end churn with kills mid-I/O: all served, fds flat, RSS not doubling', async () => {
    const result = await runSoak({ durationMs: 20_000, sampleEveryMs: 1000, rssTolerance: 1.0 });
    expect(result.failures).toEqual([]);
    expect(result.rounds).toBeGreaterThan(100);
    expect(result.killedMidIo).toBeGreaterThan(50);
    expect(result.samples.length).toBeGreaterThanOrEqual(15);
    // Measured, not bounded here (the machine is shared): the figure is the 10-minute soak's.
    expect(result.servedAfterKillMs.count).toBeGreaterThan(20);
    expect(result.servedAfterKillMs.p99).toBeGreaterThan(0);
    console.log('next front-end after a kill mid-I/O served in (ms):', result.servedAfterKillMs);
  }, 60_000);
});
