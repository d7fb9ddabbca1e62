// Micro-benchmark of the load generator's per-request path (front-end side), in one thread: the
// load thread's own QueueLoad (post = header stamp + 3-descriptor chain + avail entry; kick =
// avail.idx publish + kick check; reap = used ring + slot bookkeeping + status check; record =
// histogram) against the in-thread LoopbackDevice that completes each request at once.
//
//   npm run bench:build && node --expose-gc dist-bench/micro-loadgen.js
//
// Everything is timed in thread CPU time (schedstat), not wall time: the machine is shared. (1)
// whole loop passes, each variant dropping one part, so the differences say what that part costs;
// (2) the parts alone: the clock, a histogram record, the loopback device, and what is left for
// the driver (post + kick + reap). A pass at queue depth B is what the load thread does per loop
// pass: B requests.
import { readFileSync } from 'node:fs';
import { PerformanceObserver, performance } from 'node:perf_hooks';
import { GuestMemory } from '../dist/dataplane/memory.js';
import { splitRingLayout, type VringDriver } from '../dist/frontend/vring-driver.js';
import { Histogram } from '../dist/loadgen/histogram.js';
import { ErrorLog, QueueLoad, Xorshift32 } from '../dist/loadgen/queue-load.js';
import { LoopbackDevice } from '../dist/loadgen/loopback.js';
import type { LoadQueue, Workload } from '../dist/loadgen/load-spec.js';

const SIZE = 256;

function rig(depth: number) {
  const layout = splitRingLayout(SIZE);
  const bufferAddr = 65536;
  const bufferBytes = depth * 16384 + 4096;
  const size = bufferAddr + bufferBytes;
  const buffer = new SharedArrayBuffer(size);
  const regions = [{ guestPhysAddr: 0, size, userspaceAddr: 0, buffer, bufferOffset: 0 }];
  const memory = new GuestMemory(regions);
  const queue: LoadQueue = {
    index: 0,
    size: SIZE,
    descAddr: layout.descOffset,
    availAddr: layout.availOffset,
    usedAddr: layout.usedOffset,
    kickFd: -1,
    callFd: -1,
    eventIdx: false,
    packed: false,
    bufferAddr,
    bufferBytes,
  };
  const workload: Workload = { kind: 'blk', pattern: 'randread', blockSize: 4096, capacityBytes: 1 << 30, readShare: 1, seed: 1 };
  const histogram = new Histogram();
  const errors = new ErrorLog();
  const load = new QueueLoad(queue, depth, { memory, workload, histogram, errors, random: new Xorshift32() });
  load.driver.disableCallbacks(); // spin mode, as the load thread runs by default
  return { load, device: new LoopbackDevice(regions, queue), histogram, errors };
}

type Rig = ReturnType<typeof rig>;

/** One loop pass of the load thread: fill the depth, publish/kick, (device), reap and record. */
function cycle(r: Rig, useClock: boolean, record: boolean): void {
  let now = useClock ? performance.now() : 1;
  while (r.load.post(now)) {
    /* fill the queue depth */
  }
  r.load.kick();
  r.device.complete();
  if (useClock) now = performance.now();
  r.load.reap(now, record);
}

// ---- (1) whole cycles -------------------------------------------------------------------------

let gcEvents = 0;
new PerformanceObserver((list) => {
  gcEvents += list.getEntries().length;
}).observe({ entryTypes: ['gc'] });

/** CPU time this thread has run, in ns (schedstat): the machine is shared, wall time is not ours. */
function threadCpuNs(): number {
  return Number(readFileSync('/proc/thread-self/schedstat', 'utf8').split(' ')[0]);
}

const PASS_REQUESTS = 2_000_000;
const variants: [string, boolean, boolean][] = [
  ['full pass (clock, post, kick, loopback, reap, record)', true, true],
  ['without histogram record', true, false],
  ['without clock reads', false, true],
  ['without clock and record', false, false],
];
console.log('Load generator per-request cost (front-end side, one thread, in-thread loopback back-end)');
console.log('(1) whole loop passes, ns of thread CPU per request (best of 3):');
for (const depth of [1, 32]) {
  for (const [name, useClock, record] of variants) {
    const r = rig(depth);
    const passes = PASS_REQUESTS / depth;
    for (let pass = 0; pass < passes / 10; pass++) cycle(r, useClock, record); // warm up the JIT
    let best = Infinity;
    for (let round = 0; round < 3; round++) {
      const start = threadCpuNs();
      for (let pass = 0; pass < passes; pass++) cycle(r, useClock, record);
      best = Math.min(best, (threadCpuNs() - start) / (passes * depth));
    }
    if (r.errors.count > 0) throw new Error(`loopback errors: ${r.errors.first}`);
    console.log(
      `  QD${String(depth).padEnd(3)} ${name.padEnd(56)} ${best.toFixed(1).padStart(7)}  (ceiling ${(1e3 / best).toFixed(2)} M req/s per core)`,
    );
  }
}

// ---- (2) the parts alone -----------------------------------------------------------------------

/** ns of thread CPU per call of `body` (best of 3 rounds of `calls`). */
function cpuNsPer(calls: number, body: (i: number) => void): number {
  for (let i = 0; i < calls / 10; i++) body(i);
  let best = Infinity;
  for (let round = 0; round < 3; round++) {
    const start = threadCpuNs();
    for (let i = 0; i < calls; i++) body(i);
    best = Math.min(best, (threadCpuNs() - start) / calls);
  }
  return best;
}

let sink = 0;
const histogram = new Histogram();
const clockNs = cpuNsPer(2_000_000, () => {
  sink += performance.now();
});
const recordNs = cpuNsPer(2_000_000, (i) => histogram.record(500 + (i & 0xffff) * 37));
console.log('(2) the parts alone, ns of thread CPU:');
console.log(
  `  performance.now()                         ${clockNs.toFixed(1).padStart(7)}  (twice per loop pass: per request at QD1)`,
);
console.log(`  histogram.record()                        ${recordNs.toFixed(1).padStart(7)}  (per request)`);
const gcBefore = gcEvents;
globalThis.gc?.();
const heapBefore = process.memoryUsage().heapUsed;
for (const depth of [1, 32]) {
  // The loopback device alone: a prebuilt chain re-offered raw (one avail store each), then completed.
  const r = rig(depth);
  const driver = r.load.driver as VringDriver; // split: the loopback device reads split rings
  driver.writeDescriptor(0, 65536, 16, 1, 1);
  driver.writeDescriptor(1, 65536 + 4096, 4096, 3, 2);
  driver.writeDescriptor(2, 65536 + 8192, 1, 2, 0);
  const deviceNs =
    cpuNsPer(2_000_000 / depth, () => {
      for (let b = 0; b < depth; b++) driver.offerRawHead(0);
      driver.publish();
      sink += r.device.complete();
    }) / depth;
  const bare = rig(depth);
  const bareNs = cpuNsPer(2_000_000 / depth, () => cycle(bare, false, false)) / depth;
  console.log(
    `  QD${String(depth).padEnd(3)} loopback device (≤, includes the raw offer) ${deviceNs.toFixed(1).padStart(7)}  per request`,
  );
  console.log(
    `  QD${String(depth).padEnd(3)} post + kick + reap (bare pass − loopback)   ${(bareNs - deviceNs).toFixed(1).padStart(7)}  per request`,
  );
}
globalThis.gc?.();
console.log(
  `  GC events during (2): ${gcEvents - gcBefore}, heap delta ${((process.memoryUsage().heapUsed - heapBefore) / 1024).toFixed(0)} KiB${globalThis.gc ? '' : ' (run with --expose-gc for a precise heap figure)'}`,
);
if (sink === -1) console.log(sink);
