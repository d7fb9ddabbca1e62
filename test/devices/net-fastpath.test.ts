// The net handler's 64-byte fast paths on real split rings (SplitVirtqueue on the device side,
// VringDriver offering chains by hand on the guest side): source frames written inline as words,
// loopback frames copied word by word. Every odd chain shape must leave the fast path for the
// general one and give the same bytes: chained descriptors (the header split too), indirect
// tables, misaligned buffers, buffers too short for a frame (with and without MRG_RXBUF),
// buffers in another memory region; addresses outside memory still break the queue before the
// handler sees anything. Frames are checked byte for byte against what they must be, and
// nothing may be written past used.len.
import { describe, expect, it } from 'vitest';
import { GuestMemory } from '../../dist/dataplane/memory.js';
import { VirtqRequest } from '../../dist/dataplane/request.js';
import { BrokenReason, SplitVirtqueue } from '../../dist/dataplane/virtqueue.js';
import { VringDriver, splitRingLayout } from '../../dist/frontend/vring-driver.js';
import type { QueueHandler, WorkerQueue } from '../../dist/dataplane/device-api.js';
import { createQueueHandler } from '../../dist/devices/net/handler.js';
import { SOURCE_SEQUENCE_OFFSET, buildSourceFrame } from '../../dist/devices/net/frame.js';
import { NET_STAT_SLOTS, NegotiatedSlot, NetStat, createNetStatsBuffer } from '../../dist/devices/net/options.js';

const MiB = 1 << 20;
const SIZE = 64;
const INDIRECT_ENTRIES = 8;
const FILL = 0xee;
// Region 0: [0, 8 MiB), rings and most buffers; region 1: [16 MiB, 20 MiB), another buffer.
const REGION1 = 16 * MiB;
const RX_RINGS = 0x0;
const TX_RINGS = 0x8000;
const RX_TABLES = 0x10000;
const TX_TABLES = 0x20000;
const MAC = [0x52, 0x54, 0, 0x12, 0x34, 0x56];

/** A chain as the test offers it: its buffers, guest-physical, and whether it goes through an indirect table. */
interface Shape {
  segments: [gpa: number, length: number][];
  indirect?: boolean;
}

class TestQueue implements WorkerQueue {
  readonly stopping = false;
  readonly vq: SplitVirtqueue;
  readonly driver: VringDriver;
  /** In completion order, with the chain's shape (heads are reused once reaped). */
  readonly completions: { head: number; len: number; shape: Shape }[] = [];
  readonly offered = new Map<number, Shape>();
  private readonly pool: VirtqRequest[] = [];
  constructor(
    readonly index: number,
    readonly memory: GuestMemory,
    rings: number,
    tables: number,
  ) {
    const layout = splitRingLayout(SIZE);
    const at = { descAddr: rings, availAddr: rings + layout.availOffset, usedAddr: rings + layout.usedOffset };
    this.driver = new VringDriver({ memory, size: SIZE, ...at, indirect: { tableAddr: tables, maxEntries: INDIRECT_ENTRIES } });
    this.vq = new SplitVirtqueue({ memory, size: SIZE, ...at, indirectDesc: true });
    for (let i = 0; i < SIZE; i++) this.pool.push(new VirtqRequest(16));
  }
  offer(shape: Shape): number {
    this.driver.beginChain(shape.indirect === true);
    for (const [gpa, length] of shape.segments) this.driver.addSegment(gpa, length, this.index % 2 === 0);
    const head = this.driver.endChain(0);
    expect(head).toBeGreaterThanOrEqual(0);
    this.offered.set(head, shape);
    return head;
  }
  process(handler: QueueHandler): void {
    for (;;) {
      const request = this.pool.pop()!;
      if (!this.vq.pop(request)) {
        this.pool.push(request);
        return;
      }
      handler.handle(this, request);
    }
  }
  complete(request: VirtqRequest, len: number): void {
    expect(this.vq.pushUsed(request.head, len)).toBe(true);
    this.completions.push({ head: request.head, len, shape: this.offered.get(request.head)! });
    this.pool.push(request);
  }
  /** Takes the reaped chains back into the driver (so descriptors can be reused). */
  reap(): void {
    this.vq.flushUsed();
    const tokens = new Float64Array(SIZE);
    const lens = new Uint32Array(SIZE);
    this.driver.reapUsed(tokens, lens);
  }
}

interface Rig {
  memory: GuestMemory;
  read(gpa: number, length: number): Uint8Array;
  fill(gpa: number, length: number, value: number): void;
  write(gpa: number, bytes: Uint8Array): void;
  rx: TestQueue;
  tx: TestQueue;
  handler: QueueHandler;
  stats: Float64Array;
  /** One worker pass: the RX queue, then the TX queue, then flush. */
  pass(): void;
}

async function rig(backend: 'source' | 'loopback', headerBytes: number, frameBytes: number): Promise<Rig> {
  const low = new SharedArrayBuffer(8 * MiB);
  const high = new SharedArrayBuffer(4 * MiB);
  const memory = new GuestMemory([
    { guestPhysAddr: 0, size: 8 * MiB, userspaceAddr: 0x7f00_0000_0000, buffer: low, bufferOffset: 0 },
    { guestPhysAddr: REGION1, size: 4 * MiB, userspaceAddr: 0x7f00_1000_0000, buffer: high, bufferOffset: 0 },
  ]);
  const bytesAt = (gpa: number) =>
    gpa >= REGION1 ? { view: new Uint8Array(high), at: gpa - REGION1 } : { view: new Uint8Array(low), at: gpa };
  const negotiated = new SharedArrayBuffer(NegotiatedSlot.SLOTS * 4);
  new Int32Array(negotiated)[NegotiatedSlot.headerBytes] = headerBytes;
  new Int32Array(negotiated)[NegotiatedSlot.mergeableRxBuffers] = headerBytes === 12 ? 1 : 0;
  const statsBuffer = createNetStatsBuffer(2);
  const rx = new TestQueue(0, memory, RX_RINGS, RX_TABLES);
  const tx = new TestQueue(1, memory, TX_RINGS, TX_TABLES);
  const handler = await createQueueHandler(
    { backend, negotiated, stats: statsBuffer, queuePairs: 1, maxFrameBytes: 1518, frameBytes, tapFds: [], mac: MAC },
    {
      worker: 0,
      queueCount: 2,
      log: () => {},
      watchFd: () => {},
      unwatchFd: () => {},
      queue: (index) => (index === 0 ? rx : index === 1 ? tx : null),
    },
  );
  return {
    memory,
    read(gpa, length) {
      const { view, at } = bytesAt(gpa);
      return view.slice(at, at + length);
    },
    fill(gpa, length, value) {
      const { view, at } = bytesAt(gpa);
      view.fill(value, at, at + length);
    },
    write(gpa, bytes) {
      const { view, at } = bytesAt(gpa);
      view.set(bytes, at);
    },
    rx,
    tx,
    handler,
    stats: new Float64Array(statsBuffer),
    pass() {
      rx.process(handler);
      tx.process(handler);
      handler.flush();
      rx.reap();
      tx.reap();
    },
  };
}

/**
 * The frames delivered on the RX queue, in completion order: each one's header and frame bytes
 * gathered from its chains up to their used.len (num_buffers of them with a 12-byte header).
 * Also checks that no chain was written past its used.len.
 */
function receivedFrames(r: Rig, headerBytes: number): { header: Uint8Array; frame: Uint8Array }[] {
  const frames: { header: Uint8Array; frame: Uint8Array }[] = [];
  const completions = r.rx.completions;
  let i = 0;
  const chainBytes = ({ head, len, shape }: { head: number; len: number; shape: Shape }) => {
    const parts: number[] = [];
    let left = len;
    for (const [gpa, length] of shape.segments) {
      const take = Math.min(left, length);
      parts.push(...r.read(gpa, take));
      // Nothing past used.len.
      expect(
        r.read(gpa + take, length - take).every((b) => b === FILL),
        `chain ${head} written past used.len`,
      ).toBe(true);
      left -= take;
    }
    return parts;
  };
  while (i < completions.length) {
    const first = completions[i];
    if (first.len === 0) {
      chainBytes(first);
      i++;
      continue;
    }
    const bytes = chainBytes(first);
    const numBuffers = headerBytes === 12 ? bytes[10] | (bytes[11] << 8) : 1;
    expect(numBuffers, `num_buffers of the frame in chain ${first.head}`).toBeGreaterThan(0);
    expect(i + numBuffers, 'num_buffers beyond the chains completed').toBeLessThanOrEqual(completions.length);
    for (let c = 1; c < numBuffers; c++) bytes.push(...chainBytes(completions[i + c]));
    i += numBuffers;
    frames.push({ header: Uint8Array.from(bytes.slice(0, headerBytes)), frame: Uint8Array.from(bytes.slice(headerBytes)) });
  }
  return frames;
}

function expectedHeader(headerBytes: number, numBuffers: number): Uint8Array {
  const header = new Uint8Array(headerBytes);
  if (headerBytes === 12) header[10] = numBuffers;
  return header;
}

describe('net source fast path', () => {
  for (const { headerBytes, frameBytes } of [
    { headerBytes: 12, frameBytes: 64 }, // the sequence number straddles two words
    { headerBytes: 12, frameBytes: 65 }, // a tail byte after the words
    { headerBytes: 10, frameBytes: 64 }, // no MRG_RXBUF: sequence in one word, two tail bytes
    { headerBytes: 10, frameBytes: 46 }, // the smallest frame
    { headerBytes: 12, frameBytes: 300 }, // above the inline limit: the batch copy only
  ]) {
    it(`fills every chain shape with the same frame (${headerBytes}-byte header, ${frameBytes}-byte frame)`, async () => {
      const r = await rig('source', headerBytes, frameBytes);
      const need = headerBytes + frameBytes;
      const mergeable = headerBytes === 12;
      let next = MiB;
      /** A fresh buffer of `length` bytes at `skew` past a 64-byte boundary, filled with FILL. */
      const buffer = (length: number, skew = 0, region1 = false): [number, number] => {
        const gpa = (region1 ? REGION1 : 0) + next + skew;
        next += (length + 127) & ~63;
        r.fill(gpa, length, FILL);
        return [gpa, length];
      };
      const passes: Shape[][] = [
        [{ segments: [buffer(2048)] }], // inline
        [{ segments: [buffer(2048, 1)] }, { segments: [buffer(2048)] }], // misaligned: batch, then the next one waits behind it
        [{ segments: [buffer(2048, 2)] }],
        [{ segments: [buffer(2048, 3)] }],
        [{ segments: [buffer(6), buffer(2042)] }], // header split over two descriptors
        [{ segments: [buffer(need), buffer(100)] }], // two descriptors, the first holds it all
        [{ segments: [buffer(2048)], indirect: true }], // indirect, one entry: one segment
        [{ segments: [buffer(40), buffer(2000)], indirect: true }],
        [{ segments: [buffer(2048, 0, true)] }], // the other region
        [{ segments: [buffer(need - 1)] }, { segments: [buffer(2048)] }], // too short (MRG: two chains)
        [{ segments: [buffer(need)] }, { segments: [buffer(need)] }, { segments: [buffer(2048)] }],
        [{ segments: [buffer(2048)] }, { segments: [buffer(2048)] }],
      ];
      for (const chains of passes) {
        for (const shape of chains) r.rx.offer(shape);
        r.rx.driver.publish();
        r.pass();
      }
      expect(r.rx.vq.broken).toBe(false);
      const template = buildSourceFrame(frameBytes, MAC);
      const frames = receivedFrames(r, headerBytes);
      const sequences: number[] = [];
      for (const { header, frame } of frames) {
        const s = SOURCE_SEQUENCE_OFFSET;
        sequences.push(frame[s] | (frame[s + 1] << 8) | (frame[s + 2] << 16) | (frame[s + 3] << 24));
        const plain = frame.slice();
        plain.set(template.subarray(s, s + 4), s);
        expect(Buffer.from(plain).equals(Buffer.from(template)), 'frame bytes').toBe(true);
        const numBuffers = mergeable ? header[10] : 1;
        expect(header).toEqual(expectedHeader(headerBytes, numBuffers));
      }
      // One frame per chain, but the too-short one: with MRG_RXBUF it shares a frame with the
      // next chain; without, it is handed back unused and counted.
      const chains = passes.flat().length;
      expect(r.rx.completions.length, 'every chain offered is used (none left waiting)').toBe(chains);
      expect(frames.length).toBe(chains - 1);
      expect(sequences).toEqual(sequences.map((_, i) => i));
      expect(r.rx.completions.filter((c) => c.len === 0).length).toBe(mergeable ? 0 : 1);
      expect(r.stats[NetStat.tooBig]).toBe(mergeable ? 0 : 1);
      expect(r.stats[NetStat.packets]).toBe(frames.length);
      expect(r.stats[NetStat.bytes]).toBe(frames.length * frameBytes);
    });
  }

  for (const headerBytes of [12, 10]) {
    it(`writes all four bytes of the sequence number (${headerBytes}-byte header, 70k frames)`, async () => {
      const r = await rig('source', headerBytes, 64);
      const total = 70_016; // a multiple of 32, past 2^16: the sequence's third byte changes too
      const buffers = Array.from({ length: 32 }, (_, i) => MiB + i * 4096);
      let done = 0;
      while (done < total) {
        const n = Math.min(buffers.length, total - done);
        for (let i = 0; i < n; i++) r.rx.offer({ segments: [[buffers[i], 2048]] });
        r.rx.driver.publish();
        r.pass();
        done += n;
      }
      expect(r.rx.completions.length).toBe(total);
      expect(r.rx.completions.every((c) => c.len === headerBytes + 64)).toBe(true);
      // Each buffer holds its last frame: buffer i got frames i, i + 32, ... (one chain per buffer per pass).
      const s = headerBytes + SOURCE_SEQUENCE_OFFSET;
      const template = buildSourceFrame(64, MAC);
      for (let i = 0; i < buffers.length; i++) {
        const bytes = r.read(buffers[i], headerBytes + 64);
        const sequence = bytes[s] + (bytes[s + 1] << 8) + (bytes[s + 2] << 16) + bytes[s + 3] * 2 ** 24;
        expect(sequence).toBe(total - buffers.length + i);
        bytes.set(template.subarray(SOURCE_SEQUENCE_OFFSET, SOURCE_SEQUENCE_OFFSET + 4), s);
        expect(Buffer.from(bytes.subarray(headerBytes)).equals(Buffer.from(template))).toBe(true);
      }
    });
  }

  for (const { name, gpa, reason } of [
    { name: 'outside guest memory', gpa: 12 * MiB, reason: BrokenReason.ADDR_OUTSIDE_MEMORY },
    { name: 'running past its region', gpa: 8 * MiB - 1024, reason: BrokenReason.ADDR_CROSSES_REGION },
    { name: 'above 2^53', gpa: 2 ** 53 + 2 ** 33, reason: BrokenReason.ADDR_OUTSIDE_MEMORY },
  ]) {
    it(`an RX buffer ${name} breaks the queue before the handler sees it; frames before it are intact`, async () => {
      const r = await rig('source', 12, 64);
      r.fill(MiB, 4096, FILL);
      r.rx.offer({ segments: [[MiB, 2048]] });
      r.rx.driver.writeDescriptor(SIZE - 1, gpa, 2048, 2, 0);
      r.rx.driver.offerRawHead(SIZE - 1);
      r.rx.offer({ segments: [[MiB + 2048, 2048]] });
      r.rx.driver.publish();
      r.pass();
      expect(r.rx.vq.brokenReason).toBe(reason);
      expect(r.rx.completions.map(({ head, len }) => ({ head, len }))).toEqual([{ head: 0, len: 76 }]);
      expect(r.read(MiB + 2048, 2048).every((b) => b === FILL)).toBe(true);
      expect(r.stats[NetStat.packets]).toBe(1);
    });
  }
});

describe('net loopback fast path', () => {
  // 64: whole words in groups of 8; 67: tail bytes; 78: words left over after the groups, then
  // tail bytes; 300: above the word-copy limit (copyWithin).
  for (const frameBytes of [64, 67, 78, 300]) {
    it(`copies ${frameBytes}-byte frames byte-exact between every pair of TX and RX chain shapes`, async () => {
      const r = await rig('loopback', 12, frameBytes);
      const need = 12 + frameBytes;
      let next = MiB;
      const buffer = (length: number, skew = 0, region1 = false): [number, number] => {
        const gpa = (region1 ? REGION1 : 0) + next + skew;
        next += (length + 127) & ~63;
        r.fill(gpa, length, FILL);
        return [gpa, length];
      };
      const txShapes: { name: string; shape: () => Shape }[] = [
        { name: 'one descriptor', shape: () => ({ segments: [buffer(need)] }) },
        { name: 'misaligned by 1', shape: () => ({ segments: [buffer(need, 1)] }) },
        { name: 'misaligned by 2', shape: () => ({ segments: [buffer(need, 2)] }) },
        { name: 'header apart', shape: () => ({ segments: [buffer(12), buffer(frameBytes)] }) },
        { name: 'split in the frame', shape: () => ({ segments: [buffer(22), buffer(frameBytes - 10)] }) },
        { name: 'indirect', shape: () => ({ segments: [buffer(need)], indirect: true }) },
        { name: 'other region', shape: () => ({ segments: [buffer(need, 0, true)] }) },
      ];
      const rxShapes: { name: string; shapes: () => Shape[] }[] = [
        { name: 'one descriptor', shapes: () => [{ segments: [buffer(2048)] }] },
        { name: 'misaligned by 2', shapes: () => [{ segments: [buffer(2048, 2)] }] },
        { name: 'misaligned by 3', shapes: () => [{ segments: [buffer(2048, 3)] }] },
        { name: 'header split', shapes: () => [{ segments: [buffer(6), buffer(2042)] }] },
        { name: 'indirect', shapes: () => [{ segments: [buffer(2048)], indirect: true }] },
        { name: 'other region', shapes: () => [{ segments: [buffer(2048, 0, true)] }] },
        { name: 'exactly the frame', shapes: () => [{ segments: [buffer(need)] }] },
        { name: 'one byte short (two chains)', shapes: () => [{ segments: [buffer(need - 1)] }, { segments: [buffer(2048)] }] },
      ];
      const sent: Uint8Array[] = [];
      const cases: string[] = [];
      let tag = 0;
      for (const t of txShapes) {
        for (const x of rxShapes) {
          for (const shape of x.shapes()) r.rx.offer(shape);
          r.rx.driver.publish();
          const txShape = t.shape();
          // The frame: header (zeros), then bytes tagged with the case.
          tag++;
          const frame = Uint8Array.from({ length: frameBytes }, (_, b) => (tag * 31 + b * 7) & 0xff);
          const whole = new Uint8Array(need);
          whole.set(frame, 12);
          let at = 0;
          for (const [gpa, length] of txShape.segments) {
            r.write(gpa, whole.subarray(at, at + length));
            at += length;
          }
          r.tx.offer(txShape);
          r.tx.driver.publish();
          sent.push(frame);
          cases.push(`TX ${t.name}, RX ${x.name}`);
          r.pass();
        }
      }
      expect(r.rx.vq.broken).toBe(false);
      expect(r.tx.vq.broken).toBe(false);
      const frames = receivedFrames(r, 12);
      expect(frames.length).toBe(sent.length);
      for (let i = 0; i < sent.length; i++) {
        expect(Buffer.from(frames[i].frame).equals(Buffer.from(sent[i])), cases[i]).toBe(true);
        const chains = cases[i].endsWith('(two chains)') ? 2 : 1;
        expect(frames[i].header, cases[i]).toEqual(expectedHeader(12, chains));
      }
      expect(r.tx.completions.every((c) => c.len === 0)).toBe(true);
      expect(r.stats[NetStat.packets]).toBe(sent.length);
      expect(r.stats[NET_STAT_SLOTS + NetStat.packets]).toBe(sent.length);
      expect(r.stats[NetStat.bytes]).toBe(sent.length * frameBytes);
      expect(r.stats[NetStat.drops]).toBe(0);
    });
  }
});
