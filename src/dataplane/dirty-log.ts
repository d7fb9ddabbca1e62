// The dirty-page log of live migration (vhost-user spec, "Migration"): one bit per 4 KiB
// guest-physical page, `log[page >> 3] |= 1 << (page & 7)`, in a shared memory area the
// front-end gives with SET_LOG_BASE. While VHOST_F_LOG_ALL is acked, every byte the back-end
// writes into guest memory marks its page, so the front-end re-sends it.
//
// Concurrency. QEMU harvests the bitmap while we write it, taking each 64-bit word with an
// atomic exchange (hw/virtio/vhost.c vhost_dev_sync_region). Marks are therefore atomic ORs
// (one lock-prefixed instruction per byte, as libvhost-user's qatomic_or and DPDK's
// __atomic_fetch_or on u8), and always made AFTER the write they cover: the OR is a full barrier,
// so once the front-end sees the bit it also sees the data. A plain load to skip bits already set
// would not do: on x86 that load may pass our earlier data store, and a harvest in between would
// copy the page without it and clear the bit.
//
// Bounds. The front-end sizes the log for its memory table; a page beyond the log is not
// written (that would be outside the mapping) but counted in `dropped`, and the control plane
// refuses a log too small for the table it knows (requiredLogBytes).
//
// Nothing here allocates; markRange is the only per-request call.
import type { VirtqRequest } from './request.js';

/** VHOST_LOG_PAGE: bytes of guest memory per log bit. */
export const LOG_PAGE_BYTES = 4096;
/** Largest log: one typed array (2^32 bytes covers 128 TiB of guest memory). */
export const MAX_LOG_BYTES = 2 ** 32;

/** Bytes of log needed to cover guest-physical [0, endGpa): one bit per page. */
export function requiredLogBytes(endGpa: number): number {
  if (endGpa <= 0) return 0;
  const pages = Math.floor((endGpa - 1) / LOG_PAGE_BYTES) + 1;
  return Math.ceil(pages / 8);
}

/** The log as the control thread hands it to a worker (plain data: it crosses a MessagePort). */
export interface DirtyLogArea {
  /** The mapping of the log fd (mmap offset rounded down to a page). */
  buffer: SharedArrayBuffer;
  /** Where the log starts in the buffer (the part of mmap_offset below a page). */
  offset: number;
  /** Log bytes (mmap_size). */
  size: number;
}

export class DirtyLog {
  /** Log bytes: pages [0, 8 * size) can be marked. */
  readonly size: number;
  /** Bits set so far (pages marked, counting repeats): for the migration statistics. */
  pagesMarked = 0;
  /** Pages that fell outside the log and were not marked. */
  dropped = 0;
  private readonly bits: Uint8Array;
  private readonly lastPage: number;

  constructor(area: DirtyLogArea) {
    const { buffer, offset, size } = area;
    if (!(buffer instanceof SharedArrayBuffer)) throw new TypeError('dirty log: buffer is not a SharedArrayBuffer');
    if (!Number.isSafeInteger(offset) || offset < 0 || !Number.isSafeInteger(size) || size < 1 || size > MAX_LOG_BYTES) {
      throw new RangeError(`dirty log: offset ${offset} / size ${size} out of range (size 1..2^32)`);
    }
    if (offset + size > buffer.byteLength) {
      throw new RangeError(`dirty log: [${offset}, ${offset + size}) exceeds its mapping of ${buffer.byteLength} bytes`);
    }
    this.size = size;
    this.bits = new Uint8Array(buffer, offset, size);
    this.lastPage = size * 8 - 1;
  }

  /** Highest guest-physical address (exclusive) the log covers. */
  get coveredBytes(): number {
    return this.size * 8 * LOG_PAGE_BYTES;
  }

  /**
   * Marks the pages of guest-physical [gpa, gpa + len) dirty. Call after writing them. len 0
   * marks nothing. Pages beyond the log are counted in `dropped`, never written.
   */
  markRange(gpa: number, len: number): void {
    if (len <= 0) return;
    // Division, not >>>: addresses go beyond 2^32.
    const first = Math.floor(gpa / LOG_PAGE_BYTES);
    let last = Math.floor((gpa + len - 1) / LOG_PAGE_BYTES);
    if (last > this.lastPage) {
      this.dropped += last - (first > this.lastPage ? first : this.lastPage + 1) + 1;
      if (first > this.lastPage) return;
      last = this.lastPage;
    }
    this.pagesMarked += last - first + 1;
    const bits = this.bits;
    // Whole bytes of the bitmap at a time: ranges longer than a page are common (blk reads).
    // Page numbers reach 2^35: division and multiplication, not shifts.
    const lastByte = Math.floor(last / 8);
    let byte = Math.floor(first / 8);
    let lowBit = first - byte * 8;
    for (; byte < lastByte; byte++) {
      Atomics.or(bits, byte, (0xff << lowBit) & 0xff);
      lowBit = 0;
    }
    Atomics.or(bits, byte, (0xff << lowBit) & (0xff >>> (7 - (last - lastByte * 8))));
  }

  /** Marks the one page holding gpa (a used-ring field, a status byte). */
  markPage(gpa: number): void {
    const page = Math.floor(gpa / LOG_PAGE_BYTES);
    if (page > this.lastPage) {
      this.dropped++;
      return;
    }
    this.pagesMarked++;
    const byte = Math.floor(page / 8);
    Atomics.or(this.bits, byte, 1 << (page - byte * 8));
  }
}

/**
 * Marks what a device wrote into a completed request: its device-writable segments up to
 * `written` bytes (used.len, as libvhost-user's vu_log_queue_fill does), read from the request,
 * so devices never deal with the log. One device writes past used.len: virtio-blk puts its
 * status in the last writable byte and answers a refused request with used.len 1 (as QEMU's
 * contrib back-end does), so when `written` stops short of the end the last byte's page is
 * marked too. A request given back untouched (written 0: net RX buffers at a stop) marks nothing.
 */
export function markWritten(log: DirtyLog, request: VirtqRequest, written: number): void {
  const memory = request.memory;
  if (memory === null || written <= 0) return;
  const guestStart = memory.windowGuestStart;
  const end = request.segmentCount;
  let left = written;
  for (let s = request.readableCount; s < end && left > 0; s++) {
    const length = request.segLength[s];
    const n = length < left ? length : left;
    log.markRange(guestStart[request.segWindow[s]] + request.segWindowOffset[s], n);
    left -= n;
  }
  if (written < request.writableBytes) {
    const last = end - 1;
    log.markPage(guestStart[request.segWindow[last]] + request.segWindowOffset[last] + request.segLength[last] - 1);
  }
}
