// The device side of one split virtqueue (virtio 1.x §2.7): reads the avail ring, walks chains
// into preallocated requests, writes and publishes the used ring, and decides when to notify.
// Nothing here allocates per request.
//
// Memory ordering. The driver runs on another thread or process. avail.idx is read with
// Atomics.load before the ring entries and descriptors it covers (acquire side); used entries
// and the device's data writes are plain stores made before Atomics.store of used.idx, which is
// sequentially consistent and so a release (x86: xchg; arm64: stlr) — the order §2.7.13 asks for.
//
// Hostile rings. A malformed ring marks the queue broken with a BrokenReason (chain.ts) and
// stops it: pop() returns false, nothing more is written to its used ring, no notification is
// asked for (QEMU does the same for a broken device). Nothing throws and other queues are
// unaffected. The control plane reports it (SET_VRING_ERR / logs) and waits for a reset.
//
// Host byte order must be little-endian (descriptors are read through typed arrays). Every
// platform Node supports for this project is (x86-64, arm64); the module refuses to load otherwise.
import { MAX_QUEUE_SIZE } from '../control/protocol.js';
import { BrokenReason, ChainWalker, brokenReasonName } from './chain.js';
import type { DirtyLog } from './dirty-log.js';
import { GuestMemory } from './memory.js';
import { VRING_AVAIL_F_NO_INTERRUPT, VRING_USED_F_NO_NOTIFY, availEventSlot, usedEventSlot, vringNeedEvent } from './notify.js';
import type { Virtqueue } from './queue.js';
import type { VirtqRequest } from './request.js';
import type { InflightQueue, InflightRecovery } from './inflight.js';

export { BrokenReason, brokenReasonName } from './chain.js';
export type { BrokenReasonCode } from './chain.js';

if (new Uint8Array(new Uint16Array([1]).buffer)[0] !== 1) {
  throw new Error('vhost-user-ts data plane requires a little-endian host');
}

export interface VirtqueueConfig {
  memory: GuestMemory;
  /** Entries: a power of two in [1, 32768] (SET_VRING_NUM). */
  size: number;
  /** Split: descriptor table. Packed: descriptor ring. */
  descAddr: number;
  /** Split: avail ring. Packed: driver event suppression area. */
  availAddr: number;
  /** Split: used ring. Packed: device event suppression area. */
  usedAddr: number;
  /** VIRTIO_F_RING_PACKED negotiated: createVirtqueue() builds a PackedVirtqueue. Default false. */
  packed?: boolean;
  /**
   * 'guest' (default): the addresses are guest-physical. 'userspace': they are front-end virtual
   * addresses as sent in SET_VRING_ADDR, translated through each region's userspace address (and
   * again after every memory table change).
   */
  addressSpace?: 'guest' | 'userspace';
  /** Next avail index to consume (SET_VRING_BASE; packed: position | wrap << 15). Default 0 (packed: 0x8000). */
  lastAvailIdx?: number;
  /** Next used index to write. Default: the ring's current used.idx (as libvhost-user does). */
  usedIdx?: number;
  /** VIRTIO_RING_F_EVENT_IDX negotiated. Default false. */
  eventIdx?: boolean;
  /** VIRTIO_RING_F_INDIRECT_DESC negotiated. Default false. */
  indirectDesc?: boolean;
  /** Queue number, for diagnostics. */
  index?: number;
}

const EMPTY_U16 = new Uint16Array(0);
const EMPTY_U32 = new Uint32Array(0);

export class SplitVirtqueue implements Virtqueue {
  readonly index: number;
  readonly size: number;
  readonly eventIdx: boolean;
  readonly indirectDesc: boolean;
  readonly packed = false;

  private readonly mask: number;
  private readonly descAddr: number;
  private readonly availAddr: number;
  private readonly usedAddr: number;
  private readonly userspace: boolean;
  private memoryTable: GuestMemory;
  private walker: ChainWalker;
  private availU16: Uint16Array = EMPTY_U16;
  private usedU16: Uint16Array = EMPTY_U16;
  private usedU32: Uint32Array = EMPTY_U32;
  private readonly usedEventIdx: number;
  private readonly availEventIdx: number;

  private lastAvail: number;
  /** avail.idx as last loaded; entries in [lastAvail, shadowAvail) are known published. */
  private shadowAvail: number;
  private usedShadow = 0;
  private publishedUsed = 0;
  private signalledUsed = 0;
  private signalledValid = false;
  private usedFlags = 0;
  private notifying = true;
  private readonly inflight: Uint8Array;
  private inFlightCount = 0;
  /** Guest-physical address of the used ring, as this queue resolved it. */
  private usedGpa = 0;
  // Dirty log (live migration): null while not logging. usedLogGpa is where used-ring writes are
  // marked: log_guest_addr from SET_VRING_ADDR, or the resolved address when none was given.
  private usedLog: DirtyLog | null = null;
  private usedLogGpa = 0;
  private usedLogGiven = -1;

  // In-flight tracking (inflight.ts), when the front-end shares a region: null otherwise.
  private tracker: InflightQueue | null = null;
  /** Heads recovered from the in-flight region, run before any new avail entry. */
  private resubmit: Uint16Array = EMPTY_U16;
  private resubmitPos = 0;

  private reason: number = BrokenReason.NONE;
  private reasonDetail = '';
  private reasonHead = -1;
  private reasonIndex = -1;
  private reasonInIndirect = false;

  constructor(config: VirtqueueConfig) {
    this.index = config.index ?? 0;
    this.size = config.size;
    this.eventIdx = config.eventIdx ?? false;
    this.indirectDesc = config.indirectDesc ?? false;
    this.descAddr = config.descAddr;
    this.availAddr = config.availAddr;
    this.usedAddr = config.usedAddr;
    this.userspace = config.addressSpace === 'userspace';
    this.memoryTable = config.memory;
    this.lastAvail = (config.lastAvailIdx ?? 0) & 0xffff;
    this.shadowAvail = this.lastAvail;
    const sizeOk =
      Number.isInteger(this.size) && this.size >= 1 && this.size <= MAX_QUEUE_SIZE && (this.size & (this.size - 1)) === 0;
    const size = sizeOk ? this.size : 1;
    this.mask = size - 1;
    this.usedEventIdx = usedEventSlot(size);
    this.availEventIdx = availEventSlot(size);
    this.inflight = new Uint8Array(size);
    this.walker = new ChainWalker(config.memory, EMPTY_U32, 0, false);
    if (!sizeOk) {
      this.markBroken(BrokenReason.BAD_SIZE);
      return;
    }
    if (this.bindRings(config.memory) !== BrokenReason.NONE) return;
    this.usedShadow = (config.usedIdx ?? Atomics.load(this.usedU16, 1)) & 0xffff;
    this.publishedUsed = this.usedShadow;
    this.signalledUsed = this.usedShadow;
    this.usedFlags = this.usedU16[0];
  }

  /** The memory table this queue translates through. */
  get memory(): GuestMemory {
    return this.memoryTable;
  }

  /**
   * Switches to a new memory table (call at a safe point, between batches). Ring addresses are
   * resolved again (userspace ones re-translated). Returns a BrokenReason (NONE on success).
   */
  setMemory(memory: GuestMemory): number {
    this.memoryTable = memory;
    if (this.reason !== BrokenReason.NONE) return this.reason;
    const reason = this.bindRings(memory);
    if (this.usedLogGiven < 0) this.usedLogGpa = this.usedGpa;
    return reason;
  }

  /** Next avail index to consume: the value for GET_VRING_BASE. */
  get lastAvailIdx(): number {
    return this.lastAvail;
  }

  /** used.idx as last published by flushUsed(). */
  get usedIdx(): number {
    return this.publishedUsed;
  }

  /** Requests popped and not yet given back with pushUsed(). */
  get inFlight(): number {
    return this.inFlightCount;
  }

  get broken(): boolean {
    return this.reason !== BrokenReason.NONE;
  }

  /** A BrokenReason; NONE while healthy. */
  get brokenReason(): number {
    return this.reason;
  }

  /** For logs: reason, head and descriptor involved. */
  describeBroken(): string {
    if (this.reason === BrokenReason.NONE) return `queue ${this.index}: healthy`;
    let text = `queue ${this.index}: ${brokenReasonName(this.reason)}`;
    if (this.reasonDetail !== '') text += `: ${this.reasonDetail}`;
    if (this.reasonHead >= 0) text += ` (head ${this.reasonHead}`;
    if (this.reasonHead >= 0 && this.reasonIndex >= 0) {
      text += `, ${this.reasonInIndirect ? 'indirect ' : ''}descriptor ${this.reasonIndex}`;
    }
    if (this.reasonHead >= 0) text += ')';
    return text;
  }

  /** Stops the queue (e.g. a device found its requests unusable). The first reason sticks. */
  markBroken(reason: number, head = -1, descriptorIndex = -1, inIndirect = false): void {
    if (this.reason !== BrokenReason.NONE) return;
    this.reason = reason;
    this.reasonHead = head;
    this.reasonIndex = descriptorIndex;
    this.reasonInIndirect = inIndirect;
  }

  /**
   * ---- in-flight tracking hook: start ----
   * Attaches the queue's in-flight tracker and recovers from it (at queue start, before the
   * first pop): resumes the avail ring after the entries still in flight and queues those for
   * pop() ahead of new ones. A region that fails recovery's checks breaks the queue
   * (INFLIGHT_REGION, with the reason in describeBroken()).
   */
  attachInflight(tracker: InflightQueue): InflightRecovery | null {
    // A queue already broken (rings outside memory) reads nothing: the region stays as it is.
    if (this.reason !== BrokenReason.NONE) return null;
    const recovery = tracker.recover(this.usedShadow, this.lastAvail);
    if (recovery.error !== '') {
      this.markBroken(BrokenReason.INFLIGHT_REGION);
      this.reasonDetail = recovery.error;
      return recovery;
    }
    this.tracker = tracker;
    this.lastAvail = recovery.lastAvailIdx;
    this.shadowAvail = this.lastAvail;
    this.resubmit = recovery.resubmit;
    this.resubmitPos = 0;
    return recovery;
  }

  /** Resumes reading the avail ring at used->idx (a queue taken over without an in-flight region). */
  resumeAtUsedIdx(): void {
    this.lastAvail = this.usedShadow;
    this.shadowAvail = this.usedShadow;
  }

  /** Recovered heads not yet popped again. */
  get resubmitPending(): number {
    return this.resubmit.length - this.resubmitPos;
  }

  /** pop() for a recovered head: it keeps its counter and flag; lastAvail already counts it. */
  private popResubmitted(req: VirtqRequest): boolean {
    const head = this.resubmit[this.resubmitPos++];
    if (this.inflight[head] !== 0) {
      this.markBroken(BrokenReason.HEAD_IN_FLIGHT, head);
      return false;
    }
    const reason = this.walker.walk(head, req);
    if (reason !== BrokenReason.NONE) {
      this.markBroken(reason, head, this.walker.failIndex, this.walker.failInIndirect);
      return false;
    }
    this.inflight[head] = 1;
    this.inFlightCount++;
    return true;
  }
  // ---- in-flight tracking hook: end ----

  /**
   * New avail entries not yet popped. Loads avail.idx; a jump of more than the queue size
   * breaks the queue (AVAIL_IDX_JUMP) and returns 0.
   */
  availableCount(): number {
    if (this.reason !== BrokenReason.NONE) return 0;
    const availIdx = Atomics.load(this.availU16, 1);
    const count = (availIdx - this.lastAvail) & 0xffff;
    if (count > this.size) {
      this.markBroken(BrokenReason.AVAIL_IDX_JUMP);
      return 0;
    }
    this.shadowAvail = availIdx;
    return count;
  }

  /**
   * Takes the next available chain into req. False when there is none or the queue is (or just
   * became) broken — check `broken` to tell which.
   */
  pop(req: VirtqRequest): boolean {
    if (this.reason !== BrokenReason.NONE) return false;
    if (this.resubmitPos < this.resubmit.length) return this.popResubmitted(req); // in-flight tracking hook
    const lastAvail = this.lastAvail;
    if (lastAvail === this.shadowAvail) {
      const availIdx = Atomics.load(this.availU16, 1);
      if (((availIdx - lastAvail) & 0xffff) > this.size) {
        this.markBroken(BrokenReason.AVAIL_IDX_JUMP);
        return false;
      }
      this.shadowAvail = availIdx;
      if (availIdx === lastAvail) return false;
    }
    const head = this.availU16[2 + (lastAvail & this.mask)];
    if (head >= this.size) {
      this.markBroken(BrokenReason.HEAD_OUT_OF_RANGE, head);
      return false;
    }
    if (this.inflight[head] !== 0) {
      this.markBroken(BrokenReason.HEAD_IN_FLIGHT, head);
      return false;
    }
    const reason = this.walker.walk(head, req);
    if (reason !== BrokenReason.NONE) {
      this.markBroken(reason, head, this.walker.failIndex, this.walker.failInIndirect);
      return false;
    }
    this.inflight[head] = 1;
    this.inFlightCount++;
    if (this.tracker !== null) this.tracker.fetched(head); // in-flight tracking hook
    req.availIdx = lastAvail;
    this.lastAvail = (lastAvail + 1) & 0xffff;
    return true;
  }

  /**
   * Takes back the most recently popped chain still in flight as if it had never been popped:
   * last_avail_idx steps back, so a stop (GET_VRING_BASE) leaves the buffer with the driver, as
   * DPDK and QEMU leave RX buffers they never filled (libvhost-user's vu_queue_unpop and
   * vu_queue_rewind are the same step). Nothing is written to the rings. False
   * (nothing changes) unless `req` is that chain: take several back newest first.
   */
  unpop(req: VirtqRequest): boolean {
    const head = req.head;
    if (head >>> 0 >= this.size || this.inflight[head] === 0) return false;
    if (req.availIdx !== ((this.lastAvail - 1) & 0xffff)) return false;
    this.inflight[head] = 0;
    this.inFlightCount--;
    if (this.tracker !== null) this.tracker.unfetched(head); // in-flight tracking hook
    this.lastAvail = req.availIdx;
    return true;
  }

  /**
   * Writes one used element (not yet visible to the driver: see flushUsed). Completions may come
   * in any order. False, writing nothing, if the queue is broken or head is not in flight.
   */
  pushUsed(head: number, len: number): boolean {
    if (this.reason !== BrokenReason.NONE) return false;
    if (head >>> 0 >= this.size || this.inflight[head] === 0) return false;
    this.inflight[head] = 0;
    this.inFlightCount--;
    const slot = this.usedShadow & this.mask;
    this.usedU32[1 + 2 * slot] = head;
    this.usedU32[2 + 2 * slot] = len >>> 0;
    if (this.tracker !== null) this.tracker.completed(head); // in-flight tracking hook
    this.usedShadow = (this.usedShadow + 1) & 0xffff;
    return true;
  }

  /** Publishes the used elements pushed so far with one release store of used.idx. */
  flushUsed(): void {
    if (this.reason !== BrokenReason.NONE) return;
    if (this.usedShadow === this.publishedUsed) return;
    Atomics.store(this.usedU16, 1, this.usedShadow);
    // --- dirty log hook: after the stores it covers (one branch while not logging) ---
    if (this.usedLog !== null) this.logUsed(this.publishedUsed, this.usedShadow);
    this.publishedUsed = this.usedShadow;
    if (this.tracker !== null) this.tracker.published(this.usedShadow); // in-flight tracking hook
  }

  /**
   * Starts (log non-null) or stops marking this queue's used-ring writes in a dirty log. Call at
   * a safe point. logGuestAddr: the used ring's guest-physical address for the log
   * (SET_VRING_ADDR's log_guest_addr with VHOST_VRING_F_LOG), or -1 for the address this queue
   * resolved itself. The whole used ring is marked once now: fields written before logging
   * started (flags, avail_event) must reach the destination too.
   */
  setUsedLog(log: DirtyLog | null, logGuestAddr = -1): void {
    this.usedLog = log;
    this.usedLogGiven = logGuestAddr;
    this.usedLogGpa = logGuestAddr >= 0 ? logGuestAddr : this.usedGpa;
    if (log !== null && this.reason === BrokenReason.NONE) {
      log.markRange(this.usedLogGpa, 4 + 8 * this.size + (this.eventIdx ? 2 : 0));
    }
  }

  /** Marks used elements [from, to) (indexes mod 2^16) and used.idx. */
  private logUsed(from: number, to: number): void {
    const log = this.usedLog as DirtyLog;
    const base = this.usedLogGpa;
    const count = (to - from) & 0xffff;
    const start = from & this.mask;
    if (count >= this.size) {
      log.markRange(base + 4, 8 * this.size);
    } else if (start + count <= this.size) {
      log.markRange(base + 4 + 8 * start, 8 * count);
    } else {
      log.markRange(base + 4 + 8 * start, 8 * (this.size - start));
      log.markRange(base + 4, 8 * (start + count - this.size));
    }
    log.markPage(base + 2);
  }

  /**
   * After flushUsed(): whether to signal the call fd for the entries published since the last
   * signal (§2.7.10). With EVENT_IDX, iff used_event lies in [old, new); otherwise iff the driver
   * has not set VRING_AVAIL_F_NO_INTERRUPT. Counts as signalled when it returns true.
   */
  needsCall(): boolean {
    if (this.reason !== BrokenReason.NONE) return false;
    const newIdx = this.publishedUsed;
    const oldIdx = this.signalledUsed;
    if (newIdx === oldIdx) return false;
    this.signalledUsed = newIdx;
    // The Atomics.store of used.idx (flushUsed) and this Atomics.load are sequentially
    // consistent: the driver's used_event / flags update cannot be missed (the smp_mb of
    // virtio_should_notify). The first call after (re)start signals unconditionally.
    if (this.eventIdx) {
      const valid = this.signalledValid;
      this.signalledValid = true;
      return !valid || vringNeedEvent(Atomics.load(this.availU16, this.usedEventIdx), newIdx, oldIdx);
    }
    return (Atomics.load(this.availU16, 0) & VRING_AVAIL_F_NO_INTERRUPT) === 0;
  }

  /** Whether the driver is currently asked to kick (see enable/disableNotification). */
  get notificationsEnabled(): boolean {
    return this.notifying;
  }

  /**
   * Asks the driver to kick for the next available entry: with EVENT_IDX, avail_event =
   * lastAvailIdx; otherwise clears VRING_USED_F_NO_NOTIFY. Use before sleeping, through
   * enableNotificationAndRecheck().
   */
  enableNotification(): void {
    this.notifying = true;
    if (this.reason !== BrokenReason.NONE) return;
    if (this.eventIdx) {
      Atomics.store(this.usedU16, this.availEventIdx, this.lastAvail);
    } else {
      this.usedFlags &= ~VRING_USED_F_NO_NOTIFY;
      Atomics.store(this.usedU16, 0, this.usedFlags);
    }
    if (this.usedLog !== null) this.usedLog.markPage(this.usedLogGpa + (this.eventIdx ? 2 * this.availEventIdx : 0));
  }

  /**
   * Tells the driver kicks are not needed (busy polling). With EVENT_IDX nothing is written:
   * avail_event is left stale, so the driver kicks at most once per 2^16 entries.
   */
  disableNotification(): void {
    this.notifying = false;
    if (this.reason !== BrokenReason.NONE) return;
    if (!this.eventIdx) {
      this.usedFlags |= VRING_USED_F_NO_NOTIFY;
      Atomics.store(this.usedU16, 0, this.usedFlags);
      if (this.usedLog !== null) this.usedLog.markPage(this.usedLogGpa);
    }
  }

  /**
   * enableNotification(), then checks for entries that arrived before the driver could see it.
   * True: there is work — process it instead of sleeping (notifications stay enabled). Without
   * this re-check the worker and the driver can each miss the other's store (a Dekker race): the
   * driver publishes avail.idx and reads avail_event/flags; we write avail_event/flags and read
   * avail.idx. Both sides use full barriers; ours is the sequential consistency of Atomics.store
   * followed by Atomics.load (a locked xchg on x86), so one side always sees the other.
   */
  enableNotificationAndRecheck(): boolean {
    this.enableNotification();
    if (this.reason !== BrokenReason.NONE) return false;
    if (this.resubmitPos < this.resubmit.length) return true;
    return Atomics.load(this.availU16, 1) !== this.lastAvail;
  }

  private bindRings(memory: GuestMemory): number {
    const size = this.size;
    const trailer = this.eventIdx ? 2 : 0;
    const desc = this.ringBytes(memory, this.descAddr, 16 * size, 16);
    if (desc < 0) return this.reason;
    const descBuffer = memory.buffers[memory.outRegion];
    const descOffset = memory.outBufferOffset;
    const avail = this.ringBytes(memory, this.availAddr, 4 + 2 * size + trailer, 2);
    if (avail < 0) return this.reason;
    const availBuffer = memory.buffers[memory.outRegion];
    const availOffset = memory.outBufferOffset;
    const used = this.ringBytes(memory, this.usedAddr, 4 + 8 * size + trailer, 4);
    if (used < 0) return this.reason;
    this.usedGpa = used;
    const usedBuffer = memory.buffers[memory.outRegion];
    const usedOffset = memory.outBufferOffset;

    const descWords = new Uint32Array(descBuffer, descOffset, 4 * size);
    this.availU16 = new Uint16Array(availBuffer, availOffset, 2 + size + trailer / 2);
    this.usedU16 = new Uint16Array(usedBuffer, usedOffset, 2 + 4 * size + trailer / 2);
    this.usedU32 = new Uint32Array(usedBuffer, usedOffset, 1 + 2 * size);
    this.walker = new ChainWalker(memory, descWords, size, this.indirectDesc);
    return BrokenReason.NONE;
  }

  /** Resolves one ring: its guest-physical address with memory.out* set, or -1 after marking the queue broken. */
  private ringBytes(memory: GuestMemory, addr: number, bytes: number, align: number): number {
    const gpa = this.userspace ? memory.userspaceToGuest(addr, bytes) : addr;
    if (gpa < 0 || !Number.isSafeInteger(gpa) || memory.translateSegment(gpa, bytes) < 0) {
      this.markBroken(BrokenReason.RING_ADDRESS);
      return -1;
    }
    if (gpa % align !== 0 || memory.outBufferOffset % align !== 0) {
      this.markBroken(BrokenReason.RING_MISALIGNED);
      return -1;
    }
    return gpa;
  }
}
