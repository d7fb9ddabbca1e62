// The `switch` back-end's queue handler (runs in the workers): a learning L2 switch between
// ports. One instance per worker of each port (an "endpoint", see switch-fabric.ts).
//
// TX (a frame from our guest): checked like every net back-end does (device-writable
// descriptor, short chain, offload asked that our guest did not ack or whose numbers do not fit
// the frame, above MTU (64 KiB as GSO), under an Ethernet header: dropped and counted), its
// source MAC learned for our port, then sent on: to the port the destination was learned on,
// or flooded to every other port when the destination is unknown, broadcast or
// multicast; a frame for our own port is filtered (a switch never sends a frame back where it
// came from). "Sent" means copied once, from the guest's TX buffers into the SPSC frame ring of
// the destination endpoint, tagged with the RX queue pair it is for; the TX chain completes at
// once. A copy that finds the ring full, or a port with no RX queue running, is dropped and
// counted on our TX queue (noBuffer).
//
// RX. RX chains are held, oldest first, until a frame arrives for them (as in handler.ts). Every
// pass poll() takes the records of our inbound rings and copies each into held chains of its
// pair (the second and last copy: ring → guest); a record whose pair has no room yet stays in
// its ring (the ring is the port's queue, bounded; senders drop when it is full), one whose
// pair stopped is dropped and counted. A ring found empty is armed: its next producer wakes
// us through our eventfd, which the worker watches (context.watchFd) in every poll mode, so an
// idle worker sleeps in interrupt and adaptive mode and a busy one polls the rings each pass.
//
// Offloads (csum.ts). A frame whose header asks for one (flags or gso_type set) carries the
// header's 10 bytes in its record; the receiving endpoint decides by its own port's features,
// so each destination of a flood gets what it acked: the header unchanged (num_buffers its own)
// with the matching GUEST_* bit, else the checksum completed in software in the record (flags
// 0), or a GSO frame cut into TCP segments in software (segment.ts, deliverSegmented).
//
// Destination pair: the sender's pair number if that RX queue runs at the destination, else the
// next running one; its worker is pair mod workers (the device's queue-to-worker map).
//
// Copies. A record's frame starts at the same offset mod 4 as the guest's TX bytes (up to 3
// pad bytes, their count in the tag's bits 16-17), so the copy into the ring goes a u32 word at a
// time, and so does the copy out of it whenever the RX buffer has that alignment too (a byte
// loop costs ~4x more here). Nothing here allocates per frame: rings, held-chain arrays and the
// header scratch are made once; copies are loops over the requests' segments.
import { native } from '../../native.js';
import { FrameRingConsumer, FrameRingProducer } from '../../dataplane/frame-ring.js';
import type { CreateQueueHandler, HandlerContext, QueueHandler, WorkerQueue } from '../../dataplane/device-api.js';
import type { GuestMemory } from '../../dataplane/memory.js';
import type { VirtqRequest } from '../../dataplane/request.js';
import { writeHeader } from './handler.js';
import { MacTable } from './mac-table.js';
import { NET_PUBLISH_EVERY, NET_STAT_SLOTS, NegotiatedSlot, NetStat } from './options.js';
import type { SwitchHandlerOptions } from './switch-fabric.js';
import { ETH_HEADER_BYTES } from './virtio-net.js';
import { TcpSegmenter } from './segment.js';
import {
  HDR_CSUM_OFFSET,
  HDR_CSUM_START,
  HDR_FLAGS,
  HDR_GSO_SIZE,
  HDR_GSO_TYPE,
  OFFLOAD_HEADER_BYTES,
  checksumInPlace,
  offloadHeaderProblem,
  u16,
} from './csum.js';
import { GSO_MAX_FRAME_BYTES, Offload, RX_CHECKSUM, RX_PASS, RX_REFUSE, headerAllowed, receiverAction } from './offload.js';

/** Held RX chains per pair: a split ring never has more than 32768 in flight. */
const HELD_CAPACITY = 32768;
/** Records taken from one inbound ring per pass: bounds the pass for the other queues. */
const RECORDS_PER_POLL = 256;
/**
 * Passes an inbound ring stays empty before we arm it: an armed ring costs its producer an
 * eventfd write (a syscall) on the next frame, so a steady stream with short gaps should not
 * re-arm after every batch. Until armed, poll() reports work, so the worker stays awake to look.
 */
const ARM_AFTER_EMPTY_POLLS = 64;
const WAKE_TOKEN = 0;
/**
 * Record tag: the destination pair in the low 16 bits, the pad before the frame in bits 16-17,
 * and bit 18 when the record starts with the sender's virtio-net header (an offload frame).
 */
const TAG_PAIR_MASK = 0xffff;
const TAG_PAD_SHIFT = 16;
const TAG_OFFLOAD_HEADER = 1 << 18;
/** Room for the 10 header bytes in a record, a multiple of 4 so the frame keeps its alignment. */
const RECORD_OFFLOAD_HEADER_BYTES = 12;

class SwitchHandler implements QueueHandler {
  readonly completionFd = -1;
  readonly publishEvery = NET_PUBLISH_EVERY;
  /** TX chains complete inside handle(); held RX chains wait on the guest, not on poll(). */
  readonly inFlight = 0;

  private readonly negotiated: Int32Array;
  private readonly stats: Float64Array;
  private readonly log: HandlerContext['log'];
  private readonly context: HandlerContext;
  private readonly port: number;
  private readonly ports: number;
  private readonly workers: number;
  private readonly pairs: number;
  private readonly worker: number;
  private readonly macTable: MacTable;
  private readonly rxRunning: Int32Array;
  private readonly clockOriginMs: number;
  private readonly maxFrameBytes: number;
  private now = 0;
  private clockFresh = false;
  // The last source learned and the last destination looked up, valid for the same second and
  // table generation: a stream of frames skips the table.
  private learnedHi = -1;
  private learnedLo = 0;
  private learnedAt = -1;
  private foundHi = -1;
  private foundLo = 0;
  private foundAt = -1;
  private foundGeneration = -1;
  private foundPort = -1;

  /** Indexed by destination endpoint: our ring to it (null within our port). */
  private readonly outbound: (FrameRingProducer | null)[];
  private readonly inbound: FrameRingConsumer[];
  /** Per inbound ring: consecutive polls that found it empty (ARM_AFTER_EMPTY_POLLS). */
  private readonly inboundEmptyPolls: Int32Array;
  /** SEND_RARP frames from the control thread (worker 0 only). */
  private readonly inject: FrameRingConsumer | null;
  private readonly wakeFds: Int32Array;
  private readonly ownWakeFd: number;
  private readonly wakePending: Uint8Array;
  private wakeAny = false;
  private watching = false;

  // Per pair (of our port): the RX queue as last seen, and a ring of held RX chains.
  private readonly rxQueue: (WorkerQueue | null)[];
  private readonly held: ((VirtqRequest | null)[] | null)[];
  private readonly heldHead: Int32Array;
  private readonly heldCount: Int32Array;
  private readonly pairsSeen: Int32Array;
  private pairsSeenCount = 0;
  /** The Ethernet header of the frame being switched (destination, source, type). */
  private readonly ethernet = new Uint8Array(ETH_HEADER_BYTES);
  /** The virtio-net header of a TX frame that asks for an offload. */
  private readonly offloadHeader = new Uint8Array(OFFLOAD_HEADER_BYTES);
  /** GSO frames for a guest without GUEST_TSO, cut in software (64 KiB scratch, made on first use). */
  private segmenterInstance: TcpSegmenter | null = null;
  /** Per queue and NetStat slot: already logged. */
  private readonly logged: Uint8Array;

  constructor(options: SwitchHandlerOptions, context: HandlerContext) {
    const { port, ports, workersPerPort, queuePairs } = options;
    const endpoints = ports * workersPerPort;
    if (options.rings.length !== endpoints * endpoints || options.wakeFds.length !== endpoints) {
      throw new Error(`switch: rings and wake fds do not match ${ports} ports of ${workersPerPort} workers`);
    }
    if (context.worker >= workersPerPort) throw new Error(`switch: worker ${context.worker} of ${workersPerPort}`);
    this.negotiated = new Int32Array(options.negotiated);
    this.stats = new Float64Array(options.stats);
    this.log = context.log;
    this.context = context;
    this.port = port;
    this.ports = ports;
    this.workers = workersPerPort;
    this.pairs = queuePairs;
    this.worker = context.worker;
    this.macTable = new MacTable(options.macTable);
    this.rxRunning = new Int32Array(options.rxRunning);
    this.clockOriginMs = options.clockOriginMs;
    this.maxFrameBytes = options.maxFrameBytes;
    const self = port * workersPerPort + context.worker;
    this.outbound = new Array<FrameRingProducer | null>(endpoints).fill(null);
    this.inbound = [];
    for (let other = 0; other < endpoints; other++) {
      const out = options.rings[self * endpoints + other];
      if (out) this.outbound[other] = new FrameRingProducer(out);
      const into = options.rings[other * endpoints + self];
      if (into) this.inbound.push(new FrameRingConsumer(into));
    }
    this.inboundEmptyPolls = new Int32Array(this.inbound.length);
    this.inject = context.worker === 0 ? new FrameRingConsumer(options.injectRings[port]) : null;
    this.wakeFds = Int32Array.from(options.wakeFds);
    this.ownWakeFd = options.wakeFds[self];
    this.wakePending = new Uint8Array(endpoints);
    this.rxQueue = new Array<WorkerQueue | null>(queuePairs).fill(null);
    this.held = new Array<(VirtqRequest | null)[] | null>(queuePairs).fill(null);
    this.heldHead = new Int32Array(queuePairs);
    this.heldCount = new Int32Array(queuePairs);
    this.pairsSeen = new Int32Array(queuePairs);
    this.logged = new Uint8Array(2 * queuePairs * NET_STAT_SLOTS);
    context.watchFd(this.ownWakeFd, WAKE_TOKEN);
    this.watching = true;
  }

  handle(queue: WorkerQueue, request: VirtqRequest): void {
    const index = queue.index;
    const pair = index >>> 1;
    if (pair >= this.pairs) throw new Error(`queue ${index} is beyond the device's ${this.pairs} queue pairs`);
    if ((index & 1) === 0) this.handleRx(pair, queue, request);
    else this.handleTx(pair, queue, request);
  }

  flush(): void {
    if (this.wakeAny) this.sendWakes();
  }

  /** Releases held chains of stopping queues, forwards announcements, delivers inbound frames. */
  poll(): number {
    this.clockFresh = false;
    let work = 0;
    for (let i = 0; i < this.pairsSeenCount; i++) {
      const pair = this.pairsSeen[i];
      const queue = this.rxQueue[pair];
      if (queue === null || !queue.stopping) continue;
      work += this.releaseHeld(pair, queue);
      this.rxQueue[pair] = null;
      Atomics.store(this.rxRunning, this.port * this.pairs + pair, 0);
    }
    if (this.inject !== null) work += this.forwardInjected(this.inject);
    const inbound = this.inbound;
    for (let r = 0; r < inbound.length; r++) work += this.deliverInbound(r, inbound[r]);
    if (this.wakeAny) this.sendWakes();
    return work;
  }

  /** Our wake eventfd: reset it; poll() (every pass) takes what arrived. */
  onFdReady(token: number, _events: number): void {
    if (token === WAKE_TOKEN) native.eventfdRead(this.ownWakeFd);
  }

  setMemory(_memory: GuestMemory): void {}

  close(): void {
    if (!this.watching) return;
    this.watching = false;
    try {
      this.context.unwatchFd(this.ownWakeFd);
    } catch {
      // The worker already dropped every watch (after a handler failure).
    }
  }

  // ---- TX: from our guest to the other ports -------------------------------------------------

  private handleTx(pair: number, queue: WorkerQueue, request: VirtqRequest): void {
    const headerBytes = this.negotiated[NegotiatedSlot.headerBytes];
    const index = queue.index;
    if (request.writableCount !== 0 || request.readableBytes < headerBytes) {
      queue.complete(request, 0);
      this.count(index, NetStat.badChain, 'TX chain refused: device-writable descriptor or shorter than the virtio-net header');
      return;
    }
    const flags = request.readableByte(0);
    const gsoType = request.readableByte(1);
    const offloaded = (flags | gsoType) !== 0;
    const frameBytes = request.readableBytes - headerBytes;
    if (offloaded) {
      // Kept out of line: the plain path stays small enough for V8 to inline as before.
      if (!this.offloadAccepted(index, request, flags, gsoType, frameBytes)) {
        queue.complete(request, 0);
        return;
      }
    } else if (frameBytes > (this.negotiated[NegotiatedSlot.maxFrameBytes] || this.maxFrameBytes)) {
      queue.complete(request, 0);
      this.count(index, NetStat.tooBig, 'TX frame above MTU + headers: dropped');
      return;
    }
    if (frameBytes < ETH_HEADER_BYTES) {
      queue.complete(request, 0);
      this.count(index, NetStat.badChain, 'TX frame shorter than an Ethernet header: dropped');
      return;
    }
    const base = index * NET_STAT_SLOTS;
    this.stats[base + NetStat.packets]++;
    this.stats[base + NetStat.bytes] += frameBytes;
    request.gather(this.ethernet, 0, headerBytes, ETH_HEADER_BYTES);
    this.forward(pair, request, headerBytes, null, 0, frameBytes, offloaded);
    queue.complete(request, 0);
  }

  /**
   * A TX frame whose header asks for an offload: only what our guest acked (§5.1.6.2), above
   * MTU + headers only as GSO (never above 64 KiB + headers), and numbers that fit the frame
   * (csum.ts). Leaves the header in this.offloadHeader; false (counted) when refused.
   */
  private offloadAccepted(index: number, request: VirtqRequest, flags: number, gsoType: number, frameBytes: number): boolean {
    const offloads = this.negotiated[NegotiatedSlot.offloads];
    if (!headerAllowed(flags, gsoType, offloads, Offload.hostCsum, Offload.hostTso4, Offload.hostTso6, Offload.hostEcn, false)) {
      this.count(
        index,
        NetStat.badChain,
        'TX header asks for an offload that was not negotiated (flags or gso_type set): dropped',
      );
      return false;
    }
    if (
      frameBytes > (gsoType !== 0 ? GSO_MAX_FRAME_BYTES : this.negotiated[NegotiatedSlot.maxFrameBytes] || this.maxFrameBytes)
    ) {
      this.count(index, NetStat.tooBig, 'TX frame above MTU + headers (or a GSO frame above 64 KiB): dropped');
      return false;
    }
    if (frameBytes < ETH_HEADER_BYTES) return true; // refused next, as a plain frame would be
    request.gather(this.offloadHeader, 0, 0, OFFLOAD_HEADER_BYTES);
    const problem = offloadHeaderProblem(this.offloadHeader, 0, frameBytes);
    if (problem === '') return true;
    this.count(index, NetStat.badChain, problem);
    return false;
  }

  /** SEND_RARP frames, switched as if our guest had sent them on pair 0. */
  private forwardInjected(ring: FrameRingConsumer): number {
    let work = 0;
    while (ring.next() >= 0) {
      if (ring.length >= ETH_HEADER_BYTES) {
        const data = ring.data;
        for (let i = 0; i < ETH_HEADER_BYTES; i++) this.ethernet[i] = data[ring.offset + i];
        this.forward(0, null, 0, data, ring.offset, ring.length, false);
      }
      ring.release();
      work++;
    }
    return work;
  }

  /**
   * Learns the source of the frame in this.ethernet and sends it where its destination is: from
   * `request` (its readable bytes from `from`) or from `bytes` (at `from`); with `offloaded`,
   * this.offloadHeader goes along.
   */
  private forward(
    pair: number,
    request: VirtqRequest | null,
    requestFrom: number,
    bytes: Uint8Array | null,
    bytesFrom: number,
    frameBytes: number,
    offloaded: boolean,
  ): void {
    const eth = this.ethernet;
    if (!this.clockFresh) {
      this.now = Math.floor((Date.now() - this.clockOriginMs) / 1000);
      this.clockFresh = true;
    }
    const now = this.now;
    const sourceHi = (eth[6] << 8) | eth[7];
    const sourceLo = (eth[8] << 24) | (eth[9] << 16) | (eth[10] << 8) | eth[11];
    if (sourceHi !== this.learnedHi || sourceLo !== this.learnedLo || now !== this.learnedAt) {
      this.macTable.learn(sourceHi, sourceLo, this.port, now);
      this.learnedHi = sourceHi;
      this.learnedLo = sourceLo;
      this.learnedAt = now;
    }
    let destination = -1;
    if ((eth[0] & 1) === 0) {
      const hi = (eth[0] << 8) | eth[1];
      const lo = (eth[2] << 24) | (eth[3] << 16) | (eth[4] << 8) | eth[5];
      const generation = this.macTable.generation;
      if (hi === this.foundHi && lo === this.foundLo && now === this.foundAt && generation === this.foundGeneration) {
        destination = this.foundPort;
      } else {
        destination = this.macTable.lookup(hi, lo, now);
        this.foundHi = hi;
        this.foundLo = lo;
        this.foundAt = now;
        this.foundGeneration = generation;
        this.foundPort = destination;
      }
      if (destination === this.port) return; // filtered: the destination is behind the port it came from
    }
    if (destination >= 0) {
      this.sendTo(destination, pair, request, requestFrom, bytes, bytesFrom, frameBytes, offloaded);
      return;
    }
    for (let port = 0; port < this.ports; port++) {
      if (port !== this.port) this.sendTo(port, pair, request, requestFrom, bytes, bytesFrom, frameBytes, offloaded);
    }
  }

  /**
   * One copy of the frame into the ring of the endpoint serving `port`'s chosen RX pair (with
   * `offloaded`, the virtio-net header before it: what the receiver makes of it is its own
   * decision, by its own port's features).
   */
  private sendTo(
    port: number,
    pair: number,
    request: VirtqRequest | null,
    requestFrom: number,
    bytes: Uint8Array | null,
    bytesFrom: number,
    frameBytes: number,
    offloaded: boolean,
  ): void {
    const txQueue = (pair << 1) | 1;
    const destinationPair = this.runningPair(port, pair);
    if (destinationPair < 0) {
      this.count(txQueue, NetStat.noBuffer, '');
      return;
    }
    const endpoint = port * this.workers + (destinationPair % this.workers);
    const ring = this.outbound[endpoint]!;
    // Records start 8-aligned: pad so the frame has the guest bytes' alignment (word copies).
    const pad = request !== null ? readableAlignment(request, requestFrom) : 0;
    const headerRoom = offloaded ? RECORD_OFFLOAD_HEADER_BYTES : 0;
    const at = ring.reserve(
      headerRoom + pad + frameBytes,
      destinationPair | (pad << TAG_PAD_SHIFT) | (offloaded ? TAG_OFFLOAD_HEADER : 0),
    );
    if (at < 0) {
      this.count(
        txQueue,
        NetStat.noBuffer,
        `frames for port ${port} find its queue full: dropped (counted as no-buffer on this TX queue)`,
      );
      return;
    }
    const data = ring.data;
    if (offloaded) for (let i = 0; i < OFFLOAD_HEADER_BYTES; i++) data[at + i] = this.offloadHeader[i];
    const frameAt = at + headerRoom + pad;
    if (request !== null) gatherIntoRing(request, requestFrom, data, ring.dataWords, frameAt, frameBytes);
    else for (let i = 0; i < frameBytes; i++) data[frameAt + i] = bytes![bytesFrom + i];
    if (ring.commit()) {
      this.wakePending[endpoint] = 1;
      this.wakeAny = true;
    }
  }

  /** `pair` if that RX queue of `port` runs, else the next one that does, else -1. */
  private runningPair(port: number, pair: number): number {
    const pairs = this.pairs;
    const base = port * pairs;
    let candidate = pair < pairs ? pair : 0;
    for (let i = 0; i < pairs; i++) {
      if (this.rxRunning[base + candidate] !== 0) return candidate;
      candidate = candidate + 1 === pairs ? 0 : candidate + 1;
    }
    return -1;
  }

  private sendWakes(): void {
    this.wakeAny = false;
    const pending = this.wakePending;
    for (let e = 0; e < pending.length; e++) {
      if (pending[e] === 0) continue;
      pending[e] = 0;
      native.eventfdWrite(this.wakeFds[e], 1);
    }
  }

  // ---- RX: from the other ports to our guest -------------------------------------------------

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
  }

  /** A (re)started RX queue: remember it, tell the senders, set up its held ring the first time. */
  private adoptRxQueue(pair: number, queue: WorkerQueue): void {
    this.rxQueue[pair] = queue;
    if (this.held[pair] === null) {
      this.held[pair] = new Array<VirtqRequest | null>(HELD_CAPACITY).fill(null);
      this.pairsSeen[this.pairsSeenCount++] = pair;
    }
    Atomics.store(this.rxRunning, this.port * this.pairs + pair, 1);
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

  /** Copies records of inbound ring `r` into held RX chains until it is empty or blocked. */
  private deliverInbound(r: number, ring: FrameRingConsumer): number {
    let delivered = 0;
    while (delivered < RECORDS_PER_POLL) {
      if (ring.next() < 0) {
        if (delivered > 0) this.inboundEmptyPolls[r] = 0;
        if (ring.armed) return delivered;
        // Empty for a while: ask for a wake-up. Not yet, or a record slipped in while arming:
        // report work, so the worker passes again instead of sleeping without a wake-up.
        if (++this.inboundEmptyPolls[r] < ARM_AFTER_EMPTY_POLLS) return delivered + 1;
        return ring.arm() ? delivered : delivered + 1;
      }
      const pair = ring.tag & TAG_PAIR_MASK;
      const pad = (ring.tag >>> TAG_PAD_SHIFT) & 3;
      const rxIndex = pair << 1;
      if (pair >= this.pairs || pair % this.workers !== this.worker) {
        // Senders route by the queue-to-worker map: this would be a bug, never guest input.
        throw new Error(`switch: a frame for pair ${pair} reached worker ${this.worker}`);
      }
      const queue = this.rxQueue[pair];
      if (queue === null || queue.stopping) {
        // The pair stopped after the sender chose it.
        this.count(rxIndex, NetStat.noBuffer, '');
        ring.release();
        delivered++;
        continue;
      }
      if ((ring.tag & TAG_OFFLOAD_HEADER) !== 0) {
        // Out of line, as in handleTx.
        if (!this.deliverOffloaded(pair, queue, ring, pad)) return delivered; // no room yet: it waits
        ring.release();
        delivered++;
        continue;
      }
      const frameBytes = ring.length - pad;
      const chains = this.reserve(pair, frameBytes);
      if (chains === 0) return delivered; // no room yet: the record waits in the ring
      if (chains < 0) {
        this.count(rxIndex, NetStat.tooBig, 'frame larger than the RX buffer (no MRG_RXBUF): dropped');
      } else {
        this.deliver(pair, queue, chains, ring.data, ring.dataWords, ring.offset + pad, frameBytes, -1);
      }
      ring.release();
      delivered++;
    }
    return delivered;
  }

  /**
   * The current record of `ring` carries the sender's virtio-net header: what our guest acked
   * decides (offload.ts receiverAction), so each destination of a flood decides for itself.
   * False when the frame has to wait for RX room (the record stays, untouched).
   */
  private deliverOffloaded(pair: number, queue: WorkerQueue, ring: FrameRingConsumer, pad: number): boolean {
    const data = ring.data;
    const headerAt = ring.offset;
    const frameAt = headerAt + RECORD_OFFLOAD_HEADER_BYTES + pad;
    const frameBytes = ring.length - RECORD_OFFLOAD_HEADER_BYTES - pad;
    const action = receiverAction(
      data[headerAt + HDR_FLAGS],
      data[headerAt + HDR_GSO_TYPE],
      this.negotiated[NegotiatedSlot.offloads],
    );
    if (action === RX_REFUSE) return this.deliverSegmented(pair, queue, data, headerAt, frameAt, frameBytes);
    const chains = this.reserve(pair, frameBytes);
    if (chains === 0) return false;
    if (chains < 0) {
      this.count(pair << 1, NetStat.tooBig, 'frame larger than the RX buffer (no MRG_RXBUF): dropped');
      return true;
    }
    if (action === RX_CHECKSUM) {
      // Once, now that the frame goes out: the record is ours until release().
      checksumInPlace(data, frameAt, frameBytes, u16(data, headerAt + HDR_CSUM_START), u16(data, headerAt + HDR_CSUM_OFFSET));
    }
    this.deliver(pair, queue, chains, data, ring.dataWords, frameAt, frameBytes, action === RX_PASS ? headerAt : -1);
    return true;
  }

  /**
   * A GSO frame for a guest without the matching GUEST_TSO: cut into TCP segments in software
   * (segment.ts), each delivered as a plain frame. It waits for room for the first segment as
   * any frame does; segments that then find no room are dropped (noBuffer), as a NIC would, so
   * a guest ring too small for all of them cannot block the ring. A frame that cannot be
   * segmented (not TCP as gso_type says) is dropped and counted (gsoRefused).
   */
  private deliverSegmented(
    pair: number,
    queue: WorkerQueue,
    data: Uint8Array,
    headerAt: number,
    frameAt: number,
    frameBytes: number,
  ): boolean {
    const rxIndex = pair << 1;
    const segmenter = this.segmenter;
    const segments = segmenter.begin(
      data,
      frameAt,
      frameBytes,
      data[headerAt + HDR_GSO_TYPE],
      u16(data, headerAt + HDR_GSO_SIZE),
    );
    if (segments === 0) {
      this.count(rxIndex, NetStat.gsoRefused, 'GSO frame that cannot be segmented (not TCP as gso_type says): dropped');
      return true;
    }
    for (let i = 0; i < segments; i++) {
      const bytes = segmenter.build(i);
      const chains = this.reserve(pair, bytes);
      if (chains === 0 && i === 0) return false; // no room yet: the record waits in the ring
      if (chains <= 0) {
        // Counted per segment: the guest sees each as a frame it did not get.
        for (let left = segments - i; left > 0; left--) {
          this.count(
            rxIndex,
            chains === 0 ? NetStat.noBuffer : NetStat.tooBig,
            chains === 0 ? '' : 'frame larger than the RX buffer (no MRG_RXBUF): dropped',
          );
        }
        return true;
      }
      this.deliver(pair, queue, chains, segmenter.scratch, segmenter.scratchWords, 0, bytes, -1);
    }
    this.stats[rxIndex * NET_STAT_SLOTS + NetStat.gsoSegmented]++;
    return true;
  }

  private get segmenter(): TcpSegmenter {
    if (this.segmenterInstance === null) this.segmenterInstance = new TcpSegmenter();
    return this.segmenterInstance;
  }

  /**
   * How many held chains a frame of `frameBytes` (header excluded) needs: 0 when there are too
   * few now, -1 when it can never fit (no MRG_RXBUF and the next buffer is too small).
   */
  private reserve(pair: number, frameBytes: number): number {
    const count = this.heldCount[pair];
    if (count === 0) return 0;
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

  /**
   * Copies data[from, from + frameBytes) (`words`: the same bytes as u32 words) into `chains`
   * held chains of `pair`, header first: a plain one, or the sender's at data[headerAt] (not -1)
   * with our num_buffers.
   */
  private deliver(
    pair: number,
    queue: WorkerQueue,
    chains: number,
    data: Uint8Array,
    words: Uint32Array,
    from: number,
    frameBytes: number,
    headerAt: number,
  ): void {
    const headerBytes = this.negotiated[NegotiatedSlot.headerBytes];
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
        if (headerAt >= 0) for (let i = 0; i < OFFLOAD_HEADER_BYTES; i++) rx.writeWritableByte(i, data[headerAt + i]);
        offset = headerBytes;
      }
      let take = rx.writableBytes - offset;
      if (take > frameBytes - copied) take = frameBytes - copied;
      scatterFromRing(data, words, from + copied, rx, offset, take);
      copied += take;
      queue.complete(rx, offset + take);
    }
    this.heldHead[pair] = head;
    this.heldCount[pair] -= chains;
    const base = (pair << 1) * NET_STAT_SLOTS;
    this.stats[base + NetStat.packets]++;
    this.stats[base + NetStat.bytes] += frameBytes;
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

/** The offset mod 4, in its mapping, of the readable byte at `position` of `request` (0 past the end). */
function readableAlignment(request: VirtqRequest, position: number): number {
  const memory = request.memory!;
  let skip = position;
  for (let s = 0; s < request.readableCount; s++) {
    const length = request.segLength[s];
    if (skip < length) {
      const window = request.segWindow[s];
      return (memory.windowSkew[window] + request.segWindowOffset[s] + skip) & 3;
    }
    skip -= length;
  }
  return 0;
}

/** Copies `length` readable bytes of `request` from `from` into ring data at `to`. */
function gatherIntoRing(
  request: VirtqRequest,
  from: number,
  data: Uint8Array,
  dataWords: Uint32Array,
  to: number,
  length: number,
): void {
  const memory = request.memory!;
  let skip = from;
  let copied = 0;
  for (let s = 0; s < request.readableCount && copied < length; s++) {
    const segLength = request.segLength[s];
    if (skip >= segLength) {
      skip -= segLength;
      continue;
    }
    let n = segLength - skip;
    if (n > length - copied) n = length - copied;
    const window = request.segWindow[s];
    copyBytes(
      data,
      dataWords,
      0,
      to + copied,
      memory.windowBytesView[window],
      memory.windowWords[window],
      memory.windowSkew[window],
      request.segWindowOffset[s] + skip,
      n,
    );
    skip = 0;
    copied += n;
  }
}

/** Copies ring data [from, from + length) into the writable bytes of `rx` from `to`. */
function scatterFromRing(
  data: Uint8Array,
  dataWords: Uint32Array,
  from: number,
  rx: VirtqRequest,
  to: number,
  length: number,
): void {
  const memory = rx.memory!;
  let skip = to;
  let copied = 0;
  for (let s = rx.readableCount; s < rx.segmentCount && copied < length; s++) {
    const segLength = rx.segLength[s];
    if (skip >= segLength) {
      skip -= segLength;
      continue;
    }
    let n = segLength - skip;
    if (n > length - copied) n = length - copied;
    const window = rx.segWindow[s];
    copyBytes(
      memory.windowBytesView[window],
      memory.windowWords[window],
      memory.windowSkew[window],
      rx.segWindowOffset[s] + skip,
      data,
      dataWords,
      0,
      from + copied,
      n,
    );
    skip = 0;
    copied += n;
  }
}

/**
 * dst[to, to + n) = src[from, from + n). `words` views hold the same bytes as u32 words, their
 * first word starting `skew` bytes before the byte view (GuestMemory.windowSkew); when both
 * sides have the same alignment the middle goes a word at a time.
 */
function copyBytes(
  dst: Uint8Array,
  dstWords: Uint32Array,
  dstSkew: number,
  to: number,
  src: Uint8Array,
  srcWords: Uint32Array,
  srcSkew: number,
  from: number,
  n: number,
): void {
  let d = to;
  let s = from;
  let left = n;
  if (left >= 16 && ((d + dstSkew) & 3) === ((s + srcSkew) & 3)) {
    while (((d + dstSkew) & 3) !== 0) {
      dst[d++] = src[s++];
      left--;
    }
    const words = left >>> 2;
    let dw = (d + dstSkew) >>> 2;
    let sw = (s + srcSkew) >>> 2;
    const end = sw + words;
    while (sw < end) dstWords[dw++] = srcWords[sw++];
    d += words << 2;
    s += words << 2;
    left -= words << 2;
  }
  const end = s + left;
  while (s < end) dst[d++] = src[s++];
}

export const createQueueHandler: CreateQueueHandler = (options, context) =>
  new SwitchHandler(options as SwitchHandlerOptions, context);
