// The driver (front-end) side of a packed virtqueue (virtio 1.x §2.8), with the same calls as the
// split VringDriver, for the front-end library, tests and benchmarks. Chains go into consecutive
// ring descriptors at the driver's avail position; each chain's head flags are stored when it
// ends, except the first one since the last publish, which publish() stores with a release (the
// device reads heads in order, so that one hides the others). reapUsed() reads used descriptors
// in order, each covering its chain's length.
// Nothing is allocated per request.
//
// Cost per request stays close to the split driver's (bench/micro-packed.ts, "driver side only";
// tuning.md "Split or packed?"): a non-head descriptor's id and flags go out as one u32 store once
// its successor is known, the AVAIL/USED bits of the current lap are kept ready (availFlags,
// usedFlags) instead of derived from the wrap counters per descriptor, publish() is one release
// store, and reapUsed() makes one acquire load per used element (its flags), none to find the end
// of the run. That acquire per element is what is left of the difference: the split driver's
// single used.idx load covers a whole batch, a packed driver cannot know where the device's
// batches begin.
//
// Bookkeeping never trusts the ring: free buffer ids, chain lengths and tokens live in private
// arrays (as Linux's desc_state / desc_extra); a used descriptor naming an id that is not in
// flight breaks the driver.
import { GuestMemory } from '../dataplane/memory.js';
import { VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE } from '../dataplane/chain.js';
import {
  PACKED_WRAP_BIT,
  RING_EVENT_FLAGS_DESC,
  RING_EVENT_FLAGS_DISABLE,
  RING_EVENT_FLAGS_ENABLE,
  VIRTQ_DESC_F_AVAIL,
  VIRTQ_DESC_F_USED,
} from '../dataplane/packed-virtqueue.js';
import { TWO_POW_32 } from '../bits.js';
import { indirectTablesBytes } from './vring-driver.js';
import type { RingDriver } from './ring-driver.js';

/** Where each part of a packed ring sits, relative to the start of the ring area (16-aligned). */
export interface PackedRingLayout {
  size: number;
  descOffset: number;
  descBytes: number;
  /** Driver event suppression area (4 bytes, 4-aligned): SET_VRING_ADDR's avail address. */
  driverOffset: number;
  /** Device event suppression area (4 bytes, 4-aligned): SET_VRING_ADDR's used address. */
  deviceOffset: number;
  totalBytes: number;
}

export function packedRingLayout(size: number): PackedRingLayout {
  if (!Number.isInteger(size) || size < 1 || size > 32768 || (size & (size - 1)) !== 0) {
    throw new RangeError(`queue size must be a power of two in [1, 32768], got ${size}`);
  }
  const descBytes = 16 * size;
  return { size, descOffset: 0, descBytes, driverOffset: descBytes, deviceOffset: descBytes + 4, totalBytes: descBytes + 8 };
}

export interface PackedVringDriverConfig {
  memory: GuestMemory;
  size: number;
  /** Guest-physical address of the descriptor ring. */
  descAddr: number;
  /** Driver event suppression area (the name matches the split driver's config and SET_VRING_ADDR). */
  availAddr: number;
  /** Device event suppression area. */
  usedAddr: number;
  eventIdx?: boolean;
  /** Indirect tables: one of `maxEntries` descriptors per buffer id, back to back from tableAddr. */
  indirect?: { tableAddr: number; maxEntries: number };
}

/** "No position / no id": -1 keeps these fields small integers in V8 (0xffffffff would make them doubles). */
const NONE = -1;

export class PackedVringDriver implements RingDriver {
  readonly size: number;
  readonly eventIdx: boolean;
  readonly indirectEntries: number;

  private readonly ringU16: Uint16Array;
  private readonly ringU32: Uint32Array;
  private readonly driverEvent: Uint32Array;
  private readonly deviceEvent: Uint32Array;
  private readonly indirectWords: Uint32Array;
  private readonly indirectAddr: number;

  private readonly freeIds: Uint16Array;
  private freeIdCount: number;
  private readonly chainLength: Uint16Array;
  private readonly tokens: Float64Array;
  private readonly inflight: Uint8Array;
  private freeSlots: number;
  private posted = 0;

  private nextAvail = 0;
  private availWrap = 1;
  /** AVAIL/USED bits that make a descriptor available in the current avail lap. */
  private availFlags = VIRTQ_DESC_F_AVAIL;
  /** nextAvail | availWrap << 15 after the last ended chain, and at the last publish. */
  private endedBase = 1 << PACKED_WRAP_BIT;
  /** The first chain ended since the last publish: its head position and flags (NONE: none yet). */
  private pendingHead = NONE;
  private pendingHeadFlags = 0;
  private endedSlots = 0;
  private publishedSlots = 0;
  private kickedSlots = 0;
  private publishedBase = 1 << PACKED_WRAP_BIT;
  private lastUsed = 0;
  private usedWrap = 1;
  /** AVAIL|USED bits of a used descriptor in the current used lap (both set, or both clear). */
  private usedFlags = VIRTQ_DESC_F_AVAIL | VIRTQ_DESC_F_USED;
  private callbacks = true;

  /** Flags of the chain's head, stored at endChain(), or at publish() for the first chain since the last one. */
  private headFlags = 0;
  private building = false;
  private buildIndirect = false;
  private buildFailed = false;
  private buildId = NONE;
  private buildStart = 0;
  private buildStartWrap = 1;
  private buildLast = NONE;
  private buildLastFlags = 0;
  private buildCount = 0;

  /** Why the driver stopped (the back-end broke the ring); '' while healthy. */
  brokenReason = '';

  constructor(config: PackedVringDriverConfig) {
    const { memory, size } = config;
    const layout = packedRingLayout(size);
    this.size = size;
    this.eventIdx = config.eventIdx ?? false;
    const ring = ringView(memory, config.descAddr, layout.descBytes, 16, 'descriptor ring');
    this.ringU16 = new Uint16Array(...ring, 8 * size);
    this.ringU32 = new Uint32Array(...ring, 4 * size);
    this.driverEvent = new Uint32Array(...ringView(memory, config.availAddr, 4, 4, 'driver event area'), 1);
    this.deviceEvent = new Uint32Array(...ringView(memory, config.usedAddr, 4, 4, 'device event area'), 1);
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
    this.freeIds = new Uint16Array(size);
    for (let i = 0; i < size; i++) this.freeIds[i] = size - 1 - i; // pops 0, 1, 2... first
    this.freeIdCount = size;
    this.chainLength = new Uint16Array(size);
    this.tokens = new Float64Array(size);
    this.inflight = new Uint8Array(size);
    this.freeSlots = size;
    // A fresh ring: every descriptor zero (not available for wrap 1); the device starts at 0x8000.
    for (let i = 0; i < 4 * size; i++) this.ringU32[i] = 0;
    Atomics.store(this.driverEvent, 0, this.eventIdx ? this.usedBase() | (RING_EVENT_FLAGS_DESC << 16) : 0);
  }

  /** Ring descriptors not in use. */
  get freeDescriptors(): number {
    return this.freeSlots;
  }

  get inFlight(): number {
    return this.posted;
  }

  get broken(): boolean {
    return this.brokenReason !== '';
  }

  /** AVAIL/USED bits that offer a descriptor at the driver's next avail position (hostile tests). */
  get offerFlags(): number {
    return this.availFlags;
  }

  /** The driver's next avail position | wrap << 15 (what SET_VRING_BASE carries). */
  get availBase(): number {
    return this.nextAvail | (this.availWrap << PACKED_WRAP_BIT);
  }

  beginChain(indirect = false): void {
    if (this.building) this.abortChain();
    this.building = true;
    this.buildIndirect = indirect;
    this.buildFailed = (indirect && this.indirectEntries === 0) || this.freeIdCount === 0;
    this.buildId = this.buildFailed ? NONE : this.freeIds[--this.freeIdCount];
    this.buildStart = this.nextAvail;
    this.buildStartWrap = this.availWrap;
    this.buildLast = NONE;
    this.buildLastFlags = 0;
    this.buildCount = 0;
  }

  /** Adds a buffer; with no room left the chain fails and endChain() returns -1. */
  addSegment(gpa: number, len: number, writable: boolean): void {
    if (!this.building || this.buildFailed) return;
    const flags = writable ? VIRTQ_DESC_F_WRITE : 0;
    if (this.buildIndirect) {
      const slot = this.buildCount;
      if (slot >= this.indirectEntries) {
        this.buildFailed = true;
        return;
      }
      const base = (this.buildId * this.indirectEntries + slot) * 4;
      const words = this.indirectWords;
      words[base] = gpa % TWO_POW_32;
      words[base + 1] = Math.floor(gpa / TWO_POW_32);
      words[base + 2] = len;
      words[base + 3] = flags << 16;
      this.buildCount = slot + 1;
      return;
    }
    if (this.buildCount >= this.freeSlots) {
      this.buildFailed = true;
      return;
    }
    // A descriptor's id and flags (word 3) are stored together once its successor is known (NEXT)
    // or at endChain(); the head's flags are held back until publish() (the others are invisible
    // until the head is), its id is stored now.
    const ring = this.ringU32;
    const previous = this.buildLast;
    const position = this.nextAvail;
    const base = 4 * position;
    if (previous === NONE) this.ringU16[8 * position + 6] = this.buildId;
    else if (previous === this.buildStart) this.headFlags = this.buildLastFlags | VIRTQ_DESC_F_NEXT;
    else ring[4 * previous + 3] = (this.buildId | ((this.buildLastFlags | VIRTQ_DESC_F_NEXT) << 16)) >>> 0;
    ring[base] = gpa % TWO_POW_32;
    ring[base + 1] = Math.floor(gpa / TWO_POW_32);
    ring[base + 2] = len;
    this.buildLast = position;
    this.buildLastFlags = flags | this.availFlags;
    this.buildCount++;
    if (position + 1 < this.size) this.nextAvail = position + 1;
    else this.advanceAvail(1);
  }

  /**
   * Finishes the chain (visible after publish()). Returns its buffer id, or -1 (the chain is
   * dropped) when it ran out of descriptors, ids or table entries, or was empty.
   */
  endChain(token: number): number {
    if (!this.building) return -1;
    if (this.buildFailed || this.buildCount === 0 || (this.buildIndirect && this.freeSlots === 0)) {
      this.abortChain();
      return -1;
    }
    this.building = false;
    const id = this.buildId;
    let headFlags: number;
    let slots: number;
    if (this.buildIndirect) {
      const position = this.nextAvail;
      const base = 4 * position;
      const tableAddr = this.indirectAddr + id * this.indirectEntries * 16;
      this.ringU32[base] = tableAddr % TWO_POW_32;
      this.ringU32[base + 1] = Math.floor(tableAddr / TWO_POW_32);
      this.ringU32[base + 2] = this.buildCount * 16;
      this.ringU16[8 * position + 6] = id;
      headFlags = VIRTQ_DESC_F_INDIRECT | this.availFlags;
      slots = 1;
      this.advanceAvail(1);
    } else {
      const last = this.buildLast;
      if (last === this.buildStart) headFlags = this.buildLastFlags;
      else {
        this.ringU32[4 * last + 3] = (id | (this.buildLastFlags << 16)) >>> 0;
        headFlags = this.headFlags;
      }
      slots = this.buildCount;
    }
    // The device reads heads in order, so holding back the first head since the last publish
    // hides every later chain too: their head flags go out now, plainly, while the descriptors
    // are still in cache, and publish() is one release store (the split driver's avail.idx).
    if (this.pendingHead === NONE) {
      this.pendingHead = this.buildStart;
      this.pendingHeadFlags = headFlags;
    } else {
      this.ringU16[8 * this.buildStart + 7] = headFlags;
    }
    this.chainLength[id] = slots;
    this.tokens[id] = token;
    this.inflight[id] = 1;
    this.freeSlots -= slots;
    this.posted++;
    this.endedSlots += slots;
    this.endedBase = this.nextAvail | (this.availWrap << PACKED_WRAP_BIT);
    return id;
  }

  abortChain(): void {
    if (!this.building) return;
    this.building = false;
    if (this.buildId !== NONE) this.freeIds[this.freeIdCount++] = this.buildId;
    // Nothing was published: the head's flags were never stored, so the device cannot reach the
    // chain. Its middle descriptors' flags were (available, NEXT): clear them, or a shorter chain
    // posted here later would leave one of them looking available right after its own end.
    if (!this.buildIndirect && this.buildCount > 2) {
      let position = this.buildStart;
      for (let i = 1; i < this.buildCount - 1; i++) {
        position = position + 1 < this.size ? position + 1 : 0;
        this.ringU16[8 * position + 7] = 0; // AVAIL == USED: never available, whichever the lap
      }
    }
    this.nextAvail = this.buildStart;
    this.availWrap = this.buildStartWrap;
    this.availFlags = this.buildStartWrap === 1 ? VIRTQ_DESC_F_AVAIL : VIRTQ_DESC_F_USED;
  }

  /** Makes every chain ended since the last publish visible: one release store of the first head's flags. */
  publish(): void {
    if (this.pendingHead === NONE) return;
    Atomics.store(this.ringU16, 8 * this.pendingHead + 7, this.pendingHeadFlags);
    this.pendingHead = NONE;
    this.publishedSlots = this.endedSlots;
    this.publishedBase = this.endedBase;
  }

  /**
   * After publish(): whether to kick for what was published since the last check (Linux
   * virtqueue_kick_prepare_packed): DISABLE no, ENABLE yes, DESC iff its position was passed.
   */
  needsKick(): boolean {
    const moved = this.publishedSlots - this.kickedSlots;
    if (moved === 0) return false;
    this.kickedSlots = this.publishedSlots;
    const event = Atomics.load(this.deviceEvent, 0);
    const flags = event >>> 16;
    if (flags === RING_EVENT_FLAGS_DISABLE) return false;
    if (!this.eventIdx || flags !== RING_EVENT_FLAGS_DESC || moved >= this.size) return true;
    const mask = 2 * this.size - 1;
    return ((linear(this.publishedBase, this.size) - linear(event & 0xffff, this.size) - 1) & mask) < moved;
  }

  hasUsed(): boolean {
    return (Atomics.load(this.ringU16, 8 * this.lastUsed + 7) & USED_BITS) === this.usedFlags;
  }

  /**
   * Takes up to min(tokens.length, lens.length) used buffers: their tokens, written lengths and
   * (optionally) ids. A used descriptor naming an id not in flight breaks the driver.
   */
  reapUsed(tokens: Float64Array, lens: Uint32Array, heads?: Uint32Array): number {
    if (this.brokenReason !== '') return 0;
    const max = Math.min(tokens.length, lens.length, heads ? heads.length : 0xffff);
    const ring16 = this.ringU16;
    const size = this.size;
    const inflight = this.inflight;
    const chainLength = this.chainLength;
    const freeIds = this.freeIds;
    // Locals for the loop, written back once. Atomics.load is a builtin call in V8 (≈6 ns, the
    // split driver makes one per reap), so it is spent only where it buys ordering: a plain read
    // of the flags finds the end of the used run (a stale "not used" only defers an element to
    // the next reap), and an element that looks used is confirmed by the acquire load before its
    // id and length are read. Nothing is read past the last chain in flight.
    const limit = max < this.posted ? max : this.posted;
    let position = this.lastUsed;
    let usedFlags = this.usedFlags;
    let freeIdCount = this.freeIdCount;
    let freed = 0;
    let count = 0;
    while (count < limit) {
      const flagsAt = 8 * position + 7;
      if ((ring16[flagsAt] & USED_BITS) !== usedFlags || (Atomics.load(ring16, flagsAt) & USED_BITS) !== usedFlags) break;
      const id = ring16[8 * position + 6];
      if (id >= size || inflight[id] === 0) {
        this.brokenReason = `used descriptor at ring position ${position} names buffer id ${id}, which is not in flight`;
        break;
      }
      tokens[count] = this.tokens[id];
      lens[count] = this.ringU32[4 * position + 2];
      if (heads) heads[count] = id;
      inflight[id] = 0;
      const slots = chainLength[id];
      freed += slots;
      freeIds[freeIdCount++] = id;
      position += slots;
      if (position >= size) {
        position -= size;
        usedFlags ^= USED_BITS;
      }
      count++;
    }
    this.lastUsed = position;
    this.usedFlags = usedFlags;
    this.usedWrap = usedFlags === 0 ? 0 : 1;
    this.freeIdCount = freeIdCount;
    this.freeSlots += freed;
    this.posted -= count;
    if (this.eventIdx && this.callbacks && count > 0) {
      Atomics.store(this.driverEvent, 0, (this.usedBase() | (RING_EVENT_FLAGS_DESC << 16)) >>> 0);
    }
    return count;
  }

  enableCallbacks(): void {
    this.callbacks = true;
    const word = this.eventIdx ? this.usedBase() | (RING_EVENT_FLAGS_DESC << 16) : RING_EVENT_FLAGS_ENABLE << 16;
    Atomics.store(this.driverEvent, 0, word >>> 0);
  }

  disableCallbacks(): void {
    this.callbacks = false;
    Atomics.store(this.driverEvent, 0, RING_EVENT_FLAGS_DISABLE << 16);
  }

  enableCallbacksAndRecheck(): boolean {
    this.enableCallbacks();
    return this.hasUsed();
  }

  // Raw access for hostile-ring tests and fuzzers: no bookkeeping, no validation.

  /** Writes ring descriptor `position` as given (flags last, with a release store). */
  writeDescriptor(position: number, gpa: number, len: number, flags: number, id: number): void {
    const base = 4 * position;
    this.ringU32[base] = gpa % TWO_POW_32;
    this.ringU32[base + 1] = Math.floor(gpa / TWO_POW_32);
    this.ringU32[base + 2] = len >>> 0;
    this.ringU16[8 * position + 6] = id & 0xffff;
    Atomics.store(this.ringU16, 8 * position + 7, flags & 0xffff);
  }

  private advanceAvail(slots: number): void {
    let next = this.nextAvail + slots;
    if (next >= this.size) {
      next -= this.size;
      this.availWrap ^= 1;
      this.availFlags ^= USED_BITS;
    }
    this.nextAvail = next;
  }

  private usedBase(): number {
    return this.lastUsed | (this.usedWrap << PACKED_WRAP_BIT);
  }
}

/** The two bits that say available or used (§2.8.1). */
const USED_BITS = VIRTQ_DESC_F_AVAIL | VIRTQ_DESC_F_USED;

function linear(base: number, size: number): number {
  const position = base & 0x7fff;
  return base >>> PACKED_WRAP_BIT === 1 ? position : position + size;
}

function ringView(memory: GuestMemory, gpa: number, bytes: number, align: number, what: string): [SharedArrayBuffer, number] {
  if (memory.translateSegment(gpa, bytes) < 0) {
    throw new RangeError(`${what} at ${gpa} (${bytes} bytes) is not inside one memory region`);
  }
  if (gpa % align !== 0 || memory.outBufferOffset % align !== 0) {
    throw new RangeError(`${what} at ${gpa} must be ${align}-byte aligned`);
  }
  return [memory.buffers[memory.outRegion], memory.outBufferOffset];
}
