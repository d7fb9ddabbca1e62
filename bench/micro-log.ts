// Micro-benchmark of dirty-page logging (live migration) on the data-plane hot path: a virtio-blk
// read completed the way the worker completes it — pop, mark the device-written segments
// (markWritten, only while logging), pushUsed, flushUsed (which marks the used ring while
// logging) — with logging off and on, per request and in batches of 32.
//
//   node --expose-gc <compiled>/bench/micro-log.js
//
// Same method as micro-chain.ts: ns/request from benchmark.js, then heap growth and GC events
// over ~1M requests (zero GCs: nothing allocated per request in either mode).
import Benchmark from 'benchmark';
import { DirtyLog, markWritten, requiredLogBytes } from '../dist/dataplane/dirty-log.js';
import { GuestMemory } from '../dist/dataplane/memory.js';
import { VirtqRequest } from '../dist/dataplane/request.js';
import { SplitVirtqueue } from '../dist/dataplane/virtqueue.js';
import { VringDriver, splitRingLayout } from '../dist/frontend/vring-driver.js';
import { measureAllocations } from './allocations.js';

const MiB = 1 << 20;
const SIZE = 256;
const NEXT = 1;
const WRITE = 2;
const DATA = 0x40000;
const BATCH = 32;

function setup(logging: boolean) {
  const buffer = new SharedArrayBuffer(MiB);
  const memory = new GuestMemory([{ guestPhysAddr: 0, size: MiB, userspaceAddr: 0x7f00_0000_0000, buffer, bufferOffset: 0 }]);
  const layout = splitRingLayout(SIZE);
  const rings = { descAddr: 0, availAddr: layout.availOffset, usedAddr: layout.usedOffset };
  const driver = new VringDriver({ memory, size: SIZE, ...rings, eventIdx: true });
  const queue = new SplitVirtqueue({ memory, size: SIZE, ...rings, eventIdx: true });
  // BATCH static read chains: 16-byte header, 4 KiB data, 1-byte status, each in its own pages.
  for (let b = 0; b < BATCH; b++) {
    const data = DATA + b * 0x3000;
    driver.writeDescriptor(3 * b, DATA - 0x1000 + 16 * b, 16, NEXT, 3 * b + 1);
    driver.writeDescriptor(3 * b + 1, data, 4096, WRITE | NEXT, 3 * b + 2);
    driver.writeDescriptor(3 * b + 2, data + 0x1000, 1, WRITE, 0);
  }
  queue.disableNotification();
  const log = logging
    ? new DirtyLog({ buffer: new SharedArrayBuffer(requiredLogBytes(MiB)), offset: 0, size: requiredLogBytes(MiB) })
    : null;
  queue.setUsedLog(log);
  const requests = Array.from({ length: BATCH }, () => new VirtqRequest(8));
  return { driver, queue, log, requests };
}

type Rig = ReturnType<typeof setup>;
let sink = 0;

/** What QueueRunner.complete does: mark (while logging), then pushUsed. */
function complete(rig: Rig, request: VirtqRequest): void {
  if (rig.log !== null) markWritten(rig.log, request, request.writableBytes);
  rig.queue.pushUsed(request.head, request.writableBytes);
}

function one(rig: Rig): () => void {
  return () => {
    rig.driver.postRawHead(0);
    const request = rig.requests[0];
    if (!rig.queue.pop(request)) throw new Error(rig.queue.describeBroken());
    complete(rig, request);
    rig.queue.flushUsed();
    sink += rig.queue.needsCall() ? 1 : 0;
  };
}

function batch(rig: Rig): () => void {
  return () => {
    for (let b = 0; b < BATCH; b++) rig.driver.offerRawHead(3 * b);
    rig.driver.publish();
    for (let b = 0; b < BATCH; b++) if (!rig.queue.pop(rig.requests[b])) throw new Error(rig.queue.describeBroken());
    for (let b = 0; b < BATCH; b++) complete(rig, rig.requests[b]);
    rig.queue.flushUsed();
    sink += rig.queue.needsCall() ? 1 : 0;
  };
}

interface Case {
  name: string;
  fn: () => void;
  perCall: number;
}
const cases: Case[] = [
  { name: 'blk read completion, logging off', fn: one(setup(false)), perCall: 1 },
  { name: 'blk read completion, logging on', fn: one(setup(true)), perCall: 1 },
  { name: 'blk read completions ×32, logging off', fn: batch(setup(false)), perCall: BATCH },
  { name: 'blk read completions ×32, logging on', fn: batch(setup(true)), perCall: BATCH },
];

async function main(): Promise<void> {
  const suite = new Benchmark.Suite('micro-log');
  for (const c of cases) suite.add(c.name, c.fn);
  suite.on('cycle', (event: Benchmark.Event) => {
    const bench = event.target as unknown as Benchmark;
    const c = cases.find((x) => x.name === bench.name)!;
    const nsPerOp = (bench.stats.mean * 1e9) / c.perCall;
    console.log(
      `${c.name.padEnd(48)} ${nsPerOp.toFixed(1).padStart(8)} ns/request  ±${bench.stats.rme.toFixed(1)}%  (${bench.stats.sample.length} samples)`,
    );
  });
  suite.run({ async: false });
  console.log('\nallocations (heapUsed delta over ~1M requests):');
  for (const c of cases) {
    const { bytesPerOp, gcs, iterations } = await measureAllocations(c);
    console.log(
      `${c.name.padEnd(48)} ${bytesPerOp.toFixed(3).padStart(8)} bytes/request  ${gcs} GC events in ${iterations} requests`,
    );
  }
  if (sink === -1) console.log(sink);
}

await main();
