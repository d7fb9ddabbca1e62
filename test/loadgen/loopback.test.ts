// The generator's ceiling: the load thread against its in-thread loopback device completes every
// request with status OK, at any depth, and leaves nothing in flight.
import { describe, expect, it } from 'vitest';
import { runLoopbackLoad } from '../../dist/loadgen/load.js';

describe('runLoopbackLoad', () => {
  for (const queueDepth of [1, 32, 256]) {
    it(`completes every request at QD${queueDepth}, each with status OK`, async () => {
      const report = await runLoopbackLoad({ queueDepth, seconds: 0.3 });
      expect(report.errors).toBe(0);
      expect(report.firstError).toBe('');
      expect(report.requests).toBeGreaterThan(queueDepth);
      expect(report.inFlightAtEnd).toBe(0);
      expect(report.bytes).toBe(report.requests * 4096);
      expect(report.histogram.count).toBe(report.requests);
    });
  }
});
