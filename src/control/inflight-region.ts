// The control side of in-flight tracking (GET_INFLIGHT_FD / SET_INFLIGHT_FD): the back-end
// creates the region as a zero-filled memfd, the front-end keeps it across back-end restarts and
// hands it back after each (re)connect; the back-end maps it and gives each ring its part at
// start. Layout and recovery are the data plane's (src/dataplane/inflight.ts).
import { fstatSync } from 'node:fs';
import { FileSeal, native } from '../native.js';
import { inflightQueueBytes, type InflightSlice } from '../dataplane/inflight.js';
import { SessionError } from './errors.js';

const PAGE_SIZE = 4096;

/** A mapped in-flight region, as SET_INFLIGHT_FD described it. */
export interface InflightRegion {
  buffer: SharedArrayBuffer;
  /** Where queue 0's part starts in `buffer`. */
  base: number;
  numQueues: number;
  queueSize: number;
  /** The fd carried F_SEAL_SHRINK (ours always do): it cannot be truncated under the mapping. */
  sealedAgainstShrink: boolean;
}

/** Checks a (num_queues, queue_size) pair from the front-end against the device. */
export function checkInflightShape(
  what: string,
  numQueues: number,
  queueSize: number,
  maxQueues: number,
  maxQueueSize: number,
): void {
  if (numQueues < 1 || numQueues > maxQueues) {
    throw new SessionError(`${what}: num_queues ${numQueues} must be between 1 and the device's ${maxQueues}`);
  }
  if (queueSize < 1 || queueSize > maxQueueSize) {
    throw new SessionError(`${what}: queue_size ${queueSize} must be between 1 and the device's ${maxQueueSize}`);
  }
}

/**
 * GET_INFLIGHT_FD: a new zero-filled memfd sized for the split layout, sealed against resizing
 * (as libvhost-user's is), so a front-end can never shrink it under a mapping (SIGBUS).
 */
export function createInflightFd(numQueues: number, queueSize: number): { fd: number; mmapSize: number } {
  const mmapSize = numQueues * inflightQueueBytes(queueSize);
  const fd = native.memfdCreate('vhost-user-inflight', mmapSize);
  try {
    native.addFileSeals(fd, FileSeal.SHRINK | FileSeal.GROW | FileSeal.SEAL);
  } catch (error) {
    native.close(fd);
    throw error;
  }
  return { fd, mmapSize };
}

/**
 * SET_INFLIGHT_FD: checks the description against the device and the fd's size, then maps it.
 * The fd is always closed (the mapping keeps the memory). A size smaller than the layout needs,
 * an area beyond the file, or an offset that breaks the views' alignment is refused.
 */
export function mapInflightFd(
  request: { mmapSize: bigint; mmapOffset: bigint; numQueues: number; queueSize: number },
  fd: number,
  maxQueues: number,
  maxQueueSize: number,
): InflightRegion {
  try {
    const { numQueues, queueSize } = request;
    checkInflightShape('SET_INFLIGHT_FD', numQueues, queueSize, maxQueues, maxQueueSize);
    const needed = numQueues * inflightQueueBytes(queueSize);
    if (request.mmapSize < BigInt(needed)) {
      throw new SessionError(
        `SET_INFLIGHT_FD: mmap_size ${request.mmapSize} is smaller than the ${needed} bytes ${numQueues} × ${queueSize} entries need`,
      );
    }
    if (request.mmapOffset % 8n !== 0n)
      throw new SessionError(`SET_INFLIGHT_FD: mmap_offset ${request.mmapOffset} is not 8-byte aligned`);
    let fileSize: number;
    try {
      fileSize = fstatSync(fd).size;
    } catch (error) {
      throw new SessionError(`SET_INFLIGHT_FD: the fd cannot be inspected: ${(error as Error).message}`);
    }
    if (request.mmapOffset + request.mmapSize > BigInt(fileSize)) {
      throw new SessionError(
        `SET_INFLIGHT_FD: area [offset ${request.mmapOffset}, size ${request.mmapSize}] exceeds its file (${fileSize} bytes)`,
      );
    }
    const offset = Number(request.mmapOffset);
    const alignedOffset = Math.floor(offset / PAGE_SIZE) * PAGE_SIZE;
    const base = offset - alignedOffset;
    let seals: number;
    try {
      seals = native.fileSeals(fd);
    } catch {
      seals = -1;
    }
    let buffer: SharedArrayBuffer;
    try {
      // Only the part the layout uses is mapped: a larger mmap_size adds nothing we read.
      buffer = native.mmapShared(fd, base + needed, alignedOffset, true);
    } catch (error) {
      throw new SessionError(`SET_INFLIGHT_FD: mmap failed: ${(error as Error).message}`);
    }
    return { buffer, base, numQueues, queueSize, sealedAgainstShrink: seals >= 0 && (seals & FileSeal.SHRINK) !== 0 };
  } finally {
    try {
      native.close(fd);
    } catch {
      // Already invalid: fstat or mmap said so above.
    }
  }
}

/** Ring `index`'s part of the region, or undefined when the region has no part for it. */
export function inflightSlice(region: InflightRegion, index: number): InflightSlice | undefined {
  if (index >= region.numQueues) return undefined;
  return { buffer: region.buffer, offset: region.base + index * inflightQueueBytes(region.queueSize), descNum: region.queueSize };
}
