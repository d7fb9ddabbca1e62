// The driver (front-end) side of a split virtqueue (virtio 1.x §2.7): what a guest's virtio
// driver does, for our front-end library, tests and benchmarks. It posts descriptor chains,
// publishes avail.idx, decides when to kick, and reaps used entries — allocating nothing per
// request: chains are built with beginChain() / addSegment() / endChain(), and reapUsed() fills
// arrays the caller preallocated.
//
// Descriptor bookkeeping never trusts the shared rings: the free list, chain lengths and tokens
// live in private shadow arrays (as Linux's virtio_ring keeps desc_extra), so a buggy back-end
// cannot corrupt them; a used entry naming a head that is not in flight breaks the driver.
//
// Memory ordering mirrors the device side: descriptors and avail ring entries are plain stores
// made before Atomics.store of avail.idx (release); used entries are read after Atomics.load of
// used.idx (acquire).
import { GuestMemory } from '../dataplane/memory.js';
import { VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE } from '../dataplane/chain.js';
import {
  VRING_AVAIL_F_NO_INTERRUPT,
  VRING_USED_F_NO_NOTIFY,
  availEventSlot,
  usedEventSlot,
  vringNeedEvent,
} from '../dataplane/notify.js';
import { TWO_POW_32 } from '../bits.js';
import type { RingDriver } from './ring-driver.js';

/** Where each part of a split ring sits, relative to the start of the ring area. */
export interface SplitRingLayout {
  size: number;
  descOffset: number;
  descBytes: number;
  availOffset: number;
  availBytes: number;
  usedOffset: number;
  usedBytes: number;
  /** Bytes from the descriptor table to the end of the used ring. */
  totalBytes: number;
}

/**
 * The virtio 1.x layout (§2.7): descriptor table 16·n bytes (16-aligned), avail ring 6 + 2·n
 * right after it, used ring 6 + 8·n at the next usedAlign boundary (4 for virtio 1.x; legacy
 * PCI rings use 4096). Place the area itself at a 16-byte aligned address.
 */
export function splitRingLayout(size: number, usedAlign = 4): SplitRingLayout {
  if (!Number.isInteger(size) || size < 1 || size > 32768 || (size & (size - 1)) !== 0) {
    throw new RangeError(`queue size must be a power of two in [1, 32768], got ${size}`);
  }
  if (!Number.isInteger(usedAlign) || usedAlign < 4 || (usedAlign & (usedAlign - 1)) !== 0) {
    throw new RangeError(`used ring alignment must be a power of two ≥ 4, got ${usedAlign}`);
  }
  const descBytes = 16 * size;
  const availOffset = descBytes;
  const availBytes = 6 + 2 * size;
  const usedOffset = Math.ceil((availOffset + availBytes) / usedAlign) * usedAlign;
  const usedBytes = 6 + 8 * size;
  return {
    size,
    descOffset: 0,
    descBytes,
    availOffset,
    availBytes,
    usedOffset,
    usedBytes,
    totalBytes: usedOffset + usedBytes,
  };
}

export interface VringDriverConfig {
  memory: GuestMemory;
  size: number;
  /** Guest-physical addresses of the three rings. */
  descAddr: number;
  availAddr: number;
  usedAddr: number;
  /** VIRTIO_RING_F_EVENT_IDX negotiated. Default false. */
  eventIdx?: boolean;
  /**
   * Indirect descriptor tables (VIRTIO_RING_F_INDIRECT_DESC): `size` tables of `maxEntries`
   * descriptors each, back to back from tableAddr (16-aligned); head h uses table h.
   */
  indirect?: { tableAddr: number; maxEntries: number };
}

/** Bytes of guest memory the indirect tables of a driver need. */
export function indirectTablesBytes(size: number, maxEntries: number): number {
  return size * maxEntries * 16;
}

const NONE = 0xffff_ffff;

export class VringDriver implements RingDriver {
  readonly size: number;
  readonly eventIdx: boolean;
  /** Entries per indirect table, 0 without indirect support. */
  readonly indirectEntries: number;

  private readonly mask: number;
  private readonly desc: Uint32Array;
  private readonly availU16: Uint16Array;
  private readonly usedU16: Uint16Array;
  private readonly usedU32: Uint32Array;
  private readonly indirectWords: Uint32Array;
  private readonly indirectAddr: number;
  private readonly usedEventIdx: number;
  private readonly availEventIdx: number;

  // Shadow state (private memory, never read back from the rings).
  private readonly nextFree: Uint16Array;
  private readonly chainTail: Uint16Array;
  private readonly chainLength: Uint16Array;
  private readonly tokens: Float64Array;
  private readonly inflight: Uint8Array;
  private freeHead = 0;
  private free: number;
  private posted = 0;
  private availIdx = 0;
  private publishedAvail = 0;
  private kickedAvail = 0;
  private lastUsed = 0;
  private availFlags = 0;
  private callbacks = true;

  // The chain being built.
  private building = false;
  private buildIndirect = false;
  private buildFailed = false;
  private buildHead = NONE;
  private buildLast = NONE;
  private buildLastFlags = 0;
  private buildCount = 0;

  /** Why the driver stopped (the back-end broke the used ring); '' while healthy. */
  brokenReason = '';

  constructor(config: VringDriverConfig) {
    const { memory, size } = config;
    const layout = splitRingLayout(size); // validates size
    this.size = size;
    this.mask = size - 1;
    this.eventIdx = config.eventIdx ?? false;
    this.usedEventIdx = usedEventSlot(size);
    this.availEventIdx = availEventSlot(size);
    this.desc = new Uint32Array(...ringView(memory, config.descAddr, layout.descBytes, 16, 'descriptor table'), 4 * size);
    this.availU16 = new Uint16Array(...ringView(memory, config.availAddr, layout.availBytes, 2, 'avail ring'), 3 + size);
    const used = ringView(memory, config.usedAddr, layout.usedBytes, 4, 'used ring');
    this.usedU16 = new Uint16Array(...used, 3 + 4 * size);
    this.usedU32 = new Uint32Array(...used, 1 + 2 * size);
    if (config.indirect) {
      const { tableAddr, maxEntries } = config.indirect;
      if (!Number.isInteger(maxEntries) || maxEntries < 1 || maxEntries > 65536) {
        throw new RangeError(`indirect maxEntries must be in [1, 65536], got ${maxEntries}`);
      }
      const bytes = indirectTablesBytes(size, maxEntries);
      this.indirectWords = new Uint32Array(...ringView(memory, tableAddr, bytes, 16, 'indirect tables'), bytes / 4);
      this.indirectEntries = maxEntries;
      this.indirectAddr = tableAddr;
    } else {
      this.indirectWords = new Uint32Array(0);
      this.indirectEntries = 0;
      this.indirectAddr = 0;
    }
    this.nextFree = new Uint16Array(size);
    for (let i = 0; i < size; i++) this.nextFree[i] = i + 1; // the last one's link is never followed
    this.chainTail = new Uint16Array(size);
    this.chainLength = new Uint16Array(size);
    this.tokens = new Float64Array(size);
    this.inflight = new Uint8Array(size);
    this.free = size;
    // Start from the rings' current indices (zero on a fresh ring).
    this.availIdx = this.availU16[1];
    this.publishedAvail = this.availIdx;
    this.kickedAvail = this.availIdx;
    this.lastUsed = this.usedU16[1];
    this.availFlags = this.availU16[0];
    if (this.eventIdx) Atomics.store(this.availU16, this.usedEventIdx, this.lastUsed);
  }

  /** Descriptors not in use. */
  get freeDescriptors(): number {
    return this.free;
  }

  /** Chains posted and not yet reaped. */
  get inFlight(): number {
    return this.posted;
  }

  get broken(): boolean {
    return this.brokenReason !== '';
  }

  /** Starts a chain; with indirect, its segments go to the head's indirect table. */
  beginChain(indirect = false): void {
    if (this.building) this.abortChain();
    this.building = true;
    this.buildIndirect = indirect;
    this.buildFailed = indirect && this.indirectEntries === 0;
    this.buildHead = NONE;
    this.buildLast = NONE;
    this.buildLastFlags = 0;
    this.buildCount = 0;
    if (indirect && !this.buildFailed) {
      if (this.free === 0) this.buildFailed = true;
      else this.buildHead = this.takeDescriptor();
    }
  }

  /**
   * Adds a buffer to the chain. Device-readable ones must come before device-writable ones
   * (§2.7.4.2); the driver does not enforce it, so hostile-ring tests can break the rule.
   * If there is no room, the chain fails and endChain() returns -1.
   */
  addSegment(gpa: number, len: number, writable: boolean): void {
    if (!this.building || this.buildFailed) return;
    const flags = writable ? VIRTQ_DESC_F_WRITE : 0;
    if (this.buildIndirect) {
      const slot = this.buildCount;
      if (slot >= this.indirectEntries) {
        this.buildFailed = true;
        return;
      }
      const base = (this.buildHead * this.indirectEntries + slot) * 4;
      const words = this.indirectWords;
      if (slot > 0) words[base - 1] = VIRTQ_DESC_F_NEXT | this.buildLastFlags | (slot << 16);
      words[base] = gpa % TWO_POW_32;
      words[base + 1] = Math.floor(gpa / TWO_POW_32);
      words[base + 2] = len;
      words[base + 3] = flags;
      this.buildLastFlags = flags;
      this.buildCount = slot + 1;
      return;
    }
    if (this.free === 0) {
      this.buildFailed = true;
      return;
    }
    const index = this.takeDescriptor();
    const desc = this.desc;
    if (this.buildLast === NONE) {
      this.buildHead = index;
    } else {
      desc[4 * this.buildLast + 3] = VIRTQ_DESC_F_NEXT | this.buildLastFlags | (index << 16);
    }
    const base = 4 * index;
    desc[base] = gpa % TWO_POW_32;
    desc[base + 1] = Math.floor(gpa / TWO_POW_32);
    desc[base + 2] = len;
    desc[base + 3] = flags;
    this.buildLast = index;
    this.buildLastFlags = flags;
    this.buildCount++;
  }

  /**
   * Finishes the chain and puts its head in the avail ring (visible after publish()). Returns the
   * head, or -1 (the chain is dropped) if it ran out of descriptors or table entries, or was empty.
   */
  endChain(token: number): number {
    if (!this.building) return -1;
    if (this.buildFailed || this.buildCount === 0) {
      this.abortChain();
      return -1;
    }
    this.building = false;
    let head: number;
    if (this.buildIndirect) {
      head = this.buildHead;
      const base = 4 * head;
      const tableAddr = this.indirectAddr + head * this.indirectEntries * 16;
      this.desc[base] = tableAddr % TWO_POW_32;
      this.desc[base + 1] = Math.floor(tableAddr / TWO_POW_32);
      this.desc[base + 2] = this.buildCount * 16;
      this.desc[base + 3] = VIRTQ_DESC_F_INDIRECT;
      this.chainTail[head] = head;
      this.chainLength[head] = 1;
    } else {
      head = this.buildHead;
      this.chainTail[head] = this.buildLast;
      this.chainLength[head] = this.buildCount;
    }
    this.tokens[head] = token;
    this.inflight[head] = 1;
    this.posted++;
    this.availU16[2 + (this.availIdx & this.mask)] = head;
    this.availIdx = (this.availIdx + 1) & 0xffff;
    return head;
  }

  /** Drops the chain being built and returns its descriptors to the free list. */
  abortChain(): void {
    if (!this.building) return;
    this.building = false;
    if (this.buildHead === NONE) return;
    if (this.buildIndirect) {
      this.releaseChain(this.buildHead, this.buildHead, 1);
    } else if (this.buildCount > 0) {
      // Direct chain: descriptors were taken from the free list head in order, linked by nextFree.
      this.releaseChain(this.buildHead, this.buildLast, this.buildCount);
    }
  }

  /** Makes every chain ended since the last publish visible: one release store of avail.idx. */
  publish(): void {
    if (this.publishedAvail === this.availIdx) return;
    Atomics.store(this.availU16, 1, this.availIdx);
    this.publishedAvail = this.availIdx;
  }

  /**
   * After publish(): whether to kick the device for the entries published since the last check
   * (§2.7.10; Linux virtqueue_kick_prepare_split). With EVENT_IDX, iff avail_event lies in
   * [old, new); otherwise iff the device has not set VRING_USED_F_NO_NOTIFY. The Atomics.store of
   * avail.idx before this Atomics.load is the full barrier the spec requires.
   */
  needsKick(): boolean {
    const newIdx = this.publishedAvail;
    const oldIdx = this.kickedAvail;
    if (newIdx === oldIdx) return false;
    this.kickedAvail = newIdx;
    if (this.eventIdx) return vringNeedEvent(Atomics.load(this.usedU16, this.availEventIdx), newIdx, oldIdx);
    return (Atomics.load(this.usedU16, 0) & VRING_USED_F_NO_NOTIFY) === 0;
  }

  /** used->idx as the device last published it (what QEMU resumes a split ring from after losing a back-end). */
  get deviceUsedIdx(): number {
    return Atomics.load(this.usedU16, 1);
  }

  /** Whether used entries are waiting to be reaped. */
  hasUsed(): boolean {
    return Atomics.load(this.usedU16, 1) !== this.lastUsed;
  }

  /**
   * Takes up to min(tokens.length, lens.length) used entries: their tokens, the lengths the
   * device wrote, and (optionally) their heads. Frees their descriptors. Returns the count.
   * A used entry that names a head not in flight, or used.idx running ahead of what is in
   * flight, breaks the driver (brokenReason) and stops reaping.
   */
  reapUsed(tokens: Float64Array, lens: Uint32Array, heads?: Uint32Array): number {
    if (this.brokenReason !== '') return 0;
    const usedIdx = Atomics.load(this.usedU16, 1);
    let pending = (usedIdx - this.lastUsed) & 0xffff;
    if (pending > this.size) {
      this.brokenReason = `used.idx jumped from ${this.lastUsed} to ${usedIdx}`;
      return 0;
    }
    const max = Math.min(tokens.length, lens.length, heads ? heads.length : 0xffff);
    if (pending > max) pending = max;
    let count = 0;
    let lastUsed = this.lastUsed;
    while (count < pending) {
      const slot = lastUsed & this.mask;
      const head = this.usedU32[1 + 2 * slot];
      if (head >= this.size || this.inflight[head] === 0) {
        this.brokenReason = `used ring entry ${lastUsed} names head ${head}, which is not in flight`;
        break;
      }
      tokens[count] = this.tokens[head];
      lens[count] = this.usedU32[2 + 2 * slot];
      if (heads) heads[count] = head;
      this.inflight[head] = 0;
      this.posted--;
      this.releaseChain(head, this.chainTail[head], this.chainLength[head]);
      lastUsed = (lastUsed + 1) & 0xffff;
      count++;
    }
    this.lastUsed = lastUsed;
    // Ask for the next interrupt after what we have seen (Linux virtqueue_get_buf_ctx_split).
    if (this.eventIdx && this.callbacks && count > 0) Atomics.store(this.availU16, this.usedEventIdx, lastUsed);
    return count;
  }

  /** Asks the device to interrupt for new used entries (clears NO_INTERRUPT / sets used_event). */
  enableCallbacks(): void {
    this.callbacks = true;
    if (this.eventIdx) {
      Atomics.store(this.availU16, this.usedEventIdx, this.lastUsed);
    } else {
      this.availFlags &= ~VRING_AVAIL_F_NO_INTERRUPT;
      Atomics.store(this.availU16, 0, this.availFlags);
    }
  }

  /**
   * Tells the device interrupts are not needed (polling). With EVENT_IDX, used_event is left
   * stale, so the device signals at most once per 2^16 used entries.
   */
  disableCallbacks(): void {
    this.callbacks = false;
    if (!this.eventIdx) {
      this.availFlags |= VRING_AVAIL_F_NO_INTERRUPT;
      Atomics.store(this.availU16, 0, this.availFlags);
    }
  }

  /** enableCallbacks(), then true if used entries arrived meanwhile (reap instead of sleeping). */
  enableCallbacksAndRecheck(): boolean {
    this.enableCallbacks();
    return Atomics.load(this.usedU16, 1) !== this.lastUsed;
  }

  // Raw access for hostile-ring tests and fuzzers: no bookkeeping, no validation.

  /** Writes descriptor `index` of the main table as given. */
  writeDescriptor(index: number, gpa: number, len: number, flags: number, next: number): void {
    const base = 4 * index;
    this.desc[base] = gpa % TWO_POW_32;
    this.desc[base + 1] = Math.floor(gpa / TWO_POW_32);
    this.desc[base + 2] = len >>> 0;
    this.desc[base + 3] = (flags & 0xffff) | ((next & 0xffff) << 16);
  }

  /** Puts `head` in the next avail slot; visible after publish(). */
  offerRawHead(head: number): void {
    this.availU16[2 + (this.availIdx & this.mask)] = head;
    this.availIdx = (this.availIdx + 1) & 0xffff;
  }

  /** offerRawHead() and publish(). */
  postRawHead(head: number): void {
    this.offerRawHead(head);
    this.publish();
  }

  /** Stores avail.idx as given (e.g. a jump beyond the ring size). */
  setRawAvailIdx(value: number): void {
    this.availIdx = value & 0xffff;
    this.publishedAvail = this.availIdx;
    Atomics.store(this.availU16, 1, this.availIdx);
  }

  private takeDescriptor(): number {
    const index = this.freeHead;
    this.freeHead = this.nextFree[index];
    this.free--;
    return index;
  }

  /** Returns a chain head..tail of `length` descriptors, linked by nextFree, to the free list. */
  private releaseChain(head: number, tail: number, length: number): void {
    this.nextFree[tail] = this.freeHead;
    this.freeHead = head;
    this.free += length;
  }
}

/** [buffer, byteOffset] of a ring inside one region, checked for alignment (configuration time). */
function ringView(memory: GuestMemory, gpa: number, bytes: number, align: number, what: string): [SharedArrayBuffer, number] {
  if (memory.translateSegment(gpa, bytes) < 0) {
    throw new RangeError(`${what} at ${gpa} (${bytes} bytes) is not inside one memory region`);
  }
  if (gpa % align !== 0 || memory.outBufferOffset % align !== 0) {
    throw new RangeError(`${what} at ${gpa} must be ${align}-byte aligned`);
  }
  return [memory.buffers[memory.outRegion], memory.outBufferOffset];
}
