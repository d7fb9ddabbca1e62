// Allocation check shared by the micro-benchmarks: runs a case about a million times after a
// warm-up and reports heap bytes per operation and the garbage collections seen meanwhile
// (run node with --expose-gc so the heap starts clean). Hot paths must show 0 GCs.
import { PerformanceObserver } from 'node:perf_hooks';

export interface AllocationCase {
  fn: () => void;
  /** Operations per call of fn (a batch of 32 counts 32). */
  perCall: number;
}

export async function measureAllocations(c: AllocationCase): Promise<{ bytesPerOp: number; gcs: number; iterations: number }> {
  const iterations = Math.ceil(1_000_000 / c.perCall);
  for (let i = 0; i < 50_000; i++) c.fn(); // warm up (JIT, inline caches)
  const gc = (globalThis as { gc?: () => void }).gc;
  if (gc) gc();
  let gcs = 0;
  const observer = new PerformanceObserver((list) => {
    gcs += list.getEntries().length;
  });
  observer.observe({ entryTypes: ['gc'] });
  await new Promise((resolve) => setImmediate(resolve));
  gcs = 0;
  const before = process.memoryUsage().heapUsed;
  for (let i = 0; i < iterations; i++) c.fn();
  const after = process.memoryUsage().heapUsed;
  await new Promise((resolve) => setImmediate(resolve));
  observer.disconnect();
  return { bytesPerOp: (after - before) / (iterations * c.perCall), gcs, iterations: iterations * c.perCall };
}
