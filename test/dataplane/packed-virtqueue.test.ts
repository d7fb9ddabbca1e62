// The packed ring (virtio 1.x §2.8) against our packed driver: chains, indirect tables, buffer ids
// completed out of order, wrap counters, event suppression, and hostile rings that break only
// their own queue.
import { describe, expect, it } from 'vitest';
import { GuestMemory } from '../../dist/dataplane/memory.js';
import { VirtqRequest } from '../../dist/dataplane/request.js';
import { BrokenReason, brokenReasonName } from '../../dist/dataplane/chain.js';
import { PackedVirtqueue } from '../../dist/dataplane/packed-virtqueue.js';
import { createVirtqueue } from '../../dist/dataplane/queue.js';
import { SplitVirtqueue } from '../../dist/dataplane/virtqueue.js';
import { PackedVringDriver, packedRingLayout } from '../../dist/frontend/packed-vring-driver.js';

const MiB = 1 << 20;
const BASE = 0x100000;
const UADDR = 0x7f12_3400_0000;
const RING = BASE;
const HEALTHY_RING = BASE + 0x8000;
const TABLES = BASE + 0x10000;
const DATA = BASE + 0x20000;
const NEXT = 1;
const WRITE = 2;
const INDIRECT = 4;
const AVAIL = 1 << 7;
const USED = 1 << 15;

function fixture(options: { size?: number; eventIdx?: boolean; indirect?: boolean; lastAvailIdx?: number } = {}) {
  const size = options.size ?? 8;
  const buffer = new SharedArrayBuffer(MiB);
  const memory = new GuestMemory([{ guestPhysAddr: BASE, size: MiB, userspaceAddr: UADDR, buffer, bufferOffset: 0 }]);
  const layout = packedRingLayout(size);
  const rings = { descAddr: RING, availAddr: RING + layout.driverOffset, usedAddr: RING + layout.deviceOffset };
  const driver = new PackedVringDriver({
    memory,
    size,
    ...rings,
    eventIdx: options.eventIdx ?? false,
    indirect: { tableAddr: TABLES, maxEntries: 8 },
  });
  const queue = new PackedVirtqueue({
    memory,
    size,
    ...rings,
    packed: true,
    eventIdx: options.eventIdx ?? false,
    indirectDesc: options.indirect ?? true,
    lastAvailIdx: options.lastAvailIdx,
  });
  const healthyLayout = packedRingLayout(4);
  const healthyRings = {
    descAddr: HEALTHY_RING,
    availAddr: HEALTHY_RING + healthyLayout.driverOffset,
    usedAddr: HEALTHY_RING + healthyLayout.deviceOffset,
  };
  const healthyDriver = new PackedVringDriver({ memory, size: 4, ...healthyRings });
  const healthy = new PackedVirtqueue({ memory, size: 4, ...healthyRings, index: 1 });
  const bytes = new Uint8Array(buffer);
  const view = new DataView(buffer);
  const flagsAt = (position: number) => view.getUint16(RING - BASE + 16 * position + 14, true);
  const healthyReq = new VirtqRequest(4);
  const tokens = new Float64Array(8);
  const lens = new Uint32Array(8);
  /** A request through another queue on the same memory: proves it is unaffected. */
  const healthyRoundTrip = () => {
    healthyDriver.beginChain();
    healthyDriver.addSegment(DATA + 0x8000, 64, false);
    healthyDriver.addSegment(DATA + 0x9000, 64, true);
    expect(healthyDriver.endChain(9)).toBeGreaterThanOrEqual(0);
    healthyDriver.publish();
    expect(healthy.pop(healthyReq)).toBe(true);
    expect(healthy.pushUsed(healthyReq.head, 64)).toBe(true);
    healthy.flushUsed();
    expect(healthyDriver.reapUsed(tokens, lens)).toBe(1);
    expect(tokens[0]).toBe(9);
    expect(healthy.broken).toBe(false);
  };
  return { size, buffer, bytes, view, memory, layout, rings, driver, queue, flagsAt, healthyRoundTrip };
}

function postChain(driver: PackedVringDriver, token: number, lengths: number[], writable = true): number {
  driver.beginChain();
  for (let i = 0; i < lengths.length; i++) driver.addSegment(DATA + token * 0x1000 + i * 0x100, lengths[i], writable);
  return driver.endChain(token);
}

describe('PackedVirtqueue: popping chains', () => {
  it('pops a header / data / status chain; the buffer id is the request head', () => {
    const { driver, queue, bytes } = fixture();
    for (let i = 0; i < 16; i++) bytes[DATA - BASE + i] = i + 1;
    driver.beginChain();
    driver.addSegment(DATA, 16, false);
    driver.addSegment(DATA + 0x1000, 512, true);
    driver.addSegment(DATA + 0x2000, 1, true);
    const id = driver.endChain(42);
    const req = new VirtqRequest(8);
    expect(queue.pop(req)).toBe(false); // not published yet: the head's flags are not stored
    driver.publish();
    expect(queue.availableCount()).toBe(1);
    expect(queue.pop(req)).toBe(true);
    expect(req.head).toBe(id);
    expect(req.segmentCount).toBe(3);
    expect(req.descriptorCount).toBe(3);
    expect(req.readableCount).toBe(1);
    expect(req.readableBytes).toBe(16);
    expect(req.writableBytes).toBe(513);
    const header = new Uint8Array(16);
    expect(req.gather(header, 0, 0, 16)).toBe(16);
    expect(Array.from(header)).toEqual(Array.from({ length: 16 }, (_, i) => i + 1));
    expect(req.writeWritableByte(512, 0x5a)).toBe(true);
    expect(bytes[DATA + 0x2000 - BASE]).toBe(0x5a);
    expect(queue.pop(req)).toBe(false);
    expect(queue.broken).toBe(false);
    expect(queue.lastAvailIdx).toBe(0x8000 | 3); // three ring descriptors, wrap counter 1
    expect(queue.inFlight).toBe(1);
  });

  it('follows an indirect table (one ring descriptor), and a direct chain ending in one', () => {
    const { driver, queue, view } = fixture();
    driver.beginChain(true);
    driver.addSegment(DATA, 100, false);
    driver.addSegment(DATA + 100, 200, false);
    driver.addSegment(DATA + 300, 300, true);
    const id = driver.endChain(1);
    driver.publish();
    const req = new VirtqRequest(8);
    expect(queue.pop(req)).toBe(true);
    expect(req.head).toBe(id);
    expect(req.readableCount).toBe(2);
    expect(req.readableBytes).toBe(300);
    expect(req.writableBytes).toBe(300);
    expect(queue.lastAvailIdx).toBe(0x8001);

    // Ring 1 (direct, NEXT) → ring 2 (INDIRECT, id 5) whose table holds two entries; NEXT inside
    // the table is ignored (every entry is read).
    const table = new DataView(view.buffer, TABLES + 0x800 - BASE, 32);
    table.setUint32(0, DATA + 0x4000, true);
    table.setUint32(8, 16, true);
    table.setUint16(14, WRITE, true);
    table.setUint32(16, DATA + 0x5000, true);
    table.setUint32(24, 4, true);
    table.setUint16(30, WRITE, true);
    driver.writeDescriptor(2, TABLES + 0x800, 32, INDIRECT | AVAIL, 5);
    driver.writeDescriptor(1, DATA + 0x3000, 8, NEXT | AVAIL, 0);
    expect(queue.pop(req)).toBe(true);
    expect(req.head).toBe(5);
    expect(Array.from(req.segLength.subarray(0, req.segmentCount))).toEqual([8, 16, 4]);
    expect(req.readableCount).toBe(1);
    expect(queue.lastAvailIdx).toBe(0x8003);
  });

  it('reads from availableCount how many chains are offered, across the ring end', () => {
    const { driver, queue } = fixture({ size: 4 });
    const req = new VirtqRequest(4);
    postChain(driver, 0, [8, 8, 8]);
    driver.publish();
    expect(queue.pop(req)).toBe(true);
    queue.pushUsed(req.head, 0);
    queue.flushUsed();
    expect(driver.reapUsed(new Float64Array(4), new Uint32Array(4))).toBe(1);
    postChain(driver, 1, [8, 8]); // positions 3, 0 (wrap counter 0 from position 0 on)
    postChain(driver, 2, [8]);
    driver.publish();
    expect(queue.availableCount()).toBe(2);
    expect(queue.pop(req)).toBe(true);
    expect(req.descriptorCount).toBe(2);
    expect(queue.lastAvailIdx).toBe(1); // position 1, wrap counter 0
    expect(queue.pop(req)).toBe(true);
    expect(queue.lastAvailIdx).toBe(2);
  });
});

describe('PackedVirtqueue: used descriptors', () => {
  it('writes buffer ids completed out of order at the next used position, advanced by chain length', () => {
    const { driver, queue, view, flagsAt } = fixture();
    const ids = [postChain(driver, 100, [16, 16]), postChain(driver, 101, [16]), postChain(driver, 102, [16, 16, 16])];
    driver.publish();
    const reqs = [new VirtqRequest(4), new VirtqRequest(4), new VirtqRequest(4)];
    for (const r of reqs) expect(queue.pop(r)).toBe(true);
    expect(reqs.map((r) => r.head)).toEqual(ids);
    expect(queue.pushUsed(reqs[2].head, 7)).toBe(true); // 3 descriptors: at position 0
    expect(queue.pushUsed(reqs[0].head, 5)).toBe(true); // 2 descriptors: at position 3
    expect(driver.hasUsed()).toBe(false); // not yet visible
    expect(flagsAt(0) & (AVAIL | USED)).toBe(AVAIL); // still the driver's offer
    queue.flushUsed();
    expect(flagsAt(0) & (AVAIL | USED)).toBe(AVAIL | USED);
    expect(view.getUint16(RING - BASE + 12, true)).toBe(ids[2]);
    expect(view.getUint32(RING - BASE + 8, true)).toBe(7);
    expect(flagsAt(3) & (AVAIL | USED)).toBe(AVAIL | USED);
    expect(view.getUint16(RING - BASE + 3 * 16 + 12, true)).toBe(ids[0]);
    expect(queue.usedIdx).toBe(0x8005);
    const tokens = new Float64Array(4);
    const lens = new Uint32Array(4);
    expect(driver.reapUsed(tokens, lens)).toBe(2);
    expect(Array.from(tokens.subarray(0, 2))).toEqual([102, 100]);
    expect(Array.from(lens.subarray(0, 2))).toEqual([7, 5]);
    expect(queue.inFlight).toBe(1);
    expect(driver.freeDescriptors).toBe(8 - 1);
  });

  it('unpop gives back the chain popped last (newest first), across the ring end; not an older one', () => {
    const { driver, queue, flagsAt } = fixture({ size: 4 });
    const first = new VirtqRequest(4);
    for (let i = 0; i < 3; i++) postChain(driver, 10 + i, [64]);
    driver.publish();
    for (let i = 0; i < 3; i++) {
      expect(queue.pop(first)).toBe(true);
      queue.pushUsed(first.head, 0);
    }
    queue.flushUsed();
    expect(driver.reapUsed(new Float64Array(4), new Uint32Array(4))).toBe(3);
    const a = postChain(driver, 1, [64, 64]); // positions 3, 0 (wraps)
    const b = postChain(driver, 2, [64]); // position 1
    driver.publish();
    const ra = new VirtqRequest(4);
    const rb = new VirtqRequest(4);
    expect(queue.pop(ra)).toBe(true);
    expect(queue.pop(rb)).toBe(true);
    expect([ra.head, rb.head]).toEqual([a, b]);
    expect(queue.lastAvailIdx).toBe(2); // wrap counter flipped to 0
    expect(queue.unpop(ra)).toBe(false); // not the newest
    expect(queue.unpop(rb)).toBe(true);
    expect(queue.unpop(rb)).toBe(false); // no longer in flight
    expect(queue.unpop(ra)).toBe(true);
    expect(queue.lastAvailIdx).toBe(0x8000 | 3);
    expect(queue.inFlight).toBe(0);
    expect(flagsAt(3) & USED).toBe(0); // nothing written to the ring
    // The same chains pop again, in order.
    expect(queue.pop(rb)).toBe(true);
    expect(rb.head).toBe(a);
    expect(queue.pop(ra)).toBe(true);
    expect(ra.head).toBe(b);
  });

  it('ignores pushUsed for ids that are not in flight', () => {
    const { queue, flagsAt } = fixture();
    expect(queue.pushUsed(3, 1)).toBe(false);
    expect(queue.pushUsed(99, 1)).toBe(false);
    expect(queue.pushUsed(-1, 1)).toBe(false);
    queue.flushUsed();
    expect(queue.usedIdx).toBe(0x8000);
    expect(flagsAt(0)).toBe(0);
  });

  it('survives many laps with mixed chain lengths, indirect tables and out-of-order completion', () => {
    for (const eventIdx of [false, true]) {
      const { driver, queue } = fixture({ size: 8, eventIdx });
      let seed = 12345;
      const random = (n: number) => {
        seed = (Math.imul(seed, 1103515245) + 12345) & 0x7fffffff;
        return seed % n;
      };
      const pool = Array.from({ length: 8 }, () => new VirtqRequest(8));
      const held: VirtqRequest[] = [];
      const tokens = new Float64Array(8);
      const lens = new Uint32Array(8);
      const expected = new Map<number, number>(); // token in flight → the length the device will write
      let nextToken = 1;
      let reaped = 0;
      for (let round = 0; round < 3000; round++) {
        // Post a few chains while there is room.
        const want = random(3);
        for (let c = 0; c < want; c++) {
          const segments = 1 + random(3);
          const indirect = random(4) === 0;
          driver.beginChain(indirect);
          const token = nextToken;
          for (let s = 0; s < segments; s++) driver.addSegment(DATA + s * 0x100, 16 + s, s === segments - 1);
          if (driver.endChain(token) >= 0) {
            expected.set(token, 16 + segments - 1); // the last segment is the writable one
            nextToken++;
          }
        }
        driver.publish();
        while (pool.length > 0) {
          const req = pool.pop()!;
          if (!queue.pop(req)) {
            pool.push(req);
            break;
          }
          held.push(req);
        }
        // Complete a random subset in random order.
        const completions = random(held.length + 1);
        for (let k = 0; k < completions; k++) {
          const req = held.splice(random(held.length), 1)[0];
          const written = req.writableBytes;
          expect(queue.pushUsed(req.head, written)).toBe(true);
          pool.push(req);
        }
        queue.flushUsed();
        queue.needsCall();
        const n = driver.reapUsed(tokens, lens);
        for (let i = 0; i < n; i++) {
          expect(lens[i]).toBe(expected.get(tokens[i]));
          expected.delete(tokens[i]);
        }
        reaped += n;
      }
      expect(queue.broken).toBe(false);
      expect(driver.broken).toBe(false);
      expect(reaped).toBeGreaterThan(2000);
      expect(queue.inFlight).toBe(held.length);
      expect(driver.inFlight).toBe(held.length);
      expect(expected.size).toBe(held.length);
    }
  });

  it('resumes where GET_VRING_BASE said (a new queue on the same ring, as after a restart)', () => {
    const { driver, queue, memory, rings } = fixture({ size: 4 });
    const req = new VirtqRequest(4);
    const tokens = new Float64Array(4);
    const lens = new Uint32Array(4);
    for (let i = 0; i < 3; i++) {
      postChain(driver, i, [8, 8]);
      driver.publish();
      expect(queue.pop(req)).toBe(true);
      queue.pushUsed(req.head, 1);
      queue.flushUsed();
      expect(driver.reapUsed(tokens, lens)).toBe(1);
    }
    const base = queue.lastAvailIdx;
    expect(base).toBe(2); // 6 descriptors on a ring of 4: position 2, wrap counter 0
    const resumed = createVirtqueue({ memory, size: 4, ...rings, packed: true, lastAvailIdx: base });
    expect(resumed).toBeInstanceOf(PackedVirtqueue);
    expect(resumed.usedIdx).toBe(base); // used = avail (PROTOCOL-NOTES)
    postChain(driver, 7, [8]);
    driver.publish();
    expect(resumed.pop(req)).toBe(true);
    resumed.pushUsed(req.head, 3);
    resumed.flushUsed();
    expect(driver.reapUsed(tokens, lens)).toBe(1);
    expect(tokens[0]).toBe(7);
    expect(lens[0]).toBe(3);
    expect(createVirtqueue({ memory, size: 4, ...rings })).toBeInstanceOf(SplitVirtqueue);
  });
});

describe('PackedVirtqueue: event suppression', () => {
  it('without EVENT_IDX: the device area says DISABLE / ENABLE; the driver area DISABLE suppresses calls', () => {
    const { driver, queue, view, layout } = fixture();
    const device = RING - BASE + layout.deviceOffset;
    const req = new VirtqRequest(4);
    queue.disableNotification();
    expect(view.getUint16(device + 2, true)).toBe(1);
    postChain(driver, 0, [8]);
    driver.publish();
    expect(driver.needsKick()).toBe(false);
    expect(queue.enableNotificationAndRecheck()).toBe(true); // work arrived while kicks were off
    expect(view.getUint16(device + 2, true)).toBe(0);
    expect(queue.pop(req)).toBe(true);
    expect(queue.enableNotificationAndRecheck()).toBe(false); // safe to sleep
    postChain(driver, 1, [8]);
    driver.publish();
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
    driver.enableCallbacks();
    postChain(driver, 2, [8]);
    driver.publish();
    expect(queue.pop(req)).toBe(true);
    queue.pushUsed(req.head, 8);
    queue.flushUsed();
    expect(queue.needsCall()).toBe(true);
  });

  it('with EVENT_IDX: the device asks for a kick at its next avail position (DESC mode)', () => {
    const { driver, queue, view, layout } = fixture({ eventIdx: true, size: 4 });
    const device = RING - BASE + layout.deviceOffset;
    const req = new VirtqRequest(4);
    queue.enableNotification();
    expect(view.getUint16(device, true)).toBe(0x8000);
    expect(view.getUint16(device + 2, true)).toBe(2);
    postChain(driver, 0, [8, 8]);
    driver.publish();
    expect(driver.needsKick()).toBe(true); // passed position 0
    postChain(driver, 1, [8]);
    driver.publish();
    expect(driver.needsKick()).toBe(false); // the device has not asked again
    expect(queue.pop(req)).toBe(true);
    queue.pushUsed(req.head, 1);
    expect(queue.pop(req)).toBe(true);
    queue.pushUsed(req.head, 1);
    queue.flushUsed();
    expect(queue.enableNotificationAndRecheck()).toBe(false);
    expect(view.getUint16(device, true)).toBe(0x8003);
    driver.reapUsed(new Float64Array(4), new Uint32Array(4));
    postChain(driver, 2, [8, 8]); // positions 3 and 0: crosses the ring end
    driver.publish();
    expect(driver.needsKick()).toBe(true);
    expect(queue.pop(req)).toBe(true);
    expect(queue.enableNotificationAndRecheck()).toBe(false);
    expect(view.getUint16(device, true)).toBe(0x0001); // position 1, wrap counter 0
    queue.disableNotification();
    expect(view.getUint16(device + 2, true)).toBe(1);
  });

  it('with EVENT_IDX: calls only when the driver’s off_wrap is passed, across the ring end', () => {
    const { driver, queue, view, layout } = fixture({ eventIdx: true, size: 4 });
    const driverArea = RING - BASE + layout.driverOffset;
    const req = new VirtqRequest(4);
    const tokens = new Float64Array(4);
    const lens = new Uint32Array(4);
    const complete = () => {
      expect(queue.pop(req)).toBe(true);
      queue.pushUsed(req.head, 8);
      queue.flushUsed();
    };
    // The driver wants a call when position 0 (wrap 1) is used: the first call is unconditional anyway.
    postChain(driver, 0, [8]);
    postChain(driver, 1, [8, 8]);
    driver.publish();
    complete();
    expect(queue.needsCall()).toBe(true);
    // The driver has not reaped: off_wrap still says position 0, which is behind.
    complete();
    expect(queue.needsCall()).toBe(false);
    expect(driver.reapUsed(tokens, lens)).toBe(2); // now off_wrap = position 3, wrap 1
    expect(view.getUint16(driverArea, true)).toBe(0x8003);
    postChain(driver, 2, [8, 8]); // positions 3, 0
    driver.publish();
    complete();
    expect(queue.needsCall()).toBe(true); // passed position 3
    expect(driver.reapUsed(tokens, lens)).toBe(1);
    expect(view.getUint16(driverArea, true)).toBe(0x0001); // position 1, wrap 0
    postChain(driver, 3, [8]);
    driver.publish();
    driver.disableCallbacks();
    complete();
    expect(queue.needsCall()).toBe(false);
  });
});

describe('PackedVirtqueue: hostile rings break only their queue', () => {
  function expectBroken(f: ReturnType<typeof fixture>, reason: number): void {
    const req = new VirtqRequest(64);
    const before = Array.from({ length: f.size }, (_, i) => f.flagsAt(i));
    expect(f.queue.pop(req)).toBe(false);
    expect(brokenReasonName(f.queue.brokenReason)).toBe(brokenReasonName(reason));
    expect(f.queue.describeBroken()).toContain(brokenReasonName(reason));
    // Nothing more happens on a broken queue: no pops, no used descriptors, no calls.
    expect(f.queue.pop(req)).toBe(false);
    expect(f.queue.pushUsed(0, 1)).toBe(false);
    f.queue.flushUsed();
    expect(f.queue.needsCall()).toBe(false);
    expect(f.queue.enableNotificationAndRecheck()).toBe(false);
    expect(Array.from({ length: f.size }, (_, i) => f.flagsAt(i))).toEqual(before);
    f.healthyRoundTrip();
  }

  it('a head offered with AVAIL and USED both equal to the wrap counter', () => {
    const f = fixture();
    f.driver.writeDescriptor(0, DATA, 8, AVAIL | USED, 0);
    expectBroken(f, BrokenReason.PACKED_FLAGS);
  });

  it('a head offered for the other lap is just not available (no break)', () => {
    const f = fixture();
    f.driver.writeDescriptor(0, DATA, 8, USED, 0);
    expect(f.queue.pop(new VirtqRequest(4))).toBe(false);
    expect(f.queue.broken).toBe(false);
  });

  it('a buffer id out of range', () => {
    const f = fixture();
    f.driver.writeDescriptor(0, DATA, 8, AVAIL, 8);
    expectBroken(f, BrokenReason.HEAD_OUT_OF_RANGE);
  });

  it('a buffer id already in flight', () => {
    const f = fixture();
    f.driver.writeDescriptor(0, DATA, 8, AVAIL, 3);
    expect(f.queue.pop(new VirtqRequest(4))).toBe(true);
    f.driver.writeDescriptor(1, DATA, 8, AVAIL, 3);
    expectBroken(f, BrokenReason.HEAD_IN_FLIGHT);
  });

  it('a chain longer than the ring', () => {
    const f = fixture();
    for (let i = 7; i >= 0; i--) f.driver.writeDescriptor(i, DATA + i * 16, 8, NEXT | AVAIL, 0);
    expectBroken(f, BrokenReason.CHAIN_LOOP);
  });

  it('a chain running into slots still in flight', () => {
    const f = fixture();
    const req = new VirtqRequest(8);
    for (let i = 5; i >= 0; i--) f.driver.writeDescriptor(i, DATA, 8, (i < 5 ? NEXT : 0) | AVAIL, 1);
    expect(f.queue.pop(req)).toBe(true); // positions 0–5 in flight
    // Positions 6, 7 (wrap 1) then 0 (wrap 0, still ours): the chain overruns.
    f.driver.writeDescriptor(0, DATA, 8, USED, 2);
    f.driver.writeDescriptor(7, DATA, 8, NEXT | AVAIL, 2);
    f.driver.writeDescriptor(6, DATA, 8, NEXT | AVAIL, 2);
    expectBroken(f, BrokenReason.PACKED_RING_OVERRUN);
  });

  it('indirect inside indirect, with NEXT, not negotiated, or of a bad length', () => {
    const table = (f: ReturnType<typeof fixture>, flags: number) => {
      const t = new DataView(f.buffer, TABLES - BASE, 32);
      t.setUint32(0, DATA, true);
      t.setUint32(8, 32, true);
      t.setUint16(14, flags, true);
    };
    let f = fixture();
    table(f, INDIRECT);
    f.driver.writeDescriptor(0, TABLES, 16, INDIRECT | AVAIL, 0);
    expectBroken(f, BrokenReason.INDIRECT_NESTED);
    f = fixture();
    f.driver.writeDescriptor(0, TABLES, 16, INDIRECT | NEXT | AVAIL, 0);
    expectBroken(f, BrokenReason.INDIRECT_WITH_NEXT);
    f = fixture({ indirect: false });
    f.driver.writeDescriptor(0, TABLES, 16, INDIRECT | AVAIL, 0);
    expectBroken(f, BrokenReason.INDIRECT_NOT_NEGOTIATED);
    f = fixture();
    f.driver.writeDescriptor(0, TABLES, 24, INDIRECT | AVAIL, 0);
    expectBroken(f, BrokenReason.INDIRECT_BAD_LENGTH);
  });

  it('zero lengths, readable after writable, buffers outside memory or crossing its end', () => {
    let f = fixture();
    f.driver.writeDescriptor(0, DATA, 0, AVAIL, 0);
    expectBroken(f, BrokenReason.ZERO_LENGTH);
    f = fixture();
    f.driver.writeDescriptor(1, DATA, 8, AVAIL, 0);
    f.driver.writeDescriptor(0, DATA, 8, WRITE | NEXT | AVAIL, 0);
    expectBroken(f, BrokenReason.READABLE_AFTER_WRITABLE);
    f = fixture();
    f.driver.writeDescriptor(0, 0x10, 8, AVAIL, 0);
    expectBroken(f, BrokenReason.ADDR_OUTSIDE_MEMORY);
    f = fixture();
    f.driver.writeDescriptor(0, BASE + MiB - 4, 8, AVAIL, 0);
    expectBroken(f, BrokenReason.ADDR_CROSSES_REGION);
  });

  it('ring areas outside memory or misaligned, a start position beyond the ring, a bad size', () => {
    const { memory } = fixture();
    const at = (desc: number, driver: number, device: number, extra: object = {}) =>
      new PackedVirtqueue({ memory, size: 8, descAddr: desc, availAddr: driver, usedAddr: device, ...extra });
    expect(at(0x1000, RING + 128, RING + 132).brokenReason).toBe(BrokenReason.RING_ADDRESS);
    expect(at(RING, RING + 128, BASE + MiB).brokenReason).toBe(BrokenReason.RING_ADDRESS);
    expect(at(RING + 8, RING + 128, RING + 132).brokenReason).toBe(BrokenReason.RING_MISALIGNED);
    expect(at(RING, RING + 130, RING + 136).brokenReason).toBe(BrokenReason.RING_MISALIGNED);
    expect(at(RING, RING + 128, RING + 132, { lastAvailIdx: 0x8008 }).brokenReason).toBe(BrokenReason.PACKED_BAD_BASE);
    expect(at(RING, RING + 128, RING + 132, { size: 6 }).brokenReason).toBe(BrokenReason.BAD_SIZE);
    expect(at(RING, RING + 128, RING + 132).broken).toBe(false);
  });
});

describe('PackedVirtqueue: random rings', () => {
  it('never throws on garbage: each pop either yields a well-formed request or breaks with a named reason', () => {
    let seed = 99;
    const random = (n: number) => {
      seed = (Math.imul(seed, 1103515245) + 12345) & 0x7fffffff;
      return seed % n;
    };
    const reasons = new Set<string>();
    for (let trial = 0; trial < 400; trial++) {
      const f = fixture({ size: 8, eventIdx: random(2) === 0, indirect: random(2) === 0 });
      // Garbage indirect tables and ring descriptors, biased towards plausible values.
      const tables = new DataView(f.buffer, TABLES - BASE, 0x1000);
      for (let i = 0; i < 0x1000; i += 4) tables.setUint32(i, random(3) === 0 ? DATA + random(0x1000) : random(64), true);
      for (let p = 0; p < 8; p++) {
        const kind = [0, 0, 0, NEXT, NEXT, WRITE, NEXT | WRITE, INDIRECT][random(8)];
        const flags = kind | (random(5) ? AVAIL : 0) | (random(8) ? 0 : USED);
        const addr = random(5)
          ? DATA + 16 * random(0x400)
          : [TABLES + 16 * random(8), random(2 ** 20), BASE + MiB - 8][random(3)];
        const length = kind & INDIRECT ? 16 * random(4) + random(2) * 8 : [16, 32, 4096, 1, 0, 0xffff_ffff][random(6)];
        f.driver.writeDescriptor(p, addr, length, flags, random(9));
      }
      const req = new VirtqRequest(16);
      for (let step = 0; step < 12; step++) {
        const popped = f.queue.pop(req);
        if (popped) {
          expect(req.head).toBeLessThan(8);
          expect(req.segmentCount).toBeGreaterThan(0);
          expect(req.readableCount + req.writableCount).toBe(req.segmentCount);
          if (random(2) === 0) f.queue.pushUsed(req.head, req.writableBytes);
          f.queue.flushUsed();
          f.queue.needsCall();
        } else if (f.queue.broken) {
          const name = brokenReasonName(f.queue.brokenReason);
          expect(name).not.toMatch(/^UNKNOWN/);
          reasons.add(name);
          break;
        }
      }
      f.healthyRoundTrip();
    }
    // The garbage reached many of the checks, not just one.
    expect(reasons.size).toBeGreaterThanOrEqual(8);
  });
});
