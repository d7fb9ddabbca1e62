// The descriptor chain walker of a packed ring (virtio 1.x §2.8.6, §2.8.7): a chain is a run of
// consecutive ring descriptors (NEXT set on all but the last, wrapping at the ring end), its buffer
// id is the last one's, and an indirect descriptor points at a table read front to back (len / 16
// entries; NEXT inside it is ignored, as QEMU and DPDK do, and Linux never sets it).
//
// Packed descriptor: {le64 addr; le32 len; le16 id; le16 flags} — the split layout with the last
// two fields swapped, so the u32 word 3 holds id in its low and flags in its high half.
//
// The rules and reasons are the split walker's (chain.ts) where they carry over: INDIRECT only if
// negotiated, never nested or with NEXT, table length a non-zero multiple of 16; no zero-length
// buffer; readable before writable; each buffer in one region; u32 total; at most req.capacity
// segments. A chain longer than the ring is CHAIN_LOOP. The AVAIL/USED bits of the descriptors after
// the head are not checked (QEMU and DPDK do not either): the head, stored last by the driver,
// publishes the whole chain.
import { BrokenReason } from './chain.js';
import { GuestMemory, TRANSLATE_OUTSIDE, TRANSLATE_CROSSES } from './memory.js';
import type { VirtqRequest } from './request.js';

export class PackedChainWalker {
  /** Index (in the ring or its indirect table) of the descriptor that failed the last walk. */
  failIndex = -1;
  failInIndirect = false;
  /** After a successful walk: the chain's buffer id (from its last ring descriptor). */
  outId = 0;
  /** After a successful walk: ring descriptors the chain occupies (how far the avail position moves). */
  outRingDescriptors = 0;

  /**
   * @param ring u32 view of the descriptor ring (4 words per descriptor, little-endian host)
   * @param size descriptors in the ring
   */
  constructor(
    readonly memory: GuestMemory,
    private readonly ring: Uint32Array,
    readonly size: number,
    readonly indirectAllowed: boolean,
  ) {}

  /** Fills req from the chain starting at ring position `position` (< size). Returns a BrokenReason. */
  walk(position: number, req: VirtqRequest): number {
    const F_NEXT = 1;
    const F_WRITE = 2;
    const F_INDIRECT = 4;
    const TWO_POW_32 = 4294967296;
    const MAX_ADDR_HIGH_WORD = 0x1fffff;
    const MAX_INDIRECT_BYTES = 65536 * 16;
    const memory = this.memory;
    const capacity = req.capacity;
    const size = this.size;
    let words = this.ring;
    let wordBase = 0;
    let data: DataView | null = null;
    let dataBase = 0;
    let tableSize = 0;
    let inIndirect = false;

    let index = position;
    let ringDescriptors = 0;
    let id = 0;
    let segments = 0;
    let descriptors = 0;
    let readableSegments = 0;
    let readableBytes = 0;
    let writableBytes = 0;
    let writableSeen = false;

    for (;;) {
      let addrLow: number;
      let addrHigh: number;
      let length: number;
      let idFlags: number;
      if (!inIndirect && ++ringDescriptors > size) return this.fail(BrokenReason.CHAIN_LOOP, index, false);
      if (data === null) {
        const b = wordBase + (index << 2);
        addrLow = words[b];
        addrHigh = words[b + 1];
        length = words[b + 2];
        idFlags = words[b + 3];
      } else {
        const o = dataBase + (index << 4);
        addrLow = data.getUint32(o, true);
        addrHigh = data.getUint32(o + 4, true);
        length = data.getUint32(o + 8, true);
        idFlags = data.getUint32(o + 12, true);
      }
      const flags = idFlags >>> 16;
      if (!inIndirect) id = idFlags & 0xffff;

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
      let remaining = length;
      do {
        const w = memory.translateSegment(gpa, remaining);
        if (w < 0) return this.fail(addressReason(w), index, inIndirect);
        if (segments >= capacity) return this.fail(BrokenReason.TOO_MANY_SEGMENTS, index, inIndirect);
        const piece = memory.outPieceLength;
        req.segWindow[segments] = w;
        req.segWindowOffset[segments] = memory.outWindowOffset;
        req.segLength[segments] = piece;
        segments++;
        if (!writable) readableSegments++;
        gpa += piece;
        remaining -= piece;
      } while (remaining > 0);
      descriptors++;

      if (inIndirect) {
        if (++index >= tableSize) break;
        continue;
      }
      if ((flags & F_NEXT) === 0) break;
      if (++index === size) index = 0;
    }

    req.head = id;
    req.memory = memory;
    req.segmentCount = segments;
    req.readableCount = readableSegments;
    req.writableCount = segments - readableSegments;
    req.readableBytes = readableBytes;
    req.writableBytes = writableBytes;
    req.descriptorCount = descriptors;
    this.outId = id;
    this.outRingDescriptors = ringDescriptors;
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
  return BrokenReason.INDIRECT_BAD_LENGTH;
}
