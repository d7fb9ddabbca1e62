// The device side of one packed virtqueue (virtio 1.x §2.8): one descriptor ring holds what the
// driver offers and what the device gives back, told apart by the AVAIL (bit 7) and USED (bit 15)
// flags against wrap counters that flip at every pass over the ring end. Same interface as the
// split ring (queue.ts); nothing here allocates per request.
//
// Offering: a descriptor at the device's next avail position is available when AVAIL equals the
// avail wrap counter and USED does not. Completing: one used descriptor per buffer, written at
// the device's next used position with the buffer id, the written length and AVAIL = USED = the
// used wrap counter; the used position then moves by the chain's ring descriptors (§2.8.6), which
// the queue remembers per buffer id. Buffers complete in any order.
//
// Memory ordering (§2.8.21, as in virtio_ring.c and DPDK): the head's flags are read with
// Atomics.load before the rest of the chain (the driver stores the head's flags last, with a
// release). Used descriptors get id and len as plain stores; flushUsed() then stores the flags of
// the batch's later elements and last, with Atomics.store (release), the first one's — the driver
// reads used descriptors in order, so it sees the whole batch at once, as DPDK's batched update.
//
// Event suppression (§2.8.10): {le16 off_wrap (bit 15 wrap); le16 flags: 0 ENABLE, 1 DISABLE,
// 2 DESC (EVENT_IDX only)}. The driver area says when we notify; we write the device area to ask
// for kicks. Each is read or written as one u32 Atomics access, so both fields stay consistent.
//
// Hostile rings break only this queue with a BrokenReason, as the split ring does: a head whose
// AVAIL and USED bits both equal the wrap counter (PACKED_FLAGS), a buffer id ≥ size or already
// in flight, a chain longer than the ring (CHAIN_LOOP) or into slots still in flight
// (PACKED_RING_OVERRUN), and every chain rule of packed-chain.ts.
import { MAX_QUEUE_SIZE } from '../control/protocol.js';
import { BrokenReason, brokenReasonName } from './chain.js';
import { GuestMemory } from './memory.js';
import { PackedChainWalker } from './packed-chain.js';
import type { Virtqueue } from './queue.js';
import type { DirtyLog } from './dirty-log.js';
import type { VirtqRequest } from './request.js';
import type { VirtqueueConfig } from './virtqueue.js';

/** Descriptor flags of the packed layout (§2.8.1). */
export const VIRTQ_DESC_F_AVAIL = 1 << 7;
export const VIRTQ_DESC_F_USED = 1 << 15;
/** Event suppression flags (§2.8.10). */
export const RING_EVENT_FLAGS_ENABLE = 0;
export const RING_EVENT_FLAGS_DISABLE = 1;
export const RING_EVENT_FLAGS_DESC = 2;
/** Bit of off_wrap, and of a packed vring base, that holds the wrap counter. */
export const PACKED_WRAP_BIT = 15;

const EMPTY_U16 = new Uint16Array(0);
const EMPTY_U32 = new Uint32Array(0);

export class PackedVirtqueue implements Virtqueue {
  readonly index: number;
  readonly size: number;
  readonly eventIdx: boolean;
  readonly indirectDesc: boolean;
  readonly packed = true;

  private readonly descAddr: number;
  private readonly driverAddr: number;
  private readonly deviceAddr: number;
  private readonly userspace: boolean;
  private memoryTable: GuestMemory;
  private walker: PackedChainWalker;
  /** The descriptor ring: u16 view (id at 8i+6, flags at 8i+7) and u32 view (len at 4i+2). */
  private ringU16: Uint16Array = EMPTY_U16;
  private ringU32: Uint32Array = EMPTY_U32;
  /** Driver / device event suppression areas: one u32 each (off_wrap | flags << 16). */
  private driverEvent: Uint32Array = EMPTY_U32;
  private deviceEvent: Uint32Array = EMPTY_U32;

  private nextAvail = 0;
  private availWrap = 1;
  private nextUsed = 0;
  private usedWrap = 1;
  /** Per buffer id: ring descriptors its chain occupies; 0 when not in flight. */
  private readonly chainLength: Uint16Array;
  private inFlightCount = 0;
  private inFlightDescriptors = 0;
  /** Used elements written (id, len) whose flags flushUsed() has not stored yet. */
  private readonly pendingPosition: Uint16Array;
  private readonly pendingFlags: Uint16Array;
  private pendingCount = 0;
  /** Ring descriptors given back: pushed / published / at the last signal (free-running). */
  private usedCount = 0;
  private publishedCount = 0;
  private signalledCount = 0;
  /** Position and wrap (as a 16-bit base) right after the last published used element. */
  private publishedBase = 0;
  private signalledValid = false;
  private notifying = true;

  // --- dirty log hook: where the device's ring writes land (guest-physical), and the log ---
  private ringGpa = 0;
  private deviceGpa = 0;
  private usedLog: DirtyLog | null = null;

  private reason: number = BrokenReason.NONE;
  private reasonHead = -1;
  private reasonIndex = -1;
  private reasonInIndirect = false;

  constructor(config: VirtqueueConfig) {
    this.index = config.index ?? 0;
    this.size = config.size;
    this.eventIdx = config.eventIdx ?? false;
    this.indirectDesc = config.indirectDesc ?? false;
    this.descAddr = config.descAddr;
    this.driverAddr = config.availAddr;
    this.deviceAddr = config.usedAddr;
    this.userspace = config.addressSpace === 'userspace';
    this.memoryTable = config.memory;
    const sizeOk =
      Number.isInteger(this.size) && this.size >= 1 && this.size <= MAX_QUEUE_SIZE && (this.size & (this.size - 1)) === 0;
    const size = sizeOk ? this.size : 1;
    this.chainLength = new Uint16Array(size);
    this.pendingPosition = new Uint16Array(size);
    this.pendingFlags = new Uint16Array(size);
    this.walker = new PackedChainWalker(config.memory, EMPTY_U32, 0, false);
    if (!sizeOk) {
      this.markBroken(BrokenReason.BAD_SIZE);
      return;
    }
    const availBase = (config.lastAvailIdx ?? 1 << PACKED_WRAP_BIT) & 0xffff;
    // The rule that works with QEMU and DPDK (PROTOCOL-NOTES "Packed rings"): used = avail.
    const usedBase = (config.usedIdx ?? availBase) & 0xffff;
    if ((availBase & 0x7fff) >= size || (usedBase & 0x7fff) >= size) {
      this.markBroken(BrokenReason.PACKED_BAD_BASE);
      return;
    }
    this.nextAvail = availBase & 0x7fff;
    this.availWrap = availBase >>> PACKED_WRAP_BIT;
    this.nextUsed = usedBase & 0x7fff;
    this.usedWrap = usedBase >>> PACKED_WRAP_BIT;
    this.publishedBase = usedBase;
    this.bindRings(config.memory);
  }

  get memory(): GuestMemory {
    return this.memoryTable;
  }

  setMemory(memory: GuestMemory): number {
    this.memoryTable = memory;
    if (this.reason !== BrokenReason.NONE) return this.reason;
    return this.bindRings(memory);
  }

  /** Next avail position | avail wrap counter << 15: the value for GET_VRING_BASE (both halves). */
  get lastAvailIdx(): number {
    return this.nextAvail | (this.availWrap << PACKED_WRAP_BIT);
  }

  /** Position | wrap counter << 15 after the last published used element. */
  get usedIdx(): number {
    return this.publishedBase;
  }

  get inFlight(): number {
    return this.inFlightCount;
  }

  get broken(): boolean {
    return this.reason !== BrokenReason.NONE;
  }

  get brokenReason(): number {
    return this.reason;
  }

  describeBroken(): string {
    if (this.reason === BrokenReason.NONE) return `queue ${this.index}: healthy`;
    let text = `queue ${this.index} (packed): ${brokenReasonName(this.reason)}`;
    if (this.reasonHead >= 0) text += ` (ring position ${this.reasonHead}`;
    if (this.reasonHead >= 0 && this.reasonIndex >= 0) {
      text += `, ${this.reasonInIndirect ? 'indirect ' : ''}descriptor ${this.reasonIndex}`;
    }
    if (this.reasonHead >= 0) text += ')';
    return text;
  }

  markBroken(reason: number, head = -1, descriptorIndex = -1, inIndirect = false): void {
    if (this.reason !== BrokenReason.NONE) return;
    this.reason = reason;
    this.reasonHead = head;
    this.reasonIndex = descriptorIndex;
    this.reasonInIndirect = inIndirect;
  }

  /**
   * Chains whose heads are available, counted by scanning the ring from the next avail position
   * (at most the free slots). Diagnostics and tests only: the worker just pops.
   */
  availableCount(): number {
    if (this.reason !== BrokenReason.NONE) return 0;
    let position = this.nextAvail;
    let wrap = this.availWrap;
    let count = 0;
    let inChain = false;
    for (let scanned = this.inFlightDescriptors; scanned < this.size; scanned++) {
      const flags = Atomics.load(this.ringU16, 8 * position + 7);
      if (!inChain && !isAvailable(flags, wrap)) break;
      inChain = (flags & 1) !== 0; // NEXT: the chain goes on, whatever the next one's bits say
      if (!inChain) count++;
      if (++position === this.size) {
        position = 0;
        wrap ^= 1;
      }
    }
    return count;
  }

  pop(req: VirtqRequest): boolean {
    if (this.reason !== BrokenReason.NONE) return false;
    const position = this.nextAvail;
    const wrap = this.availWrap;
    // Acquire: the driver stores the head's flags last; everything of the chain is visible after.
    const flags = Atomics.load(this.ringU16, 8 * position + 7);
    if (((flags >>> 7) & 1) !== wrap) return false; // AVAIL ≠ wrap: not offered yet
    if (((flags >>> 15) & 1) === wrap) {
      // AVAIL = USED = wrap marks a used descriptor of this lap, which only the device writes.
      this.markBroken(BrokenReason.PACKED_FLAGS, position);
      return false;
    }
    const walker = this.walker;
    const reason = walker.walk(position, req);
    if (reason !== BrokenReason.NONE) {
      this.markBroken(reason, position, walker.failIndex, walker.failInIndirect);
      return false;
    }
    const id = walker.outId;
    const taken = walker.outRingDescriptors;
    if (id >= this.size) {
      this.markBroken(BrokenReason.HEAD_OUT_OF_RANGE, position);
      return false;
    }
    if (this.chainLength[id] !== 0) {
      this.markBroken(BrokenReason.HEAD_IN_FLIGHT, position);
      return false;
    }
    if (this.inFlightDescriptors + taken > this.size) {
      this.markBroken(BrokenReason.PACKED_RING_OVERRUN, position);
      return false;
    }
    this.chainLength[id] = taken;
    this.inFlightCount++;
    this.inFlightDescriptors += taken;
    req.availIdx = position | (wrap << PACKED_WRAP_BIT);
    let next = position + taken;
    if (next >= this.size) {
      next -= this.size;
      this.availWrap = wrap ^ 1;
    }
    this.nextAvail = next;
    return true;
  }

  /**
   * Gives back the chain popped last, unused (an RX buffer held when its queue stops): the avail
   * position steps back over its descriptors, nothing is written to the ring (libvhost-user's
   * vu_queue_rewind). False (nothing changes) unless `req` is the chain popped last.
   */
  unpop(req: VirtqRequest): boolean {
    const id = req.head;
    if (id >>> 0 >= this.size || req.availIdx < 0) return false;
    const taken = this.chainLength[id];
    if (taken === 0) return false;
    let next = (req.availIdx & 0x7fff) + taken;
    let wrap = req.availIdx >>> PACKED_WRAP_BIT;
    if (next >= this.size) {
      next -= this.size;
      wrap ^= 1;
    }
    if (next !== this.nextAvail || wrap !== this.availWrap) return false;
    this.chainLength[id] = 0;
    this.inFlightCount--;
    this.inFlightDescriptors -= taken;
    this.nextAvail = req.availIdx & 0x7fff;
    this.availWrap = req.availIdx >>> PACKED_WRAP_BIT;
    return true;
  }

  /**
   * Starts (log) or stops (null) marking this ring's writes in the dirty log: used descriptors at
   * flushUsed() and the device event area. Packed rings are written in the descriptor ring, so
   * the marks go to its guest-physical pages (log_guest_addr names the device area, also marked).
   * Starting marks the whole ring once, as the split ring marks its used ring.
   */
  setUsedLog(log: DirtyLog | null, _logGuestAddr = -1): void {
    this.usedLog = log;
    if (log !== null && this.reason === BrokenReason.NONE) {
      log.markRange(this.ringGpa, 16 * this.size);
      log.markRange(this.deviceGpa, 4);
    }
  }

  /**
   * Writes the used element for buffer `head` (its id) at the next used position: id and len now,
   * flags at flushUsed(). False, writing nothing, if the queue is broken or the id is not in flight.
   */
  pushUsed(head: number, len: number): boolean {
    if (this.reason !== BrokenReason.NONE) return false;
    if (head >>> 0 >= this.size) return false;
    const taken = this.chainLength[head];
    if (taken === 0) return false;
    this.chainLength[head] = 0;
    this.inFlightCount--;
    this.inFlightDescriptors -= taken;
    const position = this.nextUsed;
    this.ringU16[8 * position + 6] = head;
    this.ringU32[4 * position + 2] = len >>> 0;
    const n = this.pendingCount;
    this.pendingPosition[n] = position;
    this.pendingFlags[n] = this.usedWrap === 1 ? VIRTQ_DESC_F_AVAIL | VIRTQ_DESC_F_USED : 0;
    this.pendingCount = n + 1;
    let next = position + taken;
    if (next >= this.size) {
      next -= this.size;
      this.usedWrap ^= 1;
    }
    this.nextUsed = next;
    this.usedCount += taken;
    return true;
  }

  /** Stores the pending used flags: the later ones plainly, then the first one with a release. */
  flushUsed(): void {
    if (this.reason !== BrokenReason.NONE) return;
    const count = this.pendingCount;
    if (count === 0) return;
    const ring = this.ringU16;
    const positions = this.pendingPosition;
    const flags = this.pendingFlags;
    for (let i = 1; i < count; i++) ring[8 * positions[i] + 7] = flags[i];
    Atomics.store(ring, 8 * positions[0] + 7, flags[0]);
    // --- dirty log hook: the used descriptors just written (id, len, flags), after the writes ---
    const log = this.usedLog;
    if (log !== null) {
      for (let i = 0; i < count; i++) log.markRange(this.ringGpa + 16 * positions[i], 16);
    }
    this.pendingCount = 0;
    this.publishedCount = this.usedCount;
    this.publishedBase = this.nextUsed | (this.usedWrap << PACKED_WRAP_BIT);
  }

  /**
   * After flushUsed(): whether to signal the call fd for what was published since the last signal.
   * DISABLE: no. ENABLE (or DESC without EVENT_IDX): yes. DESC: iff the position in off_wrap lies
   * in [old, new) on the ring taken twice around (the wrap counter tells the laps apart), the
   * packed form of vring_need_event (DPDK vhost_vring_call_packed). The first signal after a
   * start, and one after more than a ring's worth of descriptors, are unconditional.
   */
  needsCall(): boolean {
    if (this.reason !== BrokenReason.NONE) return false;
    const moved = this.publishedCount - this.signalledCount;
    if (moved === 0) return false;
    this.signalledCount = this.publishedCount;
    // Sequentially consistent after the Atomics.store in flushUsed: the driver's update of its
    // event area cannot be missed (the full barrier of virtqueue_enable_cb_prepare_packed).
    const event = Atomics.load(this.driverEvent, 0);
    const eventFlags = event >>> 16;
    if (eventFlags === RING_EVENT_FLAGS_DISABLE) return false;
    if (!this.eventIdx || eventFlags !== RING_EVENT_FLAGS_DESC) return true;
    const valid = this.signalledValid;
    this.signalledValid = true;
    if (!valid || moved >= this.size) return true;
    const laps = 2 * this.size - 1; // a mask: positions on the ring taken twice around
    const newLinear = linear(this.publishedBase, this.size);
    const eventLinear = linear(event & 0xffff, this.size);
    return ((newLinear - eventLinear - 1) & laps) < moved;
  }

  get notificationsEnabled(): boolean {
    return this.notifying;
  }

  /** Asks for kicks: DESC at the next avail position with EVENT_IDX, else ENABLE. */
  enableNotification(): void {
    this.notifying = true;
    if (this.reason !== BrokenReason.NONE) return;
    if (this.eventIdx) {
      const offWrap = this.nextAvail | (this.availWrap << PACKED_WRAP_BIT);
      Atomics.store(this.deviceEvent, 0, (offWrap | (RING_EVENT_FLAGS_DESC << 16)) >>> 0);
    } else {
      Atomics.store(this.deviceEvent, 0, RING_EVENT_FLAGS_ENABLE << 16);
    }
    if (this.usedLog !== null) this.usedLog.markRange(this.deviceGpa, 4); // dirty log hook
  }

  /** Tells the driver kicks are not needed: DISABLE (also with EVENT_IDX, as DPDK does). */
  disableNotification(): void {
    this.notifying = false;
    if (this.reason !== BrokenReason.NONE) return;
    Atomics.store(this.deviceEvent, 0, RING_EVENT_FLAGS_DISABLE << 16);
    if (this.usedLog !== null) this.usedLog.markRange(this.deviceGpa, 4); // dirty log hook
  }

  /**
   * enableNotification(), then a look at the next avail descriptor: the store above and this
   * load are sequentially consistent, so a driver that published meanwhile either sees our
   * request for a kick or is seen here (the Dekker race the split ring explains).
   */
  enableNotificationAndRecheck(): boolean {
    this.enableNotification();
    if (this.reason !== BrokenReason.NONE) return false;
    return isAvailable(Atomics.load(this.ringU16, 8 * this.nextAvail + 7), this.availWrap);
  }

  private bindRings(memory: GuestMemory): number {
    const size = this.size;
    const ringGpa = this.ringBytes(memory, this.descAddr, 16 * size, 16);
    if (ringGpa < 0) return this.reason;
    this.ringGpa = ringGpa;
    const ringBuffer = memory.buffers[memory.outRegion];
    const ringOffset = memory.outBufferOffset;
    if (this.ringBytes(memory, this.driverAddr, 4, 4) < 0) return this.reason;
    const driverEvent = new Uint32Array(memory.buffers[memory.outRegion], memory.outBufferOffset, 1);
    const deviceGpa = this.ringBytes(memory, this.deviceAddr, 4, 4);
    if (deviceGpa < 0) return this.reason;
    this.deviceGpa = deviceGpa;
    const deviceEvent = new Uint32Array(memory.buffers[memory.outRegion], memory.outBufferOffset, 1);
    this.ringU16 = new Uint16Array(ringBuffer, ringOffset, 8 * size);
    this.ringU32 = new Uint32Array(ringBuffer, ringOffset, 4 * size);
    this.driverEvent = driverEvent;
    this.deviceEvent = deviceEvent;
    this.walker = new PackedChainWalker(memory, this.ringU32, size, this.indirectDesc);
    return BrokenReason.NONE;
  }

  /** Resolves one ring area: its guest-physical address with memory.out* set, or -1 after marking the queue broken. */
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

/** A descriptor's flags say "offered" for this wrap counter: AVAIL = wrap, USED ≠ wrap. */
function isAvailable(flags: number, wrap: number): boolean {
  return ((flags >>> 7) & 1) === wrap && ((flags >>> 15) & 1) !== wrap;
}

/**
 * A position | wrap << 15 as a place on the ring taken twice around (mod 2·size), counting from
 * position 0 of a lap with wrap counter 1 — so that distances across the ring end come out right.
 */
function linear(base: number, size: number): number {
  const position = base & 0x7fff;
  return base >>> PACKED_WRAP_BIT === 1 ? position : position + size;
}
