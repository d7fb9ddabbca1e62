// In-flight I/O tracking for split virtqueues (vhost-user spec "Inflight I/O tracking";
// PROTOCOL_F_INFLIGHT_SHMFD): a shared region the front-end keeps across back-end restarts, in
// which the back-end records every request it fetches and completes. A restarted back-end reads
// it to resubmit exactly the requests still in flight — the only safe restart when completions
// are out of order (io_uring at QD > 1): resuming from used->idx would run some requests twice
// and never complete others.
//
// Layout, per queue, queues back to back (each queue's part is 64-byte aligned):
//   header  { u64 features; u16 version; u16 desc_num; u16 last_batch_head; u16 used_idx }
//   desc[desc_num] { u8 inflight; u8 pad[5]; u16 next; u64 counter }
// On fetch: counter = next value of a per-queue counter, inflight = 1. On completion: link the
// head into the batch (next = last_batch_head; last_batch_head = head); after used->idx is
// published, clear the batch's inflight flags and set used_idx = used->idx.
//
// Hot path: fetched / completed / published write typed arrays only (the u64 counter as two u32
// halves: no BigInt) and never read back what the front-end could have changed, so a hostile
// front-end scribbling on the region cannot make them misbehave. Only recover() trusts nothing
// and checks everything it reads.

/** Bytes of one queue's header. */
export const INFLIGHT_HEADER_BYTES = 16;
/** Bytes of one descriptor entry. */
export const INFLIGHT_DESC_BYTES = 16;
/** Each queue's part starts on this boundary (libvhost-user's INFLIGHT_ALIGNMENT). */
export const INFLIGHT_QUEUE_ALIGN = 64;
/** The version a back-end writes into a fresh (all-zero) header. */
export const INFLIGHT_VERSION = 1;

/** Bytes one queue of `queueSize` descriptors takes in the region (header, entries, alignment). */
export function inflightQueueBytes(queueSize: number): number {
  const raw = INFLIGHT_HEADER_BYTES + INFLIGHT_DESC_BYTES * queueSize;
  return Math.ceil(raw / INFLIGHT_QUEUE_ALIGN) * INFLIGHT_QUEUE_ALIGN;
}

/** Bytes of the whole region for `numQueues` queues of `queueSize` descriptors. */
export function inflightRegionBytes(numQueues: number, queueSize: number): number {
  return numQueues * inflightQueueBytes(queueSize);
}

/** One queue's part of the mapped region, as plain data (it travels to a worker in a command). */
export interface InflightSlice {
  /** The mapping of the region (shared with the front-end). */
  buffer: SharedArrayBuffer;
  /** Where this queue's header starts in `buffer` (a multiple of 8). */
  offset: number;
  /** Descriptor entries of this queue: the region's queue_size. */
  descNum: number;
}

// Indexes into the u16 / u32 views of one queue's part.
const U16_VERSION = 4;
const U16_DESC_NUM = 5;
const U16_LAST_BATCH_HEAD = 6;
const U16_USED_IDX = 7;
/** u8 index of desc[i].inflight = FLAG_BASE + 16 i. */
const FLAG_BASE = 16;
/** u16 index of desc[i].next = NEXT_BASE + 8 i. */
const NEXT_BASE = 11;
/** u32 index of desc[i].counter's low half = COUNTER_BASE + 4 i (high half + 1). */
const COUNTER_BASE = 6;

/** What recover() found and decided. */
export interface InflightRecovery {
  /** Empty when the region is usable; otherwise why the queue must stop. */
  error: string;
  /** The header was all zero: a new region, nothing to recover (version now set). */
  fresh: boolean;
  /** Where to resume reading the avail ring: used->idx + entries in flight. */
  lastAvailIdx: number;
  /** Heads to run again before any new avail entry, in ascending counter order. */
  resubmit: Uint16Array;
  /** Entries of the last batch whose inflight flag was cleared (completed, but flags not yet reset). */
  batchFixedUp: number;
}

/** The tracker of one queue: the hot-path recording and the recovery at start. */
export class InflightQueue {
  readonly descNum: number;
  /** Ring size (SET_VRING_NUM): heads and batch sizes are checked against it. */
  readonly ringSize: number;
  private readonly u8: Uint8Array;
  private readonly u16: Uint16Array;
  private readonly u32: Uint32Array;
  private counterLo = 0;
  private counterHi = 0;
  private lastBatchHead = 0;
  /** Heads completed since the last publish (ours, not the region's `next` links). */
  private readonly batch: Uint16Array;
  private batchCount = 0;

  constructor(slice: InflightSlice, ringSize: number) {
    const bytes = inflightQueueBytes(slice.descNum);
    if (!Number.isInteger(slice.offset) || slice.offset < 0 || slice.offset % 8 !== 0) {
      throw new RangeError(`in-flight slice offset ${slice.offset} is not a non-negative multiple of 8`);
    }
    if (slice.offset + bytes > slice.buffer.byteLength) {
      throw new RangeError(`in-flight slice [${slice.offset}, +${bytes}) exceeds its ${slice.buffer.byteLength}-byte mapping`);
    }
    if (!Number.isInteger(ringSize) || ringSize < 1 || ringSize > slice.descNum) {
      throw new RangeError(`ring size ${ringSize} does not fit the in-flight region's ${slice.descNum} entries`);
    }
    this.descNum = slice.descNum;
    this.ringSize = ringSize;
    this.u8 = new Uint8Array(slice.buffer, slice.offset, bytes);
    this.u16 = new Uint16Array(slice.buffer, slice.offset, bytes / 2);
    this.u32 = new Uint32Array(slice.buffer, slice.offset, bytes / 4);
    this.batch = new Uint16Array(ringSize);
  }

  /** A head was taken from the avail ring (call before the request can have any effect). */
  fetched(head: number): void {
    const lo = this.counterLo;
    this.u32[COUNTER_BASE + 4 * head] = lo;
    this.u32[COUNTER_BASE + 1 + 4 * head] = this.counterHi;
    this.u8[FLAG_BASE + 16 * head] = 1;
    if (lo === 0xffffffff) {
      this.counterLo = 0;
      this.counterHi = (this.counterHi + 1) >>> 0;
    } else {
      this.counterLo = lo + 1;
    }
  }

  /** A fetched head went back to the avail ring unused (SplitVirtqueue.unpop): no longer in flight. */
  unfetched(head: number): void {
    this.u8[FLAG_BASE + 16 * head] = 0;
  }

  /** A head's used element was written (not yet published): link it into the batch. */
  completed(head: number): void {
    // More completions than ring entries between two publishes needs a guest that re-offered
    // heads before seeing them used: those extra records are dropped (the head stays marked in
    // flight and would be run again after a restart, which is all such a guest can expect).
    if (this.batchCount === this.batch.length) return;
    this.u16[NEXT_BASE + 8 * head] = this.lastBatchHead;
    this.u16[U16_LAST_BATCH_HEAD] = head;
    this.lastBatchHead = head;
    this.batch[this.batchCount++] = head;
  }

  /**
   * used->idx was just published (a release store) as `usedIdx`: the batch is done. Its flags
   * are cleared only now, so a crash in between leaves them set and the batch fix-up of the
   * next start clears them; clearing before would lose requests the guest never saw completed.
   */
  published(usedIdx: number): void {
    const batch = this.batch;
    const u8 = this.u8;
    const count = this.batchCount;
    for (let i = 0; i < count; i++) u8[FLAG_BASE + 16 * batch[i]] = 0;
    this.batchCount = 0;
    Atomics.store(this.u16, U16_USED_IDX, usedIdx);
  }

  /**
   * The start of a queue (libvhost-user's vu_check_queue_inflights, with the spec's batch walk):
   * `usedIdx` is used->idx as the guest sees it now, `baseAvailIdx` the SET_VRING_BASE value.
   * A fresh region (version 0) is stamped and nothing is recovered. Otherwise the last batch is
   * fixed up when used_idx lags used->idx, and every entry still flagged is resubmitted in
   * counter order, with the avail ring resumed after them. Every value read from the region is
   * checked: an error string instead of a crash or a read outside the ring.
   */
  recover(usedIdx: number, baseAvailIdx: number): InflightRecovery {
    const u8 = this.u8;
    const u16 = this.u16;
    const u32 = this.u32;
    const ringSize = this.ringSize;
    const none = new Uint16Array(0);
    const fail = (error: string): InflightRecovery => ({
      error,
      fresh: false,
      lastAvailIdx: baseAvailIdx,
      resubmit: none,
      batchFixedUp: 0,
    });
    this.batchCount = 0;
    const version = u16[U16_VERSION];
    if (version === 0) {
      // A new region: nothing was ever recorded. used_idx starts in step with the ring, so a
      // crash before the first publish cannot trigger a fix-up of a batch that never was; flags
      // a front-end left in it are cleared, or a later recovery would take them for requests.
      for (let i = 0; i < this.descNum; i++) u8[FLAG_BASE + 16 * i] = 0;
      u16[U16_DESC_NUM] = this.descNum;
      u16[U16_LAST_BATCH_HEAD] = 0;
      u16[U16_USED_IDX] = usedIdx;
      Atomics.store(u16, U16_VERSION, INFLIGHT_VERSION);
      this.counterLo = 0;
      this.counterHi = 0;
      this.lastBatchHead = 0;
      return { error: '', fresh: true, lastAvailIdx: baseAvailIdx & 0xffff, resubmit: none, batchFixedUp: 0 };
    }
    if (version !== INFLIGHT_VERSION) return fail(`in-flight region has unknown version ${version}`);
    if (u16[U16_DESC_NUM] !== this.descNum) {
      return fail(`in-flight region says ${u16[U16_DESC_NUM]} entries per queue, the front-end said ${this.descNum}`);
    }

    // The last batch: published in used->idx, its flags possibly not yet cleared.
    let batchFixedUp = 0;
    const recordedUsed = u16[U16_USED_IDX];
    if (recordedUsed !== usedIdx) {
      const batchSize = (usedIdx - recordedUsed) & 0xffff;
      if (batchSize > ringSize) {
        return fail(
          `in-flight region's last batch (used_idx ${recordedUsed} → used->idx ${usedIdx}) exceeds the ring size ${ringSize}`,
        );
      }
      let head = u16[U16_LAST_BATCH_HEAD];
      for (let k = 0; k < batchSize; k++) {
        if (head >= ringSize) return fail(`in-flight region's last batch names head ${head}, beyond the ring size ${ringSize}`);
        u8[FLAG_BASE + 16 * head] = 0;
        head = u16[NEXT_BASE + 8 * head];
      }
      batchFixedUp = batchSize;
      u16[U16_USED_IDX] = usedIdx;
    }

    // Entries still in flight: only heads inside the ring, flags only 0 or 1.
    const heads: number[] = [];
    for (let i = 0; i < this.descNum; i++) {
      const flag = u8[FLAG_BASE + 16 * i];
      if (flag === 0) continue;
      if (flag !== 1) return fail(`in-flight entry ${i} has flag ${flag} (neither 0 nor 1)`);
      if (i >= ringSize) return fail(`in-flight entry ${i} is marked in flight but the ring has ${ringSize} entries`);
      heads.push(i);
    }
    heads.sort((a, b) => {
      const ha = u32[COUNTER_BASE + 1 + 4 * a];
      const hb = u32[COUNTER_BASE + 1 + 4 * b];
      if (ha !== hb) return ha - hb;
      return u32[COUNTER_BASE + 4 * a] - u32[COUNTER_BASE + 4 * b] || a - b;
    });
    // Counting resumes after the newest in-flight entry, so resubmitted entries stay older.
    this.counterLo = 0;
    this.counterHi = 0;
    if (heads.length > 0) {
      const newest = heads[heads.length - 1];
      this.counterLo = u32[COUNTER_BASE + 4 * newest];
      this.counterHi = u32[COUNTER_BASE + 1 + 4 * newest];
      if (this.counterLo === 0xffffffff) {
        this.counterLo = 0;
        this.counterHi = (this.counterHi + 1) >>> 0;
      } else {
        this.counterLo++;
      }
    }
    this.lastBatchHead = u16[U16_LAST_BATCH_HEAD] < ringSize ? u16[U16_LAST_BATCH_HEAD] : 0;
    return {
      error: '',
      fresh: false,
      lastAvailIdx: (usedIdx + heads.length) & 0xffff,
      resubmit: Uint16Array.from(heads),
      batchFixedUp,
    };
  }
}

/** Reads one queue's header and entries (tests, diagnostics; not the hot path). */
export function readInflightQueue(slice: InflightSlice): {
  version: number;
  descNum: number;
  lastBatchHead: number;
  usedIdx: number;
  /** Per entry: [inflight flag, next, counter]. */
  entries: Array<{ inflight: number; next: number; counter: bigint }>;
} {
  const view = new DataView(slice.buffer, slice.offset, inflightQueueBytes(slice.descNum));
  const entries = [];
  for (let i = 0; i < slice.descNum; i++) {
    const base = INFLIGHT_HEADER_BYTES + INFLIGHT_DESC_BYTES * i;
    entries.push({
      inflight: view.getUint8(base),
      next: view.getUint16(base + 6, true),
      counter: view.getBigUint64(base + 8, true),
    });
  }
  return {
    version: view.getUint16(8, true),
    descNum: view.getUint16(10, true),
    lastBatchHead: view.getUint16(12, true),
    usedIdx: view.getUint16(14, true),
    entries,
  };
}
