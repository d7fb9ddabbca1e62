// The storage engine contract: what the virtio-blk handler asks of a backing store once a
// request has been validated (direction, alignment, range). An engine runs inside one worker
// thread and allocates nothing per request.
//
// Slots. The handler gives every request it hands over a slot number (dense, from 0); an
// asynchronous engine keeps its per-request state in arrays indexed by slot and reports the
// slot back from reap(). ensureSlots() grows those arrays before a new slot number is used.
//
// Data. The handler has already checked the layout (virtio 1.x §5.2.6), so the data bytes are:
//   read  (IN):  the first `length` device-writable bytes (the status byte comes after them);
//   write (OUT): the `length` device-readable bytes after the 16-byte request header.
// DataCursor walks them as contiguous pieces of guest memory.
import type { GuestMemory } from '../../dataplane/memory.js';
import type { VirtqRequest } from '../../dataplane/request.js';

/** Returned by an engine operation that will finish later, through reap(). */
export const PENDING = 1;

/** Bytes of struct virtio_blk_outhdr (le32 type, le32 reserved, le64 sector) before OUT data. */
export const BLK_HEADER_BYTES = 16;

export interface BlkEngine {
  /** An fd that turns readable when reap() has work (for interrupt/adaptive sleeping), or -1. */
  readonly completionFd: number;
  /**
   * True if no operation ever returns PENDING (null, memory): the handler then skips the slot
   * bookkeeping and passes slot -1. Absent or false: slots as described above.
   */
  readonly synchronous?: boolean;
  /** Make room for slot numbers below `count`. */
  ensureSlots(count: number): void;
  /**
   * Each operation returns 0 (done), a negative errno (failed), or PENDING (reap() reports the
   * result later). Offsets and lengths are in bytes, validated against the disk.
   */
  read(slot: number, request: VirtqRequest, offset: number, length: number): number;
  /** `durable`: the guest runs the disk write-through; the data must be stable when this completes. */
  write(slot: number, request: VirtqRequest, offset: number, length: number, durable: boolean): number;
  /** Makes every write completed so far durable. */
  flush(slot: number): number;
  /** The range's contents become unspecified (deallocated if possible). */
  discard(slot: number, offset: number, length: number, durable: boolean): number;
  /** The range reads back as zeroes; `unmap` allows deallocating it. */
  writeZeroes(slot: number, offset: number, length: number, unmap: boolean, durable: boolean): number;
  /** Once per worker loop pass: pass what was queued to the kernel (one native call). */
  submit(): void;
  /** Operations accepted but not yet passed to the kernel (a memory table swap waits for them). */
  readonly unsubmitted: number;
  /** Blocks until at least one operation in the kernel completes (used only to drain before a memory swap). */
  waitForCompletion(): void;
  /** Finished operations into (slots[i], results[i]); returns how many (≤ slots.length). */
  reap(slots: Int32Array, results: Int32Array): number;
  /** New guest memory table: requests handed over from now on point into it. */
  setMemory(memory: GuestMemory): void;
  close(): void;
}

/**
 * Walks `length` data bytes of a request, starting `skip` bytes into segment `firstSegment`
 * and onwards, as pieces that are each contiguous in one memory window. Allocation-free: one
 * cursor per engine, reused.
 */
export class DataCursor {
  /** The current piece: window index (request.memory.windowBytesView etc.), offset in it, length. */
  window = 0;
  windowOffset = 0;
  length = 0;
  private request: VirtqRequest | null = null;
  private segment = 0;
  private skip = 0;
  private remaining = 0;

  begin(request: VirtqRequest, firstSegment: number, skip: number, length: number): void {
    this.request = request;
    this.segment = firstSegment;
    this.skip = skip;
    this.remaining = length;
  }

  /** Moves to the next piece; false when `length` bytes were walked or the chain ended. */
  next(): boolean {
    const request = this.request;
    if (request === null) return false;
    while (this.remaining > 0 && this.segment < request.segmentCount) {
      const s = this.segment++;
      const segLength = request.segLength[s];
      if (this.skip >= segLength) {
        this.skip -= segLength;
        continue;
      }
      let n = segLength - this.skip;
      if (n > this.remaining) n = this.remaining;
      this.window = request.segWindow[s]!;
      this.windowOffset = request.segWindowOffset[s] + this.skip;
      this.length = n;
      this.skip = 0;
      this.remaining -= n;
      return true;
    }
    this.request = null;
    return false;
  }

  /** Bytes of `length` not walked because the chain ended first (0 after a complete walk). */
  get shortfall(): number {
    return this.remaining;
  }
}

/** Positions the cursor on a read's data: the device-writable bytes, from `done` on. */
export function beginReadData(cursor: DataCursor, request: VirtqRequest, done: number, length: number): void {
  cursor.begin(request, request.readableCount, done, length);
}

/** Positions the cursor on a write's data: the device-readable bytes after the header, from `done` on. */
export function beginWriteData(cursor: DataCursor, request: VirtqRequest, done: number, length: number): void {
  cursor.begin(request, 0, BLK_HEADER_BYTES + done, length);
}

/** errno values engines report (Linux). */
export const Errno = { EIO: 5, EFAULT: 14, EINVAL: 22, ENOSPC: 28, EOPNOTSUPP: 95 } as const;
