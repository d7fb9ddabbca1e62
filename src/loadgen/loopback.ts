// The loopback "back-end": a device side that lives in the load thread itself and completes every
// available virtio-blk request at once (status OK, nothing read or written). Driving it measures
// the load generator alone — its ceiling — so a reader can tell whether a back-end's figure is the
// back-end's or the generator's. It trusts the rings: the generator built them.
import type { MemoryRegion } from '../dataplane/memory.js';
import { VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE } from '../dataplane/chain.js';
import type { LoadQueue } from './load-spec.js';

export class LoopbackDevice {
  private readonly size: number;
  private readonly mask: number;
  private readonly desc: Uint32Array;
  private readonly availU16: Uint16Array;
  private readonly usedU16: Uint16Array;
  private readonly usedU32: Uint32Array;
  /** The whole of guest memory (one region at guest-physical 0, below 4 GiB). */
  private readonly bytes: Uint8Array;
  private lastAvail = 0;
  private usedIdx = 0;

  constructor(regions: readonly MemoryRegion[], queue: LoadQueue) {
    const region = regions[0];
    if (regions.length !== 1 || !region || region.guestPhysAddr !== 0 || region.size > 2 ** 32) {
      throw new RangeError('the loopback device needs one guest memory region at address 0, below 4 GiB');
    }
    const buffer = region.buffer;
    const base = region.bufferOffset;
    this.size = queue.size;
    this.mask = queue.size - 1;
    this.desc = new Uint32Array(buffer, base + queue.descAddr, 4 * queue.size);
    this.availU16 = new Uint16Array(buffer, base + queue.availAddr, 3 + queue.size);
    this.usedU16 = new Uint16Array(buffer, base + queue.usedAddr, 3 + 4 * queue.size);
    this.usedU32 = new Uint32Array(buffer, base + queue.usedAddr, 1 + 2 * queue.size);
    this.bytes = new Uint8Array(buffer, base, region.size);
  }

  /** Completes everything available: OK in each chain's last (status) byte, one used.idx store. */
  complete(): number {
    const availIdx = Atomics.load(this.availU16, 1);
    const desc = this.desc;
    let count = 0;
    while (this.lastAvail !== availIdx) {
      const head = this.availU16[2 + (this.lastAvail & this.mask)];
      let index = head;
      let written = 0;
      let flags = desc[4 * index + 3] & 0xffff;
      for (let steps = 1; (flags & VIRTQ_DESC_F_NEXT) !== 0 && steps < this.size; steps++) {
        if ((flags & VIRTQ_DESC_F_WRITE) !== 0) written += desc[4 * index + 2];
        index = desc[4 * index + 3] >>> 16;
        flags = desc[4 * index + 3] & 0xffff;
      }
      written += desc[4 * index + 2];
      this.bytes[desc[4 * index]] = 0; // VIRTIO_BLK_S_OK in the status byte
      const slot = 1 + 2 * (this.usedIdx & this.mask);
      this.usedU32[slot] = head;
      this.usedU32[slot + 1] = written;
      this.usedIdx = (this.usedIdx + 1) & 0xffff;
      this.lastAvail = (this.lastAvail + 1) & 0xffff;
      count++;
    }
    if (count > 0) Atomics.store(this.usedU16, 1, this.usedIdx);
    return count;
  }
}
