// Micro-benchmark of the data-plane hot path: pop + pushUsed (+ flush) of a 3-descriptor chain
// (16-byte readable header, 4 KiB writable data, 1-byte writable status: a virtio-blk read).
//
//   node --expose-gc <compiled>/bench/micro-chain.js
//
// Needs the `benchmark` package (and `@types/benchmark` to type-check); imports the built
// library from ../dist (run `npm run build` first). Prints ns/op per case, then measures
// allocations separately: heap used before/after 1M iterations (process.memoryUsage().heapUsed,
// after a forced gc when --expose-gc is given) and the number of GC events seen meanwhile
// (PerformanceObserver 'gc'). Zero GCs and a flat heap over 1M iterations means no per-request
// allocation (one 16-byte object per op would be 16 MB and trigger several scavenges).
import Benchmark from 'benchmark';
import { GuestMemory } from '../dist/dataplane/memory.js';
import { VirtqRequest } from '../dist/dataplane/request.js';
import { SplitVirtqueue } from '../dist/dataplane/virtqueue.js';
import { VringDriver, splitRingLayout } from '../dist/frontend/vring-driver.js';
import { InflightQueue, inflightRegionBytes } from '../dist/dataplane/inflight.js';
import { measureAllocations } from './allocations.js';

const MiB = 1 << 20;
const SIZE = 256;
const NEXT = 1;
const WRITE = 2;
const INDIRECT = 4;
const DATA = 0x40000;
const TABLE = 0x30000;

function setup(eventIdx: boolean, tracked = false) {
  const buffer = new SharedArrayBuffer(MiB);
  const memory = new GuestMemory([{ guestPhysAddr: 0, size: MiB, userspaceAddr: 0x7f00_0000_0000, buffer, bufferOffset: 0 }]);
  const layout = splitRingLayout(SIZE);
  const rings = { descAddr: 0, availAddr: layout.availOffset, usedAddr: layout.usedOffset };
  const driver = new VringDriver({ memory, size: SIZE, ...rings, eventIdx, indirect: { tableAddr: TABLE, maxEntries: 4 } });
  const queue = new SplitVirtqueue({ memory, size: SIZE, ...rings, eventIdx, indirectDesc: true });
  if (tracked) {
    // In-flight tracking (PROTOCOL_F_INFLIGHT_SHMFD): every fetch, completion and publish also
    // writes the shared region.
    const region = new SharedArrayBuffer(inflightRegionBytes(1, SIZE));
    const recovery = queue.attachInflight(new InflightQueue({ buffer: region, offset: 0, descNum: SIZE }, SIZE));
    if (!recovery || recovery.error !== '') throw new Error('in-flight region refused');
  }
  // A static direct chain at descriptors 0 → 1 → 2 and an indirect one at descriptor 3.
  driver.writeDescriptor(0, DATA, 16, NEXT, 1);
  driver.writeDescriptor(1, DATA + 0x1000, 4096, WRITE | NEXT, 2);
  driver.writeDescriptor(2, DATA + 0x2000, 1, WRITE, 0);
  const view = new DataView(buffer);
  const entry = (i: number, addr: number, len: number, flags: number, next: number) => {
    view.setUint32(TABLE + 16 * i, addr, true);
    view.setUint32(TABLE + 16 * i + 8, len, true);
    view.setUint16(TABLE + 16 * i + 12, flags, true);
    view.setUint16(TABLE + 16 * i + 14, next, true);
  };
  entry(0, DATA, 16, NEXT, 1);
  entry(1, DATA + 0x1000, 4096, WRITE | NEXT, 2);
  entry(2, DATA + 0x2000, 1, WRITE, 0);
  driver.writeDescriptor(3, TABLE, 48, INDIRECT, 0);
  // Steady state of a polling worker: notifications off, the driver not reaping.
  queue.disableNotification();
  return { memory, driver, queue, req: new VirtqRequest(8) };
}

const direct = setup(true);
const indirect = setup(true);
const batched = setup(true);
const directTracked = setup(true, true);
const batchedTracked = setup(true, true);
const roundTrip = setup(true);
roundTrip.driver.disableCallbacks();
const tokens = new Float64Array(32);
const lens = new Uint32Array(32);
let sink = 0;

/** Device side only: the driver re-offers head 0 (one avail store + Atomics.store of avail.idx). */
function popPushDirect(): void {
  const { driver, queue, req } = direct;
  driver.postRawHead(0);
  if (!queue.pop(req)) throw new Error(queue.describeBroken());
  queue.pushUsed(req.head, req.writableBytes);
  queue.flushUsed();
  sink += queue.needsCall() ? 1 : 0;
}

function popPushDirectTracked(): void {
  const { driver, queue, req } = directTracked;
  driver.postRawHead(0);
  if (!queue.pop(req)) throw new Error(queue.describeBroken());
  queue.pushUsed(req.head, req.writableBytes);
  queue.flushUsed();
  sink += queue.needsCall() ? 1 : 0;
}

function popPushIndirect(): void {
  const { driver, queue, req } = indirect;
  driver.postRawHead(3);
  if (!queue.pop(req)) throw new Error(queue.describeBroken());
  queue.pushUsed(req.head, req.writableBytes);
  queue.flushUsed();
  sink += queue.needsCall() ? 1 : 0;
}

/** 32 requests per call, one avail.idx publish and one used.idx publish per batch. */
const BATCH = 32;
for (const { driver } of [batched, batchedTracked]) {
  for (let b = 1; b < BATCH; b++) {
    driver.writeDescriptor(4 * b, DATA, 16, NEXT, 4 * b + 1);
    driver.writeDescriptor(4 * b + 1, DATA + 0x1000, 4096, WRITE | NEXT, 4 * b + 2);
    driver.writeDescriptor(4 * b + 2, DATA + 0x2000, 1, WRITE, 0);
  }
}
const batchReqs = Array.from({ length: BATCH }, () => new VirtqRequest(8));
function popPushBatch32(): void {
  runBatch32(batched);
}
function popPushBatch32Tracked(): void {
  runBatch32(batchedTracked);
}
function runBatch32(setupOf: ReturnType<typeof setup>): void {
  const { driver, queue } = setupOf;
  for (let b = 0; b < BATCH; b++) driver.offerRawHead(4 * b);
  driver.publish();
  for (let b = 0; b < BATCH; b++) if (!queue.pop(batchReqs[b])) throw new Error(queue.describeBroken());
  for (let b = 0; b < BATCH; b++) queue.pushUsed(batchReqs[b].head, batchReqs[b].writableBytes);
  queue.flushUsed();
  sink += queue.needsCall() ? 1 : 0;
}

/** Both sides through the public API: post, publish, pop, pushUsed, flush, reap. */
function fullRoundTrip(): void {
  const { driver, queue, req } = roundTrip;
  driver.beginChain();
  driver.addSegment(DATA, 16, false);
  driver.addSegment(DATA + 0x1000, 4096, true);
  driver.addSegment(DATA + 0x2000, 1, true);
  driver.endChain(1);
  driver.publish();
  sink += driver.needsKick() ? 1 : 0;
  if (!queue.pop(req)) throw new Error(queue.describeBroken());
  queue.pushUsed(req.head, req.writableBytes);
  queue.flushUsed();
  sink += queue.needsCall() ? 1 : 0;
  sink += driver.reapUsed(tokens, lens);
}

interface Case {
  name: string;
  fn: () => void;
  perCall: number;
}
const cases: Case[] = [
  { name: 'pop+pushUsed+flush, 3-desc direct chain', fn: popPushDirect, perCall: 1 },
  { name: 'same, direct, in-flight tracking on', fn: popPushDirectTracked, perCall: 1 },
  { name: 'pop+pushUsed+flush, 3-desc indirect chain', fn: popPushIndirect, perCall: 1 },
  { name: 'pop+pushUsed, 3-desc chains, batches of 32', fn: popPushBatch32, perCall: BATCH },
  { name: 'same, batches of 32, in-flight tracking on', fn: popPushBatch32Tracked, perCall: BATCH },
  { name: 'driver post + device pop/push + driver reap', fn: fullRoundTrip, perCall: 1 },
];

async function main(): Promise<void> {
  const suite = new Benchmark.Suite('micro-chain');
  for (const c of cases) suite.add(c.name, c.fn);
  const results: Array<{ name: string; nsPerOp: number; rme: number; samples: number }> = [];
  suite.on('cycle', (event: Benchmark.Event) => {
    const bench = event.target as unknown as Benchmark;
    const c = cases.find((x) => x.name === bench.name)!;
    const nsPerOp = (bench.stats.mean * 1e9) / c.perCall;
    results.push({ name: c.name, nsPerOp, rme: bench.stats.rme, samples: bench.stats.sample.length });
    console.log(
      `${c.name.padEnd(48)} ${nsPerOp.toFixed(1).padStart(8)} ns/request  ±${bench.stats.rme.toFixed(1)}%  (${bench.stats.sample.length} samples)`,
    );
  });
  suite.run({ async: false });

  const gcExposed = typeof (globalThis as { gc?: unknown }).gc === 'function';
  console.log(
    `\nallocations (heapUsed delta over ~1M requests${gcExposed ? ', after gc()' : '; run with --expose-gc for a clean baseline'}):`,
  );
  for (const c of cases) {
    const { bytesPerOp, gcs, iterations } = await measureAllocations(c);
    console.log(
      `${c.name.padEnd(48)} ${bytesPerOp.toFixed(3).padStart(8)} bytes/request  ${gcs} GC events in ${iterations} requests`,
    );
  }
  if (sink === -1) console.log(sink);
}

await main();
