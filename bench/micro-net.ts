// Micro-benchmark of the net handler's per-frame cost with real split rings (SplitVirtqueue on
// the device side, VringDriver offering raw heads on the guest side), one queue pair:
//   ring only      pop + pushUsed + flushUsed of single-descriptor RX chains (no handler)
//   source         RX chains popped, held, filled by the source batch copy, completed
//   loopback       32 RX chains and 32 TX frames per pass, each frame copied into an RX chain
//   worker         loopback again, through the whole worker pass (DataPlaneWorker.step: QueueRunner
//                  pop/complete with VIRTIO_F_IN_ORDER as DPDK negotiates it, used.idx publishes,
//                  stats), the back-end's cost in the bench:net loopback set-up without the
//                  cross-core cache traffic
// The driver re-offers the same heads each round and never reaps (the used ring just wraps), so
// what is timed is the device side plus one avail store per chain.
//
//   node --expose-gc <compiled>/bench/micro-net.js [ring|source|loopback|worker ...]   (default: all four)
//
// Imports the built library from ../dist (run `npm run build` first).
import { GuestMemory } from '../dist/dataplane/memory.js';
import { readQueueStats } from '../dist/dataplane/stats.js';
import { VirtqRequest } from '../dist/dataplane/request.js';
import { SplitVirtqueue } from '../dist/dataplane/virtqueue.js';
import { VringDriver, splitRingLayout } from '../dist/frontend/vring-driver.js';
import type { QueueHandler, WorkerQueue } from '../dist/dataplane/device-api.js';
import { createQueueHandler } from '../dist/devices/net/handler.js';
import {
  NET_STAT_SLOTS,
  NegotiatedSlot,
  NetStat,
  createNetStatsBuffer,
  type NetHandlerOptions,
} from '../dist/devices/net/options.js';
import { inProcessWorker, splitQueueStart } from './worker-rig.js';

const MiB = 1 << 20;
const SIZE = 256;
const WRITE = 2;
const HEADER = 12;
const FRAME = 64;
const RX_BYTES = 2048;
const RX_DATA = 2 * MiB;
const TX_DATA = MiB;
const PASS = 64;
const LOOP_BATCH = 32;
const SAMPLES = 10;

const buffer = new SharedArrayBuffer(8 * MiB);
const memory = new GuestMemory([{ guestPhysAddr: 0, size: 8 * MiB, userspaceAddr: 0x7f00_0000_0000, buffer, bufferOffset: 0 }]);

/** A worker queue as QueueRunner is on the hot path: a request pool, pop, complete = pushUsed. */
class BenchQueue implements WorkerQueue {
  readonly stopping = false;
  readonly memory = memory;
  readonly vq: SplitVirtqueue;
  readonly driver: VringDriver;
  private readonly pool: VirtqRequest[] = [];
  private free = SIZE;
  handler: QueueHandler | null = null;
  constructor(
    readonly index: number,
    base: number,
  ) {
    const layout = splitRingLayout(SIZE);
    const rings = { descAddr: base, availAddr: base + layout.availOffset, usedAddr: base + layout.usedOffset };
    this.driver = new VringDriver({ memory, size: SIZE, ...rings, eventIdx: true });
    this.vq = new SplitVirtqueue({ memory, size: SIZE, ...rings, eventIdx: true, indirectDesc: true });
    this.vq.disableNotification();
    for (let i = 0; i < SIZE; i++) this.pool.push(new VirtqRequest(64));
  }
  process(handler: QueueHandler, budget: number): number {
    let popped = 0;
    while (popped < budget && this.free > 0) {
      const request = this.pool[this.free - 1];
      if (!this.vq.pop(request)) break;
      this.free--;
      popped++;
      handler.handle(this, request);
    }
    return popped;
  }
  complete(request: VirtqRequest, writtenLen: number): void {
    this.vq.pushUsed(request.head, writtenLen);
    this.pool[this.free++] = request;
  }
}

function negotiated(): SharedArrayBuffer {
  const shared = new SharedArrayBuffer(NegotiatedSlot.SLOTS * 4);
  new Int32Array(shared)[NegotiatedSlot.headerBytes] = HEADER;
  new Int32Array(shared)[NegotiatedSlot.mergeableRxBuffers] = 1;
  return shared;
}

/** One queue pair's net handler options: 12-byte headers, mergeable RX buffers, 64-byte source frames. */
function netOptions(backend: 'source' | 'loopback'): NetHandlerOptions {
  return {
    backend,
    negotiated: negotiated(),
    stats: createNetStatsBuffer(2),
    queuePairs: 1,
    maxFrameBytes: 1518,
    frameBytes: FRAME,
    tapFds: [],
    mac: [0x52, 0x54, 0, 0x12, 0x34, 0x56],
  };
}

async function handlerFor(backend: 'source' | 'loopback', rx: BenchQueue, tx: BenchQueue): Promise<QueueHandler> {
  const options = netOptions(backend);
  return createQueueHandler(options, {
    worker: 0,
    queueCount: 2,
    log: () => {},
    watchFd: () => {},
    unwatchFd: () => {},
    queue: (index) => (index === 0 ? rx : index === 1 ? tx : null),
  });
}

function pair(offset: number) {
  const rx = new BenchQueue(0, offset);
  const tx = new BenchQueue(1, offset + 0x10000);
  for (let i = 0; i < SIZE; i++) {
    rx.driver.writeDescriptor(i, RX_DATA + i * RX_BYTES, RX_BYTES, WRITE, 0);
    tx.driver.writeDescriptor(i, TX_DATA + i * 128, HEADER + FRAME, 0, 0);
  }
  return { rx, tx };
}

const ringOnly = pair(0);
const source = pair(0x40000);
const loop = pair(0x80000);
let head = 0;

const completeAtOnce: QueueHandler = {
  completionFd: -1,
  inFlight: 0,
  handle: (queue, request) => queue.complete(request, HEADER + FRAME),
  flush: () => {},
  poll: () => 0,
  setMemory: () => {},
  close: () => {},
};

function offer(queue: BenchQueue, count: number): void {
  for (let i = 0; i < count; i++) queue.driver.offerRawHead((head + i) & (SIZE - 1));
  queue.driver.publish();
}

function ringRound(): number {
  const { rx } = ringOnly;
  offer(rx, PASS);
  const n = rx.process(completeAtOnce, PASS);
  rx.vq.flushUsed();
  head = (head + PASS) & (SIZE - 1);
  return n;
}

function sourceRound(handler: QueueHandler): number {
  const { rx } = source;
  offer(rx, PASS);
  const n = rx.process(handler, PASS);
  handler.flush();
  rx.vq.flushUsed();
  head = (head + PASS) & (SIZE - 1);
  return n;
}

function loopRound(handler: QueueHandler): number {
  const { rx, tx } = loop;
  offer(rx, LOOP_BATCH);
  offer(tx, LOOP_BATCH);
  rx.process(handler, PASS);
  const n = tx.process(handler, PASS);
  handler.flush();
  rx.vq.flushUsed();
  tx.vq.flushUsed();
  head = (head + LOOP_BATCH) & (SIZE - 1);
  return n;
}

/**
 * The loopback pair run by a DataPlaneWorker (busy mode, IN_ORDER and EVENT_IDX on both queues,
 * as DPDK's virtio-user negotiates them), stepped in this thread: each round offers 32 RX and
 * 32 TX chains and runs one pass.
 */
async function workerLoop() {
  const USER_BASE = 0x7f00_0000_0000;
  const workerBuffer = new SharedArrayBuffer(8 * MiB);
  const region = { guestPhysAddr: 0, size: 8 * MiB, userspaceAddr: USER_BASE, buffer: workerBuffer, bufferOffset: 0 };
  const workerMemory = new GuestMemory([region]);
  const handlerOptions = netOptions('loopback');
  const { worker, init, command } = await inProcessWorker({
    handlerOptions,
    createHandler: createQueueHandler,
    queueCount: 2,
    maxSegments: 64,
  });
  const layout = splitRingLayout(SIZE);
  command({ op: 'memory', regions: [region] });
  const drivers: VringDriver[] = [];
  for (const index of [0, 1]) {
    const base = index * 0x10000;
    const rings = { descAddr: base, availAddr: base + layout.availOffset, usedAddr: base + layout.usedOffset };
    drivers.push(new VringDriver({ memory: workerMemory, size: SIZE, ...rings, eventIdx: true }));
    command({ op: 'start', queue: splitQueueStart(index, SIZE, USER_BASE, rings, { indirectDesc: false, inOrder: true }) });
  }
  const [rxDriver, txDriver] = drivers;
  for (let i = 0; i < SIZE; i++) {
    rxDriver.writeDescriptor(i, RX_DATA + i * RX_BYTES, RX_BYTES, WRITE, 0);
    txDriver.writeDescriptor(i, TX_DATA + i * 128, HEADER + FRAME, 0, 0);
  }
  const bytes = new Uint8Array(workerBuffer);
  for (let i = 0; i < SIZE; i++) bytes.fill(0xab, TX_DATA + i * 128 + HEADER, TX_DATA + i * 128 + HEADER + FRAME);
  let workerHead = 0;
  const netStats = new Float64Array(handlerOptions.stats);
  const check = (): void => {
    // Every frame looped back (RX packets = TX packets), none dropped, no queue broken.
    const rx = netStats[NetStat.packets];
    const tx = netStats[NET_STAT_SLOTS + NetStat.packets];
    const drops = netStats[NetStat.drops] + netStats[NET_STAT_SLOTS + NetStat.drops];
    const queues = [0, 1].map((q) => readQueueStats(init.stats, q));
    if (rx === 0 || rx !== tx || drops !== 0 || queues.some((q) => q.broken !== 0)) {
      throw new Error(`worker loopback went wrong: rx ${rx}, tx ${tx}, drops ${drops}`);
    }
    for (let i = 0; i < SIZE; i++) {
      const at = RX_DATA + i * RX_BYTES;
      if (bytes[at + 10] !== 1 || bytes[at + HEADER] !== 0xab || bytes[at + HEADER + FRAME - 1] !== 0xab) {
        throw new Error(`RX buffer ${i} does not hold a looped-back frame`);
      }
    }
    const usedIdx = (base: number) => new DataView(workerBuffer).getUint16(base + layout.usedOffset + 2, true);
    if (usedIdx(0) !== usedIdx(0x10000)) throw new Error(`RX used.idx ${usedIdx(0)}, TX ${usedIdx(0x10000)}`);
  };
  const round = (): number => {
    for (let i = 0; i < LOOP_BATCH; i++) rxDriver.offerRawHead((workerHead + i) & (SIZE - 1));
    rxDriver.publish();
    for (let i = 0; i < LOOP_BATCH; i++) txDriver.offerRawHead((workerHead + i) & (SIZE - 1));
    txDriver.publish();
    worker.step();
    workerHead = (workerHead + LOOP_BATCH) & (SIZE - 1);
    return LOOP_BATCH;
  };
  return { round, check };
}

/**
 * The best of SAMPLES timings of `frames` frames each, in CPU time (the machine is shared: time
 * spent descheduled is not the handler's).
 */
function time(name: string, round: () => number, frames: number): void {
  let done = 0;
  while (done < frames) done += round(); // warm up
  const gcBefore = gcCount;
  let best = Infinity;
  let total = 0;
  for (let sample = 0; sample < SAMPLES; sample++) {
    const start = process.cpuUsage();
    done = 0;
    while (done < frames) done += round();
    const used = process.cpuUsage(start);
    best = Math.min(best, ((used.user + used.system) * 1e3) / done);
    total += done;
  }
  console.log(
    `${name.padEnd(40)} ${best.toFixed(1).padStart(7)} ns/frame  (best of ${SAMPLES}; ${gcCount - gcBefore} GCs over ${total} frames)`,
  );
}

let gcCount = 0;
const { PerformanceObserver } = await import('node:perf_hooks');
new PerformanceObserver((list) => (gcCount += list.getEntries().length)).observe({ entryTypes: ['gc'] });

async function main(): Promise<void> {
  const sourceHandler = await handlerFor('source', source.rx, source.tx);
  const loopHandler = await handlerFor('loopback', loop.rx, loop.tx);
  const frames = Number(process.env.FRAMES ?? 500_000);
  const only = process.argv.slice(2);
  const wanted = (name: string) => only.length === 0 || only.includes(name);
  if (wanted('ring')) time('ring only: pop + pushUsed (RX, 1 desc)', ringRound, frames);
  if (wanted('source')) time('source: 64-byte frames', () => sourceRound(sourceHandler), frames);
  if (wanted('loopback')) time('loopback: 64-byte frames (32 per pass)', () => loopRound(loopHandler), frames);
  if (wanted('worker')) {
    const { round, check } = await workerLoop();
    time('loopback, worker pass, IN_ORDER (32)', round, frames);
    check();
  }
}

await main();
