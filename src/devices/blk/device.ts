// The control-plane face of vhost-user-blk: features, config space and queue limits. The data
// path (request parsing and engines) runs in the worker threads; handlerSpec() describes it.
//
// Write cache. The writeback byte the guest writes (CONFIG_WCE), or FLUSH not being negotiated
// (then the guest can never make writes durable itself: §5.2.6.2 write-through), is mirrored
// into a shared Int32Array that every worker reads per write.
import type { VhostUserDevice } from '../../control/backend.js';
import {
  ProtocolFeature,
  VIRTIO_F_EVENT_IDX,
  VIRTIO_F_INDIRECT_DESC,
  VIRTIO_F_RING_PACKED,
  VIRTIO_F_VERSION_1,
} from '../../control/protocol.js';
import type { HandlerSpec } from '../../dataplane/device-api.js';
import { resolveEngine } from './engine-select.js';
import { MAX_RANGE_SECTORS, type BlkEngineChoice, type BlkHandlerOptions } from './options.js';
import { BLK_CONFIG_SIZE, BlkConfigOffset, BlkFeature, SECTOR_SIZE, VIRTIO_BLK_ID_BYTES, encodeBlkConfig } from './virtio-blk.js';
import { bit } from '../../bits.js';

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
  /** GET_ID answer, at most 20 bytes of UTF-8 (default: empty, all NUL). */
  serial?: string;
}

/** Engine-specific handler settings (the device fills in size, block size, limits, serial). */
export interface BlkEngineOptions {
  /** `auto`: io_uring if this host allows it, else threads (engine-select.ts). */
  engine: BlkEngineChoice;
  /** io_uring / threads: image file or block device. */
  path?: string;
  /** io_uring: O_DIRECT. */
  direct?: boolean;
  /** io_uring + direct: required alignment of guest buffers (default 512). */
  directAlignment?: number;
  /** io_uring: SQPOLL kernel thread. */
  sqpoll?: boolean;
  sqpollIdleMs?: number;
  /** io_uring: submission queue entries per worker (default 256); threads: half the records in flight per worker. */
  ringEntries?: number;
  /** threads: pool threads per worker (default 4). */
  threads?: number;
}

/** Largest single segment we accept; Linux sizes its bio segments from this. */
const SIZE_MAX = 1 << 20;
/** DISCARD / WRITE_ZEROES ranges per request: one, sized in sectors (fits a u32). */
const MAX_DISCARD_SECTORS = MAX_RANGE_SECTORS;
/**
 * Data descriptors per request (seg_max). QEMU uses queue size - 2; we also cap it so that a
 * request's iovecs stay far below IOV_MAX (1024) and the per-queue request pool stays small.
 */
const MAX_DATA_SEGMENTS = 254;
/** Header and status descriptors, plus room for a header or status split in two. */
const FIXED_SEGMENTS = 4;

export class BlkDevice implements VhostUserDevice {
  readonly name = 'virtio-blk';
  readonly numQueues: number;
  readonly maxQueueSize: number;
  readonly features: bigint;
  /**
   * In-flight tracking: the front-end keeps a region in which every request's fetch and
   * completion is recorded, so a restarted back-end resubmits exactly what was in flight.
   */
  readonly protocolFeatures = bit(ProtocolFeature.INFLIGHT_SHMFD);
  /** Int32Array[0]: 1 write-back, 0 write-through; shared with every worker (handlerSpec). */
  readonly writeCacheState = new SharedArrayBuffer(4);
  /** The memory engine's RAM disk, created by the first handlerSpec({ engine: 'memory' }). */
  ramDisk: SharedArrayBuffer | undefined;
  private readonly writeCacheFlag = new Int32Array(this.writeCacheState);
  private config: Uint8Array;
  private writeback = true;
  private flushNegotiated = true;

  constructor(readonly options: BlkDeviceOptions) {
    if (options.capacityBytes % SECTOR_SIZE !== 0) throw new RangeError('disk size must be a multiple of 512 bytes');
    const blockSize = options.logicalBlockSize ?? SECTOR_SIZE;
    if (blockSize !== 512 && blockSize !== 4096) throw new RangeError('logical block size must be 512 or 4096');
    if (!Number.isInteger(options.numQueues) || options.numQueues < 1 || options.numQueues > 64) {
      throw new RangeError('queue count must be between 1 and 64');
    }
    if (
      !Number.isInteger(options.maxQueueSize) ||
      options.maxQueueSize < 4 ||
      options.maxQueueSize > 32768 ||
      (options.maxQueueSize & (options.maxQueueSize - 1)) !== 0
    ) {
      throw new RangeError(`queue size must be a power of two between 4 and 32768, got ${options.maxQueueSize}`);
    }
    if (options.serial !== undefined && Buffer.byteLength(options.serial, 'utf8') > VIRTIO_BLK_ID_BYTES) {
      throw new RangeError(`the serial "${options.serial}" is longer than ${VIRTIO_BLK_ID_BYTES} bytes`);
    }
    this.numQueues = options.numQueues;
    this.maxQueueSize = options.maxQueueSize;
    let features =
      bit(VIRTIO_F_VERSION_1) |
      bit(VIRTIO_F_EVENT_IDX) |
      bit(VIRTIO_F_INDIRECT_DESC) |
      bit(VIRTIO_F_RING_PACKED) |
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
    this.publishWriteCache();
  }

  /** The worker-side handler for these options, as is (see BlkHandlerOptions). */
  static handler(options: BlkHandlerOptions): HandlerSpec {
    return { module: new URL('./handler.js', import.meta.url).href, options };
  }

  /**
   * The handler for this device with the given engine: disk size, block size, read-only,
   * discard limits, serial and the shared write-cache flag come from the device. The memory
   * engine's RAM disk is created on the first call and shared by later ones (and every worker).
   */
  handlerSpec(choice: BlkEngineOptions): HandlerSpec {
    if ((choice.engine === 'io_uring' || choice.engine === 'threads' || choice.engine === 'auto') && !choice.path) {
      throw new TypeError(`the ${choice.engine} engine needs the path of an image file or block device`);
    }
    // `auto` is probed here, silently; resolve it with resolveEngine(choice, log) first to log a fallback.
    const engine = { ...choice, engine: resolveEngine(choice.engine) };
    if (engine.engine === 'memory') this.ramDisk ??= new SharedArrayBuffer(this.options.capacityBytes);
    const discard = (this.features & bit(BlkFeature.DISCARD)) !== 0n;
    const options: BlkHandlerOptions = {
      ...engine,
      capacityBytes: this.options.capacityBytes,
      readOnly: this.options.readOnly,
      logicalBlockSize: this.options.logicalBlockSize ?? SECTOR_SIZE,
      discard,
      maxDiscardSectors: discard ? MAX_DISCARD_SECTORS : 0,
      maxWriteZeroesSectors: discard ? MAX_DISCARD_SECTORS : 0,
      serial: this.options.serial ?? '',
      writeCache: this.writeCacheState,
      ramDisk: engine.engine === 'memory' ? this.ramDisk : undefined,
    };
    return BlkDevice.handler(options);
  }

  /** seg_max: data descriptors a request may have. */
  get segMax(): number {
    return Math.min(this.maxQueueSize - 2, MAX_DATA_SEGMENTS);
  }

  /** Segments a request may span in all: WorkerDataPlaneOptions.maxSegments. */
  get maxSegments(): number {
    return this.segMax + FIXED_SEGMENTS;
  }

  /** Whether writes may sit in a volatile cache until FLUSH (false: each write is durable when acked). */
  get writebackEnabled(): boolean {
    return this.writeback && this.flushNegotiated;
  }

  setFeatures(features: bigint): void {
    this.flushNegotiated = (features & bit(BlkFeature.FLUSH)) !== 0n;
    this.config = this.buildConfig();
    this.publishWriteCache();
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
    if (data[0] > 1) throw new RangeError(`writeback mode ${data[0]} is neither 0 nor 1`);
    this.writeback = data[0] === 1;
    this.config = this.buildConfig();
    this.publishWriteCache();
  }

  reset(): void {
    this.writeback = true;
    this.flushNegotiated = true;
    this.config = this.buildConfig();
    this.publishWriteCache();
  }

  private publishWriteCache(): void {
    Atomics.store(this.writeCacheFlag, 0, this.writebackEnabled ? 1 : 0);
  }

  private buildConfig(): Uint8Array {
    const discard = (this.features & bit(BlkFeature.DISCARD)) !== 0n;
    return encodeBlkConfig({
      capacityBytes: this.options.capacityBytes,
      logicalBlockSize: this.options.logicalBlockSize ?? SECTOR_SIZE,
      sizeMax: SIZE_MAX,
      segMax: this.segMax,
      numQueues: this.numQueues,
      writeback: this.writebackEnabled,
      maxDiscardSectors: discard ? MAX_DISCARD_SECTORS : 0,
      maxWriteZeroesSectors: discard ? MAX_DISCARD_SECTORS : 0,
    });
  }
}
