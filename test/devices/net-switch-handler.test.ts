// The switch handler in-process (no workers, no virtqueues): two ports' handlers on one thread,
// frames from port A's TX requests through the frame ring into port B's held RX requests, RX
// buffers handed back and offered again as a guest would. Checks the hot path at volume (every
// frame delivered byte-exact to the learned port, the ring and the held chains wrapping many
// times) and that it allocates nothing: no garbage collection may start while 200k frames go
// through. Prints the cost per frame of both sides together (one thread does both here).
import { PerformanceObserver, performance } from 'node:perf_hooks';
import { describe, expect, it } from 'vitest';
import { GuestMemory } from '../../dist/dataplane/memory.js';
import type { VirtqRequest } from '../../dist/dataplane/request.js';
import type { QueueHandler, WorkerQueue } from '../../dist/dataplane/device-api.js';
import { NetDevice } from '../../dist/devices/net/device.js';
import { NET_STAT_SLOTS, NegotiatedSlot, NetStat } from '../../dist/devices/net/options.js';
import { SwitchFabric } from '../../dist/devices/net/switch-fabric.js';
import { createQueueHandler } from '../../dist/devices/net/switch.js';
import { oneSegmentRequest } from './net-rig.js';

const MiB = 1 << 20;
const RX_BUFFERS = 256;
const RX_BYTES = 2048;
const TX_BATCH = 32;
const FRAME = 64;
const HEADER = 12;
const MAC_A = [0x02, 0, 0, 0, 0, 0x0a];
const MAC_B = [0x02, 0, 0, 0, 0, 0x0b];

describe('switch handler hot path', () => {
  it('switches 200k frames from port A to the learned port B byte-exact without a garbage collection', async () => {
    const buffer = new SharedArrayBuffer(16 * MiB);
    const bytes = new Uint8Array(buffer);
    const memory = new GuestMemory([
      { guestPhysAddr: 0, size: 16 * MiB, userspaceAddr: 0x7f00_0000_0000, buffer, bufferOffset: 0 },
    ]);
    const fabric = new SwitchFabric(2, 1, 1);
    const devices = [0, 1].map(
      (p) => new NetDevice({ queuePairs: 1, maxQueueSize: 256, mac: Uint8Array.of(0x52, 0x54, 0, 0, 0, p), mtu: 1500 }),
    );
    for (const device of devices) {
      const negotiated = new Int32Array(device.negotiated);
      negotiated[NegotiatedSlot.headerBytes] = HEADER;
      negotiated[NegotiatedSlot.mergeableRxBuffers] = 1;
    }
    const context = { worker: 0, queueCount: 2, log: () => {}, watchFd: () => {}, unwatchFd: () => {} };
    const a: QueueHandler = await createQueueHandler(fabric.handlerSpec(0, devices[0]).options, context);
    const b: QueueHandler = await createQueueHandler(fabric.handlerSpec(1, devices[1]).options, context);
    try {
      // TX frames of A at i·128: header, then B's MAC, A's MAC, a pattern tagged with i. B's one
      // frame (for A) teaches the switch where B is; it is dropped, A holds no RX buffer.
      const tx = Array.from({ length: TX_BATCH }, (_, i) => {
        const at = i * 128;
        bytes.fill(0, at, at + HEADER);
        bytes.set(MAC_B, at + HEADER);
        bytes.set(MAC_A, at + HEADER + 6);
        for (let k = 12; k < FRAME; k++) bytes[at + HEADER + k] = (i * 7 + k) & 0xff;
        return oneSegmentRequest(memory, at, HEADER + FRAME, false, i);
      });
      const fromB = 64 * 128;
      bytes.set(MAC_A, fromB + HEADER);
      bytes.set(MAC_B, fromB + HEADER + 6);
      const txQueue: WorkerQueue = { index: 1, memory, stopping: false, complete() {} };
      b.handle(txQueue, oneSegmentRequest(memory, fromB, HEADER + FRAME, false, 99));

      const rx = Array.from({ length: RX_BUFFERS }, (_, i) => oneSegmentRequest(memory, MiB + i * RX_BYTES, RX_BYTES, true, i));
      const returned: (VirtqRequest | null)[] = new Array<VirtqRequest | null>(RX_BUFFERS).fill(null);
      let returnedHead = 0;
      let returnedCount = 0;
      let mismatches = 0;
      let delivered = 0;
      let expectedTag = 0;
      const rxQueue: WorkerQueue = {
        index: 0,
        memory,
        stopping: false,
        complete(r: VirtqRequest, len: number) {
          if (len !== HEADER + FRAME) mismatches++;
          const at = r.segWindowOffset[0] + HEADER;
          if (bytes[at + 5] !== 0x0b || bytes[at + 20] !== ((expectedTag * 7 + 20) & 0xff)) mismatches++;
          if (bytes[at + FRAME - 1] !== ((expectedTag * 7 + FRAME - 1) & 0xff)) mismatches++;
          expectedTag = (expectedTag + 1) % TX_BATCH;
          delivered++;
          returned[(returnedHead + returnedCount) % RX_BUFFERS] = r;
          returnedCount++;
        },
      };
      for (const r of rx) b.handle(rxQueue, r);
      b.poll(); // B's RX queue runs: A may send to it

      const pass = (iterations: number) => {
        for (let n = 0; n < iterations; n++) {
          for (let i = 0; i < TX_BATCH; i++) a.handle(txQueue, tx[i]);
          a.flush();
          a.poll();
          b.poll();
          while (returnedCount > 0) {
            const r = returned[returnedHead]!;
            returned[returnedHead] = null;
            returnedHead = (returnedHead + 1) % RX_BUFFERS;
            returnedCount--;
            b.handle(rxQueue, r);
          }
          b.flush();
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
      const statsA = new Float64Array(devices[0].stats);
      const statsB = new Float64Array(devices[1].stats);
      expect(statsA[NET_STAT_SLOTS + NetStat.drops]).toBe(0);
      expect(statsB[NetStat.drops]).toBe(0);
      expect(statsB[NetStat.packets]).toBe(statsA[NET_STAT_SLOTS + NetStat.packets]);
      expect(gcStarts.filter((t) => t >= start && t <= end)).toEqual([]);
      const nsPerFrame = ((end - start) * 1e6) / (iterations * TX_BATCH);
      process.stdout.write(`switch handler: ${nsPerFrame.toFixed(0)} ns per ${FRAME}-byte frame, TX side and RX side together\n`);
    } finally {
      a.close();
      b.close();
      fabric.close();
    }
  });

  it('copies byte-exact whatever the alignment of the TX and RX buffers (word copies and their edges)', async () => {
    const buffer = new SharedArrayBuffer(4 * MiB);
    const bytes = new Uint8Array(buffer);
    const memory = new GuestMemory([
      { guestPhysAddr: 0, size: 4 * MiB, userspaceAddr: 0x7f00_0000_0000, buffer, bufferOffset: 0 },
    ]);
    const fabric = new SwitchFabric(2, 1, 1);
    const devices = [0, 1].map(
      (p) => new NetDevice({ queuePairs: 1, maxQueueSize: 256, mac: Uint8Array.of(0x52, 0x54, 0, 0, 0, p), mtu: 1500 }),
    );
    for (const device of devices) new Int32Array(device.negotiated)[NegotiatedSlot.headerBytes] = HEADER;
    const context = { worker: 0, queueCount: 2, log: () => {}, watchFd: () => {}, unwatchFd: () => {} };
    const a: QueueHandler = await createQueueHandler(fabric.handlerSpec(0, devices[0]).options, context);
    const b: QueueHandler = await createQueueHandler(fabric.handlerSpec(1, devices[1]).options, context);
    try {
      const txQueue: WorkerQueue = { index: 1, memory, stopping: false, complete() {} };
      let received: { at: number; len: number } | null = null;
      const rxQueue: WorkerQueue = {
        index: 0,
        memory,
        stopping: false,
        complete(r: VirtqRequest, len: number) {
          received = { at: r.segWindowOffset[0], len };
        },
      };
      let checked = 0;
      for (const length of [15, 17, 64, 1514]) {
        for (let txSkew = 0; txSkew < 4; txSkew++) {
          for (let rxSkew = 0; rxSkew < 4; rxSkew++) {
            const txAt = 8192 + txSkew;
            const rxAt = MiB + rxSkew;
            bytes.fill(0, txAt, txAt + HEADER);
            bytes.set(MAC_B, txAt + HEADER);
            bytes.set(MAC_A, txAt + HEADER + 6);
            for (let k = 12; k < length; k++) bytes[txAt + HEADER + k] = (k * 11 + txSkew * 3 + rxSkew) & 0xff;
            bytes.fill(0xee, rxAt, rxAt + 2048);
            b.handle(rxQueue, oneSegmentRequest(memory, rxAt, 2048, true, 1));
            b.poll();
            received = null;
            a.handle(txQueue, oneSegmentRequest(memory, txAt, HEADER + length, false, 2));
            a.flush();
            a.poll();
            b.poll();
            expect(received, `${length} bytes, TX skew ${txSkew}, RX skew ${rxSkew}`).toEqual({ at: rxAt, len: HEADER + length });
            const sent = bytes.subarray(txAt + HEADER, txAt + HEADER + length);
            const got = bytes.subarray(rxAt + HEADER, rxAt + HEADER + length);
            expect(Buffer.from(got).equals(Buffer.from(sent)), `${length} bytes, TX skew ${txSkew}, RX skew ${rxSkew}`).toBe(
              true,
            );
            expect(bytes[rxAt + HEADER + length]).toBe(0xee); // nothing written past the frame
            checked++;
          }
        }
      }
      expect(checked).toBe(64);
    } finally {
      a.close();
      b.close();
      fabric.close();
    }
  });
});
