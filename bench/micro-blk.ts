// Micro-benchmark of the virtio-blk handler hot path, in-process (no workers, no rings): a
// 3-segment request (16-byte header, 4 KiB data, 1-byte status) through handle() + flush() +
// poll() on each engine, READ and WRITE, at batch 1 and batch 32. Prints ns/request and the GC
// events seen over the measured iterations: zero means the path allocates nothing per request.
//
//   npm run bench:build && node --expose-gc dist-bench/micro-blk.js
import { closeSync, ftruncateSync, mkdtempSync, openSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PerformanceObserver } from 'node:perf_hooks';
import { GuestMemory } from '../dist/dataplane/memory.js';
import { VirtqRequest } from '../dist/dataplane/request.js';
import type { WorkerQueue } from '../dist/dataplane/device-api.js';
import { createQueueHandler } from '../dist/devices/blk/handler.js';
import type { BlkHandlerOptions } from '../dist/devices/blk/options.js';

const MiB = 1 << 20;
const CAPACITY = 64 * MiB;
const BATCH_MAX = 32;

let gcEvents = 0;
new PerformanceObserver((list) => {
  gcEvents += list.getEntries().length;
}).observe({ entryTypes: ['gc'] });

const buffer = new SharedArrayBuffer(16 * MiB);
const memory = new GuestMemory([{ guestPhysAddr: 0, size: 16 * MiB, userspaceAddr: 0x7f00_0000_0000, buffer, bufferOffset: 0 }]);
const bytes = new Uint8Array(buffer);
const view = new DataView(buffer);

/** Request i: header at i·64 KiB, data 4 KiB at +4 KiB, status at +12 KiB. */
function makeRequest(i: number, type: number, sector: number): VirtqRequest {
  const base = i * 65536;
  view.setUint32(base, type, true);
  view.setUint32(base + 8, sector, true);
  const request = new VirtqRequest(8);
  request.memory = memory;
  request.head = i;
  const segments = [
    [base, 16],
    [base + 4096, 4096],
    [base + 12288, 1],
  ] as const;
  segments.forEach(([offset, length], s) => {
    request.segWindow[s] = 0;
    request.segWindowOffset[s] = offset;
    request.segLength[s] = length;
  });
  request.segmentCount = 3;
  if (type === 0) {
    request.readableCount = 1;
    request.readableBytes = 16;
    request.writableCount = 2;
    request.writableBytes = 4097;
  } else {
    request.readableCount = 2;
    request.readableBytes = 16 + 4096;
    request.writableCount = 1;
    request.writableBytes = 1;
  }
  return request;
}

let completed = 0;
let badStatus = 0;
const queue: WorkerQueue = {
  index: 0,
  memory,
  stopping: false,
  complete(request: VirtqRequest) {
    completed++;
    if (bytes[request.head * 65536 + 12288] !== 0) badStatus++;
  },
};

async function run(name: string, options: BlkHandlerOptions): Promise<void> {
  const handler = await createQueueHandler(options, {
    worker: 0,
    queueCount: 1,
    log: () => {},
    watchFd: () => {},
    unwatchFd: () => {},
  });
  handler.setMemory(memory);
  for (const [label, type] of [
    ['read', 0],
    ['write', 1],
  ] as const) {
    const requests = Array.from({ length: BATCH_MAX }, (_, i) => makeRequest(i, type, i * 8));
    for (const batch of [1, 32]) {
      const pass = (iterations: number) => {
        for (let n = 0; n < iterations; n++) {
          const target = completed + batch;
          for (let i = 0; i < batch; i++) handler.handle(queue, requests[i]);
          handler.flush();
          while (completed < target) handler.poll();
        }
      };
      const iterations = Math.max(2000, Math.floor(200_000 / batch));
      pass(iterations / 4); // warm up (optimize, grow slot tables)
      (globalThis as { gc?: () => void }).gc?.();
      await new Promise((resolve) => setTimeout(resolve, 10));
      gcEvents = 0;
      const heapBefore = process.memoryUsage().heapUsed;
      const start = process.hrtime.bigint();
      pass(iterations);
      const ns = Number(process.hrtime.bigint() - start) / (iterations * batch);
      const heapAfter = process.memoryUsage().heapUsed;
      await new Promise((resolve) => setTimeout(resolve, 10)); // let the observer report
      console.log(
        `${name.padEnd(9)} ${label.padEnd(5)} batch ${String(batch).padStart(2)}: ${ns.toFixed(0).padStart(6)} ns/request, ` +
          `${gcEvents} GCs, heap ${((heapAfter - heapBefore) / 1024).toFixed(0)} KiB over ${iterations * batch} requests`,
      );
    }
  }
  handler.close();
}

async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'vut-micro-blk-'));
  const image = join(dir, 'disk.img');
  const fd = openSync(image, 'w');
  ftruncateSync(fd, CAPACITY);
  closeSync(fd);
  const base = {
    capacityBytes: CAPACITY,
    readOnly: false,
    logicalBlockSize: 512,
    discard: true,
    maxDiscardSectors: 1 << 21,
    maxWriteZeroesSectors: 1 << 21,
    serial: 'micro',
  };
  try {
    await run('null', { ...base, engine: 'null' });
    await run('memory', { ...base, engine: 'memory', ramDisk: new SharedArrayBuffer(CAPACITY) });
    await run('io_uring', { ...base, engine: 'io_uring', path: image });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  if (badStatus > 0) throw new Error(`${badStatus} requests completed with a non-OK status`);
}

main().catch((error: unknown) => {
  console.error(error);
  process.exit(1);
});
