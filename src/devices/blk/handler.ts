// The virtio-blk request handler (runs in the data-plane workers): parses each request, checks
// it against the disk and hands the I/O to a storage engine (io_uring, threads, memory or null).
//
// A request (virtio 1.x §5.2.6) is a 16-byte header (le32 type, le32 reserved, le64 sector) in
// the device-readable bytes, then data, then one status byte: the last device-writable byte.
// The layout is read by position, not by descriptor: the header may be split across
// descriptors and share one with data, and the status may share the last descriptor with data.
//
// Every byte comes from the guest and is checked before any I/O:
//   - no writable byte: nowhere to put a status; completed with used.len 0 and nothing done;
//   - fewer than 16 readable bytes, data in the wrong direction (IN with readable data, OUT /
//     FLUSH / DISCARD / WRITE_ZEROES with writable data), data not a multiple of the logical
//     block size, a sector range past the end (sector · 512 + length ≤ capacity, computed
//     below 2^53), a write to a read-only disk, a range longer than the advertised maximum → IOERR;
//   - unknown types, DISCARD/WRITE_ZEROES when not offered, unknown flags, UNMAP on DISCARD
//     (§5.2.6.2), or other than exactly one range (max_discard_seg = 1, as QEMU answers) → UNSUPP.
// used.len: data bytes the device may have written + 1 for the status (IN: the data length,
// also when the read failed part-way; GET_ID: the serial bytes), 1 for everything else.
//
// Write cache. The guest picks write-back or write-through through config space; the control
// thread mirrors it into a shared Int32Array that is read per write: in write-through mode the
// engine makes each write durable before it completes. FLUSH completes only after every write
// completed before it is durable (fdatasync covers all writes the kernel has completed).
import type { CreateQueueHandler, HandlerContext, QueueHandler, WorkerQueue } from '../../dataplane/device-api.js';
import type { GuestMemory } from '../../dataplane/memory.js';
import type { VirtqRequest } from '../../dataplane/request.js';
import { BLK_HEADER_BYTES, PENDING, type BlkEngine } from './engine.js';
import { MemoryEngine } from './memory-engine.js';
import { NullEngine } from './null-engine.js';
import { encodeSerial, validateHandlerOptions, type BlkHandlerOptions } from './options.js';
import { ThreadsEngine } from './threads-engine.js';
import { UringEngine } from './uring-engine.js';
import { BlkRequestType, BlkStatus, SECTOR_SIZE, VIRTIO_BLK_ID_BYTES } from './virtio-blk.js';
import { TWO_POW_32 } from '../../bits.js';

/** struct virtio_blk_discard_write_zeroes: le64 sector, le32 num_sectors, le32 flags. */
const RANGE_BYTES = 16;
const WRITE_ZEROES_FLAG_UNMAP = 1;
/** Completions taken from the engine per call. */
const REAP_MAX = 256;
const INITIAL_SLOTS = 64;
/** Sector numbers at or above 2^53 / 2^32 in their high word are beyond any disk. */
const SECTOR_HIGH_LIMIT = 2 ** 21;
/** Log the first few of each kind of problem (a hostile guest must not flood the log). */
const LOG_LIMIT = 10;

export class BlkQueueHandler implements QueueHandler {
  inFlight = 0;
  readonly completionFd: number;
  private readonly engine: BlkEngine;
  private readonly capacityBytes: number;
  /** Largest valid sector number (capacity / 512): a range check without dividing per request. */
  private readonly capacitySectors: number;
  /** logicalBlockSize - 1 (512 or 4096): alignment checked on the low bits, no floating-point modulo. */
  private readonly blockMask: number;
  /** logicalBlockSize / 512 - 1: a sector's alignment to a logical block. */
  private readonly sectorMask: number;
  /** The engine never returns PENDING (null, memory): requests complete without a slot. */
  private readonly synchronous: boolean;
  private readonly readOnly: boolean;
  private readonly discardSupported: boolean;
  private readonly maxDiscardSectors: number;
  private readonly maxWriteZeroesSectors: number;
  private readonly serial: Uint8Array;
  /** [0] = 1 write-back, 0 write-through; null: always write-back. */
  private readonly writeCache: Int32Array | null;
  private readonly scratch = new Uint8Array(16);
  private readonly scratchView = new DataView(this.scratch.buffer);

  // Requests handed to the engine, by slot.
  private slotCapacity = 0;
  private slotQueue: (WorkerQueue | null)[] = [];
  private slotRequest: (VirtqRequest | null)[] = [];
  /** used.len on success and on failure. */
  private slotOkLength = new Float64Array(0);
  private slotErrorLength = new Float64Array(0);
  private freeSlots = new Int32Array(0);
  private freeCount = 0;
  private readonly doneSlots = new Int32Array(REAP_MAX);
  private readonly doneResults = new Int32Array(REAP_MAX);

  private ioErrors = 0;
  private rejected = 0;

  constructor(
    options: BlkHandlerOptions,
    engine: BlkEngine,
    private readonly context: HandlerContext,
  ) {
    this.engine = engine;
    this.completionFd = engine.completionFd;
    this.capacityBytes = options.capacityBytes;
    this.capacitySectors = options.capacityBytes / SECTOR_SIZE;
    this.blockMask = options.logicalBlockSize - 1;
    this.sectorMask = options.logicalBlockSize / SECTOR_SIZE - 1;
    this.synchronous = engine.synchronous === true;
    this.readOnly = options.readOnly;
    this.discardSupported = options.discard;
    this.maxDiscardSectors = options.maxDiscardSectors;
    this.maxWriteZeroesSectors = options.maxWriteZeroesSectors;
    this.serial = encodeSerial(options.serial);
    this.writeCache = options.writeCache ? new Int32Array(options.writeCache, 0, 1) : null;
    this.growSlots();
  }

  handle(queue: WorkerQueue, request: VirtqRequest): void {
    const writableBytes = request.writableBytes;
    if (writableBytes === 0) {
      // No status byte to answer in: give the buffers back untouched.
      this.reject(request, 'no device-writable status byte');
      queue.complete(request, 0);
      return;
    }
    if (request.readableBytes < BLK_HEADER_BYTES) {
      this.answer(queue, request, BlkStatus.IOERR, 'request header shorter than 16 bytes');
      return;
    }
    // The header: straight from guest memory when it starts the first segment on a word boundary
    // (every driver seen does this), else gathered across segments.
    let type: number;
    let sectorLow: number;
    let sectorHigh: number;
    const memory = request.memory as GuestMemory;
    const window = request.segWindow[0];
    const at = request.segWindowOffset[0] + memory.windowSkew[window];
    if (request.segLength[0] >= BLK_HEADER_BYTES && (at & 3) === 0) {
      const words = memory.windowWords[window];
      const i = at >>> 2;
      type = words[i];
      sectorLow = words[i + 2];
      sectorHigh = words[i + 3];
    } else {
      const view = this.scratchView;
      request.gather(this.scratch, 0, 0, BLK_HEADER_BYTES);
      type = view.getUint32(0, true);
      sectorLow = view.getUint32(8, true);
      sectorHigh = view.getUint32(12, true);
    }
    const readData = request.readableBytes - BLK_HEADER_BYTES;
    const writeData = writableBytes - 1;
    switch (type) {
      case BlkRequestType.IN: {
        if (readData !== 0) return this.answer(queue, request, BlkStatus.IOERR, 'IN request with device-readable data');
        const offset = this.rangeOffset(sectorLow, sectorHigh, writeData);
        if (offset < 0) return this.answer(queue, request, BlkStatus.IOERR, 'IN request outside the disk or misaligned');
        if (writeData === 0) return this.answer(queue, request, BlkStatus.OK, '');
        if (this.synchronous)
          return this.done(queue, request, this.engine.read(-1, request, offset, writeData), writeData + 1, writeData + 1);
        const slot = this.takeSlot(queue, request, writeData + 1, writeData + 1);
        return this.started(slot, this.engine.read(slot, request, offset, writeData));
      }
      case BlkRequestType.OUT: {
        if (writeData !== 0) return this.answer(queue, request, BlkStatus.IOERR, 'OUT request with device-writable data');
        if (this.readOnly) return this.answer(queue, request, BlkStatus.IOERR, 'OUT request on a read-only disk');
        const offset = this.rangeOffset(sectorLow, sectorHigh, readData);
        if (offset < 0) return this.answer(queue, request, BlkStatus.IOERR, 'OUT request outside the disk or misaligned');
        if (readData === 0) return this.answer(queue, request, BlkStatus.OK, '');
        if (this.synchronous)
          return this.done(queue, request, this.engine.write(-1, request, offset, readData, this.writeThrough()), 1, 1);
        const slot = this.takeSlot(queue, request, 1, 1);
        return this.started(slot, this.engine.write(slot, request, offset, readData, this.writeThrough()));
      }
      case BlkRequestType.FLUSH: {
        if (readData !== 0 || writeData !== 0) return this.answer(queue, request, BlkStatus.IOERR, 'FLUSH request with data');
        if (this.readOnly) return this.answer(queue, request, BlkStatus.OK, '');
        const slot = this.takeSlot(queue, request, 1, 1);
        return this.started(slot, this.engine.flush(slot));
      }
      case BlkRequestType.GET_ID: {
        if (readData !== 0) return this.answer(queue, request, BlkStatus.IOERR, 'GET_ID request with device-readable data');
        const length = writeData < VIRTIO_BLK_ID_BYTES ? writeData : VIRTIO_BLK_ID_BYTES;
        request.scatter(this.serial, 0, 0, length);
        writeStatus(request, BlkStatus.OK);
        queue.complete(request, length + 1);
        return;
      }
      case BlkRequestType.DISCARD:
      case BlkRequestType.WRITE_ZEROES:
        return this.handleRange(queue, request, type, readData, writeData);
      default:
        return this.answer(queue, request, BlkStatus.UNSUPP, 'unsupported request type');
    }
  }

  flush(): void {
    this.engine.submit();
  }

  poll(): number {
    let total = 0;
    for (;;) {
      const count = this.engine.reap(this.doneSlots, this.doneResults);
      for (let i = 0; i < count; i++) this.finish(this.doneSlots[i], this.doneResults[i]);
      total += count;
      if (count < REAP_MAX) return total;
    }
  }

  setMemory(memory: GuestMemory): void {
    // Staged records name regions of the old table: get them to the kernel before the swap.
    while (this.engine.unsubmitted > 0) {
      this.engine.submit();
      if (this.engine.unsubmitted > 0) {
        this.engine.waitForCompletion();
        this.poll();
      }
    }
    this.engine.setMemory(memory);
  }

  close(): void {
    this.engine.close();
  }

  // ---- internals -----------------------------------------------------------------------------

  private handleRange(queue: WorkerQueue, request: VirtqRequest, type: number, readData: number, writeData: number): void {
    const discard = type === BlkRequestType.DISCARD;
    if (!this.discardSupported) return this.answer(queue, request, BlkStatus.UNSUPP, 'DISCARD/WRITE_ZEROES not offered');
    if (writeData !== 0)
      return this.answer(queue, request, BlkStatus.IOERR, 'DISCARD/WRITE_ZEROES request with device-writable data');
    if (readData !== RANGE_BYTES)
      return this.answer(queue, request, BlkStatus.UNSUPP, 'DISCARD/WRITE_ZEROES with other than one range');
    if (this.readOnly) return this.answer(queue, request, BlkStatus.IOERR, 'DISCARD/WRITE_ZEROES on a read-only disk');
    const view = this.scratchView;
    request.gather(this.scratch, 0, BLK_HEADER_BYTES, RANGE_BYTES);
    const sectorLow = view.getUint32(0, true);
    const sectorHigh = view.getUint32(4, true);
    const sectors = view.getUint32(8, true);
    const flags = view.getUint32(12, true);
    if ((flags & ~WRITE_ZEROES_FLAG_UNMAP) !== 0 || (discard && flags !== 0)) {
      return this.answer(queue, request, BlkStatus.UNSUPP, 'DISCARD/WRITE_ZEROES with unsupported flags');
    }
    if (sectors > (discard ? this.maxDiscardSectors : this.maxWriteZeroesSectors)) {
      return this.answer(queue, request, BlkStatus.IOERR, 'DISCARD/WRITE_ZEROES range longer than advertised');
    }
    const length = sectors * SECTOR_SIZE;
    const offset = this.rangeOffset(sectorLow, sectorHigh, length);
    if (offset < 0)
      return this.answer(queue, request, BlkStatus.IOERR, 'DISCARD/WRITE_ZEROES range outside the disk or misaligned');
    if (length === 0) return this.answer(queue, request, BlkStatus.OK, '');
    const slot = this.takeSlot(queue, request, 1, 1);
    const durable = this.writeThrough();
    const result = discard
      ? this.engine.discard(slot, offset, length, durable)
      : this.engine.writeZeroes(slot, offset, length, flags === WRITE_ZEROES_FLAG_UNMAP, durable);
    this.started(slot, result);
  }

  /**
   * Byte offset of [sector · 512, + length) if it lies inside the disk and on logical block
   * boundaries, else -1. Exact: sector < 2^53 / 512 by then, and capacity < 2^53.
   */
  private rangeOffset(sectorLow: number, sectorHigh: number, length: number): number {
    if (sectorHigh >= SECTOR_HIGH_LIMIT) return -1;
    // Alignment on the low 32 bits: the block size divides 2^32, and `& ` keeps the low bits of
    // any integer length (ToInt32 is modulo 2^32). A floating-point % here cost ~10 ns per request.
    if ((sectorLow & this.sectorMask) !== 0 || (length & this.blockMask) !== 0) return -1;
    const sector = sectorHigh * TWO_POW_32 + sectorLow;
    if (sector > this.capacitySectors) return -1;
    const offset = sector * SECTOR_SIZE;
    if (length > this.capacityBytes - offset) return -1;
    return offset;
  }

  private writeThrough(): boolean {
    return this.writeCache !== null && Atomics.load(this.writeCache, 0) === 0;
  }

  /** Completes a request the engine never saw: status only. */
  private answer(queue: WorkerQueue, request: VirtqRequest, status: number, problem: string): void {
    if (status !== BlkStatus.OK) this.reject(request, problem);
    writeStatus(request, status);
    queue.complete(request, 1);
  }

  private reject(request: VirtqRequest, problem: string): void {
    if (this.rejected++ < LOG_LIMIT) {
      this.context.log('debug', `virtio-blk: refused a request: ${problem}`, {
        head: request.head,
        readable: request.readableBytes,
        writable: request.writableBytes,
      });
    }
  }

  private takeSlot(queue: WorkerQueue, request: VirtqRequest, okLength: number, errorLength: number): number {
    if (this.freeCount === 0) this.growSlots();
    const slot = this.freeSlots[--this.freeCount];
    this.slotQueue[slot] = queue;
    this.slotRequest[slot] = request;
    this.slotOkLength[slot] = okLength;
    this.slotErrorLength[slot] = errorLength;
    this.inFlight++;
    return slot;
  }

  private started(slot: number, result: number): void {
    if (result !== PENDING) this.finish(slot, result);
  }

  private finish(slot: number, result: number): void {
    const queue = this.slotQueue[slot]!;
    const request = this.slotRequest[slot]!;
    this.slotQueue[slot] = null;
    this.slotRequest[slot] = null;
    this.freeSlots[this.freeCount++] = slot;
    this.inFlight--;
    this.done(queue, request, result, this.slotOkLength[slot], this.slotErrorLength[slot]);
  }

  /** Answers a request the engine finished: status byte, then used.len by outcome. */
  private done(queue: WorkerQueue, request: VirtqRequest, result: number, okLength: number, errorLength: number): void {
    // Written off by the worker: the buffers are no longer the guest's; the queue only reclaims.
    if (queue.abandoned === true) return queue.complete(request, 0);
    if (result < 0) {
      if (this.ioErrors++ < LOG_LIMIT) {
        this.context.log('warn', 'virtio-blk: I/O error', { errno: -result, head: request.head });
      }
      writeStatus(request, BlkStatus.IOERR);
      queue.complete(request, errorLength);
      return;
    }
    writeStatus(request, BlkStatus.OK);
    queue.complete(request, okLength);
  }

  /** More slots (only when more requests are in flight than ever before). */
  private growSlots(): void {
    const old = this.slotCapacity;
    const capacity = old === 0 ? INITIAL_SLOTS : 2 * old;
    this.engine.ensureSlots(capacity);
    for (let i = old; i < capacity; i++) {
      this.slotQueue.push(null);
      this.slotRequest.push(null);
    }
    const ok = new Float64Array(capacity);
    ok.set(this.slotOkLength);
    this.slotOkLength = ok;
    const error = new Float64Array(capacity);
    error.set(this.slotErrorLength);
    this.slotErrorLength = error;
    const free = new Int32Array(capacity);
    free.set(this.freeSlots.subarray(0, this.freeCount));
    for (let slot = capacity - 1; slot >= old; slot--) free[this.freeCount++] = slot;
    this.freeSlots = free;
    this.slotCapacity = capacity;
  }
}

/** The status is the last device-writable byte (§5.2.6): the end of the last segment. */
function writeStatus(request: VirtqRequest, status: number): void {
  const last = request.segmentCount - 1;
  const length = request.segLength[last];
  if (length === 0) {
    request.writeWritableByte(request.writableBytes - 1, status);
    return;
  }
  (request.memory as GuestMemory).windowBytesView[request.segWindow[last]][request.segWindowOffset[last] + length - 1] = status;
}

export function createEngine(options: BlkHandlerOptions): BlkEngine | Promise<BlkEngine> {
  switch (options.engine) {
    case 'null':
      return new NullEngine();
    case 'memory':
      return new MemoryEngine(options.ramDisk as SharedArrayBuffer, options.capacityBytes);
    case 'io_uring':
      return new UringEngine({
        path: options.path as string,
        readOnly: options.readOnly,
        capacityBytes: options.capacityBytes,
        direct: options.direct ?? false,
        directAlignment: options.directAlignment ?? 512,
        sqpoll: options.sqpoll ?? false,
        sqpollIdleMs: options.sqpollIdleMs,
        ringEntries: options.ringEntries ?? 256,
      });
    case 'threads':
      return ThreadsEngine.open({
        path: options.path as string,
        readOnly: options.readOnly,
        capacityBytes: options.capacityBytes,
        direct: options.direct ?? false,
        directAlignment: options.directAlignment ?? 512,
        ringEntries: options.ringEntries ?? 256,
        threads: options.threads ?? 4,
      });
  }
}

export const createQueueHandler: CreateQueueHandler = async (raw, context) => {
  const options = validateHandlerOptions(raw);
  return new BlkQueueHandler(options, await createEngine(options), context);
};
