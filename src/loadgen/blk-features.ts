// The virtio-blk features the load generator understands, and the config-space limits it must
// honour once they are negotiated. It only issues IN and OUT requests with one data segment, so
// it acks SIZE_MAX, SEG_MAX, BLK_SIZE (limits it checks), RO (it refuses to write) and MQ (more
// than one queue) — not FLUSH, DISCARD, WRITE_ZEROES, CONFIG_WCE, TOPOLOGY or GEOMETRY, which it
// never uses (without FLUSH a virtio-blk device runs write-through, §5.2.5.1).
import { bit, hasFeature } from '../control/protocol.js';
import { BlkConfigOffset, BlkFeature, SECTOR_SIZE } from '../devices/blk/virtio-blk.js';
import type { BlkPattern } from './load-spec.js';

export const LOADGEN_BLK_FEATURES =
  bit(BlkFeature.SIZE_MAX) | bit(BlkFeature.SEG_MAX) | bit(BlkFeature.BLK_SIZE) | bit(BlkFeature.RO) | bit(BlkFeature.MQ);

/** Config bytes the generator reads: capacity through blk_size. */
export const LOADGEN_BLK_CONFIG_BYTES = BlkConfigOffset.blkSize + 4;

export interface BlkLimits {
  capacityBytes: number;
  /** Largest data segment (SIZE_MAX), or 0 when not negotiated. */
  sizeMax: number;
  /** Logical block size (BLK_SIZE), or 512 when not negotiated. */
  blockSize: number;
  readOnly: boolean;
}

/** Reads what the generator needs from the config space; the back-end's bytes are not trusted. */
export function blkLimits(config: Uint8Array, features: bigint): BlkLimits {
  if (config.length < LOADGEN_BLK_CONFIG_BYTES)
    throw new Error(`the back-end's config space answer is ${config.length} bytes, expected ${LOADGEN_BLK_CONFIG_BYTES}`);
  const view = new DataView(config.buffer, config.byteOffset, config.byteLength);
  const sectors = view.getBigUint64(BlkConfigOffset.capacity, true);
  const has = (feature: number) => hasFeature(features, feature);
  // Capacities beyond 2^53 bytes are not exact as numbers; the generator never needs that far.
  const capacityBytes =
    sectors > BigInt(Number.MAX_SAFE_INTEGER) / 512n ? Number.MAX_SAFE_INTEGER : Number(sectors) * SECTOR_SIZE;
  return {
    capacityBytes,
    sizeMax: has(BlkFeature.SIZE_MAX) ? view.getUint32(BlkConfigOffset.sizeMax, true) : 0,
    blockSize: has(BlkFeature.BLK_SIZE) ? view.getUint32(BlkConfigOffset.blkSize, true) : SECTOR_SIZE,
    readOnly: has(BlkFeature.RO),
  };
}

/** Why this workload cannot run on the device as negotiated ('' if it can). */
export function blkWorkloadProblem(
  limits: BlkLimits,
  workload: { pattern: BlkPattern; blockSize: number; queues: number },
  features: bigint,
): string {
  if (limits.capacityBytes < workload.blockSize)
    return `the disk (${limits.capacityBytes} bytes) is smaller than one ${workload.blockSize}-byte block`;
  if (limits.readOnly && workload.pattern !== 'read' && workload.pattern !== 'randread') {
    return `the back-end's disk is read-only (VIRTIO_BLK_F_RO): use --rw read or randread`;
  }
  if (limits.sizeMax !== 0 && workload.blockSize > limits.sizeMax) {
    return `--bs ${workload.blockSize} is larger than the back-end's largest segment (size_max ${limits.sizeMax})`;
  }
  if (limits.blockSize < SECTOR_SIZE || workload.blockSize % limits.blockSize !== 0) {
    return `--bs ${workload.blockSize} is not a multiple of the back-end's logical block size (${limits.blockSize})`;
  }
  if (workload.queues > 1 && !hasFeature(features, BlkFeature.MQ))
    return `the back-end does not offer VIRTIO_BLK_F_MQ, so only one queue can be driven`;
  return '';
}
