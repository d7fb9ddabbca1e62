// Guest memory created by the front-end library: memfd regions that the back-end maps through
// SET_MEM_TABLE / ADD_MEM_REG, as QEMU's memory-backend-memfd would. The front-end keeps one
// mapping of each region to build rings and buffers in.
import { FileSeal, native } from '../native.js';
import { GuestMemory, type MemoryRegion } from '../dataplane/memory.js';
import type { RegionDescriptionWithFd } from '../control/messages.js';

export interface RegionSpec {
  guestPhysAddr: number;
  /** Bytes; sparse, so a region larger than 4 GiB costs only what is touched. */
  size: number;
  /** The address the front-end claims to map it at (only used for ring addresses); default derived from gpa. */
  userspaceAddr?: number;
}

/** A region the front-end created: the data plane's view of it plus the memfd it shares. */
export interface FrontendRegion extends MemoryRegion {
  /** The memfd; owned by FrontendMemory until close(). */
  fd: number;
}

/** Fake front-end virtual addresses: a high base so they never equal guest addresses by accident. */
const USERSPACE_BASE = 0x7f00_0000_0000;
const PAGE_SIZE = 4096;

export class FrontendMemory {
  readonly regions: readonly FrontendRegion[];
  /** The same memory through the data plane's allocation-free view (for vring drivers). */
  readonly guest: GuestMemory;
  private nextFree: number[];
  private closed = false;

  constructor(specs: readonly RegionSpec[]) {
    if (specs.length === 0) throw new RangeError('guest memory needs at least one region');
    const regions: FrontendRegion[] = [];
    try {
      for (const spec of specs) {
        if (spec.size <= 0 || spec.size % PAGE_SIZE !== 0)
          throw new RangeError(`region size ${spec.size} must be a positive multiple of 4096`);
        const fd = native.memfdCreate(`vhost-user-ts-guest@${spec.guestPhysAddr.toString(16)}`, spec.size);
        let buffer: SharedArrayBuffer;
        try {
          // Sealed like QEMU's memory-backend-memfd: a back-end can then trust the size it maps.
          native.addFileSeals(fd, FileSeal.SHRINK | FileSeal.GROW);
          buffer = native.mmapShared(fd, spec.size, 0, true);
        } catch (error) {
          native.close(fd);
          throw error;
        }
        regions.push({
          guestPhysAddr: spec.guestPhysAddr,
          size: spec.size,
          userspaceAddr: spec.userspaceAddr ?? USERSPACE_BASE + spec.guestPhysAddr,
          fd,
          buffer,
          bufferOffset: 0,
        });
      }
    } catch (error) {
      for (const region of regions) native.close(region.fd);
      throw error;
    }
    this.regions = regions;
    this.guest = new GuestMemory(regions);
    this.nextFree = regions.map(() => 0);
  }

  /** One region of `size` bytes at guest address 0. */
  static simple(size: number): FrontendMemory {
    return new FrontendMemory([{ guestPhysAddr: 0, size }]);
  }

  /**
   * Carves `bytes` out of guest memory (bump allocation, never freed): rings, indirect tables and
   * I/O buffers. Returns the guest-physical address.
   */
  allocate(bytes: number, align = 16, region?: number): number {
    const candidates = region === undefined ? this.regions.map((_, i) => i) : [region];
    for (const index of candidates) {
      const r = this.regions[index];
      if (!r) break;
      const start = Math.ceil(this.nextFree[index] / align) * align;
      if (start + bytes <= r.size) {
        this.nextFree[index] = start + bytes;
        return r.guestPhysAddr + start;
      }
    }
    throw new RangeError(`guest memory has no room for ${bytes} more bytes`);
  }

  /** A byte view of [gpa, gpa + length) (inside one region). */
  bytes(gpa: number, length: number): Uint8Array {
    const region = this.regionAt(gpa, length);
    return new Uint8Array(region.buffer, region.bufferOffset + (gpa - region.guestPhysAddr), length);
  }

  /** Translates a guest-physical address to the front-end's (claimed) virtual address. */
  userspaceAddress(gpa: number): number {
    const region = this.regionAt(gpa, 1);
    return region.userspaceAddr + (gpa - region.guestPhysAddr);
  }

  /** Regions as SET_MEM_TABLE / ADD_MEM_REG describe them (the fds are still ours). */
  describe(): RegionDescriptionWithFd[] {
    return this.regions.map((r) => ({
      guestPhysAddr: BigInt(r.guestPhysAddr),
      memorySize: BigInt(r.size),
      userspaceAddr: BigInt(r.userspaceAddr),
      mmapOffset: 0n,
      fd: r.fd,
    }));
  }

  /** Closes the memfds. Mappings stay valid until every user lets go of the buffers. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const region of this.regions) native.close(region.fd);
  }

  private regionAt(gpa: number, length: number): FrontendRegion {
    for (const region of this.regions) {
      if (gpa >= region.guestPhysAddr && gpa + length <= region.guestPhysAddr + region.size) return region;
    }
    throw new RangeError(`guest range 0x${gpa.toString(16)}+${length} is not inside one region`);
  }
}
