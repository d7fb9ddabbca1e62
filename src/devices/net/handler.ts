// The virtio-net queue handler (runs in the workers). Queue 2k is pair k's RX queue, 2k+1 its
// TX queue (§5.1.2); the device maps both queues of a pair to one worker, so one handler sees
// the whole pair and delivers between them without locks.
//
// RX chains are not completed when popped: they are held, oldest first, until a frame arrives
// for them. A frame takes one chain, or with MRG_RXBUF as many as it needs (num_buffers in the
// first header says how many). A looped-back frame that finds too little room first pops the
// RX buffers the guest offered since the worker last looked (WorkerQueue.popNow: the TX queue
// may be served before the RX queue in a pass, or start first), and only then is dropped and
// counted; it is never queued, so memory stays bounded by the ring sizes (tap frames wait in the
// tap instead, see below).
//
// TX chains are read at once: the virtio-net header (any layout: it may be split across
// descriptors), then the frame, copied straight from the TX buffers into held RX buffers
// (loopback: the only copy), counted (sink), and completed with used.len 0. The common 64-byte
// case (header and frame in one TX descriptor, one RX descriptor with room for both: what DPDK
// and Linux post) takes a short path (deliverSimple) without the general segment walks; its
// copy goes word by word when both ends are word-aligned (copyWithin, a builtin call, cost more
// than the 16 word moves of a 64-byte frame). Measured against DPDK testpmd io --tx-first
// (2026-12-01, alternating runs) and not kept: writing the RX header when the chain is popped
// instead of here (-11% in the machine's slow state), reading each TX batch's headers first and
// then delivering (+3-5% in the slow state, -8% in the fast one: +11% CPU per frame in
// micro-net's worker case), and touching the next chains' descriptors and headers from pop() (-4%).
//
// Hostile input (every case counted per queue in NetStat and logged once per queue and reason):
// a TX chain with a device-writable descriptor, shorter than the header, whose header asks for
// an offload that was not acked (or, loopback, whose csum_start/csum_offset/hdr_len/gso_size do
// not fit the frame), or carrying a frame above MTU + headers (64 KiB + headers as GSO) is
// dropped; an RX chain with device-readable descriptors or shorter than the header is handed
// back unused (used.len 0). The next frame is served as usual.
//
// Offloads on loopback (loopOffloaded, csum.ts). A TX frame whose header asks for one never
// takes the fast path: its header passes to the RX chain unchanged (num_buffers our own) when
// the guest acked the matching GUEST_* bit; a NEEDS_CSUM frame for a guest without GUEST_CSUM
// gets its checksum computed from the TX bytes and written into the RX copy (flags 0); a GSO
// frame for a guest without the matching GUEST_TSO4/6 (or ECN) is cut into TCP segments
// (segment.ts, gsoSegmented), or dropped and counted (gsoRefused) when it is not TCP.
//
// Stopping. Held RX chains would keep a queue from ever draining (GET_VRING_BASE waits for
// in-flight requests), so poll() gives them back untouched once the worker marks their queue as
// stopping (WorkerQueue.giveBack, newest first): last_avail_idx steps back over them and the
// driver still owns them, which is what DPDK's vhost library and QEMU's own virtio-net do (they
// take an RX buffer only with a frame for it). Completing them with used.len 0 instead would
// consume the guest's buffers as errors (Linux counts a length error, DPDK a bad packet). Only a
// chain popped before one that was already completed (an RX buffer refused as bad) cannot step
// back; it alone is completed with used.len 0.
//
// Completion order. This handler completes chains as it finishes them, which is not always the
// order they were popped: a refused RX chain is completed while older ones are held, a source
// chain too small for the frame is handed back before the batch it follows is copied, and a tap
// TX frame waits for the pass's write while a later bad TX chain is completed at once. With
// VIRTIO_F_IN_ORDER (offered: device.ts) the worker holds such completions back and pushes them
// after the older ones (worker.ts, "Completion order"), so nothing here reorders; what matters
// is that held chains never wait for ever (the stop path above gives back or completes them all).
//
// Source. A popped RX chain that is one word-aligned descriptor with room, while no chain is
// held, gets a small frame (the 64-byte case) at once: the template stored as 32-bit words with
// the sequence number merged in (SourceBatch.writeInline), completed in handle(). Other chains
// are held and filled once per pass (flush) with the prebuilt frame, by one native copy for the
// batch (SourceBatch); chains that each hold a whole frame join the batch without the
// MRG_RXBUF room walk (SourceBatch.addOne).
//
// Counting. Frames of the sink, loopback and inline source paths are counted in per-queue
// numbers of the handler and added to the shared statistics once per pass (flush), not with
// stores into the shared Float64Array per frame.
//
// Tap (one fd per pair, opened by the control thread). TX frames are batched per pass and
// written by flush() with their virtio-net header, which the tap (IFF_VNET_HDR) takes as it is.
// RX: the worker watches the pair's tap fd only while it holds RX chains with room, and reads
// frames straight into them (header included; flags cleared, num_buffers set). Without room
// it stops watching and leaves the frames in the tap: the kernel's queue is the bound, and the
// worker does not spin on a readable fd it cannot serve. New RX chains resume reading.
//
// Nothing here allocates per frame: the held rings are preallocated per pair on first use,
// copies walk the requests' segment arrays, and source frames come from one template.
//
// (Everything above is the handler of the loopback, sink, source and tap back-ends.)
import { constants as osConstants } from 'node:os';
import {
  FdEvent,
  type CreateQueueHandler,
  type HandlerContext,
  type QueueHandler,
  type WorkerQueue,
} from '../../dataplane/device-api.js';
import type { GuestMemory } from '../../dataplane/memory.js';
import type { VirtqRequest } from '../../dataplane/request.js';
import { SourceBatch } from './source-batch.js';
import { NET_BACKENDS, NET_PUBLISH_EVERY, NET_STAT_SLOTS, NegotiatedSlot, NetStat, type NetHandlerOptions } from './options.js';
import { TapRxBatch, TapTxBatch } from './tap-io.js';
import { TcpSegmenter } from './segment.js';
import { ETH_HEADER_BYTES, NET_HDR_BYTES, NET_HDR_NUM_BUFFERS } from './virtio-net.js';
import { GSO_MAX_FRAME_BYTES, Offload, RX_CHECKSUM, RX_REFUSE, headerAllowed, receiverAction } from './offload.js';
import {
  HDR_CSUM_OFFSET,
  HDR_CSUM_START,
  HDR_FLAGS,
  HDR_GSO_SIZE,
  HDR_GSO_TYPE,
  OFFLOAD_HEADER_BYTES,
  finishChecksum,
  offloadHeaderProblem,
  sumReadable,
  u16,
} from './csum.js';

/** Held RX chains per pair: a split ring never has more than 32768 in flight. */
const HELD_CAPACITY = 32768;
const BACKEND_LOOPBACK = 0;
const BACKEND_SINK = 1;
const BACKEND_SOURCE = 2;
const BACKEND_TAP = 3;
const EAGAIN = osConstants.errno.EAGAIN;
/** Bytes 8–11 of a 12-byte RX header as a little-endian word: csum_offset 0, num_buffers 1. */
const NUM_BUFFERS_ONE_WORD = 1 << 16;
/** Frames up to this long are copied word by word when aligned; longer ones by copyWithin (a memmove). */
const WORD_COPY_MAX_BYTES = 256;
/** RX chains popped at most per popNow when a frame finds too few (the worker's own batch). */
const POP_NOW_BUDGET = 64;

class NetHandler implements QueueHandler {
  readonly completionFd = -1;
  readonly publishEvery = NET_PUBLISH_EVERY;
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

  private readonly sourceBatch: SourceBatch | null;
  private sourceSequence = 0;
  /**
   * Per queue: frames (and their bytes) of this pass not yet in the shared stats: the sink,
   * loopback and inline source paths count here and flush() adds them once per pass, instead of
   * two stores into the shared Float64Array per frame.
   */
  private readonly passPackets: Float64Array;
  private readonly passBytes: Float64Array;
  private passDirty = false;

  // tap, per pair: its fd, whether the worker watches it, whether the last read stopped with
  // frames possibly left (out of chains), the held count at which a read made no progress (-1:
  // none), and whether reading failed for good.
  private readonly context: HandlerContext;
  private readonly tapFds: Int32Array;
  private readonly tapWatching: Uint8Array;
  private readonly tapMaybeReady: Uint8Array;
  private readonly tapBlockedAt: Int32Array;
  private readonly tapFailed: Uint8Array;
  private readonly rxArrived: Uint8Array;
  private readonly txBatch: TapTxBatch | null;
  private readonly rxBatch: TapRxBatch | null;
  /** loopback: the virtio-net header of a TX frame that asks for an offload. */
  private readonly offloadHeader = new Uint8Array(OFFLOAD_HEADER_BYTES);
  /** loopback: GSO frames for a guest without GUEST_TSO, and the frame copied out (made on first use). */
  private segmenter: TcpSegmenter | null = null;
  private segmentSource: Uint8Array | null = null;

  constructor(options: NetHandlerOptions, context: HandlerContext) {
    const backendIndex = NET_BACKENDS.indexOf(options.backend);
    if (backendIndex < 0) throw new Error(`unknown net back-end "${options.backend}"`);
    this.backend = [BACKEND_LOOPBACK, BACKEND_SINK, BACKEND_SOURCE, BACKEND_TAP][backendIndex];
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
    this.passPackets = new Float64Array(2 * pairs);
    this.passBytes = new Float64Array(2 * pairs);
    this.sourceBatch = this.backend === BACKEND_SOURCE ? new SourceBatch(options.frameBytes, options.mac) : null;
    this.context = context;
    const tap = this.backend === BACKEND_TAP;
    if (tap && options.tapFds.length !== pairs) {
      throw new Error(`the tap back-end needs one fd per queue pair (${pairs}), got ${options.tapFds.length}`);
    }
    this.tapFds = Int32Array.from(tap ? options.tapFds : []);
    this.tapWatching = new Uint8Array(pairs);
    this.tapMaybeReady = new Uint8Array(pairs);
    this.tapBlockedAt = new Int32Array(pairs).fill(-1);
    this.tapFailed = new Uint8Array(pairs);
    this.rxArrived = new Uint8Array(pairs);
    this.txBatch = tap ? new TapTxBatch() : null;
    this.rxBatch = tap ? new TapRxBatch() : null;
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

  /** source: fills the RX chains that arrived. tap: writes the pass's TX frames, reads into RX chains that just arrived, (un)watches fds. */
  flush(): void {
    if (this.passDirty) this.storePassStats();
    if (this.backend === BACKEND_SOURCE) {
      for (let i = 0; i < this.pairsSeenCount; i++) {
        const pair = this.pairsSeen[i];
        if (this.rxArrived[pair] === 0) continue;
        this.rxArrived[pair] = 0;
        this.fillFromSource(pair);
      }
      return;
    }
    if (this.backend !== BACKEND_TAP) return;
    if (this.txBatch!.count > 0) this.writeTxBatch();
    for (let i = 0; i < this.pairsSeenCount; i++) {
      const pair = this.pairsSeen[i];
      if (this.rxArrived[pair] === 0) continue;
      this.rxArrived[pair] = 0;
      if (this.tapMaybeReady[pair] !== 0) this.readTap(pair);
      this.updateTapWatch(pair);
    }
  }

  /** Adds the pass's counted frames to the shared stats (once per pass: flush). */
  private storePassStats(): void {
    this.passDirty = false;
    const packets = this.passPackets;
    const bytes = this.passBytes;
    const stats = this.stats;
    for (let q = 0; q < packets.length; q++) {
      const n = packets[q];
      if (n === 0) continue;
      const base = q * NET_STAT_SLOTS;
      stats[base + NetStat.packets] += n;
      stats[base + NetStat.bytes] += bytes[q];
      packets[q] = 0;
      bytes[q] = 0;
    }
  }

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
      if (this.backend === BACKEND_TAP) this.updateTapWatch(pair);
    }
    return released;
  }

  /** tap: the pair's fd (token = pair) is readable, or in error (the read says which). */
  onFdReady(token: number, _events: number): void {
    if (token >= this.tapFds.length) return;
    this.readTap(token);
    this.updateTapWatch(token);
  }

  setMemory(_memory: GuestMemory): void {}

  close(): void {
    for (let pair = 0; pair < this.tapWatching.length; pair++) {
      if (this.tapWatching[pair] === 0) continue;
      this.tapWatching[pair] = 0;
      try {
        this.context.unwatchFd(this.tapFds[pair]);
      } catch {
        // The worker already dropped every watch (after a handler failure).
      }
    }
  }

  // ---- RX --------------------------------------------------------------------------------------

  private handleRx(pair: number, queue: WorkerQueue, request: VirtqRequest): void {
    const headerBytes = this.negotiated[NegotiatedSlot.headerBytes];
    const index = queue.index;
    if (this.rxQueue[pair] !== queue) this.adoptRxQueue(pair, queue);
    if (request.readableCount !== 0 || request.writableBytes < headerBytes) {
      queue.complete(request, 0);
      this.count(index, NetStat.badBuffers, 'RX buffer refused: device-readable or shorter than the virtio-net header');
      return;
    }
    if (this.backend === BACKEND_SOURCE && this.heldCount[pair] === 0) {
      // The common case (one word-aligned descriptor with room, small frame): written and
      // completed now. Only with nothing held, so the held chains keep their order.
      const written = this.sourceBatch!.writeInline(request, headerBytes, this.sourceSequence);
      if (written !== 0) {
        this.sourceSequence = (this.sourceSequence + 1) | 0;
        queue.complete(request, written);
        this.passPackets[index]++;
        this.passBytes[index] += written - headerBytes;
        this.passDirty = true;
        return;
      }
    }
    const ring = this.held[pair]!;
    ring[(this.heldHead[pair] + this.heldCount[pair]) & (HELD_CAPACITY - 1)] = request;
    this.heldCount[pair]++;
    if (this.backend === BACKEND_SOURCE || this.backend === BACKEND_TAP) this.rxArrived[pair] = 1;
  }

  /** A (re)started RX queue: remember it, and set up the pair's held ring the first time. */
  private adoptRxQueue(pair: number, queue: WorkerQueue): void {
    this.rxQueue[pair] = queue;
    if (this.held[pair] === null) {
      this.held[pair] = new Array<VirtqRequest | null>(HELD_CAPACITY).fill(null);
      this.pairsSeen[this.pairsSeenCount++] = pair;
    }
  }

  /** Gives the held chains back to the driver, newest first (see the header comment on stopping). */
  private releaseHeld(pair: number, queue: WorkerQueue): number {
    const ring = this.held[pair]!;
    const count = this.heldCount[pair];
    const head = this.heldHead[pair];
    let givingBack = queue.giveBack !== undefined;
    for (let i = count - 1; i >= 0; i--) {
      const slot = (head + i) & (HELD_CAPACITY - 1);
      const rx = ring[slot]!;
      ring[slot] = null;
      if (givingBack && queue.giveBack!(rx)) continue;
      givingBack = false;
      queue.complete(rx, 0);
    }
    this.heldCount[pair] = 0;
    return count;
  }

  /** Pops the RX buffers the guest offered since the worker last looked; true if any came. */
  private popRxNow(pair: number): boolean {
    const queue = this.rxQueue[pair] ?? this.context.queue?.(pair << 1) ?? null;
    return queue !== null && queue.popNow !== undefined && queue.popNow(POP_NOW_BUDGET) > 0;
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
    // A header asking for an offload goes to handleOffloadTx.
    let flags: number;
    let gsoType: number;
    if (request.segLength[0] >= 2) {
      const view = request.memory!.windowBytesView[request.segWindow[0]];
      const at = request.segWindowOffset[0];
      flags = view[at];
      gsoType = view[at + 1];
    } else {
      flags = request.readableByte(0);
      gsoType = request.readableByte(1);
    }
    if (flags !== 0 || gsoType !== 0) {
      // Out of line: the plain path stays small enough for V8 to inline it as before.
      this.handleOffloadTx(pair, queue, request, headerBytes, flags, gsoType);
      return;
    }
    const frameBytes = request.readableBytes - headerBytes;
    if (frameBytes > (this.negotiated[NegotiatedSlot.maxFrameBytes] || this.maxFrameBytes)) {
      queue.complete(request, 0);
      this.count(index, NetStat.tooBig, 'TX frame above MTU + headers (or a GSO frame above 64 KiB): dropped');
      return;
    }
    if (frameBytes < ETH_HEADER_BYTES) {
      queue.complete(request, 0);
      this.count(index, NetStat.badChain, 'TX frame shorter than an Ethernet header: dropped');
      return;
    }
    if (this.backend === BACKEND_TAP) {
      this.addToTapBatch(pair, queue, request, frameBytes);
      return;
    }
    this.passPackets[index]++;
    this.passBytes[index] += frameBytes;
    this.passDirty = true;
    if (this.backend === BACKEND_LOOPBACK) {
      if (this.deliverSimple(pair, request, headerBytes, frameBytes)) {
        queue.complete(request, 0);
        return;
      }
      let chains = this.reserve(pair, frameBytes);
      if (chains === 0 && this.popRxNow(pair)) chains = this.reserve(pair, frameBytes);
      if (chains > 0) this.deliverFromRequest(pair, chains, request, headerBytes, frameBytes);
      else if (chains === 0) this.count(pair << 1, NetStat.noBuffer, '');
      else this.count(pair << 1, NetStat.tooBig, 'frame larger than the RX buffer (no MRG_RXBUF): dropped');
    }
    queue.complete(request, 0);
  }

  /**
   * A TX frame whose header asks for an offload: refused unless the guest acked it (§5.1.6.2; a
   * frame needing a checksum or segmentation would reach the other side unfinished; sink and
   * source offer none, device.ts), above MTU + headers only as GSO and never above 64 KiB +
   * headers; then written to the tap as it is, or looped back (loopOffloaded).
   */
  private handleOffloadTx(
    pair: number,
    queue: WorkerQueue,
    request: VirtqRequest,
    headerBytes: number,
    flags: number,
    gsoType: number,
  ): void {
    const index = queue.index;
    const offloads = this.negotiated[NegotiatedSlot.offloads];
    if (!headerAllowed(flags, gsoType, offloads, Offload.hostCsum, Offload.hostTso4, Offload.hostTso6, Offload.hostEcn, false)) {
      queue.complete(request, 0);
      this.count(
        index,
        NetStat.badChain,
        'TX header asks for an offload that was not negotiated (flags or gso_type set): dropped',
      );
      return;
    }
    const frameBytes = request.readableBytes - headerBytes;
    const limit = gsoType !== 0 ? GSO_MAX_FRAME_BYTES : this.negotiated[NegotiatedSlot.maxFrameBytes] || this.maxFrameBytes;
    if (frameBytes > limit) {
      queue.complete(request, 0);
      this.count(index, NetStat.tooBig, 'TX frame above MTU + headers (or a GSO frame above 64 KiB): dropped');
      return;
    }
    if (frameBytes < ETH_HEADER_BYTES) {
      queue.complete(request, 0);
      this.count(index, NetStat.badChain, 'TX frame shorter than an Ethernet header: dropped');
      return;
    }
    if (this.backend === BACKEND_TAP) {
      this.addToTapBatch(pair, queue, request, frameBytes);
      return;
    }
    if (this.backend === BACKEND_LOOPBACK) this.loopOffloaded(pair, index, request, headerBytes, frameBytes);
    queue.complete(request, 0);
  }

  /**
   * A looped-back GSO frame for a guest without the matching GUEST_TSO: copied once into a
   * scratch frame (guest memory may change under us), cut into TCP segments (segment.ts) and
   * delivered as plain frames, as the switch does: the first segment finding no room is dropped
   * with the rest (loopback never waits), and so is each later one that finds none.
   */
  private loopSegmented(pair: number, request: VirtqRequest, headerBytes: number, frameBytes: number): void {
    const rxIndex = pair << 1;
    if (this.segmenter === null) {
      this.segmenter = new TcpSegmenter();
      this.segmentSource = new Uint8Array(GSO_MAX_FRAME_BYTES);
    }
    const segmenter = this.segmenter;
    const source = this.segmentSource!;
    request.gather(source, 0, headerBytes, frameBytes);
    const header = this.offloadHeader;
    const segments = segmenter.begin(source, 0, frameBytes, header[HDR_GSO_TYPE], u16(header, HDR_GSO_SIZE));
    if (segments === 0) {
      this.count(rxIndex, NetStat.gsoRefused, 'GSO frame that cannot be segmented (not TCP as gso_type says): dropped');
      return;
    }
    const queue = this.rxQueue[pair];
    for (let i = 0; i < segments; i++) {
      const bytes = segmenter.build(i);
      let chains = this.reserve(pair, bytes);
      if (chains === 0 && this.popRxNow(pair)) chains = this.reserve(pair, bytes);
      if (chains <= 0 || queue === null) {
        for (let left = segments - i; left > 0; left--) {
          if (chains < 0) this.count(rxIndex, NetStat.tooBig, 'frame larger than the RX buffer (no MRG_RXBUF): dropped');
          else this.count(rxIndex, NetStat.noBuffer, '');
        }
        return;
      }
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
        if (take > bytes - copied) take = bytes - copied;
        rx.scatter(segmenter.scratch, copied, offset, take);
        copied += take;
        queue.complete(rx, offset + take);
      }
      this.heldHead[pair] = head;
      this.heldCount[pair] -= chains;
      const base = rxIndex * NET_STAT_SLOTS;
      this.stats[base + NetStat.packets]++;
      this.stats[base + NetStat.bytes] += bytes;
    }
    this.stats[rxIndex * NET_STAT_SLOTS + NetStat.gsoSegmented]++;
  }

  // ---- tap -----------------------------------------------------------------------------------

  /** Completed by flush() once written: one native call for the pass's frames. */
  private addToTapBatch(pair: number, queue: WorkerQueue, request: VirtqRequest, frameBytes: number): void {
    const batch = this.txBatch!;
    if (!batch.accepts(pair, request)) this.writeTxBatch();
    batch.add(queue, pair, request, frameBytes);
  }

  /** Writes the batched TX frames to their pair's tap and completes them. */
  private writeTxBatch(): void {
    const batch = this.txBatch!;
    const pair = batch.pair;
    const queue = batch.queue!;
    batch.write(this.tapFds[pair]);
    const stats = this.stats;
    const index = (pair << 1) | 1;
    const base = index * NET_STAT_SLOTS;
    for (let i = 0; i < batch.count; i++) {
      const result = batch.results[i];
      if (result >= 0) {
        stats[base + NetStat.packets]++;
        stats[base + NetStat.bytes] += batch.frameBytes[i];
      } else {
        this.countTapError(index, 'TX frame refused by the tap: dropped', -result);
      }
      queue.complete(batch.requests[i]!, 0);
    }
    batch.clear();
  }

  /** Reads frames from the pair's tap into its held RX chains (one native call). */
  private readTap(pair: number): void {
    const queue = this.rxQueue[pair];
    if (queue === null || queue.stopping || this.heldCount[pair] === 0 || this.tapFailed[pair] !== 0) return;
    const headerBytes = this.negotiated[NegotiatedSlot.headerBytes];
    const mergeable = this.negotiated[NegotiatedSlot.mergeableRxBuffers] !== 0;
    const ring = this.held[pair]!;
    const batch = this.rxBatch!;
    batch.begin();
    let head = this.heldHead[pair];
    for (let i = this.heldCount[pair]; i > 0; i--) {
      if (!batch.offer(ring[head]!)) break;
      head = (head + 1) & (HELD_CAPACITY - 1);
    }
    const offloads = this.negotiated[NegotiatedSlot.offloads];
    const guestCsum = (offloads & Offload.guestCsum) !== 0;
    // A GSO frame from the host stack may be up to 64 KiB: offer room for one before each read.
    const guestGso = (offloads & (Offload.guestTso4 | Offload.guestTso6)) !== 0;
    const frames = batch.read(this.tapFds[pair], headerBytes + (guestGso ? GSO_MAX_FRAME_BYTES : this.maxFrameBytes), mergeable);
    const results = batch.results;
    const base = (pair << 1) * NET_STAT_SLOTS;
    let chain = 0;
    for (let f = 0; f < frames; f++) {
      const bytes = results[2 * f];
      const used = results[2 * f + 1];
      let room = 0;
      for (let c = chain; c < chain + used; c++) room += batch.room[c];
      const first = ring[this.heldHead[pair]]!;
      let keep = true;
      if (bytes > room || bytes < headerBytes) {
        keep = false;
        this.count(pair << 1, NetStat.tooBig, 'frame from the tap larger than the RX buffers offered: dropped');
      } else if (
        !headerAllowed(
          writableByte(first, 0),
          writableByte(first, 1),
          offloads,
          Offload.guestCsum,
          Offload.guestTso4,
          Offload.guestTso6,
          Offload.guestEcn,
          true,
        )
      ) {
        // TUNSETOFFLOAD follows what the guest acked, so this should not happen; it could not take it.
        keep = false;
        this.countTapError(pair << 1, 'frame from the tap asks for an offload the guest did not ack: dropped', 0);
      } else {
        // DATA_VALID may be set; without GUEST_CSUM the device must leave flags at 0 (§5.1.6.4).
        if (!guestCsum) first.writeWritableByte(0, 0);
        if (headerBytes > NET_HDR_NUM_BUFFERS) {
          first.writeWritableByte(NET_HDR_NUM_BUFFERS, used & 0xff);
          first.writeWritableByte(NET_HDR_NUM_BUFFERS + 1, used >>> 8);
        }
        this.stats[base + NetStat.packets]++;
        this.stats[base + NetStat.bytes] += bytes - headerBytes;
      }
      let left = keep ? bytes : 0;
      for (let c = chain; c < chain + used; c++) {
        const h = this.heldHead[pair];
        const take = left < batch.room[c] ? left : batch.room[c];
        queue.complete(ring[h]!, take);
        left -= take;
        ring[h] = null;
        this.heldHead[pair] = (h + 1) & (HELD_CAPACITY - 1);
      }
      this.heldCount[pair] -= used;
      chain += used;
    }
    const stop = results[2 * frames];
    if (frames > 0) this.tapBlockedAt[pair] = -1;
    if (stop === -EAGAIN) {
      this.tapMaybeReady[pair] = 0;
    } else if (stop === 0) {
      // Out of chains (or of room for a whole frame): frames may be left in the tap.
      this.tapMaybeReady[pair] = 1;
      if (frames === 0) this.tapBlockedAt[pair] = this.heldCount[pair];
    } else {
      this.tapFailed[pair] = 1;
      this.countTapError(pair << 1, 'reading the tap failed: this queue pair no longer receives', -stop);
    }
  }

  /** Watches the pair's tap fd exactly while a read could make progress. */
  private updateTapWatch(pair: number): void {
    const queue = this.rxQueue[pair];
    const want =
      queue !== null &&
      !queue.stopping &&
      this.heldCount[pair] > 0 &&
      this.heldCount[pair] !== this.tapBlockedAt[pair] &&
      this.tapFailed[pair] === 0;
    if (want === (this.tapWatching[pair] !== 0)) return;
    this.tapWatching[pair] = want ? 1 : 0;
    if (want) this.context.watchFd(this.tapFds[pair], pair, FdEvent.READABLE);
    else this.context.unwatchFd(this.tapFds[pair]);
  }

  /** Counts a tap error as a drop on `queue`, logging the first one with its errno. */
  private countTapError(queue: number, message: string, errno: number): void {
    const base = queue * NET_STAT_SLOTS;
    this.stats[base + NetStat.backendErrors]++;
    this.stats[base + NetStat.drops]++;
    const flag = base + NetStat.backendErrors;
    if (this.logged[flag] !== 0) return;
    this.logged[flag] = 1;
    this.log('warn', message, {
      queue,
      errno: errno === 0 ? undefined : errnoName(errno),
      note: 'logged once per queue; see the net statistics for counts',
    });
  }

  // ---- loopback with offloads (csum.ts) -------------------------------------------------------

  /**
   * A looped-back frame whose header asks for an offload (never the fast path): its numbers
   * checked against the frame, then delivered with the header as it is when the guest acked the
   * matching GUEST_* bit, with the checksum completed in software when it did not ack
   * GUEST_CSUM, or cut into TCP segments (loopSegmented) as a GSO frame it did not ack
   * GUEST_TSO for.
   */
  private loopOffloaded(pair: number, index: number, request: VirtqRequest, headerBytes: number, frameBytes: number): void {
    const header = this.offloadHeader;
    request.gather(header, 0, 0, OFFLOAD_HEADER_BYTES);
    const problem = offloadHeaderProblem(header, 0, frameBytes);
    if (problem !== '') {
      this.count(index, NetStat.badChain, problem);
      return;
    }
    const base = index * NET_STAT_SLOTS;
    this.stats[base + NetStat.packets]++;
    this.stats[base + NetStat.bytes] += frameBytes;
    const action = receiverAction(header[HDR_FLAGS], header[HDR_GSO_TYPE], this.negotiated[NegotiatedSlot.offloads]);
    if (action === RX_REFUSE) {
      this.loopSegmented(pair, request, headerBytes, frameBytes);
      return;
    }
    let chains = this.reserve(pair, frameBytes);
    if (chains === 0 && this.popRxNow(pair)) chains = this.reserve(pair, frameBytes);
    if (chains === 0) {
      this.count(pair << 1, NetStat.noBuffer, '');
      return;
    }
    if (chains < 0) {
      this.count(pair << 1, NetStat.tooBig, 'frame larger than the RX buffer (no MRG_RXBUF): dropped');
      return;
    }
    // The checksum over the TX bytes (the field holds the driver's pseudo-header sum), written
    // into the RX copy below; -1: the header passes through instead.
    let checksumAt = -1;
    let checksum = 0;
    if (action === RX_CHECKSUM) {
      const csumStart = u16(header, HDR_CSUM_START);
      checksumAt = csumStart + u16(header, HDR_CSUM_OFFSET);
      checksum = finishChecksum(sumReadable(request, headerBytes + csumStart, frameBytes - csumStart));
    }
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
        if (checksumAt < 0) for (let i = 0; i < OFFLOAD_HEADER_BYTES; i++) rx.writeWritableByte(i, header[i]);
        offset = headerBytes;
      }
      let take = rx.writableBytes - offset;
      if (take > frameBytes - copied) take = frameBytes - copied;
      copyRequestToRequest(request, headerBytes + copied, rx, offset, take);
      if (checksumAt >= 0) {
        // The checksum's two bytes may fall in different chains.
        if (checksumAt >= copied && checksumAt < copied + take)
          rx.writeWritableByte(offset + checksumAt - copied, checksum >>> 8);
        if (checksumAt + 1 >= copied && checksumAt + 1 < copied + take) {
          rx.writeWritableByte(offset + checksumAt + 1 - copied, checksum & 0xff);
        }
      }
      copied += take;
      queue.complete(rx, offset + take);
    }
    this.heldHead[pair] = head;
    this.heldCount[pair] -= chains;
    const rxBase = (pair << 1) * NET_STAT_SLOTS;
    this.stats[rxBase + NetStat.packets]++;
    this.stats[rxBase + NetStat.bytes] += frameBytes;
  }

  // ---- delivery into held RX chains ----------------------------------------------------------

  /**
   * The common loopback case in one go: header and frame in the TX chain's first segment, and
   * the oldest held RX chain's first writable segment has room for both (what DPDK and Linux
   * post). Writes the header (as three words when aligned), copies the frame and completes the
   * RX chain; false when the case does not apply (deliverFromRequest handles the rest).
   */
  private deliverSimple(pair: number, src: VirtqRequest, headerBytes: number, frameBytes: number): boolean {
    if (this.heldCount[pair] === 0 || src.segLength[0] < headerBytes + frameBytes) return false;
    const queue = this.rxQueue[pair];
    if (queue === null) return false;
    const ring = this.held[pair]!;
    const head = this.heldHead[pair];
    const rx = ring[head]!;
    const s = rx.readableCount;
    const length = headerBytes + frameBytes;
    if (rx.segLength[s] < length) return false;
    const memory = rx.memory!;
    const window = rx.segWindow[s];
    const at = rx.segWindowOffset[s];
    const word = at + memory.windowSkew[window];
    if (headerBytes === NET_HDR_BYTES && (word & 3) === 0) {
      // flags, gso_type, hdr_len, gso_size, csum_start, csum_offset all 0; num_buffers 1.
      const words = memory.windowWords[window];
      const w = word >>> 2;
      words[w] = 0;
      words[w + 1] = 0;
      words[w + 2] = NUM_BUFFERS_ONE_WORD;
    } else {
      writeHeader(rx, headerBytes, 1);
    }
    const srcMemory = src.memory!;
    const srcWindow = src.segWindow[0];
    let sp = src.segWindowOffset[0] + headerBytes;
    let dp = at + headerBytes;
    const sWord = sp + srcMemory.windowSkew[srcWindow];
    const dWord = dp + memory.windowSkew[window];
    if (frameBytes <= WORD_COPY_MAX_BYTES && ((sWord | dWord) & 3) === 0) {
      // Both word-aligned (DPDK and Linux frames are): 32-bit loads and stores, no builtin call.
      const words = frameBytes >>> 2;
      copyWords(srcMemory.windowWords[srcWindow], sWord >>> 2, memory.windowWords[window], dWord >>> 2, words);
      const done = words << 2;
      sp += done;
      dp += done;
      if (done !== frameBytes) {
        const sView = srcMemory.windowBytesView[srcWindow];
        const dView = memory.windowBytesView[window];
        const end = sp + frameBytes - done;
        while (sp < end) dView[dp++] = sView[sp++]!;
      }
    } else {
      const dView = memory.windowBytesView[window];
      const sView = srcMemory.windowBytesView[srcWindow];
      if (sView === dView) {
        dView.copyWithin(dp, sp, sp + frameBytes);
      } else {
        const end = sp + frameBytes;
        while (sp < end) dView[dp++] = sView[sp++]!;
      }
    }
    ring[head] = null;
    this.heldHead[pair] = (head + 1) & (HELD_CAPACITY - 1);
    this.heldCount[pair]--;
    queue.complete(rx, length);
    this.passPackets[pair << 1]++;
    this.passBytes[pair << 1] += frameBytes;
    return true;
  }

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
    this.passPackets[pair << 1]++;
    this.passBytes[pair << 1] += frameBytes;
    this.passDirty = true;
  }

  /** source: one generated frame per held chain (or group of chains) until they run out. */
  private fillFromSource(pair: number): void {
    const batch = this.sourceBatch!;
    const queue = this.rxQueue[pair];
    if (queue === null) return;
    const ring = this.held[pair]!;
    const headerBytes = this.negotiated[NegotiatedSlot.headerBytes];
    const need = headerBytes + batch.frameBytes;
    batch.begin(queue.memory, headerBytes);
    while (this.heldCount[pair] > 0) {
      // Fast path: chains that each hold a whole frame, while the batch has room.
      let first = this.heldHead[pair];
      let left = this.heldCount[pair];
      while (left > 0) {
        const rx = ring[first]!;
        if (rx.writableBytes < need || !batch.fitsOne(rx)) break;
        batch.addOne(rx, this.sourceSequence++);
        ring[first] = null;
        first = (first + 1) & (HELD_CAPACITY - 1);
        left--;
      }
      this.heldHead[pair] = first;
      this.heldCount[pair] = left;
      if (left === 0) break;
      const chains = this.reserve(pair, batch.frameBytes);
      if (chains === 0) break; // MRG_RXBUF: wait for more buffers to hold the next frame
      const head = this.heldHead[pair];
      if (chains < 0) {
        // Without MRG_RXBUF a too-small buffer would block the queue for good: give it back.
        queue.complete(ring[head]!, 0);
        ring[head] = null;
        this.heldHead[pair] = (head + 1) & (HELD_CAPACITY - 1);
        this.heldCount[pair]--;
        this.count(pair << 1, NetStat.tooBig, 'RX buffer too small for the generated frame (no MRG_RXBUF): handed back unused');
        continue;
      }
      if (!batch.accepts(ring, head, HELD_CAPACITY - 1, chains)) {
        if (batch.frameCount > 0) {
          this.completeSourceBatch(pair, queue);
          batch.begin(queue.memory, this.negotiated[NegotiatedSlot.headerBytes]);
          continue;
        }
        // Alone it fits no batch: chains from before a memory table change, or more chains
        // (tiny buffers) than a batch holds. Hand them back unused rather than copy wrongly.
        for (let c = 0; c < chains; c++) {
          const slot = (head + c) & (HELD_CAPACITY - 1);
          queue.complete(ring[slot]!, 0);
          ring[slot] = null;
        }
        this.heldHead[pair] = (head + chains) & (HELD_CAPACITY - 1);
        this.heldCount[pair] -= chains;
        this.count(
          pair << 1,
          NetStat.badBuffers,
          'RX buffers that fit no copy batch (other memory table, or too many for one frame): handed back unused',
        );
        continue;
      }
      batch.add(ring, head, HELD_CAPACITY - 1, chains, this.sourceSequence++);
      this.heldHead[pair] = (head + chains) & (HELD_CAPACITY - 1);
      this.heldCount[pair] -= chains;
    }
    this.completeSourceBatch(pair, queue);
  }

  /** Copies the batch's frames (one native call) and completes their chains. */
  private completeSourceBatch(pair: number, queue: WorkerQueue): void {
    const batch = this.sourceBatch!;
    batch.run();
    const headerBytes = this.negotiated[NegotiatedSlot.headerBytes];
    const base = (pair << 1) * NET_STAT_SLOTS;
    let chain = 0;
    let delivered = 0;
    for (let f = 0; f < batch.frameCount; f++) {
      const chains = batch.frameChains[f];
      const ok = batch.results[f] >= 0;
      if (ok) {
        if (chains > 1) writeHeader(batch.chains[chain]!, headerBytes, chains); // the template says 1
        delivered++;
      } else {
        // Chains are checked against guest memory when popped: this is a bug, not guest input.
        this.countTapError(pair << 1, 'generated frame could not be copied into the RX buffers: dropped', -batch.results[f]);
      }
      for (let c = chain; c < chain + chains; c++) queue.complete(batch.chains[c]!, ok ? batch.usedLength[c] : 0);
      chain += chains;
    }
    this.stats[base + NetStat.packets] += delivered;
    this.stats[base + NetStat.bytes] += delivered * batch.frameBytes;
    batch.clear();
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

/**
 * Copies `count` 32-bit words from src[from...] to dst[to...] (non-overlapping: a TX and an RX
 * buffer). Constant offsets in groups: a one-word loop costs V8 a bounds check and an add per word.
 */
function copyWords(src: Uint32Array, from: number, dst: Uint32Array, to: number, count: number): void {
  let w = 0;
  for (; w + 8 <= count; w += 8) {
    const s = from + w;
    const d = to + w;
    dst[d] = src[s];
    dst[d + 1] = src[s + 1];
    dst[d + 2] = src[s + 2];
    dst[d + 3] = src[s + 3];
    dst[d + 4] = src[s + 4];
    dst[d + 5] = src[s + 5];
    dst[d + 6] = src[s + 6];
    dst[d + 7] = src[s + 7];
  }
  for (; w < count; w++) dst[to + w] = src[from + w];
}

/** The device-writable byte at `position` of `rx`, or -1 past the end. */
function writableByte(rx: VirtqRequest, position: number): number {
  let skip = position;
  for (let s = rx.readableCount; s < rx.segmentCount; s++) {
    const length = rx.segLength[s];
    if (skip < length) return rx.memory!.windowBytesView[rx.segWindow[s]][rx.segWindowOffset[s] + skip];
    skip -= length;
  }
  return -1;
}

function errnoName(errno: number): string {
  for (const [name, value] of Object.entries(osConstants.errno)) if (value === errno) return name;
  return `errno ${errno}`;
}

/** The RX header: no offloads (flags, gso_type, ... all 0) and num_buffers when it has the field. */
export function writeHeader(rx: VirtqRequest, headerBytes: number, numBuffers: number): void {
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
