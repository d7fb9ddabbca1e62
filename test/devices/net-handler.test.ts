// The net handler in-process (no workers, no rings): frames looped back between preallocated
// TX and RX requests, RX buffers handed back and offered again as a guest would. Checks the hot
// path at volume (every frame delivered byte-exact, the held-chain ring wrapping many times) and
// that it allocates nothing: no garbage collection may start while 200k frames go through.
// Also: a looped-back frame pops RX buffers the pass has not popped yet (popNow), and the source
// back-end's batch copy fills frames byte-exact without allocating.
import { describe, expect, it } from 'vitest';
import { PerformanceObserver, performance } from 'node:perf_hooks';
import { GuestMemory } from '../../dist/dataplane/memory.js';
import { VirtqRequest } from '../../dist/dataplane/request.js';
import type { WorkerQueue } from '../../dist/dataplane/device-api.js';
import { createQueueHandler } from '../../dist/devices/net/handler.js';
import { oneSegmentRequest } from './net-rig.js';
import { SOURCE_SEQUENCE_OFFSET, buildSourceFrame } from '../../dist/devices/net/frame.js';
import {
  NET_STAT_SLOTS,
  NegotiatedSlot,
  NetStat,
  createNetStatsBuffer,
  type NetHandlerOptions,
} from '../../dist/devices/net/options.js';

const MiB = 1 << 20;
const RX_BUFFERS = 256;
const RX_BYTES = 2048;
const TX_BATCH = 32;
const FRAME = 64;
const HEADER = 12;

describe('net handler hot path', () => {
  it('loops 200k frames back byte-exact without a garbage collection', async () => {
    const buffer = new SharedArrayBuffer(16 * MiB);
    const bytes = new Uint8Array(buffer);
    const memory = new GuestMemory([
      { guestPhysAddr: 0, size: 16 * MiB, userspaceAddr: 0x7f00_0000_0000, buffer, bufferOffset: 0 },
    ]);
    const negotiated = new SharedArrayBuffer(NegotiatedSlot.SLOTS * 4);
    new Int32Array(negotiated)[NegotiatedSlot.headerBytes] = HEADER;
    new Int32Array(negotiated)[NegotiatedSlot.mergeableRxBuffers] = 1;
    const statsBuffer = createNetStatsBuffer(2);
    const options: NetHandlerOptions = {
      backend: 'loopback',
      negotiated,
      stats: statsBuffer,
      queuePairs: 1,
      maxFrameBytes: 1518,
      frameBytes: 64,
      tapFds: [],
      mac: [0x52, 0x54, 0, 0x12, 0x34, 0x56],
    };
    const handler = await createQueueHandler(options, {
      worker: 0,
      queueCount: 2,
      log: () => {},
      watchFd: () => {},
      unwatchFd: () => {},
    });

    // RX buffers at 1 MiB + i·2 KiB + (i mod 4) (word-aligned headers and not), filled with
    // 0xff so that a header field left unwritten shows; TX frames at i·128 (header, then a frame
    // tagged with i).
    bytes.fill(0xff, MiB, MiB + RX_BUFFERS * RX_BYTES);
    const rx = Array.from({ length: RX_BUFFERS }, (_, i) =>
      oneSegmentRequest(memory, MiB + i * RX_BYTES + (i & 3), RX_BYTES - 4, true, i),
    );
    const tx = Array.from({ length: TX_BATCH }, (_, i) => {
      for (let b = 0; b < FRAME; b++) bytes[i * 128 + HEADER + b] = (i * 7 + b) & 0xff;
      return oneSegmentRequest(memory, i * 128, HEADER + FRAME, false, i);
    });
    // Returned RX buffers, offered again (preallocated FIFO: the harness allocates nothing either).
    const returned: (VirtqRequest | null)[] = new Array<VirtqRequest | null>(RX_BUFFERS).fill(null);
    let returnedHead = 0;
    let returnedCount = 0;
    let mismatches = 0;
    let delivered = 0;
    let lastTx = 0;
    const rxQueue: WorkerQueue = {
      index: 0,
      memory,
      stopping: false,
      complete(r: VirtqRequest, len: number) {
        if (len !== HEADER + FRAME) mismatches++;
        const header = r.segWindowOffset[0];
        // flags ... csum_offset 0, num_buffers 1 (little-endian).
        for (let b = 0; b < HEADER; b++) if (bytes[header + b] !== (b === HEADER - 2 ? 1 : 0)) mismatches++;
        const at = header + HEADER;
        if (bytes[at + 5] !== ((lastTx * 7 + 5) & 0xff) || bytes[at + FRAME - 1] !== ((lastTx * 7 + FRAME - 1) & 0xff))
          mismatches++;
        delivered++;
        returned[(returnedHead + returnedCount) % RX_BUFFERS] = r;
        returnedCount++;
      },
    };
    const txQueue: WorkerQueue = { index: 1, memory, stopping: false, complete() {} };
    for (const r of rx) handler.handle(rxQueue, r);

    const pass = (iterations: number) => {
      for (let n = 0; n < iterations; n++) {
        for (let i = 0; i < TX_BATCH; i++) {
          lastTx = i;
          handler.handle(txQueue, tx[i]);
        }
        while (returnedCount > 0) {
          const r = returned[returnedHead]!;
          returned[returnedHead] = null;
          returnedHead = (returnedHead + 1) % RX_BUFFERS;
          returnedCount--;
          handler.handle(rxQueue, r);
        }
        handler.flush();
        handler.poll();
      }
    };
    const iterations = 200_000 / TX_BATCH;
    pass(iterations / 4); // warm up: optimized code, settled shapes

    const gcStarts: number[] = [];
    const observer = new PerformanceObserver((list) => {
      for (const entry of list.getEntries()) gcStarts.push(entry.startTime);
    });
    observer.observe({ entryTypes: ['gc'] });
    await new Promise((resolve) => setTimeout(resolve, 20));
    const before = delivered;
    const start = performance.now();
    pass(iterations);
    const end = performance.now();
    await new Promise((resolve) => setTimeout(resolve, 50)); // let the observer report
    observer.disconnect();

    expect(delivered - before).toBe(iterations * TX_BATCH);
    expect(mismatches).toBe(0);
    const stats = new Float64Array(statsBuffer);
    expect(stats[NetStat.drops]).toBe(0);
    expect(stats[NET_STAT_SLOTS + NetStat.packets]).toBe(stats[NetStat.packets]);
    expect(gcStarts.filter((t) => t >= start && t <= end)).toEqual([]);
  });
});

function handlerOptions(backend: 'loopback' | 'source'): NetHandlerOptions {
  const negotiated = new SharedArrayBuffer(NegotiatedSlot.SLOTS * 4);
  new Int32Array(negotiated)[NegotiatedSlot.headerBytes] = HEADER;
  new Int32Array(negotiated)[NegotiatedSlot.mergeableRxBuffers] = 1;
  return {
    backend,
    negotiated,
    stats: createNetStatsBuffer(2),
    queuePairs: 1,
    maxFrameBytes: 1518,
    frameBytes: 1514,
    tapFds: [],
    mac: [0x52, 0x54, 0, 0x12, 0x34, 0x56],
  };
}

function guestMemory(): { memory: GuestMemory; bytes: Uint8Array } {
  const buffer = new SharedArrayBuffer(16 * MiB);
  const memory = new GuestMemory([
    { guestPhysAddr: 0, size: 16 * MiB, userspaceAddr: 0x7f00_0000_0000, buffer, bufferOffset: 0 },
  ]);
  return { memory, bytes: new Uint8Array(buffer) };
}

describe('net handler: RX buffers popped on demand', () => {
  it('a frame arriving before its pass popped the RX queue pops the new buffers itself instead of being dropped', async () => {
    const { memory, bytes } = guestMemory();
    const options = handlerOptions('loopback');
    const offered: VirtqRequest[] = [0, 1].map((i) => oneSegmentRequest(memory, MiB + i * RX_BYTES, RX_BYTES, true, i));
    const completed: { head: number; len: number }[] = [];
    let popNowCalls = 0;
    // eslint-disable-next-line prefer-const -- the queue and the handler refer to each other
    let handler: Awaited<ReturnType<typeof createQueueHandler>>;
    const rxQueue: WorkerQueue = {
      index: 0,
      memory,
      stopping: false,
      complete: (r, len) => completed.push({ head: r.head, len }),
      popNow(budget: number) {
        popNowCalls++;
        let popped = 0;
        while (popped < budget && offered.length > 0) {
          handler.handle(rxQueue, offered.shift()!);
          popped++;
        }
        return popped;
      },
    };
    const txQueue: WorkerQueue = { index: 1, memory, stopping: false, complete() {} };
    handler = await createQueueHandler(options, {
      worker: 0,
      queueCount: 2,
      log: () => {},
      watchFd: () => {},
      unwatchFd: () => {},
      queue: (index) => (index === 0 ? rxQueue : null),
    });
    for (let b = 0; b < FRAME; b++) bytes[HEADER + b] = (b * 3) & 0xff;
    handler.handle(txQueue, oneSegmentRequest(memory, 0, HEADER + FRAME, false, 0));
    expect(popNowCalls).toBe(1);
    expect(completed).toEqual([{ head: 0, len: HEADER + FRAME }]);
    expect(bytes[MiB + HEADER + 7]).toBe(21);
    // The second buffer is held now: the next frame needs no popNow.
    handler.handle(txQueue, oneSegmentRequest(memory, 0, HEADER + FRAME, false, 1));
    expect(popNowCalls).toBe(1);
    // None left: the next frame tries once more, then is dropped and counted.
    handler.handle(txQueue, oneSegmentRequest(memory, 0, HEADER + FRAME, false, 2));
    expect(popNowCalls).toBe(2);
    handler.flush(); // frames are counted into the shared stats once per pass
    const stats = new Float64Array(options.stats);
    expect(stats[NetStat.packets]).toBe(2);
    expect(stats[NetStat.noBuffer]).toBe(1);
  });
});

describe('net handler: source', () => {
  it('fills 200k RX buffers with the 1514-byte frame in batches, byte-exact and sequenced, without a garbage collection', async () => {
    const { memory, bytes } = guestMemory();
    const options = handlerOptions('source');
    const expected = buildSourceFrame(1514, options.mac);
    const rx = Array.from({ length: RX_BUFFERS }, (_, i) => oneSegmentRequest(memory, MiB + i * RX_BYTES, RX_BYTES, true, i));
    const returned: (VirtqRequest | null)[] = new Array<VirtqRequest | null>(RX_BUFFERS).fill(null);
    let returnedCount = 0;
    let badLength = 0;
    const rxQueue: WorkerQueue = {
      index: 0,
      memory,
      stopping: false,
      complete(r: VirtqRequest, len: number) {
        if (len !== HEADER + 1514) badLength++;
        returned[returnedCount++] = r;
      },
    };
    const handler = await createQueueHandler(options, {
      worker: 0,
      queueCount: 2,
      log: () => {},
      watchFd: () => {},
      unwatchFd: () => {},
    });
    // The worker's pattern: up to 64 chains handed over, then flush() once.
    let next = 0;
    const pass = (iterations: number) => {
      for (let n = 0; n < iterations; n++) {
        for (let i = 0; i < 64; i++) {
          const r = next < RX_BUFFERS ? rx[next++] : returned[--returnedCount]!;
          handler.handle(rxQueue, r);
        }
        handler.flush();
        handler.poll();
      }
    };
    pass(4); // 256 buffers, each filled once: check them all
    expect(badLength).toBe(0);
    const seen = new Set<number>();
    for (let i = 0; i < RX_BUFFERS; i++) {
      const at = MiB + i * RX_BYTES;
      expect(bytes[at + 10] | (bytes[at + 11] << 8), 'num_buffers').toBe(1);
      expect(bytes.subarray(at, at + 10).every((b) => b === 0)).toBe(true);
      const frame = bytes.slice(at + HEADER, at + HEADER + 1514);
      const s = SOURCE_SEQUENCE_OFFSET;
      seen.add(frame[s] | (frame[s + 1] << 8) | (frame[s + 2] << 16) | (frame[s + 3] << 24));
      frame.fill(0, s, s + 4);
      const plain = expected.slice();
      plain.fill(0, s, s + 4);
      expect(Buffer.from(frame).equals(Buffer.from(plain))).toBe(true);
    }
    expect(seen.size).toBe(RX_BUFFERS);

    const iterations = Math.ceil(200_000 / 64);
    const warmUp = Math.ceil(iterations / 4);
    pass(warmUp);
    const gcStarts: number[] = [];
    const observer = new PerformanceObserver((list) => {
      for (const entry of list.getEntries()) gcStarts.push(entry.startTime);
    });
    observer.observe({ entryTypes: ['gc'] });
    await new Promise((resolve) => setTimeout(resolve, 20));
    const start = performance.now();
    pass(iterations);
    const end = performance.now();
    await new Promise((resolve) => setTimeout(resolve, 50));
    observer.disconnect();
    expect(badLength).toBe(0);
    const stats = new Float64Array(options.stats);
    expect(stats[NetStat.packets]).toBe(64 * (4 + warmUp + iterations));
    expect(stats[NetStat.drops]).toBe(0);
    expect(gcStarts.filter((t) => t >= start && t <= end)).toEqual([]);
  });
});
