// The io_uring engine: one native Uring per worker, the image opened by the worker, and iovecs
// that point straight into guest memory (region index + offset in the region's mapping, as the
// native ring expects; its record layouts are documented in native/ring/uring.cc). The threads
// engine (threads-engine.ts) runs this same logic over a thread-pool ring with that interface.
//
// Life of an operation. read()/write()/... record the slot's state (phase, file offset, bytes
// done) and stage one SQE record in preallocated arrays; submit() hands every staged record to
// the kernel in one native call per worker loop pass; reap() turns completions into results,
// advancing a slot to its next phase where one is needed:
//   - a short read or write (res < what was asked) is resubmitted for the remainder; a
//     transfer that makes no progress (res 0: the image shrank under us) fails with EIO;
//   - WRITE_ZEROES tries PUNCH_HOLE (if the guest allowed unmapping), then ZERO_RANGE, then plain
//     writes from a zero-filled mapping, remembering which fallocate modes the file refused;
//   - DISCARD is advisory: a file that cannot punch holes completes it as done;
//   - in write-through mode (`durable`), writes go through a second fd opened O_DSYNC, and
//     DISCARD / WRITE_ZEROES are followed by an fdatasync before they complete.
// A record the ring cannot take yet (submission queue or in-flight budget full) waits in a FIFO
// of slots and is staged again from the slot's state on the next pass.
//
// O_DIRECT (`direct`). Every iovec base, length and the file offset must be multiples of
// `directAlignment` (default 512). Guests align block I/O to 512 bytes (Linux's default
// dma_alignment), so a misaligned request is refused with IOERR (EINVAL) instead of bounced.
//
// Memory table swaps. Staged records name regions by index in the table they were built
// against, so the handler submits everything staged before setMemory() swaps the region list
// (the native ring keeps the old list alive for requests in flight). A short transfer whose
// remainder would be resubmitted after a swap fails with EFAULT (IOERR) instead.
import { closeSync, constants, fstatSync, openSync } from 'node:fs';
import { native, type Uring } from '../../native.js';
import type { GuestMemory } from '../../dataplane/memory.js';
import type { VirtqRequest } from '../../dataplane/request.js';
import { DataCursor, Errno, PENDING, beginReadData, beginWriteData, type BlkEngine } from './engine.js';
import { openUring } from './engine-select.js';
import { TWO_POW_32 } from '../../bits.js';
import { IOVEC_WORDS, Iovec, MAX_IOVECS, Opcode, SQE_WORDS, Sqe } from './records.js';

/** Records staged per batch before they must be submitted. */
const STAGED_SQES = 256;
/** Iovec records staged per batch; at least MAX_IOVECS, so an empty stage always fits a request. */
const STAGED_IOVECS = 4 * MAX_IOVECS;
const REAP_BATCH = 256;
/** Zero-filled mapping that WRITE_ZEROES falls back to writing from (1024 of them cover 1 GiB). */
const ZERO_BYTES = 1 << 20;

const Phase = {
  IDLE: 0,
  READ: 1,
  WRITE: 2,
  FLUSH: 3,
  DISCARD: 4,
  ZERO_PUNCH: 5,
  ZERO_RANGE: 6,
  ZERO_WRITE: 7,
  /** fdatasync after a range operation in write-through mode. */
  SYNC: 8,
} as const;

export interface UringEngineOptions {
  path: string;
  readOnly: boolean;
  capacityBytes: number;
  direct: boolean;
  directAlignment: number;
  sqpoll: boolean;
  sqpollIdleMs?: number;
  ringEntries: number;
}

export class UringEngine implements BlkEngine {
  readonly completionFd: number;
  private readonly ring: Uring;
  private readonly fd: number;
  /** The image opened O_DSYNC, for writes in write-through mode (-1 when read-only). */
  private readonly dsyncFd: number;
  private readonly alignment: number;
  private readonly zeroBuffer: SharedArrayBuffer;
  private memory: GuestMemory | null = null;
  private zeroRegion = 0;
  private punchUnsupported = false;
  private zeroRangeUnsupported = false;
  private readonly cursor = new DataCursor();

  // Staged records, submitted together.
  private readonly sqes = new Uint32Array(STAGED_SQES * SQE_WORDS);
  private readonly iovecs = new Uint32Array(STAGED_IOVECS * IOVEC_WORDS);
  private staged = 0;
  private stagedIovecs = 0;
  private readonly cqes = new Int32Array(2 * REAP_BATCH);

  // Per slot.
  private slotCapacity = 0;
  private phase: Uint8Array = new Uint8Array(0);
  private durable: Uint8Array = new Uint8Array(0);
  private requests: (VirtqRequest | null)[] = [];
  private offsets: Float64Array = new Float64Array(0);
  private totals: Float64Array = new Float64Array(0);
  private dones: Float64Array = new Float64Array(0);
  // Slots waiting for room in the ring (a FIFO ring buffer of slot numbers).
  private deferred = new Int32Array(0);
  private deferredHead = 0;
  private deferredCount = 0;
  // Slots that failed before reaching the kernel, reported by the next reap().
  private failedSlots = new Int32Array(0);
  private failedResults = new Int32Array(0);
  private failedCount = 0;

  /**
   * `openRing` supplies the ring (default: a kernel io_uring); the threads engine passes a
   * thread-pool ring with the same interface, so everything above the ring is shared.
   */
  constructor(options: UringEngineOptions, openRing?: () => Uring) {
    this.alignment = options.direct ? options.directAlignment : 1;
    const direct = options.direct ? constants.O_DIRECT : 0;
    this.fd = openImage(options.path, (options.readOnly ? constants.O_RDONLY : constants.O_RDWR) | direct, options);
    let dsyncFd = -1;
    let ring: Uring | undefined;
    try {
      if (!options.readOnly) dsyncFd = openImage(options.path, constants.O_RDWR | direct | constants.O_DSYNC, options);
      ring = openRing
        ? openRing()
        : openUring(options.ringEntries, options.sqpoll ? { sqpoll: true, sqpollIdleMs: options.sqpollIdleMs } : undefined);
      this.completionFd = ring.eventfd();
      const zeroFd = native.memfdCreate('vhost-user-blk-zeroes', ZERO_BYTES);
      try {
        this.zeroBuffer = native.mmapShared(zeroFd, ZERO_BYTES, 0, false);
      } finally {
        native.close(zeroFd);
      }
      ring.setRegions([this.zeroBuffer]);
    } catch (error) {
      ring?.close();
      if (dsyncFd >= 0) closeSync(dsyncFd);
      closeSync(this.fd);
      throw error;
    }
    this.dsyncFd = dsyncFd;
    this.ring = ring;
  }

  get unsubmitted(): number {
    return this.staged + this.deferredCount;
  }

  ensureSlots(count: number): void {
    if (count <= this.slotCapacity) return;
    const capacity = Math.max(count, 2 * this.slotCapacity);
    this.phase = grownBytes(this.phase, capacity);
    this.durable = grownBytes(this.durable, capacity);
    this.offsets = grownFloats(this.offsets, capacity);
    this.totals = grownFloats(this.totals, capacity);
    this.dones = grownFloats(this.dones, capacity);
    while (this.requests.length < capacity) this.requests.push(null);
    const deferred = new Int32Array(capacity);
    for (let i = 0; i < this.deferredCount; i++) deferred[i] = this.deferred[(this.deferredHead + i) % this.slotCapacity]!;
    this.deferred = deferred;
    this.deferredHead = 0;
    const failedSlots = new Int32Array(capacity);
    failedSlots.set(this.failedSlots.subarray(0, this.failedCount));
    this.failedSlots = failedSlots;
    const failedResults = new Int32Array(capacity);
    failedResults.set(this.failedResults.subarray(0, this.failedCount));
    this.failedResults = failedResults;
    this.slotCapacity = capacity;
  }

  read(slot: number, request: VirtqRequest, offset: number, length: number): number {
    return this.start(slot, Phase.READ, request, offset, length, false);
  }

  write(slot: number, request: VirtqRequest, offset: number, length: number, durable: boolean): number {
    return this.start(slot, Phase.WRITE, request, offset, length, durable);
  }

  flush(slot: number): number {
    return this.start(slot, Phase.FLUSH, null, 0, 0, false);
  }

  discard(slot: number, offset: number, length: number, durable: boolean): number {
    if (this.punchUnsupported) return durable ? this.start(slot, Phase.SYNC, null, 0, 0, false) : 0;
    return this.start(slot, Phase.DISCARD, null, offset, length, durable);
  }

  writeZeroes(slot: number, offset: number, length: number, unmap: boolean, durable: boolean): number {
    const phase =
      unmap && !this.punchUnsupported ? Phase.ZERO_PUNCH : !this.zeroRangeUnsupported ? Phase.ZERO_RANGE : Phase.ZERO_WRITE;
    return this.start(slot, phase, null, offset, length, durable);
  }

  submit(): void {
    while (this.deferredCount > 0) {
      const slot = this.deferred[this.deferredHead];
      if (!this.stage(slot)) break;
      this.deferredHead = this.deferredHead + 1 === this.slotCapacity ? 0 : this.deferredHead + 1;
      this.deferredCount--;
    }
    this.submitStaged();
  }

  waitForCompletion(): void {
    this.ring.wait(1);
  }

  reap(slots: Int32Array, results: Int32Array): number {
    const max = slots.length;
    const cqes = this.cqes;
    let out = this.drainFailed(slots, results, 0);
    while (out < max) {
      const want = max - out < REAP_BATCH ? max - out : REAP_BATCH;
      const reaped = this.ring.reap(cqes, want);
      for (let i = 0; i < reaped; i++) {
        const slot = cqes[2 * i];
        const result = this.advance(slot, cqes[2 * i + 1]);
        if (result !== PENDING) {
          slots[out] = slot;
          results[out] = result;
          out++;
        }
      }
      out = this.drainFailed(slots, results, out);
      if (reaped < want) break;
    }
    // Remainders and next phases staged above go to the kernel now, not a pass later.
    if (this.staged > 0 || this.deferredCount > 0) {
      this.submit();
      out = this.drainFailed(slots, results, out);
    }
    return out;
  }

  setMemory(memory: GuestMemory): void {
    if (this.unsubmitted > 0) throw new Error('block engine: memory table swapped with records not yet submitted');
    this.ring.setRegions([...memory.buffers, this.zeroBuffer]);
    this.zeroRegion = memory.buffers.length;
    this.memory = memory;
  }

  close(): void {
    // Waits for I/O still in the kernel: it may write into guest memory.
    this.ring.close();
    if (this.dsyncFd >= 0) closeSync(this.dsyncFd);
    closeSync(this.fd);
  }

  // ---- internals -----------------------------------------------------------------------------

  private start(
    slot: number,
    phase: number,
    request: VirtqRequest | null,
    offset: number,
    length: number,
    durable: boolean,
  ): number {
    this.phase[slot] = phase;
    this.requests[slot] = request;
    this.offsets[slot] = offset;
    this.totals[slot] = length;
    this.dones[slot] = 0;
    this.durable[slot] = durable ? 1 : 0;
    this.enqueue(slot);
    return PENDING;
  }

  private enqueue(slot: number): void {
    if (this.deferredCount === 0) {
      if (this.stage(slot)) return;
      this.submitStaged(); // frees the stage (what the ring refuses moves to the FIFO)
      if (this.stage(slot)) return;
    }
    let tail = this.deferredHead + this.deferredCount;
    if (tail >= this.slotCapacity) tail -= this.slotCapacity;
    this.deferred[tail] = slot;
    this.deferredCount++;
  }

  /** Stages the slot's next record; false if the stage lacks room (never when it is empty). */
  private stage(slot: number): boolean {
    if (this.staged === STAGED_SQES) return false;
    const phase = this.phase[slot];
    let opcode: number;
    let fd = this.fd;
    let offset = this.offsets[slot];
    let iovecCount = 0;
    let length = 0;
    const firstIovec = this.stagedIovecs;
    switch (phase) {
      case Phase.READ:
      case Phase.WRITE: {
        const request = this.requests[slot]!;
        const bound = request.segmentCount < MAX_IOVECS ? request.segmentCount : MAX_IOVECS;
        if (firstIovec + bound > STAGED_IOVECS) return false;
        if (request.memory !== this.memory) {
          this.fail(slot, -Errno.EFAULT);
          return true;
        }
        const done = this.dones[slot];
        offset += done;
        if (phase === Phase.READ) {
          beginReadData(this.cursor, request, done, this.totals[slot] - done);
          opcode = Opcode.READV;
        } else {
          beginWriteData(this.cursor, request, done, this.totals[slot] - done);
          opcode = Opcode.WRITEV;
          if (this.durable[slot] === 1) fd = this.dsyncFd;
        }
        const count = this.stageIovecs(request.memory as GuestMemory, offset);
        if (count < 0) {
          this.fail(slot, count);
          return true;
        }
        iovecCount = count;
        break;
      }
      case Phase.ZERO_WRITE: {
        const done = this.dones[slot];
        let left = this.totals[slot] - done;
        if (left > MAX_IOVECS * ZERO_BYTES) left = MAX_IOVECS * ZERO_BYTES;
        const count = Math.ceil(left / ZERO_BYTES);
        if (firstIovec + count > STAGED_IOVECS) return false;
        const iovecs = this.iovecs;
        for (let i = 0, w = firstIovec * IOVEC_WORDS; i < count; i++, w += IOVEC_WORDS) {
          iovecs[w + Iovec.REGION] = this.zeroRegion;
          iovecs[w + Iovec.OFFSET_LOW] = 0;
          iovecs[w + Iovec.OFFSET_HIGH] = 0;
          iovecs[w + Iovec.LENGTH] = left > ZERO_BYTES ? ZERO_BYTES : left;
          left -= ZERO_BYTES;
        }
        this.stagedIovecs += count;
        iovecCount = count;
        offset += done;
        opcode = Opcode.WRITEV;
        if (this.durable[slot] === 1) fd = this.dsyncFd;
        break;
      }
      case Phase.FLUSH:
      case Phase.SYNC:
        opcode = Opcode.FDATASYNC;
        offset = 0;
        break;
      case Phase.DISCARD:
      case Phase.ZERO_PUNCH:
        opcode = Opcode.PUNCH_HOLE;
        length = this.totals[slot]!;
        break;
      case Phase.ZERO_RANGE:
        opcode = Opcode.ZERO_RANGE;
        length = this.totals[slot]!;
        break;
      default:
        throw new Error(`block engine: slot ${slot} staged in phase ${phase}`);
    }
    const sqes = this.sqes;
    const base = this.staged * SQE_WORDS;
    sqes[base + Sqe.OPCODE] = opcode;
    sqes[base + Sqe.FD] = fd;
    sqes[base + Sqe.OFFSET_LOW] = offset % TWO_POW_32;
    sqes[base + Sqe.OFFSET_HIGH] = Math.floor(offset / TWO_POW_32);
    sqes[base + Sqe.USER_DATA] = slot;
    sqes[base + Sqe.IOVEC_COUNT] = iovecCount;
    sqes[base + Sqe.FIRST_IOVEC] = firstIovec;
    sqes[base + Sqe.LENGTH] = length;
    this.staged++;
    return true;
  }

  /** Iovec records for the cursor's pieces; returns their count or a negative errno. */
  private stageIovecs(memory: GuestMemory, fileOffset: number): number {
    const cursor = this.cursor;
    const iovecs = this.iovecs;
    const alignment = this.alignment;
    if (alignment > 1 && fileOffset % alignment !== 0) return -Errno.EINVAL;
    let count = 0;
    let w = this.stagedIovecs * IOVEC_WORDS;
    while (cursor.next()) {
      if (count === MAX_IOVECS) return -Errno.EINVAL;
      const window = cursor.window;
      const bufferOffset = memory.windowBufferStart[window] + cursor.windowOffset;
      const length = cursor.length;
      // Region mappings start page-aligned, so the buffer offset's alignment is the address's.
      if (alignment > 1 && (bufferOffset % alignment !== 0 || length % alignment !== 0)) return -Errno.EINVAL;
      iovecs[w + Iovec.REGION] = memory.windowRegion[window]!;
      iovecs[w + Iovec.OFFSET_LOW] = bufferOffset % TWO_POW_32;
      iovecs[w + Iovec.OFFSET_HIGH] = Math.floor(bufferOffset / TWO_POW_32);
      iovecs[w + Iovec.LENGTH] = length;
      w += IOVEC_WORDS;
      count++;
    }
    if (cursor.shortfall !== 0) return -Errno.EFAULT; // the handler checked the lengths: cannot happen
    this.stagedIovecs += count;
    return count;
  }

  private submitStaged(): void {
    const staged = this.staged;
    if (staged === 0) return;
    const queued = this.ring.submit(this.sqes, this.iovecs, staged);
    // Refused records (ring full) go back to the front of the FIFO, in order.
    for (let i = staged - 1; i >= queued; i--) {
      this.deferredHead = this.deferredHead === 0 ? this.slotCapacity - 1 : this.deferredHead - 1;
      this.deferred[this.deferredHead] = this.sqes[i * SQE_WORDS + Sqe.USER_DATA]!;
      this.deferredCount++;
    }
    this.staged = 0;
    this.stagedIovecs = 0;
  }

  /** A completion for `slot`: the final result, or PENDING if the slot moved on to another record. */
  private advance(slot: number, res: number): number {
    switch (this.phase[slot]) {
      case Phase.READ:
      case Phase.WRITE:
      case Phase.ZERO_WRITE: {
        if (res < 0) return this.finish(slot, res);
        if (res === 0) return this.finish(slot, -Errno.EIO);
        const done = this.dones[slot] + res;
        this.dones[slot] = done;
        if (done < this.totals[slot]) {
          this.enqueue(slot); // short transfer: the rest
          return PENDING;
        }
        return this.finish(slot, 0);
      }
      case Phase.FLUSH:
      case Phase.SYNC:
        return this.finish(slot, res < 0 ? res : 0);
      case Phase.DISCARD:
        if (res === -Errno.EOPNOTSUPP) {
          this.punchUnsupported = true; // discard is a hint: nothing to do
          res = 0;
        }
        return res < 0 ? this.finish(slot, res) : this.afterRange(slot);
      case Phase.ZERO_PUNCH:
        if (res === -Errno.EOPNOTSUPP) {
          this.punchUnsupported = true;
          this.phase[slot] = this.zeroRangeUnsupported ? Phase.ZERO_WRITE : Phase.ZERO_RANGE;
          this.enqueue(slot);
          return PENDING;
        }
        return res < 0 ? this.finish(slot, res) : this.afterRange(slot);
      case Phase.ZERO_RANGE:
        if (res === -Errno.EOPNOTSUPP) {
          this.zeroRangeUnsupported = true;
          this.phase[slot] = Phase.ZERO_WRITE;
          this.enqueue(slot);
          return PENDING;
        }
        return res < 0 ? this.finish(slot, res) : this.afterRange(slot);
      default:
        return PENDING; // not ours (cannot happen): ignore
    }
  }

  /** A range operation succeeded: done, or first fdatasync in write-through mode. */
  private afterRange(slot: number): number {
    if (this.durable[slot] === 0) return this.finish(slot, 0);
    this.phase[slot] = Phase.SYNC;
    this.enqueue(slot);
    return PENDING;
  }

  private finish(slot: number, result: number): number {
    this.phase[slot] = Phase.IDLE;
    this.requests[slot] = null;
    return result;
  }

  private fail(slot: number, result: number): void {
    this.finish(slot, result);
    this.failedSlots[this.failedCount] = slot;
    this.failedResults[this.failedCount] = result;
    this.failedCount++;
  }

  private drainFailed(slots: Int32Array, results: Int32Array, out: number): number {
    while (this.failedCount > 0 && out < slots.length) {
      this.failedCount--;
      slots[out] = this.failedSlots[this.failedCount]!;
      results[out] = this.failedResults[this.failedCount]!;
      out++;
    }
    return out;
  }
}

function openImage(path: string, flags: number, options: UringEngineOptions): number {
  let fd: number;
  try {
    fd = openSync(path, flags);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    const hint = code === 'EINVAL' && options.direct ? ' (the filesystem may not support O_DIRECT; drop --direct)' : '';
    throw new Error(
      `cannot open the disk image ${path}${options.readOnly ? ' read-only' : ''}: ${(error as Error).message}${hint}`,
    );
  }
  const stat = fstatSync(fd);
  if (!stat.isFile() && !stat.isBlockDevice()) {
    closeSync(fd);
    throw new Error(`${path} is neither a regular file nor a block device`);
  }
  if (stat.isFile() && stat.size < options.capacityBytes) {
    closeSync(fd);
    throw new Error(`${path} is ${stat.size} bytes, smaller than the ${options.capacityBytes}-byte disk it should back`);
  }
  return fd;
}

function grownBytes(array: Uint8Array, capacity: number): Uint8Array {
  const grown = new Uint8Array(capacity);
  grown.set(array);
  return grown;
}

function grownFloats(array: Float64Array, capacity: number): Float64Array {
  const grown = new Float64Array(capacity);
  grown.set(array);
  return grown;
}
