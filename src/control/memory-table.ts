// The back-end's view of the front-end's memory table: each region's fd mapped once with
// native mmap as a SharedArrayBuffer that workers wrap without copying. A table is immutable;
// every change (SET_MEM_TABLE, ADD_MEM_REG, REM_MEM_REG) builds a new one, so a worker that
// still reads through the old table keeps its mappings alive until it lets go (the mapping is
// unmapped when the last isolate drops the buffer).
import { fstatSync } from 'node:fs';
import { FileSeal, native } from '../native.js';
import type { MemoryRegion } from '../dataplane/memory.js';
import { MAX_LOG_BYTES, type DirtyLogArea } from '../dataplane/dirty-log.js';
import { MemoryTableError } from './errors.js';
import type { RegionDescription } from './messages.js';

/** Front-end limit of GET_MAX_MEM_SLOTS: QEMU's own maximum for vhost-user (docs/interop/vhost-user.rst). */
export const MAX_MEM_SLOTS = 509;

const PAGE_SIZE = 4096;
/** Numbers above this lose precision as JS numbers; no real address space reaches it. */
const MAX_SAFE_ADDRESS = 2 ** 52;

/** A region of the table: what the data plane reads through, plus where it came from in the fd. */
export interface MappedRegion extends MemoryRegion {
  mmapOffset: number;
  /**
   * The fd carried F_SEAL_SHRINK when it was mapped (QEMU's memfd backends do). Without it the
   * front-end can truncate the file later, and the next touch of a vanished page raises SIGBUS,
   * which kills the whole daemon: the size check below only holds at mapping time.
   */
  sealedAgainstShrink: boolean;
}

export { MemoryTableError };

/**
 * Maps one region from its fd. The fd is always closed (the mapping keeps the memory alive),
 * so a failed map leaks nothing. The fd's size is checked first: touching a mapping past the end
 * of a file raises SIGBUS, which would kill the whole daemon. Its seals are recorded (the
 * session warns about, or refuses, regions that may shrink later).
 */
export function mapRegion(description: RegionDescription, fd: number): MappedRegion {
  try {
    const guestPhysAddr = toSafeNumber(description.guestPhysAddr, 'guest physical address');
    const size = toSafeNumber(description.memorySize, 'region size');
    const userspaceAddr = toSafeNumber(description.userspaceAddr, 'userspace address');
    const mmapOffset = toSafeNumber(description.mmapOffset, 'mmap offset');
    if (size === 0) throw new MemoryTableError('memory region has size 0');
    if (guestPhysAddr + size > MAX_SAFE_ADDRESS || userspaceAddr + size > MAX_SAFE_ADDRESS) {
      throw new MemoryTableError('memory region ends beyond the supported address range');
    }
    let fileSize: number;
    try {
      fileSize = fstatSync(fd).size;
    } catch (error) {
      throw new MemoryTableError(`memory region fd ${fd} cannot be inspected: ${(error as Error).message}`);
    }
    if (mmapOffset + size > fileSize) {
      throw new MemoryTableError(`memory region [offset ${mmapOffset}, size ${size}] exceeds its file (${fileSize} bytes)`);
    }
    let seals: number;
    try {
      seals = native.fileSeals(fd);
    } catch (error) {
      throw new MemoryTableError(`memory region fd ${fd}: cannot read its seals: ${(error as Error).message}`);
    }
    const sealedAgainstShrink = seals >= 0 && (seals & FileSeal.SHRINK) !== 0;
    // mmap needs a page-aligned file offset; the region starts bufferOffset bytes into the mapping.
    const alignedOffset = Math.floor(mmapOffset / PAGE_SIZE) * PAGE_SIZE;
    const bufferOffset = mmapOffset - alignedOffset;
    let buffer: SharedArrayBuffer;
    try {
      buffer = native.mmapShared(fd, bufferOffset + size, alignedOffset, true);
    } catch (error) {
      throw new MemoryTableError(`mmap of memory region failed: ${(error as Error).message}`);
    }
    return { guestPhysAddr, size, userspaceAddr, mmapOffset, buffer, bufferOffset, sealedAgainstShrink };
  } finally {
    try {
      native.close(fd);
    } catch {
      // The fd was already invalid; mapping it failed above.
    }
  }
}

/**
 * Maps the dirty log of SET_LOG_BASE ({u64 mmap_size, u64 mmap_offset} + fd) writable, after the
 * same checks as a region: the file must hold [offset, offset + size) (a log past the end of
 * its file would SIGBUS on the first mark), and the size must fit one typed array. The fd is
 * always closed.
 */
export function mapDirtyLog(mmapSize: bigint, mmapOffset: bigint, fd: number): DirtyLogArea {
  try {
    if (mmapSize === 0n || mmapSize > BigInt(MAX_LOG_BYTES)) {
      throw new MemoryTableError(`dirty log size ${mmapSize} is outside 1 .. 2^32 bytes`);
    }
    const size = Number(mmapSize);
    const offset = toSafeNumber(mmapOffset, 'dirty log offset');
    let fileSize: number;
    try {
      fileSize = fstatSync(fd).size;
    } catch (error) {
      throw new MemoryTableError(`dirty log fd ${fd} cannot be inspected: ${(error as Error).message}`);
    }
    if (offset + size > fileSize) {
      throw new MemoryTableError(`dirty log [offset ${offset}, size ${size}] exceeds its file (${fileSize} bytes)`);
    }
    const alignedOffset = Math.floor(offset / PAGE_SIZE) * PAGE_SIZE;
    const skew = offset - alignedOffset;
    let buffer: SharedArrayBuffer;
    try {
      buffer = native.mmapShared(fd, skew + size, alignedOffset, true);
    } catch (error) {
      throw new MemoryTableError(`mmap of the dirty log failed: ${(error as Error).message}`);
    }
    return { buffer, offset: skew, size };
  } finally {
    try {
      native.close(fd);
    } catch {
      // Already invalid: fstat failed above.
    }
  }
}

/** Rejects tables whose guest-physical or userspace ranges overlap (hostile or corrupt). */
export function checkNoOverlap(regions: readonly MappedRegion[]): void {
  for (const key of ['guestPhysAddr', 'userspaceAddr'] as const) {
    const sorted = [...regions].sort((a, b) => a[key] - b[key]);
    for (let i = 1; i < sorted.length; i++) {
      const previous = sorted[i - 1];
      if (previous[key] + previous.size > sorted[i][key]) {
        throw new MemoryTableError(`memory regions overlap (${key === 'guestPhysAddr' ? 'guest physical' : 'userspace'} ranges)`);
      }
    }
  }
}

/** Translates a front-end virtual address range (SET_VRING_ADDR) to a region and offset. */
export function findUserspaceRange(
  regions: readonly MappedRegion[],
  userspaceAddr: number,
  length: number,
): { region: number; offset: number } | undefined {
  for (let i = 0; i < regions.length; i++) {
    const region = regions[i];
    if (userspaceAddr >= region.userspaceAddr && userspaceAddr + length <= region.userspaceAddr + region.size) {
      return { region: i, offset: userspaceAddr - region.userspaceAddr };
    }
  }
  return undefined;
}

function toSafeNumber(value: bigint, what: string): number {
  if (value < 0n || value > BigInt(MAX_SAFE_ADDRESS)) {
    throw new MemoryTableError(`${what} 0x${value.toString(16)} is outside the supported range`);
  }
  return Number(value);
}
