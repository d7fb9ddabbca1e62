// The `source` back-end's fill: held RX chains receive the prebuilt frame (virtio-net header
// included) in one native call per batch (native copyTemplate: a memcpy per segment), instead
// of a JavaScript byte loop per frame, which capped 1514-byte frames at ~0.6 GB/s. The only
// per-frame difference, the sequence number, is patched by the same call. Chains are described
// as iovec records (native recordLayout); everything is preallocated.
//
// Small frames (header + frame up to SOURCE_INLINE_MAX_BYTES: the 64-byte case) into one
// word-aligned descriptor skip the batch: writeInline stores the template as 32-bit words straight
// into guest memory (19 stores for 12 + 64 bytes) with the sequence number merged into the words
// it spans, and the chain completes at once. Collecting iovec records, the native call and the
// completion loop cost more than those stores (bench/micro-net.ts).
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
/** Largest header + frame written by writeInline (above it one memcpy per frame wins). */
export const SOURCE_INLINE_MAX_BYTES = 256;

/** A template as little-endian words, for writeInline: words, tail bytes, and the sequence's place. */
interface InlineTemplate {
  /** header + frame bytes. */
  readonly length: number;
  /** The whole 32-bit words of the template. */
  readonly words: Int32Array;
  /** The last length % 4 bytes. */
  readonly tail: Uint8Array;
  /** Word holding the sequence number's first byte, its bit shift there, and the masks keeping the rest. */
  readonly sequenceWord: number;
  readonly sequenceShift: number;
  readonly keepLow: number;
  readonly keepHigh: number;
}

function inlineTemplate(template: Uint8Array, sequenceOffset: number): InlineTemplate | null {
  const length = template.length;
  if (length > SOURCE_INLINE_MAX_BYTES) return null;
  const wordCount = length >>> 2;
  const words = new Int32Array(wordCount);
  for (let w = 0; w < wordCount; w++) {
    const b = 4 * w;
    words[w] = template[b] | (template[b + 1] << 8) | (template[b + 2] << 16) | (template[b + 3] << 24);
  }
  const sequenceWord = sequenceOffset >>> 2;
  const shift = (sequenceOffset & 3) * 8;
  // The sequence must lie in whole words (the tail is written from the template as is).
  if (sequenceWord + (shift === 0 ? 1 : 2) > wordCount) return null;
  return {
    length,
    words,
    tail: template.slice(4 * wordCount),
    sequenceWord,
    sequenceShift: shift,
    keepLow: shift === 0 ? 0 : ~(-1 << shift),
    keepHigh: shift === 0 ? 0 : -1 << shift,
  };
}

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
  /** The same as words for writeInline (null when too long for it). */
  private readonly inlineTemplates: (InlineTemplate | null)[];
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
    this.inlineTemplates = this.templates.map((template, i) =>
      inlineTemplate(template, (i === 0 ? NET_HDR_LEGACY_BYTES : NET_HDR_BYTES) + SOURCE_SEQUENCE_OFFSET),
    );
  }

  /**
   * Writes header + frame (num_buffers 1) with `sequence` into `rx` when it is one device-writable
   * descriptor, word-aligned, with room, and the frame is small; false (nothing written)
   * otherwise: the caller takes the batch path. Returns the bytes written as used.len, or 0.
   */
  writeInline(rx: VirtqRequest, headerBytes: number, sequence: number): number {
    const template = this.inlineTemplates[headerBytes === NET_HDR_BYTES ? 1 : 0];
    if (template === null || rx.segmentCount !== 1 || rx.readableCount !== 0) return 0;
    const length = template.length;
    if (rx.segLength[0] < length) return 0;
    const memory = rx.memory!;
    const window = rx.segWindow[0];
    const at = rx.segWindowOffset[0];
    const skewed = at + memory.windowSkew[window];
    if ((skewed & 3) !== 0) return 0;
    const dst = memory.windowWords[window];
    const base = skewed >>> 2;
    const t = template.words;
    const wordCount = t.length;
    // Stores with constant offsets: a plain word loop costs V8 several times as much (a bounds
    // check and an index add per word; bench/micro-net.ts). Every template has ≥ 14 words.
    let b = base;
    let w = 0;
    if (wordCount >= 16) {
      dst[b] = t[0];
      dst[b + 1] = t[1];
      dst[b + 2] = t[2];
      dst[b + 3] = t[3];
      dst[b + 4] = t[4];
      dst[b + 5] = t[5];
      dst[b + 6] = t[6];
      dst[b + 7] = t[7];
      dst[b + 8] = t[8];
      dst[b + 9] = t[9];
      dst[b + 10] = t[10];
      dst[b + 11] = t[11];
      dst[b + 12] = t[12];
      dst[b + 13] = t[13];
      dst[b + 14] = t[14];
      dst[b + 15] = t[15];
      w = 16;
    }
    for (; w + 4 <= wordCount; w += 4) {
      b = base + w;
      dst[b] = t[w];
      dst[b + 1] = t[w + 1];
      dst[b + 2] = t[w + 2];
      dst[b + 3] = t[w + 3];
    }
    for (; w < wordCount; w++) dst[base + w] = t[w];
    const tail = template.tail;
    if (tail.length !== 0) {
      const bytes = memory.windowBytesView[window];
      const end = at + 4 * wordCount;
      for (let i = 0; i < tail.length; i++) bytes[end + i] = tail[i];
    }
    const s = base + template.sequenceWord;
    const shift = template.sequenceShift;
    if (shift === 0) {
      dst[s] = sequence;
    } else {
      dst[s] = (t[template.sequenceWord] & template.keepLow) | (sequence << shift);
      dst[s + 1] = (t[template.sequenceWord + 1] & template.keepHigh) | (sequence >>> (32 - shift));
    }
    return length;
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
