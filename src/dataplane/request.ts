// The preallocated request descriptor: what a popped descriptor chain means to a device, as flat
// typed arrays of segments so that pop() fills it in place and the hot path allocates nothing.
// A worker keeps one VirtqRequest per in-flight slot and reuses it.
//
// Segments. Device-readable segments come first, [0, readableCount), then device-writable ones,
// [readableCount, segmentCount) (the walker rejects any other order). A segment is usually one
// descriptor; a descriptor longer than a window stride in a region larger than one window is
// split into several segments (see memory.ts), which devices cannot tell from a guest that used
// several descriptors. A segment is (window, windowOffset, length): JS code reads
// memory.windowBytesView[window][windowOffset, windowOffset + length) with plain loops (no
// subarray needed); native code (io_uring iovecs) wants (region, bufferOffset, length), which
// segmentRegion() / segmentBufferOffset() derive in O(1). The walker stores only the three
// arrays: every store per segment is on the hot path (three more cost ~8 ns per 3-descriptor chain).
import type { GuestMemory } from './memory.js';

export class VirtqRequest {
  /** Most segments this request can hold; a longer chain breaks the queue (TOO_MANY_SEGMENTS). */
  readonly capacity: number;
  /** Head descriptor index: the id to give pushUsed(). -1 when empty. */
  head = -1;
  /** Avail ring position (mod 2^16) the chain was popped from: lets the queue take it back unused (unpop). */
  availIdx = -1;
  /**
   * Pop position (mod queue size) under VIRTIO_F_IN_ORDER: the worker completes requests to the
   * driver in this order whatever order the device finishes them in. -1 otherwise.
   */
  orderSlot = -1;
  /** Memory the segments were translated against (the queue's table at pop time). */
  memory: GuestMemory | null = null;
  segmentCount = 0;
  readableCount = 0;
  writableCount = 0;
  readableBytes = 0;
  writableBytes = 0;
  /** Descriptors the chain held (data descriptors only; an indirect pointer does not count). */
  descriptorCount = 0;

  /** Per segment: index into memory.windowBytesView / windowWords / windowData. */
  readonly segWindow: Int32Array;
  /** Per segment: byte offset inside that window. */
  readonly segWindowOffset: Uint32Array;
  readonly segLength: Uint32Array;

  constructor(capacity: number) {
    if (!Number.isInteger(capacity) || capacity < 1 || capacity > 65536 * 4) {
      throw new RangeError(`request capacity must be an integer in [1, 262144], got ${capacity}`);
    }
    this.capacity = capacity;
    this.segWindow = new Int32Array(capacity);
    this.segWindowOffset = new Uint32Array(capacity);
    this.segLength = new Uint32Array(capacity);
  }

  /** Region (index into memory.buffers) of segment s. */
  segmentRegion(s: number): number {
    return (this.memory as GuestMemory).windowRegion[this.segWindow[s]];
  }

  /** Offset of segment s in its region's buffer: the iovec base is buffers[region] + this. */
  segmentBufferOffset(s: number): number {
    return (this.memory as GuestMemory).windowBufferStart[this.segWindow[s]] + this.segWindowOffset[s];
  }

  /** Whether segment s is device-writable (the writable ones are [readableCount, segmentCount)). */
  segmentWritable(s: number): boolean {
    return s >= this.readableCount;
  }

  reset(): void {
    this.head = -1;
    this.availIdx = -1;
    this.segmentCount = 0;
    this.readableCount = 0;
    this.writableCount = 0;
    this.readableBytes = 0;
    this.writableBytes = 0;
    this.descriptorCount = 0;
  }

  /**
   * Copies up to `length` device-readable bytes, starting `from` bytes into the readable part of
   * the chain, into dst[dstOffset...]. Returns the bytes copied (fewer if the chain is shorter).
   */
  gather(dst: Uint8Array, dstOffset: number, from: number, length: number): number {
    const memory = this.memory;
    if (memory === null) return 0;
    const views = memory.windowBytesView;
    let copied = 0;
    let skip = from;
    for (let s = 0; s < this.readableCount && copied < length; s++) {
      const segLength = this.segLength[s];
      if (skip >= segLength) {
        skip -= segLength;
        continue;
      }
      const view = views[this.segWindow[s]];
      let src = this.segWindowOffset[s] + skip;
      let n = segLength - skip;
      skip = 0;
      if (n > length - copied) n = length - copied;
      let d = dstOffset + copied;
      const end = src + n;
      while (src < end) dst[d++] = view[src++];
      copied += n;
    }
    return copied;
  }

  /**
   * Copies `length` bytes of src[srcOffset...] into the device-writable part of the chain,
   * starting `to` bytes into it. Returns the bytes copied (fewer if the chain is shorter).
   */
  scatter(src: Uint8Array, srcOffset: number, to: number, length: number): number {
    const memory = this.memory;
    if (memory === null) return 0;
    const views = memory.windowBytesView;
    let copied = 0;
    let skip = to;
    for (let s = this.readableCount; s < this.segmentCount && copied < length; s++) {
      const segLength = this.segLength[s];
      if (skip >= segLength) {
        skip -= segLength;
        continue;
      }
      const view = views[this.segWindow[s]];
      let dst = this.segWindowOffset[s] + skip;
      let n = segLength - skip;
      skip = 0;
      if (n > length - copied) n = length - copied;
      let p = srcOffset + copied;
      const end = dst + n;
      while (dst < end) view[dst++] = src[p++];
      copied += n;
    }
    return copied;
  }

  /** The device-readable byte at `position`, or -1 past the end. */
  readableByte(position: number): number {
    const memory = this.memory;
    if (memory === null) return -1;
    let skip = position;
    for (let s = 0; s < this.readableCount; s++) {
      const segLength = this.segLength[s];
      if (skip < segLength) return memory.windowBytesView[this.segWindow[s]][this.segWindowOffset[s] + skip];
      skip -= segLength;
    }
    return -1;
  }

  /** Writes one device-writable byte at `position` (e.g. a virtio-blk status); false past the end. */
  writeWritableByte(position: number, value: number): boolean {
    const memory = this.memory;
    if (memory === null) return false;
    let skip = position;
    for (let s = this.readableCount; s < this.segmentCount; s++) {
      const segLength = this.segLength[s];
      if (skip < segLength) {
        memory.windowBytesView[this.segWindow[s]][this.segWindowOffset[s] + skip] = value;
        return true;
      }
      skip -= segLength;
    }
    return false;
  }
}
