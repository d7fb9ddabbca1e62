import { describe, expect, it } from 'vitest';
import { GuestMemory, TRANSLATE_CROSSES, TRANSLATE_OUTSIDE, TRANSLATE_TOO_LONG } from '../../dist/dataplane/memory.js';

const MiB = 1 << 20;
const GiB = 2 ** 30;

function twoRegions(): { memory: GuestMemory; low: SharedArrayBuffer; high: SharedArrayBuffer } {
  const low = new SharedArrayBuffer(MiB);
  const high = new SharedArrayBuffer(2 * MiB);
  const memory = new GuestMemory([
    // Given out of address order on purpose: indices stay the caller's.
    { guestPhysAddr: 2 ** 32, size: MiB, userspaceAddr: 0x7f00_0010_0000, buffer: high, bufferOffset: 4096 },
    { guestPhysAddr: 0, size: MiB, userspaceAddr: 0x7f00_0000_0000, buffer: low, bufferOffset: 0 },
  ]);
  return { memory, low, high };
}

describe('GuestMemory translation', () => {
  it('maps a guest-physical range to its region, window and buffer offset', () => {
    const { memory } = twoRegions();
    expect(memory.regionCount).toBe(2);
    expect(memory.translate(0x1234, 16)).toBeGreaterThanOrEqual(0);
    expect(memory.outRegion).toBe(1);
    expect(memory.outBufferOffset).toBe(0x1234);
    expect(memory.outWindowOffset).toBe(0x1234);

    const w = memory.translate(2 ** 32 + 100, 8);
    expect(w).toBeGreaterThanOrEqual(0);
    expect(memory.outRegion).toBe(0);
    expect(memory.outBufferOffset).toBe(4096 + 100);
    expect(memory.windowRegion[w]).toBe(0);
  });

  it('reads and writes the same bytes through a window as through the buffer', () => {
    const { memory, high } = twoRegions();
    const w = memory.translate(2 ** 32 + 10, 4);
    memory.windowBytesView[w][memory.outWindowOffset] = 0xab;
    expect(new Uint8Array(high)[4096 + 10]).toBe(0xab);
  });

  it('accepts a range ending exactly at the region end and rejects one byte more', () => {
    const { memory } = twoRegions();
    expect(memory.translate(MiB - 16, 16)).toBeGreaterThanOrEqual(0);
    expect(memory.translate(MiB - 16, 17)).toBe(TRANSLATE_CROSSES);
  });

  it('rejects addresses outside every region', () => {
    const { memory } = twoRegions();
    expect(memory.translate(MiB, 1)).toBe(TRANSLATE_OUTSIDE);
    expect(memory.translate(2 ** 32 - 1, 1)).toBe(TRANSLATE_OUTSIDE);
    expect(memory.translate(2 ** 32 + MiB, 1)).toBe(TRANSLATE_OUTSIDE);
    expect(memory.translate(2 ** 60, 1)).toBe(TRANSLATE_OUTSIDE);
    expect(memory.translate(-1, 1)).toBe(TRANSLATE_OUTSIDE);
  });

  it('rejects a buffer crossing from one region into an adjacent one', () => {
    const a = new SharedArrayBuffer(MiB);
    const b = new SharedArrayBuffer(MiB);
    const memory = new GuestMemory([
      { guestPhysAddr: 0, size: MiB, userspaceAddr: 0, buffer: a, bufferOffset: 0 },
      { guestPhysAddr: MiB, size: MiB, userspaceAddr: MiB, buffer: b, bufferOffset: 0 },
    ]);
    expect(memory.translate(MiB - 8, 16)).toBe(TRANSLATE_CROSSES);
    expect(memory.translate(MiB - 8, 8)).toBeGreaterThanOrEqual(0);
    expect(memory.translate(MiB, 8)).toBeGreaterThanOrEqual(0);
  });

  it('finds regions whichever was hit last (the last-region fast path is only a hint)', () => {
    const { memory } = twoRegions();
    for (let i = 0; i < 10; i++) {
      memory.translate(i % 2 === 0 ? 5 : 2 ** 32 + 5, 1);
      expect(memory.outRegion).toBe(i % 2 === 0 ? 1 : 0);
    }
  });

  it('translates front-end virtual addresses (SET_VRING_ADDR) to guest-physical ones', () => {
    const { memory } = twoRegions();
    expect(memory.userspaceToGuest(0x7f00_0000_0000 + 0x40, 64)).toBe(0x40);
    expect(memory.userspaceToGuest(0x7f00_0010_0000 + 8, 8)).toBe(2 ** 32 + 8);
    expect(memory.userspaceToGuest(0x7f00_0000_0000 + MiB - 4, 8)).toBe(TRANSLATE_CROSSES);
    expect(memory.userspaceToGuest(0x1000, 8)).toBe(TRANSLATE_OUTSIDE);
  });

  it('an empty table translates nothing', () => {
    const memory = new GuestMemory([]);
    expect(memory.translate(0, 1)).toBe(TRANSLATE_OUTSIDE);
    expect(memory.userspaceToGuest(0, 1)).toBe(TRANSLATE_OUTSIDE);
  });
});

describe('GuestMemory validation (construction time)', () => {
  const buffer = new SharedArrayBuffer(MiB);
  it('refuses overlapping regions', () => {
    expect(
      () =>
        new GuestMemory([
          { guestPhysAddr: 0, size: MiB, userspaceAddr: 0, buffer, bufferOffset: 0 },
          { guestPhysAddr: MiB - 4096, size: 4096, userspaceAddr: 2 * MiB, buffer, bufferOffset: 0 },
        ]),
    ).toThrow(/overlap in the guest-physical/);
  });
  it('refuses a region larger than its mapping', () => {
    expect(() => new GuestMemory([{ guestPhysAddr: 0, size: MiB, userspaceAddr: 0, buffer, bufferOffset: 1 }])).toThrow(
      /exceeds its mapping/,
    );
  });
  it('refuses zero-size regions, non-integers and addresses at or beyond 2^53', () => {
    expect(() => new GuestMemory([{ guestPhysAddr: 0, size: 0, userspaceAddr: 0, buffer, bufferOffset: 0 }])).toThrow(
      /size is 0/,
    );
    expect(() => new GuestMemory([{ guestPhysAddr: 0.5, size: 8, userspaceAddr: 0, buffer, bufferOffset: 0 }])).toThrow(
      /integer/,
    );
    expect(() => new GuestMemory([{ guestPhysAddr: 2 ** 53 - 4, size: 8, userspaceAddr: 0, buffer, bufferOffset: 0 }])).toThrow(
      /2\^53/,
    );
  });
  it('refuses window sizes that are not powers of two in [2^21, 2^32]', () => {
    expect(() => new GuestMemory([], { windowBytes: 3 * MiB })).toThrow(/windowBytes/);
    expect(() => new GuestMemory([], { windowBytes: MiB })).toThrow(/windowBytes/);
    expect(() => new GuestMemory([], { windowBytes: 2 ** 33 })).toThrow(/windowBytes/);
  });
});

describe('GuestMemory windows', () => {
  it('a region no larger than a window has exactly one window', () => {
    const buffer = new SharedArrayBuffer(4 * MiB);
    const memory = new GuestMemory([{ guestPhysAddr: 0, size: 4 * MiB, userspaceAddr: 0, buffer, bufferOffset: 0 }], {
      windowBytes: 4 * MiB,
    });
    expect(memory.windowBytesView.length).toBe(1);
  });

  it('covers a large region with half-overlapping windows (2 MiB windows, 1 MiB stride)', () => {
    const size = 8 * MiB - 4096;
    const buffer = new SharedArrayBuffer(8 * MiB);
    const bytes = new Uint8Array(buffer);
    for (let i = 0; i < bytes.length; i++) bytes[i] = (i * 7 + (i >>> 8)) & 0xff;
    const memory = new GuestMemory([{ guestPhysAddr: 0x4000_0000, size, userspaceAddr: 0, buffer, bufferOffset: 4096 }], {
      windowBytes: 2 * MiB,
    });
    // Windows start every MiB; the last one reaches the region end: k = 0..6.
    expect(memory.windowBytesView.length).toBe(7);
    expect(memory.windowStride).toBe(MiB);
    // Every access of at most a stride is contiguous in one view, wherever it starts.
    for (const offset of [0, MiB - 1, MiB - 100, 2 * MiB - 3, 5 * MiB + 17, size - MiB, size - 1]) {
      const len = Math.min(MiB, size - offset);
      const w = memory.translate(0x4000_0000 + offset, len);
      expect(w, `offset ${offset}`).toBeGreaterThanOrEqual(0);
      const view = memory.windowBytesView[w];
      expect(memory.outWindowOffset + len).toBeLessThanOrEqual(view.length);
      expect(memory.outBufferOffset).toBe(4096 + offset);
      for (const probe of [0, len >>> 1, len - 1]) {
        expect(view[memory.outWindowOffset + probe]).toBe(bytes[4096 + offset + probe]);
      }
    }
  });

  it('hands a buffer longer than a stride out in window pieces that tile it exactly', () => {
    const size = 8 * MiB;
    const buffer = new SharedArrayBuffer(size);
    const memory = new GuestMemory([{ guestPhysAddr: 0, size, userspaceAddr: 0, buffer, bufferOffset: 0 }], {
      windowBytes: 2 * MiB,
    });
    expect(memory.translate(MiB / 2, 1.5 * MiB)).toBeGreaterThanOrEqual(0); // still inside window 0
    expect(memory.translate(MiB / 2, 1.5 * MiB + 1)).toBe(TRANSLATE_TOO_LONG);
    let gpa = MiB / 2 + 3;
    let remaining = 5 * MiB;
    let pieces = 0;
    while (remaining > 0) {
      const w = memory.translateSegment(gpa, remaining);
      expect(w).toBeGreaterThanOrEqual(0);
      const piece = memory.outPieceLength;
      expect(piece).toBeGreaterThan(0);
      expect(memory.outWindowOffset + piece).toBeLessThanOrEqual(memory.windowBytesView[w].length);
      expect(memory.windowBufferStart[w] + memory.outWindowOffset).toBe(gpa);
      gpa += piece;
      remaining -= piece;
      pieces++;
    }
    expect(remaining).toBe(0);
    expect(pieces).toBeLessThanOrEqual(4);
  });

  it('handles a real region above 4 GiB (a lazily committed 5 GiB SharedArrayBuffer)', () => {
    const size = 5 * GiB;
    const buffer = new SharedArrayBuffer(size); // untouched pages cost nothing
    const memory = new GuestMemory([{ guestPhysAddr: GiB, size, userspaceAddr: 0x7f00_0000_0000, buffer, bufferOffset: 0 }]);
    // Default windows: 4 GiB, stride 2 GiB → windows at 0, 2 and (last, reaching the end) 4 GiB offsets... k = 0..1.
    expect(memory.windowBytes).toBe(2 ** 32);
    const windows = memory.windowBytesView.length;
    expect(windows).toBe(2);
    const whole = new DataView(buffer);
    // A 64 KiB buffer straddling the 4 GiB offset (the end of window 0).
    const start = 2 ** 32 - 1000;
    const w = memory.translate(GiB + start, 65536);
    expect(w).toBe(1);
    const view = memory.windowBytesView[w];
    view[memory.outWindowOffset] = 0x11;
    view[memory.outWindowOffset + 65535] = 0x22;
    expect(whole.getUint8(start)).toBe(0x11);
    expect(whole.getUint8(start + 65535)).toBe(0x22);
    // The last byte of the region.
    const last = memory.translate(GiB + size - 1, 1);
    memory.windowBytesView[last][memory.outWindowOffset] = 0x33;
    expect(whole.getUint8(size - 1)).toBe(0x33);
    // Word views agree too (aligned access above 4 GiB).
    const wordWindow = memory.translate(GiB + 2 ** 32 + 64, 4);
    const words = memory.windowWords[wordWindow];
    words[(memory.outWindowOffset + memory.windowSkew[wordWindow]) >>> 2] = 0xdeadbeef;
    expect(whole.getUint32(2 ** 32 + 64, true)).toBe(0xdeadbeef);
  });
});
