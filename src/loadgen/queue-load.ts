// One virtqueue driven by the load generator: plays the guest's virtio driver on it — posts
// requests into free slots (echo or virtio-blk chains rebuilt from per-slot addresses), publishes
// and kicks as the ring asks, reaps completions and times them into a histogram. Everything per
// request is preallocated. The load thread (load-worker.ts) runs one per queue; the micro-benchmark
// drives the same class against an in-thread loopback to see where its time goes.
import { native } from '../native.js';
import type { GuestMemory } from '../dataplane/memory.js';
import { createRingDriver, type RingDriver } from '../frontend/ring-driver.js';
import type { Histogram } from './histogram.js';
import { NET_STAMP_OFFSET, type LoadQueue, type Workload } from './load-spec.js';
import { BLK_OUTHDR_BYTES, BlkRequestType, BlkStatus } from '../devices/blk/virtio-blk.js';

/** Counts failed requests and keeps the first one's description. */
export class ErrorLog {
  count = 0;
  first = '';
  note(message: string): void {
    if (this.count++ === 0) this.first = message;
  }
}

/** xorshift32: repeatable offsets without allocation. */
export class Xorshift32 {
  private state: number;
  constructor(seed = 0x9e3779b9) {
    this.state = seed >>> 0 || 0x9e3779b9;
  }
  next(): number {
    let x = this.state;
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    this.state = x >>> 0;
    return this.state;
  }
}

/** What every queue of one load shares. */
export interface LoadContext {
  memory: GuestMemory;
  workload: Workload;
  histogram: Histogram;
  errors: ErrorLog;
  random: Xorshift32;
}

export class QueueLoad {
  readonly driver: RingDriver;
  readonly queue: LoadQueue;
  readonly depth: number;
  readonly freeSlots: Int32Array;
  freeCount: number;
  readonly started: Float64Array;
  readonly sequence: Uint32Array;
  /** Per slot: guest addresses of the parts of its request. */
  readonly partA: Float64Array;
  readonly partB: Float64Array;
  readonly partC: Float64Array;
  /** Net RX: buffers the back-end may rightly keep at the end (they wait for frames): not drained. */
  readonly holdsAtEnd: boolean;
  /** Per slot: views used to stamp and check requests (built once). */
  readonly viewA: Uint8Array[] = [];
  readonly viewB: Uint8Array[] = [];
  readonly viewC: Uint8Array[] = [];
  readonly headerView: DataView[] = [];
  readonly tokens: Float64Array;
  readonly lens: Uint32Array;
  issued = 0;
  completed = 0;
  bytes = 0;
  kicks = 0;
  sequentialSector = 0;

  private readonly workload: Workload;
  private readonly histogram: Histogram;
  private readonly errors: ErrorLog;
  private readonly random: Xorshift32;

  constructor(queue: LoadQueue, depth: number, context: LoadContext) {
    const { memory, workload } = context;
    this.workload = workload;
    this.histogram = context.histogram;
    this.errors = context.errors;
    this.random = context.random;
    this.queue = queue;
    this.depth = depth;
    this.holdsAtEnd = workload.kind === 'net' && workload.role === 'rx';
    this.driver = createRingDriver({
      memory,
      packed: queue.packed,
      size: queue.size,
      descAddr: queue.descAddr,
      availAddr: queue.availAddr,
      usedAddr: queue.usedAddr,
      eventIdx: queue.eventIdx,
      indirect: queue.indirect,
    });
    this.freeSlots = new Int32Array(depth);
    for (let i = 0; i < depth; i++) this.freeSlots[i] = depth - 1 - i;
    this.freeCount = depth;
    this.started = new Float64Array(depth);
    this.sequence = new Uint32Array(depth);
    this.partA = new Float64Array(depth);
    this.partB = new Float64Array(depth);
    this.partC = new Float64Array(depth);
    this.tokens = new Float64Array(queue.size);
    this.lens = new Uint32Array(queue.size);
    let next = queue.bufferAddr;
    const take = (bytes: number, align: number): number => {
      next = Math.ceil(next / align) * align;
      const at = next;
      next += bytes;
      if (next > queue.bufferAddr + queue.bufferBytes) throw new RangeError('load buffers do not fit the area reserved for them');
      return at;
    };
    const view = (gpa: number, length: number) => bytesAt(memory, gpa, length);
    for (let slot = 0; slot < depth; slot++) {
      if (workload.kind === 'echo') {
        this.partA[slot] = take(workload.bytes, 64);
        this.partB[slot] = take(workload.bytes, 64);
        this.viewA.push(view(this.partA[slot], workload.bytes));
        this.viewB.push(view(this.partB[slot], workload.bytes));
      } else if (workload.kind === 'net') {
        // One buffer per slot: header + frame (TX, written once here) or an empty RX buffer.
        const bytes = netSlotBytes(workload);
        this.partA[slot] = take(bytes, 64);
        const buffer = view(this.partA[slot], bytes);
        if (workload.role === 'tx') {
          buffer.fill(0, 0, workload.headerBytes);
          buffer.set(workload.frame.subarray(0, workload.frameBytes), workload.headerBytes);
        }
        this.viewA.push(buffer);
        this.headerView.push(new DataView(buffer.buffer, buffer.byteOffset, bytes));
      } else {
        this.partA[slot] = take(BLK_OUTHDR_BYTES, 16);
        this.partB[slot] = take(workload.blockSize, 4096);
        this.partC[slot] = take(1, 1);
        const header = view(this.partA[slot], BLK_OUTHDR_BYTES);
        this.headerView.push(new DataView(header.buffer, header.byteOffset, BLK_OUTHDR_BYTES));
        this.viewC.push(view(this.partC[slot], 1));
      }
    }
  }

  /** Posts one request in a free slot, timed from `startMs`. False if no slot or ring space. */
  post(startMs: number): boolean {
    if (this.freeCount === 0) return false;
    const slot = this.freeSlots[this.freeCount - 1];
    const workload = this.workload;
    const driver = this.driver;
    if (workload.kind === 'echo') {
      const seq = (this.issued + 1) >>> 0;
      this.sequence[slot] = seq;
      const input = this.viewA[slot];
      input[0] = seq & 0xff;
      input[1] = (seq >>> 8) & 0xff;
      input[2] = (seq >>> 16) & 0xff;
      input[3] = seq >>> 24;
      this.viewB[slot][0] = ~seq & 0xff;
      driver.beginChain(workload.indirect);
      const piece = Math.ceil(workload.bytes / workload.segments);
      for (let part = 0; part < 2; part++) {
        const base = part === 0 ? this.partA[slot] : this.partB[slot];
        for (let offset = 0; offset < workload.bytes; offset += piece) {
          const length = Math.min(piece, workload.bytes - offset);
          driver.addSegment(base + offset, length, part === 1);
        }
      }
    } else if (workload.kind === 'net') {
      driver.beginChain(false);
      if (workload.role === 'tx') {
        if (workload.stamp) this.headerView[slot].setFloat64(workload.headerBytes + NET_STAMP_OFFSET, startMs, true);
        driver.addSegment(this.partA[slot], workload.headerBytes + workload.frameBytes, false);
      } else {
        driver.addSegment(this.partA[slot], workload.rxBufferBytes, true);
      }
    } else {
      const header = this.headerView[slot];
      const pattern = workload.pattern;
      const isRead =
        pattern === 'read' ||
        pattern === 'randread' ||
        (pattern === 'randrw' && this.random.next() / 4294967296 < workload.readShare);
      const sectorsPerBlock = workload.blockSize / 512;
      const blocks = Math.floor(workload.capacityBytes / workload.blockSize);
      let sector: number;
      if (pattern === 'read' || pattern === 'write') {
        sector = this.sequentialSector;
        this.sequentialSector += sectorsPerBlock;
        if ((this.sequentialSector + sectorsPerBlock) * 512 > workload.capacityBytes) this.sequentialSector = 0;
      } else {
        sector = (this.random.next() % blocks) * sectorsPerBlock;
      }
      header.setUint32(0, isRead ? BlkRequestType.IN : BlkRequestType.OUT, true);
      header.setUint32(4, 0, true);
      header.setUint32(8, sector % 4294967296, true);
      header.setUint32(12, Math.floor(sector / 4294967296), true);
      this.viewC[slot][0] = 0xff;
      driver.beginChain(false);
      driver.addSegment(this.partA[slot], BLK_OUTHDR_BYTES, false);
      driver.addSegment(this.partB[slot], workload.blockSize, isRead);
      driver.addSegment(this.partC[slot], 1, true);
    }
    if (driver.endChain(slot) < 0) return false;
    this.freeCount--;
    this.started[slot] = startMs;
    this.issued++;
    return true;
  }

  /** Publishes posted chains; kicks only if the back-end asked for it (EVENT_IDX / NO_NOTIFY). */
  kick(): void {
    this.driver.publish();
    if (this.queue.kickFd >= 0 && this.driver.needsKick()) {
      native.eventfdWrite(this.queue.kickFd, 1);
      this.kicks++;
    }
  }

  /** Reaps completions; returns how many. */
  reap(nowMs: number, recording: boolean): number {
    const count = this.driver.reapUsed(this.tokens, this.lens);
    const workload = this.workload;
    for (let i = 0; i < count; i++) {
      const slot = this.tokens[i];
      if (workload.kind === 'net') {
        this.freeSlots[this.freeCount++] = slot;
        this.reapFrame(workload, slot, this.lens[i], nowMs, recording);
        continue;
      }
      if (recording) this.histogram.record((nowMs - this.started[slot]) * 1e6);
      if (workload.kind === 'echo') {
        if (workload.verify) {
          const seq = this.sequence[slot];
          const output = this.viewB[slot];
          const echoed = (output[0] | (output[1] << 8) | (output[2] << 16) | (output[3] << 24)) >>> 0;
          if (echoed !== seq || this.lens[i] !== workload.bytes) {
            this.errors.note(`queue ${this.queue.index}: request ${seq} came back as ${echoed} with length ${this.lens[i]}`);
          }
        }
        this.bytes += workload.bytes;
      } else {
        const status = this.viewC[slot][0];
        if (status !== BlkStatus.OK) this.errors.note(`queue ${this.queue.index}: virtio-blk status ${status}`);
        this.bytes += workload.blockSize;
      }
      this.freeSlots[this.freeCount++] = slot;
      this.completed++;
    }
    return count;
  }

  /** A net completion: a TX frame taken, or an RX buffer back (with a frame, or unused: len 0). */
  private reapFrame(
    workload: Extract<Workload, { kind: 'net' }>,
    slot: number,
    len: number,
    nowMs: number,
    recording: boolean,
  ): void {
    if (workload.role === 'tx') {
      if (recording && workload.record) this.histogram.record((nowMs - this.started[slot]) * 1e6);
      this.bytes += workload.frameBytes;
      this.completed++;
      return;
    }
    if (len === 0) return; // handed back without a frame
    if (len < workload.headerBytes + 14 || len > workload.rxBufferBytes) {
      this.errors.note(`queue ${this.queue.index}: RX buffer came back with length ${len}`);
      return;
    }
    if (recording && workload.stamp) {
      const sent = this.headerView[slot].getFloat64(workload.headerBytes + NET_STAMP_OFFSET, true);
      if (sent > 0 && sent <= nowMs) this.histogram.record((nowMs - sent) * 1e6);
    }
    this.bytes += len - workload.headerBytes;
    this.completed++;
  }
}

/** Guest bytes one net slot takes: header + frame (TX) or one RX buffer. */
export function netSlotBytes(workload: Extract<Workload, { kind: 'net' }>): number {
  return workload.role === 'tx' ? workload.headerBytes + workload.frameBytes : workload.rxBufferBytes;
}

/** A view of guest bytes [gpa, gpa + length) (set-up time only: it allocates). */
export function bytesAt(memory: GuestMemory, gpa: number, length: number): Uint8Array {
  const window = memory.translate(gpa, length);
  if (window < 0) throw new RangeError(`guest range 0x${gpa.toString(16)}+${length} is not mapped`);
  return memory.windowBytesView[window].subarray(memory.outWindowOffset, memory.outWindowOffset + length);
}
