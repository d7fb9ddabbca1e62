// Chain-walker fuzzing: hostile descriptor tables, indirect tables and avail rings in guest
// memory whose regions sit between canary pages of one SharedArrayBuffer. Each case builds a
// split virtqueue over them, pops every chain it offers, writes through every device-writable
// segment as a device would (and reads the readable ones), completes them, and then checks:
// - every segment lies inside the region it was translated to (an out-of-bounds segment is a
//   finding even before a write lands), and the canary pages are intact afterwards;
// - a slow reference walker (the rules of chain.ts, written plainly against a DataView) agrees
//   with ChainWalker on accepting or refusing each head, and on an accepted chain's byte counts;
// - nothing throws, and a queue never pops more chains than the driver offered.
import { GuestMemory, type MemoryRegion } from '../dataplane/memory.js';
import { VirtqRequest } from '../dataplane/request.js';
import { BrokenReason, SplitVirtqueue, brokenReasonName } from '../dataplane/virtqueue.js';
import { INTERESTING_U32, Random } from './random.js';

const CANARY_BYTES = 4096;
const CANARY = 0xa5;
const KiB = 1024;
const MiB = 1024 * KiB;

/** Ring structures in region 0 (whose guest address is 0 in every layout). */
const DESC_AT = 0;
const AVAIL_AT = 0x1000;
const USED_AT = 0x2000;

interface Layout {
  name: string;
  buffer: SharedArrayBuffer;
  bytes: Uint8Array;
  view: DataView;
  regions: MemoryRegion[];
  memory: GuestMemory;
  /** [start, end) of every canary range in the buffer. */
  canaries: [number, number][];
  /** Window pieces may split buffers (regions larger than a window): segment counts differ. */
  splits: boolean;
}

/** Places regions (guest address, size) one after another, each followed by a canary page. */
function layout(name: string, specs: [number, number][], windowBytes?: number): Layout {
  let total = CANARY_BYTES;
  for (const [, size] of specs) total += size + CANARY_BYTES;
  const buffer = new SharedArrayBuffer(total);
  const bytes = new Uint8Array(buffer);
  const regions: MemoryRegion[] = [];
  const canaries: [number, number][] = [[0, CANARY_BYTES]];
  let at = CANARY_BYTES;
  specs.forEach(([gpa, size], i) => {
    regions.push({ guestPhysAddr: gpa, size, userspaceAddr: 0x7f00_0000_0000 + i * 0x1000_0000, buffer, bufferOffset: at });
    at += size;
    canaries.push([at, at + CANARY_BYTES]);
    at += CANARY_BYTES;
  });
  for (const [start, end] of canaries) bytes.fill(CANARY, start, end);
  return {
    name,
    buffer,
    bytes,
    view: new DataView(buffer),
    regions,
    memory: new GuestMemory(regions, windowBytes ? { windowBytes } : {}),
    canaries,
    splits: windowBytes !== undefined,
  };
}

export interface ChainCaseResult {
  /** Chains popped and completed. */
  chains: number;
  /** The queue's broken reason at the end (0: healthy), for the signature. */
  reason: number;
  finding?: string;
}

export class ChainFuzzer {
  private readonly layouts: Layout[];
  private readonly requests = [new VirtqRequest(4), new VirtqRequest(16), new VirtqRequest(128), new VirtqRequest(1024)];
  private readonly pattern = new Uint8Array(64 * KiB).fill(0x3c);

  constructor() {
    this.layouts = [
      // Two regions with a hole between them; the second ends at a canary.
      layout('hole', [
        [0, 64 * KiB],
        [0x10_0000, 16 * KiB],
      ]),
      // Adjacent regions: a buffer crossing from one into the other must be refused.
      layout('adjacent', [
        [0, 64 * KiB],
        [64 * KiB, 16 * KiB],
      ]),
      // Small windows (2 MiB, stride 1 MiB) over a 3 MiB region: long buffers split into pieces.
      layout(
        'windows',
        [
          [0, 64 * KiB],
          [0x40_0000, 3 * MiB],
        ],
        2 * MiB,
      ),
    ];
  }

  /** Builds one hostile queue in guest memory and runs it; never throws. */
  run(random: Random): ChainCaseResult {
    const l = this.layouts[random.int(this.layouts.length)];
    const size = 1 << random.int(9); // 1 .. 256
    const indirect = random.chance(0.8);
    this.writeRings(random, l, size);
    const lastAvail = random.chance(0.5) ? 0 : random.int(0x10000);
    const offered = random.chance(0.9) ? random.int(size + 1) : random.int(0x10000);
    const view = l.view;
    const r0 = l.regions[0].bufferOffset;
    view.setUint16(r0 + AVAIL_AT + 2, (lastAvail + offered) & 0xffff, true);
    const req = this.requests[random.int(this.requests.length)];
    let chains = 0;
    let queue: SplitVirtqueue;
    try {
      queue = new SplitVirtqueue({
        memory: l.memory,
        size,
        descAddr: DESC_AT,
        availAddr: AVAIL_AT,
        usedAddr: USED_AT,
        lastAvailIdx: lastAvail,
        indirectDesc: indirect,
        eventIdx: random.chance(0.5),
      });
      for (;;) {
        const headAt = r0 + AVAIL_AT + 4 + 2 * (queue.lastAvailIdx & (size - 1));
        const head = view.getUint16(headAt, true);
        const popped = queue.pop(req);
        if (!popped) {
          const reason = queue.brokenReason;
          if (isChainReason(reason) && head < size) {
            const reference = referenceWalk(l, head, size, indirect);
            // Segments can outnumber descriptors only where windows split buffers.
            const tooMany = reason === BrokenReason.TOO_MANY_SEGMENTS;
            if (reference.ok && (!tooMany || (!l.splits && reference.descriptors <= req.capacity))) {
              return this.found(l, `walker refused head ${head} (${queue.describeBroken()}), the reference walker accepts it`);
            }
          }
          break;
        }
        chains++;
        if (chains > offered) {
          // A device write may have landed on avail.idx itself (a hostile buffer over the ring):
          // then the driver did offer more, and the walk goes on, up to a bound.
          const availIdx = view.getUint16(r0 + AVAIL_AT + 2, true);
          if (availIdx === ((lastAvail + offered) & 0xffff)) {
            return this.found(l, `popped ${chains} chains, only ${offered} were offered`);
          }
          if (chains > 4 * size + 8) break;
        }
        const reference = referenceWalk(l, req.head, size, indirect);
        if (!reference.ok) {
          return this.found(l, `walker accepted head ${req.head}, the reference refuses it: ${reference.why}`);
        }
        if (reference.readable !== req.readableBytes || reference.writable !== req.writableBytes) {
          return this.found(
            l,
            `head ${req.head}: walker counts ${req.readableBytes}+${req.writableBytes} bytes, reference ${reference.readable}+${reference.writable}`,
          );
        }
        if (!l.splits && req.segmentCount !== reference.descriptors) {
          return this.found(l, `head ${req.head}: ${req.segmentCount} segments for ${reference.descriptors} descriptors`);
        }
        const outside = this.checkSegments(l, req);
        if (outside) return this.found(l, outside);
        this.touch(req);
        queue.pushUsed(req.head, random.chance(0.9) ? req.writableBytes : random.u32());
        if (random.chance(0.5)) queue.flushUsed();
        queue.needsCall();
      }
      queue.flushUsed();
    } catch (error) {
      return this.found(l, `threw ${(error as Error).stack ?? String(error)}`);
    }
    const canary = checkCanaries(l);
    if (canary) return { chains, reason: queue.brokenReason, finding: `${l.name}: ${canary}` };
    return { chains, reason: queue.brokenReason };
  }

  private found(l: Layout, finding: string): ChainCaseResult {
    const canary = checkCanaries(l);
    return { chains: 0, reason: -1, finding: `${l.name}: ${finding}${canary ? `; ${canary}` : ''}` };
  }

  /** Every segment inside its region's range of the buffer. */
  private checkSegments(l: Layout, req: VirtqRequest): string | undefined {
    for (let s = 0; s < req.segmentCount; s++) {
      const region = l.regions[req.segmentRegion(s)];
      const start = req.segmentBufferOffset(s);
      const end = start + req.segLength[s];
      if (region === undefined || start < region.bufferOffset || end > region.bufferOffset + region.size) {
        return `head ${req.head} segment ${s}: [${start}, ${end}) outside its region`;
      }
      // The window view and the buffer offset must name the same bytes.
      const w = req.segWindow[s];
      const viewStart = l.memory.windowBytesView[w].byteOffset + req.segWindowOffset[s];
      if (viewStart !== start) return `head ${req.head} segment ${s}: window offset ${viewStart} is not buffer offset ${start}`;
    }
    return undefined;
  }

  /** What a device does: reads the readable part, writes the writable part (edges of long ones). */
  private touch(req: VirtqRequest): void {
    const views = (req.memory as GuestMemory).windowBytesView;
    let sum = 0;
    for (let s = 0; s < req.segmentCount; s++) {
      const view = views[req.segWindow[s]];
      const start = req.segWindowOffset[s];
      const length = req.segLength[s];
      const edge = Math.min(length, 4 * KiB);
      if (s < req.readableCount) {
        sum += view[start] + view[start + length - 1];
      } else {
        view.fill(0x5a, start, start + edge);
        view.fill(0x5b, start + length - edge, start + length);
      }
    }
    if (req.writableBytes > 0) req.scatter(this.pattern, 0, 0, Math.min(req.writableBytes, this.pattern.length));
    if (sum < 0) throw new Error('unreachable');
  }

  /** Descriptor table, indirect tables and avail entries: mostly plausible, often hostile. */
  private writeRings(random: Random, l: Layout, size: number): void {
    const view = l.view;
    const r0 = l.regions[0].bufferOffset;
    const addresses = this.addressPool(l);
    for (let i = 0; i < size; i++) {
      writeDescriptor(random, view, r0 + DESC_AT + 16 * i, size, addresses, true);
    }
    // Indirect tables where a few INDIRECT descriptors point (only when the address is inside
    // memory); a few, and short, because generating them is most of a case's cost.
    let tables = 0;
    for (let i = 0; i < size && tables < 4; i++) {
      const at = r0 + DESC_AT + 16 * i;
      if ((view.getUint16(at + 12, true) & 4) === 0 || random.chance(0.2)) continue;
      tables++;
      const gpa = view.getUint32(at, true) + view.getUint32(at + 4, true) * 4294967296;
      const length = view.getUint32(at + 8, true);
      const entries = Math.min(length >>> 4, 16);
      const offset = bufferOffsetOf(l, gpa, entries * 16);
      if (offset < 0 || overlapsRings(l, offset, entries * 16)) continue;
      for (let e = 0; e < entries; e++) writeDescriptor(random, view, offset + 16 * e, entries, addresses, false);
    }
    view.setUint16(r0 + AVAIL_AT, random.chance(0.9) ? 0 : 1, true);
    for (let i = 0; i < size; i++) {
      view.setUint16(r0 + AVAIL_AT + 4 + 2 * i, random.chance(0.95) ? random.int(size) : random.int(0x10000), true);
    }
    view.setUint16(r0 + AVAIL_AT + 4 + 2 * size, random.int(0x10000), true); // used_event
    view.setUint16(r0 + USED_AT, 0, true);
    view.setUint16(r0 + USED_AT + 2, random.chance(0.8) ? 0 : random.int(0x10000), true);
  }

  private readonly pools = new Map<Layout, number[]>();

  /** Guest addresses worth trying: region edges, the hole, the canaries' neighbours, far away. */
  private addressPool(l: Layout): number[] {
    let pool = this.pools.get(l);
    if (pool) return pool;
    pool = [];
    for (const r of l.regions) {
      const end = r.guestPhysAddr + r.size;
      pool.push(r.guestPhysAddr, r.guestPhysAddr + 0x3000, r.guestPhysAddr + 0x8000, end - 1, end - 16, end - 512, end, end + 1);
      if (r.guestPhysAddr > 0) pool.push(r.guestPhysAddr - 1, r.guestPhysAddr - 16);
    }
    pool.push(0x4000, 0x6000, 0x9000, 0xf000, 2 ** 32 - 16, 2 ** 32, 2 ** 52, 2 ** 53 - 1);
    this.pools.set(l, pool);
    return pool;
  }
}

function writeDescriptor(
  random: Random,
  view: DataView,
  at: number,
  tableSize: number,
  addresses: number[],
  mainTable: boolean,
): void {
  let addr: number;
  const roll = random.int(10);
  if (roll < 6) addr = random.pick(addresses) + (random.chance(0.5) ? 0 : random.int(0x800));
  else if (roll < 9) addr = 0x3000 + random.int(0xc000);
  else addr = random.u32() * (random.chance(0.5) ? 1 : 65536);
  let length: number;
  const lroll = random.int(10);
  if (lroll < 5) length = 1 + random.int(0x1000);
  else if (lroll < 7) length = 16 * (1 + random.int(mainTable ? 64 : 8));
  else if (lroll < 9) length = random.pick(INTERESTING_U32);
  else length = random.u32();
  let flags = 0;
  if (random.chance(0.55)) flags |= 1; // NEXT
  if (random.chance(0.4)) flags |= 2; // WRITE
  if (random.chance(mainTable ? 0.2 : 0.05)) flags |= 4; // INDIRECT
  if (random.chance(0.03)) flags |= random.int(0x10000);
  const next = random.chance(0.92) ? random.int(tableSize) : random.int(0x10000);
  view.setUint32(at, addr % 4294967296, true);
  view.setUint32(at + 4, Math.floor(addr / 4294967296) >>> 0, true);
  view.setUint32(at + 8, length >>> 0, true);
  view.setUint16(at + 12, flags, true);
  view.setUint16(at + 14, next, true);
}

/** The buffer offset of [gpa, gpa + length) when it lies in one region, else -1. */
function bufferOffsetOf(l: Layout, gpa: number, length: number): number {
  for (const r of l.regions) {
    if (gpa >= r.guestPhysAddr && gpa + length <= r.guestPhysAddr + r.size) return r.bufferOffset + (gpa - r.guestPhysAddr);
  }
  return -1;
}

function overlapsRings(l: Layout, offset: number, length: number): boolean {
  const r0 = l.regions[0].bufferOffset;
  return offset < r0 + USED_AT + 0x1000 && offset + length > r0;
}

function isChainReason(reason: number): boolean {
  return reason >= BrokenReason.NEXT_OUT_OF_RANGE && reason <= BrokenReason.TOO_MANY_SEGMENTS;
}

interface ReferenceResult {
  ok: boolean;
  why: string;
  readable: number;
  writable: number;
  descriptors: number;
}

/** The chain rules of chain.ts, plainly: BigInt addresses, a DataView, no shortcuts. */
export function referenceWalkOf(
  regions: readonly MemoryRegion[],
  view: DataView,
  descAt: number,
  head: number,
  size: number,
  indirectAllowed: boolean,
): ReferenceResult {
  const refuse = (why: string): ReferenceResult => ({ ok: false, why, readable: 0, writable: 0, descriptors: 0 });
  const inOne = (gpa: bigint, length: number): number => {
    for (const r of regions) {
      const start = BigInt(r.guestPhysAddr);
      if (gpa >= start && gpa + BigInt(length) <= start + BigInt(r.size)) return r.bufferOffset + Number(gpa - start);
    }
    return -1;
  };
  let table = descAt;
  let tableSize = size;
  let inIndirect = false;
  let index = head;
  let visited = 0;
  let readable = 0;
  let writable = 0;
  let descriptors = 0;
  let seenWritable = false;
  for (;;) {
    if (++visited > tableSize) return refuse('loop');
    const at = table + 16 * index;
    const addr = view.getBigUint64(at, true);
    const length = view.getUint32(at + 8, true);
    const flags = view.getUint16(at + 12, true);
    const next = view.getUint16(at + 14, true);
    if (flags & 4) {
      if (!indirectAllowed) return refuse('indirect not negotiated');
      if (inIndirect) return refuse('nested indirect');
      if (flags & 1) return refuse('indirect with next');
      if (length === 0 || length % 16 !== 0 || length > 65536 * 16) return refuse('indirect length');
      const offset = inOne(addr, length);
      if (offset < 0) return refuse('indirect table outside memory');
      table = offset;
      tableSize = length / 16;
      inIndirect = true;
      index = 0;
      visited = 0;
      continue;
    }
    if (length === 0) return refuse('zero length');
    if (flags & 2) {
      seenWritable = true;
      writable += length;
    } else {
      if (seenWritable) return refuse('readable after writable');
      readable += length;
    }
    if (readable + writable > 0xffff_ffff) return refuse('length overflow');
    if (inOne(addr, length) < 0) return refuse('buffer outside memory or across regions');
    descriptors++;
    if ((flags & 1) === 0) return { ok: true, why: '', readable, writable, descriptors };
    index = next;
    if (index >= tableSize) return refuse('next out of range');
  }
}

function referenceWalk(l: Layout, head: number, size: number, indirect: boolean): ReferenceResult {
  return referenceWalkOf(l.regions, l.view, l.regions[0].bufferOffset + DESC_AT, head, size, indirect);
}

function checkCanaries(l: Layout): string | undefined {
  const bytes = l.bytes;
  for (const [start, end] of l.canaries) {
    for (let i = start; i < end; i++) {
      if (bytes[i] !== CANARY) {
        const found = bytes[i];
        // Restore it, so that one finding does not repeat in every later case.
        bytes.fill(CANARY, start, end);
        return `canary at buffer offset ${i} overwritten (0x${found.toString(16)}): an out-of-bounds write`;
      }
    }
  }
  return undefined;
}

export { brokenReasonName };
