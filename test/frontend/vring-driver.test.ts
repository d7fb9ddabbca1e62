import { describe, expect, it } from 'vitest';
import { GuestMemory } from '../../dist/dataplane/memory.js';
import { VringDriver, indirectTablesBytes, splitRingLayout } from '../../dist/frontend/vring-driver.js';

const MiB = 1 << 20;

describe('splitRingLayout', () => {
  it('places desc (16·n), avail (6 + 2·n) and used (6 + 8·n, 4-aligned) back to back', () => {
    expect(splitRingLayout(256)).toEqual({
      size: 256,
      descOffset: 0,
      descBytes: 4096,
      availOffset: 4096,
      availBytes: 518,
      usedOffset: 4616,
      usedBytes: 2054,
      totalBytes: 6670,
    });
    const one = splitRingLayout(1);
    expect(one.availOffset).toBe(16);
    expect(one.usedOffset).toBe(24); // 16 + 8 = 24, already 4-aligned
    expect(splitRingLayout(2).usedOffset).toBe(44); // 32 + 10 = 42 → 44
    expect(splitRingLayout(32768).totalBytes).toBe(16 * 32768 + 6 + 2 * 32768 + 2 + 6 + 8 * 32768);
  });
  it('supports the legacy 4096-byte used ring alignment', () => {
    expect(splitRingLayout(256, 4096).usedOffset).toBe(8192);
  });
  it('refuses sizes that are not powers of two in [1, 32768]', () => {
    for (const size of [0, 3, 65536, -4]) expect(() => splitRingLayout(size)).toThrow(/power of two/);
  });
});

function fixture(options: { size?: number; eventIdx?: boolean; indirect?: boolean } = {}) {
  const size = options.size ?? 8;
  const buffer = new SharedArrayBuffer(MiB);
  const memory = new GuestMemory([{ guestPhysAddr: 0, size: MiB, userspaceAddr: 0, buffer, bufferOffset: 0 }]);
  const layout = splitRingLayout(size);
  const driver = new VringDriver({
    memory,
    size,
    descAddr: 0,
    availAddr: layout.availOffset,
    usedAddr: layout.usedOffset,
    eventIdx: options.eventIdx ?? false,
    indirect: options.indirect === false ? undefined : { tableAddr: 0x10000, maxEntries: 4 },
  });
  const view = new DataView(buffer);
  const desc = (i: number) => ({
    addr: view.getUint32(16 * i, true) + view.getUint32(16 * i + 4, true) * 2 ** 32,
    len: view.getUint32(16 * i + 8, true),
    flags: view.getUint16(16 * i + 12, true),
    next: view.getUint16(16 * i + 14, true),
  });
  const tableDesc = (head: number, i: number) => {
    const o = 0x10000 + (head * 4 + i) * 16;
    return {
      addr: view.getUint32(o, true) + view.getUint32(o + 4, true) * 2 ** 32,
      len: view.getUint32(o + 8, true),
      flags: view.getUint16(o + 12, true),
      next: view.getUint16(o + 14, true),
    };
  };
  const avail = (slot: number) => view.getUint16(layout.availOffset + 4 + 2 * slot, true);
  const availIdx = () => view.getUint16(layout.availOffset + 2, true);
  const availFlags = () => view.getUint16(layout.availOffset, true);
  const usedEvent = () => view.getUint16(layout.availOffset + 4 + 2 * size, true);
  const completeUsed = (entries: Array<[number, number]>) => {
    let idx = view.getUint16(layout.usedOffset + 2, true);
    for (const [head, len] of entries) {
      const slot = idx & (size - 1);
      view.setUint32(layout.usedOffset + 4 + 8 * slot, head, true);
      view.setUint32(layout.usedOffset + 8 + 8 * slot, len, true);
      idx = (idx + 1) & 0xffff;
    }
    view.setUint16(layout.usedOffset + 2, idx, true);
  };
  const setUsedFlags = (flags: number) => view.setUint16(layout.usedOffset, flags, true);
  const setAvailEvent = (value: number) => view.setUint16(layout.usedOffset + 4 + 8 * size, value, true);
  return { size, driver, desc, tableDesc, avail, availIdx, availFlags, usedEvent, completeUsed, setUsedFlags, setAvailEvent };
}

describe('VringDriver: posting chains', () => {
  it('writes linked descriptors, readable then writable, and publishes avail.idx once per batch', () => {
    const f = fixture();
    f.driver.beginChain();
    f.driver.addSegment(0x2000, 16, false);
    f.driver.addSegment(0x1_2345_6000, 4096, true); // above 4 GiB: high word used
    f.driver.addSegment(0x3000, 1, true);
    const head = f.driver.endChain(77);
    expect(head).toBe(0);
    expect(f.desc(0)).toEqual({ addr: 0x2000, len: 16, flags: 1, next: 1 });
    expect(f.desc(1)).toEqual({ addr: 0x1_2345_6000, len: 4096, flags: 3, next: 2 });
    expect(f.desc(2)).toMatchObject({ addr: 0x3000, len: 1, flags: 2 });
    expect(f.avail(0)).toBe(0);
    expect(f.availIdx()).toBe(0); // not yet published
    f.driver.beginChain();
    f.driver.addSegment(0x4000, 8, false);
    expect(f.driver.endChain(78)).toBe(3);
    f.driver.publish();
    expect(f.availIdx()).toBe(2);
    expect(f.driver.freeDescriptors).toBe(4);
    expect(f.driver.inFlight).toBe(2);
  });

  it('returns -1 and rolls back when descriptors run out, or for an empty chain', () => {
    const f = fixture({ size: 4 });
    f.driver.beginChain();
    for (let i = 0; i < 5; i++) f.driver.addSegment(0x2000 + i * 16, 16, false);
    expect(f.driver.endChain(1)).toBe(-1);
    expect(f.driver.freeDescriptors).toBe(4);
    f.driver.beginChain();
    expect(f.driver.endChain(2)).toBe(-1);
    for (let i = 0; i < 4; i++) {
      f.driver.beginChain();
      f.driver.addSegment(0x2000, 16, true);
      expect(f.driver.endChain(i)).toBeGreaterThanOrEqual(0);
    }
    expect(f.driver.freeDescriptors).toBe(0);
    f.driver.beginChain();
    f.driver.addSegment(0x2000, 16, true);
    expect(f.driver.endChain(9)).toBe(-1);
  });

  it('puts an indirect chain in the head’s table and one INDIRECT descriptor in the ring', () => {
    const f = fixture();
    f.driver.beginChain(true);
    f.driver.addSegment(0x2000, 16, false);
    f.driver.addSegment(0x3000, 512, true);
    const head = f.driver.endChain(5);
    expect(head).toBe(0);
    expect(f.desc(head)).toEqual({ addr: 0x10000, len: 32, flags: 4, next: 0 });
    expect(f.tableDesc(head, 0)).toEqual({ addr: 0x2000, len: 16, flags: 1, next: 1 });
    expect(f.tableDesc(head, 1)).toMatchObject({ addr: 0x3000, len: 512, flags: 2 });
    expect(f.driver.freeDescriptors).toBe(7);
    expect(indirectTablesBytes(8, 4)).toBe(512);
  });

  it('refuses an indirect chain longer than a table, or without tables configured', () => {
    const f = fixture();
    f.driver.beginChain(true);
    for (let i = 0; i < 5; i++) f.driver.addSegment(0x2000, 16, false);
    expect(f.driver.endChain(1)).toBe(-1);
    expect(f.driver.freeDescriptors).toBe(8);
    const g = fixture({ indirect: false });
    g.driver.beginChain(true);
    g.driver.addSegment(0x2000, 16, false);
    expect(g.driver.endChain(1)).toBe(-1);
  });
});

describe('VringDriver: reaping', () => {
  it('returns tokens and lengths in used order and recycles descriptors', () => {
    const f = fixture({ size: 4 });
    const tokens = new Float64Array(4);
    const lens = new Uint32Array(4);
    const heads = new Uint32Array(4);
    for (let round = 0; round < 10; round++) {
      const posted: number[] = [];
      for (let i = 0; i < 2; i++) {
        f.driver.beginChain(i === 1);
        f.driver.addSegment(0x2000, 16, false);
        f.driver.addSegment(0x3000, 16, true);
        posted.push(f.driver.endChain(round * 10 + i));
      }
      f.driver.publish();
      expect(posted).not.toContain(-1);
      f.completeUsed([
        [posted[1], 11],
        [posted[0], 22],
      ]);
      expect(f.driver.hasUsed()).toBe(true);
      expect(f.driver.reapUsed(tokens, lens, heads)).toBe(2);
      expect(Array.from(tokens.subarray(0, 2))).toEqual([round * 10 + 1, round * 10]);
      expect(Array.from(lens.subarray(0, 2))).toEqual([11, 22]);
      expect(Array.from(heads.subarray(0, 2))).toEqual([posted[1], posted[0]]);
      expect(f.driver.freeDescriptors).toBe(4);
    }
  });

  it('reaps at most as many entries as the output arrays hold', () => {
    const f = fixture();
    const heads: number[] = [];
    for (let i = 0; i < 3; i++) {
      f.driver.beginChain();
      f.driver.addSegment(0x2000, 16, true);
      heads.push(f.driver.endChain(i));
    }
    f.driver.publish();
    f.completeUsed(heads.map((h) => [h, 0] as [number, number]));
    const tokens = new Float64Array(2);
    const lens = new Uint32Array(2);
    expect(f.driver.reapUsed(tokens, lens)).toBe(2);
    expect(f.driver.reapUsed(tokens, lens)).toBe(1);
    expect(tokens[0]).toBe(2);
  });

  it('stops at a used entry naming a head that is not in flight (hostile back-end)', () => {
    const f = fixture();
    f.driver.beginChain();
    f.driver.addSegment(0x2000, 16, true);
    const head = f.driver.endChain(1);
    f.driver.publish();
    f.completeUsed([
      [head, 1],
      [head, 1],
    ]);
    const tokens = new Float64Array(4);
    const lens = new Uint32Array(4);
    expect(f.driver.reapUsed(tokens, lens)).toBe(1);
    expect(f.driver.broken).toBe(true);
    expect(f.driver.brokenReason).toMatch(/not in flight/);
    expect(f.driver.reapUsed(tokens, lens)).toBe(0);
  });

  it('stops when used.idx jumps beyond the ring size', () => {
    const f = fixture();
    f.completeUsed(Array.from({ length: 9 }, () => [0, 0] as [number, number]));
    expect(f.driver.reapUsed(new Float64Array(16), new Uint32Array(16))).toBe(0);
    expect(f.driver.brokenReason).toMatch(/jumped/);
  });
});

describe('VringDriver: notifications', () => {
  function post(f: ReturnType<typeof fixture>, token: number): number {
    f.driver.beginChain();
    f.driver.addSegment(0x2000, 16, true);
    const head = f.driver.endChain(token);
    f.driver.publish();
    return head;
  }

  it('without EVENT_IDX: kicks unless the device set NO_NOTIFY; callbacks toggle NO_INTERRUPT', () => {
    const f = fixture();
    expect(f.driver.needsKick()).toBe(false); // nothing published
    post(f, 0);
    expect(f.driver.needsKick()).toBe(true);
    expect(f.driver.needsKick()).toBe(false); // already kicked for it
    f.setUsedFlags(1);
    post(f, 1);
    expect(f.driver.needsKick()).toBe(false);
    f.driver.disableCallbacks();
    expect(f.availFlags()).toBe(1);
    f.driver.enableCallbacks();
    expect(f.availFlags()).toBe(0);
  });

  it('with EVENT_IDX: kicks only when avail_event is passed; used_event follows reaping', () => {
    const f = fixture({ eventIdx: true });
    f.setAvailEvent(0);
    const h0 = post(f, 0);
    expect(f.driver.needsKick()).toBe(true);
    const h1 = post(f, 1);
    expect(f.driver.needsKick()).toBe(false);
    f.setAvailEvent(2);
    post(f, 2);
    expect(f.driver.needsKick()).toBe(true);
    expect(f.usedEvent()).toBe(0);
    f.completeUsed([
      [h0, 0],
      [h1, 0],
    ]);
    expect(f.driver.reapUsed(new Float64Array(4), new Uint32Array(4))).toBe(2);
    expect(f.usedEvent()).toBe(2);
    f.driver.disableCallbacks();
    expect(f.driver.enableCallbacksAndRecheck()).toBe(false);
    expect(f.usedEvent()).toBe(2);
  });
});
