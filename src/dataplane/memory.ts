// Guest memory as the data plane sees it: an immutable table of regions, each a range of a
// SharedArrayBuffer (the native mmap of the region's fd), with allocation-free address translation.
//
// Windows. V8 (Node 20) caps a typed array at 2^32 elements, so a Uint8Array cannot span a region
// larger than 4 GiB (a DataView can, but typed arrays are what the hot path indexes). Each region
// is therefore covered by windows of `windowBytes` (default 2^32) that overlap by half: window k
// starts at region offset k * stride (stride = windowBytes / 2). Any access of at most `stride`
// bytes fits entirely in the window floor(offset / stride), so rings, indirect tables (≤ 1 MiB)
// and ordinary buffers never straddle a view. A data buffer longer than `stride` in a region
// larger than a window is handed out as several pieces (`translateSegment` + `pieceLength`).
// A region no larger than `windowBytes` has exactly one window: the common case pays nothing.
//
// Buffers crossing regions are rejected. A front-end's RAM blocks map 1:1 onto regions, so a
// buffer that starts in one region and ends in the next means hostile input or a hole in the
// table; accepting it would also force every consumer to handle discontiguous host memory.
//
// Immutability. A new memory table (SET_MEM_TABLE, ADD/REM_MEM_REG) is a new GuestMemory:
// construction only builds a few views per region. A worker swaps its instance at a safe point
// (between batches, after acknowledging the control thread); requests popped earlier keep a
// reference to the old instance, which keeps its buffers alive until they complete.
//
// Results. Translation methods return a window index (≥ 0) or a negative TRANSLATE_* code and
// leave the details in the `out*` fields, so the hot path allocates nothing.
import { isPowerOfTwo } from '../bits.js';

/** One region as validated by the control plane. All numbers are integers below 2^53. */
export interface MemoryRegion {
  /** Guest-physical address of the first byte (descriptor addresses use this space). */
  guestPhysAddr: number;
  size: number;
  /** Front-end virtual address of the first byte (SET_VRING_ADDR uses this space). */
  userspaceAddr: number;
  /** The mapping; the region occupies buffer[bufferOffset, bufferOffset + size). */
  buffer: SharedArrayBuffer;
  bufferOffset: number;
}

export interface GuestMemoryOptions {
  /**
   * Bytes per window view: a power of two from 2^21 to 2^32 (the default). Smaller values exist
   * so tests can exercise the window logic without multi-GiB buffers; the 2 MiB floor keeps
   * every ring structure (≤ 1 MiB) within one window stride.
   */
  windowBytes?: number;
}

/** No region contains the first byte. */
export const TRANSLATE_OUTSIDE = -1;
/** The first byte is inside a region but the range runs past its end (into a hole or another region). */
export const TRANSLATE_CROSSES = -2;
/** The range is inside one region but longer than a window stride (only from `translate`). */
export const TRANSLATE_TOO_LONG = -3;

const MAX_WINDOW_BYTES = 2 ** 32;
const MIN_WINDOW_BYTES = 2 ** 21;
const MAX_ADDRESS = 2 ** 53;

export class GuestMemory {
  readonly regionCount: number;
  /** Per region, in the caller's order (region i here is region i of the table given). */
  readonly buffers: readonly SharedArrayBuffer[];
  readonly windowBytes: number;
  /** Largest access guaranteed to fit one window (windowBytes / 2). */
  readonly windowStride: number;

  /** Per window: a byte view over the window. Index with the window offset from a translation. */
  readonly windowBytesView: readonly Uint8Array[];
  /**
   * Per window: a Uint32Array view starting at the 4-aligned buffer offset at or below the window
   * start. For a window offset `o`, the word index is (o + windowSkew[w]) >>> 2, valid when
   * ((o + windowSkew[w]) & 3) === 0.
   */
  readonly windowWords: readonly Uint32Array[];
  /** Per window: a DataView over the window (for accesses that are not word aligned). */
  readonly windowData: readonly DataView[];
  /** Per window: buffer start of the window modulo 4 (0 whenever the region start is aligned). */
  readonly windowSkew: Uint8Array;
  /** Per window: the region it belongs to. */
  readonly windowRegion: Int32Array;
  /** Per window: its start as an offset in the region's buffer. */
  readonly windowBufferStart: Float64Array;
  /** Per window: the guest-physical address of its first byte (the dirty log marks by address). */
  readonly windowGuestStart: Float64Array;

  // Region tables (caller's order), plus sorted permutations for the two address spaces.
  private readonly gpaStart: Float64Array;
  private readonly uaddrStart: Float64Array;
  private readonly regionSize: Float64Array;
  private readonly regionBufferOffset: Float64Array;
  private readonly regionFirstWindow: Int32Array;
  private readonly regionLastWindowK: Int32Array;
  private readonly byGpa: Int32Array;
  private readonly byUaddr: Int32Array;
  // The last region hit, as scalars: the fast path reads no typed array. (NaN start: no hit yet.)
  private hitStart = NaN;
  private hitSize = 0;
  private hitRegion = 0;
  private hitBufferOffset = 0;
  private hitFirstWindow = 0;
  private hitLastWindowK = 0;

  /** Region of the last successful translation. */
  outRegion = 0;
  /** Offset of the translated address inside its window view. */
  outWindowOffset = 0;
  /** Offset of the translated address inside the region's buffer (for io_uring iovecs). */
  outBufferOffset = 0;
  /** translateSegment: bytes of the range that lie in the returned window (≤ the length asked). */
  outPieceLength = 0;

  constructor(regions: readonly MemoryRegion[], options: GuestMemoryOptions = {}) {
    const windowBytes = options.windowBytes ?? MAX_WINDOW_BYTES;
    if (!isPowerOfTwo(windowBytes) || windowBytes < MIN_WINDOW_BYTES || windowBytes > MAX_WINDOW_BYTES) {
      throw new RangeError(`windowBytes must be a power of two in [2^21, 2^32], got ${windowBytes}`);
    }
    this.windowBytes = windowBytes;
    const stride = windowBytes / 2;
    this.windowStride = stride;

    const n = regions.length;
    this.regionCount = n;
    const slots = Math.max(1, n);
    this.gpaStart = new Float64Array(slots);
    this.uaddrStart = new Float64Array(slots);
    this.regionSize = new Float64Array(slots);
    this.regionBufferOffset = new Float64Array(slots);
    this.regionFirstWindow = new Int32Array(slots);
    this.regionLastWindowK = new Int32Array(slots);

    const buffers: SharedArrayBuffer[] = [];
    const bytes: Uint8Array[] = [];
    const words: Uint32Array[] = [];
    const data: DataView[] = [];
    const windowRegion: number[] = [];
    const windowStart: number[] = [];
    const windowGuest: number[] = [];
    for (let r = 0; r < n; r++) {
      const region = regions[r];
      const { guestPhysAddr, size, userspaceAddr, buffer, bufferOffset } = region;
      for (const [name, value] of [
        ['guestPhysAddr', guestPhysAddr],
        ['size', size],
        ['userspaceAddr', userspaceAddr],
        ['bufferOffset', bufferOffset],
      ] as const) {
        if (!Number.isSafeInteger(value) || value < 0) {
          throw new RangeError(`memory region ${r}: ${name} must be a non-negative integer below 2^53, got ${value}`);
        }
      }
      if (size === 0) throw new RangeError(`memory region ${r}: size is 0`);
      if (guestPhysAddr + size > MAX_ADDRESS || userspaceAddr + size > MAX_ADDRESS) {
        throw new RangeError(`memory region ${r}: ends beyond 2^53`);
      }
      if (!(buffer instanceof SharedArrayBuffer)) throw new TypeError(`memory region ${r}: buffer is not a SharedArrayBuffer`);
      if (bufferOffset + size > buffer.byteLength) {
        throw new RangeError(
          `memory region ${r}: [${bufferOffset}, ${bufferOffset + size}) exceeds its mapping of ${buffer.byteLength} bytes`,
        );
      }
      this.gpaStart[r] = guestPhysAddr;
      this.uaddrStart[r] = userspaceAddr;
      this.regionSize[r] = size;
      this.regionBufferOffset[r] = bufferOffset;
      buffers.push(buffer);

      const lastK = size <= windowBytes ? 0 : Math.ceil((size - windowBytes) / stride);
      this.regionFirstWindow[r] = bytes.length;
      this.regionLastWindowK[r] = lastK;
      for (let k = 0; k <= lastK; k++) {
        const start = bufferOffset + k * stride;
        const end = bufferOffset + Math.min(size, k * stride + windowBytes);
        const alignedStart = start - (start % 4);
        bytes.push(new Uint8Array(buffer, start, end - start));
        words.push(new Uint32Array(buffer, alignedStart, Math.floor((end - alignedStart) / 4)));
        data.push(new DataView(buffer, start, end - start));
        windowRegion.push(r);
        windowStart.push(start);
        windowGuest.push(guestPhysAddr + k * stride);
      }
    }
    this.buffers = buffers;
    this.windowBytesView = bytes;
    this.windowWords = words;
    this.windowData = data;
    this.windowRegion = Int32Array.from(windowRegion);
    this.windowBufferStart = Float64Array.from(windowStart);
    this.windowGuestStart = Float64Array.from(windowGuest);
    this.windowSkew = Uint8Array.from(windowStart, (s) => s % 4);

    this.byGpa = sortedOrder(this.gpaStart, n);
    this.byUaddr = sortedOrder(this.uaddrStart, n);
    checkDisjoint(this.byGpa, this.gpaStart, this.regionSize, 'guest-physical');
    checkDisjoint(this.byUaddr, this.uaddrStart, this.regionSize, 'userspace');
  }

  /** The regions, as given (copies; not for the hot path). */
  region(index: number): MemoryRegion {
    return {
      guestPhysAddr: this.gpaStart[index],
      size: this.regionSize[index],
      userspaceAddr: this.uaddrStart[index],
      buffer: this.buffers[index],
      bufferOffset: this.regionBufferOffset[index],
    };
  }

  /**
   * [gpa, gpa + len) as one contiguous view access: returns the window (and sets outRegion,
   * outWindowOffset, outBufferOffset), or TRANSLATE_OUTSIDE / TRANSLATE_CROSSES /
   * TRANSLATE_TOO_LONG. len may be 0 (then only gpa must be inside a region).
   */
  translate(gpa: number, len: number): number {
    const w = this.translateSegment(gpa, len);
    if (w >= 0 && this.outPieceLength !== len) return TRANSLATE_TOO_LONG;
    return w;
  }

  /**
   * [gpa, gpa + len) must lie inside one region. Returns the window holding its first byte and
   * sets outPieceLength to how many of the len bytes that window holds (len itself unless
   * len > windowStride in a multi-window region); continue with gpa + outPieceLength.
   */
  translateSegment(gpa: number, len: number): number {
    let offset = gpa - this.hitStart;
    if (!(offset >= 0 && offset < this.hitSize)) {
      if (!this.hit(gpa)) return TRANSLATE_OUTSIDE;
      offset = gpa - this.hitStart;
    }
    const size = this.hitSize;
    if (len > size - offset) return TRANSLATE_CROSSES;
    this.outRegion = this.hitRegion;
    this.outBufferOffset = this.hitBufferOffset + offset;
    const lastK = this.hitLastWindowK;
    if (lastK === 0) {
      this.outWindowOffset = offset;
      this.outPieceLength = len;
      return this.hitFirstWindow;
    }
    const stride = this.windowStride;
    let k = Math.floor(offset / stride);
    if (k > lastK) k = lastK;
    const windowOffset = offset - k * stride;
    const room = Math.min(size - k * stride, this.windowBytes) - windowOffset;
    this.outWindowOffset = windowOffset;
    this.outPieceLength = len <= room ? len : room;
    return this.hitFirstWindow + k;
  }

  /**
   * The region of the last translation, for callers that translate many addresses in a loop
   * (the chain walker) and keep it in locals: [hitGuestStart, + hitGuestSize) is that region,
   * hitSingleWindow its window when it has only one, else -1 (before any hit hitGuestStart is
   * NaN: no range check passes). Any address inside it translates to (hitSingleWindow, gpa -
   * hitGuestStart) with no other check than the range; anything else goes to translateSegment().
   */
  get hitGuestStart(): number {
    return this.hitStart;
  }

  get hitGuestSize(): number {
    return this.hitSize;
  }

  get hitSingleWindow(): number {
    return this.hitLastWindowK === 0 ? this.hitFirstWindow : -1;
  }

  /** Slow path: looks gpa up and makes its region the cached hit. False if no region holds it. */
  private hit(gpa: number): boolean {
    const r = this.findRegion(this.byGpa, this.gpaStart, gpa);
    if (r < 0) return false;
    this.hitStart = this.gpaStart[r];
    this.hitSize = this.regionSize[r];
    this.hitRegion = r;
    this.hitBufferOffset = this.regionBufferOffset[r];
    this.hitFirstWindow = this.regionFirstWindow[r];
    this.hitLastWindowK = this.regionLastWindowK[r];
    return true;
  }

  /**
   * Front-end virtual address → guest-physical address, if [uaddr, uaddr + len) lies inside one
   * region; otherwise TRANSLATE_OUTSIDE or TRANSLATE_CROSSES. For ring addresses (SET_VRING_ADDR).
   */
  userspaceToGuest(uaddr: number, len: number): number {
    const r = this.findRegion(this.byUaddr, this.uaddrStart, uaddr);
    if (r < 0) return TRANSLATE_OUTSIDE;
    const offset = uaddr - this.uaddrStart[r];
    if (len > this.regionSize[r] - offset) return TRANSLATE_CROSSES;
    return this.gpaStart[r] + offset;
  }

  /** Region index containing gpa, or -1 (no range check beyond the first byte). */
  regionOf(gpa: number): number {
    return this.findRegion(this.byGpa, this.gpaStart, gpa);
  }

  /** Binary search for the last region (in address order) starting at or below addr. */
  private findRegion(order: Int32Array, starts: Float64Array, addr: number): number {
    let lo = 0;
    let hi = this.regionCount - 1;
    let found = -1;
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1;
      if (starts[order[mid]] <= addr) {
        found = mid;
        lo = mid + 1;
      } else {
        hi = mid - 1;
      }
    }
    if (found < 0) return -1;
    const r = order[found];
    const offset = addr - starts[r];
    return offset >= 0 && offset < this.regionSize[r] ? r : -1;
  }
}

function sortedOrder(starts: Float64Array, n: number): Int32Array {
  const order = Array.from({ length: n }, (_, i) => i).sort((a, b) => starts[a] - starts[b]);
  return Int32Array.from(order);
}

function checkDisjoint(order: Int32Array, starts: Float64Array, sizes: Float64Array, space: string): void {
  for (let i = 1; i < order.length; i++) {
    const prev = order[i - 1];
    const cur = order[i];
    if (starts[prev] + sizes[prev] > starts[cur]) {
      throw new RangeError(`memory regions ${prev} and ${cur} overlap in the ${space} address space`);
    }
  }
}
