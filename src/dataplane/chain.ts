// The descriptor chain walker (virtio 1.x §2.7.5, §2.7.5.3): turns the chain at one head index
// into a VirtqRequest, following NEXT and INDIRECT, and refuses every malformed chain with a
// reason code instead of throwing, looping or reading outside guest memory.
//
// Rules enforced (each a BrokenReason below):
// - next index < table size; a chain visits at most as many descriptors as its table holds
//   (a longer walk is a loop); the main-table count restarts inside an indirect table.
// - INDIRECT only if negotiated (VIRTIO_F_INDIRECT_DESC), never inside an indirect table
//   (§2.7.5.3.1 "MUST NOT set INDIRECT within an indirect descriptor"), never with NEXT (same
//   section). A direct chain may end in an indirect descriptor, as rust-vmm's virtio-queue allows.
//   The WRITE flag of the indirect descriptor itself is ignored (§2.7.5.3.2).
// - Indirect table length: non-zero, a multiple of 16, at most 65536 entries (`next` is a u16).
// - Zero-length data descriptors are rejected, as QEMU does ("zero sized buffers are not
//   allowed"): they carry nothing, and accepting them would let a chain hold more descriptors
//   than bytes.
// - Device-writable descriptors come after all device-readable ones (§2.7.4.2 for the driver;
//   QEMU rejects the other order as "Incorrect order for descriptors").
// - Every buffer lies inside one memory region (see memory.ts for why crossing ones are refused).
// - The chain's total length fits in u32 (used.len is a u32; virtio-blk sizes are u32 sums).
// - At most req.capacity segments (the device's seg_max plus its fixed descriptors).
import { GuestMemory, TRANSLATE_OUTSIDE, TRANSLATE_CROSSES } from './memory.js';
import type { VirtqRequest } from './request.js';

export const VIRTQ_DESC_F_NEXT = 1;
export const VIRTQ_DESC_F_WRITE = 2;
export const VIRTQ_DESC_F_INDIRECT = 4;

/** Why a queue was marked broken. Stable numbers: they appear in logs and metrics. */
export const BrokenReason = {
  NONE: 0,
  /** Queue size not a power of two in [1, 32768]. */
  BAD_SIZE: 1,
  /** A ring (desc, avail or used) is outside guest memory or crosses a region boundary. */
  RING_ADDRESS: 2,
  /** A ring address violates the spec alignment (desc 16, avail 2, used 4) in its buffer. */
  RING_MISALIGNED: 3,
  /** avail.idx moved more than the queue size past lastAvailIdx. */
  AVAIL_IDX_JUMP: 4,
  /** A head index from the avail ring (packed: a buffer id) is ≥ the queue size. */
  HEAD_OUT_OF_RANGE: 5,
  /** A head index (packed: a buffer id) is already in flight (offered again before it was used). */
  HEAD_IN_FLIGHT: 6,
  /** A descriptor's next index is ≥ its table's size. */
  NEXT_OUT_OF_RANGE: 7,
  /** The chain visits more descriptors than its table holds: a loop (packed: longer than the ring). */
  CHAIN_LOOP: 8,
  /** INDIRECT inside an indirect table. */
  INDIRECT_NESTED: 9,
  /** INDIRECT together with NEXT. */
  INDIRECT_WITH_NEXT: 10,
  /** Indirect table length 0, not a multiple of 16, or above 65536 entries. */
  INDIRECT_BAD_LENGTH: 11,
  /** INDIRECT used although VIRTIO_F_INDIRECT_DESC was not negotiated. */
  INDIRECT_NOT_NEGOTIATED: 12,
  /** A device-readable descriptor after a device-writable one. */
  READABLE_AFTER_WRITABLE: 13,
  /** A buffer or indirect table starts outside guest memory. */
  ADDR_OUTSIDE_MEMORY: 14,
  /** A buffer or indirect table starts in a region and runs past its end. */
  ADDR_CROSSES_REGION: 15,
  /** A data descriptor of length 0. */
  ZERO_LENGTH: 16,
  /** The chain's lengths sum above 2^32 - 1. */
  LENGTH_OVERFLOW: 17,
  /** More segments than the request's capacity. */
  TOO_MANY_SEGMENTS: 18,
  /** The device's request handler threw (a device bug): the queue stops, the worker goes on. */
  DEVICE_ERROR: 19,
  /** The in-flight region (PROTOCOL_F_INFLIGHT_SHMFD) failed its checks at queue start. */
  INFLIGHT_REGION: 20,
  /** Packed ring: a descriptor offered with AVAIL and USED both equal to the driver's wrap counter. */
  PACKED_FLAGS: 21,
  /** Packed ring: a chain runs into ring slots the device still holds (in flight). */
  PACKED_RING_OVERRUN: 22,
  /** Packed ring: the start position from SET_VRING_BASE is ≥ the queue size. */
  PACKED_BAD_BASE: 23,
  /** Packed ring taken over from a dead worker without an in-flight region: no position to resume from. */
  PACKED_NO_RESUME: 24,
} as const;
export type BrokenReasonCode = (typeof BrokenReason)[keyof typeof BrokenReason];

const reasonNames: string[] = [];
for (const [name, code] of Object.entries(BrokenReason)) reasonNames[code] = name;

/** 'CHAIN_LOOP' for 8, etc.; for logs. */
export function brokenReasonName(code: number): string {
  return reasonNames[code] ?? `UNKNOWN_${code}`;
}

/**
 * Walks chains of one descriptor table. One per queue; rebuilt when the table moves or the memory
 * table changes. After a failed walk, failIndex / failInIndirect say which descriptor was refused.
 */
export class ChainWalker {
  /** Index (in its table) of the descriptor that failed the last walk. */
  failIndex = -1;
  /** Whether that descriptor was in an indirect table. */
  failInIndirect = false;

  /**
   * @param desc u32 view of the descriptor table (4 words per descriptor, little-endian host)
   * @param size entries in the table
   */
  constructor(
    readonly memory: GuestMemory,
    private readonly desc: Uint32Array,
    readonly size: number,
    readonly indirectAllowed: boolean,
  ) {}

  /** Fills req from the chain at head (< size, checked by the caller). Returns a BrokenReason. */
  walk(head: number, req: VirtqRequest): number {
    // Function-local copies: V8 (Node 20) folds these, but not module-level consts (TDZ checks).
    const F_NEXT = 1;
    const F_WRITE = 2;
    const F_INDIRECT = 4;
    const TWO_POW_32 = 4294967296;
    const MAX_ADDR_HIGH_WORD = 0x1fffff; // addresses ≥ 2^53 are not exact doubles; no region is there
    const MAX_INDIRECT_BYTES = 65536 * 16; // `next` is a u16
    const memory = this.memory;
    const capacity = req.capacity;
    const segWindow = req.segWindow;
    const segWindowOffset = req.segWindowOffset;
    const segLength = req.segLength;
    // The region of the last translation, in locals: a chain's buffers are nearly always in the
    // region of the previous one, and a hit here costs two compares instead of a translate call.
    // Any region of the (immutable) table is a correct cache, so refreshing it is only for speed.
    let hitStart = memory.hitGuestStart;
    let hitSize = memory.hitGuestSize;
    let hitWindow = memory.hitSingleWindow;
    // Current table: either the queue's (u32 words) or an indirect one (words if aligned, else DataView).
    let words = this.desc;
    let wordBase = 0;
    let data: DataView | null = null;
    let dataBase = 0;
    let tableSize = this.size;
    let inIndirect = false;

    let index = head;
    let visited = 0;
    let segments = 0;
    let descriptors = 0;
    let readableSegments = 0;
    let readableBytes = 0;
    let writableBytes = 0;
    let writableSeen = false;

    for (;;) {
      if (++visited > tableSize) return this.fail(BrokenReason.CHAIN_LOOP, index, inIndirect);
      let addrLow: number;
      let addrHigh: number;
      let length: number;
      let flagsNext: number;
      if (data === null) {
        const b = wordBase + (index << 2);
        addrLow = words[b];
        addrHigh = words[b + 1];
        length = words[b + 2];
        flagsNext = words[b + 3];
      } else {
        const o = dataBase + (index << 4);
        addrLow = data.getUint32(o, true);
        addrHigh = data.getUint32(o + 4, true);
        length = data.getUint32(o + 8, true);
        flagsNext = data.getUint32(o + 12, true);
      }
      const flags = flagsNext & 0xffff;

      if ((flags & F_INDIRECT) !== 0) {
        if (!this.indirectAllowed) return this.fail(BrokenReason.INDIRECT_NOT_NEGOTIATED, index, inIndirect);
        if (inIndirect) return this.fail(BrokenReason.INDIRECT_NESTED, index, true);
        if ((flags & F_NEXT) !== 0) return this.fail(BrokenReason.INDIRECT_WITH_NEXT, index, false);
        if (length === 0 || (length & 15) !== 0 || length > MAX_INDIRECT_BYTES) {
          return this.fail(BrokenReason.INDIRECT_BAD_LENGTH, index, false);
        }
        if (addrHigh > MAX_ADDR_HIGH_WORD) return this.fail(BrokenReason.ADDR_OUTSIDE_MEMORY, index, false);
        const w = memory.translate(addrHigh * TWO_POW_32 + addrLow, length);
        if (w < 0) return this.fail(addressReason(w), index, false);
        const windowOffset = memory.outWindowOffset;
        const skewed = windowOffset + memory.windowSkew[w];
        if ((skewed & 3) === 0) {
          words = memory.windowWords[w];
          wordBase = skewed >>> 2;
        } else {
          data = memory.windowData[w];
          dataBase = windowOffset;
        }
        tableSize = length >>> 4;
        inIndirect = true;
        index = 0;
        visited = 0;
        continue;
      }

      if (length === 0) return this.fail(BrokenReason.ZERO_LENGTH, index, inIndirect);
      const writable = (flags & F_WRITE) !== 0;
      if (writable) {
        writableSeen = true;
        writableBytes += length;
      } else {
        if (writableSeen) return this.fail(BrokenReason.READABLE_AFTER_WRITABLE, index, inIndirect);
        readableBytes += length;
      }
      if (readableBytes + writableBytes > 0xffffffff) return this.fail(BrokenReason.LENGTH_OVERFLOW, index, inIndirect);
      if (addrHigh > MAX_ADDR_HIGH_WORD) return this.fail(BrokenReason.ADDR_OUTSIDE_MEMORY, index, inIndirect);

      let gpa = addrHigh * TWO_POW_32 + addrLow;
      const hitOffset = gpa - hitStart;
      if (hitWindow >= 0 && hitOffset >= 0 && hitOffset < hitSize && length <= hitSize - hitOffset) {
        // Inside the cached single-window region: one segment, no translate call.
        if (segments >= capacity) return this.fail(BrokenReason.TOO_MANY_SEGMENTS, index, inIndirect);
        segWindow[segments] = hitWindow;
        segWindowOffset[segments] = hitOffset;
        segLength[segments] = length;
        segments++;
        if (!writable) readableSegments++;
      } else {
        // One segment per window piece: a single piece unless the buffer is longer than a window stride.
        let remaining = length;
        do {
          const w = memory.translateSegment(gpa, remaining);
          if (w < 0) return this.fail(addressReason(w), index, inIndirect);
          if (segments >= capacity) return this.fail(BrokenReason.TOO_MANY_SEGMENTS, index, inIndirect);
          const piece = memory.outPieceLength;
          segWindow[segments] = w;
          segWindowOffset[segments] = memory.outWindowOffset;
          segLength[segments] = piece;
          segments++;
          if (!writable) readableSegments++;
          gpa += piece;
          remaining -= piece;
        } while (remaining > 0);
        hitStart = memory.hitGuestStart;
        hitSize = memory.hitGuestSize;
        hitWindow = memory.hitSingleWindow;
      }
      descriptors++;

      if ((flags & F_NEXT) === 0) break;
      index = flagsNext >>> 16;
      if (index >= tableSize) return this.fail(BrokenReason.NEXT_OUT_OF_RANGE, index, inIndirect);
    }

    req.head = head;
    req.memory = memory;
    req.segmentCount = segments;
    req.readableCount = readableSegments;
    req.writableCount = segments - readableSegments;
    req.readableBytes = readableBytes;
    req.writableBytes = writableBytes;
    req.descriptorCount = descriptors;
    return BrokenReason.NONE;
  }

  private fail(reason: number, index: number, inIndirect: boolean): number {
    this.failIndex = index;
    this.failInIndirect = inIndirect;
    return reason;
  }
}

function addressReason(translateResult: number): number {
  if (translateResult === TRANSLATE_OUTSIDE) return BrokenReason.ADDR_OUTSIDE_MEMORY;
  if (translateResult === TRANSLATE_CROSSES) return BrokenReason.ADDR_CROSSES_REGION;
  return BrokenReason.INDIRECT_BAD_LENGTH; // TRANSLATE_TOO_LONG: a table above one window stride
}
