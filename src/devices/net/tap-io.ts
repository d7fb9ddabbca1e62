// The tap back-end's batches (worker side): guest buffers described as iovec records
// (native recordLayout) so that the native side reads and writes frames straight between the
// tap and guest memory, one N-API call per batch and one syscall per frame. Everything is
// preallocated; adding a frame or a chain writes numbers into typed arrays.
import { TWO_POW_32 } from '../../bits.js';
import type { WorkerQueue } from '../../dataplane/device-api.js';
import type { GuestMemory } from '../../dataplane/memory.js';
import type { VirtqRequest } from '../../dataplane/request.js';
import { native } from '../../native.js';

const LAYOUT = native.recordLayout;
const IOVEC_WORDS = LAYOUT.iovecWords;
const IOVEC_REGION = LAYOUT.iovec.region;
const IOVEC_OFFSET_LOW = LAYOUT.iovec.offsetLow;
const IOVEC_OFFSET_HIGH = LAYOUT.iovec.offsetHigh;
const IOVEC_LENGTH = LAYOUT.iovec.length;

/** Frames per TX batch: the worker pops at most 64 chains per queue and pass. */
export const TAP_TX_BATCH = 64;
/** Chains offered to one RX read call (frames read per call are at most this many). */
export const TAP_RX_BATCH = 64;
/** Iovec records per batch (a chain has at most 64 segments: NetDevice.maxSegments). */
const IOVEC_CAPACITY = 64 * 64;

/** Writes segments [from, to) of `request` as iovec records starting at record `at`. */
export function putIovecs(iovecs: Uint32Array, at: number, request: VirtqRequest, from: number, to: number): void {
  let word = at * IOVEC_WORDS;
  for (let s = from; s < to; s++) {
    const offset = request.segmentBufferOffset(s);
    iovecs[word + IOVEC_REGION] = request.segmentRegion(s);
    iovecs[word + IOVEC_OFFSET_LOW] = offset >>> 0;
    iovecs[word + IOVEC_OFFSET_HIGH] = (offset / TWO_POW_32) >>> 0;
    iovecs[word + IOVEC_LENGTH] = request.segLength[s];
    word += IOVEC_WORDS;
  }
}

/**
 * TX frames (virtio-net header included, as the tap takes it with IFF_VNET_HDR) waiting to be
 * written: one pair and one memory table per batch.
 */
export class TapTxBatch {
  readonly requests: (VirtqRequest | null)[] = new Array<VirtqRequest | null>(TAP_TX_BATCH).fill(null);
  /** Per frame: Ethernet bytes (header excluded), for the counters. */
  readonly frameBytes = new Int32Array(TAP_TX_BATCH);
  /** Per frame after write(): bytes written or -errno. */
  readonly results = new Int32Array(TAP_TX_BATCH);
  count = 0;
  pair = -1;
  /** The pair's TX queue, which completes the batch's requests. */
  queue: WorkerQueue | null = null;
  private memory: GuestMemory | null = null;
  private iovecCount = 0;
  private readonly iovecs = new Uint32Array(IOVEC_CAPACITY * IOVEC_WORDS);
  private readonly frames = new Uint32Array(2 * TAP_TX_BATCH);

  /** Whether `request` of `pair` can join this batch (else write the batch first). */
  accepts(pair: number, request: VirtqRequest): boolean {
    if (this.count === 0) return true;
    return (
      this.pair === pair &&
      this.memory === request.memory &&
      this.count < TAP_TX_BATCH &&
      this.iovecCount + request.readableCount <= IOVEC_CAPACITY
    );
  }

  add(queue: WorkerQueue, pair: number, request: VirtqRequest, frameBytes: number): void {
    const n = this.count++;
    this.queue = queue;
    this.pair = pair;
    this.memory = request.memory;
    this.requests[n] = request;
    this.frameBytes[n] = frameBytes;
    this.frames[2 * n] = this.iovecCount;
    this.frames[2 * n + 1] = request.readableCount;
    putIovecs(this.iovecs, this.iovecCount, request, 0, request.readableCount);
    this.iovecCount += request.readableCount;
  }

  /** One native call: a writev per frame into `fd`; results[i] says how each went. */
  write(fd: number): void {
    native.tapWriteFrames(fd, this.memory!.buffers, this.iovecs, this.frames, this.count, this.results);
  }

  clear(): void {
    for (let i = 0; i < this.count; i++) this.requests[i] = null;
    this.count = 0;
    this.pair = -1;
    this.queue = null;
    this.memory = null;
    this.iovecCount = 0;
  }
}

/** Held RX chains offered to one read call, and what the call made of them. */
export class TapRxBatch {
  /** Per frame f: results[2f] bytes read (header included), results[2f + 1] chains taken; then the stop reason. */
  readonly results = new Int32Array(2 * TAP_RX_BATCH + 1);
  /** Per offered chain: its writable bytes. */
  readonly room = new Uint32Array(TAP_RX_BATCH);
  private readonly iovecs = new Uint32Array(IOVEC_CAPACITY * IOVEC_WORDS);
  private readonly chains = new Uint32Array(3 * TAP_RX_BATCH);
  private chainCount = 0;
  private iovecCount = 0;
  private memory: GuestMemory | null = null;

  /** Starts a batch; chains of another memory table than the first cannot join it. */
  begin(): void {
    this.chainCount = 0;
    this.iovecCount = 0;
    this.memory = null;
  }

  /** Offers one RX chain (device-writable segments only); false when the batch is full or the memory differs. */
  offer(request: VirtqRequest): boolean {
    const segments = request.segmentCount - request.readableCount;
    if (this.chainCount === TAP_RX_BATCH || this.iovecCount + segments > IOVEC_CAPACITY) return false;
    if (this.memory === null) this.memory = request.memory;
    else if (this.memory !== request.memory) return false;
    const c = this.chainCount++;
    this.chains[3 * c] = this.iovecCount;
    this.chains[3 * c + 1] = segments;
    this.chains[3 * c + 2] = request.writableBytes;
    this.room[c] = request.writableBytes;
    putIovecs(this.iovecs, this.iovecCount, request, request.readableCount, request.segmentCount);
    this.iovecCount += segments;
    return true;
  }

  get offered(): number {
    return this.chainCount;
  }

  /** One native call: frames read from `fd` into the offered chains (see native tapReadFrames). */
  read(fd: number, minRoom: number, mergeable: boolean): number {
    if (this.chainCount === 0) {
      this.results[0] = 0;
      return 0;
    }
    return native.tapReadFrames(
      fd,
      this.memory!.buffers,
      this.iovecs,
      this.chains,
      this.chainCount,
      minRoom,
      mergeable,
      TAP_RX_BATCH,
      this.results,
    );
  }
}
