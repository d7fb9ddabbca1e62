// The control-plane face of vhost-user-blk: features, config space and queue limits. The data
// path (request parsing and engines) runs in the worker threads.
import type { VhostUserDevice } from '../../control/backend.js';
import { VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC, VIRTIO_F_VERSION_1 } from '../../control/protocol.js';
import { BLK_CONFIG_SIZE, BlkConfigOffset, BlkFeature, SECTOR_SIZE, encodeBlkConfig } from './virtio-blk.js';

export interface BlkDeviceOptions {
  /** Disk size in bytes (a multiple of 512; the image or RAM disk size). */
  capacityBytes: number;
  numQueues: number;
  maxQueueSize: number;
  readOnly: boolean;
  /** Logical block size reported to the guest (512 or 4096). */
  logicalBlockSize?: number;
  /** The engine can discard / write zeroes (punch holes, zero ranges). */
  supportsDiscard: boolean;
  /** The engine has a volatile cache that FLUSH makes durable. */
  supportsFlush: boolean;
}

/** Largest single segment we accept; Linux sizes its bio segments from this. */
const SIZE_MAX = 1 << 20;
/** DISCARD / WRITE_ZEROES ranges per request: one, sized in sectors (fits a u32). */
const MAX_DISCARD_SECTORS = (1 << 30) / SECTOR_SIZE;

const bit = (n: number) => 1n << BigInt(n);

export class BlkDevice implements VhostUserDevice {
  readonly name = 'virtio-blk';
  readonly numQueues: number;
  readonly maxQueueSize: number;
  readonly features: bigint;
  private config: Uint8Array;
  private writeback = true;

  constructor(readonly options: BlkDeviceOptions) {
    if (options.capacityBytes % SECTOR_SIZE !== 0) throw new RangeError('disk size must be a multiple of 512 bytes');
    const blockSize = options.logicalBlockSize ?? SECTOR_SIZE;
    if (blockSize !== 512 && blockSize !== 4096) throw new RangeError('logical block size must be 512 or 4096');
    if (!Number.isInteger(options.numQueues) || options.numQueues < 1 || options.numQueues > 64) {
      throw new RangeError('queue count must be between 1 and 64');
    }
    this.numQueues = options.numQueues;
    this.maxQueueSize = options.maxQueueSize;
    let features =
      bit(VIRTIO_F_VERSION_1) |
      bit(VIRTIO_F_EVENT_IDX) |
      bit(VIRTIO_F_INDIRECT_DESC) |
      bit(BlkFeature.SIZE_MAX) |
      bit(BlkFeature.SEG_MAX) |
      bit(BlkFeature.BLK_SIZE) |
      bit(BlkFeature.TOPOLOGY) |
      bit(BlkFeature.MQ);
    if (options.readOnly) features |= bit(BlkFeature.RO);
    if (options.supportsFlush) features |= bit(BlkFeature.FLUSH) | bit(BlkFeature.CONFIG_WCE);
    if (options.supportsDiscard && !options.readOnly) features |= bit(BlkFeature.DISCARD) | bit(BlkFeature.WRITE_ZEROES);
    this.features = features;
    this.config = this.buildConfig();
  }

  /** Whether the guest asked for a write-back cache (CONFIG_WCE); write-through means flush each write. */
  get writebackEnabled(): boolean {
    return this.writeback;
  }

  getConfig(offset: number, size: number): Uint8Array {
    if (offset + size > BLK_CONFIG_SIZE) {
      throw new RangeError(`config range [${offset}, ${offset + size}) is beyond the ${BLK_CONFIG_SIZE}-byte virtio-blk config`);
    }
    return this.config.slice(offset, offset + size);
  }

  setConfig(offset: number, data: Uint8Array): void {
    // Only the writeback byte is writable (§5.2.5: with CONFIG_WCE the driver may switch modes).
    if (offset !== BlkConfigOffset.writeback || data.length !== 1 || (this.features & bit(BlkFeature.CONFIG_WCE)) === 0n) {
      throw new RangeError(`config bytes [${offset}, ${offset + data.length}) are read-only`);
    }
    if (data[0]! > 1) throw new RangeError(`writeback mode ${data[0]} is neither 0 nor 1`);
    this.writeback = data[0] === 1;
    this.config = this.buildConfig();
  }

  reset(): void {
    this.writeback = true;
    this.config = this.buildConfig();
  }

  private buildConfig(): Uint8Array {
    const discard = (this.features & bit(BlkFeature.DISCARD)) !== 0n;
    return encodeBlkConfig({
      capacityBytes: this.options.capacityBytes,
      logicalBlockSize: this.options.logicalBlockSize ?? SECTOR_SIZE,
      sizeMax: SIZE_MAX,
      segMax: this.maxQueueSize - 2,
      numQueues: this.numQueues,
      writeback: this.writeback,
      maxDiscardSectors: discard ? MAX_DISCARD_SECTORS : 0,
      maxWriteZeroesSectors: discard ? MAX_DISCARD_SECTORS : 0,
    });
  }
}
