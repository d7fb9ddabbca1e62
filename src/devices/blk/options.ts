// What a virtio-blk worker handler is created with: plain data (structured-cloned into every
// worker), built on the control side by BlkDevice.handlerSpec(). Shared state travels as
// SharedArrayBuffers: the write-cache mode the guest sets through config space, and the RAM
// disk of the memory engine, so every worker sees the same bytes.
import { SECTOR_SIZE, VIRTIO_BLK_ID_BYTES } from './virtio-blk.js';

/** The engine a worker runs. */
export type BlkEngineName = 'io_uring' | 'threads' | 'memory' | 'null';
/** What a user may ask for: an engine, or `auto` (io_uring, else threads; engine-select.ts). */
export type BlkEngineChoice = BlkEngineName | 'auto';

export interface BlkHandlerOptions {
  engine: BlkEngineName;
  /** Disk size in bytes, a multiple of the logical block size. */
  capacityBytes: number;
  readOnly: boolean;
  /** 512 or 4096: requests must start and end on this boundary (as QEMU checks). */
  logicalBlockSize: number;
  /** DISCARD and WRITE_ZEROES were offered; otherwise they complete with UNSUPP. */
  discard: boolean;
  /** Per-request limits advertised in config space (max_discard_sectors, max_write_zeroes_sectors). */
  maxDiscardSectors: number;
  maxWriteZeroesSectors: number;
  /** GET_ID answer: at most 20 bytes of UTF-8, NUL-padded. */
  serial: string;
  /**
   * Int32Array[0] over this buffer: 1 = write-back (FLUSH makes writes durable), 0 = write-through
   * (every write is durable when acknowledged). The control side flips it (config space writeback
   * byte, or FLUSH not negotiated); workers read it per write. Absent: write-back.
   */
  writeCache?: SharedArrayBuffer;

  // io_uring and threads engines.
  /** Image file or block device; opened by each worker (O_RDONLY when readOnly). */
  path?: string;
  /** O_DIRECT: bypass the host page cache. Guest buffers must then be `directAlignment`-aligned. */
  direct?: boolean;
  /** O_DIRECT buffer/length alignment (default 512); a misaligned request fails with IOERR. */
  directAlignment?: number;
  /** IORING_SETUP_SQPOLL: a kernel thread polls the submission queue (costs a CPU while busy). */
  sqpoll?: boolean;
  sqpollIdleMs?: number;
  /** Submission queue entries per worker ring (default 256; the kernel doubles it for completions). */
  ringEntries?: number;

  // threads engine.
  /** Pool threads per worker doing the blocking syscalls (default 4). */
  threads?: number;

  // memory engine.
  /** The RAM disk, capacityBytes long, created once on the control side and shared by every worker. */
  ramDisk?: SharedArrayBuffer;
}

/** Largest DISCARD / WRITE_ZEROES range a request may name, in sectors (fallocate lengths are u32 here). */
export const MAX_RANGE_SECTORS = (1 << 30) / SECTOR_SIZE;

/** Checks options from an untrusted structured clone; throws a RangeError/TypeError that says what to fix. */
export function validateHandlerOptions(raw: unknown): BlkHandlerOptions {
  if (typeof raw !== 'object' || raw === null) throw new TypeError('virtio-blk handler options must be an object');
  const options = raw as BlkHandlerOptions;
  if (options.engine !== 'io_uring' && options.engine !== 'threads' && options.engine !== 'memory' && options.engine !== 'null') {
    throw new RangeError(`virtio-blk engine must be io_uring, threads, memory or null, got ${String(options.engine)}`);
  }
  const blockSize = options.logicalBlockSize;
  if (blockSize !== 512 && blockSize !== 4096) throw new RangeError(`logical block size must be 512 or 4096, got ${blockSize}`);
  const capacity = options.capacityBytes;
  if (!Number.isSafeInteger(capacity) || capacity <= 0 || capacity % blockSize !== 0) {
    throw new RangeError(`disk size must be a positive multiple of ${blockSize} bytes below 2^53, got ${capacity}`);
  }
  for (const name of ['maxDiscardSectors', 'maxWriteZeroesSectors'] as const) {
    const value = options[name];
    if (!Number.isInteger(value) || value < 0 || value > MAX_RANGE_SECTORS) {
      throw new RangeError(`${name} must be an integer in [0, ${MAX_RANGE_SECTORS}], got ${value}`);
    }
  }
  if (typeof options.serial !== 'string' || Buffer.byteLength(options.serial, 'utf8') > VIRTIO_BLK_ID_BYTES) {
    throw new RangeError(`the serial must be a string of at most ${VIRTIO_BLK_ID_BYTES} bytes`);
  }
  if (
    options.writeCache !== undefined &&
    (!(options.writeCache instanceof SharedArrayBuffer) || options.writeCache.byteLength < 4)
  ) {
    throw new TypeError('writeCache must be a SharedArrayBuffer of at least 4 bytes');
  }
  if (
    (options.engine === 'io_uring' || options.engine === 'threads') &&
    (typeof options.path !== 'string' || options.path === '')
  ) {
    throw new TypeError(`the ${options.engine} engine needs the path of an image file or block device`);
  }
  if (options.engine === 'memory') {
    if (!(options.ramDisk instanceof SharedArrayBuffer) || options.ramDisk.byteLength < capacity) {
      throw new TypeError(`the memory engine needs a SharedArrayBuffer RAM disk of ${capacity} bytes`);
    }
  }
  const alignment = options.directAlignment ?? 512;
  if (!Number.isInteger(alignment) || alignment < 512 || alignment > 65536 || (alignment & (alignment - 1)) !== 0) {
    throw new RangeError(`directAlignment must be a power of two in [512, 65536], got ${alignment}`);
  }
  const threads = options.threads ?? 4;
  if (!Number.isInteger(threads) || threads < 1 || threads > 32) {
    throw new RangeError(`threads must be an integer in [1, 32], got ${threads}`);
  }
  const entries = options.ringEntries ?? 256;
  if (!Number.isInteger(entries) || entries < 1 || entries > 32768) {
    throw new RangeError(`ringEntries must be an integer in [1, 32768], got ${entries}`);
  }
  return options;
}

/** The serial as the 20 bytes GET_ID returns (NUL-padded). */
export function encodeSerial(serial: string): Uint8Array {
  const bytes = new Uint8Array(VIRTIO_BLK_ID_BYTES);
  bytes.set(Buffer.from(serial, 'utf8').subarray(0, VIRTIO_BLK_ID_BYTES));
  return bytes;
}
