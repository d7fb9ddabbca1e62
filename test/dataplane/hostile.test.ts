// Hostile rings: every malformed input marks its queue broken with the matching reason, nothing
// throws, nothing is written to the used ring, and another queue on the same memory carries on.
import { describe, expect, it } from 'vitest';
import { GuestMemory } from '../../dist/dataplane/memory.js';
import { VirtqRequest } from '../../dist/dataplane/request.js';
import { BrokenReason, SplitVirtqueue, brokenReasonName } from '../../dist/dataplane/virtqueue.js';
import { VringDriver, splitRingLayout } from '../../dist/frontend/vring-driver.js';

const MiB = 1 << 20;
const SIZE = 16;
const NEXT = 1;
const WRITE = 2;
const INDIRECT = 4;
// Region 0: [0, 1 MiB); region 1: [1 MiB, 1 MiB + 64 KiB), adjacent; nothing above.
const REGION1 = MiB;
const REGION1_SIZE = 0x10000;
const VICTIM_RING = 0x0;
const HEALTHY_RING = 0x8000;
const TABLE = 0x10000; // scratch indirect tables
const DATA = 0x20000;

interface Fixture {
  memory: GuestMemory;
  view: DataView;
  driver: VringDriver;
  queue: SplitVirtqueue;
  usedIdx(): number;
  /** Runs a request through the healthy queue: proves it is unaffected. */
  healthyRoundTrip(): void;
}

function fixture(options: { indirectDesc?: boolean; capacity?: number; bigRegion?: boolean } = {}): Fixture {
  const low = new SharedArrayBuffer(MiB);
  const high = new SharedArrayBuffer(REGION1_SIZE);
  const regions = [
    { guestPhysAddr: 0, size: MiB, userspaceAddr: 0x7f00_0000_0000, buffer: low, bufferOffset: 0 },
    { guestPhysAddr: REGION1, size: REGION1_SIZE, userspaceAddr: 0x7f00_1000_0000, buffer: high, bufferOffset: 0 },
  ];
  if (options.bigRegion) {
    // 2 GiB, lazily committed: room for buffers whose lengths sum past 2^32 - 1.
    regions.push({
      guestPhysAddr: 2 ** 32,
      size: 2 ** 31,
      userspaceAddr: 0x7f10_0000_0000,
      buffer: new SharedArrayBuffer(2 ** 31),
      bufferOffset: 0,
    });
  }
  const memory = new GuestMemory(regions);
  const layout = splitRingLayout(SIZE);
  const ringsAt = (base: number) => ({
    descAddr: base,
    availAddr: base + layout.availOffset,
    usedAddr: base + layout.usedOffset,
  });
  const driver = new VringDriver({ memory, size: SIZE, ...ringsAt(VICTIM_RING) });
  const queue = new SplitVirtqueue({
    memory,
    size: SIZE,
    ...ringsAt(VICTIM_RING),
    indirectDesc: options.indirectDesc ?? true,
    index: 0,
  });
  const healthyDriver = new VringDriver({ memory, size: SIZE, ...ringsAt(HEALTHY_RING) });
  const healthy = new SplitVirtqueue({ memory, size: SIZE, ...ringsAt(HEALTHY_RING), indirectDesc: true, index: 1 });
  const view = new DataView(low);
  const healthyReq = new VirtqRequest(4);
  const tokens = new Float64Array(SIZE);
  const lens = new Uint32Array(SIZE);
  return {
    memory,
    view,
    driver,
    queue,
    usedIdx: () => view.getUint16(VICTIM_RING + layout.usedOffset + 2, true),
    healthyRoundTrip() {
      healthyDriver.beginChain();
      healthyDriver.addSegment(DATA + 0x8000, 64, false);
      healthyDriver.addSegment(DATA + 0x9000, 64, true);
      healthyDriver.endChain(7);
      healthyDriver.publish();
      expect(healthy.pop(healthyReq)).toBe(true);
      expect(healthy.pushUsed(healthyReq.head, 64)).toBe(true);
      healthy.flushUsed();
      expect(healthyDriver.reapUsed(tokens, lens)).toBe(1);
      expect(tokens[0]).toBe(7);
      expect(healthy.broken).toBe(false);
    },
  };
}

/** Writes one descriptor of an indirect table at `table`. */
function tableEntry(view: DataView, table: number, index: number, addr: number, len: number, flags: number, next = 0): void {
  const o = table + 16 * index;
  view.setUint32(o, addr % 2 ** 32, true);
  view.setUint32(o + 4, Math.floor(addr / 2 ** 32), true);
  view.setUint32(o + 8, len, true);
  view.setUint16(o + 12, flags, true);
  view.setUint16(o + 14, next, true);
}

/** Pops on the victim queue and checks it broke for `reason`, quietly and for good. */
function expectBroken(f: Fixture, reason: number, capacity = 8): void {
  const req = new VirtqRequest(capacity);
  const usedBefore = f.usedIdx();
  let popped = true;
  expect(() => {
    popped = f.queue.pop(req);
  }).not.toThrow();
  expect(popped).toBe(false);
  expect(brokenReasonName(f.queue.brokenReason), f.queue.describeBroken()).toBe(brokenReasonName(reason));
  expect(f.queue.broken).toBe(true);
  // Stopped for good: no more pops, no used ring writes, no notifications.
  expect(f.queue.pop(req)).toBe(false);
  expect(f.queue.availableCount()).toBe(0);
  f.queue.flushUsed();
  expect(f.usedIdx()).toBe(usedBefore);
  expect(f.queue.needsCall()).toBe(false);
  f.healthyRoundTrip();
}

describe('hostile rings', () => {
  it('head index ≥ queue size → HEAD_OUT_OF_RANGE', () => {
    const f = fixture();
    f.driver.postRawHead(SIZE);
    expectBroken(f, BrokenReason.HEAD_OUT_OF_RANGE);
  });

  it('avail.idx more than the queue size ahead → AVAIL_IDX_JUMP (pop and availableCount)', () => {
    const f = fixture();
    f.driver.setRawAvailIdx(SIZE + 1);
    expectBroken(f, BrokenReason.AVAIL_IDX_JUMP);
    const g = fixture();
    g.driver.setRawAvailIdx(0xffff); // "behind" is a jump of 65535 ahead
    expect(g.queue.availableCount()).toBe(0);
    expect(g.queue.brokenReason).toBe(BrokenReason.AVAIL_IDX_JUMP);
  });

  it('avail.idx exactly the queue size ahead is fine', () => {
    const f = fixture();
    for (let i = 0; i < SIZE; i++) f.driver.writeDescriptor(i, DATA + 64 * i, 64, 0, 0);
    for (let i = 0; i < SIZE; i++) f.driver.postRawHead(i);
    expect(f.queue.availableCount()).toBe(SIZE);
    const req = new VirtqRequest(2);
    for (let i = 0; i < SIZE; i++) expect(f.queue.pop(req)).toBe(true);
    expect(f.queue.broken).toBe(false);
  });

  it('the same head offered twice while in flight → HEAD_IN_FLIGHT', () => {
    const f = fixture();
    f.driver.writeDescriptor(3, DATA, 64, 0, 0);
    f.driver.postRawHead(3);
    expect(f.queue.pop(new VirtqRequest(2))).toBe(true);
    f.driver.postRawHead(3);
    expectBroken(f, BrokenReason.HEAD_IN_FLIGHT);
  });

  it('a descriptor loop in the main table → CHAIN_LOOP', () => {
    const f = fixture();
    f.driver.writeDescriptor(0, DATA, 64, NEXT, 1);
    f.driver.writeDescriptor(1, DATA, 64, NEXT, 2);
    f.driver.writeDescriptor(2, DATA, 64, NEXT, 0);
    f.driver.postRawHead(0);
    expectBroken(f, BrokenReason.CHAIN_LOOP, 64);
  });

  it('a descriptor pointing at itself → CHAIN_LOOP', () => {
    const f = fixture();
    f.driver.writeDescriptor(5, DATA, 64, WRITE | NEXT, 5);
    f.driver.postRawHead(5);
    expectBroken(f, BrokenReason.CHAIN_LOOP, 64);
  });

  it('a loop inside an indirect table, bounded by the table length → CHAIN_LOOP', () => {
    const f = fixture();
    tableEntry(f.view, TABLE, 0, DATA, 16, NEXT, 1);
    tableEntry(f.view, TABLE, 1, DATA, 16, NEXT, 0);
    f.driver.writeDescriptor(0, TABLE, 32, INDIRECT, 0);
    f.driver.postRawHead(0);
    expectBroken(f, BrokenReason.CHAIN_LOOP, 1000);
  });

  it('next index ≥ queue size → NEXT_OUT_OF_RANGE', () => {
    const f = fixture();
    f.driver.writeDescriptor(0, DATA, 64, NEXT, SIZE);
    f.driver.postRawHead(0);
    expectBroken(f, BrokenReason.NEXT_OUT_OF_RANGE);
  });

  it('next index ≥ the indirect table count (len / 16) → NEXT_OUT_OF_RANGE', () => {
    const f = fixture();
    tableEntry(f.view, TABLE, 0, DATA, 16, NEXT, 1);
    tableEntry(f.view, TABLE, 1, DATA, 16, NEXT, 2); // entry 2 exists in memory but not in the table
    tableEntry(f.view, TABLE, 2, DATA, 16, 0, 0);
    f.driver.writeDescriptor(0, TABLE, 32, INDIRECT, 0);
    f.driver.postRawHead(0);
    expectBroken(f, BrokenReason.NEXT_OUT_OF_RANGE);
  });

  it('an indirect descriptor inside an indirect table → INDIRECT_NESTED', () => {
    const f = fixture();
    tableEntry(f.view, TABLE, 0, DATA, 16, NEXT, 1);
    tableEntry(f.view, TABLE, 1, TABLE + 0x100, 16, INDIRECT, 0);
    tableEntry(f.view, TABLE + 0x100, 0, DATA, 16, 0, 0);
    f.driver.writeDescriptor(0, TABLE, 32, INDIRECT, 0);
    f.driver.postRawHead(0);
    expectBroken(f, BrokenReason.INDIRECT_NESTED);
  });

  it('INDIRECT together with NEXT → INDIRECT_WITH_NEXT', () => {
    const f = fixture();
    tableEntry(f.view, TABLE, 0, DATA, 16, 0, 0);
    f.driver.writeDescriptor(0, TABLE, 16, INDIRECT | NEXT, 1);
    f.driver.writeDescriptor(1, DATA, 16, 0, 0);
    f.driver.postRawHead(0);
    expectBroken(f, BrokenReason.INDIRECT_WITH_NEXT);
  });

  it('indirect table of length 0 → INDIRECT_BAD_LENGTH', () => {
    const f = fixture();
    f.driver.writeDescriptor(0, TABLE, 0, INDIRECT, 0);
    f.driver.postRawHead(0);
    expectBroken(f, BrokenReason.INDIRECT_BAD_LENGTH);
  });

  it('indirect table length not a multiple of 16 → INDIRECT_BAD_LENGTH', () => {
    const f = fixture();
    tableEntry(f.view, TABLE, 0, DATA, 16, 0, 0);
    f.driver.writeDescriptor(0, TABLE, 24, INDIRECT, 0);
    f.driver.postRawHead(0);
    expectBroken(f, BrokenReason.INDIRECT_BAD_LENGTH);
  });

  it('indirect table above 65536 entries → INDIRECT_BAD_LENGTH', () => {
    const f = fixture();
    f.driver.writeDescriptor(0, 0, 65537 * 16, INDIRECT, 0);
    f.driver.postRawHead(0);
    expectBroken(f, BrokenReason.INDIRECT_BAD_LENGTH);
  });

  it('INDIRECT without VIRTIO_F_INDIRECT_DESC → INDIRECT_NOT_NEGOTIATED', () => {
    const f = fixture({ indirectDesc: false });
    tableEntry(f.view, TABLE, 0, DATA, 16, 0, 0);
    f.driver.writeDescriptor(0, TABLE, 16, INDIRECT, 0);
    f.driver.postRawHead(0);
    expectBroken(f, BrokenReason.INDIRECT_NOT_NEGOTIATED);
  });

  it('a device-readable descriptor after a device-writable one → READABLE_AFTER_WRITABLE', () => {
    const f = fixture();
    f.driver.writeDescriptor(0, DATA, 16, NEXT, 1);
    f.driver.writeDescriptor(1, DATA + 16, 16, WRITE | NEXT, 2);
    f.driver.writeDescriptor(2, DATA + 32, 16, 0, 0);
    f.driver.postRawHead(0);
    expectBroken(f, BrokenReason.READABLE_AFTER_WRITABLE);
  });

  it('the same rule inside an indirect table → READABLE_AFTER_WRITABLE', () => {
    const f = fixture();
    tableEntry(f.view, TABLE, 0, DATA, 16, WRITE | NEXT, 1);
    tableEntry(f.view, TABLE, 1, DATA, 16, 0, 0);
    f.driver.writeDescriptor(0, TABLE, 32, INDIRECT, 0);
    f.driver.postRawHead(0);
    expectBroken(f, BrokenReason.READABLE_AFTER_WRITABLE);
  });

  it('a buffer outside guest memory → ADDR_OUTSIDE_MEMORY', () => {
    const f = fixture();
    f.driver.writeDescriptor(0, REGION1 + REGION1_SIZE, 16, 0, 0); // just past the last region
    f.driver.postRawHead(0);
    expectBroken(f, BrokenReason.ADDR_OUTSIDE_MEMORY);
  });

  it('a buffer address at or above 2^53 (high word 0xffffffff) → ADDR_OUTSIDE_MEMORY', () => {
    const f = fixture();
    f.driver.writeDescriptor(0, 0xffff_ffff * 2 ** 32, 16, 0, 0);
    f.driver.postRawHead(0);
    expectBroken(f, BrokenReason.ADDR_OUTSIDE_MEMORY);
  });

  it('an indirect table outside guest memory → ADDR_OUTSIDE_MEMORY', () => {
    const f = fixture();
    f.driver.writeDescriptor(0, 0x4000_0000, 64, INDIRECT, 0);
    f.driver.postRawHead(0);
    expectBroken(f, BrokenReason.ADDR_OUTSIDE_MEMORY);
  });

  it('a buffer crossing from one region into the adjacent one → ADDR_CROSSES_REGION', () => {
    const f = fixture();
    f.driver.writeDescriptor(0, REGION1 - 8, 16, WRITE, 0);
    f.driver.postRawHead(0);
    expectBroken(f, BrokenReason.ADDR_CROSSES_REGION);
  });

  it('a buffer running past the last region into a hole → ADDR_CROSSES_REGION', () => {
    const f = fixture();
    f.driver.writeDescriptor(0, REGION1 + REGION1_SIZE - 8, 16, 0, 0);
    f.driver.postRawHead(0);
    expectBroken(f, BrokenReason.ADDR_CROSSES_REGION);
  });

  it('a 4 GiB - 1 length descriptor (larger than memory) → ADDR_CROSSES_REGION', () => {
    const f = fixture();
    f.driver.writeDescriptor(0, DATA, 0xffff_ffff, WRITE, 0);
    f.driver.postRawHead(0);
    expectBroken(f, BrokenReason.ADDR_CROSSES_REGION);
  });

  it('a zero-length data descriptor → ZERO_LENGTH', () => {
    const f = fixture();
    f.driver.writeDescriptor(0, DATA, 16, NEXT, 1);
    f.driver.writeDescriptor(1, DATA, 0, WRITE, 0);
    f.driver.postRawHead(0);
    expectBroken(f, BrokenReason.ZERO_LENGTH);
  });

  it('lengths summing above 2^32 - 1 → LENGTH_OVERFLOW', () => {
    const f = fixture({ bigRegion: true });
    f.driver.writeDescriptor(0, 2 ** 32, 2 ** 31, NEXT, 1); // both inside the 2 GiB region
    f.driver.writeDescriptor(1, 2 ** 32, 2 ** 31, WRITE, 0);
    f.driver.postRawHead(0);
    expectBroken(f, BrokenReason.LENGTH_OVERFLOW);
  });

  it('more segments than the request capacity → TOO_MANY_SEGMENTS', () => {
    const f = fixture();
    for (let i = 0; i < 5; i++) f.driver.writeDescriptor(i, DATA + 64 * i, 64, i < 4 ? NEXT : 0, i + 1);
    f.driver.postRawHead(0);
    expectBroken(f, BrokenReason.TOO_MANY_SEGMENTS, 4);
  });

  it('the same chain fits a request with enough capacity', () => {
    const f = fixture();
    for (let i = 0; i < 5; i++) f.driver.writeDescriptor(i, DATA + 64 * i, 64, i < 4 ? NEXT : 0, i + 1);
    f.driver.postRawHead(0);
    const req = new VirtqRequest(5);
    expect(f.queue.pop(req)).toBe(true);
    expect(req.segmentCount).toBe(5);
  });
});

describe('hostile ring configuration', () => {
  const buffer = new SharedArrayBuffer(MiB);
  const memory = new GuestMemory([{ guestPhysAddr: 0, size: MiB, userspaceAddr: 0x7f00_0000_0000, buffer, bufferOffset: 0 }]);
  const layout = splitRingLayout(SIZE);

  it('queue size not a power of two, 0 or above 32768 → BAD_SIZE', () => {
    for (const size of [0, 3, 65536, 1.5]) {
      const queue = new SplitVirtqueue({ memory, size, descAddr: 0, availAddr: 0x1000, usedAddr: 0x2000 });
      expect(queue.brokenReason).toBe(BrokenReason.BAD_SIZE);
      expect(queue.pop(new VirtqRequest(1))).toBe(false);
    }
  });

  it('rings outside memory or crossing its end → RING_ADDRESS', () => {
    for (const rings of [
      { descAddr: 2 * MiB, availAddr: layout.availOffset, usedAddr: layout.usedOffset },
      { descAddr: 0, availAddr: MiB - 8, usedAddr: layout.usedOffset },
      { descAddr: 0, availAddr: layout.availOffset, usedAddr: MiB - 16 },
    ]) {
      const queue = new SplitVirtqueue({ memory, size: SIZE, ...rings });
      expect(brokenReasonName(queue.brokenReason)).toBe('RING_ADDRESS');
    }
    const userspace = new SplitVirtqueue({
      memory,
      size: SIZE,
      addressSpace: 'userspace',
      descAddr: 0x1000, // a guest-physical address given where a front-end virtual one is expected
      availAddr: 0x7f00_0000_0000 + layout.availOffset,
      usedAddr: 0x7f00_0000_0000 + layout.usedOffset,
    });
    expect(userspace.brokenReason).toBe(BrokenReason.RING_ADDRESS);
  });

  it('misaligned rings (desc 16, avail 2, used 4) → RING_MISALIGNED', () => {
    for (const rings of [
      { descAddr: 8, availAddr: 0x1000, usedAddr: 0x2000 },
      { descAddr: 0, availAddr: 0x1001, usedAddr: 0x2000 },
      { descAddr: 0, availAddr: 0x1000, usedAddr: 0x2002 },
    ]) {
      const queue = new SplitVirtqueue({ memory, size: SIZE, ...rings });
      expect(queue.brokenReason).toBe(BrokenReason.RING_MISALIGNED);
    }
  });
});

describe('random garbage in the descriptor table never throws or hangs', () => {
  it('survives 2000 random rings', () => {
    let seed = 12345;
    const rand = () => {
      // mulberry32
      seed = (seed + 0x6d2b79f5) | 0;
      let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
      t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
      return (t ^ (t >>> 14)) >>> 0;
    };
    const reasons = new Set<string>();
    for (let round = 0; round < 2000; round++) {
      const f = fixture();
      for (let i = 0; i < SIZE; i++) {
        const addrChoice = rand() % 4;
        const addr =
          addrChoice === 0
            ? rand() % MiB
            : addrChoice === 1
              ? TABLE
              : addrChoice === 2
                ? REGION1 + (rand() % REGION1_SIZE)
                : rand() * 2 ** 20;
        f.driver.writeDescriptor(i, addr, rand() % 4 === 0 ? rand() : rand() % 512, rand() % 8, rand() % (SIZE + 2));
      }
      for (let i = 0; i < 64; i++) tableEntry(f.view, TABLE, i, rand() % MiB, rand() % 256, rand() % 8, rand() % 70);
      for (let i = 0; i < 4; i++) f.driver.postRawHead(rand() % (SIZE + 1));
      const req = new VirtqRequest(8);
      for (let i = 0; i < 8 && f.queue.pop(req); i++) {
        expect(req.segmentCount).toBeGreaterThan(0);
        f.queue.pushUsed(req.head, 0);
      }
      f.queue.flushUsed();
      reasons.add(brokenReasonName(f.queue.brokenReason));
    }
    expect(reasons.size, [...reasons].join()).toBeGreaterThan(8);
  });
});
