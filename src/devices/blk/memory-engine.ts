// The memory engine: a RAM disk in one SharedArrayBuffer that every worker shares (created on
// the control side, see BlkDevice.handlerSpec). Operations complete synchronously.
//
// Copies use plain loops over Uint32Array views when both sides are 4-byte aligned (sector data
// always is) and byte loops otherwise. `dst.set(src.subarray(...))` is 3–5× faster for ≥ 4 KiB
// (it becomes a memmove) but allocates a view per segment, and the hot path allocates nothing;
// measured on this machine: 32-bit loop ≈2–4 GB/s, set(subarray) ≈6–11 GB/s, byte loop ≈0.5–1 GB/s.
//
// A typed array holds at most 2^32 elements, so the disk is viewed in 1 GiB chunks and a copy
// that crosses a chunk boundary is split.
import type { GuestMemory } from '../../dataplane/memory.js';
import type { VirtqRequest } from '../../dataplane/request.js';
import { DataCursor, beginReadData, beginWriteData, type BlkEngine } from './engine.js';

const CHUNK_BYTES = 2 ** 30;

export class MemoryEngine implements BlkEngine {
  readonly completionFd = -1;
  readonly unsubmitted = 0;
  readonly synchronous = true;
  private readonly chunkBytes: Uint8Array[] = [];
  private readonly chunkWords: Uint32Array[] = [];
  private readonly cursor = new DataCursor();

  constructor(ramDisk: SharedArrayBuffer, capacityBytes: number) {
    for (let start = 0; start < capacityBytes; start += CHUNK_BYTES) {
      const length = Math.min(CHUNK_BYTES, capacityBytes - start);
      this.chunkBytes.push(new Uint8Array(ramDisk, start, length));
      this.chunkWords.push(new Uint32Array(ramDisk, start, Math.floor(length / 4)));
    }
  }

  ensureSlots(): void {}

  read(_slot: number, request: VirtqRequest, offset: number, length: number): number {
    const cursor = this.cursor;
    beginReadData(cursor, request, 0, length);
    let diskOffset = offset;
    while (cursor.next()) {
      this.copy(request.memory as GuestMemory, cursor.window, cursor.windowOffset, diskOffset, cursor.length, true);
      diskOffset += cursor.length;
    }
    return 0;
  }

  write(_slot: number, request: VirtqRequest, offset: number, length: number): number {
    const cursor = this.cursor;
    beginWriteData(cursor, request, 0, length);
    let diskOffset = offset;
    while (cursor.next()) {
      this.copy(request.memory as GuestMemory, cursor.window, cursor.windowOffset, diskOffset, cursor.length, false);
      diskOffset += cursor.length;
    }
    return 0;
  }

  /** RAM has no volatile cache in front of it. */
  flush(): number {
    return 0;
  }

  /** Discarded sectors read back as zeroes (the spec allows anything; zeroes are the useful choice). */
  discard(_slot: number, offset: number, length: number): number {
    this.zero(offset, length);
    return 0;
  }

  writeZeroes(_slot: number, offset: number, length: number): number {
    this.zero(offset, length);
    return 0;
  }

  submit(): void {}
  waitForCompletion(): void {}
  reap(): number {
    return 0;
  }
  setMemory(): void {}
  close(): void {}

  private copy(
    memory: GuestMemory,
    window: number,
    windowOffset: number,
    diskOffset: number,
    length: number,
    toGuest: boolean,
  ): void {
    const guestBytes = memory.windowBytesView[window];
    const guestWords = memory.windowWords[window];
    const skew = memory.windowSkew[window];
    let guestOffset = windowOffset;
    let left = length;
    while (left > 0) {
      const chunk = Math.floor(diskOffset / CHUNK_BYTES);
      const chunkOffset = diskOffset - chunk * CHUNK_BYTES;
      const n = left < CHUNK_BYTES - chunkOffset ? left : CHUNK_BYTES - chunkOffset;
      const guestWordOffset = guestOffset + skew;
      if (((guestWordOffset % 4) | (chunkOffset % 4) | (n % 4)) === 0) {
        if (toGuest) copyWords(this.chunkWords[chunk], chunkOffset / 4, guestWords, guestWordOffset / 4, n / 4);
        else copyWords(guestWords, guestWordOffset / 4, this.chunkWords[chunk], chunkOffset / 4, n / 4);
      } else if (toGuest) {
        copyBytes(this.chunkBytes[chunk], chunkOffset, guestBytes, guestOffset, n);
      } else {
        copyBytes(guestBytes, guestOffset, this.chunkBytes[chunk], chunkOffset, n);
      }
      left -= n;
      guestOffset += n;
      diskOffset += n;
    }
  }

  private zero(offset: number, length: number): void {
    let position = offset;
    const end = offset + length;
    while (position < end) {
      const chunk = Math.floor(position / CHUNK_BYTES);
      const chunkOffset = position - chunk * CHUNK_BYTES;
      const n = Math.min(end - position, CHUNK_BYTES - chunkOffset);
      this.chunkBytes[chunk].fill(0, chunkOffset, chunkOffset + n);
      position += n;
    }
  }
}

function copyWords(src: Uint32Array, srcIndex: number, dst: Uint32Array, dstIndex: number, count: number): void {
  let s = srcIndex;
  let d = dstIndex;
  const end = srcIndex + count;
  // Four per iteration: ~1.5× the plain loop in V8.
  const end4 = end - 3;
  while (s < end4) {
    dst[d] = src[s]!;
    dst[d + 1] = src[s + 1]!;
    dst[d + 2] = src[s + 2]!;
    dst[d + 3] = src[s + 3]!;
    s += 4;
    d += 4;
  }
  while (s < end) dst[d++] = src[s++]!;
}

function copyBytes(src: Uint8Array, srcIndex: number, dst: Uint8Array, dstIndex: number, count: number): void {
  let s = srcIndex;
  let d = dstIndex;
  const end = srcIndex + count;
  while (s < end) dst[d++] = src[s++]!;
}
