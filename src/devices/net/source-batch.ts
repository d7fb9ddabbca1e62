// The `source` back-end's fill: held RX chains receive the prebuilt frame (virtio-net header
// included) in one native call per batch (native copyTemplate: a memcpy per segment), instead
// of a JavaScript byte loop per frame, which capped 1514-byte frames at ~0.6 GB/s. The only
// per-frame difference, the sequence number, is patched by the same call. Chains are described
// as iovec records (native recordLayout); everything is preallocated.
import { TWO_POW_32 } from '../../bits.js';
import type { GuestMemory } from '../../dataplane/memory.js';
import type { VirtqRequest } from '../../dataplane/request.js';
import { native } from '../../native.js';
import { buildSourceFrame, SOURCE_SEQUENCE_OFFSET } from './frame.js';
import { putIovecs } from './tap-io.js';
import { NET_HDR_BYTES, NET_HDR_LEGACY_BYTES, NET_HDR_NUM_BUFFERS } from './virtio-net.js';

const LAYOUT = native.recordLayout;
const IOVEC_WORDS = LAYOUT.iovecWords;
const IOVEC_REGION = LAYOUT.iovec.region;
const IOVEC_OFFSET_LOW = LAYOUT.iovec.offsetLow;
const IOVEC_OFFSET_HIGH = LAYOUT.iovec.offsetHigh;
const IOVEC_LENGTH = LAYOUT.iovec.length;
/** Frames per native call (a pass pops at most 64 RX chains per queue, so one call usually). */
export const SOURCE_BATCH_FRAMES = 64;
/** Chains per call: a frame may span several with MRG_RXBUF. */
const CHAIN_CAPACITY = 256;
/** Iovec records per call (a chain has at most 64 segments: NetDevice.maxSegments). */
const IOVEC_CAPACITY = 64 * 64;

export class SourceBatch {
  /** Chains taken for the batch's frames, in order, and what each will report as used.len. */
  readonly chains: (VirtqRequest | null)[] = new Array<VirtqRequest | null>(CHAIN_CAPACITY).fill(null);
  readonly usedLength = new Int32Array(CHAIN_CAPACITY);
  /** Per frame: chains it takes; after run(), bytes copied (header included) or -errno. */
  readonly frameChains = new Int32Array(SOURCE_BATCH_FRAMES);
  readonly results = new Int32Array(SOURCE_BATCH_FRAMES);
  frameCount = 0;
  chainCount = 0;
  /** The frame alone (Ethernet header onwards), for its length. */
  readonly frameBytes: number;
  /** header + frame, for a 10- and a 12-byte header (num_buffers 1). */
  private readonly templates: Uint8Array[];
  private readonly targets = new Uint32Array(4 * SOURCE_BATCH_FRAMES);
  private readonly iovecs = new Uint32Array(IOVEC_CAPACITY * IOVEC_WORDS);
  private iovecCount = 0;
  private memory: GuestMemory | null = null;
  private headerBytes = NET_HDR_BYTES;

  constructor(frameBytes: number, mac: ArrayLike<number>) {
    const frame = buildSourceFrame(frameBytes, mac);
    this.frameBytes = frame.length;
    this.templates = [NET_HDR_LEGACY_BYTES, NET_HDR_BYTES].map((header) => {
      const template = new Uint8Array(header + frame.length);
      if (header > NET_HDR_NUM_BUFFERS) template[NET_HDR_NUM_BUFFERS] = 1;
      template.set(frame, header);
      return template;
    });
  }

  /** Starts a batch for chains of `memory` with the negotiated header length. */
  begin(memory: GuestMemory, headerBytes: number): void {
    this.frameCount = 0;
    this.chainCount = 0;
    this.iovecCount = 0;
    this.memory = memory;
    this.headerBytes = headerBytes;
  }

  /**
   * Whether a frame over `chains` held chains (starting at `first` of `ring`, `mask` wrapping)
   * fits this batch: the same memory table, room for its chains and segments.
   */
  accepts(ring: readonly (VirtqRequest | null)[], first: number, mask: number, chains: number): boolean {
    if (this.frameCount === SOURCE_BATCH_FRAMES || this.chainCount + chains > CHAIN_CAPACITY) return false;
    let segments = 0;
    for (let c = 0; c < chains; c++) {
      const rx = ring[(first + c) & mask]!;
      if (rx.memory !== this.memory) return false;
      segments += rx.segmentCount - rx.readableCount;
    }
    return this.iovecCount + segments <= IOVEC_CAPACITY;
  }

  /**
   * Whether a frame in `rx` alone (the common case: one chain with room for header and frame)
   * fits this batch; addOne() then takes it. The same checks as accepts() for one chain.
   */
  fitsOne(rx: VirtqRequest): boolean {
    return (
      this.frameCount < SOURCE_BATCH_FRAMES &&
      this.chainCount < CHAIN_CAPACITY &&
      rx.memory === this.memory &&
      this.iovecCount + rx.segmentCount - rx.readableCount <= IOVEC_CAPACITY
    );
  }

  /** Adds one frame into `rx` alone (it has room for header and frame: the caller checked). */
  addOne(rx: VirtqRequest, sequence: number): void {
    const f = this.frameCount++;
    const targets = this.targets;
    const length = this.headerBytes + this.frameBytes;
    const first = this.iovecCount;
    const segments = rx.segmentCount - rx.readableCount;
    if (segments === 1) {
      // One writable descriptor (what DPDK and Linux post for RX): its record straight away.
      const memory = rx.memory!;
      const s = rx.readableCount;
      const window = rx.segWindow[s];
      const offset = memory.windowBufferStart[window] + rx.segWindowOffset[s];
      const word = first * IOVEC_WORDS;
      const iovecs = this.iovecs;
      iovecs[word + IOVEC_REGION] = memory.windowRegion[window];
      iovecs[word + IOVEC_OFFSET_LOW] = offset >>> 0;
      iovecs[word + IOVEC_OFFSET_HIGH] = (offset / TWO_POW_32) >>> 0;
      iovecs[word + IOVEC_LENGTH] = rx.segLength[s];
    } else {
      putIovecs(this.iovecs, first, rx, rx.readableCount, rx.segmentCount);
    }
    this.iovecCount = first + segments;
    targets[4 * f] = first;
    targets[4 * f + 1] = segments;
    targets[4 * f + 2] = length;
    targets[4 * f + 3] = sequence >>> 0;
    this.frameChains[f] = 1;
    this.chains[this.chainCount] = rx;
    this.usedLength[this.chainCount++] = length;
  }

  /** Adds one frame over the given chains (taken out of the caller's ring) with its sequence number. */
  add(ring: (VirtqRequest | null)[], first: number, mask: number, chains: number, sequence: number): void {
    const f = this.frameCount++;
    const targets = this.targets;
    targets[4 * f] = this.iovecCount;
    let left = this.headerBytes + this.frameBytes;
    for (let c = 0; c < chains; c++) {
      const slot = (first + c) & mask;
      const rx = ring[slot]!;
      ring[slot] = null;
      putIovecs(this.iovecs, this.iovecCount, rx, rx.readableCount, rx.segmentCount);
      this.iovecCount += rx.segmentCount - rx.readableCount;
      const take = left < rx.writableBytes ? left : rx.writableBytes;
      left -= take;
      this.chains[this.chainCount] = rx;
      this.usedLength[this.chainCount++] = take;
    }
    targets[4 * f + 1] = this.iovecCount - targets[4 * f];
    targets[4 * f + 2] = this.headerBytes + this.frameBytes;
    targets[4 * f + 3] = sequence >>> 0;
    this.frameChains[f] = chains;
  }

  /** One native call: every frame copied; results[f] says how each went. */
  run(): void {
    if (this.frameCount === 0) return;
    const template = this.templates[this.headerBytes === NET_HDR_BYTES ? 1 : 0];
    native.copyTemplate(
      this.memory!.buffers,
      this.iovecs,
      this.targets,
      this.frameCount,
      template,
      this.headerBytes + SOURCE_SEQUENCE_OFFSET,
      this.results,
    );
  }

  clear(): void {
    for (let c = 0; c < this.chainCount; c++) this.chains[c] = null;
    this.frameCount = 0;
    this.chainCount = 0;
    this.iovecCount = 0;
    this.memory = null;
  }
}
