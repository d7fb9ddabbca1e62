import { describe, expect, it } from 'vitest';
import { GuestMemory } from '../../dist/dataplane/memory.js';
import { VirtqRequest } from '../../dist/dataplane/request.js';
import { BrokenReason, SplitVirtqueue, type VirtqueueConfig } from '../../dist/dataplane/virtqueue.js';
import { VringDriver, splitRingLayout } from '../../dist/frontend/vring-driver.js';

const MiB = 1 << 20;
const BASE = 0x100000; // guest-physical start of the region
const UADDR = 0x7f12_3400_0000; // its front-end virtual address
const RING = BASE; // rings at the region start
const TABLES = BASE + 0x10000; // indirect tables
const DATA = BASE + 0x20000; // data buffers

function fixture(options: { size?: number; eventIdx?: boolean; indirect?: boolean; config?: Partial<VirtqueueConfig> } = {}) {
  const size = options.size ?? 8;
  const buffer = new SharedArrayBuffer(MiB);
  const memory = new GuestMemory([{ guestPhysAddr: BASE, size: MiB, userspaceAddr: UADDR, buffer, bufferOffset: 0 }]);
  const layout = splitRingLayout(size);
  const rings = { descAddr: RING + layout.descOffset, availAddr: RING + layout.availOffset, usedAddr: RING + layout.usedOffset };
  const driver = new VringDriver({
    memory,
    size,
    ...rings,
    eventIdx: options.eventIdx ?? false,
    indirect: { tableAddr: TABLES, maxEntries: 8 },
  });
  const queue = new SplitVirtqueue({
    memory,
    size,
    ...rings,
    eventIdx: options.eventIdx ?? false,
    indirectDesc: options.indirect ?? true,
    ...options.config,
  });
  const bytes = new Uint8Array(buffer);
  const view = new DataView(buffer);
  return { size, buffer, bytes, view, memory, layout, rings, driver, queue };
}

describe('SplitVirtqueue: popping chains', () => {
  it('pops a header / data / status chain into the request, readable segments first', () => {
    const { driver, queue, bytes } = fixture();
    for (let i = 0; i < 16; i++) bytes[DATA - BASE + i] = i + 1;
    driver.beginChain();
    driver.addSegment(DATA, 16, false);
    driver.addSegment(DATA + 0x1000, 512, true);
    driver.addSegment(DATA + 0x2000, 1, true);
    const head = driver.endChain(42);
    driver.publish();

    const req = new VirtqRequest(8);
    expect(queue.availableCount()).toBe(1);
    expect(queue.pop(req)).toBe(true);
    expect(req.head).toBe(head);
    expect(req.segmentCount).toBe(3);
    expect(req.descriptorCount).toBe(3);
    expect(req.readableCount).toBe(1);
    expect(req.writableCount).toBe(2);
    expect(req.readableBytes).toBe(16);
    expect(req.writableBytes).toBe(513);
    expect(Array.from(req.segLength.subarray(0, 3))).toEqual([16, 512, 1]);
    expect([0, 1, 2].map((s) => req.segmentWritable(s))).toEqual([false, true, true]);
    expect(req.segmentRegion(1)).toBe(0);
    expect(req.segmentBufferOffset(1)).toBe(DATA + 0x1000 - BASE);
    const header = new Uint8Array(16);
    expect(req.gather(header, 0, 0, 16)).toBe(16);
    expect(Array.from(header)).toEqual(Array.from({ length: 16 }, (_, i) => i + 1));
    expect(req.readableByte(3)).toBe(4);
    expect(req.readableByte(16)).toBe(-1);
    expect(req.writeWritableByte(512, 0x5a)).toBe(true); // the status byte
    expect(bytes[DATA + 0x2000 - BASE]).toBe(0x5a);
    expect(req.writeWritableByte(513, 0)).toBe(false);
    expect(queue.pop(req)).toBe(false);
    expect(queue.broken).toBe(false);
    expect(queue.lastAvailIdx).toBe(1);
    expect(queue.inFlight).toBe(1);
  });

  it('follows an indirect table, and a direct chain ending in one', () => {
    const { driver, queue, bytes } = fixture();
    driver.beginChain(true);
    driver.addSegment(DATA, 100, false);
    driver.addSegment(DATA + 100, 200, false);
    driver.addSegment(DATA + 300, 300, true);
    driver.endChain(1);
    driver.publish();
    const req = new VirtqRequest(8);
    expect(queue.pop(req)).toBe(true);
    expect(req.readableCount).toBe(2);
    expect(req.readableBytes).toBe(300);
    expect(req.writableBytes).toBe(300);
    expect(req.segmentBufferOffset(2)).toBe(DATA + 300 - BASE);

    // Direct descriptor 4 → indirect descriptor 5 (whose table at TABLES + 0x800 holds two entries).
    driver.writeDescriptor(4, DATA + 0x3000, 8, 1 /* NEXT */, 5);
    driver.writeDescriptor(5, TABLES + 0x800, 32, 4 /* INDIRECT */, 0);
    const table = new DataView(bytes.buffer, TABLES + 0x800 - BASE, 32);
    table.setUint32(0, DATA + 0x4000, true);
    table.setUint32(8, 16, true);
    table.setUint16(12, 1 | 2, true); // NEXT | WRITE
    table.setUint16(14, 1, true);
    table.setUint32(16, DATA + 0x5000, true);
    table.setUint32(24, 4, true);
    table.setUint16(28, 2, true);
    driver.postRawHead(4);
    expect(queue.pop(req)).toBe(true);
    expect(req.head).toBe(4);
    expect(Array.from(req.segLength.subarray(0, req.segmentCount))).toEqual([8, 16, 4]);
    expect(req.readableCount).toBe(1);
    expect(req.writableCount).toBe(2);
  });

  it('reads an indirect table that is not word-aligned in its buffer (DataView path)', () => {
    const ringBuffer = new SharedArrayBuffer(MiB);
    const odd = new SharedArrayBuffer(MiB);
    const memory = new GuestMemory([
      { guestPhysAddr: BASE, size: MiB, userspaceAddr: UADDR, buffer: ringBuffer, bufferOffset: 0 },
      // Region 1 starts 2 bytes into its mapping: 16-aligned guest addresses are not 4-aligned in the buffer.
      { guestPhysAddr: 0x1000_0000, size: MiB - 2, userspaceAddr: UADDR + MiB, buffer: odd, bufferOffset: 2 },
    ]);
    const layout = splitRingLayout(8);
    const rings = { descAddr: RING, availAddr: RING + layout.availOffset, usedAddr: RING + layout.usedOffset };
    const driver = new VringDriver({ memory, size: 8, ...rings });
    const queue = new SplitVirtqueue({ memory, size: 8, ...rings, indirectDesc: true });
    const req = new VirtqRequest(8);
    for (const tableGpa of [0x1000_0000 + 0x100 /* DataView */, 0x1000_0000 + 0x202 /* skewed words */]) {
      const table = new DataView(odd, 2 + tableGpa - 0x1000_0000, 32);
      table.setUint32(0, DATA, true);
      table.setUint32(8, 64, true);
      table.setUint16(12, 1, true);
      table.setUint16(14, 1, true);
      table.setUint32(16, DATA + 64, true);
      table.setUint32(24, 32, true);
      table.setUint16(28, 2, true);
      const head = tableGpa & 7;
      driver.writeDescriptor(head, tableGpa, 32, 4, 0);
      driver.postRawHead(head);
      expect(queue.pop(req), queue.describeBroken()).toBe(true);
      expect(Array.from(req.segLength.subarray(0, 2))).toEqual([64, 32]);
      expect(req.writableCount).toBe(1);
    }
  });

  it('splits a buffer longer than a window stride into pieces, and copies through them', () => {
    const size = 8 * MiB;
    const buffer = new SharedArrayBuffer(size);
    const memory = new GuestMemory([{ guestPhysAddr: 0, size, userspaceAddr: 0, buffer, bufferOffset: 0 }], {
      windowBytes: 2 * MiB,
    });
    const layout = splitRingLayout(4);
    const rings = { descAddr: 0, availAddr: layout.availOffset, usedAddr: layout.usedOffset };
    const driver = new VringDriver({ memory, size: 4, ...rings });
    const queue = new SplitVirtqueue({ memory, size: 4, ...rings });
    const bytes = new Uint8Array(buffer);
    const readable = 0x10_0003;
    const length = 3 * MiB + 5;
    for (let i = 0; i < length; i++) bytes[readable + i] = (i * 13 + (i >>> 9)) & 0xff;
    driver.beginChain();
    driver.addSegment(readable, length, false);
    driver.addSegment(0x40_0011, length, true);
    driver.endChain(0);
    driver.publish();
    const req = new VirtqRequest(16);
    expect(queue.pop(req)).toBe(true);
    expect(req.descriptorCount).toBe(2);
    expect(req.segmentCount).toBeGreaterThan(2);
    expect(req.readableBytes).toBe(length);
    let sum = 0;
    for (let s = 0; s < req.readableCount; s++) sum += req.segLength[s];
    expect(sum).toBe(length);
    const copy = new Uint8Array(length);
    expect(req.gather(copy, 0, 0, length)).toBe(length);
    expect(req.scatter(copy, 0, 0, length)).toBe(length);
    let mismatches = 0;
    for (let i = 0; i < length; i++) {
      if (copy[i] !== ((i * 13 + (i >>> 9)) & 0xff) || bytes[0x40_0011 + i] !== copy[i]) mismatches++;
    }
    expect(mismatches).toBe(0);
  });

  it('runs rings and buffers straddling 4 GiB in a 5 GiB region (default 4 GiB windows)', () => {
    const GiB = 2 ** 30;
    const size = 5 * GiB;
    const base = 2 ** 32; // guest-physical start of the region
    const buffer = new SharedArrayBuffer(size); // lazily committed
    const memory = new GuestMemory([{ guestPhysAddr: base, size, userspaceAddr: 0x7f00_0000_0000, buffer, bufferOffset: 0 }]);
    expect(memory.windowBytesView.length).toBe(2);
    // A 512-entry ring whose descriptor table (8 KiB) straddles the 4 GiB offset of the mapping.
    const layout = splitRingLayout(512);
    const ringAt = base + 2 ** 32 - 0x1000;
    const rings = { descAddr: ringAt, availAddr: ringAt + layout.availOffset, usedAddr: ringAt + layout.usedOffset };
    const driver = new VringDriver({ memory, size: 512, ...rings });
    const queue = new SplitVirtqueue({ memory, size: 512, ...rings });
    expect(queue.broken).toBe(false);
    const whole = new DataView(buffer);
    const straddling = base + 2 ** 32 - 100; // 4 KiB across the 4 GiB offset
    whole.setUint8(2 ** 32 - 100, 0xa1);
    whole.setUint8(2 ** 32 + 3995, 0xa2);
    const huge = base + 1.5 * GiB; // 3 GiB: longer than a 2 GiB stride, handed out in two pieces
    whole.setUint8(1.5 * GiB, 0xb1);
    whole.setUint8(4 * GiB - 1, 0xb2);
    whole.setUint8(4 * GiB, 0xb3);
    whole.setUint8(4.5 * GiB - 1, 0xb4);
    for (let i = 0; i < 600; i++) {
      // Enough requests to use every descriptor slot, including those beyond the 4 GiB offset.
      driver.beginChain();
      driver.addSegment(straddling, 4096, false);
      driver.addSegment(i === 0 ? huge : straddling, i === 0 ? 3 * GiB : 64, true);
      expect(driver.endChain(i)).toBeGreaterThanOrEqual(0);
      driver.publish();
      const req = new VirtqRequest(8);
      expect(queue.pop(req), queue.describeBroken()).toBe(true);
      expect(req.readableByte(0)).toBe(0xa1);
      expect(req.readableByte(4095)).toBe(0xa2);
      if (i === 0) {
        expect(req.segmentCount).toBe(3);
        expect(req.writableBytes).toBe(3 * GiB);
        expect(req.segLength[1] + req.segLength[2]).toBe(3 * GiB);
        expect(req.segmentBufferOffset(2)).toBe(req.segmentBufferOffset(1) + req.segLength[1]);
        const marks: Array<[number, number]> = [
          [0, 0xb1],
          [2.5 * GiB - 1, 0xb2],
          [2.5 * GiB, 0xb3],
          [3 * GiB - 1, 0xb4],
        ];
        for (const [position, value] of marks) {
          let s = req.readableCount;
          let skip = position;
          while (skip >= req.segLength[s]) skip -= req.segLength[s++];
          expect(memory.windowBytesView[req.segWindow[s]][req.segWindowOffset[s] + skip]).toBe(value);
        }
        expect(req.writeWritableByte(3 * GiB - 1, 0xcc)).toBe(true);
        expect(whole.getUint8(4.5 * GiB - 1)).toBe(0xcc);
      }
      queue.pushUsed(req.head, 0);
      queue.flushUsed();
      expect(driver.reapUsed(new Float64Array(1), new Uint32Array(1))).toBe(1);
    }
  });

  it('starts at the SET_VRING_BASE index and wraps at 2^16', () => {
    const { driver, queue, size } = fixture({ config: { lastAvailIdx: 0xfffe } });
    driver.setRawAvailIdx(0xfffe);
    const req = new VirtqRequest(4);
    for (let round = 0; round < 4; round++) {
      for (let i = 0; i < size; i++) {
        driver.beginChain();
        driver.addSegment(DATA + i * 64, 64, true);
        expect(driver.endChain(i)).toBeGreaterThanOrEqual(0);
      }
      driver.publish();
      for (let i = 0; i < size; i++) {
        expect(queue.pop(req)).toBe(true);
        queue.pushUsed(req.head, 64);
      }
      queue.flushUsed();
      const tokens = new Float64Array(size);
      const lens = new Uint32Array(size);
      expect(driver.reapUsed(tokens, lens)).toBe(size);
    }
    expect(queue.lastAvailIdx).toBe((0xfffe + 4 * size) & 0xffff);
    expect(queue.broken).toBe(false);
  });

  it('resolves front-end virtual ring addresses, again after a memory table change', () => {
    const { buffer, layout, driver } = fixture();
    const memory = new GuestMemory([{ guestPhysAddr: BASE, size: MiB, userspaceAddr: UADDR, buffer, bufferOffset: 0 }]);
    const queue = new SplitVirtqueue({
      memory,
      size: 8,
      addressSpace: 'userspace',
      descAddr: UADDR + layout.descOffset,
      availAddr: UADDR + layout.availOffset,
      usedAddr: UADDR + layout.usedOffset,
    });
    expect(queue.broken).toBe(false);
    driver.beginChain();
    driver.addSegment(DATA, 8, false);
    driver.endChain(0);
    driver.publish();
    const req = new VirtqRequest(4);
    expect(queue.pop(req)).toBe(true);
    // The same mapping reported again (as after ADD_MEM_REG of another region): rings still resolve.
    const other = new SharedArrayBuffer(MiB);
    const next = new GuestMemory([
      { guestPhysAddr: BASE, size: MiB, userspaceAddr: UADDR, buffer, bufferOffset: 0 },
      { guestPhysAddr: 0x4000_0000, size: MiB, userspaceAddr: UADDR + 0x1000_0000, buffer: other, bufferOffset: 0 },
    ]);
    expect(queue.setMemory(next)).toBe(BrokenReason.NONE);
    expect(queue.memory).toBe(next);
    expect(queue.pushUsed(req.head, 0)).toBe(true);
    queue.flushUsed();
    expect(driver.hasUsed()).toBe(true);
    // A table without the ring's region breaks the queue.
    const without = new GuestMemory([
      { guestPhysAddr: 0x4000_0000, size: MiB, userspaceAddr: UADDR + 0x1000_0000, buffer: other, bufferOffset: 0 },
    ]);
    expect(queue.setMemory(without)).toBe(BrokenReason.RING_ADDRESS);
    expect(queue.broken).toBe(true);
  });
});

describe('SplitVirtqueue: used ring', () => {
  it('publishes used elements only at flushUsed, in completion order', () => {
    const { driver, queue, view, layout } = fixture();
    const heads: number[] = [];
    for (let i = 0; i < 3; i++) {
      driver.beginChain();
      driver.addSegment(DATA + i * 16, 16, true);
      heads.push(driver.endChain(100 + i));
    }
    driver.publish();
    const reqs = [new VirtqRequest(2), new VirtqRequest(2), new VirtqRequest(2)];
    for (const r of reqs) expect(queue.pop(r)).toBe(true);
    const used = RING - BASE + layout.usedOffset;
    expect(queue.pushUsed(reqs[2].head, 7)).toBe(true);
    expect(queue.pushUsed(reqs[0].head, 5)).toBe(true);
    expect(view.getUint16(used + 2, true)).toBe(0); // not yet visible
    expect(driver.hasUsed()).toBe(false);
    queue.flushUsed();
    expect(view.getUint16(used + 2, true)).toBe(2);
    expect(view.getUint32(used + 4, true)).toBe(heads[2]);
    expect(view.getUint32(used + 8, true)).toBe(7);
    expect(view.getUint32(used + 12, true)).toBe(heads[0]);
    expect(queue.usedIdx).toBe(2);
    const tokens = new Float64Array(4);
    const lens = new Uint32Array(4);
    expect(driver.reapUsed(tokens, lens)).toBe(2);
    expect(Array.from(tokens.subarray(0, 2))).toEqual([102, 100]);
    expect(Array.from(lens.subarray(0, 2))).toEqual([7, 5]);
    expect(queue.inFlight).toBe(1);
  });

  it('ignores pushUsed for heads that are not in flight (a device bug must not corrupt the ring)', () => {
    const { queue } = fixture();
    expect(queue.pushUsed(3, 1)).toBe(false);
    expect(queue.pushUsed(99, 1)).toBe(false);
    expect(queue.pushUsed(-1, 1)).toBe(false);
    queue.flushUsed();
    expect(queue.usedIdx).toBe(0);
  });

  it('continues from the used index found in the ring', () => {
    const { view, layout, rings, memory } = fixture();
    view.setUint16(RING - BASE + layout.usedOffset + 2, 0x1234, true);
    const queue = new SplitVirtqueue({ memory, size: 8, ...rings });
    expect(queue.usedIdx).toBe(0x1234);
    const explicit = new SplitVirtqueue({ memory, size: 8, ...rings, usedIdx: 7 });
    expect(explicit.usedIdx).toBe(7);
  });
});

describe('SplitVirtqueue: taking back unused chains (unpop)', () => {
  it('steps last_avail_idx back over the newest chains still in flight, and pops them again', () => {
    const { driver, queue } = fixture();
    for (let i = 0; i < 3; i++) {
      driver.beginChain();
      driver.addSegment(DATA + i * 0x100, 64, true);
      driver.endChain(i);
    }
    driver.publish();
    const [a, b, c] = [new VirtqRequest(4), new VirtqRequest(4), new VirtqRequest(4)];
    expect(queue.pop(a) && queue.pop(b) && queue.pop(c)).toBe(true);
    expect(queue.lastAvailIdx).toBe(3);
    expect(queue.unpop(b)).toBe(false); // not the newest
    expect(queue.unpop(c)).toBe(true);
    expect(queue.unpop(c)).toBe(false); // no longer in flight
    expect(queue.unpop(b)).toBe(true);
    expect(queue.lastAvailIdx).toBe(1);
    expect(queue.inFlight).toBe(1);
    const again = new VirtqRequest(4);
    expect(queue.pop(again)).toBe(true);
    expect(again.head).toBe(b.head);
    expect(again.availIdx).toBe(1);
  });

  it('cannot step back over a chain already completed: older held chains are completed instead', () => {
    const { driver, queue } = fixture();
    for (let i = 0; i < 2; i++) {
      driver.beginChain();
      driver.addSegment(DATA + i * 0x100, 64, true);
      driver.endChain(i);
    }
    driver.publish();
    const [held, used] = [new VirtqRequest(4), new VirtqRequest(4)];
    expect(queue.pop(held) && queue.pop(used)).toBe(true);
    expect(queue.pushUsed(used.head, 0)).toBe(true);
    expect(queue.unpop(held)).toBe(false);
    expect(queue.lastAvailIdx).toBe(2);
  });
});

describe('SplitVirtqueue: notifications', () => {
  function postOne(driver: VringDriver, token: number): void {
    driver.beginChain();
    driver.addSegment(DATA + token * 8, 8, true);
    expect(driver.endChain(token)).toBeGreaterThanOrEqual(0);
    driver.publish();
  }

  it('without EVENT_IDX: NO_NOTIFY in used.flags suppresses kicks; NO_INTERRUPT in avail.flags suppresses calls', () => {
    const { driver, queue, view, layout } = fixture();
    const usedFlags = RING - BASE + layout.usedOffset;
    queue.disableNotification();
    expect(view.getUint16(usedFlags, true)).toBe(1);
    postOne(driver, 0);
    expect(driver.needsKick()).toBe(false);
    expect(queue.enableNotificationAndRecheck()).toBe(true); // work arrived while kicks were off
    expect(view.getUint16(usedFlags, true)).toBe(0);
    const req = new VirtqRequest(2);
    expect(queue.pop(req)).toBe(true);
    expect(queue.enableNotificationAndRecheck()).toBe(false); // safe to sleep
    postOne(driver, 1);
    expect(driver.needsKick()).toBe(true);

    queue.pushUsed(req.head, 8);
    queue.flushUsed();
    expect(queue.needsCall()).toBe(true);
    expect(queue.needsCall()).toBe(false); // nothing new since
    driver.disableCallbacks();
    expect(queue.pop(req)).toBe(true);
    queue.pushUsed(req.head, 8);
    queue.flushUsed();
    expect(queue.needsCall()).toBe(false);
  });

  it('with EVENT_IDX: avail_event = lastAvailIdx when enabled, left stale while polling', () => {
    const { driver, queue, view, layout, size } = fixture({ eventIdx: true });
    const availEvent = RING - BASE + layout.usedOffset + 4 + 8 * size;
    const req = new VirtqRequest(2);
    queue.enableNotification();
    expect(view.getUint16(availEvent, true)).toBe(0);
    postOne(driver, 0);
    expect(driver.needsKick()).toBe(true); // crossed avail_event 0
    postOne(driver, 1);
    expect(driver.needsKick()).toBe(false); // avail_event still 0: already kicked for it
    expect(queue.pop(req)).toBe(true);
    queue.pushUsed(req.head, 1);
    expect(queue.pop(req)).toBe(true);
    queue.pushUsed(req.head, 1);
    queue.disableNotification();
    expect(view.getUint16(availEvent, true)).toBe(0); // stale
    expect(queue.enableNotificationAndRecheck()).toBe(false);
    expect(view.getUint16(availEvent, true)).toBe(2);
    postOne(driver, 2);
    expect(driver.needsKick()).toBe(true);
  });

  it('with EVENT_IDX: calls only when used_event is passed', () => {
    const { driver, queue } = fixture({ eventIdx: true });
    const req = new VirtqRequest(2);
    const tokens = new Float64Array(8);
    const lens = new Uint32Array(8);
    const complete = () => {
      expect(queue.pop(req)).toBe(true);
      queue.pushUsed(req.head, 8);
      queue.flushUsed();
    };
    postOne(driver, 0);
    postOne(driver, 1);
    postOne(driver, 2);
    complete();
    expect(queue.needsCall()).toBe(true); // first signal after start is unconditional
    complete();
    expect(queue.needsCall()).toBe(false); // used_event still 0, already passed
    expect(driver.reapUsed(tokens, lens)).toBe(2); // driver sets used_event = 2
    complete();
    expect(queue.needsCall()).toBe(true);
    driver.reapUsed(tokens, lens);
    driver.disableCallbacks(); // used_event stays 3
    postOne(driver, 3);
    postOne(driver, 4);
    complete();
    expect(queue.needsCall()).toBe(true); // 3 → 4 passes used_event 3
    complete();
    expect(queue.needsCall()).toBe(false);
  });
});
