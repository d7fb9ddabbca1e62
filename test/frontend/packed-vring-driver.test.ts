// The packed driver's own bookkeeping (the ring itself is tested against it in
// test/dataplane/packed-virtqueue.test.ts): one release store publishes a batch, an aborted chain
// leaves nothing the device could take, and reaping reads no further than what is in flight.
import { describe, expect, it } from 'vitest';
import { GuestMemory } from '../../dist/dataplane/memory.js';
import { VirtqRequest } from '../../dist/dataplane/request.js';
import { PackedVirtqueue } from '../../dist/dataplane/packed-virtqueue.js';
import { PackedVringDriver, packedRingLayout } from '../../dist/frontend/packed-vring-driver.js';

const MiB = 1 << 20;
const DATA = 0x20000;
const AVAIL = 1 << 7;
const USED = 1 << 15;

function fixture(size = 8) {
  const buffer = new SharedArrayBuffer(MiB);
  const memory = new GuestMemory([{ guestPhysAddr: 0, size: MiB, userspaceAddr: 0x7f00_0000_0000, buffer, bufferOffset: 0 }]);
  const layout = packedRingLayout(size);
  const rings = { descAddr: 0, availAddr: layout.driverOffset, usedAddr: layout.deviceOffset };
  const driver = new PackedVringDriver({ memory, size, ...rings });
  const queue = new PackedVirtqueue({ memory, size, ...rings, packed: true });
  const view = new DataView(buffer);
  return { driver, queue, flagsAt: (position: number) => view.getUint16(16 * position + 14, true) };
}

function post(driver: PackedVringDriver, token: number, segments: number): number {
  driver.beginChain();
  for (let i = 0; i < segments; i++) driver.addSegment(DATA + 0x100 * i, 64, i === segments - 1);
  return driver.endChain(token);
}

describe('PackedVringDriver', () => {
  it('publishes a batch with the first head: before publish() the device sees none of it', () => {
    const { driver, queue, flagsAt } = fixture();
    expect(post(driver, 1, 2)).toBeGreaterThanOrEqual(0);
    expect(post(driver, 2, 1)).toBeGreaterThanOrEqual(0);
    expect(post(driver, 3, 3)).toBeGreaterThanOrEqual(0);
    expect(flagsAt(0) & (AVAIL | USED)).toBe(0); // the first head is held back
    expect(flagsAt(2) & (AVAIL | USED)).toBe(AVAIL); // later heads are already stored
    const req = new VirtqRequest(8);
    expect(queue.pop(req)).toBe(false);
    driver.publish();
    const lengths: number[] = [];
    while (queue.pop(req)) lengths.push(req.segmentCount);
    expect(lengths).toEqual([2, 1, 3]);
    expect(queue.broken).toBe(false);
  });

  it('an aborted chain leaves no descriptor available behind a shorter chain posted in its place', () => {
    const { driver, queue } = fixture();
    driver.beginChain();
    for (let i = 0; i < 4; i++) driver.addSegment(DATA + 0x100 * i, 64, false);
    driver.abortChain();
    expect(post(driver, 7, 1)).toBeGreaterThanOrEqual(0);
    driver.publish();
    const req = new VirtqRequest(8);
    expect(queue.pop(req)).toBe(true);
    expect(queue.pop(req)).toBe(false);
    expect(queue.broken).toBe(false);
    expect(driver.freeDescriptors).toBe(7);
  });

  it('reaps across laps, reads nothing past the chains in flight, and breaks on an id not in flight', () => {
    const { driver, queue } = fixture(4);
    const req = new VirtqRequest(8);
    const tokens = new Float64Array(4);
    const lens = new Uint32Array(4);
    for (let lap = 0; lap < 20; lap++) {
      const segments = 1 + (lap % 3);
      expect(post(driver, lap, segments)).toBeGreaterThanOrEqual(0);
      driver.publish();
      expect(queue.pop(req)).toBe(true);
      expect(queue.pushUsed(req.head, 10 + lap)).toBe(true);
      queue.flushUsed();
      expect(driver.reapUsed(tokens, lens)).toBe(1);
      expect([tokens[0], lens[0]]).toEqual([lap, 10 + lap]);
    }
    // Nothing in flight: a forged used descriptor at the next used position is not even read.
    const position = (driver as unknown as { lastUsed: number }).lastUsed;
    const forged = (driver as unknown as { usedFlags: number }).usedFlags;
    driver.writeDescriptor(position, 0, 0, forged, 3);
    expect(driver.reapUsed(tokens, lens)).toBe(0);
    expect(driver.broken).toBe(false);
    // With a chain in flight it is, and it names an id that is not: the driver breaks.
    const id = post(driver, 99, 1);
    expect(id).toBeGreaterThanOrEqual(0);
    driver.writeDescriptor(position, 0, 0, forged, (id + 1) % 4);
    expect(driver.reapUsed(tokens, lens)).toBe(0);
    expect(driver.brokenReason).toContain('not in flight');
  });
});
