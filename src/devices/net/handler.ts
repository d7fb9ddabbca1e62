// The virtio-net queue handler (runs in the workers). Queue 2k is pair k's RX queue, 2k+1 its
// TX queue (§5.1.2); the device maps both queues of a pair to one worker, so one handler sees
// the whole pair and delivers between them without locks.
//
// RX chains are not completed when popped: they are held, oldest first, until a frame arrives
// for them. A frame takes one chain, or with MRG_RXBUF as many as it needs (num_buffers in the
// first header says how many). A frame that finds too little room is dropped and counted; it is
// never queued, so memory stays bounded by the ring sizes.
//
// TX chains are read at once: the virtio-net header (any layout: it may be split across
// descriptors), then the frame, copied straight from the TX buffers into held RX buffers
// (loopback: the only copy), counted (sink), and completed with used.len 0.
//
// Hostile input (every case counted per queue in NetStat and logged once per queue and reason):
// a TX chain with a device-writable descriptor, shorter than the header, whose header asks for
// an offload, or carrying a frame above MTU + headers is dropped; an RX chain with device-readable descriptors or shorter than
// the header is handed back unused (used.len 0). The next frame is served as usual.
//
// Stopping. Held RX chains would keep a queue from ever draining (GET_VRING_BASE waits for
// in-flight requests), so poll() hands them back with used.len 0 once the worker marks their
// queue as stopping. Drivers treat a zero-length RX buffer as an empty one (Linux counts a
// length error, DPDK a dropped packet) and the front-end is stopping the ring anyway.
//
// Nothing here allocates per frame: the held rings are preallocated per pair on first use,
// copies walk the requests' segment arrays, and source frames come from one template.
import type { CreateQueueHandler, HandlerContext, QueueHandler, WorkerQueue } from '../../dataplane/device-api.js';
import type { GuestMemory } from '../../dataplane/memory.js';
import type { VirtqRequest } from '../../dataplane/request.js';
import { buildSourceFrame, SOURCE_SEQUENCE_OFFSET } from './frame.js';
import { NET_STAT_SLOTS, NegotiatedSlot, NetStat, type NetHandlerOptions } from './options.js';
import { ETH_HEADER_BYTES, NET_HDR_NUM_BUFFERS } from './virtio-net.js';

/** Held RX chains per pair: a split ring never has more than 32768 in flight. */
const HELD_CAPACITY = 32768;
const BACKEND_LOOPBACK = 0;
const BACKEND_SINK = 1;
const BACKEND_SOURCE = 2;

class NetHandler implements QueueHandler {
  readonly completionFd = -1;
  /** Every TX frame is finished inside handle(); held RX chains wait on the guest, not on poll(). */
  readonly inFlight = 0;

  private readonly backend: number;
  private readonly negotiated: Int32Array;
  private readonly stats: Float64Array;
  private readonly maxFrameBytes: number;
  private readonly log: HandlerContext['log'];

  // Per pair: the RX queue as last seen, and a ring of held RX chains.
  private readonly rxQueue: (WorkerQueue | null)[];
  private readonly held: ((VirtqRequest | null)[] | null)[];
  private readonly heldHead: Int32Array;
  private readonly heldCount: Int32Array;
  /** Pairs this worker has served, for poll() to scan. */
  private readonly pairsSeen: Int32Array;
  private pairsSeenCount = 0;
  /** Per queue and NetStat slot: already logged. */
  private readonly logged: Uint8Array;

  private readonly sourceFrame: Uint8Array;
  private sourceSequence = 0;

  constructor(options: NetHandlerOptions, context: HandlerContext) {
    this.backend = options.backend === 'loopback' ? BACKEND_LOOPBACK : options.backend === 'sink' ? BACKEND_SINK : BACKEND_SOURCE;
    if (!['loopback', 'sink', 'source'].includes(options.backend)) throw new Error(`unknown net back-end "${options.backend}"`);
    this.negotiated = new Int32Array(options.negotiated);
    this.stats = new Float64Array(options.stats);
    this.maxFrameBytes = options.maxFrameBytes;
    this.log = context.log;
    const pairs = options.queuePairs;
    this.rxQueue = new Array<WorkerQueue | null>(pairs).fill(null);
    this.held = new Array<(VirtqRequest | null)[] | null>(pairs).fill(null);
    this.heldHead = new Int32Array(pairs);
    this.heldCount = new Int32Array(pairs);
    this.pairsSeen = new Int32Array(pairs);
    this.logged = new Uint8Array(2 * pairs * NET_STAT_SLOTS);
    this.sourceFrame = this.backend === BACKEND_SOURCE ? buildSourceFrame(options.frameBytes, options.mac) : new Uint8Array(0);
  }

  handle(queue: WorkerQueue, request: VirtqRequest): void {
    const index = queue.index;
    const pair = index >>> 1;
    if (pair >= this.rxQueue.length) {
      // The data plane only starts queues the device has; refuse anything else loudly.
      throw new Error(`queue ${index} is beyond the device's ${this.rxQueue.length} queue pairs`);
    }
    if ((index & 1) === 0) this.handleRx(pair, queue, request);
    else this.handleTx(pair, queue, request);
  }

  flush(): void {}

  /** Hands back the held RX chains of queues that are stopping (see the header comment). */
  poll(): number {
    let released = 0;
    for (let i = 0; i < this.pairsSeenCount; i++) {
      const pair = this.pairsSeen[i];
      const queue = this.rxQueue[pair];
      if (queue === null) continue;
      if (!queue.stopping) continue;
      released += this.releaseHeld(pair, queue);
      this.rxQueue[pair] = null;
    }
    return released;
  }

  setMemory(_memory: GuestMemory): void {}

  close(): void {}

  // ---- RX --------------------------------------------------------------------------------------

  private handleRx(pair: number, queue: WorkerQueue, request: VirtqRequest): void {
    const headerBytes = this.negotiated[NegotiatedSlot.headerBytes];
    if (this.rxQueue[pair] !== queue) this.adoptRxQueue(pair, queue);
    if (request.readableCount !== 0 || request.writableBytes < headerBytes) {
      queue.complete(request, 0);
      this.count(queue.index, NetStat.badBuffers, 'RX buffer refused: device-readable or shorter than the virtio-net header');
      return;
    }
    const ring = this.held[pair]!;
    ring[(this.heldHead[pair] + this.heldCount[pair]) & (HELD_CAPACITY - 1)] = request;
    this.heldCount[pair]++;
    if (this.backend === BACKEND_SOURCE) this.fillFromSource(pair);
  }

  /** A (re)started RX queue: remember it, and set up the pair's held ring the first time. */
  private adoptRxQueue(pair: number, queue: WorkerQueue): void {
    this.rxQueue[pair] = queue;
    if (this.held[pair] === null) {
      this.held[pair] = new Array<VirtqRequest | null>(HELD_CAPACITY).fill(null);
      this.pairsSeen[this.pairsSeenCount++] = pair;
    }
  }

  private releaseHeld(pair: number, queue: WorkerQueue): number {
    const ring = this.held[pair]!;
    const count = this.heldCount[pair];
    let head = this.heldHead[pair];
    for (let i = 0; i < count; i++) {
      queue.complete(ring[head]!, 0);
      ring[head] = null;
      head = (head + 1) & (HELD_CAPACITY - 1);
    }
    this.heldHead[pair] = head;
    this.heldCount[pair] = 0;
    return count;
  }

  /**
   * How many held chains a frame of `frameBytes` (header excluded) needs: 0 when there are too
   * few now, -1 when it can never fit (no MRG_RXBUF and the next buffer is too small).
   */
  private reserve(pair: number, frameBytes: number): number {
    const count = this.heldCount[pair];
    if (count === 0 || this.rxQueue[pair] === null) return 0;
    const need = this.negotiated[NegotiatedSlot.headerBytes] + frameBytes;
    const ring = this.held[pair]!;
    let head = this.heldHead[pair];
    if (this.negotiated[NegotiatedSlot.mergeableRxBuffers] === 0) return ring[head]!.writableBytes >= need ? 1 : -1;
    let room = 0;
    for (let n = 1; n <= count; n++) {
      room += ring[head]!.writableBytes;
      if (room >= need) return n;
      head = (head + 1) & (HELD_CAPACITY - 1);
    }
    return 0;
  }

  // ---- TX --------------------------------------------------------------------------------------

  private handleTx(pair: number, queue: WorkerQueue, request: VirtqRequest): void {
    const headerBytes = this.negotiated[NegotiatedSlot.headerBytes];
    const index = queue.index;
    if (request.writableCount !== 0 || request.readableBytes < headerBytes) {
      queue.complete(request, 0);
      this.count(index, NetStat.badChain, 'TX chain refused: device-writable descriptor or shorter than the virtio-net header');
      return;
    }
    // No offload is offered, so the driver must leave flags and gso_type at 0 (§5.1.6.2): a frame
    // asking for a checksum or segmentation would reach the other side unfinished.
    if (request.readableByte(0) !== 0 || request.readableByte(1) !== 0) {
      queue.complete(request, 0);
      this.count(
        index,
        NetStat.badChain,
        'TX header asks for an offload that was not negotiated (flags or gso_type set): dropped',
      );
      return;
    }
    const frameBytes = request.readableBytes - headerBytes;
    if (frameBytes > this.maxFrameBytes) {
      queue.complete(request, 0);
      this.count(index, NetStat.tooBig, 'TX frame above MTU + headers: dropped');
      return;
    }
    if (frameBytes < ETH_HEADER_BYTES) {
      queue.complete(request, 0);
      this.count(index, NetStat.badChain, 'TX frame shorter than an Ethernet header: dropped');
      return;
    }
    const stats = this.stats;
    const base = index * NET_STAT_SLOTS;
    stats[base + NetStat.packets]++;
    stats[base + NetStat.bytes] += frameBytes;
    if (this.backend === BACKEND_LOOPBACK) {
      const chains = this.reserve(pair, frameBytes);
      if (chains > 0) this.deliverFromRequest(pair, chains, request, headerBytes, frameBytes);
      else if (chains === 0) this.count(pair << 1, NetStat.noBuffer, '');
      else this.count(pair << 1, NetStat.tooBig, 'frame larger than the RX buffer (no MRG_RXBUF): dropped');
    }
    queue.complete(request, 0);
  }

  // ---- delivery into held RX chains ----------------------------------------------------------

  /** Copies the frame at src[from, from + frameBytes) (readable part) into `chains` held chains. */
  private deliverFromRequest(pair: number, chains: number, src: VirtqRequest, from: number, frameBytes: number): void {
    const headerBytes = this.negotiated[NegotiatedSlot.headerBytes];
    const queue = this.rxQueue[pair]!;
    const ring = this.held[pair]!;
    let head = this.heldHead[pair];
    let copied = 0;
    for (let c = 0; c < chains; c++) {
      const rx = ring[head]!;
      ring[head] = null;
      head = (head + 1) & (HELD_CAPACITY - 1);
      let offset = 0;
      if (c === 0) {
        writeHeader(rx, headerBytes, chains);
        offset = headerBytes;
      }
      let take = rx.writableBytes - offset;
      if (take > frameBytes - copied) take = frameBytes - copied;
      copyRequestToRequest(src, from + copied, rx, offset, take);
      copied += take;
      queue.complete(rx, offset + take);
    }
    this.heldHead[pair] = head;
    this.heldCount[pair] -= chains;
    const base = (pair << 1) * NET_STAT_SLOTS;
    this.stats[base + NetStat.packets]++;
    this.stats[base + NetStat.bytes] += frameBytes;
  }

  /** source: one generated frame per held chain (or group of chains) until they run out. */
  private fillFromSource(pair: number): void {
    const frame = this.sourceFrame;
    const frameBytes = frame.length;
    const headerBytes = this.negotiated[NegotiatedSlot.headerBytes];
    const queue = this.rxQueue[pair]!;
    const ring = this.held[pair]!;
    while (this.heldCount[pair] > 0) {
      const chains = this.reserve(pair, frameBytes);
      if (chains === 0) return; // MRG_RXBUF: wait for more buffers to hold the next frame
      if (chains < 0) {
        // Without MRG_RXBUF a too-small buffer would block the queue for good: give it back.
        const head = this.heldHead[pair];
        queue.complete(ring[head]!, 0);
        ring[head] = null;
        this.heldHead[pair] = (head + 1) & (HELD_CAPACITY - 1);
        this.heldCount[pair]--;
        this.count(pair << 1, NetStat.tooBig, 'RX buffer too small for the generated frame (no MRG_RXBUF): handed back unused');
        continue;
      }
      const sequence = this.sourceSequence++;
      frame[SOURCE_SEQUENCE_OFFSET] = sequence & 0xff;
      frame[SOURCE_SEQUENCE_OFFSET + 1] = (sequence >>> 8) & 0xff;
      frame[SOURCE_SEQUENCE_OFFSET + 2] = (sequence >>> 16) & 0xff;
      frame[SOURCE_SEQUENCE_OFFSET + 3] = (sequence >>> 24) & 0xff;
      let head = this.heldHead[pair];
      let copied = 0;
      for (let c = 0; c < chains; c++) {
        const rx = ring[head]!;
        ring[head] = null;
        head = (head + 1) & (HELD_CAPACITY - 1);
        let offset = 0;
        if (c === 0) {
          writeHeader(rx, headerBytes, chains);
          offset = headerBytes;
        }
        let take = rx.writableBytes - offset;
        if (take > frameBytes - copied) take = frameBytes - copied;
        rx.scatter(frame, copied, offset, take);
        copied += take;
        queue.complete(rx, offset + take);
      }
      this.heldHead[pair] = head;
      this.heldCount[pair] -= chains;
      const base = (pair << 1) * NET_STAT_SLOTS;
      this.stats[base + NetStat.packets]++;
      this.stats[base + NetStat.bytes] += frameBytes;
    }
  }

  /** Counts a drop (or a refused buffer) on `queue`, logging the first of each kind. */
  private count(queue: number, slot: number, message: string): void {
    const base = queue * NET_STAT_SLOTS;
    this.stats[base + slot]++;
    if (slot !== NetStat.badBuffers) this.stats[base + NetStat.drops]++;
    if (message === '') return;
    const flag = base + slot;
    if (this.logged[flag] !== 0) return;
    this.logged[flag] = 1;
    this.log('warn', message, { queue, note: 'logged once per queue; see the net statistics for counts' });
  }
}

/** The RX header: no offloads (flags, gso_type, ... all 0) and num_buffers when it has the field. */
function writeHeader(rx: VirtqRequest, headerBytes: number, numBuffers: number): void {
  const s = rx.readableCount;
  if (rx.segLength[s] >= headerBytes) {
    const view = rx.memory!.windowBytesView[rx.segWindow[s]];
    const at = rx.segWindowOffset[s];
    for (let i = 0; i < NET_HDR_NUM_BUFFERS; i++) view[at + i] = 0;
    if (headerBytes > NET_HDR_NUM_BUFFERS) {
      view[at + NET_HDR_NUM_BUFFERS] = numBuffers & 0xff;
      view[at + NET_HDR_NUM_BUFFERS + 1] = numBuffers >>> 8;
    }
    return;
  }
  // The header itself is split across descriptors (any layout is allowed, §5.1.6.2).
  for (let i = 0; i < NET_HDR_NUM_BUFFERS; i++) rx.writeWritableByte(i, 0);
  if (headerBytes > NET_HDR_NUM_BUFFERS) {
    rx.writeWritableByte(NET_HDR_NUM_BUFFERS, numBuffers & 0xff);
    rx.writeWritableByte(NET_HDR_NUM_BUFFERS + 1, numBuffers >>> 8);
  }
}

/**
 * Copies `length` bytes from src's readable part (starting `from` bytes in) into dst's writable
 * part (starting `to` bytes in), segment by segment. Within one window (a guest looping back to
 * itself) copyWithin is a memmove; across windows a byte loop (no subarray, no allocation).
 */
export function copyRequestToRequest(src: VirtqRequest, from: number, dst: VirtqRequest, to: number, length: number): number {
  const srcViews = src.memory!.windowBytesView;
  const dstViews = dst.memory!.windowBytesView;
  const srcEnd = src.readableCount;
  const dstEnd = dst.segmentCount;
  let s = 0;
  let sOff = from;
  while (s < srcEnd && sOff >= src.segLength[s]) sOff -= src.segLength[s++];
  let d = dst.readableCount;
  let dOff = to;
  while (d < dstEnd && dOff >= dst.segLength[d]) dOff -= dst.segLength[d++];
  let copied = 0;
  while (copied < length && s < srcEnd && d < dstEnd) {
    let n = length - copied;
    const sRoom = src.segLength[s] - sOff;
    const dRoom = dst.segLength[d] - dOff;
    if (n > sRoom) n = sRoom;
    if (n > dRoom) n = dRoom;
    const sView = srcViews[src.segWindow[s]];
    const dView = dstViews[dst.segWindow[d]];
    let sp = src.segWindowOffset[s] + sOff;
    let dp = dst.segWindowOffset[d] + dOff;
    if (sView === dView) {
      dView.copyWithin(dp, sp, sp + n);
    } else {
      const end = sp + n;
      while (sp < end) dView[dp++] = sView[sp++]!;
    }
    copied += n;
    sOff += n;
    dOff += n;
    if (sOff === src.segLength[s]) {
      s++;
      sOff = 0;
    }
    if (dOff === dst.segLength[d]) {
      d++;
      dOff = 0;
    }
  }
  return copied;
}

export const createQueueHandler: CreateQueueHandler = (options, context) => new NetHandler(options as NetHandlerOptions, context);
