// Micro-benchmark: split versus packed virtqueues on the same hot path, in the same run. Each
// case is a full round trip through the public APIs of both sides — the driver posts a chain
// (16-byte readable header, 4 KiB writable data, 1-byte writable status: a virtio-blk read) and
// publishes it, the device pops it, pushes the used element, flushes and asks whether to call,
// the driver reaps — so both layouts pay for everything their protocol needs (packed: descriptor
// flags rewritten every lap, one used descriptor per chain; split: avail ring and used ring).
//
//   node --expose-gc <compiled>/bench/micro-packed.js
//
// Prints CPU ns/request per case and layout (best of several interleaved rounds: the machine is
// shared, so wall time is not ours) with the packed/split ratio, then checks allocations as
// micro-chain.ts does (heap delta and GC events over ~1M requests). Two last cases time the device
// side alone and the driver side alone (what the load generator pays) over full rings.
import { GuestMemory } from '../dist/dataplane/memory.js';
import { VirtqRequest } from '../dist/dataplane/request.js';
import { createVirtqueue, type Virtqueue } from '../dist/dataplane/queue.js';
import { createRingDriver, type RingDriver } from '../dist/frontend/ring-driver.js';
import { splitRingLayout } from '../dist/frontend/vring-driver.js';
import { packedRingLayout } from '../dist/frontend/packed-vring-driver.js';
import { measureAllocations } from './allocations.js';

const MiB = 1 << 20;
const SIZE = 256;
const DATA = 0x40000;
const TABLE = 0x30000;
const BATCH = 32;

interface Pair {
  driver: RingDriver;
  queue: Virtqueue;
  reqs: VirtqRequest[];
}

function setup(packed: boolean): Pair {
  const buffer = new SharedArrayBuffer(MiB);
  const memory = new GuestMemory([{ guestPhysAddr: 0, size: MiB, userspaceAddr: 0x7f00_0000_0000, buffer, bufferOffset: 0 }]);
  let rings: { descAddr: number; availAddr: number; usedAddr: number };
  if (packed) {
    const layout = packedRingLayout(SIZE);
    rings = { descAddr: 0, availAddr: layout.driverOffset, usedAddr: layout.deviceOffset };
  } else {
    const layout = splitRingLayout(SIZE);
    rings = { descAddr: 0, availAddr: layout.availOffset, usedAddr: layout.usedOffset };
  }
  const config = { memory, size: SIZE, ...rings, eventIdx: true, packed };
  const driver = createRingDriver({ ...config, indirect: { tableAddr: TABLE, maxEntries: 4 } });
  const queue = createVirtqueue({ ...config, indirectDesc: true });
  // Steady state of a polling worker and a polling driver: no kicks, no calls asked for.
  queue.disableNotification();
  driver.disableCallbacks();
  return { driver, queue, reqs: Array.from({ length: BATCH }, () => new VirtqRequest(8)) };
}

const tokens = new Float64Array(BATCH);
const lens = new Uint32Array(BATCH);
let sink = 0;

function post(driver: RingDriver, indirect: boolean): void {
  driver.beginChain(indirect);
  driver.addSegment(DATA, 16, false);
  driver.addSegment(DATA + 0x1000, 4096, true);
  driver.addSegment(DATA + 0x2000, 1, true);
  if (driver.endChain(1) < 0) throw new Error('no room in the ring');
}

function roundTrip(pair: Pair, indirect: boolean, count: number): void {
  const { driver, queue, reqs } = pair;
  for (let i = 0; i < count; i++) post(driver, indirect);
  driver.publish();
  sink += driver.needsKick() ? 1 : 0;
  for (let i = 0; i < count; i++) if (!queue.pop(reqs[i])) throw new Error(queue.describeBroken());
  for (let i = 0; i < count; i++) queue.pushUsed(reqs[i].head, reqs[i].writableBytes);
  queue.flushUsed();
  sink += queue.needsCall() ? 1 : 0;
  if (driver.reapUsed(tokens, lens) !== count) throw new Error(`reaped fewer than ${count}`);
}

interface Case {
  name: string;
  layout: 'split' | 'packed';
  fn: () => void;
  perCall: number;
}

const cases: Case[] = [];
for (const layout of ['split', 'packed'] as const) {
  const direct = setup(layout === 'packed');
  const indirect = setup(layout === 'packed');
  const batched = setup(layout === 'packed');
  cases.push(
    { name: '3-desc direct chain, one at a time', layout, fn: () => roundTrip(direct, false, 1), perCall: 1 },
    { name: '3-desc indirect chain, one at a time', layout, fn: () => roundTrip(indirect, true, 1), perCall: 1 },
    { name: '3-desc direct chains, batches of 32', layout, fn: () => roundTrip(batched, false, BATCH), perCall: BATCH },
  );
}

/**
 * CPU time this process has run, in ns: the machine is shared, wall time is not ours. Not
 * /proc/thread-self/schedstat: it is only brought up to date at scheduler ticks (4 ms), coarser
 * than the device- and driver-side laps; getrusage (process.cpuUsage) updates the running thread
 * first, to the µs. The process is this one thread plus V8's helpers, idle here (nothing allocates).
 */
function threadCpuNs(): number {
  const usage = process.cpuUsage();
  return (usage.user + usage.system) * 1000;
}

/** Best-of-rounds CPU ns per request for each layout of one case, the two interleaved round by round. */
function measurePair(split: Case, packed: Case): [number, number] {
  const best = [Infinity, Infinity];
  const requests = 400_000;
  for (let round = 0; round < ROUNDS; round++) {
    [split, packed].forEach((c, i) => {
      const calls = Math.ceil(requests / c.perCall);
      const start = threadCpuNs();
      for (let k = 0; k < calls; k++) c.fn();
      best[i] = Math.min(best[i], (threadCpuNs() - start) / (calls * c.perCall));
    });
  }
  return [best[0], best[1]];
}

const ROUNDS = 7;

/**
 * The device side alone (what a back-end pays): the driver fills a 4096-entry ring with 3-desc
 * chains untimed; the timer covers pop, pushUsed, flushUsed and needsCall of all of them (one
 * schedstat read per 1365 requests, a few ns each); the driver then reaps, untimed.
 */
function deviceSide(): [number, number] {
  const size = 4096;
  const chains = Math.floor(size / 3);
  const pairs = [false, true].map((packed) => {
    const buffer = new SharedArrayBuffer(4 * MiB);
    const memory = new GuestMemory([
      { guestPhysAddr: 0, size: 4 * MiB, userspaceAddr: 0x7f00_0000_0000, buffer, bufferOffset: 0 },
    ]);
    const rings = packed
      ? { descAddr: 0, availAddr: packedRingLayout(size).driverOffset, usedAddr: packedRingLayout(size).deviceOffset }
      : { descAddr: 0, availAddr: splitRingLayout(size).availOffset, usedAddr: splitRingLayout(size).usedOffset };
    const config = { memory, size, ...rings, eventIdx: true, packed };
    const driver = createRingDriver(config);
    const queue = createVirtqueue({ ...config, indirectDesc: true });
    queue.disableNotification();
    driver.disableCallbacks();
    return { driver, queue, reqs: Array.from({ length: chains }, () => new VirtqRequest(8)) };
  });
  const reapTokens = new Float64Array(size);
  const reapLens = new Uint32Array(size);
  const best = [Infinity, Infinity];
  for (let round = 0; round < ROUNDS + 2; round++) {
    pairs.forEach(({ driver, queue, reqs }, i) => {
      let cpu = 0;
      let requests = 0;
      while (requests < 400_000) {
        for (let k = 0; k < chains; k++) post(driver, false);
        driver.publish();
        const start = threadCpuNs();
        for (let k = 0; k < chains; k++) if (!queue.pop(reqs[k])) throw new Error(queue.describeBroken());
        for (let k = 0; k < chains; k++) queue.pushUsed(reqs[k].head, reqs[k].writableBytes);
        queue.flushUsed();
        sink += queue.needsCall() ? 1 : 0;
        cpu += threadCpuNs() - start;
        if (driver.reapUsed(reapTokens, reapLens) !== chains) throw new Error('reaped fewer than posted');
        requests += chains;
      }
      if (round >= 2) best[i] = Math.min(best[i], cpu / requests); // rounds 0–1 warm up
    });
  }
  return [best[0], best[1]];
}

/**
 * The driver side alone (what the load generator pays per request): the mirror of deviceSide().
 * The timer covers post + publish + needsKick of a 4096-entry ring's worth of 3-desc chains, then
 * reapUsed of all of them; the device pops and completes them in between, untimed.
 */
function driverSide(): [number, number] {
  const size = 4096;
  const chains = Math.floor(size / 3);
  const pairs = [false, true].map((packed) => {
    const buffer = new SharedArrayBuffer(4 * MiB);
    const memory = new GuestMemory([
      { guestPhysAddr: 0, size: 4 * MiB, userspaceAddr: 0x7f00_0000_0000, buffer, bufferOffset: 0 },
    ]);
    const rings = packed
      ? { descAddr: 0, availAddr: packedRingLayout(size).driverOffset, usedAddr: packedRingLayout(size).deviceOffset }
      : { descAddr: 0, availAddr: splitRingLayout(size).availOffset, usedAddr: splitRingLayout(size).usedOffset };
    const config = { memory, size, ...rings, eventIdx: true, packed };
    const driver = createRingDriver(config);
    const queue = createVirtqueue({ ...config, indirectDesc: true });
    queue.disableNotification();
    driver.disableCallbacks();
    return { driver, queue, reqs: Array.from({ length: chains }, () => new VirtqRequest(8)) };
  });
  const reapTokens = new Float64Array(size);
  const reapLens = new Uint32Array(size);
  const best = [Infinity, Infinity];
  for (let round = 0; round < ROUNDS + 2; round++) {
    pairs.forEach(({ driver, queue, reqs }, i) => {
      let cpu = 0;
      let requests = 0;
      while (requests < 400_000) {
        let start = threadCpuNs();
        for (let k = 0; k < chains; k++) post(driver, false);
        driver.publish();
        sink += driver.needsKick() ? 1 : 0;
        cpu += threadCpuNs() - start;
        for (let k = 0; k < chains; k++) if (!queue.pop(reqs[k])) throw new Error(queue.describeBroken());
        for (let k = 0; k < chains; k++) queue.pushUsed(reqs[k].head, reqs[k].writableBytes);
        queue.flushUsed();
        sink += queue.needsCall() ? 1 : 0;
        start = threadCpuNs();
        if (driver.reapUsed(reapTokens, reapLens) !== chains) throw new Error('reaped fewer than posted');
        cpu += threadCpuNs() - start;
        requests += chains;
      }
      if (round >= 2) best[i] = Math.min(best[i], cpu / requests); // rounds 0–1 warm up
    });
  }
  return [best[0], best[1]];
}

async function main(): Promise<void> {
  for (const c of cases) for (let i = 0; i < 50_000; i++) c.fn(); // warm up (JIT, inline caches)
  console.log(`round trip (driver post + device pop/push/flush + driver reap), CPU ns/request, best of ${ROUNDS}:`);
  console.log(`${'case'.padEnd(40)} ${'split'.padStart(8)} ${'packed'.padStart(8)}  packed/split`);
  for (const split of cases) {
    if (split.layout !== 'split') continue;
    const packed = cases.find((c) => c.layout === 'packed' && c.name === split.name)!;
    const [splitNs, packedNs] = measurePair(split, packed);
    console.log(
      `${split.name.padEnd(40)} ${splitNs.toFixed(1).padStart(8)} ${packedNs.toFixed(1).padStart(8)}  ${(packedNs / splitNs).toFixed(2)}`,
    );
  }
  const [splitDevice, packedDevice] = deviceSide();
  console.log(`\ndevice side only (pop + pushUsed + flush + needsCall), CPU ns/request, best of ${ROUNDS}:`);
  console.log(
    `${'3-desc direct chains, full 4096 ring'.padEnd(40)} ${splitDevice.toFixed(1).padStart(8)} ${packedDevice.toFixed(1).padStart(8)}  ${(packedDevice / splitDevice).toFixed(2)}`,
  );

  const [splitDriver, packedDriver] = driverSide();
  console.log(`\ndriver side only (post + publish + needsKick, reapUsed), CPU ns/request, best of ${ROUNDS}:`);
  console.log(
    `${'3-desc direct chains, full 4096 ring'.padEnd(40)} ${splitDriver.toFixed(1).padStart(8)} ${packedDriver.toFixed(1).padStart(8)}  ${(packedDriver / splitDriver).toFixed(2)}`,
  );

  const gcExposed = typeof (globalThis as { gc?: unknown }).gc === 'function';
  console.log(`\nallocations (heapUsed delta over ~1M requests${gcExposed ? ', after gc()' : '; run with --expose-gc'}):`);
  for (const c of cases) {
    const { bytesPerOp, gcs, iterations } = await measureAllocations(c);
    console.log(
      `${`${c.layout}: ${c.name}`.padEnd(52)} ${bytesPerOp.toFixed(3).padStart(8)} bytes/request  ${gcs} GC events in ${iterations} requests`,
    );
  }
  if (sink === -1) console.log(sink);
}

await main();
